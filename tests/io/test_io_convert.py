"""lorakit.convert: a converted file loads to the same outputs as the original (tiny SD1 models, fp32,
max |Δ| ≤ 1e-5 relative), checked through lorakit and through diffusers 0.42.1; real-size files keep every
per-module delta; overwrite is refused."""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from lorakit import errors, formats
from lorakit.conversion import ConvertReport, convert
from lorakit.engine import get_manager
from lorakit.io import read_source
from lorakit.kinds import LoRA
from lorakit.tiny import tiny_components

logging.getLogger("diffusers").setLevel(logging.ERROR)

TINY_ATTN = "down_blocks.1.attentions.0.transformer_blocks.0"


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@torch.no_grad()
def outputs(comps: dict[str, nn.Module]) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(5)
    x, enc = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    ids = torch.randint(0, 500, (1, 7), generator=g)
    return {
        "unet": comps["unet"](x, torch.tensor([10]), encoder_hidden_states=enc).sample,
        "text_encoder": comps["text_encoder"](ids).last_hidden_state,
    }


@functools.lru_cache(maxsize=1)
def _pristine() -> dict[str, nn.Module]:
    c = tiny_components("sd1")
    return {"unet": c["unet"], "text_encoder": c["text_encoder"]}


def fresh() -> dict[str, nn.Module]:
    """New copies of the seeded tiny SD1 UNet and text encoder (built once, deep-copied: same weights)."""
    return {k: copy.deepcopy(m) for k, m in _pristine().items()}


def lorakit_load(path: str | Path, comps: dict[str, nn.Module]) -> None:
    sd, meta, name = read_source(path)
    conv = formats.to_canonical(sd, meta, comps, source=name)
    for comp, mapping in conv.adapters.items():
        get_manager(comps[comp]).add_adapter("x", mapping)


