"""The ordered registry of layouts, used both to detect how a file names its keys and to convert it.

Each :class:`Layout` claims keys by (prefix family, suffix style). The registry hands every key to the first layout
that claims it, so a file that mixes layouts (diffusers ``.lora.down`` next to ``lora_A`` in one component, kohya
next to LyCORIS kinds) converts completely. Detection scores every layout on **all** keys plus the header
(:meth:`Layout.detect`); the reported format is the dominant layout. Registration order is detection (and claim)
order; :mod:`lorakit.formats.layouts` registers them, in one explicit list.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import FormatError, did_you_mean
from ..families import Family
from ..kinds import AdapterKind
from .keys import NEUTRAL, ParsedKey, Prefix, add_prefixes, split_prefix, split_suffix

#: canonical adapters of one file: component -> module path -> kind
Adapters = Mapping[str, Mapping[str, AdapterKind]]
#: a layout's writer: ``(adapters, family) -> (state_dict, header)``; ``family`` is the one the caller named, or
#: ``None`` (a writer that needs one guesses it through ``lorakit.families.detect``)
Writer = Callable[[Adapters, "Family | None"], tuple[dict[str, Tensor], dict[str, str]]]


@dataclass(frozen=True, slots=True)
class Layout:
    """How a file names its keys: which prefix families and suffix styles it owns, and how to write it."""

    name: str
    description: str
    prefix_families: frozenset[str]
    styles: frozenset[str]
    #: the key prefixes of the families this layout is the home of (other layouts may claim the same families)
    prefixes: tuple[Prefix, ...] = ()
    #: header fields that identify the layout (each adds to the confidence)
    header_keys: tuple[str, ...] = ()
    #: whether the header's PEFT LoraConfig (``lora_adapter_metadata`` / ``adapter_config``) states the rank of each
    #: module the layout names the PEFT way, as PEFT reads it (a file whose tensors contradict it is refused)
    header_config: bool = False
    #: ``None`` for layouts lorakit reads but does not write
    writer: Writer | None = None
    #: a regex the module name (after the prefix) must match from its start: a layout of one family's own names
    #: within a prefix family others share (Flux's BFL names under ``transformer.``, XLabs' ``processor`` names)
    names: str | None = None

    def claim(self, key: str) -> ParsedKey | None:
        """The parsed key if this layout owns it, else ``None``."""
        return self._claim(key, _split(key))

    def _claim(self, key: str, split: _Split) -> ParsedKey | None:
        if split is None:
            if self.prefix_families == frozenset({"embedding"}) and key.startswith("bundle_emb."):
                prefix, rest = split_prefix(key)
                return ParsedKey(key, self.name, prefix, rest.split(".", 1)[0], "embedding", NEUTRAL)
            return None
        prefix, rest, role, style, attnproc = split
        if prefix.family not in self.prefix_families:
            return None
        if style != NEUTRAL and style not in self.styles:
            return None
        if self.names is not None and re.match(self.names, rest) is None:
            return None
        if prefix.family == "embedding":
            rest = rest.split(".", 1)[0]
            role = "embedding"
        return ParsedKey(key, self.name, prefix, rest, role, style, attnproc)

    def detect(self, keys: Iterable[str], metadata: Mapping[str, Any] | None = None) -> float:
        """Confidence in [0, 1+]: the share of all keys this layout claims, plus 0.5 per identifying header field."""
        return self._detect([(k, _split(k)) for k in keys], metadata)

    def _detect(self, splits: list[tuple[str, _Split]], metadata: Mapping[str, Any] | None) -> float:
        if not splits:
            return 0.0
        claimed = sum(1 for k, sp in splits if self._claim(k, sp) is not None)
        score = claimed / len(splits)
        if metadata and claimed:
            score += 0.5 * sum(1 for h in self.header_keys if h in metadata)
        return score


#: a key split once for every layout: ``(prefix, rest, role, style, attnproc)``, or ``None`` (no known suffix)
_Split = tuple[Prefix, str, str, str, bool] | None


def _split(key: str) -> _Split:
    split = split_suffix(key)
    if split is None:
        return None
    name, role, style, attnproc = split
    prefix, rest = split_prefix(name)
    return prefix, rest, role, style, attnproc


REGISTRY: list[Layout] = []
_BY_NAME: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Append a layout to the registry (order matters: detection order, and the first claim wins)."""
    if layout.name in _BY_NAME:
        raise ValueError(f"layout {layout.name!r} is registered twice")
    add_prefixes(layout.prefixes)
    REGISTRY.append(layout)
    _BY_NAME[layout.name] = layout
    return layout


def get(name: str) -> Layout:
    """A registered layout by name (:class:`FormatError` with a "did you mean" otherwise)."""
    layout = _BY_NAME.get(name)
    if layout is None:
        raise FormatError(f"unknown layout {name!r} (known: {', '.join(_BY_NAME)})" + did_you_mean(name, list(_BY_NAME)))
    return layout


def writable() -> tuple[str, ...]:
    """The names of the layouts ``from_canonical`` writes, in registration order."""
    return tuple(layout.name for layout in REGISTRY if layout.writer is not None)


def parse_keys(keys: Iterable[str]) -> tuple[list[ParsedKey], list[str]]:
    """Every key parsed by the first layout that claims it, and the keys nobody claims."""
    parsed: list[ParsedKey] = []
    unclaimed: list[str] = []
    for key in keys:
        split = _split(key)
        for layout in REGISTRY:
            pk = layout._claim(key, split)
            if pk is not None:
                parsed.append(pk)
                break
        else:
            unclaimed.append(key)
    return parsed, unclaimed


def detect(keys: Iterable[str], metadata: Mapping[str, Any] | None = None) -> list[tuple[str, float]]:
    """``[(layout, confidence), ...]`` best first, for every layout with a non-zero confidence."""
    splits = [(k, _split(k)) for k in keys]
    scores = [(layout.name, layout._detect(splits, metadata)) for layout in REGISTRY]
    return sorted((s for s in scores if s[1] > 0), key=lambda s: -s[1])


def format_name(parsed: Iterable[ParsedKey]) -> tuple[str, dict[str, int]]:
    """The dominant layout (``"mixed(a+b)"`` when a second one holds over 10 % of the keys) and per-layout counts."""
    counts = Counter(p.layout for p in parsed)
    if not counts:
        return "unknown", {}
    ranked = counts.most_common()
    total = sum(counts.values())
    major = [n for n, c in ranked if c / total > 0.1 and n not in ("embedding",)]
    name = ranked[0][0] if len(major) <= 1 else "mixed(" + "+".join(sorted(major)) + ")"
    return name, dict(ranked)
