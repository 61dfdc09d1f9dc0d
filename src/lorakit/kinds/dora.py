"""DoRA: a magnitude re-normalisation applied on top of another kind (LoRA, LoHa or LoKr): a wrapper, not a kind of
its own (``kinds.WRAPPERS``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import HotswapError, ShapeMismatchError
from .base import AdapterKind, NotSeparable, f32
from .vocab import KOHYA, PEFT, Suffix

#: eps added to the norm, as LyCORIS does (fp32 machine epsilon); PEFT adds none (difference ~1e-7 relative).
DORA_EPS = float(torch.finfo(torch.float32).eps)


def magnitude_axis(scale: Tensor) -> str:
    """LyCORIS ``dora_scale`` axis from its shape: (out, 1[, 1, 1]) -> "out", (1, in[, 1, 1]) -> "in"."""
    shape = tuple(scale.shape)
    if len(shape) <= 1 or all(s == 1 for s in shape[1:]):
        return "out"
    if shape[0] == 1:
        return "in"
    raise ShapeMismatchError(f"dora_scale of shape {shape} is neither (out, 1, ...) nor (1, in, ...)")


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
    display = "DoRA"
    #: LyCORIS ``dora_scale`` ((out, 1[, 1, 1]) or (1, in[, 1, 1])) and PEFT's ``lora_magnitude_vector`` (always the
    #: output axis), read beside the inner kind's tensors
    SUFFIXES = (
        Suffix("dora_scale", "dora_scale", KOHYA),
        Suffix("lora_magnitude_vector", "magnitude", PEFT),
        Suffix("lora_magnitude_vector.weight", "magnitude", PEFT),
    )

    @classmethod
    def wrap(cls, inner: AdapterKind, roles: Mapping[str, Tensor]) -> tuple[AdapterKind, tuple[str, ...]]:
        """``inner`` wrapped when ``roles`` hold a magnitude, and the roles used (``((inner, ()))`` otherwise).

        Raises:
            ShapeMismatchError: a ``dora_scale`` on neither axis.
        """
        if "magnitude" in roles:  # PEFT lora_magnitude_vector: (out,) or (1, out, 1, 1), always per output row
            return cls(inner=inner, magnitude=roles["magnitude"].flatten(), axis="out"), ("magnitude",)
        if "dora_scale" in roles:
            scale = roles["dora_scale"]
            return cls(inner=inner, magnitude=scale.flatten(), axis=magnitude_axis(scale)), ("dora_scale",)
        return inner, ()

    def lycoris_tensors(self) -> dict[str, Tensor]:
        out = self.inner.lycoris_tensors()
        m = self.magnitude.flatten()
        tail = (1, 1) if any(t.dim() == 4 for t in out.values()) else ()
        out["dora_scale"] = m.reshape(-1, 1, *tail) if self.axis == "out" else m.reshape(1, -1, *tail)
        return out

    def peft_tensors(self) -> dict[str, Tensor] | None:
        inner = self.inner.peft_tensors()
        if inner is None or self.axis != "out":  # PEFT's magnitude is per output row
            return None
        m = self.magnitude.flatten()
        inner["lora_magnitude_vector"] = m.reshape(1, -1, 1, 1) if any(t.dim() == 4 for t in inner.values()) else m
        return inner

    def with_alpha(self, alpha: float | None) -> DoRA:
        return dataclasses.replace(self, inner=self.inner.with_alpha(alpha))

    @property
    def rank(self) -> int | None:
        return self.inner.rank

    @property
    def scale(self) -> float:
        return self.inner.scale

    @property
    def alpha(self) -> float | None:
        return self.inner.alpha

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

    def check_tensors(self, where: str = "") -> None:
        if self.axis not in ("out", "in"):
            raise ShapeMismatchError(f"{where or 'dora'}: axis must be 'out' or 'in', got {self.axis!r}")
        self.inner.check_tensors(where)

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        self.check_tensors(where)
        self.inner.check_shape(base_shape, where)
        if len(base_shape) < 2:
            raise ShapeMismatchError(f"{where or 'dora'}: DoRA needs a Linear or Conv weight, got {tuple(base_shape)}")
        expected = base_shape[0] if self.axis == "out" else base_shape[1]
        if self.magnitude.numel() != expected:
            raise ShapeMismatchError(
                f"{where or 'dora'}: magnitude has {self.magnitude.numel()} values, the {self.axis}-axis of a weight "
                f"of shape {tuple(base_shape)} has {expected}"
            )

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> DoRA:
        """Output-axis magnitudes slice with the rows; an input-axis norm spans every row."""
        if self.axis != "out":
            raise NotSeparable("an input-axis DoRA magnitude spans every output row")
        inner = self.inner.select_rows(rows, total, in_shape)
        return DoRA(inner=inner, magnitude=self.magnitude.flatten()[rows], axis="out")

    def split_rows(self, sizes: list[int], in_shape: tuple[int, ...], assume_block: bool = False) -> list[AdapterKind]:
        if self.axis != "out":
            raise NotSeparable("an input-axis DoRA magnitude spans every output row")
        return AdapterKind.split_rows(self, sizes, in_shape, assume_block)  # slots dataclass: no zero-arg super

    def padded(self, rank: int, where: str = "") -> DoRA:
        return dataclasses.replace(self, inner=self.inner.padded(rank, where))

    def zeroed(self, where: str = "") -> AdapterKind:
        raise HotswapError(f"{where or 'dora'}: the new adapter does not target this DoRA module; hotswap cannot zero it")
