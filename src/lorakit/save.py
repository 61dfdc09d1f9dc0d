"""Writing adapters: diffusers' ``save_lora_weights`` file writer, diffusers/PEFT metadata, and ``save_adapter``.

``write_lora_layers`` has the semantics of diffusers' ``save_lora_weights`` (directory created, default file name
``pytorch_lora_weights.safetensors`` / ``.bin``, layers given as tensors or modules, ``is_main_process``,
``save_function``, ``safe_serialization``) and writes per-component ``LoraConfig`` fields into the safetensors header
under ``lora_adapter_metadata`` exactly as diffusers does, so per-module ranks and alphas reload with the same scales
in lorakit and in diffusers. :func:`peft_metadata` builds those fields from canonical adapters.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import formats
from .errors import DestinationExistsError, DTypeError, FormatError, summarize
from .io import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE, PEFT_CONFIG_METADATA_KEY, PEFT_CONFIG_NAME
from .kinds import AdapterKind, DoRA, LoRA

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_METADATA_KEY",
    "write_lora_layers",
    "pack_layers",
    "peft_metadata",
    "header_metadata",
    "save_adapter",
    "save_safetensors",
]

#: diffusers' header key for the serialized LoraConfig fields (loaders/lora_base.py ``LORA_ADAPTER_METADATA_KEY``)
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"

Layers = Mapping[str, Tensor | nn.Module] | nn.Module


# ----------------------------------------------------------------------------------------------- packing
def pack_layers(layers: Mapping[str, Layers | None]) -> dict[str, Tensor]:
    """``{prefix: layers}`` -> one flat ``{"<prefix>.<key>": tensor}`` dict.

    Each ``layers`` is a state dict, an ``nn.Module`` (its ``state_dict()``), or a dict whose values are tensors or
    modules (a module value ``m`` under key ``k`` contributes ``k.<name>`` for each entry of ``m.state_dict()``).
    ``None`` / empty entries are skipped.
    """
    out: dict[str, Tensor] = {}
    for prefix, layer in layers.items():
        if layer is None:
            continue
        items = layer.state_dict() if isinstance(layer, nn.Module) else layer
        if not isinstance(items, Mapping):
            raise DTypeError(f"layers for {prefix!r} are a {type(items).__name__}, expected a dict or an nn.Module")
        for key, value in items.items():
            if isinstance(value, nn.Module):
                for sub, tensor in value.state_dict().items():
                    out[f"{prefix}.{key}.{sub}"] = tensor
            elif isinstance(value, Tensor):
                out[f"{prefix}.{key}"] = value
            else:
                raise DTypeError(
                    f"layers for {prefix!r}: value of {key!r} is a {type(value).__name__}, expected a tensor or module"
                )
    return out


def _plain_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU-independent tensors that safetensors accepts (no shared storage)."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, t in state_dict.items():
        t = t.detach()
        if t.device.type == "meta":
            raise DTypeError(f"{key!r} is a meta tensor (no data) and cannot be saved")
        if not t.is_contiguous():
            t = t.contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and ident in seen:
            t = t.clone()
        elif t.numel():
            seen.add(ident)
        out[key] = t
    return out


def _flatten_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """``{component: LoraConfig fields}`` -> diffusers' flat ``{"<component>.<field>": value}`` (sets -> lists).

    A value that is not a mapping is taken as an already flat entry.
    """
    flat: dict[str, Any] = {}
    for comp, cfg in metadata.items():
        if cfg is None:
            continue
        if hasattr(cfg, "to_dict") and not isinstance(cfg, Mapping):
            cfg = cfg.to_dict()
        if isinstance(cfg, Mapping):
            for fld, value in cfg.items():
                flat[f"{comp}.{fld}"] = sorted(value) if isinstance(value, (set, frozenset)) else value
        else:
            flat[comp] = cfg
    return flat


def header_metadata(lora_metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """The safetensors ``__metadata__`` diffusers writes: ``{"format": "pt"}`` plus ``lora_adapter_metadata``."""
    header = {"format": "pt"}
    flat = _flatten_metadata(lora_metadata or {})
    if flat:
        header[LORA_ADAPTER_METADATA_KEY] = json.dumps(flat, indent=2, sort_keys=True, default=_json_default)
    return header


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def save_safetensors(state_dict: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None) -> None:
    """Write a safetensors file atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    target = Path(path)
    header = {str(k): v if isinstance(v, str) else json.dumps(v, default=_json_default) for k, v in (metadata or {}).items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        save_file(_plain_tensors(state_dict), tmp, metadata=header or None)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------- diffusers writer
def write_lora_layers(
    save_directory: str | os.PathLike[str],
    layers: Mapping[str, Layers | None],
    *,
    is_main_process: bool = True,
    weight_name: str | None = None,
    save_function: Callable[..., Any] | None = None,
    safe_serialization: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> str | None:
    """Save LoRA layers the way diffusers' ``save_lora_weights`` does.

    Args:
        save_directory: folder to write into; created if missing.
        layers: ``{component prefix: layers}``, e.g. ``{"unet": unet_lora_layers, "text_encoder": te_layers}``.
            Each is a state dict, an ``nn.Module`` or a dict of tensors/modules (see :func:`pack_layers`); keys are
            written as ``"<prefix>.<key>"``.
        is_main_process: ``False`` writes nothing (distributed training: only the main process saves).
        weight_name: file name; default ``pytorch_lora_weights.safetensors`` (``.bin`` when not safe).
        save_function: called as ``save_function(state_dict, path)`` instead of the default writer.
        safe_serialization: safetensors (default) or ``torch.save``.
        metadata: ``{component prefix: LoraConfig fields (dict or LoraConfig)}``; written to the safetensors header
            as diffusers' ``lora_adapter_metadata`` (JSON of ``"<prefix>.<field>"`` keys). Only with safetensors.

    Returns:
        The path written, or ``None`` when ``is_main_process`` is ``False``.

    Raises:
        FormatError: nothing to save, or ``metadata`` with ``safe_serialization=False``.
        DestinationExistsError: ``save_directory`` is an existing file.
        DTypeError: a layer value is neither a tensor nor a module.

    Example:
        >>> write_lora_layers("out", {"unet": get_peft_model_state_dict(unet)})  # doctest: +SKIP
        'out/pytorch_lora_weights.safetensors'
    """
    state_dict = pack_layers(layers)
    if not state_dict:
        raise FormatError(f"{os.fspath(save_directory)}: no LoRA layers to save (all of {summarize(layers) or 'none'} are empty)")
    flat = _flatten_metadata(metadata or {})
    if flat and not safe_serialization and save_function is None:
        raise FormatError(
            f"{os.fspath(save_directory)}: adapter metadata can only be written to a safetensors header "
            "(safe_serialization=True); a pickle would lose the per-module alphas"
        )
    if not is_main_process:
        logger.debug("not the main process: nothing written to %s", save_directory)
        return None
    if os.path.isfile(save_directory):
        raise DestinationExistsError(f"{os.fspath(save_directory)}: is a file; save_lora_weights needs a directory")
    os.makedirs(save_directory, exist_ok=True)
    if weight_name is None:
        weight_name = LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME
    path = Path(save_directory, weight_name).as_posix()
    if save_function is not None:
        if flat:
            logger.warning("%s: a custom save_function receives only the tensors; the adapter metadata is not written", path)
        save_function(state_dict, path)
    elif safe_serialization:
        save_safetensors(state_dict, path, header_metadata(metadata))
    else:
        torch.save(_plain_tensors(state_dict), path)
    logger.info("LoRA weights saved in %s", path)
    return path


# ----------------------------------------------------------------------------------------------- metadata
def _lora_of(kind: AdapterKind, where: str) -> tuple[LoRA, bool]:
    if isinstance(kind, DoRA):
        if not isinstance(kind.inner, LoRA) or kind.axis != "out":
            raise FormatError(f"{where}: PEFT metadata describes DoRA over LoRA on the output axis only")
        return kind.inner, True
    if not isinstance(kind, LoRA):
        raise FormatError(f"{where}: a {kind.kind_name} adapter cannot be described by a PEFT LoraConfig")
    if kind.mid is not None:
        raise FormatError(f"{where}: a Tucker (lora_mid) adapter cannot be described by a PEFT LoraConfig")
    return kind, False


def peft_metadata(mapping: Mapping[str, AdapterKind], *, component: str = "") -> dict[str, Any]:
    """``LoraConfig`` fields that make PEFT/diffusers apply exactly the scales of ``mapping`` (module path -> kind).

    ``r`` / ``lora_alpha`` are the most common rank / alpha; modules that differ get ``rank_pattern`` /
    ``alpha_pattern`` entries keyed by their full module path; ``target_modules`` lists every path.

    Raises:
        FormatError: a kind PEFT's LoRA cannot express (LoHa, LoKr, full, Tucker, mixed DoRA).
    """
    if not mapping:
        raise FormatError(f"{component or 'adapter'}: no modules to describe")
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    dora: set[bool] = set()
    bias = False
    for path, kind in mapping.items():
        lora, is_dora = _lora_of(kind, f"{component}.{path}" if component else path)
        dora.add(is_dora)
        ranks[path] = lora.rank
        alphas[path] = float(lora.alpha) if lora.alpha is not None else float(lora.rank)
        bias = bias or lora.bias is not None
    if len(dora) > 1:
        raise FormatError(f"{component or 'adapter'}: mixes DoRA and plain LoRA modules; PEFT takes one use_dora flag")
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    alpha_out: float | int = int(alpha) if float(alpha).is_integer() else alpha
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha_out,
        "rank_pattern": {p: k for p, k in sorted(ranks.items()) if k != r},
        "alpha_pattern": {p: a for p, a in sorted(alphas.items()) if a != alpha},
        "target_modules": sorted(mapping),
        "use_dora": dora == {True},
        "use_rslora": False,
        "lora_bias": bias,
    }


# ----------------------------------------------------------------------------------------------- save_adapter
_DEFAULT_NAMES = {"diffusers": LORA_WEIGHT_NAME_SAFE, "peft": "adapter_model.safetensors"}


def _output_file(path: str | os.PathLike[str], to: str, stem: str, overwrite: bool) -> Path:
    """``path``, or the layout's default file name inside it when it is a folder; refuses an existing file."""
    target = Path(path)
    if target.is_dir():
        target = target / _DEFAULT_NAMES.get(to, f"{stem}.safetensors")
    if target.exists() and not overwrite:
        raise DestinationExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    return target


def _write_layout(state_dict: Mapping[str, Tensor], header: Mapping[str, str], target: Path, to: str) -> None:
    """Write the safetensors file, plus ``adapter_config.json`` beside it for the PEFT layout when there is one."""
    save_safetensors(state_dict, target, header)
    if to == "peft" and PEFT_CONFIG_METADATA_KEY in header:
        (target.parent / PEFT_CONFIG_NAME).write_text(header[PEFT_CONFIG_METADATA_KEY], encoding="utf-8")


def _canonical_from(
    manager_or_adapters: Any, adapter_name: str | None, component: str | None
) -> dict[str, dict[str, AdapterKind]]:
    from .manager import AdapterManager

    def from_manager(mgr: AdapterManager, comp: str) -> dict[str, AdapterKind]:
        names = mgr.list_adapters()
        name = adapter_name
        if name is None:
            if len(names) != 1:
                raise FormatError(
                    f"{comp}: {len(names)} adapters loaded ({summarize(names) or 'none'}); pass adapter_name="
                )
            name = names[0]
        mgr.check_names([name])
        return dict(mgr.adapters[name])

    if isinstance(manager_or_adapters, AdapterManager):
        comp = component or _component_name(manager_or_adapters.model)
        return {comp: from_manager(manager_or_adapters, comp)}
    if not isinstance(manager_or_adapters, Mapping):
        raise FormatError(
            f"save_adapter takes an AdapterManager, {{component: AdapterManager}} or {{component: {{path: kind}}}}, "
            f"got {type(manager_or_adapters).__name__}"
        )
    out: dict[str, dict[str, AdapterKind]] = {}
    for comp, value in manager_or_adapters.items():
        if isinstance(value, AdapterManager):
            out[comp] = from_manager(value, comp)
        elif isinstance(value, Mapping) and all(isinstance(k, AdapterKind) for k in value.values()):
            out[comp] = dict(value)
        else:
            raise FormatError(f"save_adapter: component {comp!r} holds a {type(value).__name__}, not adapters")
    return out


def _component_name(model: nn.Module) -> str:
    cls = type(model).__name__
    if cls == "UNet2DConditionModel":
        return "unet"
    if cls in ("SD3Transformer2DModel", "UVit2DModel"):
        return "transformer"
    if cls.startswith("CLIPText"):
        return "text_encoder"
    raise FormatError(f"cannot tell which pipeline component a {cls} is; pass component=")


def save_adapter(
    manager_or_adapters: Any,
    path: str | os.PathLike[str],
    to: str = "diffusers",
    metadata: Mapping[str, Any] | None = None,
    *,
    adapter_name: str | None = None,
    component: str | None = None,
    family: str | None = None,
    overwrite: bool = False,
) -> str:
    """Write canonical adapters to a safetensors file in the layout ``to`` (``"diffusers"``, ``"peft"``, ``"kohya"``).

    Args:
        manager_or_adapters: an ``AdapterManager`` (its single adapter, or ``adapter_name``), a
            ``{component: AdapterManager}`` dict, or canonical ``{component: {module path: kind}}``.
        path: the output file, or an existing folder (file name ``pytorch_lora_weights.safetensors`` for diffusers,
            ``adapter_model.safetensors`` for PEFT, ``<adapter_name or "lora">.safetensors`` for kohya).
        to: the layout, passed to ``formats.from_canonical``.
        metadata: extra header entries (non-string values are JSON-encoded); they override the converter's.
        adapter_name: which adapter of a manager to save.
        component: the component name of a lone manager (guessed from its model class otherwise).
        family: base family for layouts whose names depend on it (kohya SDXL/SD3).
        overwrite: replace an existing file.

    Returns:
        The path written. For ``to="peft"`` an ``adapter_config.json`` is written beside it when the converter
        provides one.

    Raises:
        DestinationExistsError: the file exists and ``overwrite`` is false.
        FormatError: nothing to save, or the adapters cannot be expressed in ``to``.
    """
    adapters = _canonical_from(manager_or_adapters, adapter_name, component)
    if not any(adapters.values()):
        raise FormatError(f"{os.fspath(path)}: no adapters to save")
    target = _output_file(path, to, adapter_name or "lora", overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    state_dict, header = formats.from_canonical(adapters, to, family=family)
    header = dict(header or {})
    for k, v in (metadata or {}).items():
        header[str(k)] = v if isinstance(v, str) else json.dumps(v, default=_json_default)
    _write_layout(state_dict, header, target, to)
    logger.info("saved %d modules (%s layout) to %s", sum(len(m) for m in adapters.values()), to, target)
    return os.fspath(target)
