"""``lorakit.inspect``: what is in an adapter file, read from its header where possible.

For a safetensors file only the header is parsed: tensors are built on the ``meta`` device from the declared shapes
and dtypes, and only the single-value ``.alpha`` tensors are read from disk. The meta state dict then goes through
``formats.to_canonical`` like a real load, so the report shows what a load would see (format, kinds, modules, ranks,
alphas). Given a model or components, it also reports coverage: which modules the file would land on and which keys
would not land.

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
import sys
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import formats
from . import io as lio
from .errors import KeyMismatchError, LorakitError, ShapeMismatchError, closest, summarize
from .save import LORA_ADAPTER_METADATA_KEY

logger = logging.getLogger(__name__)

__all__ = ["InspectReport", "inspect", "guess_family", "summarize_metadata", "coverage"]

FAMILIES = ("SD1", "SD2", "SDXL", "SD3", "aMUSEd", "unknown")

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
    #: the conversion report of ``formats.to_canonical`` (as a dict when it can be turned into one)
    conversion_report: Any = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``json.dumps(report.to_dict())`` works)."""
        return _jsonable(asdict(self))

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
        skipped = (self.conversion_report or {}).get("skipped") if isinstance(self.conversion_report, dict) else None
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
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
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
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


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


def _report_dict(report: Any) -> Any:
    if report is None:
        return None
    to_dict = getattr(report, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except Exception:  # noqa: BLE001 - a report that cannot render must not break inspect
            return str(report)
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    if isinstance(report, Mapping):
        return dict(report)
    return str(report)


def summarize_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """Group header metadata: kohya ``ss_*`` (a selection, ``ss_network_args`` parsed), ``modelspec.*``,
    diffusers ``lora_adapter_metadata`` (parsed JSON), a raw PEFT ``adapter_config.json`` and the rest (counted)."""
    out: dict[str, Any] = {}
    kohya = {k: metadata[k] for k in _KOHYA_KEYS if k in metadata}
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


# ----------------------------------------------------------------------------------------------- family
_DOWN_SUFFIX = re.compile(
    r"(lora_A(\.weight)?|lora\.down\.weight|lora_down\.weight|_lora\.down\.weight|lora_linear_layer\.down\.weight"
    r"|down\.weight|hada_w1_b|hada_w2_b)$"
)
_CROSS_KV = re.compile(r"attn2[._](processor[._])?to_[kv]\b|attn2[._](processor[._])?to_[kv][._]")
_TE_Q = re.compile(r"(self_attn[._](processor[._])?(q_proj|to_q))")
_CROSS_WIDTHS = {768: "SD1", 1024: "SD2", 2048: "SDXL"}


def guess_family(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Guess the base model family from header metadata, else from key names and shapes.

    Returns:
        ``(family, evidence)`` with family one of ``SD1``, ``SD2``, ``SDXL``, ``SD3``, ``aMUSEd``, ``unknown``.
    """
    md = metadata or {}
    arch = md.get("modelspec.architecture", "").lower()
    if arch:
        for needle, fam in (
            ("stable-diffusion-xl", "SDXL"),
            ("stable-diffusion-3", "SD3"),
            ("stable-diffusion-v2", "SD2"),
            ("stable-diffusion-v1", "SD1"),
        ):
            if needle in arch:
                return fam, f"modelspec.architecture = {md['modelspec.architecture']}"
    base = md.get("ss_base_model_version", "").lower()
    module = md.get("ss_network_module", "").lower()
    if base:
        if base.startswith("sdxl"):
            return "SDXL", f"ss_base_model_version = {md['ss_base_model_version']}"
        if base.startswith("sd_v2"):
            return "SD2", f"ss_base_model_version = {md['ss_base_model_version']}"
        if base.startswith("sd_v1"):
            return "SD1", f"ss_base_model_version = {md['ss_base_model_version']}"
        if "sd3" in module or base in ("medium", "large", "5-large", "5-medium", "sd3", "3-medium"):
            return "SD3", f"ss_base_model_version = {md['ss_base_model_version']}"
    if "sd3" in module:
        return "SD3", f"ss_network_module = {md['ss_network_module']}"
    if md.get("ss_v2", "").lower() == "true":
        return "SD2", "ss_v2 = True"

    keys = list(shapes)
    low = [k.lower() for k in keys]
    # SD3 / MMDiT
    for k in low:
        if "joint_blocks" in k or "context_block" in k or "x_block" in k:
            return "SD3", "SAI MMDiT names (joint_blocks)"
    for k in low:
        if re.search(r"transformer_blocks[._]\d+[._](attn[._](add_[qkv]_proj|to_add_out)|norm1_context|ff_context)", k) or (
            "context_embedder" in k
        ):
            return "SD3", "joint-attention modules (add_q_proj / context_embedder)"
    # aMUSEd (UVit2DModel)
    for k in low:
        if re.search(r"transformer_layers[._]\d+[._]attn[12]", k) or any(
            s in k for s in ("cond_embeds_mapper", "mlm_layer", "encoder_proj", "project_to_hidden", "res_blocks")
        ):
            return "aMUSEd", "UVit2D modules (transformer_layers / res_blocks)"
    # cross-attention width from the in-features of an attn2.to_k / to_v down factor
    widths = Counter(
        shapes[k][1]
        for k, lk in zip(keys, low)
        if _CROSS_KV.search(lk) and _DOWN_SUFFIX.search(k) and len(shapes[k]) >= 2
    )
    for width, _ in widths.most_common():
        if width in _CROSS_WIDTHS:
            return _CROSS_WIDTHS[width], f"cross-attention width {width} (attn2.to_k/to_v)"
    # structural hints
    if any(k.startswith(("text_encoder_2.", "lora_te2_")) for k in keys):
        return "SDXL", "second CLIP text encoder (text_encoder_2 / lora_te2_)"
    if any(s in k for k in low for s in ("add_embedding", "label_emb")):
        return "SDXL", "text-time embedding (add_embedding / label_emb)"
    if any(re.search(r"(input_blocks|output_blocks|middle_block)[._]\d*[._]?\d*[._]?\d*[._]?transformer_blocks[._][1-9]", k) for k in low) or any(
        re.search(r"(down_blocks|up_blocks)[._]\d[._]attentions[._]\d[._]transformer_blocks[._][1-9]", k) for k in low
    ):
        return "SDXL", "several transformer blocks per attention (transformer_layers_per_block > 1)"
    te_widths = Counter(
        shapes[k][1]
        for k, lk in zip(keys, low)
        if lk.startswith(("text_encoder.", "lora_te_", "lora_te1_", "lora_te."))
        and _TE_Q.search(lk)
        and _DOWN_SUFFIX.search(k)
        and len(shapes[k]) >= 2
    )
    for width, _ in te_widths.most_common():
        if width == 768:
            return "SD1", "CLIP-L text encoder width 768 (no second encoder)"
        if width == 1024:
            return "SD2", "OpenCLIP-H text encoder width 1024"
    proj = [
        len(shapes[k])
        for k, lk in zip(keys, low)
        if re.search(r"attentions[._]\d+[._]proj_in", lk) and _DOWN_SUFFIX.search(k)
    ]
    if proj and any(n == 4 for n in proj):
        return "SD1", "convolutional proj_in (use_linear_projection=False)"
    return "unknown", "no metadata and no decisive key names or shapes"


# ----------------------------------------------------------------------------------------------- coverage
def _prefixes(sd: Mapping[str, Any]) -> list[str]:
    return sorted({k.split(".", 1)[0] for k in sd if "." in k})


def _components_of(model: Any, components: Mapping[str, nn.Module] | None, file_components: list[str]) -> dict[str, nn.Module]:
    if components is not None:
        return {k: v for k, v in components.items() if isinstance(v, nn.Module)}
    if model is None:
        return {}
    comps = getattr(model, "components", None)
    if isinstance(comps, Mapping):
        return {k: v for k, v in comps.items() if isinstance(v, nn.Module)}
    if isinstance(model, nn.Module):
        cls = type(model).__name__
        guess = {"UNet2DConditionModel": "unet", "SD3Transformer2DModel": "transformer", "UVit2DModel": "transformer"}
        name = guess.get(cls)
        if name is None or (file_components and name not in file_components):
            name = file_components[0] if len(file_components) == 1 else (name or "unet")
        return {name: model}
    raise TypeError(f"model must be a pipeline or an nn.Module, got {type(model).__name__}")


def coverage(
    adapters: Mapping[str, Mapping[str, Any]],
    components: Mapping[str, nn.Module],
    file_counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Which canonical modules land on ``components`` (module exists and shape fits) and which do not.

    ``file_counts`` (component -> modules in the file) covers converters that drop what they cannot place: the
    difference is counted as ``not_in_model``.
    """
    from .engine import check_kind_fits

    out: dict[str, Any] = {}
    counts = dict(file_counts or {})
    for comp in sorted(set(adapters) | set(counts)):
        mapping = adapters.get(comp, {})
        model = components.get(comp)
        total = max(len(mapping), counts.get(comp, 0))
        if model is None:
            out[comp] = {
                "modules": total,
                "matched": 0,
                "not_in_model": total,
                "shape_mismatch": 0,
                "error": f"component {comp!r} is not in the model (has {summarize(sorted(components)) or 'none'})",
            }
            continue
        named = dict(model.named_modules())
        missing: list[str] = []
        bad: list[str] = []
        for path, kind in mapping.items():
            mod = named.get(path)
            if mod is None:
                missing.append(path)
                continue
            try:
                check_kind_fits(kind, mod, f"{comp}.{path}")
            except ShapeMismatchError as exc:
                bad.append(str(exc))
        matched = len(mapping) - len(missing) - len(bad)
        entry: dict[str, Any] = {
            "modules": total,
            "matched": matched,
            "not_in_model": total - matched - len(bad),
            "shape_mismatch": len(bad),
        }
        if missing:
            entry["missing_examples"] = missing[:5]
            entry["closest"] = {m: closest(m, list(named)) for m in missing[:3]}
        if bad:
            entry["mismatch_examples"] = bad[:5]
        out[comp] = entry
    return out


def coverage_from_report(
    report: Any, file_counts: Mapping[str, int], components: Mapping[str, nn.Module]
) -> dict[str, Any]:
    """Coverage per component from a :class:`lorakit.report.LoadReport` of a conversion against ``components``."""
    from . import report as R

    skipped_by_comp: dict[str, list[Any]] = {}
    for s in report.skipped:
        comp = s.component
        if comp is None:
            found = re.search(r"has no (\w+)", s.detail or "")
            comp = found.group(1) if found else "(unassigned)"
        skipped_by_comp.setdefault(comp, []).append(s)
    out: dict[str, Any] = {}
    for comp in sorted(set(file_counts) | set(report.components) | set(skipped_by_comp)):
        crep = report.components.get(comp)
        matched = crep.matched_modules if crep is not None else 0
        skipped = skipped_by_comp.get(comp, [])

        def modules_for(*reasons: str, _sk: list[Any] = skipped) -> set[str]:
            return {s.module or s.key for s in _sk if s.reason in reasons}

        absent = modules_for(R.NO_SUCH_MODULE, R.COMPONENT_ABSENT)
        bad = modules_for(R.SHAPE_MISMATCH)
        other = modules_for(*(r for r in R.REASONS if r not in (R.NO_SUCH_MODULE, R.COMPONENT_ABSENT, R.SHAPE_MISMATCH)))
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
_FAMILY_DISPLAY = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "amused": "aMUSEd"}

_ALPHA_SOURCE_NAMES = {
    "tensor": "per-module .alpha tensors",
    "default (rank)": "none in the file (alpha = rank, scale 1)",
    "lora_adapter_metadata": "diffusers lora_adapter_metadata",
    "adapter_config": "PEFT adapter_config",
    "ss_network_alpha": "kohya ss_network_alpha",
}


def _alpha_source(state_keys: list[str], metadata: Mapping[str, str], report: Any) -> str:
    if isinstance(report, Mapping) and isinstance(report.get("components"), Mapping):
        per = {
            c: v.get("alpha_source")
            for c, v in report["components"].items()
            if isinstance(v, Mapping) and v.get("alpha_source") and v.get("alpha_source") != "none"
        }
        if per:
            per = {c: _ALPHA_SOURCE_NAMES.get(str(a), str(a)) for c, a in per.items()}
            values = set(per.values())
            return next(iter(values)) if len(values) == 1 else "; ".join(f"{c}: {a}" for c, a in per.items())
    if isinstance(report, Mapping):
        for key in ("alpha_source", "alpha_sources"):
            if key in report and report[key]:
                val = report[key]
                return val if isinstance(val, str) else json.dumps(_jsonable(val))
    if any(k.endswith(".alpha") or k == "alpha" for k in state_keys):
        return "per-module .alpha tensors"
    if LORA_ADAPTER_METADATA_KEY in metadata:
        return "diffusers lora_adapter_metadata (lora_alpha / alpha_pattern)"
    if lio.PEFT_CONFIG_METADATA_KEY in metadata:
        return "PEFT adapter_config.json"
    if metadata.get("ss_network_alpha", "None") not in ("None", ""):
        return "kohya ss_network_alpha"
    return "none in the file (alpha = rank, scale 1)"


def _meta_state_dict(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    shapes, metadata = lio.read_header(path)
    alpha_keys = [k for k, (shape, _) in shapes.items() if (k.endswith(".alpha") or k == "alpha") and len(shape) <= 1 and (not shape or shape[0] == 1)]
    alphas = lio.read_tensors(path, alpha_keys) if alpha_keys else {}
    sd: dict[str, Tensor] = {}
    for k, (shape, dtype) in shapes.items():
        sd[k] = alphas[k] if k in alphas else torch.empty(shape, dtype=dtype, device="meta")
    return sd, metadata


def inspect(
    source: lio.Source,
    *,
    model: Any = None,
    components: Mapping[str, nn.Module] | None = None,
    weight_name: str | None = None,
    **hub_kwargs: Any,
) -> InspectReport:
    """Describe an adapter file (or dict) without loading it into anything.

    Args:
        source: a file, folder (+ ``weight_name``), Hub id or ``{key: Tensor}`` dict (see :func:`lorakit.io.read_source`).
        model: optional pipeline (its ``components``) or ``nn.Module``, to report coverage.
        components: optional ``{component name: nn.Module}``, to report coverage.
        weight_name: the file inside a folder / repository.
        **hub_kwargs: forwarded to :func:`lorakit.io.resolve_file` (``subfolder``, ``cache_dir``, ``revision``, ...).

    Returns:
        An :class:`InspectReport`. For safetensors files only the header and the ``.alpha`` tensors are read.

    Raises:
        lorakit errors of :func:`lorakit.io.read_source` (missing, unreadable, unsafe files) and of
        ``formats.to_canonical`` (no adapter keys recognised).
    """
    warnings: list[str] = []
    file_size: int | None = None
    header_only = False
    if isinstance(source, Mapping):
        lio.validate_state_dict(source, "<dict>")
        sd: dict[str, Tensor] = dict(source)
        metadata: dict[str, str] = {}
        name = "<dict>"
    else:
        path, name = lio.resolve_file(source, weight_name=weight_name, **hub_kwargs)
        file_size = os.path.getsize(path)
        if lio.file_kind(path) == "safetensors":
            sd, metadata = _meta_state_dict(path)
            header_only = True
            lio._peft_sidecar(path, metadata)
        else:
            sd, metadata = lio.read_file(path, display=name)
    shapes = {k: tuple(t.shape) for k, t in sd.items()}
    dtypes = Counter(_dtype_name(t.dtype) for t in sd.values())
    num_params = sum(t.numel() for t in sd.values())

    conv_report: Any = None
    adapters: Mapping[str, Mapping[str, Any]] = {}
    fmt = "unknown"
    try:
        conv = formats.to_canonical(sd, metadata, None, source=name, allow_meta=True)
    except (ShapeMismatchError, KeyMismatchError) as exc:
        # the keys do not fit the reference model of the family they look like (custom or tiny model sizes,
        # names of another model): still describe the file; a layout nobody recognises is an error
        conv_report = getattr(exc, "report", None)
        if conv_report is None or getattr(conv_report, "format", "unknown") == "unknown":
            raise
        warnings.append(f"the keys do not fit the reference model of their family: {exc}")
        fmt = conv_report.format
    except LorakitError:
        raise
    except Exception as exc:  # noqa: BLE001 - a converter that cannot run on meta tensors: read everything
        if not header_only:
            raise
        logger.debug("%s: header-only conversion failed (%r); reading all tensors", name, exc)
        warnings.append(f"header-only conversion failed ({exc.__class__.__name__}); read all tensors")
        sd, metadata = lio.read_file(path, display=name)
        header_only = False
        conv = formats.to_canonical(sd, metadata, None, source=name, allow_meta=True)
        adapters, conv_report, fmt = conv.adapters, conv.report, conv.format
    else:
        adapters, conv_report, fmt = conv.adapters, conv.report, conv.format

    ref_family = getattr(conv_report, "family", None) if adapters else None
    cov = None
    comp_models = _components_of(model, components, list(adapters) or _prefixes(sd))
    if comp_models:
        placed_adapters: Mapping[str, Mapping[str, Any]] | None = None
        try:
            placed = formats.to_canonical(sd, metadata, comp_models, source=name, allow_meta=True)
            placed_report: Any = placed.report
            placed_adapters = placed.adapters
        except LorakitError as exc:
            placed_report = getattr(exc, "report", None)
            if placed_report is None:
                cov = {"(all)": {"modules": len(sd), "matched": 0, "error": str(exc)}}
        if not adapters and placed_adapters:  # the file fits the model but not the reference: describe it from here
            adapters, conv_report = placed_adapters, placed_report
        if cov is None:
            counts = {c: len(m) for c, m in adapters.items()}
            if placed_report is not None and hasattr(placed_report, "components") and hasattr(placed_report, "skipped"):
                cov = coverage_from_report(placed_report, counts, comp_models)
            elif placed_adapters is not None:
                cov = coverage(placed_adapters, comp_models, counts)
            if placed_report is not None:
                conv_report = placed_report

    kinds: Counter[str] = Counter()
    comps: dict[str, int] = {}
    ranks: Counter[int] = Counter()
    alphas: Counter[str] = Counter()
    for comp, mapping in adapters.items():
        comps[comp] = len(mapping)
        for kind in mapping.values():
            inner = getattr(kind, "inner", None)
            kinds[f"{kind.kind_name}({inner.kind_name})" if inner is not None else kind.kind_name] += 1
            rank = kind.rank
            if rank is not None:
                ranks[int(rank)] += 1
            alpha = getattr(kind, "alpha", None)
            alphas["none" if alpha is None else f"{float(alpha):g}"] += 1
    if not adapters and conv_report is not None:  # partial description from the report
        for comp, crep in getattr(conv_report, "components", {}).items():
            comps[comp] = crep.matched_modules
            kinds.update(crep.kinds)
            ranks.update({int(r): n for r, n in crep.ranks.items()})
        unplaced: dict[str, set[str]] = {}
        for s in getattr(conv_report, "skipped", []):
            if s.module and s.reason in ("no such module", "shape mismatch", "component absent"):
                unplaced.setdefault(s.component or s.key.split(".", 1)[0], set()).add(s.module)
        for comp, mods in unplaced.items():
            comps[comp] = comps.get(comp, 0) + len(mods)

    family, evidence = guess_family(shapes, metadata)
    resolved = ref_family
    if resolved and (family == "unknown" or not evidence.startswith(("cross-attention", "modelspec", "ss_"))):
        shown = _FAMILY_DISPLAY.get(str(resolved), str(resolved))
        if shown != family:
            family, evidence = shown, f"keys resolved against the {shown} reference model"
    report_dict = _report_dict(conv_report)
    return InspectReport(
        source=name,
        format=fmt,
        family=family,
        family_evidence=evidence,
        kinds=dict(kinds.most_common()),
        components=comps,
        ranks=dict(sorted(ranks.items())),
        alphas=dict(alphas.most_common()),
        alpha_source=_alpha_source(list(sd), metadata, report_dict),
        dtypes=dict(dtypes.most_common()),
        num_tensors=len(sd),
        num_params=num_params,
        file_size=file_size,
        header_only=header_only,
        metadata=summarize_metadata(metadata),
        coverage=cov,
        conversion_report=_jsonable(report_dict) if report_dict is not None else None,
        warnings=warnings,
    )


class _CallableModule(types.ModuleType):
    """Lets ``lorakit.inspect(...)`` work whether ``lorakit.inspect`` resolves to this module or the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> InspectReport:
        return inspect(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
