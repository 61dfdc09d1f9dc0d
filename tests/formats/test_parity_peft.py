"""Files written by PEFT (saved with diffusers' own writer) give the same outputs through lorakit as through PEFT."""

from __future__ import annotations

import copy

import pytest
import torch
from formats_models import (
    assert_close,
    clip_inputs,
    output,
    randomize_,
    sd3_inputs,
    tiny_clip,
    tiny_sd3,
    tiny_unet,
    unet_inputs,
)
from safetensors import safe_open
from safetensors.torch import load_file

from lorakit.engine import AdapterManager
from lorakit.formats import to_canonical

peft = pytest.importorskip("peft")


def _read(path: str) -> tuple[dict, dict]:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    return load_file(path), meta


def _inject(model, **cfg_kwargs):
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    cfg = LoraConfig(init_lora_weights=False, **cfg_kwargs)
    peft_model = copy.deepcopy(model)
    inject_adapter_in_model(cfg, peft_model)
    randomize_(peft_model, 7, ("lora_A", "lora_B", "lora_magnitude_vector"))
    if cfg.use_dora:  # magnitudes near the weight norms, so the test exercises the renormalisation
        with torch.no_grad():
            for n, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in n:
                    p.copy_(p.abs() + 1.0)
    return peft_model, get_peft_model_state_dict(peft_model), cfg


UNET_CASES = {
    "patterns": dict(
        r=4,
        lora_alpha=8,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.0.proj", "conv1", "time_emb_proj"],
        rank_pattern={"conv1": 2, "to_v": 3},
        alpha_pattern={"to_k": 3, "conv1": 1, "proj_in": 16},
    ),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["to_q", "to_v", "conv2"]),
    "dora": dict(r=3, lora_alpha=5, use_dora=True, target_modules=["to_q", "to_k", "ff.net.2"]),
    "bias": dict(r=2, lora_alpha=4, lora_bias=True, target_modules=["to_out.0", "proj_out"]),
}


@pytest.mark.parametrize(
    "case,layout", [(c, "peft") for c in UNET_CASES] + [("patterns", "intermediate")]
)
def test_unet_file_written_by_peft_and_diffusers(tmp_path, case, layout):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.utils import convert_state_dict_to_diffusers

    base = tiny_unet("sd1")
    peft_model, sd, cfg = _inject(base, **UNET_CASES[case])
    if layout == "intermediate":  # what train_dreambooth_lora.py saves: a mixed .lora.down + lora_A file
        sd = convert_state_dict_to_diffusers(sd)
        assert any(".lora.down." in k for k in sd) and any(".lora_A." in k for k in sd)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path, unet_lora_layers=sd, unet_lora_adapter_metadata=cfg.to_dict()
    )
    file_sd, meta = _read(str(tmp_path / "pytorch_lora_weights.safetensors"))
    conv = to_canonical(file_sd, meta, {"unet": base}, source="peft-file")
    assert not conv.report.skipped
    assert conv.report.components["unet"].alpha_source == "lora_adapter_metadata"
    inputs = unet_inputs(base)
    ref = output(peft_model, inputs)
    before = output(base, inputs)
    AdapterManager(base).add_adapter("a", conv.adapters["unet"])
    assert_close(output(base, inputs), ref, before)


@pytest.mark.parametrize("with_projection", [False, True])
def test_text_encoder_file_written_by_peft(tmp_path, with_projection):
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    te = tiny_clip(with_projection)
    peft_model, sd, cfg = _inject(
        te, r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1"],
        alpha_pattern={"fc1": 8, "k_proj": 1}, rank_pattern={"v_proj": 2},
    )
    StableDiffusionXLLoraLoaderMixin.save_lora_weights(
        tmp_path, unet_lora_layers={}, text_encoder_2_lora_layers=sd, text_encoder_2_lora_adapter_metadata=cfg.to_dict()
    )
    file_sd, meta = _read(str(tmp_path / "pytorch_lora_weights.safetensors"))
    conv = to_canonical(file_sd, meta, {"text_encoder_2": te})
    assert conv.report.matched_keys == len(file_sd)
    ref = output(peft_model, clip_inputs())
    before = output(te, clip_inputs())
    AdapterManager(te).add_adapter("a", conv.adapters["text_encoder_2"])
    assert_close(output(te, clip_inputs()), ref, before)


def test_text_encoder_keys_across_transformers_versions():
    """Keys written under transformers 4 (``text_model.``) land on a flattened transformers-5 CLIPTextModel."""
    te = tiny_clip(False)
    peft_model, sd, _ = _inject(te, r=2, lora_alpha=2, target_modules=["q_proj", "fc2"])
    prefix = "text_encoder.text_model." if not hasattr(te, "text_model") else "text_encoder."
    file_sd = {prefix + k.removeprefix("text_model."): v for k, v in sd.items()}
    conv = to_canonical(file_sd, None, {"text_encoder": te})
    assert conv.report.matched_keys == len(file_sd)
    AdapterManager(te).add_adapter("a", conv.adapters["text_encoder"])
    assert_close(output(te, clip_inputs()), output(peft_model, clip_inputs()))


def test_sd3_transformer_file_and_raw_peft(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_sd3()
    peft_model, sd, cfg = _inject(
        base, r=4, lora_alpha=2, target_modules=["to_q", "add_k_proj", "to_add_out", "norm1_context.linear", "proj_out"],
        alpha_pattern={"proj_out": 8},
    )
    file_sd = {"transformer." + k: v for k, v in sd.items()}
    meta = {"lora_adapter_metadata": __import__("json").dumps({f"transformer.{k}": v for k, v in cfg.to_dict().items()},
                                                               default=list)}
    # raw PEFT: PeftModel.save_pretrained -> base_model.model.* keys + adapter_config.json fields as metadata
    cfg2 = LoraConfig(r=3, lora_alpha=6, target_modules=["to_k", "ff.net.2"], alpha_pattern={"ff.net.2": 1},
                      init_lora_weights=False)
    pm = get_peft_model(copy.deepcopy(base), cfg2)
    randomize_(pm, 3, ("lora_A", "lora_B"))

    conv = to_canonical(file_sd, meta, {"transformer": base, "text_encoder": tiny_clip(True)})
    ref = output(peft_model, sd3_inputs())
    before = output(base, sd3_inputs())
    mgr = AdapterManager(base)
    mgr.add_adapter("a", conv.adapters["transformer"])
    assert_close(output(base, sd3_inputs()), ref, before)
    mgr.delete_adapter("a")

    pm.save_pretrained(tmp_path / "raw")
    raw_sd = load_file(str(tmp_path / "raw" / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.") for k in raw_sd)
    adapter_config = (tmp_path / "raw" / "adapter_config.json").read_text()
    conv2 = to_canonical(raw_sd, {"adapter_config": adapter_config}, {"transformer": base}, source="raw")
    assert conv2.format == "peft"
    assert conv2.report.components["transformer"].alpha_source == "adapter_config"
    mgr.add_adapter("b", conv2.adapters["transformer"])
    with torch.no_grad():
        ref2 = pm(**sd3_inputs())[0]
    assert_close(output(base, sd3_inputs()), ref2)
