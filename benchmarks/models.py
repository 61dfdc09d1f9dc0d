"""Benchmark models: SD1.5 / SDXL-size UNets and CLIP text encoders with seeded random weights, built from configs.

Building an 860M-parameter UNet with PyTorch's default initialisation takes minutes on two cores, so models are
built once per run on the ``meta`` device, materialised with ``to_empty`` and filled from a seeded generator
(fan-in scaled normals, norms ~1, small biases), then written with ``save_pretrained``. Every measurement process
loads them back with ``from_pretrained`` (safetensors, seconds).

Sizes (``SIZES``): ``sd15`` (the issue's SD1.5 UNet + CLIP-L), ``sdxl`` (SDXL UNet + CLIP-L + OpenCLIP-bigG),
``quick`` (SD1.5 structure at half width, CLIP-L at 12 layers × 384: development runs), ``cycle`` (SD1.5 structure
at quarter width: the 100 load/unload cycle figure) and ``toy`` (tiny, for the smoke test).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

VOCAB_CLIP = 49408


@dataclass(frozen=True)
class Size:
    """One model size: the UNet config, the text encoder configs and the LoRA ranks used with it."""

    name: str
    family: str  # "sd1" or "sdxl"
    unet: dict[str, Any]
    text_encoders: dict[str, dict[str, Any]]  # component -> CLIPTextConfig kwargs (+ "with_projection")
    latent: int = 64  # latent height/width of the forward benchmark
    rank: int = 32  # kohya file rank
    rank_diffusers: int = 64  # diffusers-format attention-only file rank
    describe: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _clip(hidden: int, layers: int, heads: int, inter: int, act: str = "quick_gelu", vocab: int = VOCAB_CLIP, proj: bool = False,
          projection_dim: int = 768) -> dict[str, Any]:
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
        with_projection=proj,
    )


def _sd1_unet(channels: tuple[int, ...], cross: int = 768, heads: int = 8, groups: int = 32, sample: int = 64) -> dict[str, Any]:
    return dict(
        sample_size=sample,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=channels,
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
        cross_attention_dim=cross,
        attention_head_dim=heads,
        norm_num_groups=groups,
    )


def _flux(heads: int, double: int = 19, single: int = 38) -> dict[str, Any]:
    """FLUX.1 [dev]'s transformer config at ``heads`` × 128 wide (the real model: 24 heads, 3072)."""
    return dict(
        patch_size=1,
        in_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=128,
        num_attention_heads=heads,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )


SIZES: dict[str, Size] = {
    "sd15": Size(
        "sd15",
        "sd1",
        _sd1_unet((320, 640, 1280, 1280)),
        {"text_encoder": _clip(768, 12, 12, 3072)},
        describe="SD1.5-size UNet2DConditionModel (320/640/1280/1280, cross-attention 768, 2 layers/block, 8 heads) "
        "+ CLIP-L-size CLIPTextModel (12 × 768)",
    ),
    "quick": Size(
        "quick",
        "sd1",
        _sd1_unet((160, 320, 640, 640)),
        {"text_encoder": _clip(768, 12, 12, 3072)},
        latent=32,
        describe="--quick: SD1.5 structure at half width (160/320/640/640, cross-attention 768) + CLIP-L-size text "
        "encoder; 32×32 latents",
    ),
    "cycle": Size(
        "cycle",
        "sd1",
        _sd1_unet((80, 160, 320, 320), groups=16),
        {"text_encoder": _clip(384, 12, 6, 1536)},
        latent=16,
        describe="SD1.5 structure at quarter width (80/160/320/320) + 12 × 384 CLIP (same module count as SD1.5)",
    ),
    "toy": Size(
        "toy",
        "sd1",
        _sd1_unet((32, 64), cross=32, heads=2, groups=8, sample=8),
        {"text_encoder": _clip(32, 2, 4, 37, vocab=1000, projection_dim=32)},
        latent=8,
        rank=4,
        rank_diffusers=8,
        describe="toy (smoke test): 2-block UNet of width 32/64, 2-layer CLIP of width 32",
    ),
    "flux": Size(
        "flux",
        "flux",
        _flux(heads=6),
        {},
        rank=16,
        rank_diffusers=16,
        describe="FLUX.1 [dev] transformer with the real block count (19 double + 38 single) at a quarter of the width "
        "(6 × 128 = 768; the real model is 3072 wide, 12 B parameters = 48 GB in fp32: it does not fit this machine's "
        "24 GB, nor does bf16 beside a second copy); diffusers-format rank-16 LoRA on every attention projection, "
        "proj_mlp and proj_out",
    ),
    "flux-toy": Size(
        "flux-toy",
        "flux",
        {**_flux(heads=1, double=2, single=2), "joint_attention_dim": 32, "pooled_projection_dim": 32},
        {},
        rank=4,
        rank_diffusers=4,
        describe="toy Flux (smoke test): 2 double + 2 single blocks, 128 wide",
    ),
    "sdxl": Size(
        "sdxl",
        "sdxl",
        dict(
            sample_size=128,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        {
            "text_encoder": _clip(768, 12, 12, 3072),
            "text_encoder_2": _clip(1280, 32, 20, 5120, act="gelu", proj=True, projection_dim=1280),
        },
        latent=128,
        describe="SDXL-size UNet (320/640/1280, transformer layers 1/2/10, cross-attention 2048) + CLIP-L + "
        "OpenCLIP-bigG-size text encoders; 128×128 latents",
    ),
}


def _fill_(model: nn.Module, seed: int) -> None:
    """Seeded weights: fan-in scaled normals for matrices/kernels, ~1 for norm scales, small biases/embeddings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embedding" not in name:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=g)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif name.endswith("weight"):  # norm scales
                p.normal_(1.0, 0.02, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)


def build_unet(size: Size, seed: int = 0) -> nn.Module:
    """The size's denoiser (a UNet; Flux's transformer for the Flux sizes), seeded."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    cls = FluxTransformer2DModel if size.family == "flux" else UNet2DConditionModel
    with torch.device("meta"):
        unet = cls(**size.unet)
    unet = unet.to_empty(device="cpu")
    _fill_(unet, seed)
    return unet.eval()


