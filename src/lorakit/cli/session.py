"""What a command runs on: the pipeline (a folder, a Hub id or ``tiny:FAMILY``), its device and dtype, and the LoRAs
loaded into it with their weights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import families, tiny
from ..engine import resolve_device as checked_device
from ..errors import LorakitError, SourceNotFoundError
from ..families import detect
from ..io import read_header
from ..pipelines import attach, load_report
from ..report import LoadReport
from .console import CliError, Console, report_lines
from .prompt import LoraSpec

__all__ = [
    "TINY_FAMILIES",
    "TINY_PREFIX",
    "adapter_weight",
    "family_of",
    "load_loras",
    "load_pipeline",
    "module_components",
    "resolve_device",
    "resolve_dtype",
    "saved_dtype",
]

#: ``--model tiny:FAMILY`` builds a tiny seeded pipeline (no download)
TINY_PREFIX = "tiny:"
#: the families ``tiny:`` builds: those lorakit supports and lorakit.tiny can build
TINY_FAMILIES: tuple[str, ...] = tuple(f for f in families.FAMILIES if f in tiny.FAMILIES)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
#: ``--dtype`` choices
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``cuda`` / ``mps`` when available, else ``cpu``; other names are checked to exist.

    Raises:
        DeviceError: the device does not exist here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    return str(checked_device(name))


def resolve_dtype(name: str | None, device: str) -> torch.dtype | None:
    """``"auto"`` -> float16 on accelerators, float32 on CPU; ``None`` -> keep what the checkpoint has."""
    if name is None:
        return None
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.float16
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise CliError(f"--dtype {name}: expected one of {', '.join(DTYPE_CHOICES)}") from None


def saved_dtype(model: str) -> torch.dtype | None:
    """The dtype a local pipeline folder's denoiser was saved in (``None`` when unknown: a Hub id, no safetensors).

    diffusers loads denoisers in float32 unless told otherwise, which would make ``bake`` of a float16 folder write
    twice the bytes; reading the header keeps the saved precision.
    """
    folder = Path(model).expanduser()
    if model.startswith(TINY_PREFIX) or not folder.is_dir():
        return None
    denoisers = dict.fromkeys(f.denoiser for f in families.FAMILIES.values())
    counts: Counter[torch.dtype] = Counter()
    for sub in denoisers:
        for f in sorted((folder / sub).glob("*.safetensors")) if (folder / sub).is_dir() else []:
            try:
                shapes, _ = read_header(f)
            except LorakitError:  # not a tensor file we can read: it says nothing about the dtype
                continue
            counts.update(dt for _, dt in shapes.values() if dt.is_floating_point)
        if counts:
            break
    return counts.most_common(1)[0][0] if counts else None


def load_pipeline(model: str, *, dtype: torch.dtype | None = None, device: str = "cpu") -> Any:
    """Load a diffusers pipeline from a local folder or Hub id (``DiffusionPipeline.from_pretrained``), or build a
    tiny seeded one for ``tiny:FAMILY`` (see :data:`TINY_FAMILIES`).

    Raises:
        SourceNotFoundError: a path that is neither a pipeline folder nor a Hub id.
        CliError: a single-file checkpoint (needs a diffusers folder), an unknown tiny family.
    """
    if model.startswith(TINY_PREFIX):
        family = model[len(TINY_PREFIX) :]
        if family not in TINY_FAMILIES:
            raise CliError(f"--model {model}: unknown tiny family {family!r}; known: {', '.join(TINY_FAMILIES)}")
        pipe = tiny.tiny_pipeline(family, dtype=dtype or torch.float32)
    else:
        pipe = _from_pretrained(model, dtype)
    if device != "cpu":
        pipe = pipe.to(device)
    return pipe


def _from_pretrained(model: str, dtype: torch.dtype | None) -> Any:
    # lazy: importing diffusers' pipelines takes seconds, which `lorakit inspect FILE` and `--help` never need
    from diffusers import DiffusionPipeline
    from diffusers.pipelines import pipeline_utils

    path = Path(model).expanduser()
    if path.is_file():
        raise CliError(
            f"--model {model}: a single-file checkpoint; lorakit needs a diffusers pipeline folder or Hub id "
            "(convert it with diffusers' from_single_file(...).save_pretrained(DIR))"
        )
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise SourceNotFoundError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        model = str(path)
    elif model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise SourceNotFoundError(f"--model {model}: no such folder, and not a Hub id (owner/name)")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        # diffusers >= 0.36 renamed torch_dtype to dtype (the old name warns)
        kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = dtype
    try:
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except OSError as exc:  # diffusers / huggingface_hub say "not found" or "no connection" as an OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise SourceNotFoundError(f"--model {model}: cannot load the pipeline: {first}") from exc


def module_components(pipe: Any) -> dict[str, nn.Module]:
    """``{name: nn.Module}`` of a pipeline."""
    return {k: v for k, v in getattr(pipe, "components", {}).items() if isinstance(v, nn.Module)}


def family_of(pipe: Any) -> str:
    """The family's display name of a pipeline (its class name when the family is not one lorakit knows)."""
    fam = detect.of_components(module_components(pipe))
    return fam.display if fam is not None else type(pipe).__name__


def _denoisers() -> set[str]:
    return {f.denoiser for f in families.FAMILIES.values()}


def adapter_weight(pipe: Any, spec: LoraSpec) -> float | dict[str, float]:
    """The ``set_adapters`` weight of a LoRA: a float, or per component when the text-encoder and denoiser weights
    differ (every component that holds the adapter gets the denoiser or the text-encoder weight)."""
    if spec.te == spec.unet:
        return float(spec.unet)
    holders = [c for c, names in pipe.get_list_adapters().items() if spec.name in names]
    den = _denoisers()
    return {c: float(spec.unet if c in den else spec.te) for c in holders}


def load_loras(pipe: Any, specs: Sequence[LoraSpec], console: Console) -> list[LoadReport | None]:
    """Attach lorakit, load every LoRA into ``pipe`` and activate them with their weights. Returns the reports."""
    attach(pipe)
    reports = []
    for spec in specs:
        with console.step(f"loaded LoRA {spec.name!r} from {spec.path}") as st:
            pipe.load_lora_weights(str(spec.path), adapter_name=spec.name)
            weights = f"{spec.unet:g}" if spec.te == spec.unet else f"te {spec.te:g}, unet {spec.unet:g}"
            st["note"] = f"weight {weights} ({spec.origin})"
        rep = load_report(pipe, spec.name)
        reports.append(rep)
        for line in report_lines(rep):
            console.info(line)
        if rep is not None and rep.matched_keys < rep.total_keys:  # partial loads are never silent, not even with -q
            console.warn(
                f"LoRA {spec.name!r}: {rep.total_keys - rep.matched_keys} of {rep.total_keys} keys did not land "
                "(see its load report)"
            )
    if specs:
        pipe.set_adapters([s.name for s in specs], adapter_weights=[adapter_weight(pipe, s) for s in specs])
    return reports
