"""Real-world files lorakit used to misread (issue 13, "found failing").

* diffusers' advanced SDXL DreamBooth script's WebUI export (``{output_dir}.safetensors`` =
  ``convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(pytorch_lora_weights)))``): built here by
  running those very diffusers 0.42.1 utilities on PEFT state dicts, and by hand from the published key facts. The
  DoRA magnitudes keep a dotted tail (``…_attn1.to_k.lora_magnitude_vector`` beside ``…_attn1_to_k.lora_down.weight``);
  with ``--train_text_encoder`` the UNet keys stay ``…_to_k_lora.down.weight`` (no alpha: trained at alpha = rank).
* A kohya ``networks.oft`` SDXL file (SGM names): loads; and while a kind is not applied, the error and ``inspect``
  say "unsupported kind X" instead of suggesting other module names.
* ``inspect`` of LoHa / LoKr files whose shapes do not fit the family's real-size reference model: kinds, ranks,
  alphas and dtypes come from the file alone.
"""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from formats_models import assert_close, clip_inputs, output, tiny_clip, tiny_unet, unet_inputs
from safetensors.torch import load_file, save_file
from torch import nn

import lorakit
from lorakit import report as R
from lorakit.engine import AdapterManager
from lorakit.errors import KeyMismatchError
from lorakit.formats import to_canonical
from lorakit.kinds import DoRA, LoRA
from lorakit.targets import reference_components

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _randomize_peft(model: nn.Module, seed: int) -> None:
    """Non-trivial PEFT adapter values: lora_B (zero at init) random, DoRA magnitudes moved off the weight norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_A" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * torch.rand(p.shape, generator=g))


def _advanced_script_export(train_te: bool, dora: bool = True):
    """The script's two saves, run on tiny SDXL models with PEFT adapters: returns the WebUI (kohya) state dict, the
    PEFT-adapted models (the reference) and fresh base models."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import (
        convert_all_state_dict_to_peft,
        convert_state_dict_to_diffusers,
        convert_state_dict_to_kohya,
    )
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    base = {"unet": tiny_unet("sdxl"), "text_encoder": tiny_clip(False), "text_encoder_2": tiny_clip(True, seed=1)}
    ref = copy.deepcopy(base)
    cfg = dict(r=4, lora_alpha=4, use_dora=dora, init_lora_weights="gaussian")
    ref["unet"].add_adapter(LoraConfig(**cfg, target_modules=UNET_TARGETS))
    _randomize_peft(ref["unet"], 1)
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(ref["unet"]))}
    if train_te:
        for i, comp in enumerate(("text_encoder", "text_encoder_2")):
            inject_adapter_in_model(LoraConfig(**cfg, target_modules=TE_TARGETS), ref[comp])
            _randomize_peft(ref[comp], 2 + i)
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(ref["text_encoder"]))
        layers["text_encoder_2_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(ref["text_encoder_2"])
        )
    with tempfile.TemporaryDirectory() as d:
        StableDiffusionXLPipeline.save_lora_weights(d, **layers)
        diffusers_sd = load_file(f"{d}/pytorch_lora_weights.safetensors")
    webui = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(diffusers_sd))
    return webui, ref, base


@pytest.mark.parametrize(("train_te", "dora"), [(False, True), (True, True), (True, False)],
                         ids=["dora-unet-only", "dora-train-text-encoder", "lora-train-text-encoder"])  # fmt: skip
