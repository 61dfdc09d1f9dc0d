"""diffusers-compatible LoRA loader mixins on lorakit's engine, and ``attach(pipe)``.

The public contract is diffusers' loader API (``shared/spec/lora-loader-mixins.txt``): the same class names, method
names, argument names, defaults and return values. ``api.py`` holds the behaviour shared by every family
(:class:`LoraBaseMixin`, over :class:`lorakit.components.ComponentSet`), ``mixins.py`` the family signatures,
``attach.py`` the class swap, ``blocks.py`` per-block weights and ``save.py`` diffusers' file writer.

Example:
    >>> import lorakit
    >>> pipe = lorakit.attach(StableDiffusionPipeline.from_pretrained(...))  # doctest: +SKIP
    >>> pipe.load_lora_weights("style.safetensors", adapter_name="style")  # doctest: +SKIP
    >>> pipe.set_adapters(["style"], adapter_weights=[{"unet": {"down": 0.5}, "text_encoder": 1.0}])  # doctest: +SKIP
"""

from .api import LoraBaseMixin, load_report
from .attach import attach
from .mixins import (
    MIXINS,
    AmusedLoraLoaderMixin,
    FluxLoraLoaderMixin,
    SD3LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
)

__all__ = [
    "MIXINS",
    "AmusedLoraLoaderMixin",
    "FluxLoraLoaderMixin",
    "LoraBaseMixin",
    "SD3LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "attach",
    "load_report",
]
