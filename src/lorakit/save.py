"""Writing canonical adapters: ``lorakit.save_adapter`` (a loaded adapter to a file), PEFT metadata, and the writer
``lorakit.convert`` shares (:func:`write_adapters`).

Output paths (``save_adapter``, ``convert`` and the ``lorakit`` command follow one rule): a path that ends in
``.safetensors`` is the file to write; anything else (an existing folder, a path ending in ``/``, a name without a
suffix) is a folder, created when missing, that receives the layout's usual file name
(``pytorch_lora_weights.safetensors`` for diffusers, ``adapter_model.safetensors`` + ``adapter_config.json`` for PEFT,
``<adapter name>.safetensors`` for kohya). Any other suffix is refused: lorakit writes safetensors only.

The PEFT layout holds one component per ``adapter_config.json``: an adapter with several components (an SD LoRA has
``unet`` and ``text_encoder``) is written as one sub-folder per component (``OUT/unet/adapter_model.safetensors`` +
``OUT/unet/adapter_config.json``, ...), each of which ``PeftModel.from_pretrained(component, OUT/unet)`` loads;
``component=`` writes one of them alone. Kinds PEFT's ``LoraConfig`` cannot express (LoHa, LoKr, full, Tucker,
input-axis DoRA, DoRA mixed with plain LoRA) are refused with a :class:`~lorakit.errors.FormatError`: a config PEFT
refuses would be worse than none.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from . import families, formats
from .engine import AdapterManager
from .errors import (
    ComponentError,
    DestinationExistsError,
    FormatError,
    UnsupportedPipelineError,
    did_you_mean,
    summarize,
)
from .families import detect
from .io import LORA_WEIGHT_NAME_SAFE, PEFT_CONFIG_METADATA_KEY, PEFT_CONFIG_NAME
from .io.write import json_default, save_safetensors
from .kinds import AdapterKind
from .pipelines.api import LoraBaseMixin, adapters_of, load_report
from .pipelines.save import LORA_ADAPTER_METADATA_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_ADAPTER_METADATA_KEY",
    "PEFT_MODEL_NAME",
    "check_peft_expressible",
    "is_folder_target",
    "peft_metadata",
    "save_adapter",
    "save_safetensors",
    "write_adapters",
]

#: the weight file of ``PeftModel.save_pretrained``
PEFT_MODEL_NAME = "adapter_model.safetensors"
#: the header entry naming the component of a one-component (PEFT) file
COMPONENT_KEY = "lorakit.component"


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


def check_peft_expressible(component: str, mapping: Mapping[str, AdapterKind]) -> None:
    """Refuse adapters a PEFT ``LoraConfig`` cannot describe, naming how many modules of which kinds.

    Raises:
        FormatError: LoHa / LoKr / full / Tucker / input-axis DoRA modules, or DoRA mixed with plain LoRA.
    """
    if not mapping:
        raise FormatError(f"{component}: no modules to write")
    bad = {p: k for p, k in mapping.items() if k.peft_tensors() is None}
    if bad:
        kinds = Counter(k.kind_name + ("+tucker" if getattr(k, "mid", None) is not None else "") for k in bad.values())
        first = sorted(bad)[0]
        raise FormatError(
            f"{component}: {len(bad)} of {len(mapping)} modules are adapters PEFT's LoraConfig cannot express "
            f"({', '.join(f'{n} {k}' for k, n in kinds.most_common())}; first: {first}); "
            "write the diffusers or kohya layout instead, which keep every kind"
        )
    formats.peft_config(mapping, where=component, strict=True)  # DoRA mixed with plain LoRA


# ----------------------------------------------------------------------------------------------- output paths
_DEFAULT_NAMES = {"diffusers": LORA_WEIGHT_NAME_SAFE, "peft": PEFT_MODEL_NAME}


def is_folder_target(path: str | os.PathLike[str]) -> bool:
    """Whether an output path names a folder: an existing folder, a trailing separator, or no suffix at all.

    Raises:
        FormatError: a file name with a suffix other than ``.safetensors``.
    """
    text = os.fspath(path)
    target = Path(text)
    if target.is_dir() or text.endswith(("/", os.sep)) or not target.suffix:
        return True
    if target.suffix.lower() != ".safetensors":
        raise FormatError(f"{text}: lorakit writes safetensors files; name it *.safetensors or give a folder")
    return False


def _default_name(layout: str, stem: str) -> str:
    return _DEFAULT_NAMES.get(layout, f"{stem}.safetensors")


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    if overwrite:
        return
    for p in paths:
        if p.exists():
            raise DestinationExistsError(f"{p}: already exists; pass overwrite=True to replace it")


# ----------------------------------------------------------------------------------------------- the writer
def _header(meta: Mapping[str, str], extra: Mapping[str, Any] | None) -> dict[str, str]:
    """The writer's header, then ``extra`` on top (values that are not strings are JSON-encoded)."""
    header = dict(meta or {})
    for k, v in (extra or {}).items():
        header[str(k)] = v if isinstance(v, str) else json.dumps(v, default=json_default)
    return header


