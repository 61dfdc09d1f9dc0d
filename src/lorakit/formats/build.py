"""Groups of tensors (one module's keys) -> canonical kinds. Each kind claims its own roles; leftovers are reported."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .. import report as R
from ..errors import DTypeError, FormatError
from ..kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA
from .keys import UNSUPPORTED_ROLES, ParsedKey


class Skip(Exception):
    """A group that does not become an adapter (reason + detail go to the report)."""

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
    convention: str
    tensors: dict[str, Tensor] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # role -> key
    attnproc: bool = False
    duplicates: list[str] = field(default_factory=list)

    def add(self, pk: ParsedKey, tensor: Tensor) -> None:
        if pk.role in self.tensors:
            self.duplicates.append(pk.key)
            return
        self.tensors[pk.role] = tensor
        self.keys[pk.role] = pk.key
        self.attnproc = self.attnproc or pk.attnproc
        if pk.style != "neutral":
            self.convention = pk.convention

    @property
    def first_key(self) -> str:
        return next(iter(self.keys.values()))


LORA_ROLES = {"down", "up", "mid", "bias"}
LOHA_ROLES = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
LOKR_ROLES = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t1", "lokr_t2"}
FULL_ROLES = {"diff", "diff_b", "w_norm", "b_norm"}
SCALAR_ROLES = {"alpha", "scale"}
DORA_ROLES = {"dora_scale", "magnitude"}


def scalar(t: Tensor, key: str) -> float | None:
    """The value of a 0-d / one-element tensor (``.alpha``, ``.scale``); ``None`` for a meta tensor (no data)."""
    if t.numel() != 1:
        raise FormatError(f"key {key!r}: expected a scalar, got a tensor of shape {tuple(t.shape)}")
    if t.is_complex():
        raise DTypeError(f"key {key!r}: complex scalar")
    if t.device.type == "meta":
        return None
    return float(t.reshape(()).item())


def check_float(group: Group) -> None:
    for role, t in group.tensors.items():
        if role in SCALAR_ROLES or role in ("on_input",):
            continue
        if not t.is_floating_point():
            raise DTypeError(f"key {group.keys[role]!r}: adapter tensors must be floating point, got {t.dtype}")


def kind_of(group: Group) -> str:
    """Which algorithm a group holds: "lora", "loha", "lokr", "full", or raise :class:`Skip`."""
    roles = set(group.tensors)
    unsupported = sorted({UNSUPPORTED_ROLES[r] for r in roles if r in UNSUPPORTED_ROLES})
    if "embedding" in roles:
        raise Skip(R.UNSUPPORTED_KIND, "embedded textual inversion (bundle_emb); load it as a textual inversion")
    if "oft_blocks" in roles and group.tensors["oft_blocks"].dim() == 4:
        unsupported = ["BOFT"]
    if "plain_weight" in roles and "on_input" in roles:
        unsupported = ["(IA)^3"]
    if unsupported:
        raise Skip(R.UNSUPPORTED_KIND, f"{'/'.join(unsupported)} adapters are not supported")
    found = [
        name
        for name, rs in (("lora", {"down", "up", "mid"}), ("loha", LOHA_ROLES), ("lokr", LOKR_ROLES), ("full", FULL_ROLES))
        if roles & rs
    ]
    if len(found) > 1:
        raise Skip(R.UNSUPPORTED_KIND, f"tensors of several algorithms on one module ({', '.join(found)})")
    if not found:
        leftover = sorted(roles - SCALAR_ROLES)
        if leftover and all(r.startswith("plain_") for r in leftover):
            raise Skip(R.UNRECOGNISED, "a plain weight/bias, not an adapter tensor")
        raise Skip(R.INCOMPLETE, f"only {', '.join(sorted(roles))} for this module, no adapter weights")
    return found[0]


def _need(group: Group, *roles: str) -> list[Tensor]:
    missing = [r for r in roles if r not in group.tensors]
    if missing:
        raise Skip(R.INCOMPLETE, f"missing {', '.join(missing)}")
    return [group.tensors[r] for r in roles]


def rank_of(group: Group, kind: str) -> int | None:
    t = group.tensors
    if kind == "lora":
        down = _need(group, "down")[0]
        return int(down.shape[0]) if down.dim() >= 1 else None
    if kind == "loha":
        w1b = _need(group, "hada_w1_b")[0]
        return int(w1b.shape[0]) if w1b.dim() >= 1 else None
    if kind == "lokr":
        for r in ("lokr_w1_b", "lokr_w2_b"):
            if r in t and t[r].dim() >= 1:
                return int(t[r].shape[0])
    return None


def build(group: Group, kind: str, alpha: float | None) -> AdapterKind:
    """The canonical kind of a group (without DoRA; see :func:`wrap_dora`)."""
    t = group.tensors
    if kind == "lora":
        down, up = _need(group, "down", "up")
        return LoRA(down=down, up=up, alpha=alpha, mid=t.get("mid"), bias=t.get("bias"))
    if kind == "loha":
        w1a, w1b, w2a, w2b = _need(group, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        t1, t2 = t.get("hada_t1"), t.get("hada_t2")
        if (t1 is None) != (t2 is None):
            raise Skip(R.INCOMPLETE, "LoHa Tucker needs both hada_t1 and hada_t2")
        return LoHa(w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b, alpha=alpha, t1=t1, t2=t2)
    if kind == "lokr":
        if "lokr_t1" in t:
            raise Skip(R.UNSUPPORTED_KIND, "LoKr with lokr_t1 (a Tucker first factor) is not written by any known trainer")
        has1 = "lokr_w1" in t or ("lokr_w1_a" in t and "lokr_w1_b" in t)
        has2 = "lokr_w2" in t or ("lokr_w2_a" in t and "lokr_w2_b" in t)
        if not (has1 and has2):
            raise Skip(R.INCOMPLETE, "LoKr needs lokr_w1 (or lokr_w1_a+b) and lokr_w2 (or lokr_w2_a+b)")
        return LoKr(
            w1=t.get("lokr_w1"),
            w1a=t.get("lokr_w1_a"),
            w1b=t.get("lokr_w1_b"),
            w2=t.get("lokr_w2"),
            w2a=t.get("lokr_w2_a"),
            w2b=t.get("lokr_w2_b"),
            t2=t.get("lokr_t2"),
            alpha=alpha,
        )
    diff = t.get("diff", t.get("w_norm"))
    diff_b = t.get("diff_b", t.get("b_norm"))
    return Full(diff=diff, diff_b=diff_b)


def dora_axis(scale: Tensor) -> str:
    """LyCORIS ``dora_scale`` axis from its shape: (out, 1[, 1, 1]) -> "out", (1, in[, 1, 1]) -> "in"."""
    shape = tuple(scale.shape)
    if len(shape) <= 1 or all(s == 1 for s in shape[1:]):
        return "out"
    if shape[0] == 1:
        return "in"
    raise Skip(R.SHAPE_MISMATCH, f"dora_scale of shape {shape} is neither (out, 1, ...) nor (1, in, ...)")


def wrap_dora(group: Group, inner: AdapterKind) -> AdapterKind:
    t = group.tensors
    if "magnitude" in t:  # PEFT lora_magnitude_vector: (out,) or (1, out, 1, 1), always per output row
        return DoRA(inner=inner, magnitude=t["magnitude"].flatten(), axis="out")
    if "dora_scale" in t:
        return DoRA(inner=inner, magnitude=t["dora_scale"].flatten(), axis=dora_axis(t["dora_scale"]))
    return inner
