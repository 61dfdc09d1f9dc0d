"""Seeded LoRA files for the benchmark, written once per run.

* ``kohya``: kohya-ss ``networks/lora.py`` layout (``lora_unet_*`` / ``lora_te_*`` / ``lora_te1_*``/``lora_te2_*``,
  SGM UNet names for SDXL, ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``), written by lorakit's kohya writer
  (``formats.from_canonical``), rank ``size.rank``, alpha = rank / 2, fp32 tensors (the
  models are fp32; ~76 MB at SD1.5 size), on every Linear / 1×1 conv inside the UNet's transformer blocks (attention, FF, proj_in/out)
  and every Linear of the text encoder(s).
* ``locon``: the same plus LoCon on the UNet's ResNet blocks and resamplers (3×3 ``conv1``/``conv2``/down/upsampler
  convs with a 3×3 down and 1×1 up, ``conv_shortcut``, ``time_emb_proj``).
* ``diffusers``: the layout ``save_lora_weights`` writes today (``unet.<module>.lora_A.weight`` /
  ``text_encoder.<module>.lora_B.weight``), rank ``size.rank_diffusers``, attention projections only
  (UNet ``to_q/to_k/to_v/to_out.0``, text encoder ``q/k/v/out_proj``), fp32.

Weights are scaled so each module's ΔW is ~10 % of its weight: a realistic LoRA, not noise that blows up outputs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from models import Size, build_text_encoder
from safetensors.torch import save_file
from torch import nn

from lorakit import formats
from lorakit.kinds import AdapterKind, LoRA

UNET_TRANSFORMER = ("Transformer2DModel",)
UNET_CONV = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
ATTN_UNET = ("to_q", "to_k", "to_v", "to_out.0")
ATTN_TE = ("q_proj", "k_proj", "v_proj", "out_proj")


def _meta_models(size: Size) -> dict[str, nn.Module]:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        out: dict[str, nn.Module] = {"unet": UNet2DConditionModel(**size.unet)}
    for comp, cfg in size.text_encoders.items():
        with torch.device("meta"):
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            c = dict(cfg)
            proj = c.pop("with_projection")
            out[comp] = (CLIPTextModelWithProjection if proj else CLIPTextModel)(CLIPTextConfig(**c))
    return out


def _under(model: nn.Module, classes: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of Linear/Conv2d modules inside any module whose class name is in ``classes``."""
    seen: set[str] = set()
    for parent_name, parent in model.named_modules():
        if type(parent).__name__ not in classes:
            continue
        for name, m in parent.named_modules():
            path = f"{parent_name}.{name}" if name else parent_name
            if isinstance(m, (nn.Linear, nn.Conv2d)) and path not in seen:
                seen.add(path)
                yield path, m


def unet_targets(unet: nn.Module, conv: bool) -> list[tuple[str, nn.Module]]:
    out = [(p, m) for p, m in _under(unet, UNET_TRANSFORMER) if isinstance(m, nn.Linear) or m.kernel_size == (1, 1)]
    if conv:
        out += list(_under(unet, UNET_CONV))
    return out


def te_targets(te: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in te.named_modules() if isinstance(m, nn.Linear) and ".encoder.layers." in f".{p}"]


def file_path(model: nn.Module, comp: str, path: str) -> str:
    """The module path as files in the wild spell it: CLIP paths carry transformers 4.x's ``text_model.``."""
    if comp != "unet" and not isinstance(getattr(model, "text_model", None), nn.Module):
        return "text_model." + path
    return path


def _pair(m: nn.Module, rank: int, g: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) so that ΔW = up @ down · (alpha/rank) has ~10 % of W's scale (alpha = rank/2)."""
    if isinstance(m, nn.Linear):
        fan_in = m.in_features
        down = torch.randn(rank, fan_in, generator=g) / math.sqrt(fan_in)
        up = torch.randn(m.out_features, rank, generator=g)
    else:
        kh, kw = m.kernel_size
        fan_in = m.in_channels * kh * kw
        down = torch.randn(rank, m.in_channels, kh, kw, generator=g) / math.sqrt(fan_in)
        up = torch.randn(m.out_channels, rank, 1, 1, generator=g)
    up = up * (0.1 / (math.sqrt(rank) * 0.5) / math.sqrt(fan_in))
    return down.to(dtype), up.to(dtype)