def kohya_file(path: Path) -> Path:
    """A kohya LoCon file for the tiny SD1 models with a different alpha on each module (UNet + text encoder)."""
    c = fresh()
    mods = {comp: dict(m.named_modules()) for comp, m in c.items()}
    g = torch.Generator().manual_seed(3)
    spec = [
        ("unet", f"{TINY_ATTN}.attn1.to_q", 4, 8.0),
        ("unet", f"{TINY_ATTN}.attn1.to_k", 4, 1.0),
        ("unet", f"{TINY_ATTN}.attn2.to_v", 2, 4.0),
        ("unet", f"{TINY_ATTN}.attn2.to_out.0", 4, 2.0),
        ("unet", f"{TINY_ATTN}.ff.net.0.proj", 4, 8.0),
        ("unet", "down_blocks.1.attentions.0.proj_in", 2, 2.0),
        ("unet", "down_blocks.0.resnets.0.conv1", 2, 3.0),
        ("unet", "mid_block.resnets.0.time_emb_proj", 4, 8.0),
        ("text_encoder", "encoder.layers.0.self_attn.q_proj", 4, 2.0),
        ("text_encoder", "encoder.layers.0.self_attn.out_proj", 4, 8.0),
        ("text_encoder", "encoder.layers.1.mlp.fc1", 2, 1.0),
    ]
    sd: dict[str, Tensor] = {}
    for comp, p, r, alpha in spec:
        w = mods[comp][p].weight
        prefix = ("lora_unet_" if comp == "unet" else "lora_te_text_model_") + p.replace(".", "_")
        if w.dim() == 4:
            sd[f"{prefix}.lora_down.weight"] = torch.randn(r, *w.shape[1:], generator=g) * 0.3
            sd[f"{prefix}.lora_up.weight"] = torch.randn(w.shape[0], r, 1, 1, generator=g) * 0.3
        else:
            sd[f"{prefix}.lora_down.weight"] = torch.randn(r, w.shape[1], generator=g) * 0.3
            sd[f"{prefix}.lora_up.weight"] = torch.randn(w.shape[0], r, generator=g) * 0.3
        sd[f"{prefix}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "8.0"})
    return path


def diffusers_file(folder: Path) -> tuple[dict[str, Tensor], Path]:
    """A UNet adapter trained-style with diffusers + PEFT (rank/alpha patterns), saved by diffusers."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    c = fresh()
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.2"],
        rank_pattern={"proj_in": 2, "conv1": 2},
        alpha_pattern={"to_k": 1, "conv1": 3},
        init_lora_weights=False,
    )
    c["unet"].add_adapter(cfg)
    with torch.no_grad():
        for n, p in c["unet"].named_parameters():
            if "lora_" in n:
                p.mul_(0.5)
    ref = outputs(c)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(c["unet"]), unet_lora_adapter_metadata=cfg.to_dict()
    )
    return ref, folder / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("to", ["diffusers", "peft", "kohya"])
def test_diffusers_file_converted_loads_to_same_outputs(tmp_path: Path, to: str) -> None:
    ref, src = diffusers_file(tmp_path / "src")
    dst = tmp_path / f"out_{to}.safetensors"
    rep = convert(src, dst, to=to, components=fresh())
    assert isinstance(rep, ConvertReport) and rep.source_format == "diffusers" and rep.to == to
    assert set(rep.modules) == {"unet"} and rep.modules["unet"] > 0
    c = fresh()
    lorakit_load(dst, c)
    assert rel_err(outputs(c)["unet"], ref["unet"]) <= 1e-5
    json.dumps(rep.to_dict())
    assert str(dst) in rep.format_table()


@pytest.mark.parametrize("to", ["diffusers", "kohya"])
def test_kohya_file_converted_loads_to_same_outputs(tmp_path: Path, to: str) -> None:
    src = kohya_file(tmp_path / "kohya.safetensors")
    c = fresh()
    base = outputs(c)
    lorakit_load(src, c)
    ref = outputs(c)
    for comp in ("unet", "text_encoder"):
        assert rel_err(ref[comp], base[comp]) > 1e-3  # the adapter changes both components
    dst = tmp_path / f"converted_{to}.safetensors"
    rep = convert(src, dst, to=to, components=fresh())
    assert rep.source_format == "kohya" and rep.modules == {"unet": 8, "text_encoder": 3}
    c2 = fresh()
    lorakit_load(dst, c2)
    got = outputs(c2)
    for comp in ("unet", "text_encoder"):
        assert rel_err(got[comp], ref[comp]) <= 1e-5, comp


def test_kohya_to_diffusers_matches_in_diffusers(tmp_path: Path) -> None:
    """Independent reference: diffusers 0.42.1 loading lorakit's diffusers conversion reproduces lorakit's output on the
    kohya original, although the original has per-module alphas (which diffusers' own kohya loader gets wrong)."""
    from diffusers import StableDiffusionPipeline

    src = kohya_file(tmp_path / "kohya.safetensors")
    c = fresh()
    lorakit_load(src, c)
    ref = outputs(c)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    convert(src, out_dir, to="diffusers", components=fresh())
    pipe = StableDiffusionPipeline(**tiny_components("sd1"))
    pipe.load_lora_weights(str(out_dir))
    got = outputs({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    for comp in ("unet", "text_encoder"):
        assert rel_err(got[comp], ref[comp]) <= 1e-5, comp


def real_size_sd1_file(path: Path) -> tuple[Path, dict[str, Tensor]]:
    """A few SD1.5-sized modules (diffusers names): header shapes of the real model, small LoRA tensors."""
    g = torch.Generator().manual_seed(1)
    shapes = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768, 4, 4.0),
        "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q": (640, 640, 8, 2.0),
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2": (320, 1280, 4, 1.0),
        "mid_block.attentions.0.proj_in": (1280, 1280, 4, 4.0),  # conv 1×1 in SD1
    }
    sd: dict[str, Tensor] = {}
    for p, (out_f, in_f, r, _) in shapes.items():
        down = torch.randn(r, in_f, generator=g)
        up = torch.randn(out_f, r, generator=g)
        if p.endswith("proj_in"):
            down, up = down[:, :, None, None], up[:, :, None, None]
        sd[f"unet.{p}.lora_A.weight"] = down
        sd[f"unet.{p}.lora_B.weight"] = up
    config = {
        "unet.r": 4,
        "unet.lora_alpha": 4.0,
        "unet.rank_pattern": {p: r for p, (_, _, r, _) in shapes.items() if r != 4},
        "unet.alpha_pattern": {p: a for p, (_, _, _, a) in shapes.items() if a != 4.0},
    }
    meta = {"lora_adapter_metadata": json.dumps(config)}
    save_file(sd, str(path), metadata=meta)
    return path, sd


@pytest.mark.parametrize("to", ["kohya", "peft", "diffusers"])
def test_real_size_conversion_keeps_every_delta(tmp_path: Path, to: str) -> None:
    src, _ = real_size_sd1_file(tmp_path / "sd15.safetensors")
    s_sd, s_meta, _ = read_source(src)
    before = formats.to_canonical(s_sd, s_meta, None, source="src").adapters
    assert before["unet"]["down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q"].scale == pytest.approx(2.0 / 8)
    assert before["unet"]["up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"].scale == pytest.approx(1.0 / 4)
    rep = convert(src, tmp_path / "out.safetensors", to=to)
    assert rep.family == "sd1"
    assert rep.result.family == "SD1"
    d_sd, d_meta, _ = read_source(rep.dst)
    after = formats.to_canonical(d_sd, d_meta, None, source="dst").adapters
    assert {c: set(m) for c, m in after.items()} == {c: set(m) for c, m in before.items()}
    for comp, mapping in before.items():
        for path, kind in mapping.items():
            shape = (kind.up.shape[0], *kind.down.shape[1:])
            base = torch.zeros(shape)
            assert torch.allclose(after[comp][path].delta_weight(base), kind.delta_weight(base), rtol=1e-6, atol=1e-6), path


def test_overwrite_refused_before_reading(tmp_path: Path) -> None:
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"keep me")
    with pytest.raises(errors.DestinationExistsError) as ei:
        convert(tmp_path / "missing_source.safetensors", dst, to="kohya")
    assert str(dst) in str(ei.value) and "overwrite=True" in str(ei.value)
    assert isinstance(ei.value, FileExistsError)
    assert dst.read_bytes() == b"keep me"


def test_overwrite_true_replaces(tmp_path: Path) -> None:
    src, _ = real_size_sd1_file(tmp_path / "sd15.safetensors")
    dst = tmp_path / "exists.safetensors"
    dst.write_bytes(b"old")
    rep = convert(src, dst, to="kohya", overwrite=True)
    sd, meta, _ = read_source(rep.dst)
    assert any(k.startswith("lora_unet_") for k in sd) and meta["lorakit.converted_from"] == "diffusers"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_unknown_layout_and_misfit(tmp_path: Path) -> None:
    with pytest.raises(errors.FormatError, match="unknown layout"):
        convert({"x": torch.zeros(1)}, tmp_path / "o.safetensors", to="comfy")
    tiny = {f"unet.{TINY_ATTN}.attn1.to_q.lora_A.weight": torch.randn(2, 16), f"unet.{TINY_ATTN}.attn1.to_q.lora_B.weight": torch.randn(16, 2)}
    with pytest.raises(errors.ShapeMismatchError, match="components="):
        convert(tiny, tmp_path / "o.safetensors", to="kohya")
    assert not (tmp_path / "o.safetensors").exists()


def test_lokr_keeps_kohya_style_names(tmp_path: Path) -> None:
    """LyCORIS kinds keep their kohya-style names in the diffusers layout (and round-trip)."""
    from lorakit.kinds import LoKr

    c = fresh()
    path = f"{TINY_ATTN}.attn1.to_q"
    g = torch.Generator().manual_seed(0)
    kind = LoKr(w1=torch.randn(2, 2, generator=g), w2a=torch.randn(8, 2, generator=g), w2b=torch.randn(2, 8, generator=g), alpha=1.0)
    get_manager(c["unet"]).add_adapter("x", {path: kind, "down_blocks.0.resnets.0.conv1": LoRA(down=torch.randn(2, 8, 3, 3, generator=g), up=torch.randn(8, 2, 1, 1, generator=g), alpha=1.0)})
    ref = outputs(c)
    sd, meta = formats.from_canonical({"unet": get_manager(c["unet"]).adapters["x"]}, "kohya", family="sd1")
    src = tmp_path / "lokr.safetensors"
    save_file(sd, str(src), metadata=meta)
    rep = convert(src, tmp_path / "diff.safetensors", to="diffusers", components=fresh())
    assert rep.result.kinds.get("lokr") == 1
    c2 = fresh()
    lorakit_load(rep.dst, c2)
    assert rel_err(outputs(c2)["unet"], ref["unet"]) <= 1e-5
