"""aMUSEd: the UVit2D transformer and CLIP-L with projection (diffusers gave its pipelines no loader)."""

from __future__ import annotations

from typing import Any

from .base import BlockTable, Evidence, Family
from .encoders import CLIP_L

AMUSED_TRANSFORMER: dict[str, Any] = {
    "hidden_size": 1024,
    "use_bias": False,
    "hidden_dropout": 0.0,
    "cond_embed_dim": 768,
    "micro_cond_encode_dim": 256,
    "micro_cond_embed_dim": 1280,
    "encoder_hidden_size": 768,
    "vocab_size": 8256,
    "codebook_size": 8192,
    "in_channels": 768,
    "block_out_channels": 768,
    "num_res_blocks": 3,
    "downsample": False,
    "upsample": False,
    "block_num_heads": 12,
    "num_hidden_layers": 22,
    "num_attention_heads": 16,
    "attention_dropout": 0.0,
    "intermediate_size": 2816,
    "layer_norm_eps": 1e-6,
    "ln_elementwise_affine": True,
    "sample_size": 16,
}

#: the defaults of diffusers' examples/amused/train_amused.py, the only known producer; it writes no alpha, so
#: loaders apply scale 1 (not the 32/16 it trained with)
TRAIN_SCRIPT_DEFAULTS: dict[str, object] = {"r": 16, "lora_alpha": 32, "target_modules": ["to_q", "to_k", "to_v"]}

AMUSED = Family(
    name="amused",
    display="aMUSEd",
    loader="amused",
    denoiser="transformer",
    denoiser_class="UVit2DModel",
    text_encoders=("text_encoder",),
    scale_kwarg="cross_attention_kwargs",
    diffusers_mixin="AmusedLoraLoaderMixin",
    reference={
        "transformer": ("UVit2DModel", AMUSED_TRANSFORMER),
        "text_encoder": ("CLIPTextModelWithProjection", CLIP_L),
    },
    kohya_prefixes={"transformer": "lora_transformer_", "text_encoder": "lora_te_"},
    evidence=Evidence(
        key_hints=(
            "transformer_layers",
            "res_blocks",
            "attention_blocks",
            "encoder_proj",
            "mlm_layer",
            "project_to_hidden",
            "cond_embeds_mapper",
            "channelwise",
        ),
    ),
    blocks=BlockTable(kind="transformer", block_lists=("transformer_layers",), named=(("down", "down_block"), ("up", "up_block"))),
)
