"""Tiny diffusers pipelines for tests, demos and benchmarks: no downloads, seeded, built in ~50 ms (after imports).

Every family lorakit supports has a builder: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"flux"`` and ``"amused"``. The
models are built from configs (the real architectures at toy widths) with weights drawn from a seeded generator, and
the tokenizers are a tiny byte-level CLIP BPE tokenizer shipped with lorakit
(``lorakit/assets/tiny-clip-tokenizer``; 519 tokens: 512 byte symbols, a few merges, ``<|startoftext|>`` and
``<|endoftext|>``). SD3 gets a tiny T5 encoder as ``text_encoder_3`` (``with_t5=False`` leaves it out, which the SD3
pipelines allow); its tokenizer is the same tiny CLIP tokenizer, which the pipeline only ever calls.

``tiny_pipeline("flux")`` builds a tiny Flux.1 [dev]-like pipeline (2 double + 2 single blocks, width 32,
``guidance_embeds=True``, a tiny CLIP ``text_encoder``, a tiny T5 ``text_encoder_2`` (tokenized by the same tiny
CLIP tokenizer), a 16-latent-channel VAE); its images are 32×32 (latents 16×16, 64 packed tokens; pass
``max_sequence_length=16`` or so: T5 pads the prompt to it).

Example:
    >>> from lorakit.tiny import tiny_pipeline
    >>> pipe = tiny_pipeline("sd1")
    >>> image = pipe("a cat", num_inference_steps=2, output_type="np").images  # (1, 16, 16, 3)

Sizes (defaults): images are 16×16 for SD/SDXL/SD3 (latents 8×8) and aMUSEd; text encoders are 2-5 layer CLIPs of
width 32 (8 for aMUSEd). Building is deterministic given ``seed`` and leaves the global RNG untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

import torch

__all__ = ["FAMILIES", "PENDING_TASKS", "TASKS", "tiny_components", "tiny_pipeline", "tiny_tokenizer", "TOKENIZER_DIR"]

#: families tiny_pipeline can build
FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl", "sd3", "flux", "amused")
#: pipeline tasks per family (names of diffusers pipeline classes)
TASKS: dict[str, dict[str, str]] = {
    "sd1": {
        "text2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    },
    "sd2": {
        "text2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    },
    "sdxl": {
        "text2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    },
    "sd3": {
        "text2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
    },
    "flux": {
        "text2img": "FluxPipeline",
        "img2img": "FluxImg2ImgPipeline",
        "inpaint": "FluxInpaintPipeline",
    },
    "amused": {
        "text2img": "AmusedPipeline",
        "img2img": "AmusedImg2ImgPipeline",
        "inpaint": "AmusedInpaintPipeline",
    },
}

#: families tiny_pipeline builds that are not (yet) in FAMILIES / TASKS (none at present)
PENDING_TASKS: dict[str, dict[str, str]] = {}

#: the shipped tokenizer files (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt)
TOKENIZER_DIR = str(resources.files("lorakit") / "assets" / "tiny-clip-tokenizer")
_VOCAB = 519
_BOS, _EOS = 517, 518


def tiny_tokenizer() -> Any:
    """The tiny CLIP tokenizer (``model_max_length`` 77, bos 517, eos = pad 518), loaded from local files."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def _clip_config(
    hidden: int = 32, layers: int = 2, heads: int = 4, projection_dim: int = 32, act: str = "quick_gelu"
):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=_VOCAB,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=_BOS,
        eos_token_id=_EOS,
        pad_token_id=_EOS,
    )


def _sd_unet(family: str) -> Any:
    from diffusers import UNet2DConditionModel

    common: dict[str, Any] = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    if family == "sd1":
        return UNet2DConditionModel(**common, cross_attention_dim=32, attention_head_dim=2)
    if family == "sd2":
        return UNet2DConditionModel(
            **common, cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True
        )
    # sdxl: text_time additional embedding; 6 time ids × 8 + pooled text embeds (32) = 80
    return UNet2DConditionModel(
        **common,
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
    )