def _plan(
    adapters: Mapping[str, Mapping[str, AdapterKind]], path: str | os.PathLike[str], layout: str, stem: str,
    component: str | None,
) -> list[tuple[str | None, Path]]:
    """``[(component or None for all, file)]`` to write."""
    comps = [c for c, m in adapters.items() if m]
    if component is not None:
        if component not in comps:
            raise ComponentError(
                f"component {component!r} is not in the adapter (has {summarize(comps) or 'none'})"
                + did_you_mean(component, comps)
            )
        comps = [component]
    if not comps:
        raise FormatError(f"{os.fspath(path)}: no adapters to save")
    folder = is_folder_target(path)
    if layout != "peft" or len(comps) == 1:
        target = Path(path) / _default_name(layout, stem) if folder else Path(path)
        return [(comps[0] if (layout == "peft" or component) else None, target)]
    if not folder:
        raise FormatError(
            f"{os.fspath(path)}: the PEFT layout holds one component per adapter_config.json and this adapter has "
            f"{', '.join(comps)}; give a folder (one sub-folder per component is written) or pass component="
        )
    return [(c, Path(path) / c / PEFT_MODEL_NAME) for c in comps]


def write_adapters(
    adapters: Mapping[str, Mapping[str, AdapterKind]],
    path: str | os.PathLike[str],
    layout: str,
    *,
    family: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    carried: Mapping[str, str] | None = None,
    component: str | None = None,
    overwrite: bool = False,
    stem: str = "lora",
) -> list[Path]:
    """Write canonical adapters in ``layout`` under the output-path rule of this module; returns the files written.

    Every destination (weight files and ``adapter_config.json``) is checked before anything is written. The header
    of each file is ``carried`` (entries kept from a source file), then the writer's own entries, then ``metadata``.

    Raises:
        FormatError: nothing to write, a suffix other than ``.safetensors``, several components into one PEFT file,
            kinds PEFT cannot express (``layout="peft"``), adapters the layout cannot hold.
        ComponentError: ``component`` is not in the adapters.
        DestinationExistsError: a destination exists and ``overwrite`` is false.
    """
    plan = _plan(adapters, path, layout, stem, component)
    configs = [t.parent / PEFT_CONFIG_NAME for _, t in plan] if layout == "peft" else []
    _refuse_existing([t for _, t in plan] + configs, overwrite)
    written: list[Path] = []
    for comp, target in plan:
        group = {comp: adapters[comp]} if comp is not None else {c: m for c, m in adapters.items() if m}
        if layout == "peft":
            assert comp is not None
            check_peft_expressible(comp, adapters[comp])
        state_dict, meta = formats.from_canonical(group, layout, family=family)
        if not state_dict:
            raise FormatError(f"{target}: the {layout} layout produced no tensors")
        header = _header({**(carried or {}), **meta}, metadata)
        if comp is not None and layout == "peft":
            header[COMPONENT_KEY] = comp
        target.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(state_dict, target, header)
        written.append(target)
        if layout == "peft" and PEFT_CONFIG_METADATA_KEY in header:
            config = json.loads(header[PEFT_CONFIG_METADATA_KEY])
            (target.parent / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                                          encoding="utf-8")
    return written


# ----------------------------------------------------------------------------------------------- save_adapter
def _from_manager(mgr: AdapterManager, comp: str, adapter_name: str | None) -> dict[str, AdapterKind]:
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


