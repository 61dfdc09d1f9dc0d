"""Checkpoint key conventions -> canonical adapters (and back).

CONTRACT (other modules rely on these two functions and the ``Conversion`` record; keep their signatures):

* ``to_canonical(state_dict, metadata, components, *, source, strict=False) -> Conversion``: detect the layout from all
  keys and the header, convert every entry to a canonical kind, resolve module paths against the given component
  models (``{"unet": unet, "text_encoder": te, ...}``, or the family's meta reference models when ``None``) and report
  what did not land (``Conversion.report``, a :class:`lorakit.report.LoadReport`). Raises lorakit errors only.
* ``from_canonical(adapters, to, *, family) -> (state_dict, metadata)``: write canonical adapters in a layout
  ("diffusers", "peft", "kohya").

The conventions live in one ordered registry (``registry.REGISTRY``), one module per convention family:
``diffusers.py`` (PEFT-style, intermediate, attention processors), ``peft.py`` (raw PEFT), ``kohya.py`` (kohya / A1111 /
LyCORIS / OneTrainer legacy, plus the unsupported OFT and embedded-embedding layouts), ``comfy.py`` (ComfyUI-native,
OneTrainer OMI, dotted kohya suffixes, unprefixed).
"""

from __future__ import annotations

from . import comfy, diffusers, kohya, peft  # noqa: F401  (registration order = detection order)
from .convert import Conversion, to_canonical
from .registry import REGISTRY, Convention, detect, set_order
from .writer import LAYOUTS, from_canonical, peft_config

# detection / claim order (first claim wins); explicit so that import sorting cannot change it
set_order(
    [
        "diffusers",
        "diffusers-intermediate",
        "diffusers-attn-procs",
        "peft",
        "kohya",
        "onetrainer",
        "lycoris",
        "comfyui",
        "onetrainer-omi",
        "dotted-kohya",
        "kohya-oft",
        "embedding",
        "unprefixed",
    ]
)

__all__ = [
    "Conversion",
    "Convention",
    "LAYOUTS",
    "REGISTRY",
    "detect",
    "from_canonical",
    "peft_config",
    "to_canonical",
]
