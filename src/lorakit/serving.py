"""Serving many LoRAs from one resident model: per-sample adapter mixes in one batch, and an adapter cache.

Example:
    >>> cache = lorakit.AdapterCache(pipe, max_adapters=64)  # doctest: +SKIP
    >>> cache.ensure({"alice": "alice.safetensors", "bob": "bob.safetensors"})  # doctest: +SKIP
    >>> with lorakit.per_sample(pipe, ["alice", {"bob": 0.8}, None]):  # doctest: +SKIP
    ...     images = pipe(prompt=["a cat", "a dog", "a bird"]).images
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from . import io as lio
from .engine.persample import SamplePlan
from .errors import (
    AdapterNameError,
    AdapterNotFoundError,
    FusedStateError,
    PerSampleError,
    UnsupportedPipelineError,
    summarize,
)
from .pipelines.api import LoraBaseMixin, pipeline_state

logger = logging.getLogger(__name__)

__all__ = ["AdapterCache", "CacheStats", "per_sample"]

#: one per-sample entry: the base (None), one adapter, or {adapter: weight as set_adapters takes it}
Entry = str | Mapping[str, Any] | None
#: what a cache can load: a file / folder / Hub id, or an in-memory state dict
Source = str | os.PathLike[str] | Mapping[str, Tensor]


def _attached(pipe: Any) -> LoraBaseMixin:
    if not isinstance(pipe, LoraBaseMixin):
        raise UnsupportedPipelineError(f"{type(pipe).__name__} is not attached; call lorakit.attach(pipe) first")
    return pipe


def _entry(entry: Entry, i: int) -> tuple[list[str], list[Any]]:
    if entry is None:
        return [], []
    if isinstance(entry, str):
        return [entry], [1.0]
    if isinstance(entry, Mapping):
        return [str(k) for k in entry], list(entry.values())
    raise PerSampleError(f"per_sample entry {i}: expected None, an adapter name or {{name: weight}}, got {type(entry).__name__}")


@contextlib.contextmanager
def per_sample(pipe: Any, adapters: Sequence[Entry]) -> Iterator[None]:
    """Inside the block, prompt ``i`` of a pipeline call gets exactly what ``set_adapters`` with entry ``i`` applies
    to a batch of one, in every LoRA component: its denoiser rows (both classifier-free-guidance halves, every image
    of ``num_images_per_prompt``) and its text-encoder rows.

    Args:
        pipe: an attached pipeline (:func:`lorakit.attach`).
        adapters: one entry per prompt: ``None`` (the base), an adapter name, or ``{name: weight}`` with weights as
            ``set_adapters`` takes them (numbers, per-component dicts, block dicts). Every adapter must be loaded.

    Fused adapters are part of the base for every sample (an entry naming a fused adapter is an error); everything
    per sample runs unfused. The pipeline's own state (active set, weights, enabled) is the same after the block as
    before, also when the call raises. One context at a time per pipeline.

    Raises:
        PerSampleError: a context is already running, or an entry is malformed.
        AdapterNotFoundError / AdapterWeightError / FusedStateError: entries that do not fit the loaded adapters.
    """
    pipe = _attached(pipe)
    entries = list(adapters)
    if not entries:
        raise PerSampleError("per_sample needs one entry per prompt, got none")
    st = pipeline_state(pipe)
    with st.lock:
        if st.plans:
            raise PerSampleError("a per_sample context is already running on this pipeline (one at a time)")
        cset = pipe._lorakit_set()
        managers = cset.managers()
        mixes: dict[str, list[dict[str, Any]]] = {c: [{} for _ in entries] for c in managers}
        used: set[str] = set()
        for i, entry in enumerate(entries):
            names, weights = _entry(entry, i)
            used.update(names)
            for comp, (ns, ws) in pipe._lorakit_weights(cset, names, weights, warn=False).items():
                mixes[comp][i] = dict(zip(ns, ws))
        plans = {c: SamplePlan(mixes[c]) for c in managers}
        for comp, mgr in managers.items():  # every check before anything changes
            fused = sorted(plans[comp].adapters() & set(mgr.fused))
            if fused:
                raise FusedStateError(
                    f"adapter(s) {summarize(fused)} are fused into {comp}: fused adapters are part of every sample's "
                    "base; unfuse them to apply them per sample"
                )
        for comp, mgr in managers.items():
            mgr.set_sample_plan(plans[comp])
        st.plans = plans
        st.pinned.update(used)
    try:
        yield
    finally:
        with st.lock:
            for mgr in managers.values():
                mgr.set_sample_plan(None)
            st.plans = {}
            st.pinned.subtract(used)
            st.pinned += type(st.pinned)()  # drop the zero counts


@dataclass(slots=True)
class CacheStats:
    """What an :class:`AdapterCache` did."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    #: seconds spent loading on misses
    load_seconds: float = 0.0


