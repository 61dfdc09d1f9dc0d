"""Checkpoint key layouts -> canonical adapters (and back).

CONTRACT (other modules rely on these two functions and the ``Conversion`` record; keep their signatures):

* ``to_canonical(state_dict, metadata, components, *, source, strict=False, allow_meta=False) -> Conversion``:
  detect the layout from all keys and the header, convert every entry to a canonical kind, resolve module paths
  against the given component models (``{"unet": unet, "text_encoder": te, ...}``, or the family's meta reference
  models when ``None``) and report what did not land (``Conversion.report``, a :class:`lorakit.report.LoadReport`).
  Raises lorakit errors only (for bad input; a bug surfaces as itself).
* ``from_canonical(adapters, to, *, family=None) -> (state_dict, metadata)``: write canonical adapters in a layout
  (:data:`LAYOUTS`: "diffusers", "peft", "kohya").

Words: a **layout** is how a file names its keys (``kohya``, ``diffusers-intermediate``, ``comfyui``, ...: one
:class:`Layout` each in one ordered registry, used to detect, to convert and, where the layout has a writer, to write);
the **format** of a file (``Conversion.format``, ``LoadReport.format``) is the name of its dominant layout, or
``"mixed(a+b)"``; a **style** is how a layout spells a kind's tensor roles (``lora_A`` vs ``lora_down``).

Map:

* ``keys.py``: the suffix table (built from the kinds' vocabularies) and the key prefixes;
* ``registry.py``: :class:`Layout`, the registry (registration order = detection order), parsing, detection;
* ``layouts/``: the layouts, one module per tool family, each with its writer (``diffusers``, ``peft``, ``kohya``;
  ``comfy`` is read only), and ``layouts.ORDER``, the registration order;
* ``groups.py``: one module's keys -> the kind that claims them (through ``lorakit.kinds``' registry);
* ``alphas.py``: where each module's alpha comes from;
* ``read.py``: :func:`to_canonical`;
* ``write.py``: :func:`from_canonical` and :func:`peft_config`, the one PEFT ``LoraConfig`` builder.
"""

from __future__ import annotations

from . import layouts  # noqa: F401  (registers the layouts, in layouts.ORDER)
from .read import Conversion, to_canonical
from .registry import REGISTRY, Layout, detect, writable
from .write import from_canonical, peft_config

#: the layouts from_canonical writes
LAYOUTS: tuple[str, ...] = writable()

__all__ = [
    "LAYOUTS",
    "REGISTRY",
    "Conversion",
    "Layout",
    "detect",
    "from_canonical",
    "peft_config",
    "to_canonical",
]
