"""Module-path resolution: which module of a real (or reference) model a checkpoint's module name means.

* :func:`build_index(model, component)` -> :class:`ModuleIndex` (alias -> :class:`Target`), cached per model: the
  dotted and underscored paths, CLIP paths with and without ``text_model.`` (``clip``), the SGM / LDM names of SD
  UNets (``sd_unet``), the SAI MMDiT names of SD3 with its fused-qkv splits and adaLN half swaps (``sd3``); T5 needs
  no renames (``t5``).
* :func:`reference_components(name)` -> ``{component: meta model}`` of a family or variant, built from the family
  records' reference configs (``lorakit.families``), for resolving names without a model.

Family facts (components, configs, variants, detection) live in :mod:`lorakit.families`.
"""

from __future__ import annotations

from .index import ModuleIndex, Target, build_index
from .reference import reference_components

__all__ = ["ModuleIndex", "Target", "build_index", "reference_components"]
