"""diffusers' ``save_lora_weights`` file writer and its ``lora_adapter_metadata`` header.

``write_lora_layers`` has the semantics of diffusers' ``save_lora_weights`` (directory created, default file name
``pytorch_lora_weights.safetensors`` / ``.bin``, layers given as tensors or modules, ``is_main_process``,
``save_function``, ``safe_serialization``) and writes per-component ``LoraConfig`` fields into the safetensors header
under ``lora_adapter_metadata`` exactly as diffusers does, so per-module ranks and alphas reload with the same scales
in lorakit and in diffusers. :func:`peft_metadata` builds those fields from canonical adapters.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import kinds as K
from ..errors import DestinationError, DestinationExistsError, DTypeError, FormatError, summarize
from ..io import LORA_WEIGHT_NAME, LORA_WEIGHT_NAME_SAFE
from ..io.write import json_default as _json_default
from ..io.write import plain_tensors as _plain_tensors
from ..io.write import save_safetensors

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_METADATA_KEY",
    "header_metadata",
    "canonical_fields",
    "pack_layers",
    "parsed_lora_metadata",
    "refuse_canonical_layers",
    "save_safetensors",
    "write_lora_layers",
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


@functools.cache
def canonical_fields() -> frozenset[str]:
    """Tensor names of lorakit's canonical kinds that no file layout uses as a key suffix (``down``, ``up``,
    ``w1a``, ``magnitude``, ...): the last part of the keys ``AdapterManager.adapter_state_dict`` returns."""
    kinds: tuple[Any, ...] = (*K.KINDS, *K.WRAPPERS, *K.NOT_APPLIED)
    names = {f.name for k in kinds for f in dataclasses.fields(k)}
    file_suffixes = {s.text.rsplit(".", 1)[-1] for s in K.vocabulary()}
    return frozenset(names - file_suffixes - {"alpha", "axis", "convention", "inner"})


def refuse_canonical_layers(state_dict: Mapping[str, Tensor]) -> None:
    """Refuse lorakit's own canonical tensors (``{"<module>.<field>": tensor}``, e.g. from
    ``get_manager(pipe.unet).adapter_state_dict("style")``) as ``*_lora_layers``: they hold no alphas and no file
    layout, so the file written from them could not be loaded back. ``lorakit.save_adapter`` saves a loaded adapter.

    Raises:
        FormatError: some key ends in a canonical field name that no file layout uses.
    """
    fields = canonical_fields()
    bad = [k for k in state_dict if k.rsplit(".", 1)[-1] in fields]
    if bad:
        comps = sorted({k.split(".", 1)[0] for k in bad})
        raise FormatError(
            f"{', '.join(c + '_lora_layers' for c in comps)}: {len(bad)} of {len(state_dict)} keys are lorakit's "
            f"canonical adapter tensors (first: {bad[0]!r}, as AdapterManager.adapter_state_dict returns them); "
            "they carry no alphas and no file layout, so the file could not be loaded back. Save a loaded adapter "
            "with lorakit.save_adapter(pipe, adapter_name, path), or pass PEFT layers (get_peft_model_state_dict)"
        )


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


def parsed_lora_metadata(header: Mapping[str, str] | None) -> dict[str, Any] | None:
    """What diffusers' ``lora_state_dict(..., return_lora_metadata=True)`` returns: the header's
    ``lora_adapter_metadata`` JSON as a dict (``None`` when absent or not a JSON object)."""
    raw = (header or {}).get(LORA_ADAPTER_METADATA_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (TypeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------------- diffusers writer
def _destination(save_directory: str | os.PathLike[str], weight_name: str) -> str:
    """The file to write, with typed errors naming the argument that does not fit (nothing is created on error
    except ``save_directory`` itself, as diffusers does)."""
    folder = os.fspath(save_directory)
    if os.path.isfile(folder):
        raise DestinationExistsError(f"save_directory {folder!r}: is a file; save_lora_weights needs a directory")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"save_directory {folder!r}: cannot create it ({exc.strerror or exc})") from None
    path = Path(folder, weight_name)
    if path.is_dir():
        raise DestinationExistsError(f"weight_name {weight_name!r}: {path.as_posix()} is a directory, not a file")
    if not path.parent.is_dir():
        raise DestinationError(
            f"weight_name {weight_name!r}: folder {path.parent.as_posix()} does not exist inside save_directory"
        )
    if not os.access(path.parent, os.W_OK):
        raise DestinationError(f"save_directory {folder!r}: not writable")
    return path.as_posix()


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
        FormatError: nothing to save, ``metadata`` with ``safe_serialization=False``, or lorakit's canonical tensors
            (``AdapterManager.adapter_state_dict``) instead of file layers (see :func:`refuse_canonical_layers`).
        DestinationExistsError: ``save_directory`` is an existing file, or ``weight_name`` names a folder.
        DestinationError: a folder that does not exist (``weight_name`` with a missing subfolder) or cannot be
            written.
        DTypeError: a layer value is neither a tensor nor a module.

    Example:
        >>> write_lora_layers("out", {"unet": get_peft_model_state_dict(unet)})  # doctest: +SKIP
        'out/pytorch_lora_weights.safetensors'
    """
    state_dict = pack_layers(layers)
    if not state_dict:
        raise FormatError(f"{os.fspath(save_directory)}: no LoRA layers to save (all of {summarize(layers) or 'none'} are empty)")
    refuse_canonical_layers(state_dict)
    flat = _flatten_metadata(metadata or {})
    if flat and not safe_serialization and save_function is None:
        raise FormatError(
            f"{os.fspath(save_directory)}: adapter metadata can only be written to a safetensors header "
            "(safe_serialization=True); a pickle would lose the per-module alphas"
        )
    if not is_main_process:
        logger.debug("not the main process: nothing written to %s", save_directory)
        return None
    if weight_name is None:
        weight_name = LORA_WEIGHT_NAME_SAFE if safe_serialization else LORA_WEIGHT_NAME
    path = _destination(save_directory, weight_name)
    if save_function is not None:
        if flat:
            logger.warning("%s: a custom save_function receives only the tensors; the adapter metadata is not written", path)
        save_function(state_dict, path)
    elif safe_serialization:
        try:
            save_safetensors(state_dict, path, header_metadata(metadata))
        except OSError as exc:
            raise DestinationError(f"{path}: cannot write ({exc.strerror or exc})") from None
    else:
        try:
            torch.save(_plain_tensors(state_dict), path)
        except OSError as exc:
            raise DestinationError(f"{path}: cannot write ({exc.strerror or exc})") from None
    logger.info("LoRA weights saved in %s", path)
    return path


