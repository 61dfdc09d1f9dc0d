"""Canonical adapter kinds: the one representation every layout converts to, and the registry of kinds.

Each kind's file holds everything true of it (maths, key vocabulary, reading, writing, fitting, row surgery, hotswap;
see :mod:`lorakit.kinds.base`). The lists below are the only place that says which kinds exist:

* :data:`KINDS`: the kinds lorakit applies, in claim order: one module's tensors go to the first kind that claims
  them (a module whose tensors a second kind also claims is reported, not guessed).
* :data:`WRAPPERS`: applied on top of whichever kind claimed a module (DoRA's magnitude sits beside its tensors).
* :data:`NOT_APPLIED`: kinds whose keys lorakit recognises but does not apply yet: their keys are reported as
  unsupported, by the kind's name, never dropped silently.

Adding a kind = one file (a frozen dataclass deriving from :class:`AdapterKind` with ``SUFFIXES``, ``from_roles``,
``lycoris_tensors``, ``check_shape`` and, where it applies, ``select_rows``) + one entry in :data:`KINDS`; a kind of
:data:`NOT_APPLIED` is registered by moving its entry to :data:`KINDS` once its file reads and writes it.
"""

from __future__ import annotations

from .base import AdapterKind, MissingTensorsError, NotSeparable, UnsupportedVariantError
from .boft import BOFT
from .dora import DoRA
from .full import Full
from .glora import GLoRA
from .ia3 import IA3
from .loha import LoHa
from .lokr import LoKr
from .lora import LoRA
from .oft import OFT
from .vocab import KeySource, Suffix

KINDS: tuple[type[AdapterKind], ...] = (LoRA, LoHa, LoKr, Full)
WRAPPERS: tuple[type[DoRA], ...] = (DoRA,)
NOT_APPLIED: tuple[type[AdapterKind], ...] = (OFT, BOFT, IA3, GLoRA)


def vocabulary() -> tuple[Suffix, ...]:
    """Every suffix a kind reads: the applied kinds, the wrappers, then the recognised ones (in that order)."""
    return tuple(s for k in (*KINDS, *WRAPPERS, *NOT_APPLIED) for s in k.SUFFIXES)


__all__ = [
    "KINDS",
    "NOT_APPLIED",
    "WRAPPERS",
    "AdapterKind",
    "DoRA",
    "Full",
    "KeySource",
    "LoHa",
    "LoKr",
    "LoRA",
    "MissingTensorsError",
    "NotSeparable",
    "Suffix",
    "UnsupportedVariantError",
    "vocabulary",
]
