"""The canonical adapter representation shared by every kind.

A kind is a frozen dataclass of tensors (plus ``alpha`` and a few plain fields). It knows two things:

* ``delta_weight(base)``: the weight delta at strength 1, in fp32, shaped like ``base`` (used for fusing and for the
  dense unfused path). ``base`` is passed so that DoRA, whose delta depends on the original weight, fits the same
  signature.
* ``low_rank(base_shape)``: when the delta is a product ``up @ down`` the two factors (alpha/rank folded into ``up``)
  so several adapters can be stacked into one pair of matmuls; ``None`` for kinds that are not low rank.

Moving, casting, counting bytes and listing tensors are derived once here from the dataclass fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..errors import ShapeMismatchError

K = TypeVar("K", bound="AdapterKind")


def _map_value(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, AdapterKind):
        return value.map_tensors(fn)
    return value


class AdapterKind:
    """Base class of canonical adapter kinds (subclasses are frozen dataclasses)."""

    #: short name used in reports ("lora", "loha", ...)
    kind_name: ClassVar[str] = "base"
    #: whether the kind applies to norm layers (LayerNorm / GroupNorm affine parameters)
    applies_to_norm: ClassVar[bool] = False

    # -- maths -------------------------------------------------------------------------------------------------
    def delta_weight(self, base: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Weight delta at strength 1, fp32, shaped like ``base``."""
        raise NotImplementedError

    def delta_bias(self) -> Tensor | None:
        """Bias delta at strength 1 (fp32) or ``None``."""
        return None

    def low_rank(self, base_shape: torch.Size) -> tuple[Tensor, Tensor] | None:
        """``(down, up)`` in fp32 with the scale folded into ``up``, or ``None`` if the kind is not low rank.

        ``down`` has the layout of a weight of the layer (``(r, in)`` for Linear, ``(r, in, kh, kw)`` for Conv2d) and
        ``up`` is ``(out, r)``.
        """
        return None

    @property
    def rank(self) -> int | None:
        """The adapter rank, or ``None`` where the notion does not apply."""
        return None

    @property
    def scale(self) -> float:
        """The alpha/rank factor this kind applies (1.0 where it has none)."""
        return 1.0

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        """Raise :class:`ShapeMismatchError` unless the delta has ``base_shape``.

        The default computes the delta on a meta tensor, which checks every factor without arithmetic.
        """
        try:
            meta = self.map_tensors(lambda t: torch.empty(t.shape, device="meta", dtype=torch.float32))
            delta = meta.delta_weight(torch.empty(base_shape, device="meta"))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ShapeMismatchError(
                f"{where or self.kind_name}: adapter tensors {self.shapes()} do not combine: {exc}"
            ) from None
        if delta.numel() != torch.Size(base_shape).numel():
            raise ShapeMismatchError(
                f"{where or self.kind_name}: adapter delta of {delta.numel()} values does not fit a weight of shape "
                f"{tuple(base_shape)} (tensors {self.shapes()})"
            )
        bias = meta.delta_bias()
        if bias is not None and bias.numel() != base_shape[0]:
            raise ShapeMismatchError(
                f"{where or self.kind_name}: bias delta of {bias.numel()} values for {base_shape[0]} outputs"
            )

    # -- hotswap -------------------------------------------------------------------------------------------------
    def padded(self: K, rank: int, where: str = "") -> K:
        """The same delta with the rank zero-padded to ``rank`` (so a compiled graph keeps its shapes).

        Kinds without a rank to pad return themselves; their shapes must match exactly.
        """
        return self

    def zeroed(self, where: str = "") -> AdapterKind:
        """An adapter of the same shapes whose delta is zero (a hotswap's new adapter does not target this module)."""
        return self.map_tensors(torch.zeros_like)

    # -- derived helpers -----------------------------------------------------------------------------------------
    def named_tensors(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """Yield ``(name, tensor)`` for every tensor field (nested kinds get a dotted prefix)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                yield prefix + f.name, value
            elif isinstance(value, AdapterKind):
                yield from value.named_tensors(prefix + f.name + ".")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in self.named_tensors()}

    def map_tensors(self: K, fn: Callable[[Tensor], Tensor]) -> K:
        """A copy with ``fn`` applied to every tensor (nested kinds included)."""
        changes = {f.name: _map_value(getattr(self, f.name), fn) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to(self: K, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> K:
        """A copy on ``device`` / in ``dtype`` (floating tensors only are cast)."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self.map_tensors(move)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.named_tensors())

    @property
    def device(self) -> torch.device:
        return next(t for _, t in self.named_tensors()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(t for _, t in self.named_tensors()).dtype


def f32(t: Tensor) -> Tensor:
    """The tensor in fp32 (no copy when it already is)."""
    return t if t.dtype == torch.float32 else t.float()


def alpha_scale(alpha: float | None, rank: int) -> float:
    """alpha / rank, with alpha defaulting to the rank (scale 1) when absent."""
    return 1.0 if alpha is None else float(alpha) / float(rank)


def tucker(core: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``M[o,i,y,x] = Σ_ab core[a,b,y,x] · left[a,o] · right[b,i]`` (LyCORIS Tucker rebuild), fp32."""
    return torch.einsum("abyx,ao,bi->oiyx", f32(core), f32(left).flatten(1), f32(right).flatten(1))
