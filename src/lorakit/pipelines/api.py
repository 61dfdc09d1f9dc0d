"""``LoraBaseMixin``: diffusers' LoRA API over :class:`~lorakit.components.ComponentSet`.

Each method normalises its arguments the way diffusers does (one name or a list, weights as numbers or per-component
dicts, ``components=[]`` meaning all) and makes one ``ComponentSet`` call; behaviour lives in the set and in each
component's :class:`~lorakit.engine.AdapterManager`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .. import formats
from .. import io as lio
from ..components import ComponentSet, PipelineState
from ..engine import as_number, check_name
from ..errors import (
    AdapterWeightError,
    ComponentError,
    FormatError,
    HotswapError,
    KeyMismatchError,
    PerSampleError,
    did_you_mean,
    summarize,
)
from ..families import Family
from ..kinds import AdapterKind
from ..report import LoadReport
from . import save
from .blocks import expand_block_weights

logger = logging.getLogger(__name__)

__all__ = ["LoraBaseMixin", "load_report"]

#: where a pipeline keeps its PipelineState (in its __dict__)
STATE = "_lorakit_state"
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


def pipeline_state(pipe: Any) -> PipelineState:
    """The pipeline's own :class:`PipelineState` (created once; ``dict.setdefault`` is atomic across threads)."""
    st = pipe.__dict__.get(STATE)
    if st is None:
        st = pipe.__dict__.setdefault(STATE, PipelineState())
    return st


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a state-changing pipeline method under the pipeline's lock: loads, weight changes, fuses and unloads from
    several threads never interleave across components, and default adapter names cannot collide."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with pipeline_state(self).lock:
            return method(self, *args, **kwargs)

    return wrapper


def _names(adapter_names: object) -> list[str]:
    if isinstance(adapter_names, str):
        return [adapter_names]
    if isinstance(adapter_names, (list, tuple)):
        return list(adapter_names)
    return [adapter_names]  # type: ignore[list-item]  # checked by the caller (typed error)


def _lora_metadata(metadata: Mapping[str, Any] | None, component: str) -> dict[str, str]:
    """A header for ``formats.to_canonical`` from what a ``load_lora_into_*`` caller passes as ``metadata``: the raw
    safetensors header, diffusers' parsed ``lora_adapter_metadata`` (``{"unet.r": 4, ...}``), or one LoraConfig's
    fields (``{"r": 4, "lora_alpha": 8}``) for ``component``."""
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping):
        raise FormatError(f"metadata must be a mapping, got {type(metadata).__name__}")
    if save.LORA_ADAPTER_METADATA_KEY in metadata or any(str(k).startswith(("ss_", "modelspec.")) for k in metadata):
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    prefixed = all("." in str(k) for k in metadata)
    flat = dict(metadata) if prefixed else {f"{component}.{k}": v for k, v in metadata.items()}
    return {save.LORA_ADAPTER_METADATA_KEY: json.dumps(flat, default=str)}


def _with_alphas(state_dict: Mapping[str, Tensor], network_alphas: Mapping[str, Any] | None) -> dict[str, Tensor]:
    """``state_dict`` plus diffusers' ``network_alphas`` (``{"<module>.alpha": value}``) as scalar tensors."""
    out = dict(state_dict)
    for k, v in (network_alphas or {}).items():
        if k not in out:
            out[k] = v if isinstance(v, Tensor) else torch.tensor(as_number(v, f"network_alphas[{k!r}]"))
    return out


def _split_alphas(state_dict: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float] | None]:
    """diffusers' ``network_alphas``: the real, one-value ``*.alpha`` tensors. Anything odd (complex, meta) stays in
    the state dict, where the load rejects it with a typed error naming the key."""
    alphas: dict[str, float] = {}
    for k, v in state_dict.items():
        if (
            k.endswith(".alpha")
            and isinstance(v, Tensor)
            and v.numel() == 1
            and v.device.type != "meta"
            and not v.is_complex()
            and v.layout == torch.strided
        ):
            alphas[k] = float(v.reshape(()).item())
    if not alphas:
        return state_dict, None
    return {k: v for k, v in state_dict.items() if k not in alphas}, alphas


def load_report(pipe: Any, adapter_name: str) -> LoadReport | None:
    """The load report of adapter ``adapter_name`` of an attached pipeline (``None`` for an adapter added through the
    engine API, which has none).

    Raises:
        AdapterNotFoundError: the adapter is not loaded.
    """
    cset = ComponentSet(pipe._lorakit_models())
    cset.check_loaded([adapter_name])
    for mgr in cset.managers().values():
        info = mgr.info.get(adapter_name)
        if info is not None and info.get("report") is not None:
            return info["report"]
    return None


