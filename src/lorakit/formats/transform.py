"""Row surgery on canonical kinds: splitting a fused projection (SD3 ``qkv``) and swapping output halves (SD3 adaLN).

Every operation is exact (formats.md §8.3): LoRA keeps ``down`` and slices ``up`` rows (kohya ``split_qkv`` files,
whose ``up`` is block-diagonal, also slice ``down``); LoHa slices the row factors; LoKr slices ``w1`` rows when the
requested rows are whole Kronecker blocks and otherwise falls back to the exact dense delta; full deltas slice rows;
output-axis DoRA slices its magnitude. Input-axis DoRA spans all rows and cannot be split.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA


class NotSeparable(Exception):
    """Raised when an adapter cannot be restricted to a subset of output rows."""


def _lokr_rows(kind: LoKr, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> AdapterKind:
    w1 = kind.w1 if kind.w1 is not None else kind.w1a
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
                if kind.w1 is not None:
                    return dataclasses.replace(kind, w1=kind.w1[a])
                return dataclasses.replace(kind, w1a=kind.w1a[a])  # type: ignore[index]
    # not whole Kronecker blocks: the exact dense delta of those rows
    delta = kind.delta_weight(torch.empty((total, *in_shape), device="meta"))
    return Full(diff=delta[rows].contiguous())


def select_rows(kind: AdapterKind, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> AdapterKind:
    """The adapter restricted to output ``rows`` (a 1-D long tensor) of a weight with ``total`` rows."""
    if isinstance(kind, LoRA):
        return dataclasses.replace(kind, up=kind.up[rows], bias=None if kind.bias is None else kind.bias[rows])
    if isinstance(kind, LoHa):
        if kind.t1 is not None and kind.t2 is not None:
            return dataclasses.replace(kind, w1a=kind.w1a[:, rows], w2a=kind.w2a[:, rows])
        return dataclasses.replace(kind, w1a=kind.w1a[rows], w2a=kind.w2a[rows])
    if isinstance(kind, LoKr):
        return _lokr_rows(kind, rows, total, in_shape)
    if isinstance(kind, Full):
        diff = None if kind.diff is None else kind.diff.reshape(total, -1)[rows].reshape(len(rows), *in_shape)
        return Full(diff=diff, diff_b=None if kind.diff_b is None else kind.diff_b.flatten()[rows])
    if isinstance(kind, DoRA):
        if kind.axis != "out":
            raise NotSeparable("an input-axis DoRA magnitude spans every output row")
        inner = select_rows(kind.inner, rows, total, in_shape)
        return DoRA(inner=inner, magnitude=kind.magnitude.flatten()[rows], axis="out")
    raise NotSeparable(f"{type(kind).__name__} cannot be split by rows")


def _block_split_lora(kind: LoRA, sizes: list[int], assume_block: bool = False) -> list[AdapterKind] | None:
    """kohya ``split_qkv`` layout: down (n·r, in) and a block-diagonal up (Σ out, n·r); each part gets rank r.

    The layout is recognised from the zero pattern of ``up``; for meta tensors (header-only inspection) the header's
    ``split_qkv`` flag (``assume_block``) decides instead.
    """
    n = len(sizes)
    r_total = int(kind.down.shape[0])
    if kind.mid is not None or r_total % n or kind.up.dim() < 2 or int(kind.up.shape[1]) != r_total:
        return None
    r = r_total // n
    up = kind.up.flatten(1)
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
                kind,
                down=kind.down[i * r : (i + 1) * r],
                up=kind.up[row : row + size, i * r : (i + 1) * r],
                bias=None if kind.bias is None else kind.bias[row : row + size],
            )
        )
        row += size
    return parts


def split_rows(
    kind: AdapterKind, sizes: list[int], in_shape: tuple[int, ...], assume_block: bool = False
) -> list[AdapterKind]:
    """Split a fused-projection adapter into one adapter per part (``sizes`` = output rows of each part)."""
    if isinstance(kind, LoRA) and len(sizes) > 1:
        block = _block_split_lora(kind, sizes, assume_block)
        if block is not None:
            return block
    total = sum(sizes)
    out: list[AdapterKind] = []
    start = 0
    for size in sizes:
        out.append(select_rows(kind, torch.arange(start, start + size), total, in_shape))
        start += size
    return out


def swap_halves(kind: AdapterKind, total: int, in_shape: tuple[int, ...]) -> AdapterKind:
    """The adapter with its two output halves exchanged (SAI (shift, scale) -> diffusers (scale, shift))."""
    half = total // 2
    rows = torch.cat([torch.arange(half, total), torch.arange(0, half)])
    return select_rows(kind, rows, total, in_shape)

