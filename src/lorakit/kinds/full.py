"""Full deltas: LyCORIS ``diff`` (weight) and ``diff_b`` (bias), also used for norm-layer ``w_norm``/``b_norm``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32
from .vocab import KeySource, Suffix


@dataclass(frozen=True, slots=True, eq=False)
class Full(AdapterKind):
    """A dense delta: ``W' = W + s·diff`` and ``b' = b + s·diff_b``. Either may be absent."""

    diff: Tensor | None = None
    diff_b: Tensor | None = None

    kind_name = "full"
    uses_base = False
    display = "full delta"
    applies_to_norm = True
    #: LyCORIS ``full`` (``diff``/``diff_b``) and ``norms`` (``w_norm``/``b_norm``, the 1-D deltas of norm layers)
    SUFFIXES = tuple(Suffix(n, n) for n in ("diff", "diff_b", "w_norm", "b_norm"))

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> Full:
        return cls(diff=roles.get("diff", roles.get("w_norm")), diff_b=roles.get("diff_b", roles.get("b_norm")))

    def lycoris_tensors(self) -> dict[str, Tensor]:
        one_d = self.diff is not None and self.diff.dim() == 1  # a norm layer's delta: LyCORIS names it w_norm
        out: dict[str, Tensor] = {}
        if self.diff is not None:
            out["w_norm" if one_d else "diff"] = self.diff
        if self.diff_b is not None:
            out["b_norm" if one_d else "diff_b"] = self.diff_b
        return out

    def check_tensors(self, where: str = "") -> None:
        if self.diff is None and self.diff_b is None:
            raise ShapeMismatchError(f"{where or self.kind_name}: a full delta needs diff or diff_b")

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        if self.diff is not None and self.diff.numel() != torch.Size(base_shape).numel():
            raise ShapeMismatchError(
                f"{where}: diff of shape {tuple(self.diff.shape)} does not fit a weight of shape {tuple(base_shape)}"
            )
        out = base_shape[0] if len(base_shape) else 1
        if self.diff_b is not None and self.diff_b.numel() != out:
            raise ShapeMismatchError(f"{where}: bias delta of {self.diff_b.numel()} values for {out} outputs")

    def delta_weight(self, base: Tensor) -> Tensor:
        if self.diff is None:
            return torch.zeros(base.shape, dtype=torch.float32, device=base.device)
        return f32(self.diff).reshape(base.shape)

    def delta_bias(self) -> Tensor | None:
        return None if self.diff_b is None else f32(self.diff_b).flatten()

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> Full:
        diff = None if self.diff is None else self.diff.reshape(total, -1)[rows].reshape(len(rows), *in_shape)
        return Full(diff=diff, diff_b=None if self.diff_b is None else self.diff_b.flatten()[rows])
