"""``to_canonical``: check the input, parse and group the keys, resolve each group against the component models
(or the family's reference models), build its kind, check that it fits, and report what did not land.

Only bad input raises here, as a typed lorakit error (the load report rides along in ``err.report``); a bug in
lorakit surfaces as itself. Expected per-group outcomes (an unknown module, an incomplete or unsupported adapter, a
shape that does not fit) are typed exceptions of the kinds (``MissingTensorsError``, ``UnsupportedVariantError``,
``NotSeparable``, ``ShapeMismatchError``) or :class:`~lorakit.formats.groups.Skip`, caught by name and reported.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import families, kinds
from .. import report as R
from ..engine import check_kind_fits
from ..errors import (
    ControlLoRAError,
    DTypeError,
    FormatError,
    KeyMismatchError,
    ShapeMismatchError,
    closest,
    summarize,
)
from ..families import Family, detect
from ..kinds import AdapterKind, KeySource, MissingTensorsError, NotSeparable, UnsupportedVariantError
from ..targets import ModuleIndex, Target, build_index, reference_components
from ..targets import clip as clip_targets
from . import registry
from .alphas import AlphaContext, parse_metadata, resolve_alpha
from .groups import Group, Skip, check_float, claim, group_keys, leftovers, scalar
from .keys import PEFT
from .layouts import flux as flux_layouts
from .registry import format_name, parse_keys

logger = logging.getLogger(__name__)

#: the denoiser components of every family ("denoiser" scoped keys resolve against whichever the model has)
DENOISERS: tuple[str, ...] = tuple(dict.fromkeys(f.denoiser for f in families.FAMILIES.values()))


@dataclass
class Conversion:
    """The result of converting one checkpoint.

    Attributes:
        format: the dominant layout of the keys (``"diffusers"``, ``"kohya"``, ``"mixed(a+b)"``, ...).
        adapters: component name -> module path inside that component -> canonical kind.
        report: the :class:`lorakit.report.LoadReport`.
        family: the model family the keys were resolved against (``"sd1"``, ``"sdxl"``, ...) or ``None``.
    """

    format: str
    adapters: dict[str, dict[str, AdapterKind]]
    report: R.LoadReport
    family: str | None = None


# ----------------------------------------------------------------------------------------------- step 1: input
def _check_input(
    state_dict: object, metadata: object, source: str, allow_meta: bool
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not isinstance(state_dict, Mapping):
        raise FormatError(f"{source}: a state dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    sd: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise FormatError(f"{source}: state-dict keys must be strings, got {type(k).__name__} {k!r:.60}")
        if not isinstance(v, Tensor):
            raise DTypeError(f"{source}: key {k!r} holds a {type(v).__name__}, not a tensor")
        if v.layout != torch.strided:
            raise DTypeError(f"{source}: key {k!r} is a {v.layout} tensor; adapter tensors must be dense")
        if v.device.type == "meta" and not allow_meta:
            raise DTypeError(f"{source}: key {k!r} is a meta tensor (no data); it cannot be applied")
        sd[k] = v
    if metadata is None:
        return sd, {}
    if not isinstance(metadata, Mapping):
        raise FormatError(f"{source}: metadata must be a mapping, got {type(metadata).__name__}")
    return sd, {str(k): v for k, v in metadata.items()}


def _check_components(components: object, source: str) -> dict[str, nn.Module]:
    if not isinstance(components, Mapping):
        raise FormatError(f"{source}: components must map names to torch modules")
    out = {c: m for c, m in components.items() if m is not None}  # e.g. SD3 without T5
    if not all(isinstance(c, str) and isinstance(m, nn.Module) for c, m in out.items()):
        raise FormatError(f"{source}: components must map names to torch modules")
    return out


def _alpha_context(meta: Mapping[str, Any], source: str) -> AlphaContext:
    ctx = parse_metadata(meta)
    for comp, cfg in ctx.configs.items():
        if cfg.non_finite:
            raise FormatError(
                f"{source}: the header's {cfg.source}" + (f" for {comp}" if comp else "")
                + f" has non-finite {', '.join(cfg.non_finite)}; no scale can be derived from it"
            )
    return ctx


# ----------------------------------------------------------------------------------------------- step 2: resolve
def _components_for(scope: str | None, comps: Mapping[str, Any]) -> list[str]:
    if scope == "denoiser":
        return [c for c in DENOISERS if c in comps][:1]
    if scope is None:
        den = [c for c in DENOISERS if c in comps]
        return den + [c for c in comps if c not in den]
    return [scope] if scope in comps else []


def _name_candidates(group: Group) -> list[str]:
    name = group.name
    out = [name]
    if group.attnproc or ".processor." in name or name.endswith(".processor"):
        base = name.replace(".processor.", ".").replace("_processor_", "_")
        head, _, leaf = base.rpartition(".")
        if leaf == "to_out":
            out.append(f"{head}.to_out.0")
        else:
            out.append(base)
        te_leaf = clip_targets.ATTN_PROC_LEAVES.get(leaf)
        if te_leaf:
            out.append(f"{head}.{te_leaf}")
    return out


def _resolve(
    group: Group, indexes: Mapping[str, ModuleIndex], aliases: Mapping[str, str] | None = None
) -> tuple[str | None, Target | None, str | None]:
    """``(component, target, None)``, or ``(None, None, component searched)`` / ``(None, None, None)`` (no such
    component in the model). ``aliases`` renames a scope the model's family calls otherwise (``Family.scope_aliases``)."""
    scope = group.scope
    if aliases and scope is not None and scope in aliases and scope not in indexes:
        scope = aliases[scope]
    comps = _components_for(scope, indexes)
    for comp in comps:
        idx = indexes[comp]
        for cand in _name_candidates(group):
            hit = idx.lookup(cand)
            if hit is not None:
                return comp, hit, None
    return None, None, comps[0] if comps else None


