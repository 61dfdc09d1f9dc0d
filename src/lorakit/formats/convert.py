"""``to_canonical``: detect, group, resolve against the component models, build kinds, check shapes, report."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import report as R
from ..engine import check_kind_fits
from ..errors import (
    DTypeError,
    FormatError,
    KeyMismatchError,
    LorakitError,
    ShapeMismatchError,
    closest,
    summarize,
)
from ..kinds import AdapterKind
from ..targets import (
    FAMILY_OF,
    VARIANTS,
    ModuleIndex,
    Target,
    build_index,
    family_candidates,
    family_from_metadata,
    family_of_components,
    reference_components,
)
from ..targets import clip as clip_targets
from . import build as B
from .alphas import AlphaContext, parse_metadata, resolve_alpha
from .keys import ParsedKey
from .registry import REGISTRY, format_name, parse_keys
from .transform import NotSeparable, split_rows, swap_halves

logger = logging.getLogger(__name__)

DENOISERS = ("unet", "transformer")
#: layouts whose header config (lora_adapter_metadata / adapter_config) states each module's rank, as PEFT reads it
_PEFT_LAYOUTS = frozenset({"diffusers", "peft", "unprefixed"})


@dataclass
class Conversion:
    """The result of converting one checkpoint.

    Attributes:
        format: the detected key convention (``"diffusers"``, ``"kohya"``, ``"mixed(a+b)"``, ...).
        adapters: component name -> module path inside that component -> canonical kind.
        report: the :class:`lorakit.report.LoadReport`.
        family: the model family the keys were resolved against (``"sd1"``, ``"sdxl"``, ...) or ``None``.
    """

    format: str
    adapters: dict[str, dict[str, AdapterKind]]
    report: Any = field(default=None)
    family: str | None = None


@dataclass
class _Outcome:
    adapters: dict[str, dict[str, AdapterKind]]
    report: R.LoadReport
    shape_errors: list[tuple[str, str]]  # (key, message)


def _check_input(
    state_dict: Any, metadata: Any, source: str, allow_meta: bool
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


def _components_for(scope: str | None, comps: Mapping[str, Any]) -> list[str]:
    if scope == "denoiser":
        return [c for c in DENOISERS if c in comps][:1]
    if scope is None:
        den = [c for c in DENOISERS if c in comps]
        return den + [c for c in comps if c not in den]
    return [scope] if scope in comps else []


def _name_candidates(group: B.Group) -> list[str]:
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


def _resolve(group: B.Group, indexes: Mapping[str, ModuleIndex]) -> tuple[str, Target] | tuple[None, str | None]:
    comps = _components_for(group.scope, indexes)
    if not comps:
        return None, None
    for comp in comps:
        idx = indexes[comp]
        for cand in _name_candidates(group):
            hit = idx.lookup(cand)
            if hit is not None:
                return comp, hit
    return None, comps[0]


def _is_kxk(group: B.Group) -> bool:
    for role in ("down", "mid", "hada_t1", "lokr_t2", "lokr_w2"):
        t = group.tensors.get(role)
        if t is not None and t.dim() == 4 and (t.shape[-1] > 1 or t.shape[-2] > 1):
            return True
    return False


def _alpha_names(path: str) -> list[str]:
    names = [path]
    if path.startswith(clip_targets.PREFIX):
        names.append(path[len(clip_targets.PREFIX) :])
    elif path.startswith(("encoder.layers.", "embeddings.", "final_layer_norm")):
        names.append(clip_targets.PREFIX + path)
    return names


def _convert(
    groups: list[B.Group],
    skipped_pre: list[R.SkippedKey],
    indexes: Mapping[str, ModuleIndex],
    ctx: AlphaContext,
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
    adapters: dict[str, dict[str, AdapterKind]] = {}
    owner: dict[tuple[str, str], str] = {}
    shape_errors: list[tuple[str, str]] = []
    alpha_conflicts: Counter[str] = Counter()
    config_errors: list[str] = []
    budget = [closest_budget]

    def skip(group: B.Group, reason: str, detail: str = "", component: str | None = None, hint: bool = False) -> None:
        near: tuple[str, ...] = ()
        if hint and component in indexes and budget[0] > 0:
            budget[0] -= 1
            near = tuple(indexes[component].closest(group.name))
        for key in [*group.keys.values(), *group.duplicates]:
            report.skipped.append(R.SkippedKey(key, reason, component, group.name, detail, near))

    for group in groups:
        try:
            B.check_float(group)
            kind_name = B.kind_of(group)
        except B.Skip as s:
            comp, _ = _resolve(group, indexes) if indexes else (None, None)
            skip(group, s.reason, s.detail, comp if isinstance(comp, str) else None)
            continue
        comp, target = _resolve(group, indexes)
        if comp is None:
            if target is None:
                want = group.scope if group.scope != "denoiser" else "unet/transformer"
                skip(group, R.COMPONENT_ABSENT, f"the model has no {want}")
            else:
                skip(group, R.NO_SUCH_MODULE, f"no module of that name in {target}", str(target), hint=True)
            continue
        assert isinstance(target, Target)
        idx = indexes[comp]
        first_path = target.paths[0]
        try:
            rank = B.rank_of(group, kind_name)
            if rank == 0:
                raise B.Skip(R.SHAPE_MISMATCH, f"rank 0 (tensors {_shapes(group)}): the adapter has no rank")
            t_alpha = B.scalar(group.tensors["alpha"], group.keys["alpha"]) if "alpha" in group.tensors else None
            t_scale = B.scalar(group.tensors["scale"], group.keys["scale"]) if "scale" in group.tensors else None
            alpha_names = _alpha_names(first_path)
            alpha, src = resolve_alpha(ctx, comp, alpha_names, rank, t_alpha, t_scale, _is_kxk(group))
            if t_alpha is None and "alpha" in group.tensors:  # a meta tensor (header-only inspection)
                src = "tensor (value not read)"
            cfg = ctx.config(comp)
            if t_alpha is not None and cfg is not None:
                meta_alpha = cfg.alpha_for(alpha_names)
                if meta_alpha is not None and meta_alpha != t_alpha:
                    alpha_conflicts[comp] += 1
            if kind_name == "lora" and cfg is not None and group.convention in _PEFT_LAYOUTS and rank is not None:
                stated = cfg.rank_for(alpha_names)
                if stated is not None and int(stated) != rank:
                    config_errors.append(
                        f"key {group.first_key!r} has rank {rank} but the header's {cfg.source} says r={stated:g}"
                    )
            kind = B.build(group, kind_name, alpha)
            kind = B.wrap_dora(group, kind)
            placed = _place(kind, target, idx, ctx, group)
            for path, k in placed:
                where = f"key {group.first_key!r} -> {comp} module {path!r} (weight {idx.shape(path)})"
                check_kind_fits(k, idx.modules[path], where)
        except B.Skip as s:
            skip(group, s.reason, s.detail, comp)
            if s.reason == R.SHAPE_MISMATCH:
                shape_errors.append((group.first_key, f"key {group.first_key!r}: {s.detail}"))
            continue
        except ShapeMismatchError as exc:
            detail = str(exc)
            skip(group, R.SHAPE_MISMATCH, detail, comp)
            shape_errors.append((group.first_key, detail))
            continue
        except NotSeparable as exc:
            skip(group, R.UNSUPPORTED_KIND, f"cannot split onto {', '.join(target.paths)}: {exc}", comp)
            continue
        except LorakitError:
            raise
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            detail = f"key {group.first_key!r} -> {comp} module {first_path!r}: tensors {_shapes(group)} do not fit ({exc})"
            skip(group, R.SHAPE_MISMATCH, detail, comp)
            shape_errors.append((group.first_key, detail))
            continue
        dup = [p for p, _ in placed if (comp, p) in owner]
        if dup:
            skip(group, R.DUPLICATE, f"module {dup[0]!r} already has an adapter from {owner[(comp, dup[0])]!r}", comp)
            continue
        crep = report.components.setdefault(comp, R.ComponentReport(comp))
        crep.matched_keys += len(group.keys)
        for path, k in placed:
            owner[(comp, path)] = group.first_key
            adapters.setdefault(comp, {})[path] = k
            crep.matched_modules += 1
            crep.kinds[k.kind_name] = crep.kinds.get(k.kind_name, 0) + 1
            crep.alpha_sources[src] = crep.alpha_sources.get(src, 0) + 1
            r = k.rank
            if r is not None:
                crep.ranks[r] = crep.ranks.get(r, 0) + 1
            crep.scales[round(k.scale, 6)] = crep.scales.get(round(k.scale, 6), 0) + 1
        if group.duplicates:
            for key in group.duplicates:
                report.skipped.append(R.SkippedKey(key, R.DUPLICATE, comp, group.name, "the same tensor role twice"))
    if config_errors:
        raise FormatError(
            f"{source}: the header's LoRA config does not describe the tensors ({len(config_errors)} module(s)); "
            f"first: {config_errors[0]}",
            report=report,
        )
    for comp, n in alpha_conflicts.items():
        report.warnings.append(
            f"{comp}: {n} module(s) have an .alpha tensor that differs from the header config; the tensor was used"
        )
    return _Outcome(adapters, report, shape_errors)


def _shapes(group: B.Group) -> dict[str, tuple[int, ...]]:
    return {r: tuple(t.shape) for r, t in group.tensors.items()}


def _place(kind: AdapterKind, target: Target, idx: ModuleIndex, ctx: AlphaContext, group: B.Group) -> list[tuple[str, AdapterKind]]:
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
        parts = split_rows(kind, sizes, tuple(in_shape), assume_block=ctx.split_qkv)
        return list(zip(target.paths, parts))
    if target.op == "swap":
        shape = torch.Size(shapes[0])
        kind.check_shape(shape, f"key {group.first_key!r} -> {target.paths[0]} {tuple(shape)}")
        return [(target.paths[0], swap_halves(kind, shape[0], tuple(in_shape)))]
    raise FormatError(f"unknown target op {target.op!r}")  # pragma: no cover


def _group(parsed: list[ParsedKey], sd: Mapping[str, Tensor]) -> tuple[list[B.Group], list[R.SkippedKey]]:
    groups: dict[tuple[str, str], B.Group] = {}
    skipped: list[R.SkippedKey] = []
    conventions = {c.name: c for c in REGISTRY}
    for pk in parsed:
        conv = conventions[pk.convention]
        if not conv.supported and pk.prefix.family != "embedding":
            skipped.append(R.SkippedKey(pk.key, R.UNSUPPORTED_KIND, None, pk.name, conv.description))
            continue
        gk = (pk.prefix.text, pk.name)
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = B.Group(pk.prefix.text, pk.prefix.scope, pk.name, pk.convention)
        g.add(pk, sd[pk.key])
    return list(groups.values()), skipped


def _score(out: _Outcome) -> tuple[int, int]:
    return (out.report.matched_keys - 4 * len(out.shape_errors), -len(out.report.skipped))


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
    try:
        return _to_canonical(state_dict, metadata, components, source, strict, allow_meta)
    except LorakitError:
        raise
    except (RuntimeError, IndexError, TypeError, ValueError, KeyError, AttributeError) as exc:
        # a safety net: malformed input must surface as a lorakit error, never as a bare exception
        raise FormatError(f"{source}: cannot convert this checkpoint ({type(exc).__name__}: {exc})") from exc


def _family_hint(meta: Mapping[str, Any], groups: list, model_family: str | None) -> str:
    """``"; the file looks like an SDXL LoRA ..."`` when header or key names name another family than the model's."""
    if model_family is None:
        return ""
    file_family = family_from_metadata(meta)
    how = "its header"
    if file_family is None:
        cands = family_candidates((g.name for g in groups), (g.scope for g in groups))
        # only the unambiguous signatures: SD3 / aMUSEd names, SDXL's SGM names or a second text encoder
        file_family = cands[0] if cands and cands[0] in ("sd3", "amused", "sdxl") else None
        how = "its key names"
    if file_family is None or file_family == model_family:
        return ""
    if {file_family, model_family} <= {"sd1", "sd2"}:
        return ""  # same key conventions; shapes tell them apart
    return f"; the file looks like a {file_family.upper()} LoRA ({how}) but the model is {model_family.upper()}"


