"""Detection, mixed layouts, alpha rules, name resolution and the load report, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from formats_models import tiny_clip, tiny_sd3, tiny_unet

from lorakit import report as R
from lorakit.errors import DTypeError, FormatError, KeyMismatchError, LorakitError, ShapeMismatchError
from lorakit.formats import detect, to_canonical
from lorakit.kinds import DoRA, Full, LoHa, LoKr, LoRA
from lorakit.targets import build_index

G = torch.Generator().manual_seed(0)


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def lora(sd: dict, name: str, out: int, inp: int, r: int = 2, alpha: float | None = None, style: str = "kohya",
         k: int | None = None) -> None:
    down, up = (rnd(r, inp), rnd(out, r)) if k is None else (rnd(r, inp, k, k), rnd(out, r, 1, 1))
    suffix = {"kohya": ("lora_down.weight", "lora_up.weight"), "peft": ("lora_A.weight", "lora_B.weight"),
              "inter": ("lora.down.weight", "lora.up.weight"), "te-inter": ("lora_linear_layer.down.weight",
                                                                            "lora_linear_layer.up.weight")}[style]
    sd[f"{name}.{suffix[0]}"], sd[f"{name}.{suffix[1]}"] = down, up
    if alpha is not None:
        sd[f"{name}.alpha"] = torch.tensor(alpha)


@pytest.fixture(scope="module")
def sd1():
    return {"unet": tiny_unet("sd1"), "text_encoder": tiny_clip(False)}


@pytest.fixture(scope="module")
def sdxl():
    return {"unet": tiny_unet("sdxl"), "text_encoder": tiny_clip(False), "text_encoder_2": tiny_clip(True)}


ATT = "down_blocks.0.attentions.0.transformer_blocks.0"


# ------------------------------------------------------------------------------------------------ detection / mixing
def test_detection_uses_all_keys_and_header():
    sd: dict = {}
    lora(sd, f"unet.{ATT}.attn1.to_q", 8, 8, style="inter")
    for i in range(3):
        lora(sd, f"unet.down_blocks.0.resnets.{i}.conv1", 8, 8, style="peft")
    ranked = detect(list(sd), {"lora_adapter_metadata": "{}"})
    assert ranked[0][0] == "diffusers" and ranked[1][0] == "diffusers-intermediate"
    kohya = {"lora_unet_x.lora_down.weight": 0, "lora_te1_y.alpha": 0}
    assert detect(kohya, {"ss_network_dim": "4"})[0][0] == "kohya"


def test_mixed_file_in_one_component_converts_fully(sd1):
    sd: dict = {}
    lora(sd, f"unet.{ATT}.attn1.to_q", 8, 8, style="inter")  # training-script rename
    lora(sd, f"unet.{ATT}.attn1.to_k", 8, 8, style="peft")
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_v", 8, 8, alpha=1.0)  # kohya
    sd[f"lycoris_{ATT.replace('.', '_')}_ff_net_2.hada_w1_a"] = rnd(8, 2)  # LyCORIS LoHa via lycoris_ prefix
    sd[f"lycoris_{ATT.replace('.', '_')}_ff_net_2.hada_w1_b"] = rnd(2, 32)
    sd[f"lycoris_{ATT.replace('.', '_')}_ff_net_2.hada_w2_a"] = rnd(8, 2)
    sd[f"lycoris_{ATT.replace('.', '_')}_ff_net_2.hada_w2_b"] = rnd(2, 32)
    lora(sd, "text_encoder.encoder.layers.0.self_attn.q_proj", 16, 16, style="te-inter")
    lora(sd, "text_encoder.text_model.encoder.layers.0.mlp.fc1", 24, 16, style="peft")
    conv = to_canonical(sd, None, sd1)
    assert conv.report.matched_keys == len(sd) and not conv.report.skipped
    assert conv.format.startswith("mixed(")
    unet = conv.adapters["unet"]
    assert {p.rsplit(".", 1)[-1] for p in unet} == {"to_q", "to_k", "to_v", "2"}
    assert isinstance(unet[f"{ATT}.ff.net.2"], LoHa)
    assert set(conv.adapters["text_encoder"]) == {"encoder.layers.0.self_attn.q_proj", "encoder.layers.0.mlp.fc1"}


def test_old_attention_processors_unet_and_text_encoder(sd1):
    sd: dict = {}
    for leaf in ("to_q", "to_k", "to_v", "to_out"):  # "<block>.attn1.processor.to_q_lora.down.weight", no prefix
        sd[f"{ATT}.attn1.processor.{leaf}_lora.down.weight"] = rnd(2, 8)
        sd[f"{ATT}.attn1.processor.{leaf}_lora.up.weight"] = rnd(8, 2)
    for leaf in ("to_q", "to_out"):
        sd[f"text_encoder.text_model.encoder.layers.1.self_attn.{leaf}_lora.down.weight"] = rnd(2, 16)
        sd[f"text_encoder.text_model.encoder.layers.1.self_attn.{leaf}_lora.up.weight"] = rnd(16, 2)
    conv = to_canonical(sd, None, sd1)
    assert not conv.report.skipped
    assert f"{ATT}.attn1.to_out.0" in conv.adapters["unet"]
    assert set(conv.adapters["text_encoder"]) == {"encoder.layers.1.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj"}


def test_sgm_names_follow_the_models_own_structure():
    """layers_per_block=1: SGM indices shift; the table is derived from the model, not assumed."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=12,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
    )
    idx = build_index(unet, "unet")
    assert idx.lookup("input_blocks_1_1_proj_in").paths == ("down_blocks.0.attentions.0.proj_in",)
    assert idx.lookup("input_blocks_2_0_op").paths == ("down_blocks.0.downsamplers.0.conv",)
    assert idx.lookup("input_blocks_3_0_in_layers_2").paths == ("down_blocks.1.resnets.0.conv1",)
    assert idx.lookup("output_blocks_1_1_conv").paths == ("up_blocks.0.upsamplers.0.conv",)
    assert idx.lookup("output_blocks_3_1_transformer_blocks_0_attn2_to_k").paths == (
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
    )


