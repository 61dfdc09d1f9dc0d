"""Where each module's alpha comes from (formats.md §4.1, §5.3, §6, §7.2).

Order, per module: its own ``.alpha`` tensor (kohya / LyCORIS; ``0`` means "rank", the kohya convention); an A1111
``.scale`` tensor (alpha = scale · rank); the header's PEFT config (diffusers ``lora_adapter_metadata`` JSON with
``<component>.lora_alpha`` / ``.alpha_pattern`` / ``.use_rslora``, or raw PEFT ``adapter_config`` fields), matched
per module with PEFT's pattern rule; kohya ``ss_network_alpha`` (``conv_alpha`` for k×k convs) as a fallback only;
else the module's own rank (scale 1). The source is recorded per module for the load report.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

TENSOR, SCALE_TENSOR, DIFFUSERS_META, PEFT_CONFIG, KOHYA_HEADER, DEFAULT = (
    "tensor",
    "tensor .scale",
    "lora_adapter_metadata",
    "adapter_config",
    "ss_network_alpha",
    "default (rank)",
)

_CONFIG_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "peft_type")


def _json(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):
            return value
    return value


def _num(value: Any) -> float | None:
    value = _json(value)
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _bool(value: Any) -> bool:
    value = _json(value)
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) if isinstance(value, (bool, int, float)) else False


def _non_finite(value: Any) -> bool:
    """A number that is NaN or infinite (as opposed to a missing or non-numeric value)."""
    value = _json(value)
    if isinstance(value, bool) or value is None:
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _match(key: str, name: str) -> bool:
    try:
        return re.match(rf"(.*\.)?({key})$", name) is not None
    except re.error:
        return name == key or name.endswith("." + key)


@dataclass(slots=True)
class PeftConfig:
    """The rank and alpha fields of one PEFT LoraConfig."""

    source: str
    lora_alpha: float | None = None
    r: float | None = None
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    rank_pattern: dict[str, float] = field(default_factory=dict)
    use_rslora: bool = False
    use_dora: bool = False
    #: fields whose value is NaN / Inf (the file is refused: no scale can be derived from them)
    non_finite: list[str] = field(default_factory=list)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], source: str) -> PeftConfig:
        bad = [f for f in ("lora_alpha", "r") if _non_finite(fields.get(f))]
        patterns: dict[str, dict[str, float]] = {}
        for pname in ("alpha_pattern", "rank_pattern"):
            pattern = _json(fields.get(pname)) or {}
            clean: dict[str, float] = {}
            if isinstance(pattern, Mapping):
                for k, v in pattern.items():
                    if _non_finite(v):
                        bad.append(f"{pname}[{k!r}]")
                    n = _num(v)
                    if isinstance(k, str) and n is not None:
                        clean[k] = n
            patterns[pname] = clean
        return cls(
            source=source,
            lora_alpha=_num(fields.get("lora_alpha")),
            r=_num(fields.get("r")),
            alpha_pattern=patterns["alpha_pattern"],
            rank_pattern=patterns["rank_pattern"],
            use_rslora=_bool(fields.get("use_rslora", False)),
            use_dora=_bool(fields.get("use_dora", False)),
            non_finite=bad,
        )

    def alpha_for(self, names: list[str]) -> float | None:
        """PEFT's rule: the first pattern key ``k`` with ``re.match(rf"(.*\\.)?({k})$", name)``, else ``lora_alpha``."""
        for key, value in self.alpha_pattern.items():
            if any(_match(key, name) for name in names):
                return value
        return self.lora_alpha

    def rank_for(self, names: list[str]) -> float | None:
        """The rank the config gives a module (``rank_pattern``, else ``r``), by the same rule."""
        for key, value in self.rank_pattern.items():
            if any(_match(key, name) for name in names):
                return value
        return self.r


@dataclass(slots=True)
class AlphaContext:
    """Header-derived alpha information of one file."""

    #: component name (or None = any component) -> config
    configs: dict[str | None, PeftConfig] = field(default_factory=dict)
    kohya_alpha: float | None = None
    kohya_conv_alpha: float | None = None
    split_qkv: bool = False
    used: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def config(self, component: str) -> PeftConfig | None:
        return self.configs.get(component) or self.configs.get(None)


def parse_metadata(metadata: Mapping[str, Any] | None) -> AlphaContext:
    """Read the alpha-related header fields (never raises on odd values: they are reported and ignored)."""
    ctx = AlphaContext()
    if not metadata:
        return ctx
    raw = metadata.get("lora_adapter_metadata")
    if raw is not None:
        data = _json(raw)
        if isinstance(data, Mapping):
            per: dict[str, dict[str, Any]] = {}
            for k, v in data.items():
                if isinstance(k, str) and "." in k:
                    comp, _, fname = k.partition(".")
                    per.setdefault(comp, {})[fname] = v
            for comp, fields in per.items():
                ctx.configs[comp] = PeftConfig.from_fields(fields, DIFFUSERS_META)
            ctx.used.append("lora_adapter_metadata")
        else:
            ctx.warnings.append("header lora_adapter_metadata is not a JSON object; ignored")
    cfg = metadata.get("adapter_config")
    if cfg is not None:
        data = _json(cfg)
        if isinstance(data, Mapping):
            ctx.configs[None] = PeftConfig.from_fields(data, PEFT_CONFIG)
            ctx.used.append("adapter_config")
        else:
            ctx.warnings.append("header adapter_config is not a JSON object; ignored")
    elif any(f in metadata for f in ("lora_alpha", "alpha_pattern")):
        ctx.configs[None] = PeftConfig.from_fields(metadata, PEFT_CONFIG)
        ctx.used.extend(f for f in _CONFIG_FIELDS if f in metadata)
    if "ss_network_alpha" in metadata:
        ctx.kohya_alpha = _num(metadata.get("ss_network_alpha"))
        ctx.used.append("ss_network_alpha")
    args = _json(metadata.get("ss_network_args"))
    if isinstance(args, Mapping):
        ctx.kohya_conv_alpha = _num(args.get("conv_alpha"))
        ctx.split_qkv = _bool(args.get("split_qkv", False))
        ctx.used.append("ss_network_args")
    return ctx


def resolve_alpha(
    ctx: AlphaContext,
    component: str,
    names: list[str],
    rank: int | None,
    tensor_alpha: float | None,
    tensor_scale: float | None,
    is_kxk_conv: bool,
) -> tuple[float | None, str]:
    """``(alpha, source)`` for one module; ``alpha=None`` means alpha = rank (scale 1)."""
    if tensor_alpha is not None:
        return (None if tensor_alpha == 0 else tensor_alpha), TENSOR
    if tensor_scale is not None and rank:
        return tensor_scale * rank, SCALE_TENSOR
    cfg = ctx.config(component)
    if cfg is not None:
        alpha = cfg.alpha_for(names)
        if alpha is not None:
            if cfg.use_rslora and rank:
                alpha = alpha * math.sqrt(rank)  # PEFT rsLoRA scale alpha/sqrt(r) == (alpha·sqrt(r))/r
            return alpha, cfg.source
    header = ctx.kohya_conv_alpha if (is_kxk_conv and ctx.kohya_conv_alpha is not None) else ctx.kohya_alpha
    if header is not None:
        return (None if header == 0 else header), KOHYA_HEADER
    return None, DEFAULT
