"""The hooks lorakit puts on one patched module, and the tensors it keeps for it.

A :class:`Slot` reads its owner's state through the small :class:`SlotOwner` protocol (the manager implements it);
it never imports the manager, so the arrow points one way: ``manager -> slot -> apply``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from .apply import Combined, bias_of, sidecar_output, weight_of
from .inplace import InplaceRecord, fuse_inplace, materialize, restore_inplace

if TYPE_CHECKING:
    from ..kinds import AdapterKind
    from .persample import SamplePlan

#: a module's ``(weight, bias)`` tensors
Params = tuple[Tensor, Tensor | None]


class SlotOwner(Protocol):
    """What a slot needs to know about the state it serves."""

    @property
    def version(self) -> int: ...

    @property
    def trainable(self) -> bool: ...

    @property
    def call_scale(self) -> float: ...

    @property
    def unfused_strategy(self) -> str: ...

    @property
    def sample_plan(self) -> SamplePlan | None: ...

    @property
    def adapters(self) -> Mapping[str, Mapping[str, AdapterKind]]: ...

    @property
    def unfused_active(self) -> bool: ...

    def build_combined(
        self, slot: Slot, device: torch.device, dtype: torch.dtype, keep_graph: bool, merged: bool = False
    ) -> Combined: ...


def params_of(module: nn.Module) -> Params:
    """The tensors the module holds now (``.data``: no autograd history)."""
    bias = bias_of(module)
    return weight_of(module).data, None if bias is None else bias.data


def show(module: nn.Module, params: Params) -> None:
    """Point the module's parameters at ``params`` (a ``None`` bias keeps the module's bias), on its device."""
    w, b = params
    weight, bias = weight_of(module), bias_of(module)
    device = weight.device
    weight.data = w if w.device == device else w.to(device)
    if b is not None and bias is not None:
        bias.data = b if b.device == device else b.to(device)


class Slot:
    """lorakit's state for one patched module.

    Attributes:
        path: the module path inside its model.
        module: the module.
        cache: the combined unfused form of the active set (rebuilt when the owner's version moves on).
        original: the module's untouched ``(weight, bias)`` while fused tensors exist for it, else ``None``.
        fused: the fused ``(weight, bias)`` of the owner's fused set for this module, else ``None``; the module holds
            them while the owner is enabled and ``original`` while it is disabled.
        swapped: tensors put aside while a merged weight serves one call (``"merged"`` strategy).
        inplace: the record of a fuse written into the module's own tensors (then ``original`` and ``fused`` are
            ``None``: the module holds the fused values and the record restores the original bits).
        key: what the fused state was computed from (``(id(kind), weight)`` pairs), ``None`` without one.
    """

    __slots__ = (
        "path",
        "module",
        "owner",
        "handle",
        "pre_handle",
        "cache",
        "original",
        "fused",
        "swapped",
        "inplace",
        "key",
    )

    def __init__(self, path: str, module: nn.Module, owner: SlotOwner) -> None:
        self.path = path
        self.module = module
        self.owner = owner
        self.cache: Combined | None = None
        self.original: Params | None = None
        self.fused: Params | None = None
        self.swapped: Params | None = None
        self.inplace: InplaceRecord | None = None
        self.key: tuple[tuple[int, float], ...] | None = None
        self.pre_handle = module.register_forward_pre_hook(self._pre_hook)
        # always_call: the original tensors come back even when the forward raises
        self.handle = module.register_forward_hook(self._hook, always_call=True)

    def remove(self) -> None:
        self.pre_handle.remove()
        self.handle.remove()
        self.cache = None

    def original_params(self) -> Params:
        """The module's untouched ``(weight, bias)``.

        After an in-place fuse they exist only as the restore record: they are rebuilt into new tensors once, and the
        slot goes on as a copy-fused one (the module keeps the fused values in its own storage).
        """
        if self.inplace is not None:
            self.original = materialize(self.module, self.inplace)
            self.fused = params_of(self.module)
            self.inplace = None
        return self.original if self.original is not None else params_of(self.module)

    def original_weight(self) -> Tensor:
        return self.original_params()[0]

    def clear(self) -> None:
        """No fused adapter here any more: the original tensors (bits) back in the module."""
        if self.inplace is not None:
            restore_inplace(self.module, self.inplace)
            self.inplace = None
        self.set_fused(None, enabled=False)

    def fuse_in_place(self, contributions: list[tuple[AdapterKind, float]], key: tuple[tuple[int, float], ...]) -> None:
        """Fuse ``contributions`` into the module's own tensors (from its original state)."""
        self.clear()
        self.inplace = fuse_inplace(self.module, contributions)
        self.key = key

    def set_fused(self, params: Params | None, enabled: bool) -> None:
        """Keep ``params`` as this module's fused tensors (``None``: no fused adapter here) and show what
        ``enabled`` asks for: the fused tensors, or the original ones."""
        if self.inplace is not None:
            restore_inplace(self.module, self.inplace)
            self.inplace = None
        if params is None:
            self.key = None
            if self.original is not None:
                show(self.module, self.original)
            self.original = None
            self.fused = None
            return
        if self.original is None:
            self.original = params_of(self.module)
        self.fused = params
        self.show(enabled)

    def show(self, enabled: bool) -> None:
        """Install the fused tensors (``enabled``) or the original ones; O(1), pointer swaps only."""
        if self.fused is None or self.original is None:
            return
        w0, b0 = self.original
        wf, bf = self.fused
        show(self.module, (wf, bf if bf is not None else b0) if enabled else (w0, b0))

    def bake(self) -> None:
        """Forget the original tensors: whatever the module holds now stays (unload after fuse)."""
        self.original = None
        self.fused = None
        self.inplace = None
        self.key = None

    def _combined(self, x: Tensor, merged: bool) -> Combined:
        owner = self.owner
        c = self.cache
        needs_grad = torch.is_grad_enabled() and owner.trainable
        stale = c is None or c.version != owner.version or c.device != x.device or c.dtype != x.dtype
        if needs_grad or stale or c is None or c.merged != merged:
            c = owner.build_combined(self, x.device, x.dtype, keep_graph=needs_grad, merged=merged)
            if not needs_grad:
                self.cache = c
        return c

    def _use_merged(self) -> bool:
        owner = self.owner
        return (
            owner.unfused_strategy == "merged"
            and owner.call_scale == 1.0
            and not owner.trainable
            and owner.sample_plan is None
        )

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.owner.unfused_active or not args or not self._use_merged():
            return None
        c = self._combined(args[0], merged=True)
        if c.merged_weight is not None:
            # serve this call with W + Σ s·ΔW; the tensors come back in the post-hook (pointer swaps)
            self.swapped = params_of(module)
            show(module, (c.merged_weight, c.merged_bias))
        return None

    def _hook(self, module: nn.Module, args: tuple, output: Tensor | None) -> Tensor | None:
        if self.swapped is not None:
            show(module, self.swapped)
            self.swapped = None
            return output
        owner = self.owner
        if output is None or not owner.unfused_active or not args:
            return output
        x = args[0]
        plan = owner.sample_plan
        if plan is not None:
            return plan.output(self, x, output, owner.adapters, owner.call_scale)
        c = self._combined(x, merged=False)
        if c.empty:
            return output
        return sidecar_output(module, x, output, c, owner.call_scale)
