"""Per-family target data: module-path lookup tables and reference models.

Public helpers:

* :func:`build_index(model, component)` -> :class:`ModuleIndex` (alias -> :class:`Target`), cached per model.
* :func:`reference_components(family)` -> ``{component: meta model}`` for ``"sd1" | "sd2" | "sdxl" | "sd3" | "amused"``.
* :func:`family_of_components(components)` -> the family a set of real component models belongs to (or ``None``).
* :func:`family_from_metadata(metadata)` / :func:`family_candidates(names, scopes)` -> family guesses from a file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .configs import FAMILIES, FAMILY_OF, FAMILY_SPECS, VARIANTS
from .index import ModuleIndex, Target, build_index
from .reference import reference_components

__all__ = [
    "FAMILIES",
    "FAMILY_OF",
    "FAMILY_SPECS",
    "VARIANTS",
    "ModuleIndex",
    "Target",
    "build_index",
    "reference_components",
    "family_of_components",
    "family_from_metadata",
    "family_candidates",
]


def family_of_components(components: Mapping[str, nn.Module]) -> str | None:
    """Guess the family of real component models from their classes and configs."""
    den = components.get("unet") or components.get("transformer")
    if den is None:
        return None
    name = type(den).__name__
    cfg: Any = getattr(den, "config", None)
    get = (lambda k, d=None: getattr(cfg, k, d) if not isinstance(cfg, dict) else cfg.get(k, d)) if cfg else None
    if name == "SD3Transformer2DModel":
        return "sd3"  # SD3 / SD3.5: same family, same key conventions
    if name == "UVit2DModel":
        return "amused"
    if name == "UNet2DConditionModel" and get is not None:
        if get("addition_embed_type") == "text_time" or "text_encoder_2" in components:
            return "sdxl"
        cad = get("cross_attention_dim")
        # SD1 and SD2 share every key convention; 1024-wide cross-attention is SD2, anything else SD1-like
        return "sd2" if cad == 1024 else "sd1"
    return None


def family_from_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """The family named by kohya / SAI-modelspec header fields, if any."""
    if not metadata:
        return None
    base = str(metadata.get("ss_base_model_version", "") or "").lower()
    arch = str(metadata.get("modelspec.architecture", "") or "").lower()
    if base.startswith("sdxl") or "stable-diffusion-xl" in arch:
        return "sdxl"
    if base.startswith(("sd3", "medium", "5-large", "5-medium", "large")) or "stable-diffusion-3" in arch:
        return "sd3"
    if base.startswith("sd_v2") or "stable-diffusion-v2" in arch:
        return "sd2"
    if base.startswith("sd_v1") or "stable-diffusion-v1" in arch:
        return "sd1"
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return None


_SD3_HINTS = ("joint_blocks", "context_block", "x_block", "add_q_proj", "add_k_proj", "to_add_out", "ff_context",
              "context_embedder", "norm1_context")
_AMUSED_HINTS = ("transformer_layers", "res_blocks", "attention_blocks", "encoder_proj", "mlm_layer", "project_to_hidden",
                 "cond_embeds_mapper", "channelwise")
_SDXL_HINTS = ("label_emb", "add_embedding")


def family_candidates(names: Iterable[str], scopes: Iterable[str | None] = ()) -> list[str]:
    """Families that could hold these module names (best first); the caller scores them by shape fit."""
    flat = " ".join(n.replace(".", "_") for n in names)
    scopes = set(scopes)
    if any(h in flat for h in _SD3_HINTS) or "text_encoder_3" in scopes:
        return ["sd3"]
    if any(h in flat for h in _AMUSED_HINTS):
        return ["amused"]
    if any(h in flat for h in _SDXL_HINTS) or "text_encoder_2" in scopes:
        return ["sdxl", "sd3"]
    if "transformer" in scopes and "unet" not in scopes:
        return ["sd3", "amused"]
    return ["sd1", "sd2", "sdxl"]
