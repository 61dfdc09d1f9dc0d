"""lorakit: load, mix, fuse and save LoRA / LyCORIS adapters for diffusers pipelines, without PEFT."""

from __future__ import annotations

import logging

from . import errors, kinds
from .kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA
from .manager import AdapterManager, get_manager

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AdapterKind",
    "AdapterManager",
    "DoRA",
    "Full",
    "LoHa",
    "LoKr",
    "LoRA",
    "errors",
    "get_manager",
    "kinds",
]
