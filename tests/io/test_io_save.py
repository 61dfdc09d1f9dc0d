"""lorakit.save: diffusers' save_lora_weights semantics, and metadata that reloads with identical scales in lorakit
and in diffusers 0.42.1 (tiny SD1 UNet built from a config with seeded weights, fp32, max |Δ| ≤ 1e-5 relative)."""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch import Tensor, nn

from lorakit import errors, formats
from lorakit.engine import get_manager
from lorakit.io import read_source
from lorakit.kinds import LoRA
from lorakit.pipelines.save import write_lora_layers
from lorakit.save import LORA_ADAPTER_METADATA_KEY, peft_metadata, save_adapter
from lorakit.tiny import tiny_components

logging.getLogger("diffusers").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=1)
def _pristine_unet() -> nn.Module:
    return tiny_components("sd1")["unet"]


def tiny_unet() -> nn.Module:
    """A new copy of the seeded tiny SD1 UNet (built once, deep-copied: same weights)."""
    return copy.deepcopy(_pristine_unet())


def unet_inputs() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(1, 4, 8, 8, generator=g), torch.tensor([10]), torch.randn(1, 5, 32, generator=g)


@torch.no_grad()
def run(unet: nn.Module) -> Tensor:
    x, t, enc = unet_inputs()
    return unet(x, t, encoder_hidden_states=enc).sample


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def reference_adapters(unet: nn.Module) -> dict[str, LoRA]:
    """LoRA on linear and conv layers with different ranks and alphas per module (the case diffusers gets wrong
    for kohya files), big enough to change the output clearly."""
    g = torch.Generator().manual_seed(7)
    mods = dict(unet.named_modules())
    spec = {
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (4, 8.0),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k": (4, 1.0),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v": (2, 4.0),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0": (4, 8.0),
        "down_blocks.1.attentions.0.proj_in": (2, 2.0),  # 1×1 conv in SD1
        "up_blocks.0.attentions.0.transformer_blocks.0.ff.net.2": (4, None),
        "down_blocks.0.resnets.0.conv1": (2, 3.0),  # 3×3 conv
        "mid_block.resnets.0.time_emb_proj": (4, 8.0),
    }
    out: dict[str, LoRA] = {}
    for path, (r, alpha) in spec.items():
        w = mods[path].weight
        if w.dim() == 4:
            down = torch.randn(r, w.shape[1], w.shape[2], w.shape[3], generator=g) * 0.3
            up = torch.randn(w.shape[0], r, 1, 1, generator=g) * 0.3
        else:
            down = torch.randn(r, w.shape[1], generator=g) * 0.3
            up = torch.randn(w.shape[0], r, generator=g) * 0.3
        out[path] = LoRA(down=down, up=up, alpha=alpha)
    return out


def diffusers_layers(mapping: dict[str, LoRA]) -> dict[str, Tensor]:
    """PEFT-style keys (what from_canonical(to="diffusers") writes for the unet, without the prefix)."""
    sd: dict[str, Tensor] = {}
    for path, k in mapping.items():
        sd[f"{path}.lora_A.weight"] = k.down
        sd[f"{path}.lora_B.weight"] = k.up
    return sd


def diffusers_load(path_or_dir: Path, weight_name: str | None = None) -> nn.Module:
    """Load with diffusers 0.42.1 + PEFT through the pipeline API, return its UNet."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components("sd1"))
    pipe.load_lora_weights(str(path_or_dir), weight_name=weight_name, adapter_name="x")
    return pipe.unet


def lorakit_load(source: Any, unet: nn.Module) -> None:
    sd, meta, name = read_source(source)
    conv = formats.to_canonical(sd, meta, {"unet": unet}, source=name)
    get_manager(unet).add_adapter("x", conv.adapters["unet"])


def formats_reads_adapter_metadata() -> bool:
    """Whether the formats package applies diffusers' lora_adapter_metadata (the placeholder does not)."""
    holder = nn.Module()
    holder.m = nn.Linear(3, 3)
    sd = {"unet.m.lora_A.weight": torch.ones(2, 3), "unet.m.lora_B.weight": torch.ones(3, 2)}
    meta = {LORA_ADAPTER_METADATA_KEY: json.dumps({"unet.r": 2, "unet.lora_alpha": 4})}
    try:
        kind = formats.to_canonical(sd, meta, {"unet": holder}, source="probe").adapters["unet"]["m"]
    except Exception:  # noqa: BLE001
        return False
    return abs(kind.scale - 2.0) < 1e-9


needs_formats_metadata = pytest.mark.skipif(
    not formats_reads_adapter_metadata(), reason="formats package does not read lora_adapter_metadata yet"
)


