"""In-place fusing with an exact restore: ``W ← fl(W + ΔW)`` in the weight's own storage, plus what it takes to
get every original bit back.

Writing the fused weights into fresh tensors (and keeping the originals) makes ``unfuse`` a pointer swap, but every
fuse then touches a weight-sized block of new memory, and first-touching memory is most of the cost on CPU (and
doubles the weights' footprint on a GPU). Fusing in place touches no new memory. To restore exactly, note that
``t = fl(fl(W + ΔW) − ΔW)`` equals ``W`` for almost every element; where it does not (a rounding that crossed a
binade), the integer difference of the bit patterns is kept, as a sparse list per chunk. Unfuse recomputes the same
``ΔW`` with the same operations, subtracts it and adds the differences back: the original bits, whatever the dtype
(half-precision weights are fused through fp32 and cast once, and restored the same way). A per-chunk checksum of
the original bits confirms every restore.

Work goes chunk by chunk (rows of about 1 MiB), so ΔW never exists as a whole and the scratch buffers stay in cache.
Only adapters whose delta does not depend on the weight take this path (recomputing ΔW must not need the original);
the others use the copy path (:mod:`lorakit.engine.slot`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import FusedStateError, NonFiniteError
from ..kinds import AdapterKind
from .apply import bias_of, weight_of

__all__ = ["InplaceRecord", "can_fuse_inplace", "finite_after", "fuse_inplace", "materialize", "restore_inplace"]

#: elements per chunk (1 MiB of fp32): ΔW rows and the scratch buffers stay in cache
CHUNK = 1 << 18

_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float64: torch.int64}

Contribution = tuple[AdapterKind, float]


@dataclass(slots=True)
class InplaceRecord:
    """What an in-place fuse changed in one module, and how to undo it exactly."""

    contributions: list[Contribution]
    shape: torch.Size
    device: torch.device
    dtype: torch.dtype
    threads: int
    rows: int
    #: per chunk: (element indices, original bits − restored bits) where they differ, else None
    residual: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)
    #: per chunk: the sum of the original's bit patterns (int64)
    checksums: list[int] = field(default_factory=list)
    #: the original bias, when a bias delta was fused (biases are small: kept whole)
    bias: Tensor | None = None

    @property
    def nbytes(self) -> int:
        n = sum(i.numel() * i.element_size() + d.numel() * d.element_size() for i, d in filter(None, self.residual))
        return n + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())


class _Scratch(threading.local):
    """Per-thread reusable buffers (warm memory: a fuse allocates nothing weight-sized)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype, int], Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype, numel: int, slot: int) -> Tensor:
        key = (f"{device}", dtype, slot)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, CHUNK), dtype=dtype, device=device)
            self.buffers[key] = buf
        return buf[:numel]


_SCRATCH = _Scratch()


def can_fuse_inplace(module: nn.Module, contributions: Sequence[Contribution]) -> bool:
    """Whether this module's fuse can go in place: a contiguous floating weight, and adapters whose delta can be
    recomputed without the original weight."""
    w = weight_of(module)
    return (
        w.dtype in _BITS
        and w.is_contiguous()
        and w.device.type != "meta"
        and not w.requires_grad
        and all(not k.uses_base for k, _ in contributions)
    )


class _Delta:
    """``Σ wᵢ·ΔWᵢ`` row by row, always with the same operations (so a restore reproduces the fuse's bits)."""

    def __init__(self, contributions: Sequence[Contribution], shape: torch.Size, device: torch.device) -> None:
        #: in contribution order: (up, down, weight) for low-rank kinds, (delta, None, weight) for dense ones
        self.ops: list[tuple[Tensor, Tensor | None, float]] = []
        for kind, weight in contributions:
            if weight == 0.0:
                continue
            kind = kind.to(device)
            factors = kind.low_rank(shape)
            if factors is not None:
                down, up = factors
                self.ops.append((up.contiguous(), down.flatten(1).contiguous(), float(weight)))
            else:
                # delta_weight reads only the base's shape for these kinds (uses_base is False); empty() touches nothing
                self.ops.append((kind.delta_weight(torch.empty(shape, device=device)).flatten(1), None, float(weight)))

    def rows(self, r0: int, r1: int, out: Tensor) -> Tensor:
        """``ΔW[r0:r1]`` (fp32) into ``out``."""
        return self._add(r0, r1, out.zero_())

    def fused_rows(self, base: Tensor, r0: int, r1: int, out: Tensor) -> Tensor:
        """``base + ΔW[r0:r1]`` in fp32 into ``out`` with the copy path's operations (each adapter added straight onto
        the weight, ``addmm`` for low-rank ones), so both paths fuse to the same bits."""
        return self._add(r0, r1, out.copy_(base))

    def _add(self, r0: int, r1: int, out: Tensor) -> Tensor:
        for a, down, w in self.ops:
            if down is not None:
                out.addmm_(a[r0:r1], down, alpha=w)
            else:
                out.add_(a[r0:r1], alpha=w)
        return out


