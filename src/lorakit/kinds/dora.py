"""DoRA: a magnitude re-normalisation applied on top of another kind (LoRA, LoHa or LoKr)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import HotswapError, ShapeMismatchError
from .base import AdapterKind, f32

#: eps added to the norm, as LyCORIS does (fp32 machine epsilon); PEFT adds none (difference ~1e-7 relative).
DORA_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True, slots=True, eq=False)
class DoRA(AdapterKind):
    """Weight-decomposed adapter.

    ``V = W + ΔW_inner``, ``n = ‖V‖`` per output row (``axis="out"``: LyCORIS ``wd_on_out``, PEFT) or per input column
    (``axis="in"``: older LyCORIS, OneTrainer), then ``W' = m · V / n`` at strength 1. The delta is ``W' − W``; a
    strength ``s`` gives ``W + s·(W' − W)`` (the A1111 / ComfyUI interpolation, linear in ``s`` so several adapters add).
    ``magnitude`` is stored 1-D (``out`` or ``in`` values); formats decide the axis from the source layout.
    """

    inner: AdapterKind
    magnitude: Tensor
    axis: str = "out"

    kind_name = "dora"

    @property
    def rank(self) -> int | None:
        return self.inner.rank

    @property
    def scale(self) -> float:
        return self.inner.scale

    @property
    def alpha(self) -> float | None:
        return getattr(self.inner, "alpha", None)

    def merged_weight(self, base: Tensor) -> Tensor:
        """``m · V / ‖V‖`` in fp32."""
        w = f32(base)
        v = w + self.inner.delta_weight(base)
        dims = tuple(range(1, v.dim())) if self.axis == "out" else (0, *range(2, v.dim()))
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True) + DORA_EPS
        mag = f32(self.magnitude)
        if mag.numel() != norm.numel():
            raise ShapeMismatchError(
                f"dora: magnitude of {mag.numel()} values for an {self.axis}-axis norm of {norm.numel()} values"
            )
        return v * (mag.reshape(norm.shape) / norm)

    def delta_weight(self, base: Tensor) -> Tensor:
        return self.merged_weight(base) - f32(base)

    def delta_bias(self) -> Tensor | None:
        return self.inner.delta_bias()

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        self.inner.check_shape(base_shape, where)
        expected = base_shape[0] if self.axis == "out" else base_shape[1]
        if self.magnitude.numel() != expected:
            raise ShapeMismatchError(
                f"{where or 'dora'}: magnitude has {self.magnitude.numel()} values, the {self.axis}-axis of a weight "
                f"of shape {tuple(base_shape)} has {expected}"
            )

    def padded(self, rank: int, where: str = "") -> DoRA:
        return dataclasses.replace(self, inner=self.inner.padded(rank, where))

    def zeroed(self, where: str = "") -> AdapterKind:
        raise HotswapError(f"{where or 'dora'}: the new adapter does not target this DoRA module; hotswap cannot zero it")
