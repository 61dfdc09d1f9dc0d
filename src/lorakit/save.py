"""Writing canonical adapters: PEFT metadata and ``save_adapter``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from . import families, formats
from .engine import AdapterManager
from .errors import DestinationExistsError, FormatError, summarize
from .io import LORA_WEIGHT_NAME_SAFE, PEFT_CONFIG_METADATA_KEY, PEFT_CONFIG_NAME
from .io.write import json_default, save_safetensors
from .kinds import AdapterKind
from .pipelines.save import LORA_ADAPTER_METADATA_KEY

logger = logging.getLogger(__name__)

__all__ = ["LORA_ADAPTER_METADATA_KEY", "peft_metadata", "save_adapter", "save_safetensors"]


# ----------------------------------------------------------------------------------------------- metadata
def peft_metadata(mapping: Mapping[str, AdapterKind], *, component: str = "") -> dict[str, Any]:
    """``LoraConfig`` fields that make PEFT/diffusers apply exactly the scales of ``mapping`` (module path -> kind).

    The one builder, :func:`lorakit.formats.peft_config` (strict): ``r`` / ``lora_alpha`` are the most common rank /
    alpha; modules that differ get ``rank_pattern`` / ``alpha_pattern`` entries keyed ``"^" + re.escape(path)``
    (anchored: that module only); ``target_modules`` lists every path.

    Raises:
        FormatError: a kind PEFT's LoRA cannot express (LoHa, LoKr, full, Tucker, input-axis DoRA), or DoRA mixed
            with plain LoRA.
    """
    if not mapping:
        raise FormatError(f"{component or 'adapter'}: no modules to describe")
    return formats.peft_config(mapping, where=component, strict=True)


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
    """The component a model is in the families that have its class (the earliest component where several do: a
    CLIPTextModelWithProjection is SD3's and aMUSEd's ``text_encoder`` before it is SDXL's ``text_encoder_2``)."""
    cls = type(model).__name__
    found = [
        (f.components.index(comp), comp)
        for f in families.FAMILIES.values()
        for comp, (class_name, _) in f.reference.items()
        if class_name == cls and comp in f.components
    ]
    if not found:
        raise FormatError(f"cannot tell which pipeline component a {cls} is; pass component=")
    return min(found)[1]


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
        header[str(k)] = v if isinstance(v, str) else json.dumps(v, default=json_default)
    _write_layout(state_dict, header, target, to)
    logger.info("saved %d modules (%s layout) to %s", sum(len(m) for m in adapters.values()), to, target)
    return os.fspath(target)
