"""Fixtures for the CLI tests: a tiny SD1 pipeline saved as a diffusers folder, and LoRA files written by the reference
tools, not by lorakit:

* ``style.safetensors``: lycoris-lora 4.1.3's kohya network (``lycoris.kohya.create_network``, LoCon: ``lora_unet_*`` /
  ``lora_te_*`` keys with ``.alpha``), as kohya's sd-scripts train with ``--network_module lycoris.kohya``;
* ``sub/detail.safetensors``: PEFT adapters (``inject_adapter_in_model`` + ``get_peft_model_state_dict``) saved by
  diffusers' ``StableDiffusionPipeline.save_lora_weights`` with their ``LoraConfig`` (alpha ≠ rank);
* ``texture.safetensors`` (in its own folder): a lycoris-lora kohya LoHa;
* ``real_sd1_lora``: a kohya file written by hand from kohya's published key naming, with real SD1.5 shapes;
* ``real_sd1_peft``: PEFT + diffusers' writer on modules at real SD1.5 paths and shapes (for commands that resolve
  names against the real reference model: ``convert``, ``inspect`` without ``--model``).

:func:`lycoris_network` rebuilds a file's network on a pipeline, so tests can compute the reference output with
LyCORIS' own module forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from cli_files import (
    REAL_SD1_MODULES,
    STYLE,
    TEXTURE,
    lycoris_network,
    module_paths,
    skeleton,
    write_lycoris_file,
    write_peft_file,
)
from safetensors.torch import save_file

from lorakit.tiny import tiny_pipeline


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1 pipeline folder (``save_pretrained``), usable as ``--model``."""
    folder = tmp_path_factory.mktemp("models") / "tiny-sd1"
    tiny_pipeline("sd1").save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``style.safetensors`` (LyCORIS LoCon, kohya names) and ``sub/detail.safetensors`` (PEFT, diffusers layout)."""
    folder = tmp_path_factory.mktemp("loras")
    write_lycoris_file(folder / "style.safetensors", "sd1", STYLE, seed=1)
    write_peft_file(folder / "sub", "detail.safetensors", seed=2)
    return folder


@pytest.fixture(scope="session")
def style_modules(tmp_path_factory: pytest.TempPathFactory, lora_dir: Path) -> dict[str, tuple[str, str]]:
    """LyCORIS module name -> (component, module path) of ``style.safetensors`` (the network that wrote it)."""
    pipe = tiny_pipeline("sd1")
    return module_paths(lycoris_network(pipe, STYLE, tmp_path_factory.mktemp("preset")), pipe)


@pytest.fixture(scope="session")
def texture_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LyCORIS LoHa (kohya names, UNet only) for the tiny SD1 pipeline."""
    path = tmp_path_factory.mktemp("loha") / "texture.safetensors"
    write_lycoris_file(path, "sd1", TEXTURE, seed=3, text_encoders=False)
    return path


@pytest.fixture(scope="session")
def real_sd1_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four kohya modules with real SD1 shapes (UNet attn1/attn2, a 1x1 conv proj_in, a CLIP q_proj).

    Written by hand from kohya's published naming: ``lora_unet_`` / ``lora_te_`` + the diffusers / transformers module
    path with ``_`` for ``.``, ``.lora_down.weight`` (rank × in), ``.lora_up.weight`` (out × rank), ``.alpha``.
    """
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


@pytest.fixture(scope="session")
def real_sd1_peft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """PEFT LoRA (rank 4, alpha 8, one module at rank 2 through rank_pattern) on modules at real SD1.5 paths and
    shapes, saved by diffusers' ``StableDiffusionPipeline.save_lora_weights``. Also returns PEFT's own delta
    (``scaling · B @ A``) per ``component.path``, the reference for conversions."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    layers: dict[str, Any] = {}
    deltas: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(4)
    for comp in ("unet", "text_encoder"):
        mods = [(p, s) for c, p, s in REAL_SD1_MODULES if c == comp]
        cfg = LoraConfig(r=4, lora_alpha=8, target_modules=[p for p, _ in mods], init_lora_weights=False,
                         rank_pattern={mods[0][0]: 2})
        model = inject_adapter_in_model(cfg, skeleton(mods))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for path, _ in mods:
            layer = model.get_submodule(path)
            w = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
            deltas[f"{comp}.{path}"] = (w * layer.scaling["default"]).detach()
        layers[f"{comp}_lora_layers"] = get_peft_model_state_dict(model)
        layers[f"{comp}_lora_adapter_metadata"] = cfg.to_dict()
    folder = tmp_path_factory.mktemp("real-peft")
    StableDiffusionPipeline.save_lora_weights(str(folder), weight_name="real_sd1_peft.safetensors", **layers)
    return folder / "real_sd1_peft.safetensors", deltas