def _alpha_names(path: str) -> list[str]:
    names = [path]
    if path.startswith(clip_targets.PREFIX):
        names.append(path[len(clip_targets.PREFIX) :])
    elif path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):
        names.append(clip_targets.PREFIX + path)
    return names


def _is_kxk(group: Group) -> bool:
    """Whether the module is a k×k convolution (kohya's ``conv_alpha`` applies): a 4-D tensor with a kernel > 1."""
    return any(t.dim() == 4 and (t.shape[-1] > 1 or t.shape[-2] > 1) for t in group.tensors.values())


def _shapes(group: Group) -> dict[str, tuple[int, ...]]:
    return {r: tuple(t.shape) for r, t in group.tensors.items()}


# ----------------------------------------------------------------------------------------------- step 3: convert
@dataclass
class _Outcome:
    adapters: dict[str, dict[str, AdapterKind]]
    report: R.LoadReport
    shape_errors: list[tuple[str, str]]  # (key, message)


@dataclass
class _Converter:
    """Converts the groups of one file against one set of component indexes, filling one report."""

    indexes: Mapping[str, ModuleIndex]
    ctx: AlphaContext
    metadata: Mapping[str, Any]
    report: R.LoadReport
    closest_budget: int = 200
    adapters: dict[str, dict[str, AdapterKind]] = field(default_factory=dict)
    owner: dict[tuple[str, str], str] = field(default_factory=dict)
    shape_errors: list[tuple[str, str]] = field(default_factory=list)
    alpha_conflicts: Counter[str] = field(default_factory=Counter)
    config_errors: list[str] = field(default_factory=list)
    #: the family's ``scope_aliases`` (file scopes it calls otherwise)
    aliases: Mapping[str, str] = field(default_factory=dict)

    def skip(self, group: Group, reason: str, detail: str = "", component: str | None = None, hint: bool = False) -> None:
        near: tuple[str, ...] = ()
        if hint and component is not None and component in self.indexes and self.closest_budget > 0:
            self.closest_budget -= 1
            near = tuple(self.indexes[component].closest(group.name))
        for key in [*group.keys.values(), *group.duplicates]:
            self.report.skipped.append(R.SkippedKey(key, reason, component, group.name, detail, near))

    def run(self, group: Group) -> None:
        """Convert one group: land it, or report every one of its keys."""
        comp, target, searched = _resolve(group, self.indexes, self.aliases)
        try:
            kind_cls = claim(group)
        except Skip as s:
            self.skip(group, s.reason, s.detail, comp)
            return
        check_float(group, kind_cls)
        if comp is None or target is None:
            if searched is None:
                want = group.scope if group.scope != "denoiser" else "/".join(DENOISERS)
                self.skip(group, R.COMPONENT_ABSENT, f"the model has no {want}")
            else:
                self.skip(group, R.NO_SUCH_MODULE, f"no module of that name in {searched}", searched, hint=True)
            return
        try:
            placed, used, src = self._build(group, kind_cls, comp, target)
        except (Skip, MissingTensorsError, UnsupportedVariantError, NotSeparable, ShapeMismatchError) as exc:
            self._skip_failed(group, exc, comp, target)
            return
        dup = [p for p, _ in placed if (comp, p) in self.owner]
        if dup:
            self.skip(group, R.DUPLICATE, f"module {dup[0]!r} already has an adapter from {self.owner[(comp, dup[0])]!r}", comp)
            return
        self._land(group, comp, placed, used, src)

    def _skip_failed(self, group: Group, exc: Exception, comp: str, target: Target) -> None:
        if isinstance(exc, Skip):
            reason, detail = exc.reason, exc.detail
        elif isinstance(exc, MissingTensorsError):
            reason, detail = R.INCOMPLETE, str(exc)
        elif isinstance(exc, UnsupportedVariantError):
            reason, detail = R.UNSUPPORTED_KIND, str(exc)
        elif isinstance(exc, NotSeparable):
            reason, detail = R.UNSUPPORTED_KIND, f"cannot split onto {', '.join(target.paths)}: {exc}"
        else:
            reason, detail = R.SHAPE_MISMATCH, str(exc)
        self.skip(group, reason, detail, comp)
        if reason == R.SHAPE_MISMATCH:
            msg = detail if detail.startswith("key ") else f"key {group.first_key!r}: {detail}"
            self.shape_errors.append((group.first_key, msg))

    def _build(
        self, group: Group, kind_cls: type[AdapterKind], comp: str, target: Target
    ) -> tuple[list[tuple[str, AdapterKind]], set[str], str]:
        """The kind(s) of one group on its target module(s), the roles used and the alpha source."""
        source = KeySource(group.layout, self.metadata)
        kind = kind_cls.from_roles(group.tensors, source)
        rank = kind.rank
        if rank == 0:
            raise Skip(R.SHAPE_MISMATCH, f"rank 0 (tensors {_shapes(group)}): the adapter has no rank")
        alpha, src = self._alpha(group, comp, target.paths[0], kind)
        kind = kind.with_alpha(alpha)
        used = set(kind_cls.roles())
        for wrapper in kinds.WRAPPERS:
            kind, wrapped = wrapper.wrap(kind, group.tensors)
            used.update(wrapped)
        idx = self.indexes[comp]
        placed = _place(kind, target, idx, self.ctx, group)
        for path, k in placed:
            check_kind_fits(k, idx.modules[path], f"key {group.first_key!r} -> {comp} module {path!r} (weight {idx.shape(path)})")
        return placed, used & set(group.tensors), src

    def _alpha(self, group: Group, comp: str, first_path: str, kind: AdapterKind) -> tuple[float | None, str]:
        t = group.tensors
        t_alpha = scalar(t["alpha"], group.keys["alpha"]) if "alpha" in t else None
        t_scale = scalar(t["scale"], group.keys["scale"]) if "scale" in t else None
        names = _alpha_names(first_path)
        rank = kind.rank
        alpha, src = resolve_alpha(self.ctx, comp, names, rank, t_alpha, t_scale, _is_kxk(group))
        if t_alpha is None and "alpha" in t:  # a meta tensor (header-only inspection)
            src = "tensor (value not read)"
        cfg = self.ctx.config(comp)
        if cfg is None:
            return alpha, src
        if t_alpha is not None:
            meta_alpha = cfg.alpha_for(names)
            if meta_alpha is not None and meta_alpha != t_alpha:
                self.alpha_conflicts[comp] += 1
        # the config describes the modules the file names the PEFT way (a PEFT file may hold LyCORIS-named ones)
        if registry.get(group.layout).header_config and PEFT in group.styles and rank is not None:
            stated = cfg.rank_for(names)
            if stated is not None and int(stated) != rank:
                self.config_errors.append(
                    f"key {group.first_key!r} has rank {rank} but the header's {cfg.source} says r={stated:g}"
                )
        return alpha, src

    def _land(self, group: Group, comp: str, placed: list[tuple[str, AdapterKind]], used: set[str], src: str) -> None:
        crep = self.report.components.setdefault(comp, R.ComponentReport(comp))
        rest = leftovers(group, used)
        crep.matched_keys += len(group.keys) - len(rest)
        for key, reason, detail in rest:
            self.report.skipped.append(R.SkippedKey(key, reason, comp, group.name, detail))
        for path, k in placed:
            self.owner[(comp, path)] = group.first_key
            self.adapters.setdefault(comp, {})[path] = k
            crep.matched_modules += 1
            crep.kinds[k.kind_name] = crep.kinds.get(k.kind_name, 0) + 1
            crep.alpha_sources[src] = crep.alpha_sources.get(src, 0) + 1
            r = k.rank
            if r is not None:
                crep.ranks[r] = crep.ranks.get(r, 0) + 1
            crep.scales[round(k.scale, 6)] = crep.scales.get(round(k.scale, 6), 0) + 1
        for key in group.duplicates:
            self.report.skipped.append(R.SkippedKey(key, R.DUPLICATE, comp, group.name, "the same tensor role twice"))

    def finish(self, source: str) -> _Outcome:
        if self.config_errors:
            raise FormatError(
                f"{source}: the header's LoRA config does not describe the tensors ({len(self.config_errors)} "
                f"module(s)); first: {self.config_errors[0]}",
                report=self.report,
            )
        for comp, n in self.alpha_conflicts.items():
            self.report.warnings.append(
                f"{comp}: {n} module(s) have an .alpha tensor that differs from the header config; the tensor was used"
            )
        return _Outcome(self.adapters, self.report, self.shape_errors)


