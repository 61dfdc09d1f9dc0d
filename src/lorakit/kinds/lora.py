"""LoRA / LoCon: ``ΔW = (alpha / r) · up @ down``, with an optional Tucker core ``mid`` for k×k convolutions."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import HotswapError, ShapeMismatchError
from .base import AdapterKind, alpha_scale, f32


@dataclass(frozen=True, slots=True, eq=False)
class LoRA(AdapterKind):
    """Low-rank adapter.

    Shapes: Linear ``down (r, in)``, ``up (out, r)``; Conv2d ``down (r, in, kh, kw)`` (carries the layer's
    stride/padding), ``up (out, r, 1, 1)``; Tucker ``down (r, in, 1, 1)``, ``mid (r, r, kh, kw)``, ``up (out, r, 1, 1)``.
    ``bias`` is an optional output-bias delta (PEFT ``lora_B.bias``), scaled like the weight delta.

    Example:
        >>> k = LoRA(down=torch.ones(2, 3), up=torch.ones(4, 2), alpha=1.0)
        >>> k.delta_weight(torch.zeros(4, 3))[0, 0].item()
        1.0
    """

    down: Tensor
    up: Tensor
    alpha: float | None = None
    mid: Tensor | None = None
    bias: Tensor | None = None

    kind_name = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        """Arithmetic shape check (no tensor maths): ranks agree and the factors rebuild ``base_shape``."""
        where = where or self.kind_name
        shapes = self.shapes()
        r = self.down.shape[0]
        out = base_shape[0]
        rest = torch.Size(base_shape[1:]).numel()
        up_rank = self.up.flatten(1).shape[1] if self.up.dim() >= 2 else -1
        if up_rank != r:
            raise ShapeMismatchError(f"{where}: up/down rank mismatch: down has rank {r}, up has {up_rank} ({shapes})")
        if self.up.shape[0] != out:
            raise ShapeMismatchError(
                f"{where}: up has {self.up.shape[0]} outputs, the weight of shape {tuple(base_shape)} has {out} ({shapes})"
            )
        if self.mid is not None:
            ok = (
                self.mid.dim() == 4
                and tuple(self.mid.shape[:2]) == (r, r)
                and len(base_shape) == 4
                and tuple(self.mid.shape[2:]) == tuple(base_shape[2:])
                and self.down.flatten(1).shape[1] == base_shape[1]
            )
        else:
            ok = self.down.dim() >= 2 and self.down.flatten(1).shape[1] == rest
        if not ok:
            raise ShapeMismatchError(
                f"{where}: adapter tensors {shapes} do not rebuild a weight of shape {tuple(base_shape)}"
            )
        if self.bias is not None and self.bias.numel() != out:
            raise ShapeMismatchError(f"{where}: bias delta of {self.bias.numel()} values for {out} outputs")

    def effective_down(self) -> Tensor:
        """``down`` with the Tucker core folded in: ``(r, in, kh, kw)`` for Tucker files, else ``down`` (fp32)."""
        if self.mid is None:
            return f32(self.down)
        return torch.einsum("abyx,bi->aiyx", f32(self.mid), f32(self.down).flatten(1))

    def delta_weight(self, base: Tensor) -> Tensor:
        down = self.effective_down().flatten(1)
        up = f32(self.up).flatten(1)
        return (up @ down).mul_(self.scale).reshape(base.shape)

    def delta_bias(self) -> Tensor | None:
        return None if self.bias is None else f32(self.bias) * self.scale

    def low_rank(self, base_shape: torch.Size) -> tuple[Tensor, Tensor]:
        down = self.effective_down()
        if len(base_shape) == 2:
            down = down.flatten(1)
        elif down.dim() == 2:  # a Linear-shaped factor on a conv: only valid for 1×1 kernels
            down = down.reshape(down.shape[0], *base_shape[1:])
        return down, f32(self.up).flatten(1) * self.scale

    def padded(self, rank: int, where: str = "") -> LoRA:
        """Zero-padded to ``rank`` (same delta: alpha grows with the rank); a higher rank raises HotswapError."""
        r = self.rank
        if r == rank:
            return self
        if r > rank:
            raise HotswapError(
                f"{where or 'lora'}: rank {r} exceeds the hotswap target rank {rank}; call "
                f"enable_lora_hotswap(target_rank={r}) before loading the first adapter"
            )
        pad = rank - r
        down = torch.cat([self.down, self.down.new_zeros((pad, *self.down.shape[1:]))], 0)
        up = torch.cat([self.up, self.up.new_zeros((self.up.shape[0], pad, *self.up.shape[2:]))], 1)
        mid = None if self.mid is None else torch.nn.functional.pad(self.mid, (0, 0, 0, 0, 0, pad, 0, pad))
        alpha = None if self.alpha is None else float(self.alpha) * rank / r
        return dataclasses.replace(self, down=down, up=up, mid=mid, alpha=alpha)

    def zeroed(self, where: str = "") -> LoRA:
        """``up`` (and the bias) zeroed: the delta is zero, ``down`` and the rank stay."""
        return dataclasses.replace(
            self, up=torch.zeros_like(self.up), bias=None if self.bias is None else torch.zeros_like(self.bias)
        )
