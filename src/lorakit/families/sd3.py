"""Stable Diffusion 3 / 3.5: the MMDiT transformer, CLIP-L, OpenCLIP-bigG and T5-XXL."""

from __future__ import annotations

from typing import Any

from .base import BlockTable, Evidence, Family
from .encoders import CLIP_L, OPENCLIP_BIGG, T5_XXL

SD3_MEDIUM_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
}

#: SD3.5-large: 38 blocks × 2432 (38 heads × 64), qk RMS-norm
SD35_LARGE_TRANSFORMER: dict[str, Any] = {
    **SD3_MEDIUM_TRANSFORMER,
    "num_layers": 38,
    "num_attention_heads": 38,
    "caption_projection_dim": 2432,
    "qk_norm": "rms_norm",
}

#: SD3.5-medium: 24 blocks × 1536, dual attention (attn2) in the first 13 blocks, qk RMS-norm
SD35_MEDIUM_TRANSFORMER: dict[str, Any] = {
    **SD3_MEDIUM_TRANSFORMER,
    "pos_embed_max_size": 384,
    "qk_norm": "rms_norm",
    "dual_attention_layers": list(range(13)),
}

_ENCODERS: dict[str, Any] = {
    "text_encoder": ("CLIPTextModelWithProjection", CLIP_L),
    "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG),
    "text_encoder_3": ("T5EncoderModel", T5_XXL),
}

SD3 = Family(
    name="sd3",
    display="SD3",
    loader="sd3",
    denoiser="transformer",
    denoiser_class="SD3Transformer2DModel",
    text_encoders=("text_encoder", "text_encoder_2"),
    # diffusers' SD3 loader has no T5; lorakit loads kohya lora_te3_ keys into it
    extra_components=("text_encoder_3",),
    scale_kwarg="joint_attention_kwargs",
    diffusers_mixin="SD3LoraLoaderMixin",
    reference={"transformer": ("SD3Transformer2DModel", SD3_MEDIUM_TRANSFORMER), **_ENCODERS},
    variants={
        "sd3.5-large": {"transformer": ("SD3Transformer2DModel", SD35_LARGE_TRANSFORMER), **_ENCODERS},
        "sd3.5-medium": {"transformer": ("SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER), **_ENCODERS},
    },
    kohya_prefixes={
        "transformer": "lora_transformer_",
        "text_encoder": "lora_te1_",
        "text_encoder_2": "lora_te2_",
        "text_encoder_3": "lora_te3_",
    },
    base_model_tag="sd3",
    evidence=Evidence(
        base_model_tags=("sd3*", "3*", "medium", "large", "5-large*", "5-medium*"),
        architectures=("stable-diffusion-3",),
        network_modules=("sd3",),
        key_hints=(
            "joint_blocks",
            "context_block",
            "x_block",
            "add_q_proj",
            "add_k_proj",
            "to_add_out",
            "ff_context",
            "context_embedder",
            "norm1_context",
        ),
    ),
    blocks=BlockTable(kind="transformer", block_lists=("transformer_blocks",)),
)
