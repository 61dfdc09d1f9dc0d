"""LoKr: Kronecker product of two factors, each full or low rank, ``ΔW = scale · kron(w1, w2)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, MissingTensorsError, UnsupportedVariantError, dims, f32, tucker
from .full import Full
from .vocab import KeySource, Suffix

_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2")


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
    uses_base = False
    display = "LoKr"
    #: LyCORIS names; role = suffix (``lokr_t1`` is read to be refused by name)
    SUFFIXES = tuple(Suffix(n, n) for n in _ROLES)

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> LoKr:
        if "lokr_t1" in roles:
            raise UnsupportedVariantError("LoKr with lokr_t1 (a Tucker first factor) is not written by any known trainer")
        has1 = "lokr_w1" in roles or ("lokr_w1_a" in roles and "lokr_w1_b" in roles)
        has2 = "lokr_w2" in roles or ("lokr_w2_a" in roles and "lokr_w2_b" in roles)
        if not (has1 and has2):
            raise MissingTensorsError("LoKr needs lokr_w1 (or lokr_w1_a+b) and lokr_w2 (or lokr_w2_a+b)")
        kind = cls(
            w1=roles.get("lokr_w1"),
            w1a=roles.get("lokr_w1_a"),
            w1b=roles.get("lokr_w1_b"),
            w2=roles.get("lokr_w2"),
            w2a=roles.get("lokr_w2_a"),
            w2b=roles.get("lokr_w2_b"),
            t2=roles.get("lokr_t2"),
        )
        kind.check_tensors("LoKr")
        return kind

    def lycoris_tensors(self) -> dict[str, Tensor]:
        named = {
            "lokr_w1": self.w1,
            "lokr_w1_a": self.w1a,
            "lokr_w1_b": self.w1b,
            "lokr_w2": self.w2,
            "lokr_w2_a": self.w2a,
            "lokr_w2_b": self.w2b,
            "lokr_t2": self.t2,
        }
        return {n: t for n, t in named.items() if t is not None} | self._alpha_entry()

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

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        dims(where, w1=self.w1, w1a=self.w1a, w1b=self.w1b, w2=self.w2, w2a=self.w2a, w2b=self.w2b)
        shapes = self.shapes()
        if self.w1 is None:
            if self.w1a is None or self.w1b is None:
                raise ShapeMismatchError(f"{where}: LoKr needs w1 or both w1a and w1b ({shapes})")
            if self.w1a.dim() != 2 or self.w1b.dim() != 2 or self.w1a.shape[1] != self.w1b.shape[0]:
                raise ShapeMismatchError(f"{where}: LoKr w1a @ w1b ranks do not agree ({shapes})")
        elif self.w1.dim() != 2:
            raise ShapeMismatchError(f"{where}: LoKr w1 must be 2-D ({shapes})")
        if self.w2 is not None:
            return
        if self.w2a is None or self.w2b is None:
            raise ShapeMismatchError(f"{where}: LoKr needs w2 or both w2a and w2b ({shapes})")
        if self.t2 is not None:
            ok = self.t2.dim() == 4 and tuple(self.t2.shape[:2]) == (self.w2a.shape[0], self.w2b.shape[0])
        else:
            ok = self.w2a.dim() == 2 and self.w2b.dim() == 2 and self.w2a.shape[1] == self.w2b.shape[0]
        if not ok:
            raise ShapeMismatchError(f"{where}: LoKr second-factor ranks do not agree ({shapes})")

    def _factor_shapes(self) -> tuple[tuple[int, int], tuple[int, ...]]:
        """``(rows, cols)`` of the first factor and the shape of the second (before flattening)."""
        if self.w1 is not None:
            f1 = (int(self.w1.shape[0]), int(self.w1.shape[1]))
        else:
            assert self.w1a is not None and self.w1b is not None
            f1 = (int(self.w1a.shape[0]), int(self.w1b.shape[1]))
        if self.w2 is not None:
            f2: tuple[int, ...] = tuple(self.w2.shape)
        elif self.t2 is not None:
            assert self.w2a is not None and self.w2b is not None
            f2 = (self.w2a.flatten(1).shape[1], self.w2b.flatten(1).shape[1], *self.t2.shape[2:])
        else:
            assert self.w2a is not None and self.w2b is not None
            f2 = (int(self.w2a.shape[0]), int(self.w2b.shape[1]))
        return f1, f2

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        (a, b), f2 = self._factor_shapes()
        rows, cols = a * f2[0], b * torch.Size(f2[1:]).numel()
        ok = len(base_shape) >= 2 and rows == base_shape[0] and cols == torch.Size(base_shape[1:]).numel()
        if ok and len(f2) == 4 and len(base_shape) == 4:
            ok = tuple(f2[2:]) == tuple(base_shape[2:])  # a spatial second factor carries the layer's kernel
        if not ok:
            raise ShapeMismatchError(
                f"{where}: kron of {(a, b)} and {f2} is {(rows, cols)}, not a weight of shape {tuple(base_shape)} "
                f"({self.shapes()})"
            )

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

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> AdapterKind:
        """``w1`` rows when ``rows`` are whole Kronecker blocks (exact, still a LoKr); otherwise the exact dense delta
        of those rows (a :class:`Full`)."""
        w1 = self.w1 if self.w1 is not None else self.w1a
        assert w1 is not None
        out_l = int(w1.shape[0])
        if out_l > 0 and total % out_l == 0:
            out_k = total // out_l
            n = rows.numel()
            if n % out_k == 0:
                blocks = rows.reshape(-1, out_k)
                starts = blocks[:, 0]
                if bool((starts % out_k == 0).all()) and bool((blocks - starts[:, None] == torch.arange(out_k)).all()):
                    a = starts // out_k
                    if self.w1 is not None:
                        return dataclasses.replace(self, w1=self.w1[a])
                    assert self.w1a is not None
                    return dataclasses.replace(self, w1a=self.w1a[a])
        delta = self.delta_weight(torch.empty((total, *in_shape), device="meta"))
        return Full(diff=delta[rows].contiguous())
