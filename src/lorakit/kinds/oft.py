"""OFT: an orthogonal, block-diagonal transform of the weight's output rows (LyCORIS ``diag-oft``, kohya ``networks.oft``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ShapeMismatchError
from .base import AdapterKind, f32, need, scalar_value, whole_chunks
from .vocab import KeySource, Suffix

#: the stored blocks are skew-symmetrised, norm-limited and Cayley-transformed (LyCORIS >= 2.x ``oft_blocks``)
LYCORIS = "lycoris"
#: same transform with kohya sd-scripts' norm clamp (``networks/oft.py``, A1111 for every ``oft_blocks`` file)
KOHYA = "kohya"
#: the stored blocks already are the rotation matrices (old LyCORIS ``oft_diag``, read as A1111 reads it)
ROTATION = "rotation"
CONVENTIONS = (LYCORIS, KOHYA, ROTATION)

#: the epsilon both writers add to the norm of Q
NORM_EPS = 1e-8
#: the layout of kohya sd-scripts' ``networks/oft.py`` files (``oft_unet_`` keys): its blocks use the kohya clamp
KOHYA_OFT_LAYOUT = "kohya-oft"


def skew(blocks: Tensor) -> Tensor:
    """``Q = B − Bᵀ`` over the last two axes (fp32)."""
    b = f32(blocks)
    return b - b.transpose(-1, -2)


def norm_factor(q: Tensor, constraint: float | None, convention: str) -> Tensor | None:
    """The factor that makes the Frobenius norm of ``Q`` (over every block together) respect ``constraint``, or
    ``None`` when ``Q`` stays as it is.

    ``lycoris``: when ``constraint > 0`` and ``‖Q‖ + 1e-8 > constraint``, ``constraint / (‖Q‖ + 1e-8)``; a constraint
    of 0 (or ``None``) leaves ``Q`` alone. ``kohya``: ``(min(‖Q‖, c) + 1e-8) / (‖Q‖ + 1e-8)``, applied whatever ``c``
    is, so ``c = 0`` collapses ``Q`` to ~0 (R ≈ I); ``None`` leaves ``Q`` alone.
    """
    if constraint is None or (convention != KOHYA and constraint <= 0):
        return None
    norm = torch.linalg.vector_norm(q)
    if convention == KOHYA:
        return (torch.clamp(norm, max=constraint) + NORM_EPS) / (norm + NORM_EPS)
    shifted = norm + NORM_EPS
    return torch.where(shifted > constraint, constraint / shifted, torch.ones_like(shifted))


def limit_norm(q: Tensor, constraint: float | None, convention: str) -> Tensor:
    """``Q`` scaled by :func:`norm_factor` (unchanged when there is none)."""
    factor = norm_factor(q, constraint, convention)
    return q if factor is None else q * factor


def cayley(q: Tensor) -> Tensor:
    """``R = (I + Q)(I − Q)⁻¹`` per block (fp32). Both factors are polynomials in Q, so they commute."""
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device).expand_as(q)
    # X (I − Q) = (I + Q)  ⇔  X = (I + Q)(I − Q)⁻¹
    return torch.linalg.solve(eye - q, eye + q, left=False)


@dataclass(frozen=True, slots=True, eq=False)
class OFT(AdapterKind):
    """Orthogonal fine-tuning with block-diagonal rotations of the output rows.

    ``blocks`` is ``(n, b, b)`` with ``n · b = out``; the weight is viewed as ``(out, in·kh·kw)`` and row block ``k``
    (rows ``k·b … k·b+b−1``, contiguous) becomes ``W'_k = R_kᵀ · W_k``; finally each row ``o`` is multiplied by
    ``rescale[o]`` when present (LyCORIS ``rescaled=True``). ``R_k = (I + Q_k)(I − Q_k)⁻¹`` with ``Q = B − Bᵀ``
    norm-limited as a whole (see :func:`limit_norm`) to ``constraint = alpha · out``; so the matrix that multiplies
    ``W_k`` from the left is ``R_kᵀ = (I − Q_k)(I + Q_k)⁻¹``, the Cayley transform of ``−Q_k``. kohya, LyCORIS,
    A1111 and ComfyUI all apply it in this orientation (``W'[k·b+m] = Σ_n R_k[n, m] · W[k·b+n]``).

    ``convention`` says how ``blocks`` turn into ``R``: ``"lycoris"`` (LyCORIS ``diag-oft``), ``"kohya"`` (kohya's
    clamp, which differs only in how the norm limit and a zero alpha behave) or ``"rotation"`` (``blocks`` are ``R``
    itself, old LyCORIS ``oft_diag``; alpha unused). :meth:`from_roles` decides it from the layout (kohya's own
    ``oft_unet_`` layout) and the key (``oft_diag``).

    Strength: ``W + s·(M·W − W)`` with ``M·W`` the transform above of the original weight. kohya, LyCORIS and A1111
    interpolate the rotation, ``R_s = s·R + (1 − s)·I``, and ``R_sᵀ·W = W + s·(Rᵀ·W − W)``: the same, exact and
    linear in ``s`` (so ``s = 0`` is the base exactly and adapters add). Deviations: with ``rescale`` LyCORIS gives
    ``rescale ⊙ R_sᵀW`` (at ``s = 0`` that is ``rescale ⊙ W``, not ``W``); lorakit interpolates the whole transform,
    equal at ``s = 1``. ComfyUI multiplies the rotation difference by ``s`` twice (``W + s²·(RᵀW − W)``), ignores
    ``rescale`` and uses ``alpha`` (not ``alpha·out``) as the constraint; A1111 ignores ``rescale`` and applies the
    kohya clamp to LyCORIS files too. Multiplicative kinds rotate the original weight: ComfyUI instead rotates the
    weight as patched so far (order-dependent).
    """

    blocks: Tensor
    alpha: float | None = None
    rescale: Tensor | None = None
    convention: str = LYCORIS

    kind_name = "oft"
    display = "OFT"
    #: LyCORIS ``diag-oft`` / kohya ``networks.oft`` (``oft_blocks`` 3-D), old LyCORIS ``oft_diag`` (rotations), and the
    #: optional per-row ``rescale``; 4-D ``oft_blocks`` are BOFT's. ``alpha`` (the neutral suffix) is the constraint.
    SUFFIXES = (Suffix("oft_blocks", "oft_blocks"), Suffix("oft_diag", "oft_diag"), Suffix("rescale", "rescale"))

    @classmethod
    def claims(cls, roles: Mapping[str, Tensor]) -> bool:
        blocks = roles.get("oft_blocks")
        return "oft_diag" in roles or (blocks is not None and blocks.dim() != 4)

    @classmethod
    def from_roles(cls, roles: Mapping[str, Tensor], source: KeySource) -> OFT:
        """``oft_diag``: stored rotations; ``oft_blocks`` from kohya's ``networks.oft`` layout (``oft_unet_`` keys):
        the kohya clamp; any other ``oft_blocks``: LyCORIS diag-OFT. ``alpha`` is read here: it is the constraint, not
        the alpha of an alpha/rank scale (so none of the scale's fallbacks apply; see :meth:`with_alpha`)."""
        if "oft_diag" in roles:
            blocks, convention = roles["oft_diag"], ROTATION
        else:
            (blocks,) = need(roles, "oft_blocks", kind="OFT")
            convention = KOHYA if source.layout == KOHYA_OFT_LAYOUT else LYCORIS
        alpha = scalar_value(roles.get("alpha"), "OFT alpha") if convention != ROTATION else None
        kind = cls(blocks=blocks, alpha=alpha, rescale=roles.get("rescale"), convention=convention)
        kind.check_tensors("OFT")
        return kind

    def with_alpha(self, alpha: float | None) -> OFT:
        """Itself: OFT's ``alpha`` is the norm constraint :meth:`from_roles` read, not a scale's alpha (a header's
        network alpha or "0 means rank" must not change it)."""
        return self

    def lycoris_tensors(self) -> dict[str, Tensor]:
        """LyCORIS names, in LyCORIS' own convention whatever the source (a kohya-clamped adapter is written with the
        clamp folded into its blocks and ``alpha = 0``, so any LyCORIS reader rebuilds the same rotation); stored
        rotations as ``oft_diag``."""
        if self.convention == ROTATION:
            out = {"oft_diag": self.blocks}
        else:
            kind = self if self.convention == LYCORIS else self.unconstrained()
            alpha = 0.0 if kind.alpha is None else float(kind.alpha)
            out = {"oft_blocks": kind.blocks, "alpha": torch.tensor(alpha, dtype=torch.float32)}
        if self.rescale is not None:
            out["rescale"] = self.rescale
        return out

    def native(self) -> tuple[str, dict[str, Tensor]] | None:
        """kohya ``networks.oft`` adapters are written back as kohya OFT: ``oft_blocks`` and the clamp's ``alpha``."""
        if self.convention != KOHYA or self.alpha is None or self.rescale is not None:
            return None
        return KOHYA_OFT_LAYOUT, {"oft_blocks": self.blocks, "alpha": torch.tensor(float(self.alpha), dtype=torch.float32)}

    @property
    def network_module(self) -> str:
        return "networks.oft" if self.native() is not None else "lycoris.kohya"

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ValueError(f"oft: convention must be one of {CONVENTIONS}, got {self.convention!r}")

    # -- facts -----------------------------------------------------------------------------------------------------
    @property
    def block_count(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.blocks.shape[-1])

    @property
    def out_features(self) -> int:
        return self.block_count * self.block_size

    @property
    def rank(self) -> int:
        """The number of blocks: kohya's ``network_dim``, what LyCORIS logs as the "equivalent lora_dim"."""
        return self.block_count

    @property
    def constraint(self) -> float | None:
        """``alpha · out`` (both writers), ``None`` without alpha or for stored rotations."""
        if self.alpha is None or self.convention == ROTATION:
            return None
        return float(self.alpha) * self.out_features

    # -- maths -----------------------------------------------------------------------------------------------------
    def rotations(self) -> Tensor:
        """``R`` per block, fp32 ``(n, b, b)`` (before the transpose that orients it on the rows)."""
        if self.convention == ROTATION:
            return f32(self.blocks)
        return cayley(limit_norm(skew(self.blocks), self.constraint, self.convention))

    def row_blocks(self) -> Tensor:
        """``M_k = R_kᵀ``: the matrices that multiply each row block from the left, fp32 ``(n, b, b)``."""
        return self.rotations().transpose(-1, -2)

    def transform(self, t: Tensor, dim: int = 0) -> Tensor:
        """Apply the full transform (rotation, then ``rescale``) along axis ``dim`` of ``t`` (``out`` values), fp32.

        ``dim=0`` transforms a weight; an output of the layer (minus its bias) transforms along its channel axis.
        """
        x = f32(t).movedim(dim, 0)
        rows = x.reshape(self.block_count, self.block_size, -1)
        y = torch.matmul(self.row_blocks(), rows).reshape(x.shape)
        if self.rescale is not None:
            y = y * f32(self.rescale).reshape(-1, *([1] * (y.dim() - 1)))
        return y.movedim(0, dim)

    def delta_weight(self, base: Tensor) -> Tensor:
        w = f32(base)
        return self.transform(w) - w

    def unconstrained(self) -> OFT:
        """The same transform with the norm limit folded into the blocks (fp32, ``alpha=None``, LyCORIS convention):
        the limit is global over all blocks, so a subset of the blocks keeps its rotations only this way."""
        if self.convention == ROTATION:
            return self
        factor = norm_factor(skew(self.blocks), self.constraint, self.convention)
        blocks = f32(self.blocks) if factor is None else f32(self.blocks) * factor
        return dataclasses.replace(self, blocks=blocks, alpha=None, convention=LYCORIS)

    # -- fused projections -----------------------------------------------------------------------------------------
    def select_rows(self, rows: Tensor, total: int, in_shape: tuple[int, ...]) -> OFT:
        """Exact when ``rows`` are whole blocks (SD3 q|k|v when the block size divides each part, an adaLN half swap
        when the block count is even): those blocks, with the norm limit of the whole taken first.

        Raises:
            NotSeparable: a block straddles two parts (its rotation mixes their rows).
        """
        idx = whole_chunks(rows, self.block_size, "OFT blocks")
        kind = self.unconstrained()
        rescale = None
        if self.rescale is not None:
            rescale = self.rescale.reshape(total, -1)[rows].reshape(rows.numel(), *self.rescale.shape[1:])
        return dataclasses.replace(kind, blocks=kind.blocks[idx.to(kind.blocks.device)], rescale=rescale)

    def zeroed(self, where: str = "") -> OFT:
        """Same shapes, identity transform (zero delta): zero blocks (identity for stored rotations), unit rescale."""
        if self.convention == ROTATION:
            blocks = torch.eye(self.block_size, dtype=self.blocks.dtype, device=self.blocks.device).expand_as(
                self.blocks
            )
            blocks = blocks.contiguous()
        else:
            blocks = torch.zeros_like(self.blocks)
        rescale = None if self.rescale is None else torch.ones_like(self.rescale)
        return dataclasses.replace(self, blocks=blocks, rescale=rescale)

    def check_tensors(self, where: str = "") -> None:
        where = where or self.kind_name
        if self.blocks.dim() != 3 or self.blocks.shape[1] != self.blocks.shape[2] or self.blocks.shape[1] == 0:
            raise ShapeMismatchError(f"{where}: oft_blocks must be (blocks, size, size), got {self.shapes()}")
        if self.rescale is not None and self.rescale.numel() != self.out_features:
            raise ShapeMismatchError(
                f"{where}: rescale has {self.rescale.numel()} values for {self.out_features} rows ({self.shapes()})"
            )

    def check_shape(self, base_shape: torch.Size, where: str = "") -> None:
        where = where or self.kind_name
        self.check_tensors(where)
        shapes = self.shapes()
        if len(base_shape) < 2:
            raise ShapeMismatchError(
                f"{where}: OFT needs a Linear or Conv weight, got shape {tuple(base_shape)}"
            )
        if self.out_features != base_shape[0]:
            raise ShapeMismatchError(
                f"{where}: {self.block_count} blocks of {self.block_size} cover {self.out_features} rows, the weight "
                f"of shape {tuple(base_shape)} has {base_shape[0]} ({shapes})"
            )
        if self.rescale is not None and self.rescale.numel() != base_shape[0]:
            raise ShapeMismatchError(
                f"{where}: rescale has {self.rescale.numel()} values for {base_shape[0]} outputs ({shapes})"
            )