def test_comfy_and_omi_dotted_original_names(sdxl):
    sd: dict = {}
    lora(sd, "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q", 16, 16, style="peft")
    lora(sd, "unet.label_emb.0.0", 32, 36, alpha=2.0)  # OMI: dotted SGM name with kohya suffixes
    lora(sd, "clip_g.text_model.encoder.layers.1.mlp.fc2", 16, 24)
    lora(sd, "text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.v_proj", 16, 16, style="peft")
    conv = to_canonical(sd, None, sdxl)
    assert not conv.report.skipped
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q" in conv.adapters["unet"]
    assert conv.adapters["unet"]["add_embedding.linear_1"].scale == 1.0
    assert "text_model.encoder.layers.1.mlp.fc2" in conv.adapters["text_encoder_2"]
    assert "encoder.layers.0.self_attn.v_proj" in conv.adapters["text_encoder"]


# ------------------------------------------------------------------------------------------------ alpha
def test_alpha_is_per_module_and_defaults_to_its_own_rank(sd1):
    sd: dict = {}
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q", 8, 8, r=4, alpha=1.0)
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_k", 8, 8, r=2, alpha=8.0)
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_v", 8, 8, r=3)  # no alpha: scale 1
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn2_to_q", 8, 8, r=2, alpha=0.0)  # kohya: 0 means rank
    for keys in (list(sd), list(reversed(list(sd)))):
        conv = to_canonical({k: sd[k] for k in keys}, None, sd1)
        scales = {p.rsplit(".", 2)[-2] + "." + p.rsplit(".", 1)[-1]: k.scale for p, k in conv.adapters["unet"].items()}
        assert scales == {"attn1.to_q": 0.25, "attn1.to_k": 4.0, "attn1.to_v": 1.0, "attn2.to_q": 1.0}
    assert conv.report.components["unet"].alpha_sources == {"tensor": 3, "default (rank)": 1}