def _bias_delta(contributions: Sequence[Contribution], device: torch.device) -> Tensor | None:
    acc: Tensor | None = None
    for kind, weight in contributions:
        db = kind.delta_bias()
        if db is not None and weight != 0.0:
            db = db.to(device) * weight
            acc = db if acc is None else acc + db
    return acc


def _chunks(rows_total: int, rows: int) -> list[tuple[int, int]]:
    return [(r0, min(rows_total, r0 + rows)) for r0 in range(0, rows_total, rows)]


def _step(wc: Tensor, d: Tensor, sign: float, out: Tensor) -> Tensor:
    """``fl(wc ± d)`` in ``wc``'s dtype (computed in fp32 and cast once for half-precision weights)."""
    if wc.dtype == torch.float32 or wc.dtype == torch.float64:
        return torch.add(wc, d.to(wc.dtype), alpha=sign, out=out)
    return out.copy_(torch.add(wc.float(), d, alpha=sign))


def _fused(delta: _Delta, wc: Tensor, r0: int, r1: int, out: Tensor) -> Tensor:
    """The fused rows in ``wc``'s dtype (computed in fp32 and cast once for other dtypes, as the copy path)."""
    if wc.dtype == torch.float32:
        return delta.fused_rows(wc, r0, r1, out)
    return out.copy_(delta.fused_rows(wc.float(), r0, r1, torch.empty(wc.shape, dtype=torch.float32, device=wc.device)))


