"""One module's keys (a :class:`Group`) -> the kind that claims them, through the registry of kinds.

The claim order is ``kinds.KINDS`` then ``kinds.NOT_APPLIED``: the first kind whose ``claims`` accepts the group's
roles takes it; a group a second kind also claims is reported (tensors of several algorithms), not guessed. A kind of
``NOT_APPLIED`` is reported as unsupported, by its name. Roles the winner, the wrappers (DoRA) and the neutral
``alpha`` / ``scale`` do not use are reported key by key (:func:`leftovers`): nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .. import kinds
from .. import report as R
from ..errors import DTypeError, FormatError, ShapeMismatchError
from ..kinds import AdapterKind, KeySource
from .alphas import parse_metadata, resolve_alpha
from .keys import NEUTRAL, PLAIN_ROLES, SCALAR_ROLES, ParsedKey


class Skip(Exception):
    """A group (or a key of one) that does not become an adapter: the report's reason and a one-line detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Group:
    """The keys of one module as named in the file."""

    prefix_text: str
    scope: str | None
    name: str
    layout: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # role -> key
    attnproc: bool = False
    duplicates: list[str] = field(default_factory=list)
    #: the suffix styles of the keys (``alpha``'s neutral style aside)
    styles: set[str] = field(default_factory=set)

    def add(self, pk: ParsedKey, tensor: Tensor) -> None:
        if pk.role in self.tensors:
            self.duplicates.append(pk.key)
            return
        self.tensors[pk.role] = tensor
        self.keys[pk.role] = pk.key
        self.attnproc = self.attnproc or pk.attnproc
        if pk.style != NEUTRAL:
            self.layout = pk.layout
            self.styles.add(pk.style)

    @property
    def first_key(self) -> str:
        return next(iter(self.keys.values()))


def module_name(pk: ParsedKey) -> str:
    """The module a key names, spelled once per naming scheme: under an underscored prefix every '.' is a '_'
    (diffusers' kohya export writes ``lora_unet_…_attn1.to_k.lora_magnitude_vector`` beside
    ``lora_unet_…_attn1_to_k.lora_down.weight``: one module), dotted names as written."""
    return pk.name.replace(".", "_") if pk.prefix.naming == "underscored" else pk.name


def group_keys(parsed: list[ParsedKey], state_dict: dict[str, Tensor]) -> list[Group]:
    """The parsed keys grouped by (prefix, module name), in file order."""
    groups: dict[tuple[str, str], Group] = {}
    for pk in parsed:
        name = module_name(pk)
        gk = (pk.prefix.text, name)
        g = groups.get(gk)
        if g is None:
            g = groups[gk] = Group(pk.prefix.text, pk.prefix.scope, name, pk.layout)
        g.add(pk, state_dict[pk.key])
    return list(groups.values())


def _not_applied(roles: set[str]) -> list[type[AdapterKind]]:
    """The recognised-but-not-applied kinds whose vocabulary holds any of ``roles``."""
    return [k for k in kinds.NOT_APPLIED if not k.roles().isdisjoint(roles)]


def _names(found: list[type[AdapterKind]]) -> str:
    return "/".join(dict.fromkeys(k.display for k in found))


def claim(group: Group) -> type[AdapterKind]:
    """The kind that claims the group, or :class:`Skip` (embedded embeddings, several or no kinds, not applied)."""
    roles = group.tensors
    if "embedding" in roles:
        raise Skip(R.UNSUPPORTED_KIND, "embedded textual inversion (bundle_emb); load it as a textual inversion")
    claimants = [k for k in (*kinds.KINDS, *kinds.NOT_APPLIED) if k.claims(roles)]
    if len(claimants) > 1:
        raise Skip(R.UNSUPPORTED_KIND, f"tensors of several algorithms on one module ({', '.join(k.display for k in claimants)})")
    if not claimants:
        rest = set(roles) - SCALAR_ROLES
        recognised = _not_applied(rest)
        if recognised:
            raise Skip(R.UNSUPPORTED_KIND, f"unsupported kind {_names(recognised)} (tensors {', '.join(sorted(rest))})")
        if rest and rest <= PLAIN_ROLES:
            raise Skip(R.UNRECOGNISED, "a plain weight/bias, not an adapter tensor")
        raise Skip(R.INCOMPLETE, f"only {', '.join(sorted(roles))} for this module, no adapter weights")
    kind = claimants[0]
    if kind in kinds.NOT_APPLIED:
        raise Skip(R.UNSUPPORTED_KIND, f"unsupported kind {kind.display} ({group.layout} layout): recognised, not applied")
    return kind


