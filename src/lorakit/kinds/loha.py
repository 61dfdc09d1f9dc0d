"""LoHa: Hadamard product of two low-rank products, ``ΔW = (alpha / r) · (w1a @ w1b) ⊙ (w2a @ w2b)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, MissingTensorsError, alpha_scale, dims, f32, need, tucker
from .vocab import KeySource, Suffix


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
    uses_base = False
    display = "LoHa"
    #: LyCORIS names; role = suffix
    SUFFIXES = tuple(Suffix(n, n) for n in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"))

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> LoHa:
        w1a, w1b, w2a, w2b = need(roles, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", kind="LoHa")
        t1, t2 = roles.get("hada_t1"), roles.get("hada_t2")
        if (t1 is None) != (t2 is None):
            raise MissingTensorsError("LoHa Tucker needs both hada_t1 and hada_t2")
        kind = cls(w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, t1=t1, t2=t2)
        kind.check_tensors("LoHa")
        return kind

    def lycoris_tensors(self) -> dict[str, Tensor]:
        out = {"hada_w1_a": self.w1a, "hada_w1_b": self.w1b, "hada_w2_a": self.w2a, "hada_w2_b": self.w2b}
        if self.t1 is not None and self.t2 is not None:
            out.update(hada_t1=self.t1, hada_t2=self.t2)
        return out | self._alpha_entry()

    @property
    def tucker(self) -> bool:
        return self.t1 is not None and self.t2 is not None

    @property
    def rank(self) -> int:
        return int(self.w1b.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        dims(where, w1a=self.w1a, w1b=self.w1b, w2a=self.w2a, w2b=self.w2b)
        if (self.t1 is None) != (self.t2 is None):
            raise ShapeMismatchError(f"{where}: LoHa Tucker needs both t1 and t2 ({self.shapes()})")
        if self.tucker:
            ok = all(
                t is not None and t.dim() == 4 and t.shape[0] == a.shape[0] and t.shape[1] == b.shape[0]
                for t, a, b in ((self.t1, self.w1a, self.w1b), (self.t2, self.w2a, self.w2b))
            )
        else:
            ok = (
                all(t.dim() == 2 for t in (self.w1a, self.w1b, self.w2a, self.w2b))
                and self.w1a.shape[1] == self.w1b.shape[0]
                and self.w2a.shape[1] == self.w2b.shape[0]
            )
        if not ok:
            raise ShapeMismatchError(f"{where}: LoHa factor ranks do not agree ({self.shapes()})")

    def _factor_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of the two Hadamard factors (``(out, rest)`` plain, ``(out, in, kh, kw)`` Tucker)."""
        if self.tucker:
            assert self.t1 is not None and self.t2 is not None
            return (
                (self.w1a.flatten(1).shape[1], self.w1b.flatten(1).shape[1], *self.t1.shape[2:]),
                (self.w2a.flatten(1).shape[1], self.w2b.flatten(1).shape[1], *self.t2.shape[2:]),
            )
        return (self.w1a.shape[0], self.w1b.flatten(1).shape[1]), (self.w2a.shape[0], self.w2b.flatten(1).shape[1])

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        m1, m2 = self._factor_shapes()
        if self.tucker:
            want = tuple(base_shape)
        else:
            want = (base_shape[0], torch.Size(base_shape[1:]).numel()) if len(base_shape) >= 2 else ()
        if m1 != want or m2 != want:
            raise ShapeMismatchError(
                f"{where}: LoHa factors {m1} and {m2} do not rebuild a weight of shape {tuple(base_shape)} "
                f"({self.shapes()})"
            )

    def delta_weight(self, base: Tensor) -> Tensor:
        if self.t1 is not None and self.t2 is not None:
            m1 = tucker(self.t1, self.w1a, self.w1b)
            m2 = tucker(self.t2, self.w2a, self.w2b)
        else:
            m1 = f32(self.w1a) @ f32(self.w1b)
            m2 = f32(self.w2a) @ f32(self.w2b)
        return (m1 * m2).mul_(self.scale).reshape(base.shape)

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> LoHa:
        """The row factors sliced (their output axis: the rows of ``w1a``/``w2a``, their columns for Tucker)."""
        if self.tucker:
            return dataclasses.replace(self, w1a=self.w1a[:, rows], w2a=self.w2a[:, rows])
        return dataclasses.replace(self, w1a=self.w1a[rows], w2a=self.w2a[rows])
