"""LoHa: Hadamard product of two low-rank products, ``ΔW = (alpha / r) · (w1a @ w1b) ⊙ (w2a @ w2b)``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import AdapterKind, alpha_scale, f32, tucker


@dataclass(frozen=True, slots=True, eq=False)
class LoHa(AdapterKind):
    """LyCORIS LoHa.

    Plain: ``w1a (out, r)``, ``w1b (r, in·kh·kw)``, same for ``w2``. Tucker (``t1``/``t2`` of shape ``(r, r, kh, kw)``):
    ``w1a (r, out)``, ``w1b (r, in)`` and ``M_k = Σ t_k[a,b] · w_ka[a,o] · w_kb[b,i]``. r is ``w1b.shape[0]``.
    """

    w1a: Tensor
    w1b: Tensor
    w2a: Tensor
    w2b: Tensor
    alpha: float | None = None
    t1: Tensor | None = None
    t2: Tensor | None = None

    kind_name = "loha"

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    def delta_weight(self, base: Tensor) -> Tensor:
        if self.t1 is not None and self.t2 is not None:
            m1 = tucker(self.t1, self.w1a, self.w1b)
            m2 = tucker(self.t2, self.w2a, self.w2b)
        else:
            m1 = f32(self.w1a) @ f32(self.w1b)
            m2 = f32(self.w2a) @ f32(self.w2b)
        return (m1 * m2).mul_(self.scale).reshape(base.shape)
