"""Per-block adapter weights (``set_adapters(..., {"unet": {"down": 0.9, "mid": 0.5, "up": {...}}})``) as data.

A *block table* says, per denoiser class, which part of a module path names a block and a layer inside it. Expanding
a user's block dict gives a function ``module path -> weight`` that the manager multiplies into that adapter's
contribution (``AdapterManager.set_adapters(names, [fn])``).

UNet (SD1/SD2/SDXL), the diffusers layout (``diffusers.loaders.unet_loader_utils``)::

    {"down": 0.9,                                   # every down block, every layer
     "mid": 0.5,                                    # mid_block
     "up": {"block_0": 0.6, "block_1": [0.4, 0.8, 1.0]}}   # per block; a list gives one weight per layer

Layer ``j`` of ``down_blocks.i`` is ``resnets.j`` + ``attentions.j`` (so a list entry also weights the resnet that
precedes the attention, which is what diffusers' fallback does too); samplers take layer 0's weight; ``mid`` covers
all of ``mid_block``. Unlisted blocks and modules outside the blocks (``conv_in``, ``time_embedding``,
``add_embedding``, ``conv_out``...) get 1.0.

SD3 transformer: ``{"block_0": 0.5, "block_3": 0.0}`` (or integer keys, or a list with one weight per block) over
``transformer_blocks.i``. aMUSEd UVit2D: the same over ``transformer_layers.i``, plus ``"down"`` / ``"up"`` for
``down_block`` / ``up_block``. Unlisted blocks and other modules get 1.0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .. import families
from ..engine import as_number, is_scalar
from ..errors import AdapterWeightError, KeyMismatchError, did_you_mean, summarize
from ..families import BlockTable

__all__ = ["table_for", "expand_block_weights"]

BlockSpec = float | int | Sequence[float] | Mapping[str, Any]


_UNET_LAYER = re.compile(r"^(down|up)_blocks\.(\d+)\.([a-z_]+)\.(\d+)(?:\.|$)")
_UNET_BLOCK = re.compile(r"^(down|up)_blocks\.(\d+)(?:\.|$)")


def table_for(model: nn.Module) -> BlockTable | None:
    """The block table of ``model``'s family (found by its class or a base class), ``None`` when it has none."""
    for cls in type(model).__mro__:
        for fam in families.of_denoiser(cls.__name__):
            return fam.blocks
    return None


def _num(value: Any, where: str) -> float:
    return as_number(value, f"block weight {where}")


