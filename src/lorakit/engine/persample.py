"""Per-sample adapters: one batch, a different adapter mix per sample (multi-tenant serving).

A :class:`SamplePlan` says, per sample of a batch, which adapters apply with which weights. While a model's manager
holds a plan, each patched module adds, for every adapter the batch uses, that adapter's contribution to exactly the
rows of the samples that use it (one pair of low-rank matmuls per adapter over those rows, ``index_add`` back), so a
batch of 8 prompts with 8 different rank-32 LoRAs costs about what one LoRA costs on the whole batch.

Rows map to samples the way diffusers pipelines build their batches: ``N == B`` rows are the samples; with
``k`` images per prompt each sample's rows are contiguous (``N == B·k``); classifier-free guidance stacks an
unconditional block before the conditional one (``N == 2·B·k``), both in sample order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..errors import BatchLayoutError
from .apply import Combined, combine, sidecar_output
from .weights import Weight, at

if TYPE_CHECKING:
    from .slot import Slot

__all__ = ["SamplePlan"]

_NORMS = (nn.LayerNorm, nn.GroupNorm)


class SamplePlan:
    """The adapter mix of every sample of a batch, for one model.

    Args:
        mixes: per sample, ``{adapter name: weight}`` (a number or a per-module function); ``{}`` is the base.
        per_prompt: images per prompt (each sample's rows are repeated that many times).
    """

    def __init__(self, mixes: Sequence[Mapping[str, Weight]], per_prompt: int = 1) -> None:
        self.mixes: list[dict[str, Weight]] = [dict(m) for m in mixes]
        self.per_prompt = per_prompt
        self._rows: dict[tuple[int, int, str, str], dict[str, tuple[Tensor, list[int]]]] = {}
        self._combined: dict[tuple[str, str, torch.device, torch.dtype], Combined] = {}

    @property
    def samples(self) -> int:
        return len(self.mixes)

    def adapters(self) -> set[str]:
        return {n for m in self.mixes for n in m}

    # ------------------------------------------------------------------ rows
    def sample_of_rows(self, n: int) -> list[int]:
        """The sample of each of ``n`` batch rows."""
        b, k = self.samples, self.per_prompt
        if n == b:
            return list(range(b))
        if n == b * k:
            return [j // k for j in range(n)]
        if n == 2 * b * k:
            return [(j % (b * k)) // k for j in range(n)]
        if n == 2 * b:
            return [j % b for j in range(n)]
        raise BatchLayoutError(
            f"a batch of {n} rows does not fit {b} per-sample entries × {k} image(s) per prompt "
            "(with or without classifier-free guidance); give one entry per prompt"
        )

    def _groups(self, n: int, path: str, device: torch.device) -> dict[str, tuple[Tensor, list[int]]]:
        """Per adapter: the rows that use it (a long tensor on ``device``) and their sample indices."""
        key = (n, self.per_prompt, str(device), path)
        got = self._rows.get(key)
        if got is not None:
            return got
        samples = self.sample_of_rows(n)
        rows: dict[str, list[int]] = {}
        for j, i in enumerate(samples):
            for name in self.mixes[i]:
                rows.setdefault(name, []).append(j)
        out = {
            name: (torch.tensor(js, dtype=torch.long, device=device), [samples[j] for j in js])
            for name, js in rows.items()
        }
        self._rows[key] = out
        return out

    # ------------------------------------------------------------------ forward
    def output(self, slot: Slot, x: Tensor, y: Tensor, kinds: Mapping[str, Mapping[str, object]], scale: float) -> Tensor:
        """``y`` (the module's output for ``x``) plus, for every row, its sample's adapters."""
        module = slot.module
        path = slot.path
        n = int(x.shape[0])
        groups = self._groups(n, path, x.device)
        if isinstance(module, _NORMS):
            return self._norm_output(slot, x, y, kinds, scale)
        for name, (rows, samples) in groups.items():
            kind = kinds.get(name, {}).get(path)
            if kind is None:
                continue
            weights = [at(self.mixes[i][name], path) * scale for i in samples]
            if not any(weights):
                continue
            c = self._single(slot, name, kind, x)
            whole = len(samples) == n
            xs = x if whole else x.index_select(0, rows)
            delta = sidecar_output(module, xs, torch.zeros((), dtype=y.dtype, device=y.device), c, 1.0)
            delta = delta.expand(len(samples), *y.shape[1:])  # a bias-only delta broadcasts over the rows
            w = torch.tensor(weights, dtype=delta.dtype, device=delta.device).reshape(-1, *([1] * (delta.dim() - 1)))
            delta = delta * w
            y = y + delta if whole else y.index_add(0, rows, delta)
        return y

    def _single(self, slot: Slot, name: str, kind: object, x: Tensor) -> Combined:
        key = (slot.path, name, x.device, x.dtype)
        c = self._combined.get(key)
        if c is None:
            with torch.no_grad():
                c = combine(slot.module, slot.original_weight, [(kind, 1.0)], x.device, x.dtype, 0)  # type: ignore[list-item]
            self._combined[key] = c
        return c

    def _norm_output(
        self, slot: Slot, x: Tensor, y: Tensor, kinds: Mapping[str, Mapping[str, object]], scale: float
    ) -> Tensor:
        # the output of a norm layer is not linear in its weight delta: recompute each sample's rows
        samples = self.sample_of_rows(int(x.shape[0]))
        out = y
        for i in sorted(set(samples)):
            contributions = [
                (kinds[name][slot.path], at(w, slot.path)) for name, w in self.mixes[i].items() if slot.path in kinds.get(name, {})
            ]
            if not contributions:
                continue
            rows = torch.tensor([j for j, s in enumerate(samples) if s == i], dtype=torch.long, device=x.device)
            with torch.no_grad():
                c = combine(slot.module, slot.original_weight, contributions, x.device, x.dtype, 0)  # type: ignore[arg-type]
            part = sidecar_output(slot.module, x.index_select(0, rows), y.index_select(0, rows), c, scale)
            out = out.index_copy(0, rows, part)
        return out
