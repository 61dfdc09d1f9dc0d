"""LoKr: Kronecker product of two factors, each full or low rank, ``ΔW = scale · kron(w1, w2)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32, tucker


@dataclass(frozen=True, slots=True, eq=False)
class LoKr(AdapterKind):
    """LyCORIS LoKr.

    ``w1`` is ``(out_l, in_m)`` or ``w1a (out_l, r) @ w1b (r, in_m)``; ``w2`` is ``(out_k, in_n[, kh, kw])`` or
    ``w2a (out_k, r) @ w2b (r, in_n·kh·kw)``, or Tucker ``t2 (r, r, kh, kw)`` with ``w2a (r, out_k)``, ``w2b (r, in_n)``.
    The scale is alpha / r where r is the rank of the decomposed factor; when neither factor is decomposed the
    scale is 1 whatever alpha says (LyCORIS stores a meaningless alpha then).
    """

    w1: Tensor | None = None
    w1a: Tensor | None = None
    w1b: Tensor | None = None
    w2: Tensor | None = None
    w2a: Tensor | None = None
    w2b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None

    kind_name = "lokr"

    @property
    def rank(self) -> int | None:
        if self.w1b is not None:
            return int(self.w1b.shape[0])
        if self.w2b is not None:
            return int(self.w2b.shape[0])
        return None

    @property
    def scale(self) -> float:
        r = self.rank
        if r is None or self.alpha is None:
            return 1.0
        return float(self.alpha) / r

    def factor1(self) -> Tensor:
        if self.w1 is not None:
            return f32(self.w1)
        if self.w1a is None or self.w1b is None:
            raise ShapeMismatchError("lokr: needs lokr_w1 or both lokr_w1_a and lokr_w1_b")
        return f32(self.w1a) @ f32(self.w1b)

    def factor2(self) -> Tensor:
        if self.w2 is not None:
            return f32(self.w2)
        if self.w2a is None or self.w2b is None:
            raise ShapeMismatchError("lokr: needs lokr_w2 or both lokr_w2_a and lokr_w2_b")
        if self.t2 is not None:
            return tucker(self.t2, self.w2a, self.w2b)
        return f32(self.w2a) @ f32(self.w2b)

    def delta_weight(self, base: Tensor) -> Tensor:
        w1 = self.factor1()
        w2 = self.factor2().flatten(1)
        return torch.kron(w1, w2).mul_(self.scale).reshape(base.shape)
