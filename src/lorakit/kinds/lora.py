"""LoRA / LoCon: ``ΔW = (alpha / r) · up @ down``, with an optional Tucker core ``mid`` for k×k convolutions."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import HotswapError, ShapeMismatchError
from .base import AdapterKind, alpha_scale, dims, f32, need
from .vocab import ATTNPROC, INTERMEDIATE, KOHYA, PEFT, KeySource, Suffix


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
    uses_base = False
    display = "LoRA"
    SUFFIXES = (
        Suffix("lora_down.weight", "down", KOHYA),
        Suffix("lora_up.weight", "up", KOHYA),
        Suffix("lora_mid.weight", "mid", KOHYA),
        Suffix("lora_up.bias", "up_bias", KOHYA),
        Suffix("lora_A.weight", "down", PEFT),
        Suffix("lora_B.weight", "up", PEFT),
        Suffix("lora_B.bias", "up_bias", PEFT),
        Suffix("lora_A", "down", PEFT),  # a bare parameter (no .weight), as some exporters write it
        Suffix("lora_B", "up", PEFT),
        Suffix("lora.down.weight", "down", INTERMEDIATE),
        Suffix("lora.up.weight", "up", INTERMEDIATE),
        Suffix("lora_linear_layer.down.weight", "down", INTERMEDIATE),
        Suffix("lora_linear_layer.up.weight", "up", INTERMEDIATE),
        # XLabs' Flux LoRALinearLayer (double_blocks.0.processor.qkv_lora1.down.weight)
        Suffix("down.weight", "down", INTERMEDIATE),
        Suffix("up.weight", "up", INTERMEDIATE),
        Suffix("lora.down.weight", "down", ATTNPROC),
        Suffix("lora.up.weight", "up", ATTNPROC),
    )
    #: an output-bias delta alone is no LoRA
    CLAIMS: ClassVar[frozenset[str] | None] = frozenset({"down", "up", "mid"})

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> LoRA:
        down, up = need(roles, "down", "up", kind="LoRA")
        kind = cls(down=down, up=up, mid=roles.get("mid"), bias=roles.get("up_bias"))
        kind.check_tensors("LoRA")
        return kind

    def lycoris_tensors(self) -> dict[str, Tensor]:
        out = {"lora_down.weight": self.down, "lora_up.weight": self.up}
        if self.mid is not None:
            out["lora_mid.weight"] = self.mid
        if self.bias is not None:
            out["lora_up.bias"] = self.bias
        return out | self._alpha_entry()

    def peft_tensors(self) -> dict[str, Tensor] | None:
        if self.mid is not None:  # PEFT has no Tucker core
            return None
        out = {"lora_A.weight": self.down, "lora_B.weight": self.up}
        if self.bias is not None:
            out["lora_B.bias"] = self.bias
        return out

    @property
    def network_module(self) -> str:
        return "networks.lora" if self.mid is None else "lycoris.kohya"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return alpha_scale(self.alpha, self.rank)

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        dims(where, down=self.down, up=self.up)
        r = self.down.shape[0]
        up_rank = self.up.flatten(1).shape[1]
        if up_rank != r:
            raise ShapeMismatchError(
                f"{where}: up/down rank mismatch: down has rank {r}, up has {up_rank} ({self.shapes()})"
            )
        if self.mid is not None and (self.mid.dim() != 4 or tuple(self.mid.shape[:2]) != (r, r)):
            raise ShapeMismatchError(f"{where}: lora_mid must be (rank, rank, kh, kw) for rank {r} ({self.shapes()})")

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        """Arithmetic shape check (no tensor maths): ranks agree and the factors rebuild ``base_shape``."""
        where = where or self.kind_name
        self.check_tensors(where)
        shapes = self.shapes()
        out = base_shape[0]
        rest = torch.Size(base_shape[1:]).numel()
        if self.up.shape[0] != out:
            raise ShapeMismatchError(
                f"{where}: up has {self.up.shape[0]} outputs, the weight of shape {tuple(base_shape)} has {out} ({shapes})"
            )
        if self.mid is not None:
            ok = (
                len(base_shape) == 4
                and tuple(self.mid.shape[2:]) == tuple(base_shape[2:])
                and self.down.flatten(1).shape[1] == base_shape[1]
            )
        else:
            ok = self.down.flatten(1).shape[1] == rest
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

    # -- fused projections -----------------------------------------------------------------------------------------
    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> LoRA:
        """``down`` kept, ``up`` (and the bias) sliced: the delta's rows."""
        return dataclasses.replace(self, up=self.up[rows], bias=None if self.bias is None else self.bias[rows])

    def split_rows(self, sizes: list[int], in_shape: tuple[int, ...], assume_block: bool = False) -> list[AdapterKind]:
        """kohya ``split_qkv`` files give each part its own rank block (down ``(n·r, in)``, block-diagonal up): split
        both factors so each part keeps rank ``r``; otherwise slice ``up`` rows (every part keeps the whole ``down``).
        """
        block = self._block_parts(sizes, assume_block) if len(sizes) > 1 else None
        if block is not None:
            return block
        return AdapterKind.split_rows(self, sizes, in_shape, assume_block)  # a slots dataclass: no zero-arg super()

    def _block_parts(self, sizes: list[int], assume_block: bool) -> list[AdapterKind] | None:
        """The block-diagonal split, recognised from the zero pattern of ``up`` (for meta tensors, as a header-only
        read has, from the header's ``split_qkv`` flag: ``assume_block``), or ``None``."""
        n = len(sizes)
        r_total = int(self.down.shape[0])
        if self.mid is not None or r_total % n or int(self.up.shape[1]) != r_total:
            return None
        r = r_total // n
        up = self.up.flatten(1)
        if up.device.type == "meta":
            if not assume_block:
                return None
        else:
            mask = torch.ones(up.shape, dtype=torch.bool)
            row = 0
            for i, size in enumerate(sizes):
                mask[row : row + size, i * r : (i + 1) * r] = False
                row += size
            if bool((up[mask] != 0).any()):
                return None
        parts: list[AdapterKind] = []
        row = 0
        for i, size in enumerate(sizes):
            parts.append(
                dataclasses.replace(
                    self,
                    down=self.down[i * r : (i + 1) * r],
                    up=self.up[row : row + size, i * r : (i + 1) * r],
                    bias=None if self.bias is None else self.bias[row : row + size],
                )
            )
            row += size
        return parts