def formats_writes(to: str) -> bool:
    try:
        formats.from_canonical({"unet": {"m": LoRA(down=torch.ones(2, 3), up=torch.ones(3, 2))}}, to, family="sd1")
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


# ----------------------------------------------------------------------------------------------- semantics
def test_default_name_creates_directory_and_header(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    layers = {"a.lora_A.weight": torch.randn(2, 3), "a.lora_B.weight": torch.randn(3, 2)}
    path = write_lora_layers(out, {"unet": layers, "text_encoder": None})
    assert path == f"{out}/pytorch_lora_weights.safetensors"
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == {"unet.a.lora_A.weight", "unet.a.lora_B.weight"}
        assert f.metadata() == {"format": "pt"}
        assert torch.equal(f.get_tensor("unet.a.lora_A.weight"), layers["a.lora_A.weight"])


def test_not_safe_default_bin(tmp_path: Path) -> None:
    layers = {"a.lora_A.weight": torch.randn(2, 3)}
    path = write_lora_layers(tmp_path, {"unet": layers}, safe_serialization=False)
    assert path.endswith("pytorch_lora_weights.bin")
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["unet.a.lora_A.weight"], layers["a.lora_A.weight"])


def test_modules_as_layers(tmp_path: Path) -> None:
    lin = nn.Linear(3, 2)
    holder = nn.Module()
    holder.lora_A = nn.Linear(3, 2, bias=False)
    path = write_lora_layers(tmp_path, {"unet": {"blk": holder}, "text_encoder": lin}, weight_name="m.safetensors")
    with safe_open(path, "pt") as f:
        assert set(f.keys()) == {"unet.blk.lora_A.weight", "text_encoder.weight", "text_encoder.bias"}


def test_not_main_process_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert write_lora_layers(out, {"unet": {"a": torch.zeros(1)}}, is_main_process=False) is None
    assert not out.exists()


def test_save_function_overrides_writer(tmp_path: Path) -> None:
    calls: list[tuple[dict[str, Tensor], str]] = []
    path = write_lora_layers(
        tmp_path, {"unet": {"a": torch.zeros(1)}}, weight_name="w.bin", save_function=lambda sd, p: calls.append((sd, p))
    )
    assert calls and calls[0][1] == path == f"{tmp_path}/w.bin" and set(calls[0][0]) == {"unet.a"}
    assert not Path(path).exists()


def test_metadata_header_convention(tmp_path: Path) -> None:
    meta = {"unet": {"r": 4, "lora_alpha": 8, "target_modules": {"to_q", "to_k"}}, "text_encoder": None}
    path = write_lora_layers(tmp_path, {"unet": {"a": torch.zeros(1)}}, metadata=meta)
    with safe_open(path, "pt") as f:
        header = f.metadata()
    assert header["format"] == "pt"
    assert json.loads(header[LORA_ADAPTER_METADATA_KEY]) == {
        "unet.lora_alpha": 8,
        "unet.r": 4,
        "unet.target_modules": ["to_k", "to_q"],
    }


def test_metadata_needs_safetensors(tmp_path: Path) -> None:
    with pytest.raises(errors.FormatError, match="safetensors"):
        write_lora_layers(tmp_path, {"unet": {"a": torch.zeros(1)}}, safe_serialization=False, metadata={"unet": {"r": 4}})


def test_nothing_to_save_and_file_as_directory(tmp_path: Path) -> None:
    with pytest.raises(errors.FormatError, match="no LoRA layers"):
        write_lora_layers(tmp_path, {"unet": None, "text_encoder": {}})
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(errors.DestinationExistsError, match="is a file"):
        write_lora_layers(f, {"unet": {"a": torch.zeros(1)}})


def test_non_tensor_layer_value(tmp_path: Path) -> None:
    with pytest.raises(errors.DTypeError, match="'a'"):
        write_lora_layers(tmp_path, {"unet": {"a": [1, 2]}})  # type: ignore[dict-item]


def test_shared_and_noncontiguous_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.randn(4, 4)
    path = write_lora_layers(tmp_path, {"unet": {"a": base, "b": base, "c": base.t()}})
    sd, _, _ = read_source(path)
    assert torch.equal(sd["unet.a"], base) and torch.equal(sd["unet.b"], base) and torch.equal(sd["unet.c"], base.t())