class LoraBaseMixin:
    """Utility class for handling LoRAs: the behaviour shared by every family (lorakit engine, no PEFT)."""

    _lora_loadable_modules: ClassVar[list[str]] = []
    _lorakit_family: ClassVar[Family | None] = None
    #: what ``lora_state_dict`` returns besides the state dict (diffusers differs per family)
    _lorakit_returns_alphas: ClassVar[bool] = True

    # ---------------------------------------------------------------- helpers
    def _lorakit_models(self) -> dict[str, nn.Module]:
        out = {}
        for comp in self._lora_loadable_modules:
            model = getattr(self, comp, None)
            if isinstance(model, nn.Module):
                # pipe.unet = torch.compile(pipe.unet): adapters live on the original module
                out[comp] = getattr(model, "_orig_mod", model)
        return out

    def _lorakit_set(self) -> ComponentSet:
        return ComponentSet(self._lorakit_models(), pipeline_state(self))

    def _lorakit_components(self, components: Sequence[str] | str | None) -> list[str]:
        if isinstance(components, str):  # fuse_lora(components="unet") means one component, not its letters
            components = [components]
        comps = list(components or []) or list(self._lora_loadable_modules)
        for c in comps:
            if c not in self._lora_loadable_modules:
                raise ComponentError(
                    f"{c} is not found in self._lora_loadable_modules={self._lora_loadable_modules!r}: component "
                    f"{c!r} is not LoRA-loadable here" + did_you_mean(str(c), list(self._lora_loadable_modules))
                )
        return comps

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
        return self._lorakit_set().fused()

    def _lorakit_before_call(self, arguments: Mapping[str, Any]) -> None:
        """A pipeline call inside ``lorakit.per_sample``: check the prompts against the entries and tell every
        plan how many images each prompt gets (batch rows -> samples)."""
        plans = pipeline_state(self).plans
        samples = next(iter(plans.values())).samples
        prompt = arguments.get("prompt")
        count = 1 if isinstance(prompt, str) else len(prompt) if isinstance(prompt, (list, tuple)) else None
        if count is not None and count != samples:
            raise PerSampleError(f"per_sample has {samples} entries but the call has {count} prompt(s): give one each")
        per_prompt = arguments.get("num_images_per_prompt") or 1
        for plan in plans.values():
            plan.per_prompt = int(per_prompt)

    def lora_report(self, adapter_name: str) -> LoadReport | None:
        """The load report of a loaded adapter: matched modules and kinds per component, alpha sources, every
        skipped key with its reason (lorakit only; diffusers' ``load_lora_weights`` returns nothing)."""
        return load_report(self, adapter_name)

    # ---------------------------------------------------------------- reading
    @classmethod
    def lora_state_dict(cls, pretrained_model_name_or_path_or_dict: str | dict[str, torch.Tensor], **kwargs: Any):
        """Return state dict for lora weights and the network alphas.

        Args:
            pretrained_model_name_or_path_or_dict: a Hub repository id, a folder, a file or a state dict.
            **kwargs: ``cache_dir``, ``force_download``, ``proxies``, ``local_files_only``, ``token``, ``revision``,
                ``subfolder``, ``weight_name``, ``use_safetensors`` (see diffusers), and ``return_lora_metadata``.

        Returns:
            As diffusers does for the family: ``(state_dict, network_alphas)`` (SD, SDXL, aMUSEd) or ``state_dict``
            (SD3; Flux unless ``return_alphas=True``), plus, with ``return_lora_metadata=True``, the parsed
            ``lora_adapter_metadata`` of the header
            (``None`` when absent). The state dict holds the file's keys unchanged (lorakit converts at load
            time) except the scalar ``*.alpha`` entries, which are returned in ``network_alphas`` (``None`` when
            there are none); passing both to a ``load_lora_into_*`` method restores the file exactly. The whole
            raw header is :func:`lorakit.read_lora`'s.
        """
        return cls._lorakit_state_dict(pretrained_model_name_or_path_or_dict, cls._lorakit_returns_alphas, kwargs)

    @classmethod
    def _lorakit_state_dict(cls, source: Any, return_alphas: bool, kwargs: dict[str, Any]) -> Any:
        """:meth:`lora_state_dict`'s body; ``return_alphas`` says whether the alphas are split off and returned
        (fixed per family, or the caller's choice as in diffusers' Flux loader)."""
        return_metadata = kwargs.pop("return_lora_metadata", False)
        io_kwargs = {k: kwargs.pop(k) for k in _IO_KWARGS if k in kwargs}
        kwargs.pop("unet_config", None)
        if kwargs:
            logger.debug("lora_state_dict: ignoring %s", summarize(kwargs))
        state_dict, header, _ = lio.read_source(source, **io_kwargs)
        parsed = save.parsed_lora_metadata(header)
        if not return_alphas:
            return (state_dict, parsed) if return_metadata else state_dict
        state_dict, network_alphas = _split_alphas(state_dict)
        if return_metadata:
            return state_dict, network_alphas, parsed
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
        component is converted and validated before any is changed. As in diffusers, the new adapter becomes the
        only active one in each component it loads into (``set_adapters`` combines several). The load report is
        :meth:`lora_report`'s.

        Args:
            pretrained_model_name_or_path_or_dict: see :meth:`lora_state_dict`.
            adapter_name: name of the adapter (default ``default_{i}``); an existing name raises
                :class:`~lorakit.errors.AdapterExistsError` unless ``hotswap``.
            hotswap: replace the tensors of the loaded adapter ``adapter_name`` in place (no recompilation of a
                compiled denoiser); see :meth:`enable_lora_hotswap`.
            **kwargs: the reading options of :meth:`lora_state_dict`; ``low_cpu_mem_usage`` is accepted (lorakit
                never initialises random weights); ``strict=True`` makes unmatched keys an error.
        """
        kwargs.pop("low_cpu_mem_usage", None)
        strict = bool(kwargs.pop("strict", False))
        io_kwargs = {k: kwargs.pop(k) for k in _IO_KWARGS if k in kwargs}
        kwargs.pop("return_lora_metadata", None)
        if kwargs:
            logger.debug("load_lora_weights: ignoring %s", summarize(kwargs))
        if adapter_name is not None:
            check_name(adapter_name)
        if hotswap and adapter_name is None:
            raise HotswapError("hotswap=True needs the adapter_name of a loaded adapter")
        state_dict, header, source = lio.read_source(pretrained_model_name_or_path_or_dict, **io_kwargs)
        self._lorakit_load(state_dict, header, self._lorakit_models(), adapter_name, source, hotswap, strict=strict)

    def _lorakit_load(
        self,
        state_dict: Mapping[str, Tensor],
        header: Mapping[str, Any],
        models: Mapping[str, nn.Module],
        adapter_name: str | None,
        source: str,
        hotswap: bool,
        *,
        strict: bool = False,
        weights: Mapping[str, float] | None = None,
        activate: bool = True,
    ) -> None:
        conv = formats.to_canonical(state_dict, header, dict(models), source=source, strict=strict)
        adapters = {c: dict(m) for c, m in conv.adapters.items() if c in models and m}
        if not adapters:
            raise KeyMismatchError(
                f"{source}: no adapter entries for component(s) {summarize(models) or 'none'}", report=conv.report
            )
        # the set of the whole pipeline: default names are unique across components
        cset = self._lorakit_set()
        name = adapter_name if adapter_name is not None else cset.default_name()
        info = {"format": conv.format, "report": conv.report, "source": source}
        ComponentSet(models, cset.state).load(
            adapters, name, info=info, weights=weights, hotswap=hotswap, activate=activate
        )

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
        metadata: Mapping[str, Any] | None,
        weight: float = 1.0,
    ) -> None:
        """One component's ``load_lora_into_*``: keys prefixed with the component or indexed directly into it."""
        if adapter_name is not None:
            check_name(adapter_name)
        if hotswap and adapter_name is None:
            raise HotswapError("hotswap=True needs the adapter_name of a loaded adapter")
        if not isinstance(state_dict, Mapping):
            raise FormatError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
        full = _with_alphas(state_dict, network_alphas)
        header = _lora_metadata(metadata, component)
        host = _pipeline if isinstance(_pipeline, LoraBaseMixin) else None
        models = {component: getattr(model, "_orig_mod", model)}
        if host is not None:
            with pipeline_state(host).lock:
                host._lorakit_load(full, header, models, adapter_name, "<state dict>", hotswap, weights={component: weight})
            return
        cset = ComponentSet(models)
        name = adapter_name if adapter_name is not None else cset.default_name()
        conv = formats.to_canonical(full, header, models, source="<state dict>")
        adapters = {c: dict(m) for c, m in conv.adapters.items() if c in models and m}
        if not adapters:
            raise KeyMismatchError(f"<state dict>: no adapter entries for {component}", report=conv.report)
        info = {"format": conv.format, "report": conv.report, "source": "<state dict>"}
        cset.load(adapters, name, info=info, weights={component: weight}, hotswap=hotswap)

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
            metadata: the file's parsed ``lora_adapter_metadata`` (as :meth:`lora_state_dict` returns it), one
                LoraConfig's fields, or the raw header.
        """
        component = prefix or getattr(cls, "text_encoder_name", "text_encoder")
        weight = as_number(lora_scale, "lora_scale")
        cls._lorakit_load_one(
            component, text_encoder, state_dict, network_alphas, adapter_name, _pipeline, hotswap, metadata, weight
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
        save.write_lora_layers(
            save_directory,
            {k: v for k, v in layers.items() if v},
            is_main_process=is_main_process,
            weight_name=weight_name,
            save_function=save_function,
            safe_serialization=safe_serialization,
            metadata={k: v for k, v in (metadata or {}).items() if v} or None,
        )

    @staticmethod
    def pack_weights(layers, prefix):
        """``{"<prefix>.<key>": tensor}`` from a state dict or a module (diffusers' helper)."""
        return save.pack_layers({prefix: layers})

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
        save.write_lora_layers(
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
        """Unloads the LoRA parameters: every adapter and hook lorakit added is gone.

        Fused adapters stay in the weights while LoRA is enabled (as in diffusers; unfuse first to restore the
        original); a disabled pipeline keeps its base weights.
        """
        self._lorakit_set().unload()

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

        Every fused tensor of every component is computed (and checked with ``safe_fusing``) before any is
        installed, so a failure changes nothing. A disabled pipeline stays disabled: its output is the base model's
        until :meth:`enable_lora`.

        Args:
            components: components to fuse into (empty: every LoRA-loadable component).
            lora_scale: multiplies each adapter's ``set_adapters`` weight (a finite number).
            safe_fusing: refuse NaN/Inf fused weights (raises :class:`~lorakit.errors.NonFiniteError`).
            adapter_names: adapters to fuse (default: the active ones).
            **kwargs: lorakit's ``fuse_strategy="copy"`` (default: new tensors, the originals kept: unfuse, disable
                and enable are O(1), at one copy of the fused weights in memory) or ``"inplace"`` (the fused values
                go into the weights' own storage, about half that extra memory; unfuse recomputes the deltas and
                restores the exact bits, so both are slower). Both give the same fused weights and the original bits
                back.
        """
        comps = self._lorakit_components(components)
        scale = as_number(lora_scale, "lora_scale")
        cset = self._lorakit_set()
        names = None
        if adapter_names is not None:
            names = _names(adapter_names)
            cset.check_loaded(names)
        cset.fuse(comps, names, scale, safe_fusing, kwargs.pop("fuse_strategy", None))

    @_serialized
    def unfuse_lora(self, components: list[str] = [], **kwargs: Any) -> None:  # noqa: B006
        """Reverses the effect of :meth:`fuse_lora` (original weights back, bit-exact).

        Args:
            components: components to unfuse (empty: every LoRA-loadable component).
        """
        self._lorakit_set().unfuse(self._lorakit_components(components))

    def _lorakit_weights(
        self, cset: ComponentSet, names: list[str], adapter_weights: Any, *, warn: bool = True
    ) -> dict[str, tuple[list[str], list[Any]]]:
        """``set_adapters``' arguments as ``{component: (names, weights)}`` (numbers or per-module functions),
        checked: loaded names, one weight per name, known components, block weights that fit."""
        cset.check_loaded(names)
        if adapter_weights is None:
            weights: list[Any] = [1.0] * len(names)
        elif isinstance(adapter_weights, (list, tuple)):
            weights = list(adapter_weights)
        else:
            weights = [adapter_weights] * len(names)
        if len(weights) != len(names):
            raise AdapterWeightError(
                f"Length of adapter names {len(names)} is not equal to the length of their weights {len(weights)}: "
                f"{len(weights)} adapter weights for {len(names)} adapters ({summarize(names)})"
            )
        managers = cset.managers()
        per_comp: dict[str, tuple[list[str], list[Any]]] = {c: ([], []) for c in managers}
        for name, w in zip(names, weights):
            if isinstance(w, Mapping):
                unknown = [c for c in w if c not in self._lora_loadable_modules]
                if unknown:
                    raise ComponentError(
                        f"adapter {name!r}: weight for unknown component(s) {summarize(unknown)} "
                        f"(loadable: {summarize(self._lora_loadable_modules)})"
                        + did_you_mean(str(unknown[0]), list(self._lora_loadable_modules))
                    )
                for c in w:
                    if warn and w[c] is not None and (c not in managers or name not in managers[c].adapters):
                        logger.warning("adapter %r is not loaded in %s; its weight for %s is ignored", name, c, c)
            for comp, mgr in managers.items():
                if name not in mgr.adapters:
                    continue
                spec = w.get(comp) if isinstance(w, Mapping) else w
                value = 1.0 if spec is None else expand_block_weights(spec, mgr.model, f"adapter {name!r}, {comp}")
                per_comp[comp][0].append(name)
                per_comp[comp][1].append(value)
        return per_comp

    @_serialized
    def set_adapters(
        self,
        adapter_names: list[str] | str,
        adapter_weights: float | dict | list[float] | list[dict] | None = None,
    ) -> None:
        """Make exactly ``adapter_names`` active, with weights. Every weight is checked before any is set.

        Args:
            adapter_names: one name or a list.
            adapter_weights: ``None`` (1.0 each), one number for all, or a list with one entry per adapter; each
                entry a number or a per-component dict ``{"unet": 0.5, "text_encoder": 0.8}`` whose values may
                be per-block dicts for the denoiser (``{"unet": {"down": 0.9, "mid": 0.5, "up": {"block_0": ...}}}``,
                ``{"transformer": {"block_0": 0.5}}``; see :mod:`lorakit.pipelines.blocks`). Unlisted components
                get 1.0.

        Raises:
            AdapterNotFoundError: a name is not loaded.
            AdapterWeightError / ComponentError / KeyMismatchError: weights that do not fit.
        """
        names = _names(adapter_names)
        cset = self._lorakit_set()
        cset.set_adapters(self._lorakit_weights(cset, names, adapter_weights))


    @_serialized
    def disable_lora(self) -> None:
        """Disables LoRA in every component: the output is the base model's (fused adapters too) until
        :meth:`enable_lora`, whatever is loaded, fused, deleted or hotswapped meanwhile."""
        self._lorakit_set().disable()

    @_serialized
    def enable_lora(self) -> None:
        """Enables LoRA in every component: the current fused and active state applies again."""
        self._lorakit_set().enable()

    @_serialized
    def delete_adapters(self, adapter_names: list[str] | str) -> None:
        """Delete adapters from every component (a fused one leaves the weights: the rest is re-fused exactly).

        Args:
            adapter_names: one name or a list; every name must be loaded.
        """
        self._lorakit_set().delete(_names(adapter_names))

    def get_active_adapters(self) -> list[str]:
        """Gets the list of the current active adapters over all components (each component in its
        ``set_adapters`` order, the denoiser first)."""
        return self._lorakit_set().active()

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Gets the current list of all available adapters in the pipeline, per component."""
        return {c: m.list_adapters() for c, m in self._lorakit_set().managers().items() if m.adapters}

    @_serialized
    def set_lora_device(self, adapter_names: list[str], device: torch.device | str | int) -> None:
        """Moves the LoRAs listed in ``adapter_names`` to ``device`` (e.g. park unused ones on the CPU).

        Args:
            adapter_names: adapters to move (each must be loaded).
            device: a torch device, a string or a CUDA index.
        """
        self._lorakit_set().set_device(_names(adapter_names), device)

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
        cset = self._lorakit_set()
        if cset.loaded():
            msg = (
                "Call `enable_lora_hotswap` before loading the first adapter: adapters already loaded are not padded"
            )
            if check == "error":
                raise HotswapError(msg)
            if check == "warn":
                logger.warning(msg)
        cset.enable_hotswap(target_rank)


def adapters_of(pipe: Any, adapter_name: str) -> dict[str, dict[str, AdapterKind]]:
    """``{component: {module path: kind}}`` of one loaded adapter (what ``save_adapter`` writes)."""
    cset = ComponentSet(pipe._lorakit_models())
    cset.check_loaded([adapter_name])
    return {c: dict(m.adapters[adapter_name]) for c, m in cset.managers().items() if adapter_name in m.adapters}

