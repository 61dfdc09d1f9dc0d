"""Full deltas: LyCORIS ``diff`` (weight) and ``diff_b`` (bias), also used for norm-layer ``w_norm``/``b_norm``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import AdapterKind, f32


@dataclass(frozen=True, slots=True, eq=False)
class Full(AdapterKind):
    """A dense delta: ``W' = W + s·diff`` and ``b' = b + s·diff_b``. Either may be absent."""

    diff: Tensor | None = None
    diff_b: Tensor | None = None

    kind_name = "full"
    applies_to_norm = True

    def delta_weight(self, base: Tensor) -> Tensor:
        if self.diff is None:
            return torch.zeros(base.shape, dtype=torch.float32, device=base.device)
        return f32(self.diff).reshape(base.shape)

    def delta_bias(self) -> Tensor | None:
        return None if self.diff_b is None else f32(self.diff_b).flatten()