def test_kohya_header_alpha_is_a_fallback_only(sd1):
    sd: dict = {}
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q", 8, 8, r=4)
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_k", 8, 8, r=4, alpha=2.0)
    lora(sd, "lora_unet_down_blocks_0_resnets_0_conv1", 8, 8, r=2, k=3)
    meta = {"ss_network_alpha": "8.0", "ss_network_dim": "4", "ss_network_args": json.dumps({"conv_alpha": "1"})}
    conv = to_canonical(sd, meta, sd1)
    u = conv.adapters["unet"]
    assert u[f"{ATT}.attn1.to_q"].scale == 2.0 and u[f"{ATT}.attn1.to_k"].scale == 0.5
    assert u["down_blocks.0.resnets.0.conv1"].scale == 0.5
    assert conv.report.components["unet"].alpha_sources == {"ss_network_alpha": 2, "tensor": 1}


def test_a1111_scale_tensor(sd1):
    sd: dict = {}
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q", 8, 8, r=4)
    sd[f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q.scale"] = torch.tensor(0.3)
    conv = to_canonical(sd, None, sd1)
    assert conv.adapters["unet"][f"{ATT}.attn1.to_q"].scale == pytest.approx(0.3)


def test_diffusers_metadata_patterns_with_transformers4_names_on_a_flat_clip(sd1):
    sd: dict = {}
    lora(sd, "text_encoder.encoder.layers.0.mlp.fc1", 24, 16, r=2, style="peft")
    lora(sd, "text_encoder.encoder.layers.0.self_attn.q_proj", 16, 16, r=2, style="peft")
    meta = {"lora_adapter_metadata": json.dumps({
        "text_encoder.r": 2, "text_encoder.lora_alpha": 4, "text_encoder.use_rslora": False,
        "text_encoder.alpha_pattern": {"text_model.encoder.layers.0.mlp.fc1": 1},
    })}
    conv = to_canonical(sd, meta, sd1)
    te = conv.adapters["text_encoder"]
    assert te["encoder.layers.0.mlp.fc1"].scale == 0.5 and te["encoder.layers.0.self_attn.q_proj"].scale == 2.0
    assert conv.report.components["text_encoder"].alpha_source == "lora_adapter_metadata"


def test_alpha_network_alphas_spelling_and_conflict_warning(sd1):
    """diffusers' network_alphas keys ("<name>.lora.down.weight.alpha") find their module; conflicts are reported."""
    sd: dict = {}
    lora(sd, f"unet.{ATT}.attn1.to_q", 8, 8, r=2, style="inter")
    sd[f"unet.{ATT}.attn1.to_q.lora.down.weight.alpha"] = torch.tensor(1.0)
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.r": 2})}
    conv = to_canonical(sd, meta, sd1)
    assert conv.adapters["unet"][f"{ATT}.attn1.to_q"].scale == 0.5
    assert any("differs from the header" in w for w in conv.report.warnings)


# ------------------------------------------------------------------------------------------------ report / errors
def test_report_reasons_and_closest_names(sd1, monkeypatch):
    from lorakit import kinds

    # the rule for a kind lorakit recognises but does not apply (every LyCORIS kind is applied since issue 13):
    # simulate one registry where OFT, BOFT, (IA)^3 and GLoRA are not applied yet
    extra = (kinds.OFT, kinds.BOFT, kinds.IA3, kinds.GLoRA)
    monkeypatch.setattr(kinds, "KINDS", tuple(k for k in kinds.KINDS if k not in extra))
    monkeypatch.setattr(kinds, "NOT_APPLIED", extra)
    sd: dict = {}
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q", 8, 8)
    lora(sd, "lora_te2_text_model_encoder_layers_0_mlp_fc1", 24, 16)  # no text_encoder_2 here
    lora(sd, f"lora_unet_{ATT.replace('.', '_')}_attn1_to_qq", 8, 8)  # typo
    sd[f"lora_unet_{ATT.replace('.', '_')}_attn2_to_q.lora_down.weight"] = rnd(2, 8)  # no lora_up
    sd[f"lora_unet_{ATT.replace('.', '_')}_attn2_to_k.oft_blocks"] = rnd(2, 4, 4)
    sd[f"lora_unet_{ATT.replace('.', '_')}_attn2_to_v.oft_blocks"] = rnd(1, 2, 4, 4)
    sd[f"lora_unet_{ATT.replace('.', '_')}_ff_net_2.weight"] = rnd(8)
    sd[f"lora_unet_{ATT.replace('.', '_')}_ff_net_2.on_input"] = torch.tensor(0)
    for n in ("a1", "a2", "b1", "b2"):
        sd[f"lora_unet_{ATT.replace('.', '_')}_proj_in.{n}.weight"] = rnd(2, 2)
    sd["bundle_emb.mytoken.string_to_param.*"] = rnd(1, 16)
    sd["oft_unet_down_blocks_0_attentions_0_proj_in.oft_blocks"] = rnd(2, 4, 4)
    sd["optimizer_state"] = rnd(3)
    conv = to_canonical(sd, None, sd1, source="many.safetensors")
    rep = conv.report
    by = rep.by_reason()
    assert [s.key for s in by[R.COMPONENT_ABSENT]] and all(s.key.startswith("lora_te2_") for s in by[R.COMPONENT_ABSENT])
    typo = [s for s in by[R.NO_SUCH_MODULE] if s.key.endswith("to_qq.lora_down.weight")]
    assert typo and typo[0].closest[0] == f"{ATT}.attn1.to_q"
    details = " ".join(s.detail for s in by[R.UNSUPPORTED_KIND])
    for algo in ("OFT", "BOFT", "(IA)^3", "GLoRA", "textual inversion", "kohya-oft layout"):
        assert algo in details, algo
    assert [s.key for s in by[R.INCOMPLETE]] == [f"lora_unet_{ATT.replace('.', '_')}_attn2_to_q.lora_down.weight"]
    assert [s.key for s in by[R.UNRECOGNISED]] == ["optimizer_state"]
    assert rep.matched_keys == 2 and rep.total_keys == len(sd)
    assert "skipped (unsupported kind)" in rep.summary()
    assert rep.to_dict()["components"]["unet"]["alpha_source"] == "default (rank)"
    with pytest.raises(KeyMismatchError, match="strict"):
        to_canonical(sd, None, sd1, strict=True)


def test_zero_matches_raise_with_a_useful_message(sd1):
    sd: dict = {}
    lora(sd, "lora_unet_input_blocks_99_1_proj_in", 8, 8)
    with pytest.raises(KeyMismatchError) as exc:
        to_canonical(sd, None, sd1, source="nothing.safetensors")
    msg = str(exc.value)
    assert "nothing.safetensors" in msg and "no key matched" in msg and "no such module: 2" in msg
    assert "lora_unet_input_blocks_99_1_proj_in" in msg
    with pytest.raises(KeyMismatchError):
        to_canonical({}, None, sd1)
    te_only: dict = {}
    lora(te_only, "lora_te_text_model_encoder_layers_0_mlp_fc1", 24, 16)
    with pytest.raises(KeyMismatchError, match="component absent"):
        to_canonical(te_only, None, {"unet": sd1["unet"]})


def test_shape_mismatch_names_key_module_and_shape(sd1):
    sd: dict = {}
    lora(sd, f"unet.{ATT}.attn2.to_k", 8, 99, style="peft")
    with pytest.raises(ShapeMismatchError) as exc:
        to_canonical(sd, None, sd1)
    msg = str(exc.value)
    assert f"{ATT}.attn2.to_k" in msg and "(8, 12)" in msg and "lora_A" in msg
    assert exc.value.report.by_reason()[R.SHAPE_MISMATCH]


@pytest.mark.parametrize(
    "bad,error",
    [
        ([1, 2], FormatError),
        ({"unet.x.lora_A.weight": [1.0]}, DTypeError),
        ({1: torch.zeros(1)}, FormatError),
        ({f"unet.{ATT}.attn1.to_q.lora_A.weight": torch.zeros(2, 8, dtype=torch.int64),
          f"unet.{ATT}.attn1.to_q.lora_B.weight": torch.zeros(8, 2, dtype=torch.int64)}, DTypeError),
        ({f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q.alpha": torch.zeros(3),
          f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q.lora_down.weight": torch.zeros(2, 8),
          f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q.lora_up.weight": torch.zeros(8, 2)}, FormatError),
        ({f"unet.{ATT}.attn1.to_q.lora_A.weight": torch.zeros(()),
          f"unet.{ATT}.attn1.to_q.lora_B.weight": torch.zeros(8, 2)}, ShapeMismatchError),
    ],
)
def test_malformed_input_raises_lorakit_errors(sd1, bad, error):
    with pytest.raises(error):
        to_canonical(bad, None, sd1)
    with pytest.raises(LorakitError):
        to_canonical({}, "not a mapping", sd1)


def test_odd_metadata_is_reported_not_fatal(sd1):
    sd: dict = {}
    lora(sd, f"unet.{ATT}.attn1.to_q", 8, 8, style="peft")
    conv = to_canonical(sd, {"lora_adapter_metadata": "{not json", "ss_network_args": "[]"}, sd1)
    assert conv.adapters["unet"][f"{ATT}.attn1.to_q"].scale == 1.0
    assert conv.report.warnings


# ------------------------------------------------------------------------------------------------ SD3 fused / swapped
D = 8  # tiny SD3 hidden size (2 heads × 4)


def _fused_delta(kind, rows: int, cols: int) -> torch.Tensor:
    return kind.delta_weight(torch.zeros(rows, cols))


@pytest.fixture(scope="module")
def sd3():
    return {"transformer": tiny_sd3()}


def test_sd3_fused_qkv_split_is_exact_for_every_kind(sd3):
    sd: dict = {}
    lora(sd, "lora_unet_joint_blocks_0_x_block_attn_qkv", 3 * D, D, r=2, alpha=1.0)
    blk = "lora_unet_joint_blocks_0_context_block_attn_qkv"
    sd.update({f"{blk}.hada_w1_a": rnd(3 * D, 2), f"{blk}.hada_w1_b": rnd(2, D), f"{blk}.hada_w2_a": rnd(3 * D, 2),
               f"{blk}.hada_w2_b": rnd(2, D), f"{blk}.alpha": torch.tensor(1.0)})
    blk1 = "lora_unet_joint_blocks_1_x_block_attn_qkv"  # LoKr, out_l = 3 divides into q/k/v: w1 rows split
    sd.update({f"{blk1}.lokr_w1": rnd(3, 2), f"{blk1}.lokr_w2": rnd(D, 4)})
    blk2 = "lora_unet_joint_blocks_1_context_block_attn_qkv"  # LoKr, out_l = 4: dense fallback
    sd.update({f"{blk2}.lokr_w1": rnd(4, 2), f"{blk2}.lokr_w2_a": rnd(6, 2), f"{blk2}.lokr_w2_b": rnd(2, 4),
               f"{blk2}.alpha": torch.tensor(1.0)})
    conv = to_canonical(sd, None, sd3)
    assert not conv.report.skipped
    t = conv.adapters["transformer"]
    refs = {
        "transformer_blocks.0.attn.to_": LoRA(down=sd["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"],
                                              up=sd["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_up.weight"], alpha=1.0),
        "transformer_blocks.0.attn.add_": LoHa(w1a=sd[f"{blk}.hada_w1_a"], w1b=sd[f"{blk}.hada_w1_b"],
                                               w2a=sd[f"{blk}.hada_w2_a"], w2b=sd[f"{blk}.hada_w2_b"], alpha=1.0),
        "transformer_blocks.1.attn.to_": LoKr(w1=sd[f"{blk1}.lokr_w1"], w2=sd[f"{blk1}.lokr_w2"]),
        "transformer_blocks.1.attn.add_": LoKr(w1=sd[f"{blk2}.lokr_w1"], w2a=sd[f"{blk2}.lokr_w2_a"],
                                               w2b=sd[f"{blk2}.lokr_w2_b"], alpha=1.0),
    }
    for prefix, ref in refs.items():
        fused = _fused_delta(ref, 3 * D, D)
        names = ("q", "k", "v") if prefix.endswith("to_") else ("q_proj", "k_proj", "v_proj")
        for i, n in enumerate(names):
            got = t[prefix + n].delta_weight(torch.zeros(D, D))
            torch.testing.assert_close(got, fused[i * D : (i + 1) * D], rtol=1e-6, atol=1e-6)
    assert isinstance(t["transformer_blocks.1.attn.to_q"], LoKr)
    assert isinstance(t["transformer_blocks.1.attn.add_q_proj"], Full)


def test_sd3_split_qkv_block_diagonal_uses_alpha_over_per_projection_rank(sd3):
    r, alpha = 2, 1.0
    downs = [rnd(r, D) for _ in range(3)]
    ups = [rnd(D, r) for _ in range(3)]
    up = torch.block_diag(*ups)
    name = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    sd = {f"{name}.lora_down.weight": torch.cat(downs), f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(alpha)}
    conv = to_canonical(sd, {"ss_network_args": json.dumps({"split_qkv": "True"})}, sd3)
    for i, leaf in enumerate(("to_q", "to_k", "to_v")):
        k = conv.adapters["transformer"][f"transformer_blocks.0.attn.{leaf}"]
        assert k.rank == r
        torch.testing.assert_close(k.delta_weight(torch.zeros(D, D)), (alpha / r) * ups[i] @ downs[i])


def test_sd3_adaln_halves_are_swapped_for_last_context_block_and_final_layer(sd3):
    sd: dict = {}
    lora(sd, "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", 2 * D, D, alpha=2.0)
    lora(sd, "lora_unet_joint_blocks_0_context_block_adaLN_modulation_1", 6 * D, D)
    lora(sd, "lora_unet_final_layer_adaLN_modulation_1", 2 * D, D)
    conv = to_canonical(sd, None, sd3)
    t = conv.adapters["transformer"]
    for name, path, swapped in (("joint_blocks_1_context_block_adaLN_modulation_1", "transformer_blocks.1.norm1_context.linear", True),
                                ("joint_blocks_0_context_block_adaLN_modulation_1", "transformer_blocks.0.norm1_context.linear", False),
                                ("final_layer_adaLN_modulation_1", "norm_out.linear", True)):
        up = sd[f"lora_unet_{name}.lora_up.weight"]
        got = t[path].up
        if swapped:
            h = up.shape[0] // 2
            up = torch.cat([up[h:], up[:h]])
        torch.testing.assert_close(got, up)


def test_input_axis_dora_on_fused_qkv_is_reported(sd3):
    sd: dict = {}
    lora(sd, "lora_unet_joint_blocks_0_x_block_attn_qkv", 3 * D, D)
    sd["lora_unet_joint_blocks_0_x_block_attn_qkv.dora_scale"] = rnd(1, D).abs()
    lora(sd, "lora_unet_joint_blocks_0_x_block_attn_proj", D, D)
    sd["lora_unet_joint_blocks_0_x_block_attn_proj.dora_scale"] = rnd(D, 1).abs()
    conv = to_canonical(sd, None, sd3)
    assert isinstance(conv.adapters["transformer"]["transformer_blocks.0.attn.to_out.0"], DoRA)
    assert conv.adapters["transformer"]["transformer_blocks.0.attn.to_out.0"].axis == "out"
    skipped = conv.report.by_reason()[R.UNSUPPORTED_KIND]
    assert len(skipped) == 3 and "input-axis DoRA magnitude spans every output row" in skipped[0].detail


def test_t5_keys_only_when_the_pipeline_has_text_encoder_3(sd3):
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=12, num_layers=1, num_heads=2,
                                 feed_forward_proj="gated-gelu"))
    sd: dict = {}
    lora(sd, "lora_te3_encoder_block_0_layer_0_SelfAttention_q", 8, 8)
    lora(sd, "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_1", 12, 8)
    lora(sd, "lora_unet_joint_blocks_0_x_block_mlp_fc2", D, 4 * D)
    conv = to_canonical(sd, None, {**sd3, "text_encoder_3": t5})
    assert set(conv.adapters["text_encoder_3"]) == {"encoder.block.0.layer.0.SelfAttention.q",
                                                    "encoder.block.0.layer.1.DenseReluDense.wi_1"}
    conv2 = to_canonical(sd, None, sd3)
    assert {s.reason for s in conv2.report.skipped} == {R.COMPONENT_ABSENT}


def test_sd35_dual_attention_qkv_split():
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=4, num_attention_heads=2,
        joint_attention_dim=12, caption_projection_dim=8, pooled_projection_dim=10, out_channels=4, pos_embed_max_size=8,
        dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    sd: dict = {}
    lora(sd, "lora_unet_joint_blocks_0_x_block_attn2_qkv", 3 * D, D, alpha=1.0)
    lora(sd, "lora_unet_joint_blocks_0_x_block_attn2_proj", D, D)
    conv = to_canonical(sd, None, {"transformer": model})
    assert set(conv.adapters["transformer"]) == {
        "transformer_blocks.0.attn2.to_q", "transformer_blocks.0.attn2.to_k", "transformer_blocks.0.attn2.to_v",
        "transformer_blocks.0.attn2.to_out.0",
    }


def test_keys_a_kind_does_not_use_are_reported_not_swallowed(sd1):
    """A module's keys outside its kind's vocabulary (a plain bias, an OFT rescale next to a LoRA) are reported one
    by one; the LoRA itself loads."""
    sd: dict = {}
    name = f"lora_unet_{ATT.replace('.', '_')}_attn1_to_q"
    lora(sd, name, 8, 8, alpha=1.0)
    sd[f"{name}.bias"] = rnd(8)
    sd[f"{name}.rescale"] = rnd(8, 1)
    conv = to_canonical(sd, None, sd1)
    rep = conv.report
    assert f"{ATT}.attn1.to_q" in conv.adapters["unet"]
    assert rep.matched_keys == 3 and rep.total_keys == 5
    by = {s.key: s for s in rep.skipped}
    assert by[f"{name}.bias"].reason == R.UNRECOGNISED
    assert by[f"{name}.rescale"].reason == R.UNSUPPORTED_KIND and "OFT" in by[f"{name}.rescale"].detail


def test_every_kind_suffix_parses_to_its_own_role():
    """The suffix table is the kinds' vocabularies: each suffix of each style names its kind's role (no spelling is
    shadowed by another kind's), with the style's joiner and PEFT's optional adapter-name segment."""
    from lorakit import kinds
    from lorakit.formats.keys import ATTNPROC, PEFT, split_suffix

    for s in kinds.vocabulary():
        joiner = "_" if s.style == ATTNPROC else "."
        keys = [f"unet.down_blocks.0.resnets.0.conv1{joiner}{s.text}"]
        if s.style == PEFT and "." in s.text:
            head, _, rest = s.text.partition(".")
            keys.append(f"unet.down_blocks.0.resnets.0.conv1.{head}.default.{rest}")
        for key in keys:
            got = split_suffix(key)
            assert got is not None and got[0] == "unet.down_blocks.0.resnets.0.conv1" and got[1] == s.role, (key, got)
