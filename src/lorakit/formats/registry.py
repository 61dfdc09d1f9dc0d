"""The ordered registry of key conventions, used both to detect a file's layout and to convert it.

Each :class:`Convention` claims keys by (prefix family, suffix style). The registry hands every key to the first
convention that claims it, so a file that mixes layouts (diffusers ``.lora.down`` next to ``lora_A`` in one component,
kohya next to LyCORIS kinds) converts completely. Detection scores every convention on **all** keys plus the header
(:meth:`Convention.detect`); the reported format is the best score.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .keys import NEUTRAL, ParsedKey, Prefix, split_prefix, split_suffix


@dataclass(frozen=True, slots=True)
class Convention:
    """A key convention: which prefix families and suffix styles it owns."""

    name: str
    description: str
    prefix_families: frozenset[str]
    styles: frozenset[str]
    #: extra condition on a parsed key (e.g. attention-processor keys only)
    accept: Callable[[str, str, bool], bool] | None = None
    #: header fields that identify the convention (each adds to the confidence)
    header_keys: tuple[str, ...] = ()
    #: whether lorakit converts it (False: keys are reported as "unsupported kind")
    supported: bool = True

    def claim(self, key: str) -> ParsedKey | None:
        """The parsed key if this convention owns it, else ``None``."""
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
        if self.accept is not None and not self.accept(role, style, attnproc):
            return None
        if prefix.family == "embedding":
            rest = rest.split(".", 1)[0]
            role = "embedding"
        return ParsedKey(key, self.name, prefix, rest, role, style, attnproc)

    def detect(self, keys: Iterable[str], metadata: Mapping[str, Any] | None = None) -> float:
        """Confidence in [0, 1+]: the share of all keys this convention claims, plus 0.5 per identifying header field."""
        return self._detect([(k, _split(k)) for k in keys], metadata)

    def _detect(self, splits: list[tuple[str, _Split]], metadata: Mapping[str, Any] | None) -> float:
        if not splits:
            return 0.0
        claimed = sum(1 for k, sp in splits if self._claim(k, sp) is not None)
        score = claimed / len(splits)
        if metadata and claimed:
            score += 0.5 * sum(1 for h in self.header_keys if h in metadata)
        return score


#: a key split once for every convention: ``(prefix, rest, role, style, attnproc)``, or ``None`` (no known suffix)
_Split = tuple[Prefix, str, str, str, bool] | None


def _split(key: str) -> _Split:
    split = split_suffix(key)
    if split is None:
        return None
    name, role, style, attnproc = split
    prefix, rest = split_prefix(name)
    return prefix, rest, role, style, attnproc


REGISTRY: list[Convention] = []


def register(conv: Convention) -> Convention:
    """Append a convention to the registry (order matters: the first claim wins)."""
    REGISTRY.append(conv)
    return conv


def set_order(names: list[str]) -> None:
    """Reorder the registry (conventions not named keep their relative order, after the named ones)."""
    rank = {n: i for i, n in enumerate(names)}
    REGISTRY.sort(key=lambda c: rank.get(c.name, len(rank)))


def parse_keys(keys: Iterable[str]) -> tuple[list[ParsedKey], list[str]]:
    """Every key parsed by the first convention that claims it, and the keys nobody claims."""
    parsed: list[ParsedKey] = []
    unclaimed: list[str] = []
    for key in keys:
        split = _split(key)
        for conv in REGISTRY:
            pk = conv._claim(key, split)
            if pk is not None:
                parsed.append(pk)
                break
        else:
            unclaimed.append(key)
    return parsed, unclaimed


def detect(keys: Iterable[str], metadata: Mapping[str, Any] | None = None) -> list[tuple[str, float]]:
    """``[(convention, confidence), ...]`` best first, for every convention with a non-zero confidence."""
    splits = [(k, _split(k)) for k in keys]
    scores = [(c.name, c._detect(splits, metadata)) for c in REGISTRY]
    return sorted((s for s in scores if s[1] > 0), key=lambda s: -s[1])


def format_name(parsed: Iterable[ParsedKey]) -> tuple[str, dict[str, int]]:
    """The dominant convention (``"mixed(a+b)"`` when a second one holds over 10 % of the keys) and per-convention counts."""
    counts = Counter(p.convention for p in parsed)
    if not counts:
        return "unknown", {}
    ranked = counts.most_common()
    total = sum(counts.values())
    major = [n for n, c in ranked if c / total > 0.1 and n not in ("embedding",)]
    name = ranked[0][0] if len(major) <= 1 else "mixed(" + "+".join(sorted(major)) + ")"
    return name, dict(ranked)


def get(name: str) -> Convention:
    for c in REGISTRY:
        if c.name == name:
            return c
    raise KeyError(name)
