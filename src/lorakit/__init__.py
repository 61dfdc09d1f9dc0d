"""lorakit: load, mix, fuse and save LoRA / LyCORIS adapters for diffusers pipelines, without PEFT."""

from __future__ import annotations

import logging

from . import errors, kinds
from .conversion import ConvertReport, convert
from .engine import AdapterManager, get_manager
from .inspection import InspectReport, inspect
from .io import read_lora
from .serving import AdapterCache, CacheStats, per_sample
from .kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA
from .pipelines import (
    AmusedLoraLoaderMixin,
    FluxLoraLoaderMixin,
    LoraBaseMixin,
    SD3LoraLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    StableDiffusionXLLoraLoaderMixin,
    attach,
    load_report,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AdapterCache",
    "CacheStats",
    "per_sample",
    "AdapterKind",
    "AdapterManager",
    "AmusedLoraLoaderMixin",
    "ConvertReport",
    "FluxLoraLoaderMixin",
    "InspectReport",
    "DoRA",
    "Full",
    "LoHa",
    "LoKr",
    "LoRA",
    "LoraBaseMixin",
    "SD3LoraLoaderMixin",
    "StableDiffusionLoraLoaderMixin",
    "StableDiffusionXLLoraLoaderMixin",
    "attach",
    "convert",
    "errors",
    "get_manager",
    "inspect",
    "kinds",
    "load_report",
    "read_lora",
]
