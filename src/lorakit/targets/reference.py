"""Reference models of each family, built on the ``meta`` device from the family records' configs (and cached).

Used when no model is given (``inspect`` / ``convert``): checkpoint names are resolved against these, so a file can be
checked and converted without downloading the base model. Building costs no memory (meta tensors).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import torch
from torch import nn

from .. import families

logger = logging.getLogger(__name__)
_LOCK = threading.Lock()

_TRANSFORMERS = {"CLIPTextModel": "CLIPTextConfig", "CLIPTextModelWithProjection": "CLIPTextConfig",
                 "T5EncoderModel": "T5Config"}


def _build(class_name: str, config: dict[str, Any]) -> nn.Module:
    if class_name in _TRANSFORMERS:
        import transformers  # lazy: importing lorakit must not import transformers

        cls = getattr(transformers, class_name)
        cfg_cls = getattr(transformers, _TRANSFORMERS[class_name])
        with torch.device("meta"):
            return cls(cfg_cls(**config))
    import diffusers  # lazy, as above

    cls = getattr(diffusers, class_name)
    with torch.device("meta"):
        return cls(**config)


@functools.cache
def _component(variant: str, component: str) -> nn.Module:
    class_name, config = families.variant_specs(variant)[component]
    logger.debug("building reference %s.%s (%s) on meta", variant, component, class_name)
    return _build(class_name, config)


def reference_components(name: str) -> dict[str, nn.Module]:
    """``{component: model}`` of a family's (or variant's) reference pipeline on the meta device (cached).

    Args:
        name: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"amused"``, or a variant with other shapes
            (``"sd3.5-large"``, ``"sd3.5-medium"``, ``"sd1-inpaint"``, ...).

    Raises:
        FormatError: an unknown name (with a "did you mean").
    """
    specs = families.variant_specs(name)
    with _LOCK:
        return {c: _component(name, c) for c in specs}
