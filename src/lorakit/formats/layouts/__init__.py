"""The layouts lorakit reads (and, where a layout has a writer, writes), one module per tool family.

:data:`ORDER` is the registration order: detection order, and the order in which layouts claim keys (the first claim
wins). It is written out here, not left to import order. Adding a layout: a :class:`~lorakit.formats.registry.Layout`
(with its key prefixes, and its writer if lorakit writes it) in one of these modules or a new one, and its place in
:data:`ORDER`.
"""

from __future__ import annotations

from ..registry import Layout, register
from . import comfy, diffusers, flux, kohya, peft

ORDER: tuple[Layout, ...] = (
    # one family's own module names inside prefix families others share: before the generic layouts
    flux.FLUX_BFL,
    flux.XLABS,
    diffusers.DIFFUSERS,
    diffusers.INTERMEDIATE_LAYOUT,
    diffusers.ATTN_PROCS,
    peft.RAW_PEFT,
    kohya.KOHYA_LAYOUT,
    kohya.ONETRAINER,
    kohya.LYCORIS,
    comfy.COMFYUI,
    comfy.OMI,
    comfy.DOTTED_KOHYA,
    kohya.KOHYA_OFT,
    kohya.EMBEDDING,
    comfy.UNPREFIXED,
)
if {lay.name for lay in ORDER} != {lay.name for m in (diffusers, peft, kohya, comfy, flux) for lay in m.LAYOUTS}:
    raise ImportError("formats.layouts.ORDER must list every layout of its modules exactly once")
for _layout in ORDER:
    register(_layout)

__all__ = ["ORDER", "comfy", "diffusers", "flux", "kohya", "peft"]