def _to_canonical(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None,
    components: Mapping[str, nn.Module] | None,
    source: str,
    strict: bool,
    allow_meta: bool = False,
) -> Conversion:
    sd, meta = _check_input(state_dict, metadata, source, allow_meta)
    parsed, unclaimed = parse_keys(sd)
    ctx = parse_metadata(meta)
    for comp, cfg in ctx.configs.items():
        if cfg.non_finite:
            raise FormatError(
                f"{source}: the header's {cfg.source}" + (f" for {comp}" if comp else "")
                + f" has non-finite {', '.join(cfg.non_finite)}; no scale can be derived from it"
            )
    groups, skipped_pre = _group(parsed, sd)
    skipped_pre.extend(R.SkippedKey(k, R.UNRECOGNISED, detail="no known key convention") for k in unclaimed)
    fmt = format_name(parsed)
    if components is None:
        fam = family_from_metadata(meta)
        fams = [fam] if fam else family_candidates((g.name for g in groups), (g.scope for g in groups))
        cands = [v for f in fams for v in VARIANTS.get(f, (f,))]
        best: tuple[_Outcome, str] | None = None
        for cand in cands if len(cands) > 1 else []:
            comps = reference_components(cand)
            indexes = {c: build_index(m, c) for c, m in comps.items()}
            out = _convert(groups, list(skipped_pre), indexes, ctx, len(sd), source, fmt, FAMILY_OF[cand], closest_budget=0)
            if best is None or _score(out) > _score(best[0]):
                best = (out, cand)
            if not out.shape_errors and len(out.report.skipped) == len(skipped_pre):
                break  # everything that can land did: no need to try the other candidates
        variant = best[1] if best is not None else cands[0]
        family = FAMILY_OF[variant]
        comps = reference_components(variant)
        indexes = {c: build_index(m, c) for c, m in comps.items()}
        outcome = _convert(groups, list(skipped_pre), indexes, ctx, len(sd), source, fmt, family)
        outcome.report.reference = variant
    else:
        if not isinstance(components, Mapping):
            raise FormatError(f"{source}: components must map names to torch modules")
        components = {c: m for c, m in components.items() if m is not None}  # e.g. SD3 without T5
        if not all(isinstance(c, str) and isinstance(m, nn.Module) for c, m in components.items()):
            raise FormatError(f"{source}: components must map names to torch modules")
        family = family_of_components(components)
        indexes = {c: build_index(m, c) for c, m in components.items()}
        outcome = _convert(groups, skipped_pre, indexes, ctx, len(sd), source, fmt, family)
    rep = outcome.report
    fam_hint = _family_hint(meta, groups, family)
    if outcome.shape_errors:
        key, msg = outcome.shape_errors[0]
        more = len(outcome.shape_errors) - 1
        err = ShapeMismatchError(
            f"{source}: {len(outcome.shape_errors)} adapter(s) do not fit the model"
            + (f" (family {family})" if family else "")
            + fam_hint
            + f"; first: {msg}"
            + (f" (+{more} more: {summarize(k for k, _ in outcome.shape_errors[1:])})" if more else ""),
            report=rep,
        )
        raise err
    if rep.matched_keys == 0:
        first = [s for s in rep.skipped if s.reason == R.NO_SUCH_MODULE][:1]
        hint = ""
        if first and first[0].closest:
            hint = f"; closest modules to {first[0].module!r}: {summarize(first[0].closest)}"
        elif indexes:
            comp0 = next(iter(indexes))
            names = [s.module for s in rep.skipped if s.module][:1]
            if names:
                near = closest(names[0].replace("_", "."), list(indexes[comp0].modules))
                hint = f"; closest {comp0} modules to {names[0]!r}: {summarize(near)}" if near else ""
        reasons = Counter(s.reason for s in rep.skipped)
        err2 = KeyMismatchError(
            f"{source}: no key matched the model{fam_hint} ({len(sd)} keys, format {rep.format}, components "
            f"{summarize(indexes) or 'none'}; {', '.join(f'{r}: {n}' for r, n in reasons.items()) or 'empty'}); "
            f"first keys: {summarize(list(sd)[:5])}{hint}",
            report=rep,
        )
        raise err2
    if strict and rep.skipped:
        reasons = Counter(s.reason for s in rep.skipped)
        err3 = KeyMismatchError(
            f"{source}: strict load: {len(rep.skipped)} of {len(sd)} keys not loaded "
            f"({', '.join(f'{r}: {n}' for r, n in reasons.items())}): {summarize(s.key for s in rep.skipped)}",
            report=rep,
        )
        raise err3
    if fam_hint:
        logger.warning("%s: %s", source, fam_hint.removeprefix("; "))
    if rep.skipped:
        logger.warning("%s: %d of %d keys not loaded: %s", source, len(rep.skipped), len(sd),
                       summarize(f"{s.key} ({s.reason})" for s in rep.skipped))
    return Conversion(format=rep.format, adapters=outcome.adapters, report=rep, family=family)
