"""Canonical adapter kinds: the one representation every layout converts to, and the registry of kinds.

Each kind's file holds everything true of it (maths, key vocabulary, reading, writing, fitting, row surgery, hotswap;
see :mod:`lorakit.kinds.base`). The lists below are the only place that says which kinds exist:

* :data:`KINDS`: the kinds lorakit applies, in claim order: one module's tensors go to the first kind that claims
  them (a module whose tensors a second kind also claims is reported, not guessed).
* :data:`WRAPPERS`: applied on top of whichever kind claimed a module (DoRA's magnitude sits beside its tensors).
* :data:`NOT_APPLIED`: kinds whose keys lorakit recognises but does not apply yet: their keys are reported as
  unsupported, by the kind's name, never dropped silently.

Adding a kind = one file (a frozen dataclass deriving from :class:`AdapterKind` with ``SUFFIXES``, ``from_roles``,
``lycoris_tensors``, ``check_shape`` and, where it applies, ``select_rows``, ``padded``/``zeroed`` and ``native``) +
one entry in :data:`KINDS`; a kind of :data:`NOT_APPLIED` is registered by moving its entry to :data:`KINDS` once its
file reads and writes it. Multiplicative kinds (OFT, BOFT, (IA)³, GLoRA) fit the same protocol: ``delta_weight(base)``
is ``W' − W`` of the original weight, so a strength ``s`` gives ``W + s·(W' − W)``.
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

KINDS: tuple[type[AdapterKind], ...] = (LoRA, LoHa, LoKr, Full, OFT, BOFT, IA3, GLoRA)
WRAPPERS: tuple[type[DoRA], ...] = (DoRA,)
NOT_APPLIED: tuple[type[AdapterKind], ...] = ()


def vocabulary() -> tuple[Suffix, ...]:
    """Every suffix a kind reads: the applied kinds, the wrappers, then the recognised ones (in that order)."""
    return tuple(s for k in (*KINDS, *WRAPPERS, *NOT_APPLIED) for s in k.SUFFIXES)


__all__ = [
    "BOFT",
    "IA3",
    "KINDS",
    "NOT_APPLIED",
    "OFT",
    "WRAPPERS",
    "AdapterKind",
    "DoRA",
    "Full",
    "GLoRA",
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