def _place(kind: AdapterKind, target: Target, idx: ModuleIndex, ctx: AlphaContext, group: Group) -> list[tuple[str, AdapterKind]]:
    """The adapter(s) on the target module(s): as is, split over a fused projection's parts, or with its output
    halves swapped (SAI (shift, scale) -> diffusers (scale, shift))."""
    if target.op == "direct":
        return [(target.paths[0], kind)]
    shapes = [idx.shape(p) for p in target.paths]
    in_shape = shapes[0][1:]
    if any(s[1:] != in_shape for s in shapes):
        raise ShapeMismatchError(f"targets {target.paths} do not share an input shape")
    if target.op == "split":
        sizes = [s[0] for s in shapes]
        fused = torch.Size((sum(sizes), *in_shape))
        kind.check_shape(fused, f"key {group.first_key!r} -> fused {', '.join(target.paths)} {tuple(fused)}")
        parts = kind.split_rows(sizes, tuple(in_shape), assume_block=ctx.split_qkv)
        return list(zip(target.paths, parts))
    if target.op == "swap":
        shape = torch.Size(shapes[0])
        kind.check_shape(shape, f"key {group.first_key!r} -> {target.paths[0]} {tuple(shape)}")
        total, half = shape[0], shape[0] // 2
        rows = torch.cat([torch.arange(half, total), torch.arange(0, half)])
        return [(target.paths[0], kind.select_rows(rows, total, tuple(in_shape)))]
    raise ValueError(f"unknown target op {target.op!r}")  # a lorakit bug: targets only build the three ops


