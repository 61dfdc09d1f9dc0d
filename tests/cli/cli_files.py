"""Writers of the CLI tests' LoRA files, by the reference tools (lycoris-lora, PEFT + diffusers), and the helpers
that rebuild a file's LyCORIS network to compute reference outputs (see conftest.py for the fixtures)."""


from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.tiny import tiny_pipeline

#: the modules the fixtures' LyCORIS networks train (LyCORIS' "full" preset also lists time_embedding twice)
LYCORIS_PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""

#: how the fixtures' LyCORIS networks are built: (algo kwargs, network dim, network alpha)
STYLE = (dict(algo="locon", conv_dim=4, conv_alpha=2.0), 4, 2.0)
TEXTURE = (dict(algo="loha", conv_dim=2, conv_alpha=1.0), 2, 1.0)

#: the PEFT configs of detail.safetensors (rank 2, alpha 1: scale 0.5)
DETAIL_UNET = dict(r=2, lora_alpha=1, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"])
DETAIL_TE = dict(r=2, lora_alpha=1, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])


@contextmanager
def _lycoris_presets() -> Iterator[None]:
    """LyCORIS applies presets by mutating class attributes; put them back for other tests."""
    from lycoris import kohya, wrapper

    classes = (kohya.LycorisNetworkKohya, wrapper.LycorisNetwork)
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    try:
        yield
    finally:
        for c, attrs in zip(classes, saved):
            for k, v in attrs.items():
                setattr(c, k, v)


def lycoris_network(pipe: Any, spec: tuple[dict[str, Any], int, float], folder: Path, *, text_encoders: bool = True,
                    multiplier: float = 1.0) -> Any:
    """A lycoris-lora kohya network for ``pipe`` (applied: the pipeline's modules now run LyCORIS' forward)."""
    from lycoris import kohya

    kwargs, dim, alpha = spec
    preset = folder / "lycoris-preset.toml"
    preset.write_text(LYCORIS_PRESET)
    tes = [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]
    te: Any = (tes[0] if len(tes) == 1 else tes) if text_encoders else None
    with _lycoris_presets():
        network = kohya.create_network(multiplier, dim, alpha, None, te, pipe.unet, preset=str(preset), **kwargs)
    network.apply_to(te, pipe.unet, apply_text_encoder=te is not None, apply_unet=True)
    return network


def module_paths(network: Any, pipe: Any) -> dict[str, tuple[str, str]]:
    """LyCORIS module name -> (component, module path), by the identity of the module each one wraps."""
    where = {}
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, comp, None)
        if isinstance(model, nn.Module):
            where.update({id(m): (comp, p) for p, m in model.named_modules()})
    return {lora.lora_name: where[id(lora.org_module[0])] for lora in [*network.unet_loras, *network.text_encoder_loras]}


def write_lycoris_file(path: Path, family: str, spec: tuple[dict[str, Any], int, float], seed: int, *,
                       text_encoders: bool = True) -> dict[str, tuple[str, str]]:
    """Train-free: a seeded random LyCORIS network for the tiny ``family`` pipeline, saved by LyCORIS. Returns its
    module map (see :func:`module_paths`)."""
    pipe = tiny_pipeline(family)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = lycoris_network(pipe, spec, path.parent, text_encoders=text_encoders)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    network.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return module_paths(network, pipe)


def write_peft_file(folder: Path, weight_name: str, seed: int) -> Path:
    """PEFT adapters on the tiny SD1 UNet and text encoder, saved by diffusers' ``save_lora_weights``."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = tiny_pipeline("sd1")
    layers: dict[str, Any] = {}
    for comp, cfg_kwargs in (("unet", DETAIL_UNET), ("text_encoder", DETAIL_TE)):
        cfg = LoraConfig(init_lora_weights=False, **cfg_kwargs)  # type: ignore[arg-type]
        model = inject_adapter_in_model(cfg, getattr(pipe, comp))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        layers[f"{comp}_lora_layers"] = get_peft_model_state_dict(model)
        layers[f"{comp}_lora_adapter_metadata"] = cfg.to_dict()
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(str(folder), weight_name=weight_name, **layers)
    return folder / weight_name


#: (component, module path, weight shape) of real_sd1_peft: real SD1.5 paths and widths
REAL_SD1_MODULES = (
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", (320, 320)),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", (320, 768)),
    ("unet", "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2", (320, 1280)),
    ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj", (768, 768)),
)


def skeleton(paths: list[tuple[str, tuple[int, int]]]) -> nn.Module:
    """An ``nn.Module`` tree holding one ``nn.Linear`` at each dotted path (the rest of the real model left out)."""
    root = nn.Module()
    for path, (out_f, in_f) in paths:
        parent = root
        *heads, leaf = path.split(".")
        for h in heads:
            if not hasattr(parent, h):
                parent.add_module(h, nn.Module())
            parent = getattr(parent, h)
        parent.add_module(leaf, nn.Linear(in_f, out_f, bias=False))
    return root