def _sd_vae(sd3: bool = False) -> Any:
    from diffusers import AutoencoderKL

    kw: dict[str, Any] = dict(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )
    if sd3:  # SD3 latents have 16 channels (the inpaint pipeline insists)
        kw.update(
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    return AutoencoderKL(**kw)


def _flux_vae() -> Any:
    from diffusers import AutoencoderKL

    # FLUX.1's VAE: 16 latent channels, no quant convs, its own shift/scale
    return AutoencoderKL(
        block_out_channels=(4, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=16,
        norm_num_groups=2,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def _flux_transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    # in_channels = 16 latent channels × 2×2 packing; 2 heads × 16 = width 32; rope axes sum to the head dim;
    # joint_attention_dim = T5 width, pooled_projection_dim = CLIP width
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )


def _tiny_t5(d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config: dict[str, Any] = dict(
        vocab_size=_VOCAB,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=_EOS,
        eos_token_id=_EOS,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(T5Config(**config))


def _build(family: str, with_t5: bool) -> dict[str, Callable[[], Any]]:
    """Per component a constructor (called under a seed of its own)."""
    from diffusers import (
        AmusedScheduler,
        DDIMScheduler,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        UVit2DModel,
        VQModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family in ("sd1", "sd2"):
        act = "quick_gelu" if family == "sd1" else "gelu"
        return {
            "unet": lambda: _sd_unet(family),
            "vae": _sd_vae,
            "text_encoder": lambda: CLIPTextModel(_clip_config(layers=3, act=act)),
            "tokenizer": tiny_tokenizer,
            "scheduler": lambda: DDIMScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                clip_sample=False,
                set_alpha_to_one=False,
                steps_offset=1,
            ),
        }
    if family == "sdxl":
        return {
            "unet": lambda: _sd_unet("sdxl"),
            "vae": _sd_vae,
            "text_encoder": lambda: CLIPTextModel(_clip_config(layers=2)),
            "tokenizer": tiny_tokenizer,
            "text_encoder_2": lambda: CLIPTextModelWithProjection(_clip_config(layers=2, act="gelu")),
            "tokenizer_2": tiny_tokenizer,
            "scheduler": lambda: EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                timestep_spacing="leading",
                steps_offset=1,
            ),
        }
    if family == "sd3":
        comps: dict[str, Callable[[], Any]] = {
            # joint_attention_dim = 2 CLIPs × 32 = T5 width (the pipeline pads CLIP embeddings to it)
            "transformer": lambda: SD3Transformer2DModel(
                sample_size=8,
                patch_size=1,
                in_channels=16,
                out_channels=16,
                num_layers=2,
                attention_head_dim=8,
                num_attention_heads=4,
                caption_projection_dim=32,
                joint_attention_dim=64,
                pooled_projection_dim=64,
                pos_embed_max_size=16,
            ),
            "vae": lambda: _sd_vae(sd3=True),
            "text_encoder": lambda: CLIPTextModelWithProjection(_clip_config(layers=2, act="gelu")),
            "tokenizer": tiny_tokenizer,
            "text_encoder_2": lambda: CLIPTextModelWithProjection(_clip_config(layers=2, act="gelu")),
            "tokenizer_2": tiny_tokenizer,
            "text_encoder_3": lambda: None,
            "tokenizer_3": lambda: None,
            "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
        }
        if with_t5:
            comps["text_encoder_3"] = lambda: _tiny_t5(64)
            comps["tokenizer_3"] = tiny_tokenizer
        return comps
    if family == "flux":
        return {
            "transformer": _flux_transformer,
            "vae": _flux_vae,
            "text_encoder": lambda: CLIPTextModel(_clip_config(layers=2)),
            "tokenizer": tiny_tokenizer,
            "text_encoder_2": lambda: _tiny_t5(32),
            "tokenizer_2": tiny_tokenizer,
            "scheduler": lambda: FlowMatchEulerDiscreteScheduler(
                base_image_seq_len=256,
                base_shift=0.5,
                max_image_seq_len=4096,
                max_shift=1.15,
                shift=3.0,
                use_dynamic_shifting=True,
            ),
        }
    if family == "amused":
        return {
            "vqvae": lambda: VQModel(
                act_fn="silu",
                block_out_channels=[8],
                down_block_types=["DownEncoderBlock2D"],
                in_channels=3,
                latent_channels=8,
                layers_per_block=1,
                norm_num_groups=8,
                num_vq_embeddings=8,
                out_channels=3,
                sample_size=8,
                up_block_types=["UpDecoderBlock2D"],
                mid_block_add_attention=False,
                lookup_from_codebook=True,
            ),
            "tokenizer": tiny_tokenizer,
            "text_encoder": lambda: CLIPTextModelWithProjection(
                _clip_config(hidden=8, layers=2, heads=2, projection_dim=8, act="gelu")
            ),
            "transformer": lambda: UVit2DModel(
                hidden_size=8,
                use_bias=False,
                hidden_dropout=0.0,
                cond_embed_dim=8,
                micro_cond_encode_dim=2,
                micro_cond_embed_dim=10,
                encoder_hidden_size=8,
                vocab_size=32,
                codebook_size=8,
                in_channels=8,
                block_out_channels=8,
                num_res_blocks=1,
                downsample=True,
                upsample=True,
                block_num_heads=1,
                num_hidden_layers=2,
                num_attention_heads=1,
                attention_dropout=0.0,
                intermediate_size=8,
                layer_norm_eps=1e-06,
                ln_elementwise_affine=True,
                sample_size=16,
            ),
            "scheduler": lambda: AmusedScheduler(mask_token_id=31),
        }
    raise ValueError(f"unknown tiny family {family!r}; known: {', '.join((*FAMILIES, *PENDING_TASKS))}")


def tiny_components(
    family: str, seed: int = 0, dtype: torch.dtype = torch.float32, *, with_t5: bool = True
) -> dict[str, Any]:
    """The components of a tiny pipeline of ``family`` (``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"flux"``,
    ``"amused"``).

    Args:
        family: one of :data:`FAMILIES`.
        seed: weights are drawn from ``torch.manual_seed(seed + i)`` for the i-th component, inside a forked RNG
            (the caller's global RNG state is not changed).
        dtype: dtype of every model (tokenizers and schedulers are unaffected).
        with_t5: SD3 only: build a tiny T5 ``text_encoder_3`` (else ``text_encoder_3 = tokenizer_3 = None``).

    Returns:
        ``{name: component}`` as the family's pipelines take them (SD pipelines also get ``safety_checker=None``,
        ``feature_extractor=None``, ``requires_safety_checker=False``; SD3 ``image_encoder``/``feature_extractor``
        = None).

    Example:
        >>> comps = tiny_components("sdxl")
        >>> comps["unet"].config.cross_attention_dim
        64
    """
    builders = _build(family, with_t5)
    out: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        for i, (name, make) in enumerate(builders.items()):
            torch.manual_seed(seed + i)
            comp = make()
            if isinstance(comp, torch.nn.Module):
                if dtype != torch.float32:  # models are built in fp32; cast only when asked
                    comp = comp.to(dtype=dtype)
                comp = comp.eval()
            out[name] = comp
    if family in ("sd1", "sd2"):
        out.update(
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False
        )
    elif family in ("sdxl", "sd3", "flux"):
        out.update(image_encoder=None, feature_extractor=None)
    return out


def tiny_pipeline(
    family: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    task: str = "text2img",
    with_t5: bool = True,
) -> Any:
    """A tiny diffusers pipeline of ``family`` (see :func:`tiny_components`), a plain diffusers object.

    Args:
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sd3"``, ``"flux"`` or ``"amused"``.
        seed: weight seed (same seed, same weights).
        dtype: dtype of the models.
        task: ``"text2img"``, ``"img2img"`` or ``"inpaint"`` (the family's diffusers pipeline class, see
            :data:`TASKS`).
        with_t5: SD3 only: include the tiny T5 text encoder.

    Returns:
        The diffusers pipeline (on CPU, progress bar disabled). Use ``lorakit.attach(pipe)`` to give it
        lorakit's LoRA methods.

    Example:
        >>> pipe = tiny_pipeline("sd3", with_t5=False)
        >>> out = pipe("a cat", num_inference_steps=2, output_type="latent", max_sequence_length=8)
    """
    import diffusers

    try:
        cls_name = {**TASKS, **PENDING_TASKS}[family][task]
    except KeyError:
        raise ValueError(
            f"unknown tiny pipeline {family!r}/{task!r}; families: {', '.join((*FAMILIES, *PENDING_TASKS))}; tasks: "
            "text2img, img2img, inpaint"
        ) from None
    cls = getattr(diffusers, cls_name)
    comps = tiny_components(family, seed, dtype, with_t5=with_t5)
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    pipe = cls(**{k: v for k, v in comps.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe
