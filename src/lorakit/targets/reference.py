"""Reference models of each family, built on the ``meta`` device from the shipped configs (and cached).

Used when no model is given (``inspect`` / ``convert``): checkpoint names are resolved against these, so a file can be
checked and converted without downloading the base model. Building costs no memory (meta tensors).
"""

from __future__ import annotations

import functools
import logging
import threading

import torch
from torch import nn

from ..errors import FormatError
from .configs import FAMILIES, FAMILY_SPECS, VARIANT_SPECS

logger = logging.getLogger(__name__)
_LOCK = threading.Lock()


def _build(class_name: str, config: dict) -> nn.Module:
    if class_name in ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"):
        import transformers

        cls = getattr(transformers, class_name)
        cfg_cls = transformers.T5Config if class_name == "T5EncoderModel" else transformers.CLIPTextConfig
        with torch.device("meta"):
            return cls(cfg_cls(**config))
    import diffusers

    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        return cls(**config)


@functools.cache
def _component(family: str, component: str) -> nn.Module:
    class_name, config = {**FAMILY_SPECS, **VARIANT_SPECS}[family][component]
    logger.debug("building reference %s.%s (%s) on meta", family, component, class_name)
    return _build(class_name, config)


def reference_components(family: str) -> dict[str, nn.Module]:
    """``{component: model}`` of the family's reference pipeline on the meta device (cached).

    Args:
        family: one of ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"amused"``, or a variant with other shapes
            (``"sd3.5-large"``, ``"sd3.5-medium"``).
    """
    specs = {**FAMILY_SPECS, **VARIANT_SPECS}
    if family not in specs:
        raise FormatError(f"unknown model family {family!r} (known: {', '.join((*FAMILIES, *VARIANT_SPECS))})")
    with _LOCK:
        return {c: _component(family, c) for c in specs[family]}
