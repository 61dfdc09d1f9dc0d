"""The adapter engine: per-module maths (``apply``), the hooks on one module (``slot``) and the per-model state
(``manager``). Pure PyTorch; no diffusers or transformers import."""

from .apply import SUPPORTED_MODULES, check_kind_fits, is_supported
from .manager import AdapterManager, FusePlan, check_name, get_manager, resolve_device
from .weights import Weight, as_number, as_weight, is_scalar

__all__ = [
    "SUPPORTED_MODULES",
    "AdapterManager",
    "FusePlan",
    "Weight",
    "as_number",
    "as_weight",
    "check_kind_fits",
    "check_name",
    "get_manager",
    "is_scalar",
    "is_supported",
    "resolve_device",
]
