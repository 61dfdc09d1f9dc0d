"""Stable Diffusion XL: UNet with the text-time embedding, CLIP-L and OpenCLIP-bigG."""

from __future__ import annotations

from typing import Any

from .base import Evidence, Family
from .encoders import CLIP_L, OPENCLIP_BIGG
from .sd import UNET_BLOCKS

SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

_ENCODERS = {
    "text_encoder": ("CLIPTextModel", CLIP_L),
    "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG),
}

SDXL = Family(
    name="sdxl",
    display="SDXL",
    loader="sdxl",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    text_encoders=("text_encoder", "text_encoder_2"),
    scale_kwarg="cross_attention_kwargs",
    diffusers_mixin="StableDiffusionXLLoraLoaderMixin",
    reference={"unet": ("UNet2DConditionModel", SDXL_UNET), **_ENCODERS},
    variants={"sdxl-inpaint": {"unet": ("UNet2DConditionModel", {**SDXL_UNET, "in_channels": 9}), **_ENCODERS}},
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    base_model_tag="sdxl_base_v1-0",
    evidence=Evidence(
        base_model_tags=("sdxl*",),
        architectures=("stable-diffusion-xl",),
        key_hints=("label_emb", "add_embedding"),
        cross_attention_width=2048,
    ),
    blocks=UNET_BLOCKS,
)
