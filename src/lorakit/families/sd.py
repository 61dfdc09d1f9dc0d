"""Stable Diffusion 1.x and 2.x: one loader (``StableDiffusionLoraLoaderMixin``), two families (their shapes differ)."""

from __future__ import annotations

from typing import Any

from .base import BlockTable, Evidence, Family
from .encoders import CLIP_L, OPENCLIP_H

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD21_UNET: dict[str, Any] = {
    **SD15_UNET,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}

#: per-block weights over down / mid / up (diffusers' layout)
UNET_BLOCKS = BlockTable(kind="unet")

_COMMON: dict[str, Any] = dict(
    loader="sd",
    denoiser="unet",
    denoiser_class="UNet2DConditionModel",
    text_encoders=("text_encoder",),
    scale_kwarg="cross_attention_kwargs",
    diffusers_mixin="StableDiffusionLoraLoaderMixin",
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"},
    blocks=UNET_BLOCKS,
)


def _inpaint(unet: dict[str, Any]) -> dict[str, Any]:
    """The inpainting UNet: 9 input channels (latents + mask + masked image)."""
    return {**unet, "in_channels": 9}


SD1 = Family(
    name="sd1",
    display="SD1",
    reference={"unet": ("UNet2DConditionModel", SD15_UNET), "text_encoder": ("CLIPTextModel", CLIP_L)},
    variants={
        "sd1-inpaint": {"unet": ("UNet2DConditionModel", _inpaint(SD15_UNET)), "text_encoder": ("CLIPTextModel", CLIP_L)}
    },
    base_model_tag="sd_v1",
    evidence=Evidence(
        base_model_tags=("sd_v1*", "sd1*"),
        architectures=("stable-diffusion-v1",),
        cross_attention_width=768,
        text_encoder_width=768,
    ),
    **_COMMON,
)

SD2 = Family(
    name="sd2",
    display="SD2",
    reference={"unet": ("UNet2DConditionModel", SD21_UNET), "text_encoder": ("CLIPTextModel", OPENCLIP_H)},
    variants={
        "sd2-inpaint": {
            "unet": ("UNet2DConditionModel", _inpaint(SD21_UNET)),
            "text_encoder": ("CLIPTextModel", OPENCLIP_H),
        }
    },
    base_model_tag="sd_v2",
    evidence=Evidence(
        base_model_tags=("sd_v2*", "sd2*"),
        architectures=("stable-diffusion-v2",),
        cross_attention_width=1024,
        text_encoder_width=1024,
    ),
    **_COMMON,
)
