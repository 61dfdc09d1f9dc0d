"""Tiny seeded models for the formats tests (fp32, CPU, built in milliseconds)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import nn


def tiny_unet(kind: str = "sd1", seed: int = 0) -> nn.Module:
    """A 2-level UNet2DConditionModel: conv proj_in/out (sd1) or linear (sdxl-like, with text_time embedding)."""
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if kind == "sd1" else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if kind == "sd1" else ("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "sd1":
            m = UNet2DConditionModel(**common, cross_attention_dim=12, attention_head_dim=2)
        else:
            m = UNet2DConditionModel(
                **common,
                cross_attention_dim=12,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                transformer_layers_per_block=(1, 2),
                addition_embed_type="text_time",
                addition_time_embed_dim=4,
                projection_class_embeddings_input_dim=4 * 6 + 12,
            )
    return m.eval()


def unet_inputs(unet: nn.Module, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    cad = unet.config.cross_attention_dim
    kw = dict(
        sample=torch.randn(2, 4, 8, 8, generator=g),
        timestep=torch.tensor([3, 700]),
        encoder_hidden_states=torch.randn(2, 5, cad, generator=g),
    )
    if unet.config.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 12, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    return kw


def tiny_clip(with_projection: bool = False, seed: int = 0) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, projection_dim=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)
    return m.eval()


def clip_inputs() -> dict:
    return {"input_ids": torch.tensor([[1, 5, 9, 33, 2, 0], [1, 7, 7, 2, 0, 0]])}


def tiny_sd3(seed: int = 0) -> nn.Module:
    from diffusers import SD3Transformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
            joint_attention_dim=12, caption_projection_dim=8, pooled_projection_dim=10, out_channels=4,
            pos_embed_max_size=8,
        )
    return m.eval()


def sd3_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
        pooled_projections=torch.randn(2, 10, generator=g),
        timestep=torch.tensor([3, 700]),
    )


def output(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    first = out[0]
    return first


def assert_close(got: torch.Tensor, ref: torch.Tensor, base: torch.Tensor | None = None, rtol: float = 1e-5) -> None:
    """max |Δ| ≤ rtol · max |ref|, and (when ``base`` is given) the adapter changed the output noticeably."""
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    assert err <= rtol * max(scale, 1e-12), f"max |Δ| {err:.3e} > {rtol:g} × {scale:.3e}"
    if base is not None:
        moved = (ref - base).abs().max().item()
        assert moved > 1e3 * max(err, 1e-9) or moved > 1e-3, f"the adapter barely changes the output ({moved:.2e})"


@pytest.fixture
def clone() -> Callable[[nn.Module], nn.Module]:
    return copy.deepcopy


def randomize_(module: nn.Module, seed: int, names: tuple[str, ...], std: float = 0.3) -> None:
    """Fill adapter parameters whose name contains one of ``names`` with seeded noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(s in n for s in names):
                p.copy_(torch.randn(p.shape, generator=g) * std)
