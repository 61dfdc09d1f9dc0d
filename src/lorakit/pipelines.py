"""diffusers-compatible LoRA loader mixins on lorakit's engine, and ``attach(pipe)``.

The public contract is diffusers' loader API (``/shared/spec/lora-loader-mixins.txt``): the same class names, method
names, argument names, defaults and return values. The families differ only in data (:class:`Family`: component
names, the denoiser's scale kwarg, block tables in :mod:`lorakit.blocks`); every behaviour lives in
:class:`LoraBaseMixin` and the per-model :class:`~lorakit.manager.AdapterManager`.

Example:
    >>> import lorakit
    >>> pipe = lorakit.attach(StableDiffusionPipeline.from_pretrained(...))  # doctest: +SKIP
    >>> pipe.load_lora_weights("style.safetensors", adapter_name="style")  # doctest: +SKIP
    >>> pipe.set_adapters(["style"], adapter_weights=[{"unet": {"down": 0.5}, "text_encoder": 1.0}])  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import expand_block_weights
from .errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    AdapterWeightError,
    ComponentError,
    HotswapError,
    KeyMismatchError,
    NonFiniteError,
    UnsupportedPipelineError,
    closest,
    summarize,
)
from .kinds import AdapterKind, DoRA, LoRA
from .manager import AdapterManager, get_manager

logger = logging.getLogger(__name__)

__all__ = [
    "AmusedLoraLoaderMixin",
    "ComponentError",
    "Family",
    "LoraBaseMixin",
    "SD3LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "attach",
    "hotswap_in_place",
    "warm_caches",
]


# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Family:
    """What distinguishes one pipeline family: its components, as data.

    Attributes:
        name: ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"amused"``.
        denoiser: the denoiser component (``"unet"`` or ``"transformer"``).
        text_encoders: text-encoder components, in order.
    """

    name: str
    denoiser: str
    text_encoders: tuple[str, ...]

    @property
    def components(self) -> list[str]:
        return [self.denoiser, *self.text_encoders]


SD = Family("sd", "unet", ("text_encoder",))
SDXL = Family("sdxl", "unet", ("text_encoder", "text_encoder_2"))
SD3 = Family("sd3", "transformer", ("text_encoder", "text_encoder_2", "text_encoder_3"))
AMUSED = Family("amused", "transformer", ("text_encoder",))

#: denoiser class name -> the forward kwarg that carries ``{"scale": s}`` (as diffusers' ``apply_lora_scale``)
SCALE_KWARGS: dict[str, str] = {
    "UNet2DConditionModel": "cross_attention_kwargs",
    "SD3Transformer2DModel": "joint_attention_kwargs",
    "UVit2DModel": "cross_attention_kwargs",
}

_STATE = "_lorakit_pipeline_state"  # per-model dict in model.__dict__ (invisible to state_dict / named_modules)


def _model_state(model: nn.Module) -> dict[str, Any]:
    st = model.__dict__.get(_STATE)
    if st is None:
        st = {}
        model.__dict__[_STATE] = st
    return st


# ---------------------------------------------------------------------------------------------------- io glue
def _read_source(source: Any, **kwargs: Any) -> tuple[dict[str, Tensor], dict[str, str], str]:
    from .io import read_source

    return read_source(source, **kwargs)


def _write_layers(save_directory: str | os.PathLike[str], layers: Mapping[str, Any], **kwargs: Any) -> None:
    from .save import write_lora_layers

    write_lora_layers(save_directory, {k: v for k, v in layers.items() if v}, **kwargs)


_IO_KWARGS = (
    "weight_name",
    "subfolder",
    "cache_dir",
    "force_download",
    "proxies",
    "local_files_only",
    "token",
    "revision",
    "use_safetensors",
)


def _split_alphas(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float] | None]:
    """Separate scalar ``*.alpha`` entries (diffusers' ``network_alphas``); joining them back restores the input."""
    alphas = {
        k: float(v.reshape(-1)[0]) if isinstance(v, Tensor) else float(v)
        for k, v in state_dict.items()
        if k.endswith(".alpha") and (not isinstance(v, Tensor) or v.numel() == 1)
    }
    if not alphas:
        return state_dict, None
    return {k: v for k, v in state_dict.items() if k not in alphas}, alphas


def _join_alphas(state_dict: Mapping[str, Tensor], network_alphas: Mapping[str, Any] | None) -> dict[str, Tensor]:
    out = dict(state_dict)
    for k, v in (network_alphas or {}).items():
        if k not in out:
            out[k] = v if isinstance(v, Tensor) else torch.tensor(float(v))
    return out


def _convert(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None,
    components: Mapping[str, nn.Module],
    source: str,
    strict: bool = False,
) -> tuple[dict[str, dict[str, AdapterKind]], dict[str, Any]]:
    """Canonical adapters per present component (others are reported and skipped) and the load info."""
    from . import formats

    conv = formats.to_canonical(state_dict, metadata or {}, dict(components), source=source, strict=strict)
    adapters = {c: dict(m) for c, m in conv.adapters.items() if c in components and m}
    skipped = [c for c, m in conv.adapters.items() if c not in components and m]
    if skipped:
        logger.warning(
            "%s: entries for component(s) %s skipped (not in this pipeline / not loaded here)", source, summarize(skipped)
        )
    if not adapters:
        raise KeyMismatchError(
            f"{source}: no adapter entries for component(s) {summarize(components) or 'none'}"
            + (f" (the file targets {summarize(skipped)})" if skipped else "")
        )
    info = {"format": conv.format, "report": conv.report, "source": source, "skipped_components": skipped}
    return adapters, info


def _source_name(source: Any) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<dict>"


# ---------------------------------------------------------------------------------------------------- call scale
def _install_scale_hooks(model: nn.Module) -> None:
    """Make ``model(..., cross_attention_kwargs={"scale": s})`` (or joint_attention_kwargs) set the call scale.

    A forward pre-hook reads the scale and sets ``manager.call_scale``; a forward hook that always runs (also when
    the forward raises) restores the previous value. The model's own forward is not touched (diffusers pops the
    scale in its ``apply_lora_scale`` decorator, after these hooks have seen it).
    """
    kwarg = next((SCALE_KWARGS[c.__name__] for c in type(model).__mro__ if c.__name__ in SCALE_KWARGS), None)
    st = _model_state(model)
    if kwarg is None or "scale_hooks" in st:
        return
    saved: list[float] = []

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
        mgr = get_manager(module, create=False)
        if mgr is None:
            return
        saved.append(mgr.call_scale)
        extra = kwargs.get(kwarg)
        if isinstance(extra, Mapping) and extra.get("scale") is not None:
            mgr.call_scale = float(extra["scale"])
            _warn_fused_scale(mgr, mgr.call_scale)

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        mgr = get_manager(module, create=False)
        if mgr is not None and saved:
            mgr.call_scale = saved.pop()

    st["scale_hooks"] = (
        model.register_forward_pre_hook(pre, with_kwargs=True),
        model.register_forward_hook(post, with_kwargs=True, always_call=True),
    )


def _warn_fused_scale(mgr: AdapterManager, scale: float) -> None:
    """A call-time scale does not reach fused adapters (as with merged PEFT layers): say so once per state."""
    if scale == 1.0 or not mgr.fused:
        return
    st = _model_state(mgr.model)
    if st.get("fused_scale_warned") != mgr.version:
        st["fused_scale_warned"] = mgr.version
        logger.warning(
            "call-time LoRA scale %s does not apply to the fused adapter(s) %s of %s (unfuse_lora() to scale them "
            "per call)",
            scale,
            summarize(mgr.fused),
            type(mgr.model).__name__,
        )


def _remove_scale_hooks(model: nn.Module) -> None:
    handles = _model_state(model).pop("scale_hooks", ())
    for h in handles:
        h.remove()


@contextlib.contextmanager
def _call_scale(managers: Sequence[AdapterManager], scale: float) -> Iterator[None]:
    saved = [m.call_scale for m in managers]
    try:
        for m in managers:
            m.call_scale = scale
        yield
    finally:
        for m, s in zip(managers, saved):
            m.call_scale = s


# ---------------------------------------------------------------------------------------------------- hotswap
def _pad_kind(kind: AdapterKind, rank: int, where: str) -> AdapterKind:
    """``kind`` with its rank zero-padded to ``rank`` (same delta: alpha grows with the rank)."""
    if isinstance(kind, DoRA):
        return dataclasses.replace(kind, inner=_pad_kind(kind.inner, rank, where))
    if not isinstance(kind, LoRA):
        return kind
    r = kind.rank
    if r == rank:
        return kind
    if r > rank:
        raise HotswapError(
            f"{where}: rank {r} exceeds the hotswap target rank {rank}; call enable_lora_hotswap(target_rank={r}) "
            "before loading the first adapter"
        )
    pad = rank - r
    down = torch.cat([kind.down, kind.down.new_zeros((pad, *kind.down.shape[1:]))], 0)
    up = torch.cat([kind.up, kind.up.new_zeros((kind.up.shape[0], pad, *kind.up.shape[2:]))], 1)
    mid = kind.mid
    if mid is not None:
        mid = torch.nn.functional.pad(mid, (0, 0, 0, 0, 0, pad, 0, pad))
    alpha = None if kind.alpha is None else float(kind.alpha) * rank / r
    return dataclasses.replace(kind, down=down, up=up, mid=mid, alpha=alpha)


def _pad_mapping(mapping: Mapping[str, AdapterKind], rank: int | None, component: str) -> dict[str, AdapterKind]:
    if rank is None:
        return dict(mapping)
    return {p: _pad_kind(k, rank, f"{component}.{p}") for p, k in mapping.items()}


def _zero_like(kind: AdapterKind, where: str) -> AdapterKind:
    if isinstance(kind, LoRA):
        return dataclasses.replace(kind, up=torch.zeros_like(kind.up), bias=None if kind.bias is None else torch.zeros_like(kind.bias))
    if isinstance(kind, DoRA):
        raise HotswapError(f"{where}: the new adapter does not target this DoRA module; hotswap cannot zero it")
    return kind.map_tensors(torch.zeros_like)


def _same_structure(old: AdapterKind, new: AdapterKind) -> bool:
    return type(old) is type(new) and old.shapes() == new.shapes()


def _prepare_hotswap(
    mgr: AdapterManager | None, name: str, mapping: Mapping[str, AdapterKind], component: str, rank: int | None
) -> dict[str, AdapterKind]:
    """The full replacement mapping for adapter ``name`` of one component (validated; changes nothing)."""
    if mgr is None or name not in mgr.adapters:
        raise HotswapError(
            f"hotswap: adapter {name!r} is not loaded in {component} (loaded: "
            f"{summarize(mgr.list_adapters()) if mgr else 'none'}); load it first without hotswap"
        )
    old = mgr.adapters[name]
    extra = [p for p in mapping if p not in old]
    if extra:
        raise HotswapError(
            f"hotswap of {name!r}: the new adapter targets {len(extra)} {component} module(s) the loaded one does not: "
            f"{summarize(extra)}"
        )
    full: dict[str, AdapterKind] = {}
    for path, old_kind in old.items():
        where = f"{component}.{path}"
        if path in mapping:
            target = rank if rank is not None else getattr(old_kind, "rank", None)
            new = mapping[path]
            if isinstance(new, (LoRA, DoRA)) and target is not None:
                new_rank = new.rank if isinstance(new, LoRA) else getattr(new.inner, "rank", None)
                if new_rank is not None and new_rank > target:
                    raise HotswapError(
                        f"hotswap of {name!r}: {where} has rank {new_rank} > {target}; call "
                        f"enable_lora_hotswap(target_rank={new_rank}) before loading the first adapter"
                    )
                new = _pad_kind(new, target, where) if new_rank is not None else new
            new = new.to(device=old_kind.device, dtype=old_kind.dtype)
        else:
            new = _zero_like(old_kind, where)
        if not _same_structure(old_kind, new):
            raise HotswapError(
                f"hotswap of {name!r}: {where} changes shape or kind ({old_kind.kind_name} {old_kind.shapes()} -> "
                f"{new.kind_name} {new.shapes()})"
            )
        full[path] = new
    mgr.validate(name, full, replace=True)
    return full


def hotswap_in_place(mgr: AdapterManager, name: str, mapping: Mapping[str, AdapterKind]) -> None:
    """Replace adapter ``name``'s tensors without changing ``mgr.version`` (no recompilation under torch.compile).

    Every cached combined tensor of the touched modules is recomputed and copied into the existing storage, so a
    compiled graph that reads them sees the new values with identical guards. Fused adapters are re-fused instead
    (that writes new weight tensors). Where a cache cannot be updated in place (a structure change), the version is
    bumped as a normal replace would.
    """
    with mgr.lock:
        if name in mgr.fused:
            mgr.replace_adapter(name, mapping)
            return
        mgr.adapters[name] = dict(mapping)
        rebuilt = True
        for path in mapping:
            slot = mgr.slots.get(path)
            if slot is None or slot.cache is None:
                continue
            c = slot.cache
            new = mgr.build_combined(slot, c.device, c.dtype, keep_graph=False)
            pairs = [(getattr(c, f), getattr(new, f)) for f in ("down", "up", "dense", "bias")]
            if any((a is None) != (b is None) or (a is not None and a.shape != b.shape) for a, b in pairs):
                rebuilt = False
                continue
            with torch.no_grad():
                for a, b in pairs:
                    if a is not None:
                        a.copy_(b)
        if not rebuilt:
            logger.warning("hotswap of %r changed a combined tensor's shape; the next call rebuilds (may recompile)", name)
            mgr.version += 1


def warm_caches(mgr: AdapterManager) -> None:
    """Build every module's combined tensors now, for the module's own device and dtype.

    A compiled model whose first traced call finds the caches empty traces the "build" branch and recompiles on the
    next call; warming them before ``torch.compile`` (done after every load into a model prepared with
    ``enable_lora_hotswap``) makes the first compile the only one.
    """
    with mgr.lock:
        for slot in mgr.slots.values():
            w = slot.module.weight
            c = slot.cache
            if c is None or c.version != mgr.version or c.device != w.device or c.dtype != w.dtype:
                slot.cache = mgr.build_combined(slot, w.device, w.dtype, keep_graph=False)


# ---------------------------------------------------------------------------------------------------- core load
def _load_components(
    models: Mapping[str, nn.Module],
    adapters: Mapping[str, Mapping[str, AdapterKind]],
    name: str,
    *,
    weights: Mapping[str, float] | None = None,
    info: Mapping[str, Any] | None = None,
    hotswap: bool = False,
) -> None:
    """Attach (or hotswap) adapter ``name`` to every component in ``adapters``; all validated before any change."""
    weights = weights or {}
    if hotswap:
        plans: dict[str, dict[str, AdapterKind]] = {}
        for comp, model in models.items():
            mgr = get_manager(model, create=False)
            mapping = adapters.get(comp, {})
            if not mapping and (mgr is None or name not in mgr.adapters):
                continue
            rank = _model_state(model).get("hotswap_target_rank")
            plans[comp] = _prepare_hotswap(mgr, name, mapping, comp, rank)
        for comp, full in plans.items():
            mgr = get_manager(models[comp])
            assert mgr is not None
            hotswap_in_place(mgr, name, full)
            warm_caches(mgr)
            mgr.info.setdefault(name, {}).update(info or {})
        logger.info("hotswapped adapter %r in %s", name, summarize(plans))
        return
    staged: list[tuple[AdapterManager, dict[str, AdapterKind], str, int | None]] = []
    for comp, mapping in adapters.items():
        model = models[comp]
        rank = _model_state(model).get("hotswap_target_rank")
        padded = _pad_mapping(mapping, rank, comp)
        mgr = get_manager(model)
        assert mgr is not None
        mgr.validate(name, padded)
        staged.append((mgr, padded, comp, rank))
    for mgr, padded, comp, rank in staged:
        mgr.add_adapter(
            name, padded, weight=float(weights.get(comp, 1.0)), info=dict(info or {}, component=comp), validated=True
        )
        _install_scale_hooks(mgr.model)
        if rank is not None:
            warm_caches(mgr)
    logger.info("loaded adapter %r into %s", name, summarize(c for _, _, c, _ in staged))


def _restore_fused(mgr: AdapterManager, fused: Mapping[str, Any], weights: Mapping[str, Any]) -> None:
    """Give ``mgr`` back the fused set ``fused`` (adapter -> fused weight) through its public API."""
    mgr.unfuse()
    for name, w in fused.items():
        mgr.weights[name] = w
        mgr.fuse([name], lora_scale=1.0)
    mgr.weights.update(weights)


def _default_name(managers: Sequence[AdapterManager]) -> str:
    existing = {n for m in managers for n in m.adapters}
    i = len(existing)
    while f"default_{i}" in existing:
        i += 1
    return f"default_{i}"


def _check_new_name(name: str, managers: Sequence[AdapterManager]) -> None:
    for m in managers:
        if name in m.adapters:
            raise AdapterExistsError(
                f"adapter {name!r} is already loaded; pick another adapter_name, delete it first, or pass hotswap=True"
            )


# ---------------------------------------------------------------------------------------------------- mixins

def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a state-changing pipeline method under the pipeline's own lock.

    Loads, weight changes, fuses and unloads from several threads then never interleave across components (each
    component's manager has its own lock too), and default adapter names cannot collide.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.get("_lorakit_lock")
        if lock is None:  # first call: dict.setdefault is atomic, so two threads end up with one lock
            lock = self.__dict__.setdefault("_lorakit_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    return wrapper

class LoraBaseMixin:
    """Utility class for handling LoRAs: the behaviour shared by every family (lorakit engine, no PEFT)."""

    _lora_loadable_modules: list[str] = []
    _lorakit_family: Family | None = None

    # ---------------------------------------------------------------- helpers
    def _lorakit_models(self) -> dict[str, nn.Module]:
        out = {}
        for comp in self._lora_loadable_modules:
            model = getattr(self, comp, None)
            if isinstance(model, nn.Module):
                # pipe.unet = torch.compile(pipe.unet): adapters live on the original module
                out[comp] = getattr(model, "_orig_mod", model)
        return out

    def _lorakit_managers(self, components: Sequence[str] | None = None) -> dict[str, AdapterManager]:
        models = self._lorakit_models()
        out = {}
        for comp in components if components is not None else list(models):
            model = models.get(comp)
            mgr = get_manager(model, create=False) if model is not None else None
            if mgr is not None:
                out[comp] = mgr
        return out

    def _lorakit_components(self, components: Sequence[str] | None) -> list[str]:
        if isinstance(components, str):  # fuse_lora(components="unet") means one component, not its letters
            components = [components]
        comps = list(components or []) or list(self._lora_loadable_modules)
        for c in comps:
            if c not in self._lora_loadable_modules:
                hint = closest(c, list(self._lora_loadable_modules))
                raise ComponentError(
                    f"component {c!r} is not LoRA-loadable here (loadable: {summarize(self._lora_loadable_modules)})"
                    + (f"; did you mean {hint[0]!r}?" if hint else "")
                )
        return comps

    def _lorakit_check_loaded(self, names: Sequence[str]) -> None:
        loaded = {n for m in self._lorakit_managers().values() for n in m.adapters}
        missing = [n for n in names if n not in loaded]
        if missing:
            hint = closest(missing[0], sorted(loaded))
            raise AdapterNotFoundError(
                f"adapter(s) {summarize(missing)} not loaded (loaded: {summarize(sorted(loaded)) or 'none'})"
                + (f"; did you mean {hint[0]!r}?" if hint else "")
            )

    # ---------------------------------------------------------------- properties
    @property
    def lora_scale(self) -> float:
        """The scale last passed at call time (``cross_attention_kwargs={"scale": s}``), else 1."""
        return self._lora_scale if hasattr(self, "_lora_scale") else 1.0

    @property
    def num_fused_loras(self) -> int:
        """Number of fused LoRAs."""
        return len(self.fused_loras)

    @property
    def fused_loras(self) -> set[str]:
        """Names of the fused LoRAs (in any component)."""
        return {n for m in self._lorakit_managers().values() for n in m.fused}

    # ---------------------------------------------------------------- reading
    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor], **kwargs: Any):
        """Return state dict for lora weights and the network alphas.

        Args:
            pretrained_model_name_or_path_or_dict: a Hub repository id, a folder, a file or a state dict.
            **kwargs: ``cache_dir``, ``force_download``, ``proxies``, ``local_files_only``, ``token``, ``revision``,
                ``subfolder``, ``weight_name``, ``use_safetensors`` (see diffusers), and ``return_lora_metadata``.

        Returns:
            ``(state_dict, network_alphas)``, plus the file's header metadata with ``return_lora_metadata=True``.
            The state dict holds the file's keys unchanged (any format; lorakit converts at load time) except the
            scalar ``*.alpha`` entries, which are returned in ``network_alphas`` (``None`` when there are none);
            passing both to a ``load_lora_into_*`` method restores the file exactly.
        """
        return_metadata = kwargs.pop("return_lora_metadata", False)
        io_kwargs = {k: kwargs.pop(k) for k in _IO_KWARGS if k in kwargs}
        kwargs.pop("unet_config", None)
        if kwargs:
            logger.debug("lora_state_dict: ignoring %s", summarize(kwargs))
        state_dict, metadata, _ = _read_source(pretrained_model_name_or_path_or_dict, **io_kwargs)
        state_dict, network_alphas = _split_alphas(state_dict)
        if return_metadata:
            return state_dict, network_alphas, (metadata or None)
        return state_dict, network_alphas

    # ---------------------------------------------------------------- loading
    @_serialized
    def load_lora_weights(
        self,
        pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs: Any,
    ) -> None:
        """Load LoRA weights into every LoRA-loadable component that the file has entries for.

        Any format lorakit reads is accepted (diffusers, PEFT, kohya, LyCORIS, ...). The load is atomic: every
        component is converted and validated before any is changed.

        Args:
            pretrained_model_name_or_path_or_dict: see :meth:`lora_state_dict`.
            adapter_name: name of the adapter (default ``default_{i}``); an existing name raises
                :class:`~lorakit.errors.AdapterExistsError` unless ``hotswap``.
            hotswap: replace the tensors of the loaded adapter ``adapter_name`` in place (no recompilation of a
                compiled denoiser); see :meth:`enable_lora_hotswap`.
            **kwargs: forwarded to :meth:`lora_state_dict`; ``low_cpu_mem_usage`` is accepted (lorakit never
                initialises random weights); ``strict=True`` makes unmatched keys an error.
        """
        kwargs.pop("low_cpu_mem_usage", None)
        strict = bool(kwargs.pop("strict", False))
        kwargs["return_lora_metadata"] = True
        state_dict, network_alphas, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        source = _source_name(pretrained_model_name_or_path_or_dict)
        if "weight_name" in kwargs and kwargs["weight_name"]:
            source = f"{source}/{kwargs['weight_name']}"
        models = self._lorakit_models()
        adapters, info = _convert(_join_alphas(state_dict, network_alphas), metadata, models, source, strict)
        managers = [m for m in (get_manager(x, create=False) for x in models.values()) if m is not None]
        if hotswap:
            if adapter_name is None:
                raise HotswapError("hotswap=True needs the adapter_name of a loaded adapter")
            if not any(adapter_name in m.adapters for m in managers):
                loaded = sorted({n for m in managers for n in m.adapters})
                raise HotswapError(
                    f"hotswap: adapter {adapter_name!r} is not loaded (loaded: {summarize(loaded) or 'none'}); "
                    "load it first without hotswap"
                )
        else:
            adapter_name = adapter_name or _default_name(managers)
            _check_new_name(adapter_name, managers)
        _load_components(models, adapters, adapter_name, info=info, hotswap=hotswap)

    @classmethod
    def _lorakit_load_one(
        cls,
        component: str,
        model: nn.Module,
        state_dict: Mapping[str, Tensor],
        network_alphas: Mapping[str, Any] | None,
        adapter_name: str | None,
        _pipeline: Any,
        hotswap: bool,
        metadata: Mapping[str, str] | None,
        weight: float = 1.0,
    ) -> None:
        full = _join_alphas(state_dict, network_alphas)
        try:
            adapters, info = _convert(full, metadata, {component: model}, "<state dict>")
        except KeyMismatchError:
            # keys indexed directly into the model ("the keys can either be indexed directly into the unet or
            # prefixed"): retry with the component prefix
            if any(k.startswith(f"{component}.") for k in full):
                raise
            adapters, info = _convert({f"{component}.{k}": v for k, v in full.items()}, metadata, {component: model}, "<state dict>")
        managers: list[AdapterManager] = []
        if isinstance(_pipeline, LoraBaseMixin):
            managers = list(_pipeline._lorakit_managers().values())
        mgr = get_manager(model, create=False)
        if mgr is not None and mgr not in managers:
            managers.append(mgr)
        if hotswap:
            if adapter_name is None:
                raise HotswapError("hotswap=True needs the adapter_name of a loaded adapter")
        else:
            adapter_name = adapter_name or _default_name(managers)
            _check_new_name(adapter_name, [m for m in managers if m.model is model])
        _load_components({component: model}, adapters, adapter_name, weights={component: weight}, info=info, hotswap=hotswap)

    @classmethod
    def load_lora_into_text_encoder(
        cls,
        state_dict,
        network_alphas,
        text_encoder,
        prefix=None,
        lora_scale=1.0,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``text_encoder`` (keys prefixed with ``prefix``).

        Args:
            state_dict: a LoRA state dict of any supported format (other components' keys are skipped).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            text_encoder: the text encoder (a bare transformers model works).
            prefix: the component the keys belong to (default ``"text_encoder"``; ``"text_encoder_2"`` for the
                second SDXL/SD3 encoder).
            lora_scale: the adapter's initial weight in this text encoder.
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        component = prefix or getattr(cls, "text_encoder_name", "text_encoder")
        cls._lorakit_load_one(
            component, text_encoder, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata, lora_scale
        )

    # ---------------------------------------------------------------- saving
    @classmethod
    def _lorakit_save(
        cls,
        save_directory: str | os.PathLike[str],
        layers: Mapping[str, Any],
        is_main_process: bool,
        weight_name: str | None,
        save_function: Callable | None,
        safe_serialization: bool,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not any(layers.values()):
            raise ValueError(f"You must pass at least one of {', '.join(f'`{k}_lora_layers`' for k in layers)}.")
        _write_layers(
            save_directory,
            layers,
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
            metadata={k: v for k, v in (metadata or {}).items() if v} or None,
        )

    @staticmethod
    def pack_weights(layers, prefix):
        """``{"<prefix>.<key>": tensor}`` from a state dict or a module (diffusers' helper)."""
        from .save import pack_layers

        return pack_layers({prefix: layers})

    @staticmethod
    def write_lora_layers(
        state_dict: dict[str, torch.Tensor],
        save_directory: str,
        is_main_process: bool,
        weight_name: str,
        save_function: Callable,
        safe_serialization: bool,
        lora_adapter_metadata: dict | None = None,
    ) -> None:
        """Write an already packed LoRA state dict (keys ``"<component>.<...>"``) as diffusers does, with the flat
        ``lora_adapter_metadata`` dict in the safetensors header."""
        groups: dict[str, dict[str, Tensor]] = {}
        for key, value in state_dict.items():
            comp, _, rest = key.partition(".")
            groups.setdefault(comp, {})[rest] = value
        _write_layers(
            save_directory,
            groups,
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
            metadata=dict(lora_adapter_metadata) if lora_adapter_metadata else None,
        )

    # ---------------------------------------------------------------- state
    @_serialized
    def unload_lora_weights(self) -> None:
        """Unloads the LoRA parameters (fused weights stay fused, as in diffusers; unfuse first to restore).

        Every hook lorakit added is removed, the call-scale hooks of the denoiser included.
        """
        for mgr in self._lorakit_managers().values():
            mgr.unload()
            _remove_scale_hooks(mgr.model)

    @_serialized
    def fuse_lora(
        self,
        components: list[str] = [],  # noqa: B006 - the diffusers signature; never mutated
        lora_scale: float = 1.0,
        safe_fusing: bool = False,
        adapter_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Fuses the LoRA parameters into the original parameters of the corresponding blocks.

        Args:
            components: components to fuse into (empty: every LoRA-loadable component).
            lora_scale: multiplies each adapter's ``set_adapters`` weight.
            safe_fusing: check the fused weights for NaN/Inf before writing any (raises
                :class:`~lorakit.errors.NonFiniteError`).
            adapter_names: adapters to fuse (default: the active ones).
        """
        comps = self._lorakit_components(components)
        if adapter_names is not None:
            adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
            self._lorakit_check_loaded(adapter_names)
        plan: list[tuple[str, AdapterManager, list[str]]] = []
        for comp, mgr in self._lorakit_managers(comps).items():
            pool = mgr.active if adapter_names is None else adapter_names
            names = [n for n in pool if n in mgr.adapters]
            if names:
                plan.append((comp, mgr, names))
        if safe_fusing:  # a NaN/Inf adapter tensor anywhere: refuse before any component is written
            for comp, mgr, names in plan:
                for n in names:
                    for path, kind in mgr.adapters[n].items():
                        if not all(bool(torch.isfinite(t).all()) for _, t in kind.named_tensors() if t.is_floating_point()):
                            raise NonFiniteError(
                                f"fusing would write NaN/Inf into {comp} module {path!r} (adapter {n!r}); nothing was fused"
                            )
        done: list[tuple[AdapterManager, dict[str, Any], dict[str, Any]]] = []
        try:
            for comp, mgr, names in plan:
                before = (dict(mgr.fused), dict(mgr.weights))
                mgr.fuse(names, lora_scale=lora_scale, safe_fusing=safe_fusing)
                done.append((mgr, *before))
                logger.debug("fused %s into %s", summarize(names), comp)
        except Exception:
            for mgr, fused, weights in reversed(done):  # atomic across components: put the earlier ones back
                _restore_fused(mgr, fused, weights)
            raise

    @_serialized
    def unfuse_lora(self, components: list[str] = [], **kwargs: Any) -> None:  # noqa: B006
        """Reverses the effect of :meth:`fuse_lora` (original weights back, bit-exact).

        Args:
            components: components to unfuse (empty: every LoRA-loadable component).
        """
        for mgr in self._lorakit_managers(self._lorakit_components(components)).values():
            mgr.unfuse()

    @_serialized
    def set_adapters(
        self,
        adapter_names: list[str] | str,
        adapter_weights: float | dict | list[float] | list[dict] | None = None,
    ) -> None:
        """Make exactly ``adapter_names`` active, with weights.

        Args:
            adapter_names: one name or a list.
            adapter_weights: ``None`` (1.0 each), one number for all, or a list with one entry per adapter; each
                entry a number or a per-component dict ``{"unet": 0.5, "text_encoder": 0.8}`` whose values may
                be per-block dicts for the denoiser (``{"unet": {"down": 0.9, "mid": 0.5, "up": {"block_0": ...}}}``,
                ``{"transformer": {"block_0": 0.5}}``; see :mod:`lorakit.blocks`). Unlisted components get 1.0.

        Raises:
            AdapterNotFoundError: a name is not loaded.
            AdapterWeightError / ComponentError / KeyMismatchError: weights that do not fit.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._lorakit_check_loaded(names)
        if adapter_weights is None:
            weights: list[Any] = [1.0] * len(names)
        elif isinstance(adapter_weights, (list, tuple)):
            weights = list(adapter_weights)
        else:
            weights = [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise AdapterWeightError(f"{len(weights)} adapter weights for {len(names)} adapters ({summarize(names)})")
        managers = self._lorakit_managers()
        per_comp: dict[str, tuple[list[str], list[Any]]] = {c: ([], []) for c in managers}
        for name, w in zip(names, weights):
            if isinstance(w, Mapping):
                unknown = [c for c in w if c not in self._lora_loadable_modules]
                if unknown:
                    hint = closest(str(unknown[0]), list(self._lora_loadable_modules))
                    raise ComponentError(
                        f"adapter {name!r}: weight for unknown component(s) {summarize(unknown)} "
                        f"(loadable: {summarize(self._lora_loadable_modules)})" + (f"; did you mean {hint[0]!r}?" if hint else "")
                    )
                for c in w:
                    if w[c] is not None and (c not in managers or name not in managers[c].adapters):
                        logger.warning("adapter %r is not loaded in %s; its weight for %s is ignored", name, c, c)
            for comp, mgr in managers.items():
                if name not in mgr.adapters:
                    continue
                spec = w.get(comp) if isinstance(w, Mapping) else w
                value = 1.0 if spec is None else expand_block_weights(spec, mgr.model, comp)
                per_comp[comp][0].append(name)
                per_comp[comp][1].append(value)
        for comp, mgr in managers.items():
            mgr.set_adapters(*per_comp[comp])

    @_serialized
    def disable_lora(self) -> None:
        """Disables the active LoRA layers of every component (output equals the base model's)."""
        for mgr in self._lorakit_managers().values():
            mgr.disable()

    @_serialized
    def enable_lora(self) -> None:
        """Enables the active LoRA layers of every component."""
        for mgr in self._lorakit_managers().values():
            mgr.enable()

    @_serialized
    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        """Delete adapters from every component (a fused one is unfused from the weights first).

        Args:
            adapter_names: one name or a list; every name must be loaded.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._lorakit_check_loaded(names)
        for mgr in self._lorakit_managers().values():
            for n in names:
                if n in mgr.adapters:
                    mgr.delete_adapter(n)

    def get_active_adapters(self) -> list[str]:
        """Gets the list of the current active adapters (in load order, over all components)."""
        out: list[str] = []
        for mgr in self._lorakit_managers().values():
            out.extend(n for n in mgr.active if n not in out)
        return out

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Gets the current list of all available adapters in the pipeline, per component."""
        return {c: m.list_adapters() for c, m in self._lorakit_managers().items() if m.adapters}

    @_serialized
    def set_lora_device(self, adapter_names: list[str], device: torch.device | str | int) -> None:
        """Moves the LoRAs listed in ``adapter_names`` to ``device`` (e.g. park unused ones on the CPU).

        Args:
            adapter_names: adapters to move (each must be loaded).
            device: a torch device, a string or a CUDA index.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._lorakit_check_loaded(names)
        for mgr in self._lorakit_managers().values():
            present = [n for n in names if n in mgr.adapters]
            if present:
                mgr.set_device(present, device)

    @_serialized
    def enable_lora_hotswap(self, **kwargs: Any) -> None:
        """Prepare hotswapping: every adapter loaded from now on is zero-padded to ``target_rank``.

        Call it before loading the first adapter (and before ``torch.compile``), then
        ``load_lora_weights(..., adapter_name=name, hotswap=True)`` replaces ``name``'s tensors in place.

        Args:
            target_rank: the highest rank of the adapters to come (default 128).
            check_compiled: ``"error"`` (default), ``"warn"`` or ``"ignore"``: what to do when adapters are
                already loaded.
        """
        target_rank = int(kwargs.pop("target_rank", 128))
        check = kwargs.pop("check_compiled", "error")
        if kwargs:
            raise TypeError(f"enable_lora_hotswap got unexpected argument(s) {summarize(kwargs)}")
        if check not in ("error", "warn", "ignore"):
            raise ValueError(f"check_compiled should be one of 'error', 'warn', or 'ignore', got {check!r}")
        if any(m.adapters for m in self._lorakit_managers().values()):
            msg = "call enable_lora_hotswap before loading the first adapter (adapters already loaded are not padded)"
            if check == "error":
                raise HotswapError(msg)
            if check == "warn":
                logger.warning(msg)
        for model in self._lorakit_models().values():
            _model_state(model)["hotswap_target_rank"] = target_rank


class _UNetMixin(LoraBaseMixin):
    unet_name = "unet"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_unet(
        cls,
        state_dict,
        network_alphas,
        unet,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``unet``.

        Args:
            state_dict: a LoRA state dict (keys prefixed with ``unet.`` or indexed directly into the UNet; any
                supported format).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            unet: the ``UNet2DConditionModel`` (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(cls.unet_name, unet, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata)


class _PromptScaleMixin(LoraBaseMixin):
    """``encode_prompt(..., lora_scale=s)`` scales the text encoders' adapters for that call only."""

    def encode_prompt(self, *args: Any, **kwargs: Any) -> Any:
        parent = super().encode_prompt  # type: ignore[misc]
        scale = kwargs.get("lora_scale")
        if scale is None and args:
            try:
                scale = inspect.signature(parent).bind_partial(*args, **kwargs).arguments.get("lora_scale")
            except TypeError:
                scale = None
        if scale is None:
            return parent(*args, **kwargs)
        family = self._lorakit_family
        comps = list(family.text_encoders) if family else [c for c in self._lora_loadable_modules if "text_encoder" in c]
        managers = list(self._lorakit_managers(comps).values())
        for m in managers:
            _warn_fused_scale(m, float(scale))
        with _call_scale(managers, float(scale)):
            return parent(*args, **kwargs)


class StableDiffusionLoraLoaderMixin(_PromptScaleMixin, _UNetMixin):
    """Load LoRA layers into Stable Diffusion ``UNet2DConditionModel`` and ``CLIPTextModel``."""

    _lora_loadable_modules = ["unet", "text_encoder"]
    _lorakit_family = SD

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        is_main_process: bool = True,
        weight_name: str = None,
        save_function: Callable = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
    ) -> None:
        """Save the LoRA parameters corresponding to the UNet and text encoder (diffusers layout).

        Args:
            save_directory: created if missing.
            unet_lora_layers: state dict (or modules) of the UNet's LoRA layers, keys without the ``unet.`` prefix.
            text_encoder_lora_layers: the same for the text encoder.
            is_main_process: only the main process writes.
            weight_name: file name (default ``pytorch_lora_weights.safetensors``).
            save_function: replaces the writer.
            safe_serialization: safetensors (default) or pickle.
            unet_lora_adapter_metadata: LoraConfig fields for the UNet (written to the header).
            text_encoder_lora_adapter_metadata: the same for the text encoder.
        """
        cls._lorakit_save(
            save_directory,
            {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {"unet": unet_lora_adapter_metadata, "text_encoder": text_encoder_lora_adapter_metadata},
        )


class StableDiffusionXLLoraLoaderMixin(_PromptScaleMixin, _UNetMixin):
    """Load LoRA layers into Stable Diffusion XL ``UNet2DConditionModel``, ``CLIPTextModel`` and
    ``CLIPTextModelWithProjection``."""

    _lora_loadable_modules = ["unet", "text_encoder", "text_encoder_2"]
    _lorakit_family = SDXL

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        unet_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        text_encoder_2_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        is_main_process: bool = True,
        weight_name: str = None,
        save_function: Callable = None,
        safe_serialization: bool = True,
        unet_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
        text_encoder_2_lora_adapter_metadata=None,
    ) -> None:
        """Save the LoRA parameters corresponding to the UNet and the two text encoders (diffusers layout).

        Args: as :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights`, plus ``text_encoder_2_lora_layers`` /
        ``text_encoder_2_lora_adapter_metadata``.
        """
        cls._lorakit_save(
            save_directory,
            {"unet": unet_lora_layers, "text_encoder": text_encoder_lora_layers, "text_encoder_2": text_encoder_2_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {
                "unet": unet_lora_adapter_metadata,
                "text_encoder": text_encoder_lora_adapter_metadata,
                "text_encoder_2": text_encoder_2_lora_adapter_metadata,
            },
        )


class SD3LoraLoaderMixin(_PromptScaleMixin, LoraBaseMixin):
    """Load LoRA layers into ``SD3Transformer2DModel``, ``CLIPTextModelWithProjection`` (×2) and, when the file has
    entries for it, the T5 ``text_encoder_3``. Specific to the StableDiffusion3 pipelines."""

    _lora_loadable_modules = ["transformer", "text_encoder", "text_encoder_2", "text_encoder_3"]
    _lorakit_family = SD3
    transformer_name = "transformer"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``transformer`` (an ``SD3Transformer2DModel``).

        Args:
            state_dict: a LoRA state dict (``transformer.`` keys or keys indexed directly into the model; any
                supported format, alphas included).
            transformer: the transformer (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(cls.transformer_name, transformer, state_dict, None, adapter_name, _pipeline, hotswap, metadata)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        transformer_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        text_encoder_2_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        is_main_process: bool = True,
        weight_name: str = None,
        save_function: Callable = None,
        safe_serialization: bool = True,
        transformer_lora_adapter_metadata=None,
        text_encoder_lora_adapter_metadata=None,
        text_encoder_2_lora_adapter_metadata=None,
        text_encoder_3_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
    ) -> None:
        """Save the LoRA parameters of the transformer and the text encoders (diffusers layout).

        Args: as :meth:`StableDiffusionLoraLoaderMixin.save_lora_weights` with ``transformer_lora_layers``; lorakit
        adds ``text_encoder_3_lora_layers`` (T5).
        """
        cls._lorakit_save(
            save_directory,
            {
                "transformer": transformer_lora_layers,
                "text_encoder": text_encoder_lora_layers,
                "text_encoder_2": text_encoder_2_lora_layers,
                "text_encoder_3": text_encoder_3_lora_layers,
            },
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
            {
                "transformer": transformer_lora_adapter_metadata,
                "text_encoder": text_encoder_lora_adapter_metadata,
                "text_encoder_2": text_encoder_2_lora_adapter_metadata,
            },
        )


class AmusedLoraLoaderMixin(LoraBaseMixin):
    """Load LoRA layers into the aMUSEd ``UVit2DModel`` and ``CLIPTextModelWithProjection`` (works on
    ``AmusedPipeline`` and its img2img / inpaint variants through :func:`attach`)."""

    _lora_loadable_modules = ["transformer", "text_encoder"]
    _lorakit_family = AMUSED
    transformer_name = "transformer"
    text_encoder_name = "text_encoder"

    @classmethod
    def load_lora_into_transformer(
        cls,
        state_dict,
        network_alphas,
        transformer,
        adapter_name=None,
        _pipeline=None,
        low_cpu_mem_usage=False,
        hotswap: bool = False,
        metadata=None,
    ) -> None:
        """Load the LoRA layers of ``state_dict`` meant for ``transformer`` (a ``UVit2DModel``).

        Args:
            state_dict: a LoRA state dict (``transformer.`` keys or keys indexed directly into the model).
            network_alphas: alphas returned by :meth:`lora_state_dict` (or ``None``).
            transformer: the transformer (a bare model works).
            adapter_name: name (default ``default_{i}``).
            _pipeline: the pipeline, for default names across components.
            low_cpu_mem_usage: accepted for compatibility (no effect).
            hotswap: replace adapter ``adapter_name`` in place.
            metadata: the file's header metadata.
        """
        cls._lorakit_load_one(
            cls.transformer_name, transformer, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata
        )

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str | os.PathLike,
        text_encoder_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        transformer_lora_layers: dict[str, nn.Module | torch.Tensor] = None,
        is_main_process: bool = True,
        weight_name: str = None,
        save_function: Callable = None,
        safe_serialization: bool = True,
    ) -> None:
        """Save the LoRA parameters of the transformer and the text encoder (diffusers layout)."""
        cls._lorakit_save(
            save_directory,
            {"transformer": transformer_lora_layers, "text_encoder": text_encoder_lora_layers},
            is_main_process,
            weight_name,
            save_function,
            safe_serialization,
        )


# ---------------------------------------------------------------------------------------------------- attach
_ATTACHED: dict[tuple[type, type], type] = {}
_ATTACH_LOCK = threading.Lock()


def _mixin_for(pipe: Any) -> type[LoraBaseMixin] | None:
    """The lorakit mixin for ``pipe``'s family, from diffusers' own mixins and the denoiser's class."""
    from diffusers.loaders import (
        AmusedLoraLoaderMixin as _DAmused,
    )
    from diffusers.loaders import (
        SD3LoraLoaderMixin as _DSD3,
    )
    from diffusers.loaders import (
        StableDiffusionLoraLoaderMixin as _DSD,
    )
    from diffusers.loaders import (
        StableDiffusionXLLoraLoaderMixin as _DSDXL,
    )

    denoiser = getattr(pipe, "transformer", None)
    dname = type(denoiser).__name__ if denoiser is not None else ""
    if isinstance(pipe, _DAmused) or dname == "UVit2DModel":
        return AmusedLoraLoaderMixin
    if isinstance(pipe, _DSD3) or dname == "SD3Transformer2DModel":
        return SD3LoraLoaderMixin
    if isinstance(pipe, _DSDXL):
        return StableDiffusionXLLoraLoaderMixin
    if isinstance(pipe, _DSD) and isinstance(getattr(pipe, "unet", None), nn.Module):
        return StableDiffusionLoraLoaderMixin
    return None


def attach(pipe: Any) -> Any:
    """Give an existing diffusers pipeline lorakit's LoRA methods; returns the same object.

    The instance's class is swapped for a subclass (created once per class, same ``__name__``) with the lorakit
    mixin of its family first in the MRO, so ``load_lora_weights``, ``set_adapters``, ``fuse_lora`` ... and the
    call-time scale kwargs run on lorakit's engine. Works for every SD, SDXL, SD3 and aMUSEd pipeline (text2img,
    img2img, inpaint, ...), including ``AmusedPipeline``, which diffusers never gave a loader. Attaching twice is
    harmless.

    Args:
        pipe: a diffusers pipeline instance.

    Returns:
        ``pipe`` itself.

    Raises:
        UnsupportedPipelineError: the pipeline is not of a family lorakit knows.

    Example:
        >>> pipe = lorakit.attach(StableDiffusionXLPipeline.from_pretrained(...))  # doctest: +SKIP
        >>> pipe.load_lora_weights("pixel-art-xl.safetensors", adapter_name="pixel")  # doctest: +SKIP
    """
    if isinstance(pipe, LoraBaseMixin):
        return pipe
    mixin = _mixin_for(pipe)
    if mixin is None:
        raise UnsupportedPipelineError(
            f"lorakit.attach: {type(pipe).__name__} is not an SD, SDXL, SD3 or aMUSEd pipeline"
        )
    cls = type(pipe)
    with _ATTACH_LOCK:
        new_cls = _ATTACHED.get((cls, mixin))
        if new_cls is None:
            new_cls = type(
                cls.__name__,
                (mixin, cls),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "_lorakit_base_class": cls},
            )
            _ATTACHED[(cls, mixin)] = new_cls
    pipe.__class__ = new_cls
    return pipe
