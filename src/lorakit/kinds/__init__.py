"""Canonical adapter kinds: the one representation every format converts to."""

from .base import AdapterKind
from .dora import DoRA
from .full import Full
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA

__all__ = ["AdapterKind", "LoRA", "LoHa", "LoKr", "Full", "DoRA"]