def check_float(group: Group, kind: type[AdapterKind]) -> None:
    """:class:`DTypeError` unless the tensors the kind (and the wrappers) read are floating point."""
    used = kind.roles() | {r for w in kinds.WRAPPERS for r in w.roles()}
    for role, t in group.tensors.items():
        if role in used and role not in kind.FLAG_ROLES and not t.is_floating_point():
            raise DTypeError(f"key {group.keys[role]!r}: adapter tensors must be floating point, got {t.dtype}")


def leftovers(group: Group, used: set[str]) -> list[tuple[str, str, str]]:
    """``(key, reason, detail)`` for every key of the group outside ``used`` (and outside alpha / scale)."""
    out: list[tuple[str, str, str]] = []
    for role, key in group.keys.items():
        if role in used or role in SCALAR_ROLES:
            continue
        found = _not_applied({role})
        owners = [k for k in kinds.KINDS if role in k.roles()] if role not in PLAIN_ROLES else []
        if found:
            out.append((key, R.UNSUPPORTED_KIND, f"unsupported kind {_names(found)} (a {role} tensor)"))
        elif owners:
            out.append((key, R.UNSUPPORTED_KIND, f"a {_names(owners)} tensor ({role}) beside another kind's: tensors "
                        "of several algorithms on one module"))
        else:
            out.append((key, R.UNRECOGNISED, f"{role} is not part of the module's adapter"))
    return out


def scalar(t: Tensor, key: str) -> float | None:
    """The value of a 0-d / one-element tensor (``.alpha``, ``.scale``); ``None`` for a meta tensor (no data)."""
    if t.numel() != 1:
        raise FormatError(f"key {key!r}: expected a scalar, got a tensor of shape {tuple(t.shape)}")
    if t.is_complex():
        raise DTypeError(f"key {key!r}: complex scalar")
    if t.device.type == "meta":
        return None
    return float(t.reshape(()).item())


def file_adapters(
    state_dict: Mapping[str, Tensor], metadata: Mapping[str, Any] | None = None
) -> list[tuple[Group, AdapterKind]]:
    """Every module's adapter as the file alone describes it: its keys claimed and built by their kind, alpha
    resolved from the module's own tensors and the header, the wrappers applied; no model, so no name is resolved
    and no shape is checked against a weight (what ``lorakit.inspect`` reports as the file's kinds, ranks and alphas,
    whether or not the file fits a model). Modules whose keys make no adapter are left out (a load reports them)."""
    from .registry import parse_keys  # registry imports the layouts, which import this module's neighbours

    sd = dict(state_dict)
    parsed, _ = parse_keys(sd)
    ctx = parse_metadata(metadata)
    out: list[tuple[Group, AdapterKind]] = []
    for group in group_keys(parsed, sd):
        t = group.tensors
        try:
            kind_cls = claim(group)
            check_float(group, kind_cls)
            kind = kind_cls.from_roles(t, KeySource(group.layout, metadata or {}))
            t_alpha = scalar(t["alpha"], group.keys["alpha"]) if "alpha" in t else None
            t_scale = scalar(t["scale"], group.keys["scale"]) if "scale" in t else None
            kxk = any(v.dim() == 4 and (v.shape[-1] > 1 or v.shape[-2] > 1) for v in t.values())
            alpha, _ = resolve_alpha(ctx, group.scope or "", [group.name], kind.rank, t_alpha, t_scale, kxk)
            kind = kind.with_alpha(alpha)
            for wrapper in kinds.WRAPPERS:
                kind, _ = wrapper.wrap(kind, t)
        except (Skip, DTypeError, FormatError, ShapeMismatchError):  # FormatError: the kinds' own errors too
            continue
        out.append((group, kind))
    return out