def _block_index(key: Any, count: int, where: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        idx = key
    elif isinstance(key, str) and re.fullmatch(r"block_\d+", key):
        idx = int(key[6:])
    elif isinstance(key, str) and key.isdigit():
        idx = int(key)
    else:
        raise AdapterWeightError(f"block weight key {where}{key!r}: expected 'block_<i>' or an integer")
    if not 0 <= idx < count:
        raise KeyMismatchError(f"block weight key {where}{key!r}: the model has blocks 0..{count - 1}")
    return idx


def _unet_layers(model: nn.Module) -> dict[str, list[int]]:
    """Per direction, the number of layers (resnets) of each block."""
    out: dict[str, list[int]] = {}
    for direction in ("down", "up"):
        blocks = getattr(model, f"{direction}_blocks", None) or []
        out[direction] = [len(getattr(b, "resnets", [])) or 1 for b in blocks]
    return out


def _expand_unet(spec: Mapping[str, Any], model: nn.Module) -> Callable[[str], float]:
    unknown = [k for k in spec if k not in ("down", "mid", "up")]
    if unknown:
        raise KeyMismatchError(
            f"unet block weights: unknown key(s) {summarize(unknown)} (expected down, mid, up)"
            + did_you_mean(str(unknown[0]), ["down", "mid", "up"])
        )
    layers = _unet_layers(model)
    # (direction, block) -> per-layer weights
    table: dict[tuple[str, int], list[float]] = {}
    for direction in ("down", "up"):
        if direction not in spec:
            continue
        value = spec[direction]
        counts = layers[direction]
        if isinstance(value, Mapping):
            per_block = {_block_index(k, len(counts), f"{direction}."): v for k, v in value.items()}
        else:
            per_block = dict.fromkeys(range(len(counts)), value)
        for i, v in per_block.items():
            n = counts[i]
            if isinstance(v, Sequence) and not isinstance(v, str):
                vals = [_num(x, f"{direction}.block_{i}") for x in v]
                if len(vals) == 1:
                    vals = vals * n
                if len(vals) != n:
                    raise AdapterWeightError(
                        f"block weight {direction}.block_{i}: {len(vals)} values for a block of {n} layers"
                    )
            else:
                vals = [_num(v, f"{direction}.block_{i}")] * n
            table[(direction, i)] = vals
    mid: float | None = None
    if "mid" in spec:
        m = spec["mid"]
        if isinstance(m, Sequence) and not isinstance(m, str):
            if len(m) != 1:
                raise AdapterWeightError(f"block weight mid: expected 1 value, got {len(m)}")
            m = m[0]
        mid = _num(m, "mid")

    def weight(path: str) -> float:
        if path.startswith("mid_block"):
            return 1.0 if mid is None else mid
        m = _UNET_LAYER.match(path)
        if m is not None:
            vals = table.get((m.group(1), int(m.group(2))))
            if vals is None:
                return 1.0
            j = int(m.group(4)) if m.group(3) in ("resnets", "attentions") else 0
            return vals[min(j, len(vals) - 1)]
        b = _UNET_BLOCK.match(path)
        if b is not None:
            vals = table.get((b.group(1), int(b.group(2))))
            return 1.0 if vals is None else vals[0]
        return 1.0

    return weight


def _expand_transformer(spec: BlockSpec, model: nn.Module, t: BlockTable) -> Callable[[str], float]:
    # blocks are numbered over every list in order (Flux: the double blocks, then the single ones)
    starts: list[tuple[str, int]] = []
    count = 0
    for attr in t.block_lists:
        blocks = getattr(model, attr, None)
        starts.append((attr, count))
        count += len(blocks) if blocks is not None else 0
    named = dict(t.named)
    per_block: dict[int, float] = {}
    per_named: dict[str, float] = {}
    if isinstance(spec, Mapping):
        for k, v in spec.items():
            if isinstance(k, str) and k in named:
                per_named[named[k]] = _num(v, k)
            else:
                try:
                    idx = _block_index(k, count, "")
                except AdapterWeightError:
                    options = [f"block_{i}" for i in range(count)] + list(named)
                    raise KeyMismatchError(
                        f"block weight key {k!r}: expected block_0..block_{count - 1}"
                        + (f" or {', '.join(named)}" if named else "")
                        + did_you_mean(str(k), options)
                    ) from None
                per_block[idx] = _num(v, str(k))
    else:
        values = list(spec)  # type: ignore[arg-type]
        if len(values) != count:
            raise AdapterWeightError(f"block weights: {len(values)} values for {count} blocks ({', '.join(t.block_lists)})")
        per_block = {i: _num(v, f"block_{i}") for i, v in enumerate(values)}
    patterns = [(re.compile(rf"^{re.escape(attr)}\.(\d+)(?:\.|$)"), start) for attr, start in starts]

    def weight(path: str) -> float:
        for pattern, start in patterns:
            m = pattern.match(path)
            if m is not None:
                return per_block.get(start + int(m.group(1)), 1.0)
        for prefix, w in per_named.items():
            if path == prefix or path.startswith(prefix + "."):
                return w
        return 1.0

    return weight


def expand_block_weights(spec: BlockSpec, model: nn.Module, component: str = "") -> float | Callable[[str], float]:
    """Turn one component's weight spec into what :meth:`AdapterManager.set_adapters` takes.

    Args:
        spec: a number (returned as a float), or a block dict / list (see the module docstring).
        model: the component model (its class picks the block table; its block counts validate the spec).
        component: the component name, for messages.

    Returns:
        A float, or a function ``module path -> weight``.

    Raises:
        AdapterWeightError / KeyMismatchError: the spec names blocks the model does not have, gives the wrong number
        of layer weights, or the model has no block table (text encoders).

    Example:
        >>> fn = expand_block_weights({"down": 0.5, "up": {"block_0": [1.0, 0.0, 0.25]}}, unet)  # doctest: +SKIP
        >>> fn("up_blocks.0.attentions.2.transformer_blocks.0.attn1.to_q")  # doctest: +SKIP
        0.25
    """
    if is_scalar(spec):
        return as_number(spec, f"{component or 'adapter'} weight")
    t = table_for(model)
    if t is None:
        raise AdapterWeightError(
            f"{component or type(model).__name__}: per-block weights are not supported for a "
            f"{type(model).__name__}; give one number"
        )
    if t.kind == "unet":
        if not isinstance(spec, Mapping):
            raise AdapterWeightError(
                f"{component or 'unet'}: a weight must be a number, or block weights as a dict with down / mid / up "
                f"keys; got {type(spec).__name__}"
            )
        return _named(component, lambda: _expand_unet(spec, model))
    if not isinstance(spec, (Mapping, Sequence)) or isinstance(spec, str):
        raise AdapterWeightError(
            f"{component}: a weight must be a number, or block weights as a dict or a list; got {type(spec).__name__}"
        )
    return _named(component, lambda: _expand_transformer(spec, model, t))


def _named(component: str, expand: Callable[[], Callable[[str], float]]) -> Callable[[str], float]:
    """Run ``expand``; its block-weight errors name the component (and adapter) they are about."""
    if not component:
        return expand()
    try:
        return expand()
    except (AdapterWeightError, KeyMismatchError) as exc:
        raise type(exc)(f"{component}: {exc}") from None
