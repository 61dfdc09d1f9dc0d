"""Operations across the components of one pipeline, each atomic: every component is checked (and, for fuses,
computed) before any is changed, so a failure changes nothing anywhere.

:class:`ComponentSet` wraps ``{component: model}``; each model's state lives in its
:class:`~lorakit.engine.AdapterManager`. The only state of its own is the pipeline's enabled flag
(:class:`PipelineState`): disabled means the base output in every component, whatever is loaded, fused, deleted or
hotswapped meanwhile, including components that get their first adapter while disabled. This module imports no
diffusers; the mixins in :mod:`lorakit.pipelines` are a diffusers-shaped face over it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .engine import AdapterManager, FusePlan, Weight, check_name, get_manager
from .engine.persample import SamplePlan
from .errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    ComponentError,
    HotswapError,
    did_you_mean,
    summarize,
)
from .kinds import AdapterKind

logger = logging.getLogger(__name__)

__all__ = ["ComponentSet", "PipelineState"]

#: component -> module path -> kind
Adapters = Mapping[str, Mapping[str, AdapterKind]]


@dataclass(slots=True)
class PipelineState:
    """What belongs to the pipeline as a whole: its lock, whether LoRA is enabled, and the per-sample context."""

    enabled: bool = True
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: component -> plan of the running ``lorakit.per_sample`` context (empty: none running)
    plans: dict[str, SamplePlan] = field(default_factory=dict)
    #: adapter -> number of running contexts that use it (an adapter cache never evicts these)
    pinned: Counter[str] = field(default_factory=Counter)

    def __deepcopy__(self, memo: dict[int, Any]) -> PipelineState:
        """A copied pipeline gets a lock of its own and no running per-sample context."""
        return PipelineState(enabled=self.enabled)


class ComponentSet:
    """The LoRA-loadable components of one pipeline.

    Args:
        models: ``{component: model}`` of the components present (missing ones are simply absent).
        state: the pipeline's :class:`PipelineState` (a fresh one when omitted).
    """

    def __init__(self, models: Mapping[str, nn.Module], state: PipelineState | None = None) -> None:
        self.models = dict(models)
        self.state = state if state is not None else PipelineState()

    # ------------------------------------------------------------------ queries
    def managers(self, components: Sequence[str] | None = None) -> dict[str, AdapterManager]:
        """The managers that exist, in component order (``components`` restricts them)."""
        out: dict[str, AdapterManager] = {}
        for comp in components if components is not None else list(self.models):
            model = self.models.get(comp)
            mgr = get_manager(model, create=False) if model is not None else None
            if mgr is not None:
                out[comp] = mgr
        return out

    def loaded(self) -> list[str]:
        """Every adapter name, in load order over the components."""
        return list(dict.fromkeys(n for m in self.managers().values() for n in m.adapters))

    def check_loaded(self, names: Sequence[str]) -> None:
        """Raise :class:`AdapterNotFoundError` (diffusers' wording too) unless every name is loaded somewhere."""
        loaded = self.loaded()
        missing = [n for n in names if not isinstance(n, str) or n not in loaded]
        if missing:
            raise AdapterNotFoundError(
                f"Adapter name(s) {set(map(str, missing))} not in the list of present adapters: {set(loaded)} "
                f"(loaded: {summarize(loaded) or 'none'})" + did_you_mean(str(missing[0]), loaded)
            )

    def active(self) -> list[str]:
        out: list[str] = []
        for mgr in self.managers().values():
            out.extend(n for n in mgr.active if n not in out)
        return out

    def fused(self) -> set[str]:
        return {n for m in self.managers().values() for n in m.fused}

    def default_name(self) -> str:
        existing = set(self.loaded())
        i = len(existing)
        while f"default_{i}" in existing:
            i += 1
        return f"default_{i}"

    # ------------------------------------------------------------------ loading
    def load(
        self,
        adapters: Adapters,
        name: str,
        *,
        info: Mapping[str, Any] | None = None,
        weights: Mapping[str, float] | None = None,
        hotswap: bool = False,
        activate: bool = True,
    ) -> None:
        """Attach adapter ``name`` to every component in ``adapters`` (all validated before any change).

        As in diffusers, the new adapter becomes the only active one in every component it loads into (unless
        ``activate`` is false: an adapter cache loads without touching the active set); the components it does not
        touch keep their active set. ``hotswap`` replaces a loaded adapter's tensors in place instead (same
        activity, weights and fused state).
        """
        check_name(name)
        unknown = [c for c in adapters if c not in self.models]
        if unknown:
            raise ComponentError(f"adapter {name!r}: no component {summarize(unknown)} here ({summarize(self.models)})")
        if hotswap:
            self._hotswap(adapters, name, info)
            return
        if name in self.loaded():
            raise AdapterExistsError(
                f"Adapter name {name} already in use in the model - please select a new adapter name: adapter "
                f"{name!r} is already loaded; pick another adapter_name, delete it first, or pass hotswap=True"
            )
        weights = weights or {}
        staged: list[tuple[str, AdapterManager, dict[str, AdapterKind], Weight]] = []
        for comp, mapping in adapters.items():
            mgr = get_manager(self.models[comp])
            assert mgr is not None
            padded = mgr.padded(mapping, f"adapter {name!r}: {comp}.")
            mgr.validate(name, padded)
            staged.append((comp, mgr, padded, float(weights.get(comp, 1.0))))
        for comp, mgr, padded, weight in staged:
            if not self.state.enabled:
                mgr.disable()
            mgr.add_adapter(
                name,
                padded,
                weight=weight,
                activate=activate,
                exclusive=activate,
                info=dict(info or {}, component=comp),
                validated=True,
            )
        logger.info("loaded adapter %r into %s", name, summarize(c for c, *_ in staged))

    def _hotswap(self, adapters: Adapters, name: str, info: Mapping[str, Any] | None) -> None:
        if name not in self.loaded():
            raise HotswapError(
                f"Trying to hotswap LoRA adapter '{name}' but there is no existing adapter by that name: adapter "
                f"{name!r} is not loaded (loaded: {summarize(self.loaded()) or 'none'}); load it first without hotswap"
            )
        plans: dict[str, tuple[AdapterManager, dict[str, AdapterKind]]] = {}
        for comp, mgr in self.managers().items():
            mapping = adapters.get(comp, {})
            if not mapping and name not in mgr.adapters:
                continue
            plans[comp] = (mgr, mgr.prepare_hotswap(name, mapping, comp))
        missing = [c for c in adapters if c not in plans]
        if missing:
            raise HotswapError(f"hotswap of {name!r}: it is not loaded in {summarize(missing)}")
        for mgr, full in plans.values():
            mgr.hotswap(name, full)
            mgr.info.setdefault(name, {}).update(info or {})
        logger.info("hotswapped adapter %r in %s", name, summarize(plans))

    def enable_hotswap(self, target_rank: int) -> None:
        """Every adapter loaded from now on is zero-padded to ``target_rank`` (managers are created as needed)."""
        for model in self.models.values():
            mgr = get_manager(model)
            assert mgr is not None
            mgr.hotswap_rank = target_rank

    # ------------------------------------------------------------------ weights and activity
    def set_adapters(self, per_component: Mapping[str, tuple[Sequence[str], Sequence[object]]]) -> None:
        """``{component: (names, weights)}``: every component's weights are validated before any is set; the
        components not listed get no active adapter."""
        managers = self.managers()
        checked: dict[str, tuple[list[str], list[Weight]]] = {}
        for comp, mgr in managers.items():
            names, weights = per_component.get(comp, ([], []))
            checked[comp] = (list(names), mgr.check_weights(list(names), list(weights)))
        for comp, mgr in managers.items():
            mgr.set_adapters(*checked[comp])

    def enable(self) -> None:
        self.state.enabled = True
        for mgr in self.managers().values():
            mgr.enable()

    def disable(self) -> None:
        self.state.enabled = False
        for mgr in self.managers().values():
            mgr.disable()

    # ------------------------------------------------------------------ fuse
    def fuse(
        self,
        components: Sequence[str],
        names: Sequence[str] | None,
        lora_scale: object = 1.0,
        safe: bool = False,
        strategy: str | None = None,
    ) -> None:
        """Fuse ``names`` (default: each component's active adapters) into ``components``; every component is
        planned (and, with ``safe``, checked for NaN/Inf) before any weight is written."""
        plans: list[tuple[str, AdapterManager, FusePlan]] = []
        for comp, mgr in self.managers(components).items():
            pool = mgr.active if names is None else names
            present = [n for n in pool if n in mgr.adapters]
            if present:
                plans.append((comp, mgr, mgr.plan_fuse(present, lora_scale, safe, strategy)))
        for comp, mgr, plan in plans:
            mgr.commit_fuse(plan)
            logger.debug("fused %s into %s", summarize(plan.fused), comp)

    def unfuse(self, components: Sequence[str]) -> None:
        for mgr in self.managers(components).values():
            mgr.unfuse()

    # ------------------------------------------------------------------ removal, devices
    def delete(self, names: Sequence[str], *, fallback: bool = True) -> None:
        """Delete adapters everywhere; ``fallback`` as :meth:`AdapterManager.delete_adapter` (diffusers' behaviour)."""
        self.check_loaded(names)
        for mgr in self.managers().values():
            for n in names:
                if n in mgr.adapters:
                    mgr.delete_adapter(n, fallback=fallback)

    def unload(self) -> None:
        """Every adapter and hook gone in every component (see :meth:`AdapterManager.unload`); enabled again."""
        for mgr in self.managers().values():
            mgr.unload()
        self.state.enabled = True

    def set_device(self, names: Sequence[str], device: Any) -> None:
        self.check_loaded(names)
        for mgr in self.managers().values():
            present = [n for n in names if n in mgr.adapters]
            if present:
                mgr.set_device(present, device)

    @contextlib.contextmanager
    def scaled(self, components: Sequence[str], scale: object) -> Iterator[None]:
        """Unfused adapters of ``components`` run at ``scale`` × their weight inside the block."""
        with contextlib.ExitStack() as stack:
            for mgr in self.managers(components).values():
                stack.enter_context(mgr.scaled(scale))
            yield