def fuse_inplace(module: nn.Module, contributions: Sequence[Contribution], safe: bool = False) -> InplaceRecord:
    """Write ``W + Σ wᵢ·ΔWᵢ`` (and the bias) into the module's own tensors; returns the record to undo it.

    With ``safe``, a chunk holding NaN/Inf raises :class:`NonFiniteError` after the chunks already written are
    restored, so the module is unchanged.
    """
    weight = weight_of(module)
    w2d = weight.data.view(weight.shape[0], -1)
    out_rows, k = w2d.shape
    device, dtype = weight.device, weight.dtype
    rec = InplaceRecord(
        list(contributions), weight.shape, device, dtype, torch.get_num_threads(), rows=max(1, CHUNK // max(1, k))
    )
    delta = _Delta(contributions, weight.shape, device)
    bits = _BITS[dtype]
    with torch.no_grad():
        for r0, r1 in _chunks(out_rows, rec.rows):
            n = (r1 - r0) * k
            wc = w2d[r0:r1]
            d = delta.rows(r0, r1, _SCRATCH.get(device, torch.float32, n, 0).view(r1 - r0, k))
            s = _fused(delta, wc, r0, r1, _SCRATCH.get(device, dtype, n, 1).view(r1 - r0, k))
            if safe and not bool(torch.isfinite(s).all()):
                restore_inplace(module, rec)  # the chunks written so far
                raise NonFiniteError("fusing would write NaN/Inf")
            t = _step(s, d, -1.0, _SCRATCH.get(device, dtype, n, 2).view(r1 - r0, k))
            wb, tb = wc.reshape(-1).view(bits), t.reshape(-1).view(bits)
            idx = torch.ne(wb, tb).nonzero().view(-1)
            rec.checksums.append(int(wb.sum(dtype=torch.int64)))
            rec.residual.append(None if idx.numel() == 0 else (idx.to(torch.int32), _compact(wb[idx], tb[idx])))
            wc.copy_(s)
        db = _bias_delta(contributions, device)
        bias = bias_of(module)
        if db is not None and bias is not None:
            rec.bias = bias.data.clone()
            bias.data.copy_((bias.data.float() + db).to(bias.dtype))
    return rec


def _compact(original: Tensor, restored: Tensor) -> Tensor:
    """``original − restored`` (bit patterns) in the smallest integer dtype that holds it (mostly ±1: int8)."""
    diff = original.to(torch.int64) - restored.to(torch.int64)
    lo, hi = int(diff.min()), int(diff.max())
    for dt in (torch.int8, torch.int16, torch.int32):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return diff.to(dt)
    return diff


def _restore_chunk(wc: Tensor, d: Tensor, fix: tuple[Tensor, Tensor] | None, out: Tensor) -> Tensor:
    t = _step(wc, d, -1.0, out)
    if fix is not None:
        idx, diff = fix
        tb = t.reshape(-1).view(_BITS[t.dtype])
        tb.index_add_(0, idx.long(), diff.to(tb.dtype))
    return t


def _restore_into(module: nn.Module, rec: InplaceRecord, target: Tensor) -> None:
    """Write the original weight into ``target`` (the module's own weight, or a new tensor of its shape)."""
    weight = weight_of(module)
    if weight.dtype != rec.dtype:
        raise FusedStateError(
            f"{type(module).__name__}: the weight's dtype changed from {rec.dtype} to {weight.dtype} while fused; "
            "its original cannot be restored exactly (unfuse before changing dtypes)"
        )
    src = weight.data if weight.device == rec.device else weight.data.to(rec.device)
    dst = target if target.device == rec.device else torch.empty_like(src)
    w2d = src.view(src.shape[0], -1)
    t2d = dst.view(src.shape[0], -1)
    k = w2d.shape[1]
    delta = _Delta(rec.contributions, src.shape, rec.device)
    bits = _BITS[rec.dtype]
    with torch.no_grad():
        # only the chunks the fuse wrote (all of them, unless a safe fuse stopped half way)
        for i, (r0, r1) in zip(range(len(rec.residual)), _chunks(w2d.shape[0], rec.rows)):
            n = (r1 - r0) * k
            d = delta.rows(r0, r1, _SCRATCH.get(rec.device, torch.float32, n, 0).view(r1 - r0, k))
            t = _restore_chunk(w2d[r0:r1], d, rec.residual[i], _SCRATCH.get(rec.device, rec.dtype, n, 2).view(r1 - r0, k))
            if int(t.reshape(-1).view(bits).sum(dtype=torch.int64)) != rec.checksums[i]:
                t = _retry(w2d[r0:r1], rec, r0, r1, i)
            t2d[r0:r1].copy_(t)
        if dst is not target:
            target.copy_(dst)


def _retry(wc: Tensor, rec: InplaceRecord, r0: int, r1: int, i: int) -> Tensor:
    """A chunk whose restore fails its checksum: recompute ΔW with the thread count the fuse used (the matrix
    products lorakit uses are thread-count independent on the libraries checked, so this is a second line)."""
    before = torch.get_num_threads()
    try:
        for threads in dict.fromkeys((rec.threads, 1)):
            torch.set_num_threads(threads)
            d = _Delta(rec.contributions, rec.shape, rec.device)
            d_rows = d.rows(r0, r1, torch.empty(r1 - r0, wc.shape[1], device=rec.device))
            t = _restore_chunk(wc, d_rows, rec.residual[i], torch.empty_like(wc))
            if int(t.reshape(-1).view(_BITS[rec.dtype]).sum(dtype=torch.int64)) == rec.checksums[i]:
                return t
    finally:
        torch.set_num_threads(before)
    raise FusedStateError(
        f"rows {r0}..{r1} of a fused {tuple(wc.shape)} weight could not be restored exactly (checksum mismatch)"
    )


def restore_inplace(module: nn.Module, rec: InplaceRecord) -> None:
    """Undo :func:`fuse_inplace`: the original bits back in the module's own tensors."""
    _restore_into(module, rec, weight_of(module).data)
    bias = bias_of(module)
    if rec.bias is not None and bias is not None:
        bias.data.copy_(rec.bias.to(bias.device))


def materialize(module: nn.Module, rec: InplaceRecord) -> tuple[Tensor, Tensor | None]:
    """The original ``(weight, bias)`` as new tensors, leaving the module fused."""
    weight = weight_of(module)
    w0 = torch.empty_like(weight.data)
    _restore_into(module, rec, w0)
    bias = bias_of(module)
    b0 = rec.bias if rec.bias is not None else (None if bias is None else bias.data)
    return w0, b0


def finite_after(module: nn.Module, contributions: Sequence[Contribution], current: InplaceRecord | None) -> bool:
    """Whether fusing ``contributions`` into the module's original weight gives only finite values, computed chunk by
    chunk without writing anything (``current``: the in-place fuse the module holds now, undone in scratch)."""
    weight = weight_of(module)
    w2d = weight.data.view(weight.shape[0], -1)
    k = w2d.shape[1]
    rows = max(1, CHUNK // max(1, k))
    new = _Delta(contributions, weight.shape, weight.device)
    old = _Delta(current.contributions, weight.shape, weight.device) if current is not None else None
    with torch.no_grad():
        for i, (r0, r1) in enumerate(_chunks(w2d.shape[0], rows)):
            n = (r1 - r0) * k
            base = w2d[r0:r1]
            if old is not None and current is not None:
                d_old = old.rows(r0, r1, _SCRATCH.get(weight.device, torch.float32, n, 0).view(r1 - r0, k))
                fix = current.residual[i] if current.rows == rows and i < len(current.residual) else None
                base = _restore_chunk(base, d_old, fix, _SCRATCH.get(weight.device, weight.dtype, n, 2).view(r1 - r0, k))
            s = _fused(new, base, r0, r1, _SCRATCH.get(weight.device, weight.dtype, n, 1).view(r1 - r0, k))
            if not bool(torch.isfinite(s).all()):
                return False
        db = _bias_delta(contributions, weight.device)
    return db is None or bool(torch.isfinite(db).all())