def _canonical_from(source: Any, adapter_name: str | None) -> tuple[dict[str, dict[str, AdapterKind]], str | None]:
    """``({component: {path: kind}}, family name or None)`` of what ``save_adapter`` was given."""
    if isinstance(source, LoraBaseMixin):
        assert adapter_name is not None
        fam = detect.of_components(source._lorakit_models())
        return adapters_of(source, adapter_name), fam.name if fam else None
    if isinstance(source, AdapterManager):
        comp = _component_name(source.model)
        return {comp: _from_manager(source, comp, adapter_name)}, None
    if hasattr(source, "components") and not isinstance(source, Mapping):
        raise UnsupportedPipelineError(
            f"save_adapter: {type(source).__name__} has no lorakit adapters; call lorakit.attach(pipe) and load one"
        )
    if not isinstance(source, Mapping):
        raise FormatError(
            "save_adapter takes a pipeline (lorakit.attach), an AdapterManager, {component: AdapterManager} or "
            f"{{component: {{path: kind}}}}, got {type(source).__name__}"
        )
    out: dict[str, dict[str, AdapterKind]] = {}
    for comp, value in source.items():
        if isinstance(value, AdapterManager):
            out[comp] = _from_manager(value, comp, adapter_name)
        elif isinstance(value, Mapping) and all(isinstance(k, AdapterKind) for k in value.values()):
            out[comp] = dict(value)
        else:
            raise FormatError(f"save_adapter: component {comp!r} holds a {type(value).__name__}, not adapters")
    return out, None


def save_adapter(
    source: Any,
    adapter_name: str | None,
    path: str | os.PathLike[str],
    layout: str = "diffusers",
    *,
    metadata: Mapping[str, Any] | None = None,
    component: str | None = None,
    family: str | None = None,
    overwrite: bool = False,
) -> str:
    """Save a loaded adapter, every component of it, in a layout lorakit and the other tools read back.

    Args:
        source: a pipeline after ``lorakit.attach`` (the usual case), an ``AdapterManager`` (its component is told
            from its model class), ``{component: AdapterManager}``, or canonical ``{component: {module path: kind}}``.
        adapter_name: the adapter to save (``None``: the only one loaded).
        path: a ``.safetensors`` file, or a folder (created when missing) that receives the layout's usual name:
            ``pytorch_lora_weights.safetensors`` (diffusers: ``pipe.load_lora_weights(folder)`` in diffusers and in
            lorakit loads it), ``adapter_model.safetensors`` + ``adapter_config.json`` (PEFT; one sub-folder per
            component when there are several), ``<adapter_name>.safetensors`` (kohya).
        layout: ``"diffusers"`` (default), ``"kohya"`` or ``"peft"``.
        metadata: extra header entries (non-string values are JSON-encoded); they override the writer's.
        component: write only this component.
        family: base family for the kohya names (``"sdxl"``: SGM block names); told from the pipeline otherwise.
        overwrite: replace existing files.

    Returns:
        The file written; for PEFT with several components, the folder that holds one sub-folder per component.
        The adapter is saved as loaded (its tensors and alphas); ``set_adapters`` weights are not baked in.

    Raises:
        AdapterNotFoundError: ``adapter_name`` is not loaded. UnsupportedPipelineError: a pipeline without lorakit.
        DestinationExistsError: a file exists and ``overwrite`` is false.
        FormatError: nothing to save, or adapters the layout cannot express (see :func:`write_adapters`).

    Example:
        >>> pipe.load_lora_weights("style.safetensors", adapter_name="style")  # doctest: +SKIP
        >>> lorakit.save_adapter(pipe, "style", "out/")  # doctest: +SKIP
        'out/pytorch_lora_weights.safetensors'
    """
    if layout not in formats.LAYOUTS:
        raise FormatError(f"save_adapter: unknown layout {layout!r}; expected one of {', '.join(formats.LAYOUTS)}")
    if isinstance(source, LoraBaseMixin) and adapter_name is None:
        names = sorted({n for ns in source.get_list_adapters().values() for n in ns})
        if len(names) != 1:
            raise FormatError(f"{len(names)} adapters loaded ({summarize(names) or 'none'}); pass adapter_name")
        adapter_name = names[0]
    adapters, detected = _canonical_from(source, adapter_name)
    if not any(adapters.values()):
        raise FormatError(f"{os.fspath(path)}: no adapters to save")
    extra: dict[str, Any] = {}
    if isinstance(source, LoraBaseMixin) and adapter_name is not None:
        report = load_report(source, adapter_name)
        if report is not None:
            extra = {"lorakit.saved_from": os.path.basename(report.source), "lorakit.source_format": report.format}
    extra.update(metadata or {})
    written = write_adapters(adapters, path, layout, family=family or detected, metadata=extra,
                             component=component, overwrite=overwrite, stem=adapter_name or "lora")
    logger.info("saved %d modules (%s layout) to %s", sum(len(m) for m in adapters.values()), layout,
                ", ".join(map(str, written)))
    if len(written) > 1:
        return os.fspath(path)
    return os.fspath(written[0])
