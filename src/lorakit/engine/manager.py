"""AdapterManager: the one source of truth for the adapters of one model.

It holds the adapters (canonical kinds per module path), their weights (a float or a per-module function, for block
weights), the active set, the enabled flag, the fused set, the call-time scale and its hooks, the hotswap target rank
and the per-module :class:`~lorakit.engine.slot.Slot` s. Nothing outside this class writes these fields; queries are
field reads.

The fused set is the truth about fused weights: every slot it touches keeps the fused tensors computed from it (and
the untouched originals), and shows the fused ones while the manager is enabled, the originals while it is disabled.
Every change of the fused set (fuse, unfuse, delete, hotswap) recomputes those tensors from the originals, whether
enabled or not, so no history can leave a deleted or replaced adapter behind.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import families
from ..errors import (
    AdapterExistsError,
    AdapterNameError,
    AdapterNotFoundError,
    AdapterWeightError,
    DeviceError,
    FusedStateError,
    HotswapError,
    KeyMismatchError,
    LorakitError,
    NonFiniteError,
    did_you_mean,
    summarize,
)
from ..kinds import AdapterKind
from .apply import Combined, all_finite, check_kind_fits, combine, fused_params, weight_of
from .inplace import can_fuse_inplace, finite_after
from .persample import SamplePlan
from .slot import Params, Slot, params_of
from .weights import Weight, as_number, as_weight, at, scaled

logger = logging.getLogger(__name__)

__all__ = ["AdapterManager", "FusePlan", "Weight", "check_name", "get_manager", "resolve_device"]

_ATTR = "_lorakit_manager"
STRATEGIES = ("lowrank", "merged")
FUSE_STRATEGIES = ("inplace", "copy")


def get_manager(model: nn.Module, create: bool = True) -> AdapterManager | None:
    """The manager of ``model`` (created on first use when ``create``)."""
    mgr = model.__dict__.get(_ATTR)
    if mgr is None and create:
        mgr = AdapterManager(model)
    return mgr


def check_name(name: object) -> str:
    """An adapter name must be a non-empty ``str``."""
    if not isinstance(name, str) or not name:
        raise AdapterNameError(f"adapter names are non-empty strings; got {type(name).__name__} {name!r:.60}")
    return name


def resolve_device(device: torch.device | str | int) -> torch.device:
    """A ``torch.device`` that exists on this machine, else :class:`DeviceError`."""
    try:
        dev = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"not a device: {device!r} ({exc})") from None
    if dev.type == "meta":
        raise DeviceError("device 'meta' holds no data: adapters moved there would be lost")
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise DeviceError(f"device {dev} is not available on this machine")
    count = getattr(backend, "device_count", lambda: 1)()
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"device {dev} does not exist ({count} {dev.type} device(s) here)")
    return dev


def scale_kwarg_of(model: nn.Module) -> str | None:
    """The forward kwarg that carries ``{"scale": s}`` for this model class (its family's), or ``None``."""
    for cls in type(model).__mro__:
        fams = families.of_denoiser(cls.__name__)
        if fams:
            return fams[0].scale_kwarg
    return None


@dataclass(frozen=True, slots=True)
class _InPlace:
    """Fuse these contributions into the module's own tensors at commit time."""

    contributions: list[tuple[AdapterKind, float]]
    key: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class _Copy:
    """Install these new fused tensors (computed at plan time)."""

    params: Params
    key: tuple[tuple[int, float], ...]


#: a module's fused state is already what the plan asks for
_KEEP = object()


@dataclass(slots=True)
class FusePlan:
    """A new fused set and what each module needs for it, checked but not yet installed (see
    :meth:`AdapterManager.plan_fuse`)."""

    fused: dict[str, Weight]
    #: module path -> ``None`` (no fused adapter any more), a copy to install, an in-place fuse to run, or keep
    steps: dict[str, object]


class AdapterManager:
    """All LoRA state of one ``nn.Module``.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4))
        >>> mgr = AdapterManager(model)
        >>> from lorakit.kinds import LoRA
        >>> mgr.add_adapter("a", {"0": LoRA(down=torch.zeros(2, 4), up=torch.zeros(4, 2))})
        >>> mgr.list_adapters()
        ['a']
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        model.__dict__[_ATTR] = self  # not a Module/Parameter: invisible to state_dict and named_modules
        self.adapters: dict[str, dict[str, AdapterKind]] = {}
        self.weights: dict[str, Weight] = {}
        self.active: list[str] = []
        self.enabled: bool = True
        #: fused adapter -> the weight it was fused with (a float or per-module function)
        self.fused: dict[str, Weight] = {}
        self.slots: dict[str, Slot] = {}
        self.version: int = 0
        #: call-time scale (cross_attention_kwargs={"scale": s}); multiplies unfused contributions only
        self.call_scale: float = 1.0
        self.trainable: bool = False
        #: how unfused adapters are applied: "lowrank" (stacked low-rank matmuls after the base layer, no extra
        #: weight memory) or "merged" (a cached W + Σ s·ΔW per module serves the call at fused speed; the original
        #: tensors stay untouched; costs one weight copy per patched module; not for torch.compile or threads
        #: sharing the model)
        self.unfused_strategy: str = "lowrank"
        #: how fuses write weights: "copy" (default) or "inplace" (see set_fuse_strategy)
        self.fuse_strategy: str = "copy"
        #: every adapter loaded from now on is zero-padded to this rank (enable_lora_hotswap)
        self.hotswap_rank: int | None = None
        #: per adapter, whatever the loader wants to keep (load report, metadata, source)
        self.info: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self._unfused_active = False
        self._modules_cache: dict[str, nn.Module] | None = None
        self._scale_hooks: tuple[Any, ...] = ()
        self._scale_kwarg = ""
        self._scale_stack: list[float] = []
        self._scale_warned: int | None = None
        #: while set, every patched module applies each sample's own adapter mix (lorakit.per_sample)
        self.sample_plan: SamplePlan | None = None

    # ------------------------------------------------------------------ queries
    def list_adapters(self) -> list[str]:
        return list(self.adapters)

    def active_adapters(self) -> list[str]:
        return list(self.active) if self.enabled else []

    @property
    def unfused_active(self) -> bool:
        """Whether any adapter contributes through the forward hook (read by every hook call: kept up to date by
        every state change instead of being recomputed per module per forward)."""
        return self._unfused_active

    def modules_of(self, name: str) -> list[str]:
        return list(self._get(name))

    def named_modules(self) -> dict[str, nn.Module]:
        if self._modules_cache is None:
            self._modules_cache = dict(self.model.named_modules())
        return self._modules_cache

    def _get(self, name: str) -> dict[str, AdapterKind]:
        try:
            return self.adapters[name]
        except (KeyError, TypeError):
            raise AdapterNotFoundError(
                f"adapter {name!r} is not loaded (loaded: {summarize(self.adapters) or 'none'})"
                + did_you_mean(str(name), list(self.adapters))
            ) from None

    def check_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for n in names:
            self._get(n)
        return names

    def weight_of(self, name: str, path: str) -> float:
        return at(self.weights.get(name, 1.0), path)

    def _bump(self) -> None:
        self._unfused_active = self.sample_plan is not None or (
            self.enabled and any(a not in self.fused for a in self.active)
        )
        self.version += 1

    def set_sample_plan(self, plan: SamplePlan | None) -> None:
        """Apply a per-sample plan (``None``: back to the active set). The plan's adapters must be loaded and
        unfused: fused adapters are part of every sample's base."""
        with self.lock:
            if plan is not None:
                names = sorted(plan.adapters())
                self.check_names(names)
                fused = [n for n in names if n in self.fused]
                if fused:
                    raise FusedStateError(
                        f"adapter(s) {summarize(fused)} of {type(self.model).__name__} are fused: fused adapters are "
                        "part of every sample's base; unfuse them to apply them per sample"
                    )
            self.sample_plan = plan
            self._bump()

    # ------------------------------------------------------------------ load / delete
    def validate(self, name: str, mapping: Mapping[str, AdapterKind], *, replace: bool = False) -> None:
        """Check everything a load needs (name free, modules exist, shapes fit) without changing anything."""
        check_name(name)
        if not replace and name in self.adapters:
            raise AdapterExistsError(f"adapter {name!r} is already loaded; pick another adapter_name or delete it")
        if not mapping:
            raise KeyMismatchError(f"adapter {name!r} targets no module")
        modules = self.named_modules()
        missing = [p for p in mapping if p not in modules]
        if missing:
            raise KeyMismatchError(
                f"adapter {name!r}: {len(missing)} target module(s) not in the model: {summarize(missing)}"
                + did_you_mean(missing[0], list(modules))
            )
        for path, kind in mapping.items():
            check_kind_fits(kind, modules[path], f"adapter {name!r}, module {path!r}")

    def padded(self, mapping: Mapping[str, AdapterKind], where: str = "") -> dict[str, AdapterKind]:
        """``mapping`` with every kind zero-padded to the hotswap target rank (unchanged when none is set)."""
        if self.hotswap_rank is None:
            return dict(mapping)
        return {p: k.padded(self.hotswap_rank, f"{where}{p}") for p, k in mapping.items()}

    def add_adapter(
        self,
        name: str,
        mapping: Mapping[str, AdapterKind],
        weight: Weight = 1.0,
        *,
        activate: bool = True,
        exclusive: bool = False,
        info: dict[str, Any] | None = None,
        validated: bool = False,
    ) -> None:
        """Attach adapter ``name`` (module path -> kind). Validates fully first: a failure changes nothing.

        ``activate`` adds it to the active set (keeping the others); ``exclusive`` makes it the only active adapter
        (what a diffusers pipeline load does). ``validated=True`` skips the shape checks when the caller has just
        run :meth:`validate` on the same mapping (the name is still checked).
        """
        with self.lock:
            weight = as_weight(weight, f"adapter {name!r}: weight")
            if not validated or name in self.adapters:
                self.validate(name, mapping)
            modules = self.named_modules()
            self.adapters[name] = dict(mapping)
            self.weights[name] = weight
            self.info[name] = dict(info or {})
            for path in mapping:
                if path not in self.slots:
                    self.slots[path] = Slot(path, modules[path], self)
            if exclusive:
                self.active = [name]
            elif activate and name not in self.active:
                self.active.append(name)
            self._install_scale_hooks()
            self._bump()
            if self.hotswap_rank is not None:
                self.warm()
            logger.debug("attached adapter %r to %d modules", name, len(mapping))

    def replace_adapter(self, name: str, mapping: Mapping[str, AdapterKind]) -> None:
        """Swap the tensors of a loaded adapter (same name, weight and activity; a fused one is re-fused)."""
        with self.lock:
            self._get(name)
            self.validate(name, mapping, replace=True)
            self._replace(name, mapping)

    def _replace(self, name: str, mapping: Mapping[str, AdapterKind]) -> None:
        modules = self.named_modules()
        self.adapters[name] = dict(mapping)
        for path in mapping:
            if path not in self.slots:
                self.slots[path] = Slot(path, modules[path], self)
        if name in self.fused:
            self._commit(FusePlan(dict(self.fused), self._steps(self.fused, safe=False)))
        self._drop_unused_slots()
        self._bump()

    def delete_adapter(self, name: str, *, fallback: bool = False) -> None:
        """Remove one adapter. If it was fused, the remaining fused set is recomputed from the originals.

        ``fallback``: when it was the only active adapter, the first remaining one becomes active (what PEFT, and
        so diffusers, does).
        """
        with self.lock:
            self._get(name)
            if name in self.fused:
                rest = {n: w for n, w in self.fused.items() if n != name}
                self._commit(FusePlan(rest, self._steps(rest, safe=False)))
            del self.adapters[name]
            self.weights.pop(name, None)
            self.info.pop(name, None)
            if name in self.active:
                self.active.remove(name)
                if fallback and not self.active and self.adapters:
                    # as PEFT does: the first remaining adapter takes over (diffusers users see this)
                    self.active = [next(iter(self.adapters))]
                    logger.warning(
                        "adapter %r was active in %s and is now deleted; the active adapter is now %r",
                        name,
                        type(self.model).__name__,
                        self.active[0],
                    )
            self._drop_unused_slots()
            self._bump()

    def _drop_unused_slots(self) -> None:
        used = set().union(*self.adapters.values()) if self.adapters else set()
        for path in list(self.slots):
            slot = self.slots[path]
            if path not in used and slot.fused is None:
                slot.remove()
                del self.slots[path]

    def unload(self) -> None:
        """Remove every adapter and hook.

        What the model computes stays, minus the unfused adapters: fused weights stay in the model while it is
        enabled (as in diffusers, ``fuse_lora`` then ``unload_lora_weights`` yields a plain, faster model); a
        disabled model keeps its original tensors. Without a fuse, the original tensors were never written, so
        they come back bit for bit. Call :meth:`unfuse` first to get the originals back from a fused state.
        """
        with self.lock:
            for slot in self.slots.values():
                if self.enabled:
                    slot.bake()
                else:
                    slot.set_fused(None, enabled=False)
                slot.remove()
            self.slots.clear()
            self.adapters.clear()
            self.weights.clear()
            self.info.clear()
            self.active.clear()
            self.fused.clear()
            self.enabled = True
            self.call_scale = 1.0
            self.trainable = False
            self._modules_cache = None
            self._remove_scale_hooks()
            self._bump()

    # ------------------------------------------------------------------ activity and weights
    def check_weights(self, names: Sequence[str], weights: Sequence[object] | None = None) -> list[Weight]:
        """The weights ``set_adapters`` would store (validated; changes nothing)."""
        self.check_names(names)
        if weights is None:
            return [1.0] * len(names)
        if len(weights) != len(names):
            raise AdapterWeightError(f"{len(weights)} weights for {len(names)} adapters ({summarize(names)})")
        return [as_weight(w, f"adapter {n!r}: weight") for n, w in zip(names, weights)]

    def set_adapters(self, names: Sequence[str], weights: Sequence[object] | None = None) -> None:
        """Make exactly ``names`` active, each with its weight (default 1.0)."""
        with self.lock:
            names = list(names)
            checked = self.check_weights(names, weights)
            self.active = list(dict.fromkeys(names))
            for n, w in zip(names, checked):
                self.weights[n] = w
            self._bump()

    def enable(self) -> None:
        """Adapters contribute again: copy-fused tensors come back (O(1) per module), in-place fuses are redone,
        and unfused adapters apply."""
        with self.lock:
            if not self.enabled:
                self.enabled = True
                self._commit(FusePlan(dict(self.fused), self._steps(self.fused, safe=False)))
                self._bump()

    def disable(self) -> None:
        """Adapters stop contributing: copy-fused modules show their original tensors (O(1) per module), in-place
        fused ones get their original bits back."""
        with self.lock:
            if self.enabled:
                self.enabled = False
                for slot in self.slots.values():
                    if slot.inplace is not None:
                        slot.clear()
                    else:
                        slot.show(False)
                self._bump()

    # ------------------------------------------------------------------ call-time scale
    @contextlib.contextmanager
    def scaled(self, scale: object) -> Iterator[None]:
        """Unfused adapters run at ``scale`` × their weight inside the block (``encode_prompt(lora_scale=)``)."""
        value = as_number(scale, "lora scale")
        self._warn_fused_scale(value)
        saved = self.call_scale
        self.call_scale = value
        try:
            yield
        finally:
            self.call_scale = saved

    def _install_scale_hooks(self) -> None:
        """Make ``model(..., cross_attention_kwargs={"scale": s})`` (the family's kwarg) set the call scale.

        A forward pre-hook reads the scale and sets :attr:`call_scale`; a forward hook that always runs (also when
        the forward raises) restores the previous value. The model's own forward is not touched (diffusers pops the
        scale in its ``apply_lora_scale`` decorator, after these hooks have seen it). The hooks are bound methods,
        so a deep copy of the model gets hooks of its own manager.
        """
        kwarg = scale_kwarg_of(self.model)
        if kwarg is None or self._scale_hooks:
            return
        self._scale_kwarg = kwarg
        self._scale_hooks = (
            self.model.register_forward_pre_hook(self._scale_pre, with_kwargs=True),
            self.model.register_forward_hook(self._scale_post, with_kwargs=True, always_call=True),
        )

    def _scale_pre(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._scale_stack.append(self.call_scale)
        extra = kwargs.get(self._scale_kwarg)
        if isinstance(extra, Mapping) and extra.get("scale") is not None:
            self.call_scale = as_number(extra["scale"], f"{self._scale_kwarg}['scale']")
            self._warn_fused_scale(self.call_scale)

    def _scale_post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._scale_stack:
            self.call_scale = self._scale_stack.pop()

    def __deepcopy__(self, memo: dict[int, Any]) -> AdapterManager:
        """A deep copy of the model copies its manager with it (a lock of its own)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, threading.RLock() if k == "lock" else copy.deepcopy(v, memo))
        return new

    def _remove_scale_hooks(self) -> None:
        for h in self._scale_hooks:
            h.remove()
        self._scale_hooks = ()
        self._scale_stack.clear()

    def _warn_fused_scale(self, scale: float) -> None:
        """A call-time scale does not reach fused adapters (as with merged PEFT layers): say so once per state."""
        if scale == 1.0 or not self.fused or not self.enabled or self._scale_warned == self.version:
            return
        self._scale_warned = self.version
        logger.warning(
            "call-time LoRA scale %s does not apply to the fused adapter(s) %s of %s (unfuse_lora() to scale them "
            "per call)",
            scale,
            summarize(self.fused),
            type(self.model).__name__,
        )

    # ------------------------------------------------------------------ unfused path
    def set_unfused_strategy(self, strategy: str) -> None:
        """Choose how unfused adapters run: ``"lowrank"`` (default) or ``"merged"`` (see ``unfused_strategy``)."""
        if strategy not in STRATEGIES:
            raise LorakitError(f"unknown unfused strategy {strategy!r}; use 'lowrank' or 'merged'")
        with self.lock:
            self.unfused_strategy = strategy
            self._bump()

    def build_combined(
        self, slot: Slot, device: torch.device, dtype: torch.dtype, keep_graph: bool, merged: bool = False
    ) -> Combined:
        # Stamp with the version read BEFORE the state: a change landing mid-build (another thread) leaves a stale
        # stamp, so the next forward rebuilds instead of serving the old state forever.
        version = self.version
        contributions = []
        adapters, fused = self.adapters, self.fused
        for name in list(self.active):  # snapshots: another thread may change the state meanwhile
            if name in fused or name not in adapters:
                continue
            kind = adapters[name].get(slot.path)
            if kind is not None:
                contributions.append((kind, self.weight_of(name, slot.path)))
        if merged:
            with torch.no_grad():
                c = Combined(version=version, device=device, dtype=dtype, merged=True)
                if any(w != 0.0 for _, w in contributions):
                    # on top of what the module holds now (fused adapters included), never of the original; the
                    # original is needed only by dense deltas (after an in-place fuse, rebuilding it costs a copy)
                    shape = weight_of(slot.module).shape
                    dense = any(k.low_rank(shape) is None for k, _ in contributions)
                    current = params_of(slot.module)
                    original = slot.original_params() if dense else current
                    w, b = fused_params(slot.module, original, contributions, base=current)
                    c.merged_weight, c.merged_bias = w, b
                return c
        if keep_graph:
            return combine(slot.module, slot.original_weight, contributions, device, dtype, version)
        with torch.no_grad():
            return combine(slot.module, slot.original_weight, contributions, device, dtype, version)

    def warm(self) -> None:
        """Build every module's combined tensors now, for the module's own device and dtype.

        A compiled model whose first traced call finds the caches empty traces the "build" branch and recompiles on
        the next call; warming them before ``torch.compile`` (done after every load once a hotswap target rank is
        set) makes the first compile the only one.
        """
        with self.lock:
            for slot in self.slots.values():
                w = weight_of(slot.module)
                c = slot.cache
                if c is None or c.version != self.version or c.device != w.device or c.dtype != w.dtype:
                    slot.cache = self.build_combined(slot, w.device, w.dtype, keep_graph=False)

    # ------------------------------------------------------------------ fuse / unfuse
    def plan_fuse(
        self,
        names: Mapping[str, Weight] | Sequence[str] | None = None,
        lora_scale: object = 1.0,
        safe: bool = False,
        strategy: str | None = None,
    ) -> FusePlan:
        """Plan the fused set plus ``names`` (default: the active adapters) at ``lora_scale`` × their weight, without
        installing anything. Raises (changing nothing) on a bad scale or, with ``safe``, when a fused weight would
        hold NaN/Inf (in-place modules are checked by a compute-only pass). ``strategy`` overrides
        :attr:`fuse_strategy` for the modules this plan fuses."""
        scale = as_number(lora_scale, "lora_scale")
        strategy = self._check_strategy(strategy)
        with self.lock:
            new = dict(self.fused)
            if isinstance(names, Mapping):
                new.update(names)
            else:
                for n in self.check_names(self.active if names is None else names):
                    new[n] = scaled(self.weights.get(n, 1.0), scale)
            return FusePlan(new, self._steps(new, safe, strategy))

    def _check_strategy(self, strategy: str | None) -> str:
        if strategy is None:
            return self.fuse_strategy
        if strategy not in FUSE_STRATEGIES:
            raise LorakitError(f"unknown fuse strategy {strategy!r}; use 'inplace' or 'copy'")
        return strategy

    def _steps(self, fused: Mapping[str, Weight], safe: bool, strategy: str | None = None) -> dict[str, object]:
        strategy = strategy or self.fuse_strategy
        steps: dict[str, object] = {}
        for path, slot in self.slots.items():
            contributions = [
                (self.adapters[n][path], at(w, path)) for n, w in fused.items() if path in self.adapters[n]
            ]
            if not contributions:
                steps[path] = None
                continue
            key = tuple((id(k), w) for k, w in contributions)
            if slot.key == key:
                steps[path] = _KEEP
                continue
            where = f"module {path!r} (adapters {summarize(n for n in fused if path in self.adapters[n])})"
            if strategy == "inplace" and self.enabled and can_fuse_inplace(slot.module, contributions):
                if safe and not finite_after(slot.module, contributions, slot.inplace):
                    raise NonFiniteError(f"fusing would write NaN/Inf into {where}; nothing was fused")
                steps[path] = _InPlace(contributions, key)
                continue
            params = fused_params(slot.module, slot.original_params(), contributions)
            if safe and not all_finite(params):
                raise NonFiniteError(f"fusing would write NaN/Inf into {where}; nothing was fused")
            steps[path] = _Copy(params, key)
        return steps

    def _commit(self, plan: FusePlan) -> None:
        for path, slot in self.slots.items():
            step = plan.steps.get(path)
            if step is None:
                slot.clear()
            elif step is _KEEP:
                slot.show(self.enabled)
            elif isinstance(step, _InPlace):
                slot.fuse_in_place(step.contributions, step.key)
            elif isinstance(step, _Copy):
                slot.set_fused(step.params, self.enabled)
                slot.key = step.key
        self.fused = dict(plan.fused)

    def commit_fuse(self, plan: FusePlan) -> list[str]:
        """Install a plan from :meth:`plan_fuse` (cannot fail). Returns the fused set."""
        with self.lock:
            self._commit(plan)
            self._drop_unused_slots()
            self._bump()
            return list(self.fused)

    def fuse(
        self,
        names: Sequence[str] | None = None,
        lora_scale: object = 1.0,
        safe_fusing: bool = False,
        strategy: str | None = None,
    ) -> list[str]:
        """Fuse ``names`` (default: the active adapters) into the weights, each at ``lora_scale`` × its weight.

        The fused weight is always ``W₀ + Σ sᵢ·ΔWᵢ`` over the whole fused set, computed in fp32 from the original and
        cast once, so fusing twice or in another order gives the same tensor; unfuse gives the original bits back.
        ``strategy`` (default :attr:`fuse_strategy`): ``"copy"`` writes into new tensors, ``"inplace"`` into the
        weights' own storage (see :meth:`set_fuse_strategy`). With ``safe_fusing`` nothing is written when a
        fused value would be NaN/Inf. A disabled manager stays disabled (its output stays the base model's until
        :meth:`enable`). Returns the fused set.
        """
        with self.lock:
            return self.commit_fuse(self.plan_fuse(names, lora_scale, safe_fusing, strategy))

    def unfuse(self) -> bool:
        """Give every fused module its original tensors back (the same storage: bit-exact). False if none fused."""
        with self.lock:
            if not self.fused:
                return False
            self.commit_fuse(FusePlan({}, dict.fromkeys(self.slots)))
            return True

    def set_fuse_strategy(self, strategy: str) -> None:
        """How fuses write weights from now on: ``"copy"`` (default: into new tensors, the originals kept: unfuse,
        disable and enable are pointer swaps, at one weight copy of memory per fused module; the fastest fuse in the
        benchmarks) or ``"inplace"`` (into the weights' own storage, about half that extra memory; unfuse
        recomputes ΔW and restores the exact bits, so fuse and unfuse are slower)."""
        with self.lock:
            self.fuse_strategy = self._check_strategy(strategy)

    # ------------------------------------------------------------------ hotswap
    def prepare_hotswap(self, name: str, mapping: Mapping[str, AdapterKind], where: str = "") -> dict[str, AdapterKind]:
        """The full replacement of adapter ``name`` for an in-place hotswap (validated; changes nothing).

        Modules the new adapter does not target get a zero delta of the old shapes; low-rank kinds are padded to the
        hotswap target rank (or the old rank); shapes and kinds must stay the same.
        """
        if name not in self.adapters:
            raise HotswapError(
                f"hotswap: adapter {name!r} is not loaded in {where or 'this model'} (loaded: "
                f"{summarize(self.list_adapters()) or 'none'}); load it first without hotswap"
            )
        old = self.adapters[name]
        extra = [p for p in mapping if p not in old]
        if extra:
            raise HotswapError(
                f"hotswap of {name!r}: the new adapter targets {len(extra)} {where} module(s) the loaded one does not: "
                f"{summarize(extra)}"
            )
        full: dict[str, AdapterKind] = {}
        for path, old_kind in old.items():
            at_ = f"{where}.{path}" if where else path
            label = f"hotswap of {name!r}: {at_}"
            if path in mapping:
                target = self.hotswap_rank if self.hotswap_rank is not None else old_kind.rank
                new = mapping[path]
                new = new.padded(target, label) if target is not None else new
                new = new.to(device=old_kind.device, dtype=old_kind.dtype)
            else:
                new = old_kind.zeroed(label)
            if type(old_kind) is not type(new) or old_kind.shapes() != new.shapes():
                raise HotswapError(
                    f"hotswap of {name!r}: {at_} changes shape or kind ({old_kind.kind_name} {old_kind.shapes()} -> "
                    f"{new.kind_name} {new.shapes()})"
                )
            full[path] = new
        self.validate(name, full, replace=True)
        return full

    def hotswap(self, name: str, full: Mapping[str, AdapterKind]) -> None:
        """Replace adapter ``name``'s tensors with ``full`` (from :meth:`prepare_hotswap`) without a new version, so a
        compiled graph is not recompiled: every cached combined tensor of the touched modules is recomputed and
        copied into its existing storage. A fused adapter is re-fused instead (new weight tensors); where a cache
        cannot be updated in place (a structure change) the version moves on as a plain replace would."""
        with self.lock:
            if name in self.fused:
                self._replace(name, full)
                return
            self.adapters[name] = dict(full)
            in_place = True
            for path in full:
                slot = self.slots.get(path)
                if slot is None or slot.cache is None:
                    continue
                c = slot.cache
                new = self.build_combined(slot, c.device, c.dtype, keep_graph=False)
                pairs = [(getattr(c, f), getattr(new, f)) for f in ("down", "up", "dense", "bias")]
                if any((a is None) != (b is None) or (a is not None and b is not None and a.shape != b.shape) for a, b in pairs):
                    in_place = False
                    continue
                with torch.no_grad():
                    for a, b in pairs:
                        if a is not None and b is not None:
                            a.copy_(b)
            if not in_place:
                logger.warning("hotswap of %r changed a combined tensor's shape; the next call rebuilds (may recompile)", name)
                self.version += 1
            self.warm()

    # ------------------------------------------------------------------ devices, dtypes, training
    def set_device(self, names: Sequence[str], device: torch.device | str | int) -> None:
        """Move the tensors of ``names`` to ``device`` (validated first)."""
        with self.lock:
            names = self.check_names(names)
            dev = resolve_device(device)
            for n in names:
                self.adapters[n] = {p: k.to(device=dev) for p, k in self.adapters[n].items()}
            self._bump()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        """Move / cast every adapter (``dtype`` applies to floating tensors)."""
        with self.lock:
            dev = resolve_device(device) if device is not None else None
            for n in self.adapters:
                self.adapters[n] = {p: k.to(device=dev, dtype=dtype) for p, k in self.adapters[n].items()}
            self._bump()

    def make_trainable(self, name: str, requires_grad: bool = True) -> list[nn.Parameter]:
        """Turn adapter ``name``'s tensors into ``nn.Parameter``s and return them (for an optimizer)."""
        with self.lock:
            params: list[nn.Parameter] = []

            def wrap(t: Tensor) -> Tensor:
                p = t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach().clone())
                if p.is_floating_point():
                    p.requires_grad_(requires_grad)
                    params.append(p)
                return p

            self.adapters[name] = {p: k.map_tensors(wrap) for p, k in self._get(name).items()}
            self.trainable = requires_grad or self.trainable
            self._bump()
            return params

    def adapter_state_dict(self, name: str) -> dict[str, Tensor]:
        """Canonical tensors of ``name``: ``{"<module path>.<field>": tensor}`` (detached)."""
        out: dict[str, Tensor] = {}
        for path, kind in self._get(name).items():
            for field, t in kind.named_tensors():
                out[f"{path}.{field}"] = t.detach()
        return out

    def nbytes(self, name: str | None = None) -> int:
        names = [name] if name else list(self.adapters)
        return sum(k.nbytes for n in names for k in self._get(n).values())