class AdapterCache:
    """An LRU cache of loaded adapters in front of :func:`per_sample` (what a server keeps per resident model).

    Args:
        pipe: an attached pipeline.
        max_adapters: the most adapters the cache keeps loaded (``None``: no limit).
        max_bytes: the most bytes of adapter tensors it keeps (``None``: no limit).

    :meth:`ensure` loads what is missing (without changing the pipeline's active set), marks what it names as
    recently used, and evicts the least recently used adapters that no running :func:`per_sample` context uses until
    the limits hold. Adapters the cache did not load are never evicted. Thread-safe.
    """

    def __init__(self, pipe: Any, max_adapters: int | None = None, max_bytes: int | None = None) -> None:
        self.pipe = _attached(pipe)
        if max_adapters is not None and max_adapters < 1:
            raise PerSampleError(f"max_adapters must be at least 1, got {max_adapters}")
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._sources: dict[str, Source] = {}
        self._lru: OrderedDict[str, int] = OrderedDict()  # adapter -> bytes, least recent first
        self._lock = threading.RLock()

    def __contains__(self, name: object) -> bool:
        return name in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def nbytes(self) -> int:
        return sum(self._lru.values())

    def register(self, name: str, source: Source) -> None:
        """Remember where adapter ``name`` comes from (loaded on its first :meth:`ensure`)."""
        if not isinstance(name, str) or not name:
            raise AdapterNameError(f"adapter names are non-empty strings; got {name!r:.60}")
        with self._lock:
            self._sources[name] = source

    def ensure(self, adapters: Mapping[str, Source] | Iterable[str | tuple[str, Source]]) -> list[str]:
        """Make every named adapter loaded; returns their names in order.

        Args:
            adapters: ``{name: source}``, or names (registered before, or already loaded) and ``(name, source)``
                pairs; a source is a file, folder or Hub id, or an in-memory state dict.
        """
        items = list(adapters.items()) if isinstance(adapters, Mapping) else [
            a if isinstance(a, tuple) else (a, None) for a in adapters
        ]
        names: list[str] = []
        with self._lock:
            for name, source in items:
                if source is not None:
                    self.register(name, source)
                names.append(name)
            loaded = set(self.pipe._lorakit_set().loaded())
            for name in names:
                if name in self._lru or (name in loaded and name not in self._sources):
                    self.stats.hits += 1
                    if name in self._lru:
                        self._lru.move_to_end(name)
                    continue
                if name in loaded:  # loaded by the cache's owner with a registered source: adopt it
                    self.stats.hits += 1
                    self._lru[name] = self._bytes(name)
                    continue
                source = self._sources.get(name)
                if source is None:
                    raise AdapterNotFoundError(f"adapter cache: {name!r} is neither loaded nor registered with a source")
                self._evict(keep=set(names), incoming=1)
                t0 = time.perf_counter()
                self._load(name, source)
                self.stats.load_seconds += time.perf_counter() - t0
                self.stats.misses += 1
                self._lru[name] = self._bytes(name)
            self._evict(keep=set(names), incoming=0)
        return names

    def _load(self, name: str, source: Source) -> None:
        pipe = self.pipe
        with pipeline_state(pipe).lock:
            state_dict, header, shown = lio.read_source(source)
            pipe._lorakit_load(state_dict, header, pipe._lorakit_models(), name, shown, False, activate=False)

    def _bytes(self, name: str) -> int:
        return sum(m.nbytes(name) for m in self.pipe._lorakit_set().managers().values() if name in m.adapters)

    def _evict(self, keep: set[str], incoming: int) -> None:
        pinned = pipeline_state(self.pipe).pinned
        while self._over(incoming):
            victim = next((n for n in self._lru if n not in keep and not pinned.get(n)), None)
            if victim is None:
                logger.warning(
                    "adapter cache over its limits (%d adapters, %d bytes): everything left is in use (%s)",
                    len(self._lru),
                    self.nbytes,
                    summarize(self._lru),
                )
                return
            self._lru.pop(victim)
            with pipeline_state(self.pipe).lock:
                if victim in self.pipe._lorakit_set().loaded():
                    self.pipe._lorakit_set().delete([victim], fallback=False)
            self.stats.evictions += 1

    def _over(self, incoming: int) -> bool:
        if self.max_adapters is not None and len(self._lru) + incoming > self.max_adapters:
            return True
        return self.max_bytes is not None and self.nbytes > self.max_bytes
