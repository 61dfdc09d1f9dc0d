"""Alias -> module-path lookup tables built from a model's own ``named_modules()`` (design principle 4).

For every module lorakit can patch, the index holds its dotted path, the kohya underscored spelling, the
``text_model.``-less / -ful spelling of CLIP paths, and family names (SGM for UNets, SAI MMDiT for SD3, BFL for Flux),
each mapped to a :class:`Target`. Resolving a checkpoint name is a dictionary lookup; names that do not resolve are a
set difference, reported with close matches. The underscore transform is not invertible by string replacement, which is why the table
is built forward from the model and never by guessing where dots were.
"""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass, field

from torch import nn

from ..engine import is_supported
from ..engine.apply import weight_of
from . import clip, flux, sd3, sd_unet


@dataclass(frozen=True, slots=True)
class Target:
    """Where one checkpoint module lands.

    ``op`` is ``"direct"`` (one module), ``"split"`` (a fused projection whose output rows are split over ``paths`` by
    their own row counts: SD3 / Flux ``qkv``, Flux ``linear1`` = q, k, v + MLP) or ``"swap"`` (one module whose two
    output halves are exchanged, SD3 / Flux final adaLN).
    """

    paths: tuple[str, ...]
    op: str = "direct"


@dataclass(slots=True)
class ModuleIndex:
    """The lookup table of one component model."""

    component: str
    class_name: str
    modules: dict[str, nn.Module]
    aliases: dict[str, Target] = field(default_factory=dict)
    all_paths: list[str] = field(default_factory=list)
    _underscored: list[tuple[str, str]] = field(default_factory=list)

    def lookup(self, name: str) -> Target | None:
        """The target of a dotted or underscored module name, or ``None``."""
        hit = self.aliases.get(name)
        if hit is None and "." in name:
            hit = self.aliases.get(name.replace(".", "_"))
        return hit

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(weight_of(self.modules[path]).shape)

    def closest(self, name: str, n: int = 3) -> list[str]:
        """Module paths closest to ``name`` (compared in underscored form; pre-filtered on the last token)."""
        flat = name.replace(".", "_")
        last = flat.rsplit("_", 1)[-1]
        pool = [(u, p) for u, p in self._underscored if u.endswith("_" + last) or u == last]
        if not pool:
            pool = self._underscored
        if len(pool) > 4000:
            pool = pool[:4000]
        got = difflib.get_close_matches(flat, [u for u, _ in pool], n=n, cutoff=0.4)
        lookup = dict(pool)
        return [lookup[u] for u in got]


def _add(aliases: dict[str, Target], ambiguous: set[str], name: str, target: Target) -> None:
    for key in {name, name.replace(".", "_")}:
        if key in ambiguous:
            continue
        old = aliases.get(key)
        if old is None:
            aliases[key] = target
        elif old != target:
            # the first spelling wins only when it is the model's own dotted path
            if "." in key:
                continue
            del aliases[key]
            ambiguous.add(key)


_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[int, ModuleIndex]] = weakref.WeakKeyDictionary()


def build_index(model: nn.Module, component: str = "") -> ModuleIndex:
    """The (cached) :class:`ModuleIndex` of ``model``."""
    named = list(model.named_modules())
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == len(named) and cached[1].component == component:
        return cached[1]
    modules = {p: m for p, m in named if p and is_supported(m)}
    index = ModuleIndex(component=component, class_name=type(model).__name__, modules=modules)
    index.all_paths = [p for p, _ in named if p]
    aliases: dict[str, Target] = {}
    ambiguous: set[str] = set()
    for p in modules:
        _add(aliases, ambiguous, p, Target((p,)))
    for p in modules:
        for v in clip.text_model_variants(model, p):
            _add(aliases, ambiguous, v, Target((p,)))
    if sd_unet.is_unet(model):
        for name, p in sd_unet.sgm_aliases(model, list(modules)).items():
            _add(aliases, ambiguous, name, Target((p,)))
    if sd3.is_mmdit(model) and not flux.is_flux(model):  # Flux has pos_embed too; SAI names are SD3's
        for name, paths, op in sd3.sai_entries(model):
            if all(p in modules for p in paths):
                _add(aliases, ambiguous, name, Target(paths, op))
    if flux.is_flux(model):
        for name, paths, op in flux.bfl_entries(model):
            if all(p in modules for p in paths):
                _add(aliases, ambiguous, name, Target(paths, op))
    index.aliases = aliases
    index._underscored = [(p.replace(".", "_"), p) for p in modules]
    try:
        _CACHE[model] = (len(named), index)
    except TypeError:  # pragma: no cover - a model that cannot be weak-referenced
        pass
    return index