def test_advanced_sdxl_script_webui_export_loads_whole(train_te, dora):
    webui, ref, base = _advanced_script_export(train_te, dora)
    # the layout as the utilities write it (the facts this test is about)
    if dora:
        assert any(k.endswith("_attn1.to_k.lora_magnitude_vector") for k in webui)
        assert any(k.endswith("_attn1_to_out.0.lora_magnitude_vector") for k in webui)
    if train_te:
        assert any(k.endswith("_attn1_to_k_lora.down.weight") for k in webui)
        assert not any(k.startswith("lora_unet_") and k.endswith(".alpha") for k in webui)
    else:
        assert any(k.endswith("_attn1_to_k.lora_down.weight") for k in webui)

    comps = ["unet", "text_encoder", "text_encoder_2"] if train_te else ["unet"]
    conv = to_canonical(webui, None, {c: base[c] for c in comps}, source="webui.safetensors")
    assert not conv.report.skipped, conv.report.summary()
    want_kind = DoRA if dora else LoRA
    for c in comps:
        n = sum(1 for p, m in base[c].named_modules() if p.endswith(tuple(UNET_TARGETS if c == "unet" else TE_TARGETS)))
        mods = conv.adapters[c]
        assert len(mods) == n and all(type(k) is want_kind for k in mods.values()), c
        assert all(k.scale == 1.0 for k in mods.values())  # alpha = rank, written or not

    u_in, t_in = unet_inputs(base["unet"]), clip_inputs()
    want = {"unet": output(ref["unet"], u_in)}
    before = {"unet": output(base["unet"], u_in)}
    for c in comps[1:]:
        want[c], before[c] = output(ref[c], t_in), output(base[c], t_in)
    for c in comps:
        AdapterManager(base[c]).add_adapter("webui", conv.adapters[c])
    assert_close(output(base["unet"], u_in), want["unet"], before["unet"])
    for c in comps[1:]:
        assert_close(output(base[c], t_in), want[c], before[c])


