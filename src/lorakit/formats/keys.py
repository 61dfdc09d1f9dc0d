"""Splitting checkpoint keys into (module name, tensor role) and (prefix, name).

A key is ``<prefix><module name><joiner><suffix>``. The suffix names the tensor's role inside an adapter and its
style (see :mod:`lorakit.kinds.vocab`); the suffix table is built from the kinds' own vocabularies
(``lorakit.kinds.vocabulary()``), plus the few layout-neutral suffixes below. This module knows how each style is
*spelled* (its joiner, PEFT's optional adapter-name segment); what the suffixes mean belongs to the kinds. The prefix
names the component scope and the naming scheme; each layout module declares the prefixes of its families
(``Layout.prefixes``, made known here at registration). Layouts (``registry``) are combinations of prefix families
and styles.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import kinds
from ..kinds.vocab import ATTNPROC, INTERMEDIATE, KOHYA, NEUTRAL, PEFT, Suffix

__all__ = [
    "ATTNPROC",
    "INTERMEDIATE",
    "KOHYA",
    "NEUTRAL",
    "NO_PREFIX",
    "PEFT",
    "ParsedKey",
    "Prefix",
    "SCALAR_ROLES",
    "PLAIN_ROLES",
    "add_prefixes",
    "prefixes",
    "scalar_key",
    "split_prefix",
    "split_suffix",
]

#: roles no kind owns: ``alpha`` (every layout), A1111's ``.scale`` (alpha = scale · rank), and a module's own
#: parameters (``.weight`` / ``.bias``: not adapter tensors, unless a kind claims them, as (IA)^3 does its weight)
_NEUTRAL: tuple[Suffix, ...] = (
    Suffix("alpha", "alpha", NEUTRAL),
    Suffix("scale", "scale", KOHYA),
    Suffix("weight", "weight", KOHYA),
    Suffix("bias", "bias", KOHYA),
)
#: the scalar roles read as numbers (alpha resolution), not as adapter tensors
SCALAR_ROLES = frozenset({"alpha", "scale"})
#: a module's own parameters
PLAIN_ROLES = frozenset({"weight", "bias"})

#: an optional adapter-name segment (PEFT ``lora_A.default.weight``)
_SEG = r"(?:\.[A-Za-z0-9_\-]+)?"


def _pattern(s: Suffix) -> re.Pattern[str]:
    """The regex of one suffix on a key's end, with the style's joiner (``_`` for attention processors, ``.``
    otherwise) and, for PEFT suffixes of two or more parts, the optional adapter-name segment after the first."""
    joiner = "_" if s.style == ATTNPROC else r"\."
    head, dot, rest = s.text.partition(".")
    if s.style == PEFT and dot:
        return re.compile(joiner + re.escape(head) + _SEG + r"\." + re.escape(rest) + "$")
    return re.compile(joiner + re.escape(s.text) + "$")


@dataclass(frozen=True, slots=True)
class _Entry:
    pattern: re.Pattern[str]
    role: str
    style: str
    #: the key's last dotted segment when this suffix ends it
    last: str
    #: the suffix has a dotted part before the last one (a tensor key, which a diffusers network-alpha key may end in)
    nested: bool


def _table() -> list[_Entry]:
    """Every known suffix, most dotted parts first (so ``lora.down.weight`` is tried before ``weight``), then in the
    kinds' order; refuses one spelling with two roles."""
    seen: dict[tuple[str, str], str] = {}
    suffixes: list[Suffix] = []
    for s in (*kinds.vocabulary(), *_NEUTRAL):
        role = seen.setdefault((s.style, s.text), s.role)
        if role != s.role:
            raise ValueError(f"suffix {s.text!r} ({s.style}) names two roles: {role!r} and {s.role!r}")
        if s not in suffixes:
            suffixes.append(s)
    suffixes.sort(key=lambda s: -s.text.count("."))
    return [_Entry(_pattern(s), s.role, s.style, s.text.rpartition(".")[2], "." in s.text) for s in suffixes]


_TABLE = _table()
#: the entries that can match a key ending in ``.<last>`` (in order), so a key is tried against a few regexes only
_BY_LAST: dict[str, list[_Entry]] = {}
for _e in _TABLE:
    _BY_LAST.setdefault(_e.last, []).append(_e)
_NESTED = [e for e in _TABLE if e.nested]


def split_suffix(key: str) -> tuple[str, str, str, bool] | None:
    """``(module name incl. prefix, role, style, attnproc)`` or ``None`` when no suffix is known."""
    last = key.rpartition(".")[2]
    if last.endswith("\n"):  # "$" also matches before a final newline
        last = last[:-1]
    for e in _BY_LAST.get(last, ()):
        m = e.pattern.search(key)
        if m is None or m.start() == 0:
            continue
        name = key[: m.start()]
        attnproc = e.style == ATTNPROC
        if e.style == NEUTRAL:
            # diffusers network_alphas spell alphas after a tensor key: "<name>.lora.down.weight.alpha"
            for n in _NESTED:
                nm = n.pattern.search(name)
                if nm is not None and nm.start() > 0:
                    name, attnproc = name[: nm.start()], n.style == ATTNPROC
                    break
        return name, e.role, e.style, attnproc
    return None


def scalar_key(key: str) -> bool:
    """Whether ``key`` names a one-value setting rather than an adapter tensor: an ``alpha`` / ``.scale``, or a kind's
    flag (``AdapterKind.FLAG_ROLES``: (IA)³'s ``on_input``, which LyCORIS saves as int64). Such keys may hold integers,
    and a header-only read needs their values."""
    split = split_suffix(key)
    if split is None:
        return key == "alpha"
    role = split[1]
    return role in SCALAR_ROLES or any(role in k.FLAG_ROLES for k in (*kinds.KINDS, *kinds.NOT_APPLIED))


@dataclass(frozen=True, slots=True)
class Prefix:
    """A key prefix: the component scope it names and the naming scheme of what follows."""

    text: str
    #: "denoiser" (unet or transformer, whichever the model has), a component name, or None (try every component)
    scope: str | None
    #: "dotted" or "underscored"
    naming: str
    #: prefix family, used by layouts to claim keys
    family: str


#: no prefix at all (a module's own state dict): family "none", resolved against every component
NO_PREFIX = Prefix("", None, "dotted", "none")
#: every registered prefix, longest first (so ``lora_te1_`` wins over ``lora_te_`` whatever the registration order)
_PREFIXES: list[Prefix] = []


def add_prefixes(prefixes: Iterable[Prefix]) -> None:
    """Make prefixes known (a layout's, at registration); one text names one scope and family."""
    for p in prefixes:
        old = next((q for q in _PREFIXES if q.text == p.text), None)
        if old is not None and old != p:
            raise ValueError(f"prefix {p.text!r} is registered twice with different meanings: {old} and {p}")
        if old is None and p.text:
            _PREFIXES.append(p)
    _PREFIXES.sort(key=lambda q: -len(q.text))


def prefixes() -> tuple[Prefix, ...]:
    """The registered prefixes, longest first, then :data:`NO_PREFIX`."""
    return (*_PREFIXES, NO_PREFIX)


def split_prefix(name: str) -> tuple[Prefix, str]:
    """The longest matching prefix of a module name and the rest (:data:`NO_PREFIX` when none matches)."""
    for p in _PREFIXES:
        if name.startswith(p.text) and len(name) > len(p.text):
            return p, name[len(p.text) :]
    return NO_PREFIX, name


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """One recognised key."""

    key: str
    layout: str
    prefix: Prefix
    #: the module name after the prefix (dotted or underscored)
    name: str
    role: str
    style: str
    attnproc: bool = False
