"""The canonical adapter representation shared by every kind, and the protocol a kind follows to claim its keys.

A kind is a frozen dataclass of tensors (plus ``alpha`` and a few plain fields). Its file holds everything true of it:

* the maths: ``delta_weight(base)`` (the weight delta at strength 1, fp32, shaped like ``base``; ``base`` is passed so
  that DoRA and the multiplicative kinds fit the same signature), ``delta_bias()``, ``low_rank(base_shape)`` (the two
  factors of a product ``up @ down``, stacked by the engine; ``None`` for kinds that are not low rank), ``rank``,
  ``scale``;
* its key vocabulary: ``SUFFIXES`` (suffix -> role, per style, see :mod:`lorakit.kinds.vocab`), ``claims(roles)``,
  ``from_roles(roles, source)`` (build from one module's tensors), ``lycoris_tensors()`` / ``peft_tensors()`` (write
  back, ``None`` where PEFT has no name for it);
* fitting a module: ``check_tensors()`` (the tensors agree with each other), ``check_shape(base_shape)`` (and with a
  weight), ``check_fits(...)`` (and with a module: norm layers, bias);
* row surgery for fused projections: ``select_rows`` / ``split_rows`` (raise :class:`NotSeparable` where exactness
  would be lost);
* hotswap: ``padded(rank)`` / ``zeroed()``.

Moving, casting, counting bytes and listing tensors are derived once here from the dataclass fields. The registry of
kinds is :mod:`lorakit.kinds` (``KINDS``: a new kind is one file plus one entry there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..errors import FormatError, ShapeMismatchError
from .vocab import KeySource, Suffix

K = TypeVar("K", bound="AdapterKind")


class MissingTensorsError(FormatError):
    """A module's tensors lack a role the kind needs (``lora_down`` without ``lora_up``): an incomplete adapter."""


class UnsupportedVariantError(FormatError):
    """The tensors belong to a kind (or a variant of one) that lorakit recognises but does not apply."""


class NotSeparable(FormatError):
    """An adapter cannot be restricted to a subset of output rows without changing its delta."""


def _map_value(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, AdapterKind):
        return value.map_tensors(fn)
    return value


def need(roles: Mapping[str, Tensor], *names: str, kind: str = "") -> list[Tensor]:
    """The tensors of ``names``; :class:`MissingTensorsError` naming the missing ones."""
    missing = [r for r in names if r not in roles]
    if missing:
        raise MissingTensorsError(f"{kind + ': ' if kind else ''}missing {', '.join(missing)}")
    return [roles[r] for r in names]


def dims(where: str, **tensors: Tensor | None) -> None:
    """Raise :class:`ShapeMismatchError` unless every given tensor has at least 2 dimensions (a matrix factor)."""
    bad = {n: tuple(t.shape) for n, t in tensors.items() if t is not None and t.dim() < 2}
    if bad:
        raise ShapeMismatchError(f"{where}: {', '.join(f'{n} {s}' for n, s in bad.items())} must be at least 2-D")


