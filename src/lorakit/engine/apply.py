"""Per-module maths: the unfused ("sidecar") forward and the fused weight computation.

A target module keeps its class, its parameters and its ``state_dict`` keys. lorakit adds a forward hook that adds
the active adapters' contribution to the module's output. The hook reads a *combined* form of the active set that is
rebuilt lazily whenever the manager's state version changes:

* every low-rank contribution (LoRA/LoCon, Tucker folded in) is stacked into one ``down`` (R_total, in[, kh, kw]) and
  one ``up`` (out, R_total) with each adapter's weight and alpha/rank folded into ``up``, so any number of active LoRAs
  costs one pair of matmuls (or convolutions);
* every other kind (LoHa, LoKr, full, DoRA) is summed into one dense delta;
* bias deltas are summed into one vector.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ShapeMismatchError
from ..kinds import AdapterKind

logger = logging.getLogger(__name__)

#: module classes lorakit can patch, unfused and fused.
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.Conv1d, nn.LayerNorm, nn.GroupNorm)


def weight_of(module: nn.Module) -> Tensor:
    """The module's weight (typed: ``nn.Module.__getattr__`` is not)."""
    return cast(Tensor, module.weight)


def bias_of(module: nn.Module) -> Tensor | None:
    """The module's bias, or ``None``."""
    return cast("Tensor | None", module.bias)


def is_supported(module: nn.Module) -> bool:
    """Whether lorakit can attach adapters to this module."""
    return isinstance(module, SUPPORTED_MODULES) and getattr(module, "weight", None) is not None


def check_kind_fits(kind: AdapterKind, module: nn.Module, where: str) -> None:
    """Raise :class:`ShapeMismatchError` unless ``kind`` fits ``module``: the engine says whether it can patch the
    module at all, the kind whether its tensors fit (:meth:`AdapterKind.check_fits`)."""
    if not is_supported(module):
        raise ShapeMismatchError(f"{where}: module type {type(module).__name__} cannot take adapters")
    norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm))
    kind.check_fits(weight_of(module).shape, where, norm=norm, has_bias=bias_of(module) is not None)


@dataclass(eq=False)
class Combined:
    """The active set of one module, ready for the forward hook (one device and dtype)."""

    version: int
    device: torch.device
    dtype: torch.dtype
    down: Tensor | None = None  # (R, in) or (R, in, kh, kw)
    up: Tensor | None = None  # (out, R) or (out, R, 1, 1)
    dense: Tensor | None = None  # weight-shaped
    bias: Tensor | None = None  # (out,)
    #: True for the "merged" form (below), False for the low-rank / dense form above
    merged: bool = False
    # "merged" strategy: the module's weight/bias with the active set folded in (original dtype)
    merged_weight: Tensor | None = None
    merged_bias: Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.down is None and self.dense is None and self.bias is None and self.merged_weight is None


Contribution = tuple[AdapterKind, float]


def combine(
    module: nn.Module,
    original: Callable[[], Tensor],
    contributions: Iterable[Contribution],
    device: torch.device,
    dtype: torch.dtype,
    version: int,
) -> Combined:
    """Build the :class:`Combined` form of ``contributions`` (kind, weight) for ``module``.

    ``original`` gives the module's untouched weight; it is called only for kinds that need a dense delta.
    """
    downs: list[Tensor] = []
    ups: list[Tensor] = []
    dense: Tensor | None = None
    bias: Tensor | None = None
    base_shape = weight_of(module).shape
    lowrank_ok = isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
    )
    original_weight: Tensor | None = None
    for kind, weight in contributions:
        if weight == 0.0:
            continue
        kind = kind.to(device)  # no copy when it is already there
        factors = kind.low_rank(base_shape) if lowrank_ok else None
        if factors is not None:
            d, u = factors
            downs.append(d)
            ups.append(u * weight)
        else:
            if original_weight is None:
                original_weight = original().to(device)
            delta = kind.delta_weight(original_weight) * weight
            dense = delta if dense is None else dense + delta
        b = kind.delta_bias()
        if b is not None:
            b = b * weight
            bias = b if bias is None else bias + b
    out = Combined(version=version, device=device, dtype=dtype)
    if downs:
        out.down = torch.cat(downs, 0).to(dtype)
        up = torch.cat(ups, 1).to(dtype)
        out.up = up if isinstance(module, nn.Linear) else up[:, :, None, None]
    if dense is not None:
        out.dense = dense.to(dtype)
    if bias is not None:
        out.bias = bias.to(dtype)
    return out