def _convert(
    groups: list[Group],
    skipped_pre: list[R.SkippedKey],
    indexes: Mapping[str, ModuleIndex],
    ctx: AlphaContext,
    meta: Mapping[str, Any],
    total_keys: int,
    source: str,
    fmt: tuple[str, dict[str, int]],
    family: str | None,
    closest_budget: int = 200,
) -> _Outcome:
    report = R.LoadReport(source=source, format=fmt[0], formats=fmt[1], family=family, total_keys=total_keys)
    report.skipped.extend(skipped_pre)
    report.metadata_used = list(ctx.used)
    report.warnings.extend(ctx.warnings)
    aliases = families.get(family).scope_aliases if family else {}
    conv = _Converter(indexes, ctx, meta, report, closest_budget, aliases=aliases)
    for group in groups:
        conv.run(group)
    return conv.finish(source)


def _score(out: _Outcome) -> tuple[int, int]:
    return (out.report.matched_keys - 4 * len(out.shape_errors), -len(out.report.skipped))


def _indexes(comps: Mapping[str, nn.Module]) -> dict[str, ModuleIndex]:
    return {c: build_index(m, c) for c, m in comps.items()}


def _against_references(
    groups: list[Group], skipped: list[R.SkippedKey], ctx: AlphaContext, meta: Mapping[str, Any], n: int, source: str,
    fmt: tuple[str, dict[str, int]],
) -> tuple[_Outcome, Family, dict[str, ModuleIndex]]:
    """No model given: the family named by the header, else the families the key names fit; each variant's meta
    reference model is tried (when there is a choice) and the best fit is converted with full hints."""
    named = detect.from_header(meta).family
    fams = [named] if named else detect.candidates((g.name for g in groups), (g.scope for g in groups))
    variants = [v for f in (fams or list(families.FAMILIES.values())) for v in (f.name, *f.variants)]
    best: tuple[_Outcome, str] | None = None
    for cand in variants if len(variants) > 1 else []:
        out = _convert(groups, list(skipped), _indexes(reference_components(cand)), ctx, meta, n, source, fmt,
                       families.of_variant(cand).name, closest_budget=0)
        if best is None or _score(out) > _score(best[0]):
            best = (out, cand)
        if not out.shape_errors and len(out.report.skipped) == len(skipped):
            break  # everything that can land did: no need to try the other candidates
    variant = best[1] if best is not None else variants[0]
    family = families.of_variant(variant)
    indexes = _indexes(reference_components(variant))
    outcome = _convert(groups, list(skipped), indexes, ctx, meta, n, source, fmt, family.name)
    outcome.report.reference = variant
    return outcome, family, indexes