def test_peft_metadata_patterns() -> None:
    mapping = {
        "a": LoRA(down=torch.zeros(4, 3), up=torch.zeros(3, 4), alpha=8.0),
        "b": LoRA(down=torch.zeros(4, 3), up=torch.zeros(3, 4), alpha=8.0),
        "c": LoRA(down=torch.zeros(2, 3), up=torch.zeros(3, 2), alpha=None),
    }
    md = peft_metadata(mapping)
    assert md["r"] == 4 and md["lora_alpha"] == 8
    # anchored, escaped full paths: each pattern matches its own module only (formats.write.peft_config)
    assert md["rank_pattern"] == {"^c": 2} and md["alpha_pattern"] == {"^c": 2.0}
    assert md["target_modules"] == ["a", "b", "c"]
    from lorakit.kinds import LoHa

    with pytest.raises(errors.FormatError, match="loha"):
        peft_metadata({"a": LoHa(w1a=torch.zeros(3, 2), w1b=torch.zeros(2, 3), w2a=torch.zeros(3, 2), w2b=torch.zeros(2, 3))})


# ----------------------------------------------------------------------------------------------- parity
def test_lorakit_written_file_loads_identically_in_diffusers(tmp_path: Path) -> None:
    """lorakit adapters -> write_lora_layers(+peft_metadata) -> diffusers 0.42.1 pipeline.load_lora_weights."""
    unet = tiny_unet()
    base = run(unet)
    mapping = reference_adapters(unet)
    get_manager(unet).add_adapter("x", mapping)
    ours = run(unet)
    assert rel_err(ours, base) > 1e-2  # the adapter matters

    write_lora_layers(tmp_path, {"unet": diffusers_layers(mapping)}, metadata={"unet": peft_metadata(mapping)})
    theirs = run(diffusers_load(tmp_path))
    assert rel_err(theirs, ours) <= 1e-5


def test_without_metadata_diffusers_sees_scale_one(tmp_path: Path) -> None:
    """The control: the same file without metadata loads with the wrong scales in diffusers."""
    unet = tiny_unet()
    mapping = reference_adapters(unet)
    get_manager(unet).add_adapter("x", mapping)
    ours = run(unet)
    write_lora_layers(tmp_path, {"unet": diffusers_layers(mapping)})
    theirs = run(diffusers_load(tmp_path))
    assert rel_err(theirs, ours) > 1e-3


def _diffusers_written(tmp_path: Path) -> tuple[Tensor, Path]:
    """diffusers + PEFT train-style adapter with rank_pattern / alpha_pattern, saved by diffusers itself."""
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    unet = tiny_unet()
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "time_emb_proj"],
        rank_pattern={"proj_in": 2, "conv1": 2},
        alpha_pattern={"to_k": 1, "conv1": 3},
        init_lora_weights=False,
    )
    unet.add_adapter(cfg)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.mul_(0.5)
    ref = run(unet)
    StableDiffusionPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(unet), unet_lora_adapter_metadata=cfg.to_dict()
    )
    return ref, tmp_path


@needs_formats_metadata
def test_diffusers_written_file_loads_identically_in_lorakit(tmp_path: Path) -> None:
    ref, folder = _diffusers_written(tmp_path)
    unet = tiny_unet()
    assert rel_err(run(unet), ref) > 1e-2
    lorakit_load(folder, unet)
    assert rel_err(run(unet), ref) <= 1e-5


@needs_formats_metadata
def test_lorakit_written_file_reloads_identically_in_lorakit(tmp_path: Path) -> None:
    unet = tiny_unet()
    mapping = reference_adapters(unet)
    get_manager(unet).add_adapter("x", mapping)
    ours = run(unet)
    write_lora_layers(tmp_path, {"unet": diffusers_layers(mapping)}, metadata={"unet": peft_metadata(mapping)})
    fresh = tiny_unet()
    lorakit_load(tmp_path, fresh)
    assert rel_err(run(fresh), ours) <= 1e-5


def test_diffusers_written_file_reloads_in_diffusers(tmp_path: Path) -> None:
    """Sanity of the fixture: diffusers reproduces its own adapter from the file."""
    ref, folder = _diffusers_written(tmp_path)
    assert rel_err(run(diffusers_load(folder)), ref) <= 1e-5


# ----------------------------------------------------------------------------------------------- save_adapter
def test_save_adapter_refuses_overwrite_and_bad_inputs(tmp_path: Path) -> None:
    unet = tiny_unet()
    mgr = get_manager(unet)
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"x")
    mgr.add_adapter("a", {"mid_block.resnets.0.time_emb_proj": LoRA(down=torch.zeros(2, 32), up=torch.zeros(16, 2))})
    with pytest.raises(errors.DestinationExistsError, match="overwrite=True"):
        save_adapter(mgr, None, p)
    mgr.add_adapter("b", {"mid_block.resnets.0.time_emb_proj": LoRA(down=torch.zeros(2, 32), up=torch.zeros(16, 2))})
    with pytest.raises(errors.FormatError, match="adapter_name"):
        save_adapter(mgr, None, tmp_path / "y.safetensors")
    with pytest.raises(errors.AdapterNotFoundError, match="'c'"):
        save_adapter(mgr, "c", tmp_path / "y.safetensors")
    with pytest.raises(errors.FormatError):
        save_adapter(42, None, tmp_path / "y.safetensors")
    with pytest.raises(errors.FormatError, match="safetensors"):  # lorakit writes safetensors only
        save_adapter(mgr, "a", tmp_path / "y.bin")
    with pytest.raises(errors.FormatError, match="unknown layout"):
        save_adapter(mgr, "a", tmp_path / "y.safetensors", "comfy")
    assert not (tmp_path / "y.safetensors").exists()