def build_text_encoder(cfg: dict[str, Any], seed: int = 0) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = dict(cfg)
    proj = cfg.pop("with_projection")
    config = CLIPTextConfig(**cfg)
    cls = CLIPTextModelWithProjection if proj else CLIPTextModel
    with torch.device("meta"):
        te = cls(config)
    te = te.to_empty(device="cpu")
    _fill_(te, seed)
    # non-persistent buffers are not saved; from_pretrained re-creates them, but keep the built model usable too
    for mod in te.modules():
        if hasattr(mod, "position_ids") and isinstance(mod.position_ids, torch.Tensor):
            mod.position_ids.copy_(torch.arange(mod.position_ids.shape[-1]).expand_as(mod.position_ids))
    return te.eval()


def save_models(size: Size, folder: str, seed: int = 0) -> dict[str, str]:
    """Build and ``save_pretrained`` the UNet and text encoders of ``size`` under ``folder``; returns their paths."""
    out: dict[str, str] = {}
    unet = build_unet(size, seed)
    den = denoiser(size)
    out[den] = os.path.join(folder, den)
    unet.save_pretrained(out[den])
    del unet
    for i, (comp, cfg) in enumerate(size.text_encoders.items()):
        te = build_text_encoder(cfg, seed + 1 + i)
        out[comp] = os.path.join(folder, comp)
        te.save_pretrained(out[comp])
        del te
    return out


def denoiser(size: Size) -> str:
    return "transformer" if size.family == "flux" else "unet"


def load_pipeline(size: Size, folder: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """The diffusers pipeline of ``size`` with the saved models (tiny VAE and tokenizer: never benchmarked; Flux also
    keeps the tiny text encoders: its benchmark LoRA targets the transformer)."""
    import diffusers
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.tiny import tiny_components

    comps = tiny_components(size.family)
    den_cls = FluxTransformer2DModel if size.family == "flux" else UNet2DConditionModel
    den = denoiser(size)
    comps[den] = den_cls.from_pretrained(os.path.join(folder, den), torch_dtype=dtype).eval()
    for comp, cfg in size.text_encoders.items():
        cls = CLIPTextModelWithProjection if cfg["with_projection"] else CLIPTextModel
        comps[comp] = cls.from_pretrained(os.path.join(folder, comp), torch_dtype=dtype).eval()
    cls = {"sdxl": diffusers.StableDiffusionXLPipeline, "flux": diffusers.FluxPipeline}.get(
        size.family, diffusers.StableDiffusionPipeline
    )
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    pipe = cls(**{k: v for k, v in comps.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipe.to(device)
    for p in pipe.components.values():
        if isinstance(p, nn.Module):
            p.requires_grad_(False)
    return pipe


def unet_inputs(size: Size, pipe: Any, seed: int = 0) -> dict[str, Any]:
    """Seeded UNet inputs: batch 1, ``size.latent``² latents, 77 text tokens (+ SDXL's added conditions)."""
    unet = pipe.unet
    dev, dt = unet.device, unet.dtype
    g = torch.Generator().manual_seed(seed)
    cross = size.unet["cross_attention_dim"]
    kw: dict[str, Any] = dict(
        sample=torch.randn(1, 4, size.latent, size.latent, generator=g).to(dev, dt),
        timestep=torch.tensor([500], device=dev),
        encoder_hidden_states=torch.randn(1, 77, cross, generator=g).to(dev, dt),
    )
    if size.family == "sdxl":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 1280, generator=g).to(dev, dt),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).to(dev, dt),
        }
    return kw


def text_inputs(size: Size, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vocab = next(iter(size.text_encoders.values()))["vocab_size"]
    return torch.randint(0, vocab - 2, (1, 77), generator=g)
