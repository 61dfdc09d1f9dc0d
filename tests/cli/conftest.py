"""Fixtures for the CLI tests: a tiny SD1 pipeline saved as a diffusers folder, LoRA files for it (kohya layout, as
the demo writes them) and a small LoRA whose shapes fit a real SD1 model (for commands that check the reference
family: convert, inspect without a model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorakit.demo import write_kohya_lora
from lorakit.tiny import tiny_pipeline


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1 pipeline folder (``save_pretrained``), usable as ``--model``."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd1"
    tiny_pipeline("sd1").save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``style.safetensors`` and ``detail.safetensors`` (kohya layout) for the tiny SD1 pipeline."""
    folder = tmp_path_factory.mktemp("loras")
    pipe = tiny_pipeline("sd1")
    write_kohya_lora(pipe, folder / "style.safetensors", "sd1", seed=1)
    write_kohya_lora(pipe, folder / "sub" / "detail.safetensors", "sd1", seed=2, rank=2, alpha=1.0)
    return folder


@pytest.fixture(scope="session")
def real_sd1_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four kohya modules with real SD1 shapes (UNet attn1/attn2, a 1x1 conv proj_in, a CLIP q_proj)."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def pair(key: str, out: int, inp: int, conv: bool = False) -> None:
        down = torch.randn(2, inp, generator=g)
        up = torch.randn(out, 2, generator=g)
        if conv:
            down, up = down[..., None, None], up[..., None, None]
        sd.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(1.0)})

    pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320)
    pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768)
    pair("lora_unet_mid_block_attentions_0_proj_in", 1280, 1280, conv=True)
    pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768)
    path = tmp_path_factory.mktemp("real") / "real_sd1.safetensors"
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "2",
                                       "ss_network_alpha": "1", "ss_base_model_version": "sd_v1"})
    return path