@pytest.mark.skipif(not formats_writes("diffusers"), reason="formats.from_canonical not implemented yet")
@pytest.mark.parametrize("to", ["diffusers", "peft", "kohya"])
def test_save_adapter_roundtrip(tmp_path: Path, to: str) -> None:
    unet = tiny_unet()
    mapping = reference_adapters(unet)
    mgr = get_manager(unet)
    mgr.add_adapter("style", mapping)
    ours = run(unet)
    path = save_adapter(mgr, "style", tmp_path, to, family="sd1", metadata={"note": {"a": 1}})
    sd, meta, _ = read_source(path)
    assert json.loads(meta["note"]) == {"a": 1}
    if to == "peft":  # PeftModel.save_pretrained layout: adapter_model.safetensors + adapter_config.json
        assert Path(path).name == "adapter_model.safetensors"
        sidecar = json.loads((tmp_path / "adapter_config.json").read_text())
        assert sidecar == json.loads(meta["adapter_config"]) and sidecar["peft_type"] == "LORA"
    fresh = tiny_unet()
    conv = formats.to_canonical(sd, meta, {"unet": fresh}, source=path)
    get_manager(fresh).add_adapter("style", conv.adapters["unet"])
    assert rel_err(run(fresh), ours) <= 1e-5


@pytest.mark.skipif(not formats_writes("diffusers"), reason="formats.from_canonical not implemented yet")
def test_save_adapter_diffusers_layout_loads_identically_in_diffusers(tmp_path: Path) -> None:
    unet = tiny_unet()
    mapping = reference_adapters(unet)
    mgr = get_manager(unet)
    mgr.add_adapter("style", mapping)
    ours = run(unet)
    save_adapter(mgr, None, tmp_path, "diffusers")
    assert (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert rel_err(run(diffusers_load(tmp_path)), ours) <= 1e-5


def test_text_encoder_metadata_loads_identically_in_diffusers(tmp_path: Path) -> None:
    """UNet + text encoder (transformers 5 flattened CLIPTextModel) with per-module alphas, both through
    write_lora_layers + peft_metadata, loaded by diffusers' pipeline: every component reproduces lorakit."""
    from diffusers import StableDiffusionPipeline

    comps = tiny_components("sd1")
    te = comps["text_encoder"]
    g = torch.Generator().manual_seed(11)
    te_mods = dict(te.named_modules())
    te_map: dict[str, LoRA] = {}
    for path, r, alpha in [
        ("encoder.layers.0.self_attn.q_proj", 4, 8.0),
        ("encoder.layers.0.self_attn.v_proj", 2, 1.0),
        ("encoder.layers.1.mlp.fc1", 4, 2.0),
        ("encoder.layers.1.self_attn.out_proj", 4, 8.0),
    ]:
        w = te_mods[path].weight
        te_map[path] = LoRA(down=torch.randn(r, w.shape[1], generator=g) * 0.3, up=torch.randn(w.shape[0], r, generator=g) * 0.3, alpha=alpha)
    unet = comps["unet"]
    unet_map = reference_adapters(unet)
    ids = torch.randint(0, 500, (1, 7), generator=g)
    get_manager(te).add_adapter("x", te_map)
    get_manager(unet).add_adapter("x", unet_map)
    with torch.no_grad():
        ours_te = te(ids).last_hidden_state
    ours_unet = run(unet)

    write_lora_layers(
        tmp_path,
        {"unet": diffusers_layers(unet_map), "text_encoder": diffusers_layers(te_map)},
        metadata={"unet": peft_metadata(unet_map), "text_encoder": peft_metadata(te_map)},
    )
    pipe = StableDiffusionPipeline(**tiny_components("sd1"))
    pipe.load_lora_weights(str(tmp_path), adapter_name="x")
    with torch.no_grad():
        theirs_te = pipe.text_encoder(ids).last_hidden_state
    assert rel_err(theirs_te, ours_te) <= 1e-5
    assert rel_err(run(pipe.unet), ours_unet) <= 1e-5
