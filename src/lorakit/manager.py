"""AdapterManager: the one source of truth for the adapters of one model.

It holds the adapters (canonical kinds per module path), their weights (a float or a per-module function, for block
weights), the active set, the enabled flag, the fused set and the original tensors of fused modules. Queries are field
reads; nothing walks the model except ``attach``/``load`` which resolve module paths once.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .engine import Combined, Slot, all_finite, check_kind_fits, combine, fused_params
from .errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterWeightError,
    DeviceError,
    KeyMismatchError,
    NonFiniteError,
    closest,
    summarize,
)
from .kinds import AdapterKind

logger = logging.getLogger(__name__)

#: an adapter's weight: one float, or a function of the module path (block weights)
Weight = float | Callable[[str], float]

_ATTR = "_lorakit_manager"


def get_manager(model: nn.Module, create: bool = True) -> AdapterManager | None:
    """The manager of ``model`` (created on first use when ``create``)."""
    mgr = model.__dict__.get(_ATTR)
    if mgr is None and create:
        mgr = AdapterManager(model)
    return mgr


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


def _bias_data(module: nn.Module) -> Tensor | None:
    return None if module.bias is None else module.bias.data


def _as_weight_fn(weight: Weight) -> Callable[[str], float]:
    if callable(weight):
        return weight
    value = float(weight)
    return lambda _path: value


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
        #: per adapter, whatever the loader wants to keep (load report, metadata, source)
        self.info: dict[str, dict[str, Any]] = {}
        self.lock = threading.RLock()
        self._unfused_active = False
        self._modules_cache: dict[str, nn.Module] | None = None

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
        except KeyError:
            hint = closest(name, list(self.adapters))
            raise AdapterNotFoundError(
                f"adapter {name!r} is not loaded (loaded: {summarize(self.adapters) or 'none'})"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
            ) from None

    def check_names(self, names: Iterable[str]) -> list[str]:
        names = list(names)
        for n in names:
            self._get(n)
        return names

    def _bump(self) -> None:
        self._unfused_active = self.enabled and any(a not in self.fused for a in self.active)
        self.version += 1

    # ------------------------------------------------------------------ load / delete
    def validate(self, name: str, mapping: Mapping[str, AdapterKind], *, replace: bool = False) -> None:
        """Check everything a load needs (name free, modules exist, shapes fit) without changing anything."""
        if not replace and name in self.adapters:
            raise AdapterExistsError(f"adapter {name!r} is already loaded; pick another adapter_name or delete it")
        if not mapping:
            raise KeyMismatchError(f"adapter {name!r} targets no module")
        modules = self.named_modules()
        missing = [p for p in mapping if p not in modules]
        if missing:
            hint = closest(missing[0], list(modules))
            raise KeyMismatchError(
                f"adapter {name!r}: {len(missing)} target module(s) not in the model: {summarize(missing)}"
                + (f"; closest to {missing[0]!r}: {summarize(hint)}" if hint else "")
            )
        for path, kind in mapping.items():
            check_kind_fits(kind, modules[path], f"adapter {name!r}, module {path!r}")

    def add_adapter(
        self,
        name: str,
        mapping: Mapping[str, AdapterKind],
        weight: Weight = 1.0,
        *,
        activate: bool = True,
        info: dict[str, Any] | None = None,
        validated: bool = False,
    ) -> None:
        """Attach adapter ``name`` (module path -> kind). Validates fully first: a failure changes nothing.

        ``validated=True`` skips the shape checks when the caller has just run :meth:`validate` on the same mapping
        (the name is still checked).
        """
        with self.lock:
            if not validated or name in self.adapters:
                self.validate(name, mapping)
            modules = self.named_modules()
            self.adapters[name] = dict(mapping)
            self.weights[name] = weight
            self.info[name] = dict(info or {})
            for path in mapping:
                if path not in self.slots:
                    self.slots[path] = Slot(path, modules[path], self)
            if activate and name not in self.active:
                self.active.append(name)
            self._bump()
            logger.debug("attached adapter %r to %d modules", name, len(mapping))

    def replace_adapter(self, name: str, mapping: Mapping[str, AdapterKind]) -> None:
        """Swap the tensors of a loaded adapter (same name, weight and activity). Used by hotswap."""
        with self.lock:
            self._get(name)
            self.validate(name, mapping, replace=True)
            modules = self.named_modules()
            self.adapters[name] = dict(mapping)
            for path in mapping:
                if path not in self.slots:
                    self.slots[path] = Slot(path, modules[path], self)
            self._drop_unused_slots()
            self._bump()
            if name in self.fused:
                self._refuse()

    def delete_adapter(self, name: str) -> None:
        """Remove one adapter. If it was fused, the remaining fused set is recomputed from the originals."""
        with self.lock:
            self._get(name)
            was_fused = name in self.fused
            del self.adapters[name]
            self.weights.pop(name, None)
            self.info.pop(name, None)
            self.fused.pop(name, None)
            if name in self.active:
                self.active.remove(name)
            self._bump()
            if was_fused:
                self._refuse()
            self._drop_unused_slots()

    def _drop_unused_slots(self) -> None:
        used = set().union(*self.adapters.values()) if self.adapters else set()
        for path in list(self.slots):
            slot = self.slots[path]
            if path not in used and slot.original is None:
                slot.remove()
                del self.slots[path]

    def unload(self) -> None:
        """Remove every adapter and hook.

        Unfused models get their original tensors back bit for bit (they were never written). Fused weights stay
        fused, as in diffusers (``fuse_lora`` then ``unload_lora_weights`` yields a plain, faster model); call
        :meth:`unfuse` first to get the original back.
        """
        with self.lock:
            if self.fused and not self.enabled:
                self._swap_fused(install=True)
            for slot in self.slots.values():
                slot.remove()
                slot.original = None
                slot.fused = None
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
            self._bump()

    # ------------------------------------------------------------------ activity and weights
    def set_adapters(self, names: Sequence[str], weights: Sequence[Weight] | None = None) -> None:
        """Make exactly ``names`` active, each with its weight (default 1.0)."""
        with self.lock:
            names = self.check_names(names)
            if weights is None:
                weights = [1.0] * len(names)
            if len(weights) != len(names):
                raise AdapterWeightError(f"{len(weights)} weights for {len(names)} adapters ({summarize(names)})")
            for n, w in zip(names, weights):
                if callable(w):
                    continue
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(float(w)):
                    raise AdapterWeightError(f"adapter {n!r}: weight must be a finite number, got {w!r}")
            self.active = list(dict.fromkeys(names))
            for n, w in zip(names, weights):
                self.weights[n] = w
            self._bump()

    def enable(self) -> None:
        with self.lock:
            if not self.enabled:
                self.enabled = True
                if self.fused:
                    self._swap_fused(install=True)
                self._bump()

    def disable(self) -> None:
        """Adapters stop contributing; fused weights are swapped out for the originals (O(1) per module)."""
        with self.lock:
            if self.enabled:
                self.enabled = False
                if self.fused:
                    self._swap_fused(install=False)
                self._bump()

    def weight_of(self, name: str, path: str) -> float:
        w = self.weights.get(name, 1.0)
        return float(w(path)) if callable(w) else float(w)

    # ------------------------------------------------------------------ unfused path
    def set_unfused_strategy(self, strategy: str) -> None:
        """Choose how unfused adapters run: ``"lowrank"`` (default) or ``"merged"`` (see ``unfused_strategy``)."""
        if strategy not in ("lowrank", "merged"):
            from .errors import LorakitError

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
        original = slot.original_weight()
        if merged:
            with torch.no_grad():
                c = Combined(version=version, device=device, dtype=dtype, merged=True)
                if any(w != 0.0 for _, w in contributions):
                    # on top of what the module holds now (fused adapters included), never of the original
                    w, b = fused_params(slot, contributions, base=(slot.module.weight.data, _bias_data(slot.module)))
                    c.merged_weight, c.merged_bias = w, b
                return c
        if keep_graph:
            return combine(slot.module, original, contributions, device, dtype, version)
        with torch.no_grad():
            return combine(slot.module, original, contributions, device, dtype, version)

    # ------------------------------------------------------------------ fuse / unfuse
    def fuse(
        self,
        names: Sequence[str] | None = None,
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
    ) -> list[str]:
        """Fuse ``names`` (default: the active adapters) into the weights, each at ``lora_scale`` × its weight.

        The fused weight is always ``W₀ + Σ sᵢ·ΔWᵢ`` over the whole fused set, computed in fp32 from the saved original
        and cast once, so fusing twice or in another order gives the same tensor. With ``safe_fusing`` every new
        tensor is checked for NaN/Inf before any is written. Returns the fused set.
        """
        with self.lock:
            names = self.check_names(self.active if names is None else names)
            new = dict(self.fused)
            for n in names:
                w = self.weights.get(n, 1.0)
                if callable(w):
                    new[n] = (lambda f, s: (lambda p: s * float(f(p))))(w, lora_scale)
                else:
                    new[n] = float(w) * lora_scale
            if not self.enabled:
                self.enable()
            self._write_fused(new, safe_fusing)
            self.fused = new
            self._bump()
            return list(self.fused)

    def _fused_contributions(self, fused: Mapping[str, Weight], path: str) -> list[tuple[AdapterKind, float]]:
        out = []
        for n, w in fused.items():
            kind = self.adapters[n].get(path)
            if kind is not None:
                out.append((kind, float(w(path)) if callable(w) else float(w)))
        return out

    def _write_fused(self, fused: Mapping[str, Weight], safe: bool) -> None:
        paths = set().union(*(self.adapters[n].keys() for n in fused)) if fused else set()
        # modules fused before but no longer in the set go back to the original
        staged: list[tuple[Slot, tuple[Tensor, Tensor | None] | None]] = []
        for path, slot in self.slots.items():
            if path in paths:
                params = fused_params(slot, self._fused_contributions(fused, path))
                if safe and not all_finite(params):
                    raise NonFiniteError(
                        f"fusing would write NaN/Inf into module {path!r}; nothing was fused "
                        f"(adapters {summarize(n for n in fused if path in self.adapters[n])})"
                    )
                staged.append((slot, params))
            elif slot.original is not None:
                staged.append((slot, None))
        for slot, params in staged:
            self._install(slot, params)

    @staticmethod
    def _install(slot: Slot, params: tuple[Tensor, Tensor | None] | None) -> None:
        """Point the module's parameters at new tensors (``None``: back to the original)."""
        module = slot.module
        if params is None:
            w0, b0 = slot.original  # type: ignore[misc]
            module.weight.data = w0.to(module.weight.device)
            if b0 is not None:
                module.bias.data = b0.to(module.bias.device)
            slot.original = None
            return
        if slot.original is None:
            slot.original = (module.weight.data, None if module.bias is None else module.bias.data)
        module.weight.data = params[0]
        if params[1] is not None:
            module.bias.data = params[1]
        elif module.bias is not None and slot.original[1] is not None:
            module.bias.data = slot.original[1]

    def _refuse(self) -> None:
        if self.fused:
            self._write_fused(self.fused, safe=False)
        else:
            for slot in self.slots.values():
                if slot.original is not None:
                    self._install(slot, None)

    def unfuse(self) -> bool:
        """Give every fused module its original tensors back (the same storage: bit-exact). False if none fused."""
        with self.lock:
            if not self.fused:
                return False
            if not self.enabled:
                self._swap_fused(install=True)
            for slot in self.slots.values():
                if slot.original is not None:
                    self._install(slot, None)
                slot.fused = None
            self.fused = {}
            self._drop_unused_slots()
            self._bump()
            return True

    def _swap_fused(self, install: bool) -> None:
        for slot in self.slots.values():
            m = slot.module
            if install and slot.fused is not None:
                m.weight.data = slot.fused[0]
                if slot.fused[1] is not None:
                    m.bias.data = slot.fused[1]
                slot.fused = None
            elif not install and slot.original is not None:
                slot.fused = (m.weight.data, None if m.bias is None else m.bias.data)
                m.weight.data = slot.original[0].to(m.weight.device)
                if slot.original[1] is not None:
                    m.bias.data = slot.original[1].to(m.bias.device)

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
