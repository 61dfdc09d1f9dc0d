"""Flux.1 [dev] / [schnell]: the ``FluxTransformer2DModel`` (19 double + 38 single blocks), CLIP-L and T5-XXL.

diffusers' ``FluxLoraLoaderMixin`` loads LoRA into the transformer and CLIP (``text_encoder``); lorakit also loads T5
(``text_encoder_2``) when a file has keys for it. Module names of the files written against BFL's reference code
(kohya sd-scripts, ComfyUI, XLabs, OneTrainer, fal) are mapped onto diffusers' modules by :mod:`lorakit.targets.flux`.
"""

from __future__ import annotations

from typing import Any

from .base import BlockTable, Evidence, Family
from .encoders import CLIP_L, T5_XXL

#: FLUX.1 [dev] (black-forest-labs/FLUX.1-dev transformer/config.json): 24 heads × 128 = 3072 wide
FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}

#: FLUX.1 [schnell]: the same transformer without the guidance embedder
FLUX1_SCHNELL_TRANSFORMER: dict[str, Any] = {**FLUX1_DEV_TRANSFORMER, "guidance_embeds": False}

_ENCODERS: dict[str, Any] = {
    "text_encoder": ("CLIPTextModel", CLIP_L),
    "text_encoder_2": ("T5EncoderModel", T5_XXL),
}

FLUX = Family(
    name="flux",
    display="Flux",
    loader="flux",
    denoiser="transformer",
    denoiser_class="FluxTransformer2DModel",
    text_encoders=("text_encoder",),
    # diffusers' Flux loader has no T5; lorakit loads kohya lora_te3_ / OneTrainer lora_te2_ keys into it
    extra_components=("text_encoder_2",),
    scale_kwarg="joint_attention_kwargs",
    diffusers_mixin="FluxLoraLoaderMixin",
    reference={"transformer": ("FluxTransformer2DModel", FLUX1_DEV_TRANSFORMER), **_ENCODERS},
    variants={"flux-schnell": {"transformer": ("FluxTransformer2DModel", FLUX1_SCHNELL_TRANSFORMER), **_ENCODERS}},
    # what lorakit writes: OneTrainer's diffusers-named kohya keys (diffusers and ComfyUI read lora_transformer_;
    # sd-scripts' own lora_unet_ files use BFL names, which lorakit reads but does not write)
    kohya_prefixes={"transformer": "lora_transformer_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
    # prefixes of SD3-era files that name T5 text_encoder_3 (sd-scripts lora_te3_, ComfyUI text_encoders.t5xxl.,
    # OneTrainer OMI t5.): Flux pipelines hold T5 as text_encoder_2
    scope_aliases={"text_encoder_3": "text_encoder_2"},
    base_model_tag="flux1",
    evidence=Evidence(
        base_model_tags=("flux1*", "flux.1*", "flux_1*", "flux-1*"),
        architectures=("flux-1",),
        network_modules=("flux",),  # sd-scripts networks.lora_flux
        # the first group only Flux has; the second Flux shares with SD3's diffusers names (so both are candidates,
        # and the shapes decide between them)
        key_hints=(
            "double_blocks",
            "single_blocks",
            "single_transformer_blocks",
            "proj_mlp",
            "img_attn",
            "txt_attn",
            "img_mod",
            "txt_mod",
            "img_mlp",
            "txt_mlp",
            "guidance_in",
            "guidance_embedder",
            "vector_in",
            "add_q_proj",
            "add_k_proj",
            "to_add_out",
            "ff_context",
            "context_embedder",
            "norm1_context",
        ),
    ),
    # block_0 .. block_18 are the double blocks, block_19 .. block_56 the single blocks (FLUX.1)
    blocks=BlockTable(kind="transformer", block_lists=("transformer_blocks", "single_transformer_blocks")),
)
