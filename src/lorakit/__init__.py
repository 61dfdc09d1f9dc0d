"""lorakit: load, mix, fuse and save LoRA / LyCORIS adapters for diffusers pipelines, without PEFT."""

from __future__ import annotations

from . import errors, kinds, log
from .conversion import ConvertReport, convert
from .engine import AdapterManager, get_manager
from .inspection import InspectReport, inspect
from .io import read_lora
from .kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA
from .log import (
    get_verbosity,
    set_verbosity,
    set_verbosity_debug,
    set_verbosity_error,
    set_verbosity_info,
    set_verbosity_warning,
)
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
from .save import save_adapter
from .serving import AdapterCache, CacheStats, per_sample

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
    "get_verbosity",
    "inspect",
    "kinds",
    "load_report",
    "log",
    "read_lora",
    "save_adapter",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_error",
    "set_verbosity_info",
    "set_verbosity_warning",
]
