"""``lorakit.inspect``: what is in an adapter file, read from its header where possible.

For a safetensors file only the header is parsed: tensors are built on the ``meta`` device from the declared shapes
and dtypes, and only the single-value ``.alpha`` tensors are read from disk. The meta state dict then goes through
``formats.to_canonical`` like a real load, so the report shows what a load would see (format, kinds, modules, ranks,
alphas). The base family comes from :mod:`lorakit.families.detect`, the one detector loading also uses. Given a model
or components, the report also says which modules the file would land on and which keys would not land.

Example:
    >>> import lorakit
    >>> report = lorakit.inspect("my_lora.safetensors")  # doctest: +SKIP
    >>> print(report.format_table())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import families, formats
from . import io as lio
from . import report as R
from .errors import FormatError, KeyMismatchError, LorakitError, ShapeMismatchError, summarize
from .families import detect
from .formats.groups import file_adapters
from .formats.keys import scalar_key
from .kinds import AdapterKind
from .pipelines.save import LORA_ADAPTER_METADATA_KEY

logger = logging.getLogger(__name__)

__all__ = [
    "InspectReport",
    "checkpoint_description",
    "coverage_from_report",
    "inspect",
    "jsonable",
    "summarize_metadata",
    "trigger_info",
]

#: what the report says when no family is found
UNKNOWN = "unknown"

#: kohya keys worth showing (the rest are counted)
_KOHYA_KEYS = (
    "ss_network_module",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_args",
    "ss_base_model_version",
    "ss_v2",
    "ss_sd_model_name",
    "ss_output_name",
    "ss_training_comment",
    "ss_resolution",
    "ss_clip_skip",
    "ss_num_train_images",
    "ss_num_epochs",
    "ss_epoch",
    "ss_steps",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_text_encoder_lr",
    "ss_training_started_at",
    "sshs_model_hash",
)


@dataclass
class InspectReport:
    """What an adapter file holds. ``to_dict()`` gives JSON-ready data, ``format_table()`` a text rendering."""

    source: str
    format: str
    #: the family's display name ("SD1", "SDXL", "aMUSEd", ...) or "unknown"
    family: str
    family_evidence: str
    #: kind name -> number of modules ("lora", "loha", "lokr", "full", "dora(lora)", ...)
    kinds: dict[str, int]
    #: component -> number of modules
    components: dict[str, int]
    #: rank -> number of modules
    ranks: dict[int, int]
    #: alpha ("none" = rank, scale 1) -> number of modules
    alphas: dict[str, int]
    alpha_source: str
    #: dtype name -> number of tensors
    dtypes: dict[str, int]
    num_tensors: int
    num_params: int
    file_size: int | None
    header_only: bool
    #: {"kohya": {...}, "diffusers": {...}, "modelspec": {...}, "peft": {...}, "other": {...}}
    metadata: dict[str, Any] = field(default_factory=dict)
    #: per component: matched / not-in-model / shape-mismatch modules (only with ``model`` / ``components``)
    coverage: dict[str, Any] | None = None
    #: the conversion report of ``formats.to_canonical`` (``LoadReport.to_dict()``, JSON-ready)
    conversion_report: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    #: what to type in a prompt: ``modelspec.trigger_phrase`` parts, then the most frequent training tags
    trigger_words: list[str] = field(default_factory=list)
    #: the most frequent kohya ``ss_tag_frequency`` tags with their counts (summed over the datasets)
    tags: list[tuple[str, int]] = field(default_factory=list)
    #: ``modelspec.title`` (else kohya's ``ss_output_name``), ``modelspec.author``, ``modelspec.description``
    title: str | None = None
    author: str | None = None
    description: str | None = None
    #: the file's hashes (:meth:`lorakit.io.FileHashes.to_dict`): sha256, autov2, lora_hash, lora_hash_short, ...
    hashes: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``json.dumps(report.to_dict())`` works)."""
        out: dict[str, Any] = jsonable(asdict(self))
        return out

    def format_table(self) -> str:
        """A human-readable multi-line summary."""
        rows: list[tuple[str, str]] = [
            ("source", self.source),
            ("format", self.format),
            ("base family", f"{self.family} ({self.family_evidence})"),
            ("kinds", _fmt_counts(self.kinds)),
            ("components", _fmt_counts(self.components)),
            ("ranks", _fmt_counts({str(k): v for k, v in sorted(self.ranks.items())})),
            ("alphas", f"{_fmt_counts(self.alphas)} [{self.alpha_source}]"),
            ("dtypes", _fmt_counts(self.dtypes)),
            ("tensors", f"{self.num_tensors} ({self.num_params:,} values)"),
            ("file size", "-" if self.file_size is None else _fmt_bytes(self.file_size)),
            ("read", "header only" if self.header_only else "all tensors"),
        ]
        for label, value in (("title", self.title), ("author", self.author)):
            if value:
                rows.append((label, value))
        if self.description:
            text = " ".join(self.description.split())
            rows.append(("description", text if len(text) <= 120 else text[:119] + "…"))
        if self.trigger_words:
            rows.append(("trigger words", ", ".join(self.trigger_words)))
        if self.tags:
            rows.append(("top tags", ", ".join(f"{t} ({n})" for t, n in self.tags[:10])))
        if self.hashes:
            rows.append(("sha256", str(self.hashes["sha256"])))
            rows.append(("AutoV2", str(self.hashes["autov2"])))
            lora_hash = str(self.hashes["lora_hash_short"])
            if self.hashes.get("header_hash_stale"):
                lora_hash += (f" (the header's sshs_model_hash, which A1111 shows; the tensors hash to "
                              f"{str(self.hashes['lora_hash'])[:12]})")
            elif self.hashes.get("header_lora_hash"):
                lora_hash += " (= the header's sshs_model_hash)"
            rows.append(("A1111 LoRA hash", lora_hash))
        kohya = self.metadata.get("kohya") or {}
        for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version"):
            if key in kohya:
                rows.append((key, str(kohya[key])))
        if "modelspec" in self.metadata:
            arch = self.metadata["modelspec"].get("modelspec.architecture")
            if arch:
                rows.append(("modelspec.architecture", arch))
        diff = self.metadata.get("diffusers")
        if diff:
            rows.append(("lora_adapter_metadata", _diffusers_summary(diff)))
        if self.coverage:
            for comp, cov in self.coverage.items():
                rows.append(
                    (
                        f"coverage {comp}",
                        f"{cov.get('matched', 0)}/{cov.get('modules', 0)} modules land"
                        + (f", {cov['not_in_model']} not in model" if cov.get("not_in_model") else "")
                        + (f", {cov['shape_mismatch']} shape mismatch" if cov.get("shape_mismatch") else "")
                        + (f", {cov['error']}" if cov.get("error") else ""),
                    )
                )
        skipped = (self.conversion_report or {}).get("skipped")
        if skipped:
            reasons = Counter(str(s.get("reason")) for s in skipped if isinstance(s, dict))
            rows.append(("skipped keys", f"{len(skipped)} ({_fmt_counts(dict(reasons.most_common()))})"))
        for w in self.warnings:
            rows.append(("warning", w))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def __str__(self) -> str:
        return self.format_table()