class AdapterKind:
    """Base class of canonical adapter kinds (subclasses are frozen dataclasses)."""

    #: short name used in reports ("lora", "loha", ...)
    kind_name: ClassVar[str] = "base"
    #: the name people know the algorithm by ("LoRA", "(IA)^3"), used in messages
    display: ClassVar[str] = "adapter"
    #: whether the kind applies to norm layers (LayerNorm / GroupNorm affine parameters)
    applies_to_norm: ClassVar[bool] = False
    #: whether ``delta_weight(base)`` reads the base weight's values (DoRA, OFT, ...), not just its shape; such a
    #: delta cannot be recomputed once the weight is fused in place, so those modules fuse by copy
    uses_base: ClassVar[bool] = True
    #: the key suffixes the kind reads (one entry per style spelling); formats.keys builds its table from these
    SUFFIXES: ClassVar[tuple[Suffix, ...]] = ()
    #: the roles whose presence makes a module's tensors this kind's (``None``: every role of ``SUFFIXES``)
    CLAIMS: ClassVar[frozenset[str] | None] = None
    #: roles holding flags or integers (not float adapter tensors): exempt from the dtype check
    FLAG_ROLES: ClassVar[frozenset[str]] = frozenset()

    # -- key vocabulary --------------------------------------------------------------------------------------------
    @classmethod
    def roles(cls) -> frozenset[str]:
        """Every role the kind reads."""
        return frozenset(s.role for s in cls.SUFFIXES)

    @classmethod
    def claims(cls, roles: Mapping[str, Tensor]) -> bool:
        """Whether one module's tensors (role -> tensor) are this kind's."""
        return not (cls.roles() if cls.CLAIMS is None else cls.CLAIMS).isdisjoint(roles)

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> AdapterKind:
        """The adapter one module's tensors hold (``alpha`` left unset: see :meth:`with_alpha`).

        Raises:
            MissingTensorsError: a needed role is absent.
            ShapeMismatchError: the tensors do not agree with each other.
            UnsupportedVariantError: a variant lorakit does not apply (also the default: a kind without a reader).
        """
        raise UnsupportedVariantError(f"{cls.display} adapters are not supported")

    def with_alpha(self: K, alpha: float | None) -> K:
        """The same adapter with ``alpha`` (``None``: alpha = rank); kinds without an alpha return themselves."""
        if any(f.name == "alpha" for f in dataclasses.fields(self)):  # type: ignore[arg-type]  # subclasses are dataclasses
            return dataclasses.replace(self, alpha=alpha)  # type: ignore[type-var]
        return self

    def lycoris_tensors(self) -> dict[str, Tensor]:
        """kohya / LyCORIS suffix -> tensor, ``alpha`` included where the kind has one (the kohya layout's names)."""
        raise FormatError(f"a {self.display} adapter cannot be written yet")

    def peft_tensors(self) -> dict[str, Tensor] | None:
        """PEFT suffix -> tensor (no alpha: a LoraConfig carries it), or ``None`` where PEFT has no name for it."""
        return None

    @property
    def network_module(self) -> str:
        """The sd-scripts ``ss_network_module`` that loads this kind."""
        return "lycoris.kohya"

    def native(self) -> tuple[str, dict[str, Tensor]] | None:
        """``(layout name, suffix -> tensor)`` for an adapter that belongs to a layout of its own, whose key prefixes
        name it and whose tensors mean something else than their LyCORIS spelling (kohya ``networks.oft``:
        ``("kohya-oft", {...})``, its ``alpha`` a clamp LyCORIS reads differently). Writers use it where that layout
        has a prefix for the component and :meth:`lycoris_tensors` (which must then give the same delta under any
        LyCORIS-reading layout) everywhere else. ``None``: the kind has no such layout."""
        return None

    def _alpha_entry(self) -> dict[str, Tensor]:
        """``{"alpha": alpha}``, alpha = rank written out when absent (a missing .alpha would fall back to header
        values on reload); empty for kinds with neither."""
        value = self.alpha if self.alpha is not None else self.rank
        if value is None:
            return {}
        return {"alpha": torch.tensor(float(value), dtype=torch.float32)}

    # -- maths -----------------------------------------------------------------------------------------------------
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
    def alpha(self) -> float | None:
        """The alpha of ``scale = alpha / rank`` (``None``: alpha = rank, or no alpha); a dataclass field in kinds
        that have one."""
        return None

    @property
    def scale(self) -> float:
        """The alpha/rank factor this kind applies (1.0 where it has none)."""
        return 1.0

    # -- fitting ---------------------------------------------------------------------------------------------------
    def check_tensors(self, where: str = "") -> None:
        """Raise :class:`ShapeMismatchError` unless the tensors agree with each other (dimensions, ranks)."""

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:  # pragma: no cover - abstract
        """Raise :class:`ShapeMismatchError` unless the delta has ``base_shape`` (arithmetic only, no tensor maths)."""
        raise NotImplementedError

    def check_fits(self, base_shape: torch.Size, where: str = "", *, norm: bool = False, has_bias: bool = True) -> None:
        """Raise :class:`ShapeMismatchError` unless the adapter fits a module: its weight shape, whether it is a norm
        layer (only kinds with ``applies_to_norm``), whether it has a bias (needed for a bias delta)."""
        where = where or self.kind_name
        if norm and not self.applies_to_norm:
            raise ShapeMismatchError(f"{where}: a {self.display} adapter does not apply to a norm layer (only full "
                                     "deltas w_norm/b_norm do)")
        self.check_shape(base_shape, where)
        if not norm and not has_bias and self.delta_bias() is not None:
            raise ShapeMismatchError(f"{where}: adapter has a bias delta but the module has no bias")

    # -- fused projections -----------------------------------------------------------------------------------------
    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> AdapterKind:
        """The adapter restricted to output ``rows`` (1-D long) of a weight with ``total`` rows (same delta rows).

        Raises:
            NotSeparable: the kind cannot be restricted exactly.
        """
        raise NotSeparable(f"a {self.display} adapter cannot be split by rows")

    def split_rows(self, sizes: list[int], in_shape: tuple[int, ...], assume_block: bool = False) -> list[AdapterKind]:
        """One adapter per consecutive block of ``sizes`` output rows (a fused projection onto its parts).

        ``assume_block`` says the file declares a per-part layout (kohya ``split_qkv``) that kinds may use when their
        tensors cannot show it (meta tensors).
        """
        total = sum(sizes)
        out: list[AdapterKind] = []
        start = 0
        for size in sizes:
            out.append(self.select_rows(torch.arange(start, start + size), total, in_shape))
            start += size
        return out

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


