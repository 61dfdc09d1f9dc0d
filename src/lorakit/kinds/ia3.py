"""(IA)³: a learned per-channel scaling of the weight, on its output rows or its input columns (LyCORIS ``ia3``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32
from .vocab import Suffix


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
    #: save-dtype scalar) says which axis; ``on_input`` is what tells it from a plain weight. Not registered yet
    #: (``kinds.NOT_APPLIED``).
    SUFFIXES = (Suffix("weight", "weight"), Suffix("on_input", "on_input"))
    CLAIMS: ClassVar[frozenset[str] | None] = frozenset({"on_input"})
    FLAG_ROLES: ClassVar[frozenset[str]] = frozenset({"on_input"})

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

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
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
