"""The load report: what a checkpoint conversion matched, what it skipped and why.

Every conversion (``lorakit.formats.to_canonical``) returns a :class:`LoadReport`; loaders keep it in the manager's
``info[adapter]["report"]`` and ``lorakit.inspect`` returns it. Nothing is dropped silently: every key that did not
become part of an adapter is listed in :attr:`LoadReport.skipped` with a reason and the closest module names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import summarize

#: the target component is not part of the model / pipeline (e.g. text-encoder keys into a UNet-only target)
COMPONENT_ABSENT = "component absent"
#: the component exists but has no module of that name
NO_SUCH_MODULE = "no such module"
#: an adapter algorithm lorakit cannot apply (embedded textual inversions; a kind on a target it cannot split exactly)
UNSUPPORTED_KIND = "unsupported kind"
#: the adapter does not fit the module's weight shape (to_canonical raises ShapeMismatchError for these)
SHAPE_MISMATCH = "shape mismatch"
#: a module's keys do not form a complete adapter (lora_down without lora_up, an alpha without weights, ...)
INCOMPLETE = "incomplete adapter"
#: no known key convention recognises the key
UNRECOGNISED = "unrecognised key"
#: two groups of keys land on the same module
DUPLICATE = "duplicate module"

REASONS: tuple[str, ...] = (
    COMPONENT_ABSENT,
    NO_SUCH_MODULE,
    UNSUPPORTED_KIND,
    SHAPE_MISMATCH,
    INCOMPLETE,
    UNRECOGNISED,
    DUPLICATE,
)


@dataclass(slots=True)
class SkippedKey:
    """One checkpoint key that did not become (part of) an adapter."""

    key: str
    reason: str
    component: str | None = None
    #: the module name as written in the file (dotted or underscored, prefix removed)
    module: str | None = None
    detail: str = ""
    #: closest module paths of the component (difflib), for "did you mean"
    closest: tuple[str, ...] = ()


@dataclass(slots=True)
class ComponentReport:
    """What landed in one component (``unet``, ``transformer``, ``text_encoder``, ...)."""

    name: str
    #: number of target modules that received an adapter
    matched_modules: int = 0
    #: number of checkpoint keys consumed by those adapters
    matched_keys: int = 0
    #: kind name -> number of modules ("lora", "loha", "lokr", "full", "dora")
    kinds: dict[str, int] = field(default_factory=dict)
    #: alpha source -> number of modules ("tensor", "lora_adapter_metadata", "adapter_config",
    #: "ss_network_alpha", "default (rank)")
    alpha_sources: dict[str, int] = field(default_factory=dict)
    #: rank -> number of modules
    ranks: dict[int, int] = field(default_factory=dict)
    #: alpha/rank scale -> number of modules
    scales: dict[float, int] = field(default_factory=dict)

    @property
    def alpha_source(self) -> str:
        """The alpha source, or ``"mixed: a (n), b (m)"`` when modules differ."""
        if not self.alpha_sources:
            return "none"
        if len(self.alpha_sources) == 1:
            return next(iter(self.alpha_sources))
        return "mixed: " + ", ".join(f"{k} ({v})" for k, v in Counter(self.alpha_sources).most_common())


@dataclass(slots=True)
class LoadReport:
    """The report of one conversion."""

    source: str
    #: the dominant key convention ("diffusers", "kohya", ...; "mixed(a+b)" when several are substantial)
    format: str
    #: convention -> number of keys it claimed
    formats: dict[str, int] = field(default_factory=dict)
    #: model family the keys were resolved against ("sd1", "sd2", "sdxl", "sd3", "amused") or None
    family: str | None = None
    #: without a model: the reference model used ("sd1", ..., "sd3.5-large", "sd3.5-medium"); None with real models
    reference: str | None = None
    total_keys: int = 0
    components: dict[str, ComponentReport] = field(default_factory=dict)
    skipped: list[SkippedKey] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: header fields that were read (alpha / config fields), for the record
    metadata_used: list[str] = field(default_factory=list)

    @property
    def matched_keys(self) -> int:
        return sum(c.matched_keys for c in self.components.values())

    @property
    def matched_modules(self) -> int:
        return sum(c.matched_modules for c in self.components.values())

    @property
    def coverage(self) -> float:
        """Share of keys that became part of an adapter (0..1)."""
        return self.matched_keys / self.total_keys if self.total_keys else 0.0

    def by_reason(self) -> dict[str, list[SkippedKey]]:
        out: dict[str, list[SkippedKey]] = {}
        for s in self.skipped:
            out.setdefault(s.reason, []).append(s)
        return out

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.source}: format {self.format}, family {self.family or 'unknown'}, "
            f"{self.matched_keys}/{self.total_keys} keys matched ({self.coverage:.0%})"
        ]
        for c in self.components.values():
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(c.kinds.items()))
            lines.append(f"  {c.name}: {c.matched_modules} modules ({kinds}); alpha from {c.alpha_source}")
        for reason, items in self.by_reason().items():
            lines.append(f"  skipped ({reason}): {len(items)} keys: {summarize(s.key for s in items)}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matched_keys"] = self.matched_keys
        d["coverage"] = self.coverage
        for name, c in self.components.items():
            d["components"][name]["alpha_source"] = c.alpha_source
        return d

    def __str__(self) -> str:
        return self.summary()