def scalar_value(t: Tensor | None, where: str = "") -> float | None:
    """The value of a one-element tensor a kind reads itself (OFT's constraint ``alpha``); ``None`` when absent or
    a meta tensor (no data)."""
    if t is None or t.device.type == "meta":
        return None
    if t.numel() != 1:
        raise ShapeMismatchError(f"{where or 'adapter'}: expected a scalar, got a tensor of shape {tuple(t.shape)}")
    return float(t.reshape(()).item())


def whole_chunks(rows: Tensor, size: int, what: str) -> Tensor:
    """The chunk indices of ``rows`` when they are whole, aligned, ascending chunks of ``size`` rows (``[2, 0]`` for
    rows ``2s … 3s−1, 0 … s−1``); :class:`NotSeparable` otherwise (a chunk would straddle two parts)."""
    n = rows.numel()
    chunks = rows.reshape(-1, size).cpu() if size > 0 and n % size == 0 else None
    if chunks is None or bool((chunks[:, 0] % size != 0).any()) or not bool(
        (chunks - chunks[:, :1] == torch.arange(size)).all()
    ):
        raise NotSeparable(f"{n} rows are not whole {what} of {size} rows: one would straddle two parts")
    return chunks[:, 0] // size


def f32(t: Tensor) -> Tensor:
    """The tensor in fp32 (no copy when it already is)."""
    return t if t.dtype == torch.float32 else t.float()


def alpha_scale(alpha: float | None, rank: int) -> float:
    """alpha / rank, with alpha defaulting to the rank (scale 1) when absent."""
    return 1.0 if alpha is None else float(alpha) / float(rank)


def tucker(core: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """``M[o,i,y,x] = Σ_ab core[a,b,y,x] · left[a,o] · right[b,i]`` (LyCORIS Tucker rebuild), fp32."""
    return torch.einsum("abyx,ao,bi->oiyx", f32(core), f32(left).flatten(1), f32(right).flatten(1))
