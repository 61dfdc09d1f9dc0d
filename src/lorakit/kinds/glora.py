"""GLoRA: a low-rank map of the weight's input space plus a LoRA term, ``ΔW = (α/r)·(W·a1·a2 + b1·b2)`` (LyCORIS)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import HotswapError, ShapeMismatchError
from .base import AdapterKind, alpha_scale, dims, f32, need, tucker
from .vocab import KeySource, Suffix


def old_layout(a1: Tensor, a2: Tensor, b1: Tensor, b2: Tensor) -> bool:
    """Whether four GLoRA factors use the old LyCORIS names (``a1 (r, in)``, ``a2 (in, r)``, ``b1 (r, in)``,
    ``b2 (out, r)``) rather than today's (``a1 (in, r)``, ``a2 (r, in)``, ``b1 (out, r)``, ``b2 (r, in)``).

    The rank is the axis the four share: ``shape[1]`` of a1/b1 and ``shape[0]`` of a2/b2 today, the other way round in
    the old layout (ComfyUI's test). A square weight fits both; then the rank is the smaller of a1's two sizes, and a
    tie (rank = width) reads as today's layout.
    """
    if min(t.dim() for t in (a1, a2, b1, b2)) < 2:
        return False
    new = a1.shape[1] == a2.shape[0] == b1.shape[1] == b2.shape[0]
    old = a1.shape[0] == a2.shape[1] == b1.shape[0] == b2.shape[1]
    if new and old:
        return bool(a1.shape[0] < a1.shape[1])
    return old


@dataclass(frozen=True, slots=True, eq=False)
class GLoRA(AdapterKind):
    """Generalised LoRA (LyCORIS ``glora``).

    The layer computes ``W(x + A x) + B x`` with ``A = a1 · a2`` (``in × in``, rank ``r``) and ``B = b1 · b2``, so
    ``ΔW = (α / r) · (W ×ᵢ A + B)`` where ``(W ×ᵢ A)[o, j, …] = Σ_i W[o, i, …] · A[i, j]`` acts on the input axis
    of the original weight (spatial axes kept). Shapes, as LyCORIS stores them (``.weight`` of its sub-layers):
    ``a1 (in, r[, 1, 1])``, ``a2 (r, in[, 1, 1])``, ``b1 (out, r[, 1, 1])``, ``b2 (r, in[, kh, kw])`` (the conv's
    kernel, stride and padding live in ``b2``). Optional Tucker core ``bm (r, r, kh, kw)`` with ``b2 (r, in, 1, 1)``:
    ``B[o,i,y,x] = Σ_ab b1[o,a] · bm[a,b,y,x] · b2[b,i]`` (listed by LyCORIS 4.1.3, which never creates it).
    ``r = a2.shape[0]``; ``alpha=None`` means α = r. Old LyCORIS files name the factors the other way round
    (``a1 (r, in)``, ``a2 (in, r)``, ``b1 (r, in)``, ``b2 (out, r)``); formats swap 1↔2 to read them.

    Strength: ``W + s·ΔW``: LyCORIS (its multiplier scales ΔW), ComfyUI (``s·α/r``) and A1111 agree that it is
    linear; A1111 applies no ``α/r`` (it reads the old layout only). ``s = 0`` is the base. Written back in today's
    layout with an explicit ``alpha``.
    """

    a1: Tensor
    a2: Tensor
    b1: Tensor
    b2: Tensor
    alpha: float | None = None
    bm: Tensor | None = None

    kind_name = "glora"
    display = "GLoRA"
    #: LyCORIS ``glora``: the ``.weight`` of its sub-layers a1, a2, b1, b2 (and the Tucker core bm)
    SUFFIXES = tuple(Suffix(f"{n}.weight", f"glora_{n}") for n in ("a1", "a2", "b1", "b2", "bm"))

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> GLoRA:
        """Today's LyCORIS layout, or the old one (1 and 2 swapped, :func:`old_layout`) renamed to it."""
        a1, a2, b1, b2 = need(roles, "glora_a1", "glora_a2", "glora_b1", "glora_b2", kind="GLoRA")
        if old_layout(a1, a2, b1, b2):
            a1, a2, b1, b2 = a2, a1, b2, b1
        kind = cls(a1=a1, a2=a2, b1=b1, b2=b2, bm=roles.get("glora_bm"))
        kind.check_tensors("GLoRA")
        return kind

    def lycoris_tensors(self) -> dict[str, Tensor]:
        out = {"a1.weight": self.a1, "a2.weight": self.a2, "b1.weight": self.b1, "b2.weight": self.b2}
        if self.bm is not None:
            out["bm.weight"] = self.bm
        return out | self._alpha_entry()

    @property
    def rank(self) -> int:
        return int(self.a2.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    def input_map(self) -> Tensor:
        """``A = a1 · a2``, fp32 ``(in, in)``."""
        return f32(self.a1).flatten(1) @ f32(self.a2).flatten(1)

    def lora_part(self, base_shape: torch.Size) -> Tensor:
        """``B = b1 · b2`` (or its Tucker form) shaped like the weight, fp32, unscaled."""
        b1 = f32(self.b1).flatten(1)
        if self.bm is not None:
            return tucker(self.bm, b1.t(), f32(self.b2).flatten(1)).reshape(base_shape)
        return (b1 @ f32(self.b2).flatten(1)).reshape(base_shape)

    def delta_weight(self, base: Tensor) -> Tensor:
        w = f32(base).movedim(1, -1)  # (out, [kh, kw,] in)
        wa = ((w @ f32(self.a1).flatten(1)) @ f32(self.a2).flatten(1)).movedim(-1, 1)
        return (wa + self.lora_part(base.shape)).mul_(self.scale)

    def padded(self, rank: int, where: str = "") -> GLoRA:
        """Zero-padded to ``rank`` with alpha grown alike (same delta); a higher rank raises HotswapError."""
        r = self.rank
        if r == rank:
            return self
        if r > rank:
            raise HotswapError(f"{where or 'glora'}: rank {r} exceeds the hotswap target rank {rank}")
        pad = rank - r

        def grow(t: Tensor, dim: int) -> Tensor:
            widths = [0, 0] * t.dim()
            widths[2 * (t.dim() - 1 - dim) + 1] = pad  # F.pad lists the last axis first
            return F.pad(t, widths)

        bm = None if self.bm is None else grow(grow(self.bm, 0), 1)
        alpha = None if self.alpha is None else float(self.alpha) * rank / r
        return dataclasses.replace(
            self,
            a1=grow(self.a1, 1),
            a2=grow(self.a2, 0),
            b1=grow(self.b1, 1),
            b2=grow(self.b2, 0),
            bm=bm,
            alpha=alpha,
        )

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> GLoRA:
        """``b1`` rows (the only output-side factor); the input map ``a1·a2`` and ``b2`` are shared, and ``W ×ᵢ A`` is
        taken of each part's own weight rows (exact)."""
        return dataclasses.replace(self, b1=self.b1[rows.to(self.b1.device)])

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        dims(where, a1=self.a1, a2=self.a2, b1=self.b1, b2=self.b2)
        r = self.rank
        ok = (
            self.a1.shape[1] == r
            and self.b1.shape[1] == r
            and self.b2.shape[0] == r
            and self.a1.shape[0] == self.a2.flatten(1).shape[1]
            and all(t.dim() == 2 or tuple(t.shape[2:]) == (1,) * (t.dim() - 2) for t in (self.a1, self.a2, self.b1))
        )
        if ok and self.bm is not None:
            ok = self.bm.dim() >= 2 and tuple(self.bm.shape[:2]) == (r, r)
        if not ok:
            raise ShapeMismatchError(f"{where}: GLoRA factor ranks do not agree ({self.shapes()})")

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        shapes = self.shapes()
        if len(base_shape) < 2:
            raise ShapeMismatchError(
                f"{where}: GLoRA needs a Linear or Conv weight, got shape {tuple(base_shape)}"
            )
        out, inn = base_shape[0], base_shape[1]
        kernel = tuple(base_shape[2:])
        r = self.rank
        a1, a2, b1 = (t.flatten(1).shape if t.dim() >= 2 else None for t in (self.a1, self.a2, self.b1))
        ok = (
            a1 == (inn, r)
            and a2 == (r, inn)
            and b1 == (out, r)
            and self.b2.dim() >= 2
            and self.b2.shape[0] == r
        )
        if ok and self.bm is not None:
            ok = (
                self.bm.dim() == 2 + len(kernel)
                and tuple(self.bm.shape) == (r, r, *kernel)
                and self.b2.flatten(1).shape[1] == inn
            )
        elif ok:
            ok = self.b2.flatten(1).shape[1] == torch.Size(base_shape[1:]).numel()
        if not ok:
            raise ShapeMismatchError(
                f"{where}: GLoRA tensors {shapes} (rank {r}) do not fit a weight of shape {tuple(base_shape)}"
            )
