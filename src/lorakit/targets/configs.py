"""Reference configs of the supported families (real model sizes), as plain data.

Written from the published model configs (diffusers / transformers defaults plus the values listed in
``formats.md`` §2.4.1). They are used to build reference models on the ``meta`` device when no model is given
(``lorakit.inspect``, ``lorakit.convert``) and by the key->shape tests. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

#: family name -> component name -> (class name, config kwargs)
ComponentSpec = tuple[str, dict[str, Any]]

CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}

#: OpenCLIP ViT-H text tower as shipped with SD 2.x (23 layers: the last one is dropped)
OPENCLIP_H: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 512,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
}

#: OpenCLIP ViT-bigG text tower (SDXL text_encoder_2, SD3 text_encoder_2)
OPENCLIP_BIGG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
}

T5_XXL: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
}

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

FAMILY_SPECS: dict[str, dict[str, ComponentSpec]] = {
    "sd1": {
        "unet": ("UNet2DConditionModel", SD15_UNET),
        "text_encoder": ("CLIPTextModel", CLIP_L),
    },
    "sd2": {
        "unet": ("UNet2DConditionModel", SD21_UNET),
        "text_encoder": ("CLIPTextModel", OPENCLIP_H),
    },
    "sdxl": {
        "unet": ("UNet2DConditionModel", SDXL_UNET),
        "text_encoder": ("CLIPTextModel", CLIP_L),
        "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG),
    },
    "sd3": {
        "transformer": ("SD3Transformer2DModel", SD3_MEDIUM_TRANSFORMER),
        "text_encoder": ("CLIPTextModelWithProjection", CLIP_L),
        "text_encoder_2": ("CLIPTextModelWithProjection", OPENCLIP_BIGG),
        "text_encoder_3": ("T5EncoderModel", T5_XXL),
    },
    "amused": {
        "transformer": ("UVit2DModel", AMUSED_TRANSFORMER),
        "text_encoder": ("CLIPTextModelWithProjection", CLIP_L),
    },
}

FAMILIES: tuple[str, ...] = tuple(FAMILY_SPECS)

_SD3_ENCODERS = {k: v for k, v in FAMILY_SPECS["sd3"].items() if k != "transformer"}
#: other checkpoints of a family with different shapes (reference models tried in this order when guessing)
VARIANT_SPECS: dict[str, dict[str, ComponentSpec]] = {
    "sd3.5-large": {"transformer": ("SD3Transformer2DModel", SD35_LARGE_TRANSFORMER), **_SD3_ENCODERS},
    "sd3.5-medium": {"transformer": ("SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER), **_SD3_ENCODERS},
}
for _fam in ("sd1", "sd2", "sdxl"):  # inpainting UNets: 9 input channels (latents + mask + masked image)
    _cls, _cfg = FAMILY_SPECS[_fam]["unet"]
    VARIANT_SPECS[f"{_fam}-inpaint"] = {**FAMILY_SPECS[_fam], "unet": (_cls, {**_cfg, "in_channels": 9})}

#: family -> its variants (the family's own name first)
VARIANTS: dict[str, tuple[str, ...]] = {
    "sd1": ("sd1", "sd1-inpaint"),
    "sd2": ("sd2", "sd2-inpaint"),
    "sdxl": ("sdxl", "sdxl-inpaint"),
    "sd3": ("sd3", "sd3.5-large", "sd3.5-medium"),
}
#: variant -> family
FAMILY_OF: dict[str, str] = {**{f: f for f in FAMILY_SPECS}, **{v: f for f, vs in VARIANTS.items() for v in vs}}
