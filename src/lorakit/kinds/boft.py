"""BOFT: butterfly orthogonal fine-tuning, a product of ``m`` permuted block-diagonal rotations (LyCORIS ``boft``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32, need, scalar_value, whole_chunks
from .oft import LYCORIS, cayley, limit_norm, norm_factor, skew
from .vocab import KeySource, Suffix


def butterfly_order(out: int, half_block: int, stage: int, device: torch.device | None = None) -> Tensor:
    """Row order of butterfly stage ``stage``: position ``p`` of the permuted rows holds row ``order[p]``.

    With ``k = half_block · 2**stage`` every row index is ``j = c·2k + g·k + t`` (``g ∈ {0, 1}``, ``0 ≤ t < k``) and
    goes to position ``c·2k + 2t + g``: inside each group of ``2k`` rows the two halves are interleaved. The stage's
    rotation blocks then act on consecutive runs of ``2·half_block`` permuted rows, i.e. each block mixes rows
    ``t, t+k`` for ``half_block`` consecutive ``t`` of one group.
    """
    k = half_block * 2**stage
    return torch.arange(out, device=device).reshape(-1, 2, k).transpose(1, 2).reshape(-1)


@dataclass(frozen=True, slots=True, eq=False)
class BOFT(AdapterKind):
    """Butterfly OFT on the output rows.

    ``blocks`` is ``(m, n, b, b)`` with ``n · b = out``, ``b`` even and ``2**(m−1)`` dividing ``n`` (LyCORIS picks ``n``
    a power of two and ``m = log2(n) + 1`` at most). ``Q = B − Bᵀ`` is norm-limited over all ``m·n`` blocks together
    exactly as LyCORIS diag-OFT does (``constraint = alpha · out``, 0 = none) and ``R = (I + Q)(I − Q)⁻¹`` per block.
    The weight ``X`` (viewed ``(out, in·kh·kw)``) goes through the stages ``i = 0 … m−1`` in order: permute its rows by
    :func:`butterfly_order` (``k = b/2 · 2**i``), multiply row block ``j`` of the permuted rows by ``R[i, j]`` (not
    transposed, unlike diag-OFT), undo the permutation. Finally each row ``o`` is multiplied by ``rescale[o]`` if
    present. ``W' = rescale ⊙ X_m``.

    Strength: ``W + s·(W' − W)``: linear, exact at ``s = 0`` (the base) and ``s = 1``. LyCORIS interpolates every stage
    (``s·R_i + (1 − s)·I``), a polynomial of degree ``m`` in ``s`` that agrees at ``s ∈ {0, 1}`` (and at every ``s``
    when ``m = 1``); ComfyUI does the same and multiplies the difference by ``s`` once more, with ``alpha`` itself
    (not ``alpha · out``) as the constraint. A1111 has no BOFT. lorakit keeps the linear rule so adapters add.
    """

    blocks: Tensor
    alpha: float | None = None
    rescale: Tensor | None = None

    kind_name = "boft"
    display = "BOFT"
    #: LyCORIS ``boft``: 4-D ``oft_blocks`` (stages, blocks, size, size) and the optional ``rescale`` (shared with OFT);
    #: ``alpha`` (the neutral suffix) is the constraint
    SUFFIXES = (Suffix("oft_blocks", "oft_blocks"), Suffix("rescale", "rescale"))

    @classmethod
    def claims(cls, roles: Mapping[str, Tensor]) -> bool:
        blocks = roles.get("oft_blocks")
        return blocks is not None and blocks.dim() == 4

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> BOFT:
        """4-D ``oft_blocks`` (+ ``rescale``); ``alpha`` is the constraint, read here (see :meth:`with_alpha`)."""
        (blocks,) = need(roles, "oft_blocks", kind="BOFT")
        kind = cls(blocks=blocks, alpha=scalar_value(roles.get("alpha"), "BOFT alpha"), rescale=roles.get("rescale"))
        kind.check_tensors("BOFT")
        return kind

    def with_alpha(self, alpha: float | None) -> BOFT:
        """Itself: BOFT's ``alpha`` is the norm constraint, not a scale's alpha."""
        return self

    def lycoris_tensors(self) -> dict[str, Tensor]:
        alpha = 0.0 if self.alpha is None else float(self.alpha)
        out = {"oft_blocks": self.blocks, "alpha": torch.tensor(alpha, dtype=torch.float32)}
        if self.rescale is not None:
            out["rescale"] = self.rescale
        return out

    @property
    def stages(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def block_count(self) -> int:
        return int(self.blocks.shape[1])

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[-1])

    @property
    def out_features(self) -> int:
        return self.block_count * self.block_size

    @property
    def constraint(self) -> float | None:
        return None if self.alpha is None else float(self.alpha) * self.out_features

    def rotations(self) -> Tensor:
        """``R`` per stage and block, fp32 ``(m, n, b, b)``."""
        return cayley(limit_norm(skew(self.blocks), self.constraint, LYCORIS))

    def transform(self, t: Tensor, dim: int = 0) -> Tensor:
        """Apply the butterfly product (then ``rescale``) along axis ``dim`` of ``t`` (``out`` values), fp32."""
        x = f32(t).movedim(dim, 0)
        shape = x.shape
        y = x.reshape(shape[0], -1)
        rot = self.rotations()
        for i in range(self.stages):
            order = butterfly_order(self.out_features, self.block_size // 2, i, device=y.device)
            mixed = torch.matmul(rot[i], y[order].reshape(self.block_count, self.block_size, -1))
            y = torch.empty_like(y).index_copy_(0, order, mixed.reshape(y.shape))
        y = y.reshape(shape)
        if self.rescale is not None:
            y = y * f32(self.rescale).reshape(-1, *([1] * (y.dim() - 1)))
        return y.movedim(0, dim)

    def delta_weight(self, base: Tensor) -> Tensor:
        w = f32(base)
        return self.transform(w) - w

    @property
    def span(self) -> int:
        """The rows the last butterfly stage mixes together: ``b · 2**(m−1)`` (every earlier stage mixes fewer)."""
        return self.block_size * 2 ** (self.stages - 1)

    def unconstrained(self) -> BOFT:
        """The same transform with the norm limit (global over every stage and block) folded into the blocks."""
        factor = norm_factor(skew(self.blocks), self.constraint, LYCORIS)
        blocks = f32(self.blocks) if factor is None else f32(self.blocks) * factor
        return dataclasses.replace(self, blocks=blocks, alpha=None)

    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> BOFT:
        """Exact when ``rows`` are whole spans of the last stage (:attr:`span` rows, which every stage keeps apart):
        each stage's blocks of those spans, with the norm limit of the whole taken first. LyCORIS' default stage count
        (``log2(n) + 1``) makes the last stage span every row, so its adapters never split.

        Raises:
            NotSeparable: a butterfly stage mixes rows of two parts.
        """
        span = self.span
        idx = whole_chunks(rows, span, "BOFT butterfly spans")
        per = span // self.block_size
        blocks_idx = (idx[:, None] * per + torch.arange(per)).reshape(-1)
        kind = self.unconstrained()
        rescale = None
        if self.rescale is not None:
            rescale = self.rescale.reshape(total, -1)[rows].reshape(rows.numel(), *self.rescale.shape[1:])
        return dataclasses.replace(kind, blocks=kind.blocks[:, blocks_idx.to(kind.blocks.device)], rescale=rescale)

    def zeroed(self, where: str = "") -> BOFT:
        """Same shapes, identity transform (zero delta): zero blocks, unit rescale."""
        rescale = None if self.rescale is None else torch.ones_like(self.rescale)
        return dataclasses.replace(self, blocks=torch.zeros_like(self.blocks), rescale=rescale)

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        shapes = self.shapes()
        if self.blocks.dim() != 4 or self.blocks.shape[2] != self.blocks.shape[3]:
            raise ShapeMismatchError(
                f"{where}: BOFT oft_blocks must be (stages, blocks, size, size), got {shapes}"
            )
        m, n, b = self.stages, self.block_count, self.block_size
        if b % 2 or b == 0 or m < 1 or n % 2 ** (m - 1):
            raise ShapeMismatchError(
                f"{where}: {m} butterfly stages need an even block size and 2**{m - 1} dividing {n} blocks ({shapes})"
            )
        if self.rescale is not None and self.rescale.numel() != self.out_features:
            raise ShapeMismatchError(
                f"{where}: rescale has {self.rescale.numel()} values for {self.out_features} rows ({shapes})"
            )

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        shapes = self.shapes()
        if len(base_shape) < 2:
            raise ShapeMismatchError(
                f"{where}: BOFT needs a Linear or Conv weight, got shape {tuple(base_shape)}"
            )
        n, b = self.block_count, self.block_size
        if self.out_features != base_shape[0]:
            raise ShapeMismatchError(
                f"{where}: {n} blocks of {b} cover {self.out_features} rows, the weight of shape {tuple(base_shape)} "
                f"has {base_shape[0]} ({shapes})"
            )
        if self.rescale is not None and self.rescale.numel() != base_shape[0]:
            raise ShapeMismatchError(
                f"{where}: rescale has {self.rescale.numel()} values for {base_shape[0]} outputs ({shapes})"
            )
