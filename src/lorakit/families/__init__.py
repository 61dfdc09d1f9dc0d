"""Every model family lorakit supports, one file each; the only place that states a family fact.

* :data:`FAMILIES`: ``{name: Family}`` in detection order.
* :func:`get`: a family by name (``"sd1"``, ...) or variant (``"sd3.5-large"``), with a "did you mean" error.
* :func:`of_denoiser`: the family of a denoiser class name.
* :func:`loader_families`: the families one loader mixin serves.

Adding a family: write ``<name>.py`` with its :class:`Family` record and add it to :data:`FAMILIES` (plus its
mixin's diffusers signature in :mod:`lorakit.pipelines.mixins`, and a tiny builder in :mod:`lorakit.tiny`).
"""

from __future__ import annotations

from ..errors import FormatError, did_you_mean
from .amused import AMUSED
from .base import BlockTable, ComponentSpec, Evidence, Family
from .flux import FLUX
from .sd import SD1, SD2
from .sd3 import SD3
from .sdxl import SDXL

__all__ = [
    "AMUSED",
    "FAMILIES",
    "FLUX",
    "SD1",
    "SD2",
    "SD3",
    "SDXL",
    "BlockTable",
    "ComponentSpec",
    "Evidence",
    "Family",
    "LOADERS",
    "get",
    "of_denoiser",
    "of_variant",
    "variant_specs",
]

FAMILIES: dict[str, Family] = {f.name: f for f in (SD1, SD2, SDXL, SD3, FLUX, AMUSED)}

#: loader mixin name -> its families (the first one is the loader's default family)
LOADERS: dict[str, tuple[Family, ...]] = {}
for _f in FAMILIES.values():
    LOADERS[_f.loader] = (*LOADERS.get(_f.loader, ()), _f)


def of_variant(name: str) -> Family:
    """The family of a family or variant name (``"sd3.5-large"`` -> SD3)."""
    fam = FAMILIES.get(name)
    if fam is not None:
        return fam
    for f in FAMILIES.values():
        if name in f.variants:
            return f
    names = [*FAMILIES, *(v for f in FAMILIES.values() for v in f.variants)]
    raise FormatError(f"unknown model family {name!r} (known: {', '.join(names)})" + did_you_mean(name, names))


def get(name: str) -> Family:
    """A family by lorakit name (case-insensitive; display names such as ``"SDXL"`` work too)."""
    low = name.lower()
    for f in FAMILIES.values():
        if low in (f.name, f.display.lower()):
            return f
    return of_variant(low)


def variant_specs(name: str) -> dict[str, ComponentSpec]:
    """The component specs of a family or variant."""
    return of_variant(name).spec(name)


def of_denoiser(class_name: str) -> tuple[Family, ...]:
    """The families whose denoiser has this class name (SD1, SD2 and SDXL share ``UNet2DConditionModel``)."""
    return tuple(f for f in FAMILIES.values() if f.denoiser_class == class_name)