# ----------------------------------------------------------------------------------------------- step 4: verdict
def _family_hint(shapes: Mapping[str, tuple[int, ...]], meta: Mapping[str, Any], model: Family | None) -> str:
    """``"; the file looks like an SDXL LoRA (...) but the model is SD1"`` when the file's family (the one detector:
    header, key names, shapes) is another loader's than the model's."""
    if model is None:
        return ""
    guess = detect.from_keys(shapes, meta)
    fam = guess.family
    if fam is None or fam.loader == model.loader:  # one loader: same key conventions (SD1 / SD2), shapes tell them apart
        return ""
    return f"; the file looks like a {fam.display} LoRA ({guess.evidence}) but the model is {model.display}"


def _verdict(
    outcome: _Outcome, sd: Mapping[str, Tensor], indexes: Mapping[str, ModuleIndex], source: str, strict: bool,
    family: Family | None, hint: str,
) -> None:
    """Raise for adapters that do not fit, for no match at all, and (``strict``) for any key not loaded."""
    rep = outcome.report
    if outcome.shape_errors:
        key, msg = outcome.shape_errors[0]
        more = len(outcome.shape_errors) - 1
        raise ShapeMismatchError(
            f"{source}: {len(outcome.shape_errors)} adapter(s) do not fit the model"
            + (f" (family {family.name})" if family else "")
            + hint
            + f"; first: {msg}"
            + (f" (+{more} more: {summarize(k for k, _ in outcome.shape_errors[1:])})" if more else ""),
            report=rep,
        )
    if rep.matched_keys == 0:
        first = [s for s in rep.skipped if s.reason == R.NO_SUCH_MODULE][:1]
        near = ""
        if first and first[0].closest:
            near = f"; closest modules to {first[0].module!r}: {summarize(first[0].closest)}"
        elif indexes:  # names only: a module that resolved but holds an unsupported kind needs no "closest"
            comp0 = next(iter(indexes))
            names = [s.module for s in rep.skipped if s.module and s.reason in (R.NO_SUCH_MODULE, R.COMPONENT_ABSENT)][:1]
            if names:
                hits = closest(names[0].replace("_", "."), list(indexes[comp0].modules))
                near = f"; closest {comp0} modules to {names[0]!r}: {summarize(hits)}" if hits else ""
        reasons = Counter(s.reason for s in rep.skipped)
        unsupported = list(dict.fromkeys(s.detail for s in rep.skipped if s.reason == R.UNSUPPORTED_KIND))
        kinds_text = "; ".join(unsupported[:3]) + (f" (+{len(unsupported) - 3} more)" if len(unsupported) > 3 else "")
        if unsupported and set(reasons) <= {R.UNSUPPORTED_KIND, R.UNRECOGNISED}:  # the names are not the problem
            raise KeyMismatchError(
                f"{source}: nothing lorakit applies: {kinds_text} ({reasons[R.UNSUPPORTED_KIND]} of {len(sd)} keys, "
                f"format {rep.format}, components {summarize(indexes) or 'none'}); first keys: {summarize(list(sd)[:5])}",
                report=rep,
            )
        if unsupported:
            near = f"; {kinds_text}{near}"
        raise KeyMismatchError(
            f"{source}: no key matched the model{hint} ({len(sd)} keys, format {rep.format}, components "
            f"{summarize(indexes) or 'none'}; {', '.join(f'{r}: {n}' for r, n in reasons.items()) or 'empty'}); "
            f"first keys: {summarize(list(sd)[:5])}{near}",
            report=rep,
        )
    if strict and rep.skipped:
        reasons = Counter(s.reason for s in rep.skipped)
        raise KeyMismatchError(
            f"{source}: strict load: {len(rep.skipped)} of {len(sd)} keys not loaded "
            f"({', '.join(f'{r}: {n}' for r, n in reasons.items())}): {summarize(s.key for s in rep.skipped)}",
            report=rep,
        )