def _dora_ref(w: torch.Tensor, down: torch.Tensor, up: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """PEFT DoRA at scale 1, fp64: m · (W + up·down) / ‖W + up·down‖ per output row."""
    v = w.double() + up.double() @ down.double()
    return m.double()[:, None] * v / v.norm(dim=1, keepdim=True)


def test_advanced_script_key_facts_by_hand():
    """The three spellings of one export, written from the published key facts: one DoRA adapter per module."""
    unet = tiny_unet("sdxl")
    blk = "down_blocks_1_attentions_0_transformer_blocks_0"
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    mods = {"attn1_to_k": ("attn1.to_k", "."), "attn1_to_out_0": ("attn1.to_out.0", "_to_out."),
            "attn2_to_q": ("attn2.to_q", ".")}  # fmt: skip
    for flat, (path, _) in mods.items():
        w = unet.get_submodule(f"down_blocks.1.attentions.0.transformer_blocks.0.{path}").weight
        sd[f"lora_unet_{blk}_{flat}.lora_down.weight"] = torch.randn(4, w.shape[1], generator=g)
        sd[f"lora_unet_{blk}_{flat}.lora_up.weight"] = torch.randn(w.shape[0], 4, generator=g)
        sd[f"lora_unet_{blk}_{flat}.alpha"] = torch.tensor(4)  # int64, as the exporter writes it
    # magnitudes: the module path splits before the leaf (and to_out.0 keeps its dot)
    sd[f"lora_unet_{blk}_attn1.to_k.lora_magnitude_vector"] = torch.rand(16, generator=g) + 0.5
    sd[f"lora_unet_{blk}_attn1_to_out.0.lora_magnitude_vector"] = torch.rand(16, generator=g) + 0.5
    # a text-encoder-trained export's UNet keys: "_lora.down.weight", no alpha
    sd[f"lora_unet_{blk}_attn2_to_q_lora.down.weight"] = sd.pop(f"lora_unet_{blk}_attn2_to_q.lora_down.weight")
    sd[f"lora_unet_{blk}_attn2_to_q_lora.up.weight"] = sd.pop(f"lora_unet_{blk}_attn2_to_q.lora_up.weight")
    del sd[f"lora_unet_{blk}_attn2_to_q.alpha"]
    sd[f"lora_unet_{blk}_attn2.to_q.lora_magnitude_vector"] = torch.rand(16, generator=g) + 0.5
    conv = to_canonical(sd, None, {"unet": unet})
    assert not conv.report.skipped and conv.report.matched_keys == len(sd)
    for flat, (path, _) in mods.items():
        full = f"down_blocks.1.attentions.0.transformer_blocks.0.{path}"
        kind = conv.adapters["unet"][full]
        assert isinstance(kind, DoRA) and kind.axis == "out"
        w = unet.get_submodule(full).weight.detach()
        dot = path.replace("attn1.to_out.0", "attn1_to_out.0")
        m = sd[f"lora_unet_{blk}_{dot}.lora_magnitude_vector"]
        down = sd.get(f"lora_unet_{blk}_{flat}.lora_down.weight", sd.get(f"lora_unet_{blk}_{flat}_lora.down.weight"))
        up = sd.get(f"lora_unet_{blk}_{flat}.lora_up.weight", sd.get(f"lora_unet_{blk}_{flat}_lora.up.weight"))
        torch.testing.assert_close((w.double() + kind.delta_weight(w).double()), _dora_ref(w, down, up, m),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def _meta_export_of_sdxl() -> dict[str, torch.Tensor]:
    """The export's keys for every attention projection of the real-size SDXL UNet (meta tensors: a header)."""
    unet = reference_components("sdxl")["unet"]
    sd: dict[str, torch.Tensor] = {}
    for path, mod in unet.named_modules():
        if not path.endswith(tuple(UNET_TARGETS)):
            continue
        flat = "lora_unet_" + path.replace(".", "_")
        out, inn = mod.weight.shape
        sd[f"{flat}_lora.down.weight"] = torch.empty(4, inn, device="meta")
        sd[f"{flat}_lora.up.weight"] = torch.empty(out, 4, device="meta")
        head, leaf = path.rsplit(".", 2)[0], ".".join(path.rsplit(".", 2)[1:])
        if not leaf.startswith("to_out"):
            head, leaf = path.rsplit(".", 1)
        sd[f"lora_unet_{head.replace('.', '_')}.{leaf}.lora_magnitude_vector"] = torch.empty(out, device="meta")
    return sd


def test_advanced_script_export_at_sdxl_size_is_one_dora_per_module():
    """Real SDXL size (the reference model, header-only): every projection one DoRA adapter, nothing skipped."""
    sd = _meta_export_of_sdxl()
    conv = to_canonical(sd, None, None, allow_meta=True)
    rep = conv.report
    assert conv.family == "sdxl" and not rep.skipped
    n = len(sd) // 3
    assert n > 500 and rep.components["unet"].kinds == {"dora": n}


# ----------------------------------------------------------------------------------------- kohya OFT-only SDXL
#: SGM names of real SDXL (640-wide level 1, 1280-wide level 2), kohya networks.oft's default targets
OFT_SGM = {
    "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": 640,
    "oft_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_out_0": 640,
    "oft_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_k": 1280,
    "oft_unet_middle_block_1_transformer_blocks_9_attn2_to_v": 1280,
    "oft_unet_output_blocks_2_1_transformer_blocks_9_attn1_to_q": 1280,
}


def _kohya_oft_sdxl_file(path) -> None:
    g = torch.Generator().manual_seed(9)
    sd = {}
    for name, out in OFT_SGM.items():
        sd[f"{name}.oft_blocks"] = 0.01 * torch.randn(4, out // 4, out // 4, generator=g)
        sd[f"{name}.alpha"] = torch.tensor(1e-3)
    save_file(sd, str(path), {"ss_network_module": "networks.oft", "ss_network_dim": "4", "ss_network_alpha": "0.001",
                              "ss_base_model_version": "sdxl_base_v1-0"})  # fmt: skip


def test_kohya_oft_only_sdxl_file_loads_and_inspects_clean(tmp_path):
    path = tmp_path / "oft.safetensors"
    _kohya_oft_sdxl_file(path)
    conv = to_canonical(load_file(str(path)), None, None)
    assert conv.family == "sdxl" and not conv.report.skipped
    assert conv.report.components["unet"].kinds == {"oft": len(OFT_SGM)}
    assert "mid_block.attentions.0.transformer_blocks.9.attn2.to_v" in conv.adapters["unet"]
    rep = lorakit.inspect(path)
    assert rep.kinds == {"oft": len(OFT_SGM)} and rep.format == "kohya-oft" and rep.family == "SDXL"
    assert rep.ranks == {4: len(OFT_SGM)} and rep.alphas == {"0.001": len(OFT_SGM)}
    assert not rep.warnings, rep.warnings


def test_while_a_kind_is_not_applied_the_message_names_it(tmp_path, monkeypatch):
    """The generic rule (simulated with OFT taken out of the applied kinds): "unsupported kind OFT", no "closest"
    module names, and inspect does not claim the keys do not fit the reference model."""
    from lorakit import kinds

    monkeypatch.setattr(kinds, "KINDS", tuple(k for k in kinds.KINDS if k is not kinds.OFT))
    monkeypatch.setattr(kinds, "NOT_APPLIED", (kinds.OFT,))
    path = tmp_path / "oft.safetensors"
    _kohya_oft_sdxl_file(path)
    with pytest.raises(KeyMismatchError) as exc:
        to_canonical(load_file(str(path)), None, None, source="oft.safetensors")
    msg = str(exc.value)
    assert "unsupported kind OFT" in msg and "closest" not in msg and "up_blocks" not in msg, msg
    assert all(s.reason == R.UNSUPPORTED_KIND for s in exc.value.report.skipped)
    rep = lorakit.inspect(path)
    assert rep.family == "SDXL" and rep.kinds == {}
    assert any("unsupported kind OFT" in w for w in rep.warnings), rep.warnings
    assert not any("do not fit" in w for w in rep.warnings), rep.warnings


# ----------------------------------------------------------------------------------------- inspect: file facts
def _loha_lokr_file(path, kind: str) -> int:
    """SDXL kohya names (they resolve on the real-size reference model) with tiny shapes (they do not fit it)."""
    g = torch.Generator().manual_seed(2)
    names = [f"lora_unet_input_blocks_4_1_transformer_blocks_0_attn{a}_to_{x}" for a in (1, 2) for x in "qkv"]
    names += ["lora_te1_text_model_encoder_layers_0_mlp_fc1"]
    sd: dict[str, torch.Tensor] = {}
    for n in names:
        if kind == "loha":
            for f in ("w1", "w2"):
                sd[f"{n}.hada_{f}_a"] = torch.randn(16, 4, generator=g).half()
                sd[f"{n}.hada_{f}_b"] = torch.randn(4, 8, generator=g).half()
        else:
            sd[f"{n}.lokr_w1"] = torch.randn(2, 2, generator=g).half()
            sd[f"{n}.lokr_w2_a"] = torch.randn(8, 3, generator=g).half()
            sd[f"{n}.lokr_w2_b"] = torch.randn(3, 4, generator=g).half()
        sd[f"{n}.alpha"] = torch.tensor(2.0).half()
    save_file(sd, str(path), {"ss_network_module": "lycoris.kohya", "ss_base_model_version": "sdxl_base_v1-0"})
    return len(names)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_inspect_reads_kinds_ranks_alphas_from_the_file_alone(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    n = _loha_lokr_file(path, kind)
    rank = 4 if kind == "loha" else 3
    for model in (None, {"unet": tiny_unet("sdxl")}):  # without a model, and with one the shapes do not fit either
        rep = lorakit.inspect(path, components=model)
        assert rep.kinds == {kind: n}, rep.format_table()
        assert rep.ranks == {rank: n} and rep.alphas == {"2": n} and rep.dtypes == {"float16": len(load_file(str(path)))}
        table = rep.format_table()
        assert f"{kind}: {n}" in table and f"{rank}: {n}" in table
