"""Adapter weights: what a user may pass as one (a real number of any flavour), and the per-module form.

``set_adapters`` weights, ``fuse_lora``'s ``lora_scale``, block weights and call-time scales all go through
:func:`as_number`, so ``0.5``, ``np.float32(0.5)`` and ``torch.tensor(0.5)`` mean the same and NaN / Inf / strings /
bools are a typed error wherever they come in.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch

from ..errors import AdapterWeightError

#: an adapter's weight: one float, or a function of the module path (block weights)
Weight = float | Callable[[str], float]


def as_number(value: object, where: str) -> float:
    """``value`` as a finite float, else :class:`AdapterWeightError` naming ``where``.

    Accepts Python and numpy real scalars, 0-d numpy arrays and one-element real tensors; refuses bools, complex
    numbers, strings, NaN and Inf.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        value = value[()]
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool or value.device.type == "meta":
            raise AdapterWeightError(f"{where}: expected a real number, got a tensor of shape {tuple(value.shape)}")
        out = float(value.reshape(()).item())
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise AdapterWeightError(f"{where}: expected a real number, got {type(value).__name__} {value!r:.60}")
    else:
        out = float(value)
    if not math.isfinite(out):
        raise AdapterWeightError(f"{where}: must be a finite number, got {out}")
    return out


def is_scalar(value: object) -> bool:
    """Whether ``value`` is given as one number (what :func:`as_number` reads), not a dict, list or function."""
    return isinstance(value, (numbers.Real, torch.Tensor)) or (isinstance(value, np.ndarray) and value.ndim == 0)


def as_weight(value: object, where: str) -> Weight:
    """A number (see :func:`as_number`) or a per-module function, as the manager stores weights."""
    if callable(value) and not is_scalar(value):
        return value
    return as_number(value, where)


def scaled(weight: Weight, factor: float) -> Weight:
    """``weight × factor`` in the same form."""
    if callable(weight):
        return lambda path: factor * float(weight(path))
    return float(weight) * factor


def at(weight: Weight, path: str) -> float:
    """The weight of one module."""
    return float(weight(path)) if callable(weight) else float(weight)