# ----------------------------------------------------------------------------------------------- helpers
def jsonable(obj: Any) -> Any:
    """``obj`` with dict keys as strings, tuples / sets as lists, dtypes and small tensors as plain values."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.dtype):
        return str(obj).replace("torch.", "")
    if isinstance(obj, Tensor):
        return obj.tolist() if obj.numel() <= 16 else f"<tensor {tuple(obj.shape)}>"
    return str(obj)


def _fmt_counts(d: Mapping[Any, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) or "-"


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _diffusers_summary(diff: Mapping[str, Any]) -> str:
    comps: dict[str, dict[str, Any]] = {}
    for key, value in diff.items():
        comp, _, fld = str(key).rpartition(".")
        comps.setdefault(comp or "-", {})[fld] = value
    parts = []
    for comp, cfg in comps.items():
        bits = [f"r={cfg.get('r')}", f"lora_alpha={cfg.get('lora_alpha')}"]
        for pat in ("rank_pattern", "alpha_pattern"):
            if cfg.get(pat):
                bits.append(f"{pat}: {len(cfg[pat])}")
        for flag in ("use_dora", "use_rslora", "lora_bias"):
            if cfg.get(flag):
                bits.append(flag)
        parts.append(f"{comp} ({', '.join(bits)})")
    return "; ".join(parts)


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def summarize_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Group header metadata: kohya ``ss_*`` (a selection, ``ss_network_args`` parsed), ``modelspec.*``,
    diffusers ``lora_adapter_metadata`` (parsed JSON), a raw PEFT ``adapter_config.json`` and the rest (counted)."""
    out: dict[str, Any] = {}
    kohya: dict[str, Any] = {k: metadata[k] for k in _KOHYA_KEYS if k in metadata}
    if "ss_network_args" in kohya:
        try:
            kohya["ss_network_args"] = json.loads(kohya["ss_network_args"])
        except json.JSONDecodeError:
            pass
    n_ss = sum(1 for k in metadata if k.startswith(("ss_", "sshs_")))
    if n_ss:
        kohya["other_ss_keys"] = n_ss - sum(1 for k in kohya if k.startswith(("ss_", "sshs_")))
        out["kohya"] = kohya
    spec = {k: v for k, v in metadata.items() if k.startswith("modelspec.") and k != "modelspec.thumbnail"}
    if spec:
        out["modelspec"] = spec
    if LORA_ADAPTER_METADATA_KEY in metadata:
        try:
            out["diffusers"] = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
        except json.JSONDecodeError:
            out["diffusers"] = {"unparsable": metadata[LORA_ADAPTER_METADATA_KEY][:200]}
    if lio.PEFT_CONFIG_METADATA_KEY in metadata:
        try:
            out["peft"] = json.loads(metadata[lio.PEFT_CONFIG_METADATA_KEY])
        except json.JSONDecodeError:
            pass
    known = set(kohya) | set(spec) | {LORA_ADAPTER_METADATA_KEY, lio.PEFT_CONFIG_METADATA_KEY}
    other = {
        k: (v if len(v) <= 200 else v[:200] + "...")
        for k, v in metadata.items()
        if k not in known and not k.startswith(("ss_", "sshs_", "modelspec."))
    }
    if other:
        out["other"] = other
    return out