def sidecar_output(module: nn.Module, x: Tensor, y: Tensor, c: Combined, scale: float) -> Tensor:
    """``y`` (the module's own output for input ``x``) plus the combined adapters' contribution."""
    if isinstance(module, nn.Linear):
        if c.down is not None and c.up is not None:
            h = F.linear(x, c.down)
            if scale != 1.0:
                h = h * scale
            y = y + F.linear(h, c.up)
        if c.dense is not None:
            d = F.linear(x, c.dense)
            y = y + (d * scale if scale != 1.0 else d)
        if c.bias is not None:
            y = y + (c.bias * scale if scale != 1.0 else c.bias)
        return y
    if isinstance(module, (nn.Conv2d, nn.Conv1d)):
        conv = F.conv2d if isinstance(module, nn.Conv2d) else F.conv1d
        if c.down is not None and c.up is not None:
            h = conv(x, c.down, None, module.stride, module.padding, module.dilation)
            if scale != 1.0:
                h = h * scale
            y = y + conv(h, c.up)
        if c.dense is not None:
            d = module._conv_forward(x, c.dense, None)
            y = y + (d * scale if scale != 1.0 else d)
        if c.bias is not None:
            b = c.bias * scale if scale != 1.0 else c.bias
            y = y + b.reshape(1, -1, *([1] * (y.dim() - 2)))
        return y
    # Norm layers: the output is not linear in the weight delta's input, so recompute with patched affine params.
    w = weight_of(module)
    if c.dense is not None:
        w = w + c.dense.reshape(w.shape) * scale
    nb = bias_of(module)
    if c.bias is not None:
        nb = (nb if nb is not None else torch.zeros_like(c.bias)) + c.bias * scale
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, w, nb, module.eps)
    assert isinstance(module, nn.GroupNorm)
    return F.group_norm(x, module.num_groups, w, nb, module.eps)


def fused_params(
    module: nn.Module,
    original: tuple[Tensor, Tensor | None],
    contributions: Iterable[Contribution],
    dtype: torch.dtype | None = None,
    base: tuple[Tensor, Tensor | None] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``W + Σ wᵢ·ΔWᵢ`` (and the bias) computed in fp32 from the original and cast once to the module's dtype.

    ``original`` is the module's untouched ``(weight, bias)``; ``base`` replaces it as the starting point (the merged
    strategy starts from the fused weights); deltas that depend on the weight (DoRA, OFT) always see the original.
    """
    device = weight_of(module).device
    w_orig = original[0].to(device)
    w0, b0 = base if base is not None else original
    w0 = w0.to(device)
    start = w0.flatten(1) if w0.dtype == torch.float32 else w0.float().flatten(1)
    # One new tensor per module: addmm/add write W + w·ΔW straight into it (no clone, no ΔW temporary for LoRA).
    acc: Tensor | None = None
    bacc: Tensor | None = None
    for kind, weight in contributions:
        if weight == 0.0:
            continue
        kind = kind.to(device)
        factors = kind.low_rank(w0.shape)
        if factors is not None:
            down, up = factors
            if acc is None:
                acc = torch.addmm(start, up, down.flatten(1), alpha=weight)
            else:
                acc.addmm_(up, down.flatten(1), alpha=weight)
        else:
            delta = kind.delta_weight(w_orig).flatten(1)
            if acc is None:
                acc = torch.add(start, delta, alpha=weight)
            else:
                acc.add_(delta, alpha=weight)
        db = kind.delta_bias()
        if db is not None:
            db = db.to(device) * weight
            bacc = db if bacc is None else bacc + db
    if acc is None:
        acc = start.clone()
    out_dtype = dtype or weight_of(module).dtype
    new_w = acc.reshape(w0.shape).to(out_dtype)
    new_b: Tensor | None = None
    if bacc is not None:
        base_b = b0.to(device) if b0 is not None else torch.zeros_like(bacc)
        new_b = (base_b.float() + bacc).to(b0.dtype if b0 is not None else out_dtype)
    return new_w, new_b


def all_finite(tensors: Iterable[Tensor | None]) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)