def to_canonical(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
    components: Mapping[str, nn.Module] | None = None,
    *,
    source: str = "<dict>",
    strict: bool = False,
    allow_meta: bool = False,
) -> Conversion:
    """Convert a checkpoint (any supported layout) to canonical adapters of the given component models.

    Args:
        state_dict: checkpoint key -> tensor.
        metadata: the safetensors header (``__metadata__``), an ``adapter_config.json`` dict, or ``None``.
        components: ``{"unet": unet, "text_encoder": te, ...}``; ``None`` resolves against the reference models of
            the family guessed from the keys and header (built on the meta device).
        source: a name for messages (file path, hub id).
        strict: raise :class:`KeyMismatchError` when any key is not loaded.
        allow_meta: accept meta tensors (header-only inspection); a load refuses them.

    Returns:
        :class:`Conversion` with ``adapters[component][module_path] = kind`` and the :class:`~lorakit.report.LoadReport`.

    Raises:
        KeyMismatchError: no key matched (or, with ``strict``, some key did not).
        ShapeMismatchError: an adapter does not fit its module (message names the key, module and shapes).
        FormatError / DTypeError: malformed input.

    Example:
        >>> conv = to_canonical(sd, header, {"unet": pipe.unet, "text_encoder": pipe.text_encoder})  # doctest: +SKIP
        >>> AdapterManager(pipe.unet).add_adapter("style", conv.adapters["unet"])  # doctest: +SKIP
    """
    sd, meta = _check_input(state_dict, metadata, source, allow_meta)
    parsed, unclaimed = parse_keys(sd)
    ctx = _alpha_context(meta, source)
    groups = group_keys(parsed, sd)
    skipped = [R.SkippedKey(k, R.UNRECOGNISED, detail="no known key layout") for k in unclaimed]
    fmt = format_name(parsed)
    family: Family | None
    if components is None:
        outcome, family, indexes = _against_references(groups, skipped, ctx, meta, len(sd), source, fmt)
    else:
        comps = _check_components(components, source)
        family = detect.of_components(comps)
        indexes = _indexes(comps)
        outcome = _convert(groups, skipped, indexes, ctx, meta, len(sd), source, fmt, family.name if family else None)
    control = flux_layouts.control_lora(sd, indexes)
    if control is not None:
        raise ControlLoRAError(f"{source}: {control}", report=outcome.report)
    hint = _family_hint({k: tuple(v.shape) for k, v in sd.items()}, meta, family)
    _verdict(outcome, sd, indexes, source, strict, family, hint)
    rep = outcome.report
    if hint:
        logger.warning("%s: %s", source, hint.removeprefix("; "))
    if rep.skipped:
        logger.warning("%s: %d of %d keys not loaded: %s", source, len(rep.skipped), len(sd),
                       summarize(f"{s.key} ({s.reason})" for s in rep.skipped))
    return Conversion(format=rep.format, adapters=outcome.adapters, report=rep, family=family.name if family else None)