# ----------------------------------------------------------------------------------------------- trigger words
#: how many training tags become trigger words when the file has no ``modelspec.trigger_phrase``
TRIGGER_TAGS = 5
#: how many tags the report keeps
TOP_TAGS = 20


def _json_value(text: str | None) -> Any:
    """A header value that holds JSON (kohya sometimes encodes it twice); ``None`` when it does not parse."""
    value: Any = text
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            return None
    return value


def trigger_info(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Trigger words and descriptive fields of a header.

    Returns:
        ``{"trigger_words": [...], "tags": [(tag, count), ...], "title": ..., "author": ..., "description": ...}``:
        ``trigger_words`` are the comma-separated parts of ``modelspec.trigger_phrase``, then (when there is no
        trigger phrase) the :data:`TRIGGER_TAGS` most frequent tags of kohya's ``ss_tag_frequency``
        (``{dataset: {tag: count}}``, counts summed over datasets); ``tags`` the :data:`TOP_TAGS` most frequent
        with their counts; ``title`` is ``modelspec.title`` or ``ss_output_name``.
    """
    counts: Counter[str] = Counter()
    freq = _json_value(metadata.get("ss_tag_frequency"))
    if isinstance(freq, Mapping):
        for dataset in freq.values():
            if isinstance(dataset, Mapping):
                for tag, n in dataset.items():
                    tag = str(tag).strip()
                    if tag and isinstance(n, (int, float)) and not isinstance(n, bool):
                        counts[tag] += int(n)
    tags = counts.most_common(TOP_TAGS)
    phrase = metadata.get("modelspec.trigger_phrase") or ""
    words = [w.strip() for w in phrase.split(",") if w.strip()]
    if not words:
        words = [t for t, _ in tags[:TRIGGER_TAGS]]

    def text(key: str) -> str | None:
        value = metadata.get(key)
        return value.strip() if isinstance(value, str) and value.strip() else None

    return {
        "trigger_words": words,
        "tags": tags,
        "title": text("modelspec.title") or text("ss_output_name"),
        "author": text("modelspec.author"),
        "description": text("modelspec.description"),
    }


# ----------------------------------------------------------------------------------------------- full checkpoints
#: key fragments only adapter files have (kohya prefixes, kind suffixes, embedded embeddings) ...
_ADAPTER_TOKENS = ("lora", "lycoris", "hada_", "lokr_", "oft_", "dora_scale", "magnitude", "bundle_emb", "glora",
                   "ia3")
#: ... and key endings (alphas, full-delta suffixes)
_ADAPTER_ENDINGS = (".alpha", ".diff", ".diff_b", ".w_norm", ".b_norm", ".on_input")
_PARAM_ENDINGS = (".weight", ".bias", ".running_mean", ".running_var", ".num_batches_tracked", ".position_ids",
                  ".scale", ".gamma", ".beta", "_embedding", ".pos_embed", "scale_shift_table", "logit_scale",
                  "text_projection", ".in_proj_weight", ".in_proj_bias", "positional_embedding", "class_embedding")
#: (key prefix or fragment, what a file with such keys is), most specific first
_CHECKPOINT_KINDS = (
    ("conditioner.embedders.", "a single-file SDXL checkpoint (model.diffusion_model.* UNet, conditioner.* text "
     "encoders)"),
    ("model.diffusion_model.double_blocks.", "a single-file Flux checkpoint"),
    ("model.diffusion_model.joint_blocks.", "a single-file SD3 checkpoint"),
    ("model.diffusion_model.", "a single-file Stable Diffusion checkpoint (model.diffusion_model.* UNet)"),
    ("double_blocks.", "Flux transformer weights"),
    ("joint_blocks.", "SD3 MMDiT weights"),
    ("first_stage_model.", "a VAE (first_stage_model.*)"),
    ("cond_stage_model.", "a text encoder (cond_stage_model.*)"),
    ("down_blocks.", "diffusers model weights (a UNet or VAE: diffusion_pytorch_model.safetensors)"),
    ("transformer_blocks.", "diffusers transformer weights (diffusion_pytorch_model.safetensors)"),
    ("text_model.", "text-encoder weights (transformers' model.safetensors)"),
    ("encoder.", "model weights"),
)


def checkpoint_description(keys: list[str]) -> str | None:
    """What a file of full model weights is (``None`` for anything that may be an adapter).

    A checkpoint: at least 8 tensors, no key with a fragment or ending only adapter files have (``lora``,
    ``hada_``, ``.alpha``, ``.diff``, ...), and at least 90 % of the keys ending in a plain parameter name (``.weight``, ``.bias``, ...).
    """
    if len(keys) < 8:
        return None
    lower = [k.lower() for k in keys]
    if any(k.endswith(_ADAPTER_ENDINGS) or any(t in k for t in _ADAPTER_TOKENS) for k in lower):
        return None
    if sum(k.endswith(_PARAM_ENDINGS) for k in lower) < 0.9 * len(keys):
        return None
    for fragment, what in _CHECKPOINT_KINDS:
        if any(k.startswith(fragment) for k in keys):
            return what
    return "full model weights"


# ----------------------------------------------------------------------------------------------- coverage
def _prefixes(sd: Mapping[str, Any]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in sd if "." in k})


def _components_of(
    model: Any, components: Mapping[str, nn.Module] | None, file_components: list[str]
) -> dict[str, nn.Module]:
    """The component models to report coverage against: ``components``, a pipeline's modules, or a lone denoiser
    (named after its family) / a lone module (named after the file's only component)."""
    if components is not None:
        return {k: v for k, v in components.items() if isinstance(v, nn.Module)}
    if model is None:
        return {}
    comps = getattr(model, "components", None)
    if isinstance(comps, Mapping):
        return {k: v for k, v in comps.items() if isinstance(v, nn.Module)}
    if isinstance(model, nn.Module):
        fams = [f for cls in type(model).__mro__ for f in families.of_denoiser(cls.__name__)]
        name = fams[0].denoiser if fams else None
        if name is None or (file_components and name not in file_components):
            name = file_components[0] if len(file_components) == 1 else (name or "unet")
        return {name: model}
    raise TypeError(f"model must be a pipeline or an nn.Module, got {type(model).__name__}")


def coverage_from_report(
    report: R.LoadReport, file_counts: Mapping[str, int], components: Mapping[str, nn.Module]
) -> dict[str, Any]:
    """Coverage per component from the :class:`~lorakit.report.LoadReport` of a conversion against ``components``."""
    skipped_by_comp: dict[str, list[R.SkippedKey]] = {}
    for s in report.skipped:
        comp = s.component
        if comp is None:
            found = re.search(r"has no (\w+)", s.detail or "")
            comp = found.group(1) if found else "(unassigned)"
        skipped_by_comp.setdefault(comp, []).append(s)
    others = tuple(r for r in R.REASONS if r not in (R.NO_SUCH_MODULE, R.COMPONENT_ABSENT, R.SHAPE_MISMATCH))
    out: dict[str, Any] = {}
    for comp in sorted(set(file_counts) | set(report.components) | set(skipped_by_comp)):
        crep = report.components.get(comp)
        matched = crep.matched_modules if crep is not None else 0
        skipped = skipped_by_comp.get(comp, [])

        def modules_for(reasons: tuple[str, ...], _sk: list[R.SkippedKey] = skipped) -> set[str]:
            return {s.module or s.key for s in _sk if s.reason in reasons}

        absent = modules_for((R.NO_SUCH_MODULE, R.COMPONENT_ABSENT))
        bad = modules_for((R.SHAPE_MISMATCH,))
        other = modules_for(others)
        entry: dict[str, Any] = {
            "modules": max(file_counts.get(comp, 0), matched + len(absent) + len(bad) + len(other)),
            "matched": matched,
            "not_in_model": len(absent),
            "shape_mismatch": len(bad),
            "other_skipped": len(other),
            "skipped_keys": dict(Counter(s.reason for s in skipped)),
        }
        if comp not in components and comp != "(unassigned)":
            entry["error"] = f"component {comp!r} is not in the model (has {summarize(sorted(components)) or 'none'})"
        examples = [s for s in skipped if s.reason != R.SHAPE_MISMATCH][:3]
        if examples:
            entry["missing_examples"] = [s.key for s in examples]
            entry["closest"] = {s.key: list(s.closest) for s in examples if s.closest}
        mism = [s for s in skipped if s.reason == R.SHAPE_MISMATCH][:3]
        if mism:
            entry["mismatch_examples"] = [f"{s.key}: {s.detail}" for s in mism]
        out[comp] = entry
    return out


# ----------------------------------------------------------------------------------------------- inspect
_ALPHA_SOURCE_NAMES = {
    "tensor": "per-module .alpha tensors",
    "default (rank)": "none in the file (alpha = rank, scale 1)",
    "lora_adapter_metadata": "diffusers lora_adapter_metadata",
    "adapter_config": "PEFT adapter_config",
    "ss_network_alpha": "kohya ss_network_alpha",
}


def _alpha_source(state_keys: list[str], metadata: Mapping[str, str], report: R.LoadReport | None) -> str:
    if report is not None:
        per = {
            c: _ALPHA_SOURCE_NAMES.get(crep.alpha_source, crep.alpha_source)
            for c, crep in report.components.items()
            if crep.alpha_source != "none"
        }
        if per:
            values = set(per.values())
            return next(iter(values)) if len(values) == 1 else "; ".join(f"{c}: {a}" for c, a in per.items())
    if any(k.endswith(".alpha") or k == "alpha" for k in state_keys):
        return "per-module .alpha tensors"
    if LORA_ADAPTER_METADATA_KEY in metadata:
        return "diffusers lora_adapter_metadata (lora_alpha / alpha_pattern)"
    if lio.PEFT_CONFIG_METADATA_KEY in metadata:
        return "PEFT adapter_config.json"
    if metadata.get("ss_network_alpha", "None") not in ("None", ""):
        return "kohya ss_network_alpha"
    return "none in the file (alpha = rank, scale 1)"


def _family(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str],
    resolved: str | None,
    comp_models: Mapping[str, nn.Module],
) -> tuple[str, str]:
    """``(display name, evidence)``: the detector's answer from the header, names and shapes; else the family whose
    reference model the keys resolved against; else the family of the given model."""
    guess = detect.from_keys(shapes, metadata)
    if guess.family is not None:
        return guess.family.display, guess.evidence
    if resolved is not None:
        fam = families.get(resolved)
        return fam.display, f"keys resolved against the {fam.display} reference model"
    of_model = detect.of_components(comp_models) if comp_models else None
    if of_model is not None:
        return of_model.display, "the family of the given model"
    return UNKNOWN, guess.evidence


def _kind_label(kind: AdapterKind) -> str:
    inner = getattr(kind, "inner", None)
    return f"{kind.kind_name}({inner.kind_name})" if isinstance(inner, AdapterKind) else kind.kind_name


def inspect(
    source: lio.Source,
    *,
    model: Any = None,
    components: Mapping[str, nn.Module] | None = None,
    weight_name: str | None = None,
    hashes: bool = True,
    **hub_kwargs: Any,
) -> InspectReport:
    """Describe an adapter file (or dict) without loading it into anything.

    Args:
        source: a file, folder (+ ``weight_name``), Hub id or ``{key: Tensor}`` dict (see :func:`lorakit.io.read_source`).
        model: optional pipeline (its ``components``) or ``nn.Module``, to report coverage.
        components: optional ``{component name: nn.Module}``, to report coverage.
        weight_name: the file inside a folder / repository.
        hashes: compute the file's sha256, civitai AutoV2 and A1111 LoRA hash (:func:`lorakit.io.file_hashes`;
            reads every byte of the file, not the tensors).
        **hub_kwargs: forwarded to :func:`lorakit.io.resolve_file` (``subfolder``, ``cache_dir``, ``revision``, ...).

    Returns:
        An :class:`InspectReport`. For safetensors files only the header and the ``.alpha`` tensors are read.

    Raises:
        FormatError: the file is a full model checkpoint (UNet / transformer / text-encoder / VAE weights), not an
            adapter; the message says which.
        lorakit errors of :func:`lorakit.io.read_source` (missing, unreadable, unsafe files) and of
        ``formats.to_canonical`` (no adapter keys recognised).

    Example:
        >>> report = lorakit.inspect("style.safetensors")  # doctest: +SKIP
        >>> report.format, report.family, report.ranks  # doctest: +SKIP
        ('kohya', 'SDXL', {32: 722})
    """
    warnings: list[str] = []
    file_size: int | None = None
    header_only = False
    file_path: str | None = None
    if isinstance(source, Mapping):
        lio.validate_state_dict(source, "<dict>")
        sd: dict[str, Tensor] = dict(source)
        metadata: dict[str, str] = {}
        name = "<dict>"
    else:
        path, name = lio.resolve_file(source, weight_name=weight_name, **hub_kwargs)
        file_path = path
        file_size = os.path.getsize(path)
        if lio.file_kind(path) == "safetensors":
            sd, metadata = lio.read_header_state_dict(path)
            header_only = True
            # one-value settings beside the .alpha tensors: (IA)^3's on_input decides the axis it scales
            flags = [k for k, t in sd.items() if t.device.type == "meta" and t.numel() == 1 and scalar_key(k)]
            if flags:
                sd.update(lio.read_tensors(path, flags))
        else:
            sd, metadata = lio.read_file(path, display=name)
    shapes = {k: tuple(t.shape) for k, t in sd.items()}
    dtypes = Counter(_dtype_name(t.dtype) for t in sd.values())
    num_params = sum(t.numel() for t in sd.values())
    what = checkpoint_description(list(sd))
    if what is not None:
        raise FormatError(
            f"{name}: a full model checkpoint, not a LoRA: {what}, {len(sd)} tensors and no adapter keys; "
            "load it as the pipeline (a diffusers folder, or from_single_file), not with load_lora_weights"
        )

    conv_report: R.LoadReport | None
    reference_misfit: str | None = None
    adapters: Mapping[str, Mapping[str, AdapterKind]] = {}
    try:
        conv = formats.to_canonical(sd, metadata, None, source=name, allow_meta=True)
    except (ShapeMismatchError, KeyMismatchError) as exc:
        # the keys do not fit the reference model of the family they look like (custom or tiny model sizes,
        # names of another model): still describe the file; a layout nobody recognises is an error
        conv_report = exc.report
        if conv_report is None or conv_report.format == "unknown":
            raise
        reasons = {s.reason for s in conv_report.skipped}
        if R.UNSUPPORTED_KIND in reasons and reasons <= {R.UNSUPPORTED_KIND, R.UNRECOGNISED}:
            warnings.append(str(exc))  # the names resolve: only the kind is not applied ("unsupported kind X")
        else:
            reference_misfit = _misfit_warning(conv_report)
        fmt = conv_report.format
    else:
        adapters, conv_report, fmt = conv.adapters, conv.report, conv.format

    resolved = conv_report.family if conv_report is not None and adapters else None
    cov: dict[str, Any] | None = None
    comp_models = _components_of(model, components, list(adapters) or _prefixes(sd))
    if comp_models:
        placed_report: R.LoadReport | None = None
        placed_adapters: Mapping[str, Mapping[str, AdapterKind]] = {}
        try:
            placed = formats.to_canonical(sd, metadata, comp_models, source=name, allow_meta=True)
            placed_report, placed_adapters = placed.report, placed.adapters
        except LorakitError as exc:  # the file does not fit the model: coverage says how
            placed_report = exc.report
            if placed_report is None:
                cov = {"(all)": {"modules": len(sd), "matched": 0, "error": str(exc)}}
        if not adapters and placed_adapters:  # the file fits the model but not the reference: describe it from here
            adapters = placed_adapters
        if placed_adapters and placed_report is not None and not placed_report.skipped:
            reference_misfit = None  # it fits the model it was checked against: the reference does not matter
        if placed_report is not None:
            cov = coverage_from_report(placed_report, {c: len(m) for c, m in adapters.items()}, comp_models)
            conv_report = placed_report

    # kinds, ranks and alphas are facts of the file: read from its keys alone, whether or not they fit a model
    kinds: Counter[str] = Counter()
    ranks: Counter[int] = Counter()
    alphas: Counter[str] = Counter()
    for _, kind in file_adapters(sd, metadata):
        kinds[_kind_label(kind)] += 1
        if kind.rank is not None:
            ranks[int(kind.rank)] += 1
        alpha = kind.alpha
        alphas["none" if alpha is None else f"{float(alpha):g}"] += 1
    comps: dict[str, int] = {comp: len(mapping) for comp, mapping in adapters.items()}
    if not adapters and conv_report is not None:  # where the modules would land, from the report
        for comp, crep in conv_report.components.items():
            comps[comp] = crep.matched_modules
        unplaced: dict[str, set[str]] = {}
        for s in conv_report.skipped:
            if s.module and s.reason in (R.NO_SUCH_MODULE, R.SHAPE_MISMATCH, R.COMPONENT_ABSENT):
                unplaced.setdefault(s.component or s.key.split(".", 1)[0], set()).add(s.module)
        for comp, mods in unplaced.items():
            comps[comp] = comps.get(comp, 0) + len(mods)

    if reference_misfit:
        warnings.append(reference_misfit)
    family, evidence = _family(shapes, metadata, resolved, comp_models)
    file_hashes = None
    if hashes and file_path is not None:
        file_hashes = lio.file_hashes(file_path, header_lora_hash=metadata.get("sshs_model_hash")).to_dict()
    return InspectReport(
        source=name,
        format=fmt,
        family=family,
        family_evidence=evidence,
        kinds=dict(kinds.most_common()),
        components=comps,
        ranks=dict(sorted(ranks.items())),
        alphas=dict(alphas.most_common()),
        alpha_source=_alpha_source(list(sd), metadata, conv_report),
        dtypes=dict(dtypes.most_common()),
        num_tensors=len(sd),
        num_params=num_params,
        file_size=file_size,
        header_only=header_only,
        metadata=summarize_metadata(metadata),
        coverage=cov,
        conversion_report=jsonable(conv_report.to_dict()) if conv_report is not None else None,
        warnings=warnings,
        hashes=file_hashes,
        **trigger_info(metadata),
    )


def _misfit_warning(report: R.LoadReport) -> str:
    """One short line for keys that do not fit the reference model of their family (the counts and one example,
    not the whole error)."""
    reasons = Counter(s.reason for s in report.skipped)
    first = next((s for s in report.skipped if s.reason == R.SHAPE_MISMATCH), report.skipped[0] if report.skipped
                 else None)
    where = f" the {families.get(report.family).display}" if report.family else ""
    example = f"; first: {first.key}" if first is not None else ""
    return (
        f"the keys do not fit{where} reference model ({_fmt_counts(dict(reasons.most_common())) or 'no match'}"
        f"{example}); a LoRA for a model of other sizes: inspect it with that model to see where it lands"
    )
