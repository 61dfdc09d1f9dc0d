"""(IA)³: a learned per-channel scaling of the weight, on its output rows or its input columns (LyCORIS ``ia3``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32, need, scalar_value
from .vocab import KeySource, Suffix


@dataclass(frozen=True, slots=True, eq=False)
class IA3(AdapterKind):
    """Infused adapter by inhibiting and amplifying inner activations.

    ``weight`` holds one value per output channel (``on_input=False``) or per input channel (``on_input=True``);
    LyCORIS stores it ``(n,)`` for Linear and ``(1, n, 1, 1)`` for Conv2d, any shape with ``n`` values is accepted.
    ``ΔW = W ⊙ w`` broadcast along axis 0 (output rows) or axis 1 (input columns, i.e. the layer's input scaled by
    ``1 + w``). The file's int64 scalar ``on_input`` is the plain ``bool`` field here, never a tensor, so casting
    the adapter leaves it alone.

    Strength: ``W + s·(W ⊙ w) = W ⊙ (1 + s·w)``: LyCORIS (its multiplier multiplies ``w``) and A1111 agree, linear in
    ``s`` and ``s = 0`` is the base. ComfyUI has no (IA)³. A1111 reads ``on_input`` but its output-side broadcast only
    fits Linear weights.
    """

    weight: Tensor
    on_input: bool = False

    kind_name = "ia3"
    display = "(IA)^3"
    #: LyCORIS ``ia3``: the module's plain ``.weight`` key holds the scaling vector, ``.on_input`` (an int64 or
    #: save-dtype scalar) says which axis; ``on_input`` is what tells it from a plain weight.
    SUFFIXES = (Suffix("weight", "weight"), Suffix("on_input", "on_input"))
    CLAIMS: ClassVar[frozenset[str] | None] = frozenset({"on_input"})
    FLAG_ROLES: ClassVar[frozenset[str]] = frozenset({"on_input"})

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> IA3:
        """``weight`` and ``on_input`` (any dtype: non-zero means input side). A meta ``on_input`` (a header-only read
        that did not read it) is taken as the output side."""
        weight, flag = need(roles, "weight", "on_input", kind="(IA)^3")
        value = scalar_value(flag, "(IA)^3 on_input")
        kind = cls(weight=weight, on_input=bool(value))
        kind.check_tensors("(IA)^3")
        return kind

    def lycoris_tensors(self) -> dict[str, Tensor]:
        """``weight`` as stored and ``on_input`` as a 0-d fp32 flag (what sd-scripts writes with a save precision;
        every reader takes it as ``value != 0``)."""
        return {"weight": self.weight, "on_input": torch.tensor(float(self.on_input), dtype=torch.float32)}

    @property
    def axis(self) -> int:
        """The weight axis that is scaled: 1 (input) or 0 (output)."""
        return 1 if self.on_input else 0

    def scale_vector(self, ndim: int) -> Tensor:
        """``w`` shaped to broadcast against a weight of ``ndim`` dims along :attr:`axis`, fp32."""
        shape = [1] * ndim
        shape[self.axis] = -1
        return f32(self.weight).reshape(shape)

    def delta_weight(self, base: Tensor) -> Tensor:
        return f32(base) * self.scale_vector(base.dim())

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> IA3:
        """Output side: the rows' scales (exact). Input side: every part of a fused projection reads the same input,
        so each keeps the whole vector (exact)."""
        if self.on_input:
            return self
        w = self.weight.reshape(-1)[rows.to(self.weight.device)]
        shape = [1] * self.weight.dim()  # keep the stored layout: (n,), or (1, n, 1, 1) for convolutions
        shape[next((i for i, d in enumerate(self.weight.shape) if d != 1), self.weight.dim() - 1)] = -1
        return dataclasses.replace(self, weight=w.reshape(shape))

    def check_tensors(self, where: str = "") -> None:
        if self.weight.dim() == 0 or self.weight.numel() == 0 or sum(d != 1 for d in self.weight.shape) > 1:
            raise ShapeMismatchError(
                f"{where or self.kind_name}: (IA)³ weight must be a vector of scales, got shape {tuple(self.weight.shape)}"
            )

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        if len(base_shape) < 2:
            raise ShapeMismatchError(
                f"{where}: (IA)³ needs a Linear or Conv weight, got shape {tuple(base_shape)}"
            )
        expected = base_shape[self.axis]
        side = "input" if self.on_input else "output"
        if self.weight.numel() != expected:
            raise ShapeMismatchError(
                f"{where}: (IA)³ weight has {self.weight.numel()} values, the {side} axis of a weight of shape "
                f"{tuple(base_shape)} has {expected}"
            )