def kohya_file(size: Size, seed: int, conv: bool = False, dtype: torch.dtype = torch.float32,
               models: dict[str, nn.Module] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The kohya file's tensors and header, written by lorakit's one kohya writer (``formats.from_canonical``):
    the family's prefixes (SGM UNet names for SDXL, as sd-scripts writes them), ``.alpha`` = rank / 2 per module,
    the ``ss_network_*`` / ``ss_base_model_version`` header fields."""
    models = models if models is not None else _meta_models(size)
    g = torch.Generator().manual_seed(seed)
    adapters: dict[str, dict[str, AdapterKind]] = {}
    rank = size.rank
    for comp, model in models.items():
        targets = unet_targets(model, conv) if comp == "unet" else te_targets(model)
        for path, m in targets:
            down, up = _pair(m, rank, g, dtype)
            adapters.setdefault(comp, {})[path] = LoRA(down=down.contiguous(), up=up.contiguous(), alpha=rank / 2)
    return formats.from_canonical(adapters, "kohya", family=size.family)


def kohya_state_dict(size: Size, seed: int, conv: bool = False, dtype: torch.dtype = torch.float32,
                     models: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    return kohya_file(size, seed, conv, dtype, models)[0]


def diffusers_state_dict(size: Size, seed: int, dtype: torch.dtype = torch.float32,
                         models: dict[str, nn.Module] | None = None) -> dict[str, torch.Tensor]:
    models = models if models is not None else _meta_models(size)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    rank = size.rank_diffusers
    for comp, model in models.items():
        ends = ATTN_UNET if comp == "unet" else ATTN_TE
        for path, m in model.named_modules():
            if isinstance(m, nn.Linear) and any(path.endswith("." + e) for e in ends):
                down, up = _pair(m, rank, g, dtype)
                up = up * 0.5  # no alpha in this layout: scale 1
                key = f"{comp}.{file_path(model, comp, path)}"
                sd[f"{key}.lora_A.weight"] = down.contiguous()
                sd[f"{key}.lora_B.weight"] = up.contiguous()
    return sd


FILES = ("kohya", "locon", "diffusers")
#: what a Flux LoRA trainer (ai-toolkit, diffusers' script) targets: every attention projection, proj_mlp, proj_out
FLUX_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_mlp",
                "proj_out")


def flux_state_dict(size: Size, seed: int) -> dict[str, torch.Tensor]:
    """A diffusers-format Flux LoRA (``transformer.<module>.lora_A/B.weight``, no alpha: scale 1)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**size.unet)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear) and path.endswith(FLUX_TARGETS) and ("blocks." in path):
            down, up = _pair(m, size.rank_diffusers, g, torch.float32)
            sd[f"transformer.{path}.lora_A.weight"] = down.contiguous()
            sd[f"transformer.{path}.lora_B.weight"] = (up * 0.5).contiguous()
    return sd


def write_files(size: Size, folder: str, seed: int = 1234) -> dict[str, str]:
    """Write the benchmark LoRA files of ``size`` under ``folder`` (three for the SD sizes, the diffusers-format one
    for Flux); returns {name: path}."""
    os.makedirs(folder, exist_ok=True)
    out: dict[str, str] = {}
    if size.family == "flux":
        path = os.path.join(folder, f"{size.name}_diffusers.safetensors")
        save_file(flux_state_dict(size, seed), path, metadata={"format": "pt"})
        return {"diffusers": path}
    models = _meta_models(size)  # the module tree only (meta tensors): built once for the three files
    for name in FILES:
        path = os.path.join(folder, f"{size.name}_{name}.safetensors")
        meta = {"format": "pt"}
        if name == "diffusers":
            sd = diffusers_state_dict(size, seed + 2, models=models)
        else:
            sd, header = kohya_file(size, seed + (1 if name == "locon" else 0), conv=name == "locon", models=models)
            meta.update(header)
        save_file(sd, path, metadata=meta)
        out[name] = path
    return out


def variant(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    """A cheap distinct adapter from ``sd`` (up weights scaled by a per-index factor): resident-adapter tests."""
    f = 1.0 + 0.01 * i
    return {k: (v * f if ("lora_up" in k or "lora_B" in k) else v) for k, v in sd.items()}


__all__ = ["FILES", "write_files", "kohya_file", "kohya_state_dict", "diffusers_state_dict", "variant", "build_text_encoder"]
