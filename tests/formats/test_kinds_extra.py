"""OFT, BOFT, (IA)³ and GLoRA files through ``formats`` (issue 13).

* Files written by lycoris-lora 4.1.3's own network APIs (``lycoris.kohya.create_network`` + ``save_weights``, kohya
  names, and ``create_lycoris``, the ``lycoris_`` prefix): every key lands, and the models give the LyCORIS modules'
  own forward output.
* kohya sd-scripts ``networks/oft.py`` files (``oft_unet_`` keys), hand-written from the published key facts: the
  kohya clamp, checked against an explicit fp64 formula; written back as kohya OFT.
* Every writer's output reads back to the same deltas; SD3's fused qkv and adaLN swap are exact where the kind's
  structure allows and reported by name (with the reason) where it does not.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from formats_models import (
    assert_close,
    clip_inputs,
    output,
    sd3_inputs,
    tiny_clip,
    tiny_sd3,
    tiny_unet,
    unet_inputs,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit import report as R
from lorakit.engine import AdapterManager
from lorakit.formats import from_canonical, to_canonical
from lorakit.kinds import BOFT, IA3, OFT, AdapterKind, GLoRA, LoRA

lycoris = pytest.importorskip("lycoris")

#: LyCORIS' "full" preset restricted to the SD classes (its Anima "TimestepEmbedding" entry duplicates time_embedding)
PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""

#: (IA)³ on the input side where LyCORIS' own ia3 preset puts it (mlp.fc2, ff.net.2; its name_algo_map), output side
#: elsewhere; by-name targets are matched on the full module path
IA3_PRESET = r"""
enable_conv = true
unet_target_module = ["ResnetBlock2D"]
unet_target_name = ['.*ff\.net\.2', '.*attn1\.to_k']
text_encoder_target_module = ["CLIPAttention"]
text_encoder_target_name = ['.*mlp\.fc2']

[name_algo_map.'.*fc2']
algo = "ia3"
train_on_input = true

[name_algo_map.'.*ff\.net\.2']
algo = "ia3"
train_on_input = true
"""

#: name -> (create_network kwargs, canonical kind of every module)
CASES: dict[str, tuple[dict, str]] = {
    "diag-oft": (dict(algo="diag-oft"), "oft"),
    "diag-oft-constrained-rescaled": (dict(algo="diag-oft", constraint=1e-3, rescaled=True), "oft"),
    "boft": (dict(algo="boft", network_dim=8, rescaled=True), "boft"),
    "ia3": (dict(algo="ia3"), "ia3"),
    "ia3-on-input": (dict(algo="ia3", preset=IA3_PRESET), "ia3"),
    "glora": (dict(algo="glora"), "glora"),
}


@pytest.fixture(autouse=True)
def _restore_lycoris_presets():
    """LyCORIS applies presets by mutating class attributes; put them back for other tests. Its logger is chatty."""
    from lycoris import kohya, wrapper

    classes = (kohya.LycorisNetworkKohya, wrapper.LycorisNetwork)
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    level = logging.getLogger("LyCORIS").level
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    yield
    logging.getLogger("LyCORIS").setLevel(level)
    for c, attrs in zip(classes, saved):
        for k, v in attrs.items():
            setattr(c, k, v)


def _randomize(network: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            base = 1.0 if name.endswith("rescale") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * 0.15)


def _kohya_network_file(tmp_path, case: str, save_dtype: torch.dtype | None = torch.float32):
    """A LyCORIS kohya-network file for a tiny SD1 UNet + CLIP, the models it was written for (the reference:
    LyCORIS' modules applied) and fresh copies of the base models."""
    from lycoris import kohya

    kwargs = dict(CASES[case][0])
    dim = kwargs.pop("network_dim", 4)
    unet, te = tiny_unet("sd1"), tiny_clip(False)
    ref_unet, ref_te = copy.deepcopy(unet), copy.deepcopy(te)
    preset = tmp_path / "preset.toml"
    preset.write_text(kwargs.pop("preset", PRESET))
    network = kohya.create_network(1.0, dim, 1.0, None, ref_te, ref_unet, preset=str(preset), **kwargs)
    network.apply_to(ref_te, ref_unet, apply_text_encoder=True, apply_unet=True)
    _randomize(network, 11)
    path = str(tmp_path / f"{case}.safetensors")
    network.save_weights(path, save_dtype, {"ss_network_module": "lycoris.kohya"})
    return path, (unet, te), (ref_unet, ref_te)


def _apply(conv, models: dict[str, nn.Module]) -> None:
    for comp, mapping in conv.adapters.items():
        AdapterManager(models[comp]).add_adapter("a", mapping)


@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_kohya_network_files_match_the_lycoris_forward(tmp_path, case):
    path, (unet, te), (ref_unet, ref_te) = _kohya_network_file(tmp_path, case)
    sd = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    conv = to_canonical(sd, meta, {"unet": unet, "text_encoder": te}, source=case)
    assert not conv.report.skipped, conv.report.summary()
    kind = CASES[case][1]
    assert {c: set(r.kinds) for c, r in conv.report.components.items()} == {"unet": {kind}, "text_encoder": {kind}}
    if case == "ia3-on-input":  # both sides in one file, on_input read from each module's int64 flag
        sides = {(c, k.on_input) for c, m in conv.adapters.items() for k in m.values() if isinstance(k, IA3)}
        assert sides == {("unet", True), ("unet", False), ("text_encoder", True), ("text_encoder", False)}
    u_in, t_in = unet_inputs(unet), clip_inputs()
    before_u, before_t = output(unet, u_in), output(te, t_in)
    ref_u, ref_t = output(ref_unet, u_in), output(ref_te, t_in)
    _apply(conv, {"unet": unet, "text_encoder": te})
    assert_close(output(unet, u_in), ref_u, before_u)
    assert_close(output(te, t_in), ref_t, before_t)
    AdapterManager(unet).fuse()
    assert_close(output(unet, u_in), ref_u, before_u)


def test_int64_on_input_beside_lora_modules_loads_everything(tmp_path):
    """LyCORIS saves (IA)³'s ``on_input`` as int64 without a save dtype; next to ordinary LoRA modules (an algo map)
    the whole file lands (it used to raise DTypeError)."""
    path, (unet, te), _ = _kohya_network_file(tmp_path, "ia3", save_dtype=None)
    sd = load_file(path)
    assert {v.dtype for k, v in sd.items() if k.endswith(".on_input")} == {torch.int64}
    g = torch.Generator().manual_seed(3)
    lora_name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    for k in [k for k in sd if k.startswith(lora_name + ".")]:
        del sd[k]
    sd[f"{lora_name}.lora_down.weight"] = torch.randn(2, 8, generator=g)
    sd[f"{lora_name}.lora_up.weight"] = torch.randn(8, 2, generator=g)
    sd[f"{lora_name}.alpha"] = torch.tensor(1, dtype=torch.int64)
    conv = to_canonical(sd, None, {"unet": unet, "text_encoder": te})
    assert not conv.report.skipped
    assert conv.report.components["unet"].kinds["lora"] == 1 and conv.report.components["unet"].kinds["ia3"] > 10


@pytest.mark.parametrize("algo", ["diag-oft", "boft", "ia3", "glora"])
def test_create_lycoris_wrapper_files(tmp_path, algo):
    """``lycoris.create_lycoris`` (SimpleTuner's path): ``lycoris_`` + underscored diffusers names."""
    from lycoris import create_lycoris

    unet = tiny_unet("sdxl")
    ref = copy.deepcopy(unet)
    lycoris.LycorisNetwork.apply_preset({"target_module": ["Transformer2DModel"], "target_name": []})
    net = create_lycoris(ref, 1.0, linear_dim=8 if algo == "boft" else 4, linear_alpha=2.0, algo=algo)
    net.apply_to()
    _randomize(net, 5)
    path = str(tmp_path / "lycoris.safetensors")
    net.save_weights(path, torch.float32, None)
    sd = load_file(path)
    assert all(k.startswith("lycoris_") for k in sd)
    conv = to_canonical(sd, None, {"unet": unet}, source=algo)
    assert conv.format == "lycoris" and not conv.report.skipped
    inputs = unet_inputs(unet)
    before, want = output(unet, inputs), output(ref, inputs)
    AdapterManager(unet).add_adapter("a", conv.adapters["unet"])
    assert_close(output(unet, inputs), want, before)


# ----------------------------------------------------------------------------------------- kohya networks.oft
def _kohya_oft_weight(blocks: torch.Tensor, alpha: float, w: torch.Tensor) -> torch.Tensor:
    """kohya sd-scripts networks/oft.py, fp64: Q = B − Bᵀ; Q ← Q·(min(‖Q‖, c) + 1e-8)/(‖Q‖ + 1e-8), c = alpha·out;
    R = (I + Q)(I − Q)⁻¹ per block; new row k·b + m = Σ_n R_k[n, m] · row k·b + n."""
    b = blocks.double()
    q = b - b.transpose(1, 2)
    norm = float(q.flatten().norm())
    q = q * ((min(norm, alpha * w.shape[0]) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(b.shape[1], dtype=torch.float64)
    r = torch.block_diag(*[(eye + qk) @ torch.linalg.inv(eye - qk) for qk in q])
    return (r.t() @ w.double().flatten(1)).reshape(w.shape)


#: kohya's default targets: the CrossAttention children (to_q, to_k, to_v, to_out.0); SGM names for SDXL
SDXL_OFT = {
    "oft_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "oft_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_out_0": "down_blocks.1.attentions.1.transformer_blocks.1.attn2.to_out.0",
    "oft_unet_middle_block_1_transformer_blocks_0_attn1_to_k": "mid_block.attentions.0.transformer_blocks.0.attn1.to_k",
    "oft_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_v": "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_v",
}


def _kohya_oft_file(unet: nn.Module, names: dict[str, str], alpha: float, dim: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(21)
    sd: dict[str, torch.Tensor] = {}
    for key, path in names.items():
        out = unet.get_submodule(path).weight.shape[0]
        sd[f"{key}.oft_blocks"] = 0.2 * torch.randn(dim, out // dim, out // dim, generator=g)
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    return sd


@pytest.mark.parametrize("alpha", [1e-3, 0.5, 0.0])
def test_kohya_oft_sdxl_file_uses_kohyas_clamp(alpha):
    unet = tiny_unet("sdxl")
    sd = _kohya_oft_file(unet, SDXL_OFT, alpha)
    meta = {"ss_network_module": "networks.oft", "ss_network_dim": "4", "ss_network_alpha": str(alpha)}
    conv = to_canonical(sd, meta, {"unet": unet})
    assert conv.format == "kohya-oft" and not conv.report.skipped
    ref = copy.deepcopy(unet)
    with torch.no_grad():
        for key, path in SDXL_OFT.items():
            kind = conv.adapters["unet"][path]
            assert isinstance(kind, OFT) and kind.convention == "kohya"
            mod = ref.get_submodule(path)
            mod.weight.copy_(_kohya_oft_weight(sd[f"{key}.oft_blocks"], float(sd[f"{key}.alpha"]), mod.weight).float())
    inputs = unet_inputs(unet)
    before, want = output(unet, inputs), output(ref, inputs)
    AdapterManager(unet).add_adapter("a", conv.adapters["unet"])
    got = output(unet, inputs)
    if alpha == 0.0:  # kohya clamps ‖Q‖ to 0: no effect (LyCORIS would read 0 as "no constraint")
        assert float((got - before).abs().max()) < 1e-5
    else:
        assert_close(got, want, before)

    # written back as kohya OFT: oft_unet_ + SGM names, the same tensors, networks.oft in the header
    out_sd, out_meta = from_canonical(conv.adapters, "kohya", family="sdxl")
    assert set(out_sd) == set(sd)
    assert all(torch.equal(out_sd[k], sd[k]) for k in sd)
    assert out_meta["ss_network_module"] == "networks.oft" and out_meta["ss_network_dim"] == "4"


def test_kohya_oft_sd1_diffusers_names():
    unet = tiny_unet("sd1")
    names = {
        "oft_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "oft_unet_up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0": "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0",
    }
    sd = _kohya_oft_file(unet, names, 1e-3, dim=2)
    conv = to_canonical(sd, None, {"unet": unet})
    assert not conv.report.skipped and conv.report.components["unet"].kinds == {"oft": 2}
    for key, path in names.items():
        w = unet.get_submodule(path).weight.detach()
        want = _kohya_oft_weight(sd[f"{key}.oft_blocks"], 1e-3, w)
        got = w.double() + conv.adapters["unet"][path].delta_weight(w).double()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------- writers
def _kinds_for(unet: nn.Module, te: nn.Module) -> dict[str, dict[str, AdapterKind]]:
    g = torch.Generator().manual_seed(4)

    def r(*s: int) -> torch.Tensor:
        return 0.2 * torch.randn(s, generator=g)

    att = "down_blocks.0.attentions.0.transformer_blocks.0"
    return {
        "unet": {
            f"{att}.attn1.to_q": OFT(r(4, 2, 2), alpha=1e-3, rescale=r(8, 1) + 1),
            f"{att}.attn1.to_k": OFT(r(2, 4, 4), alpha=0.5, convention="kohya"),
            f"{att}.attn1.to_v": BOFT(r(2, 2, 4, 4), alpha=0.0),
            f"{att}.attn2.to_q": IA3(r(8)),
            "down_blocks.0.resnets.0.conv1": IA3(r(1, 8, 1, 1), on_input=True),
            "down_blocks.0.resnets.0.conv2": GLoRA(r(8, 2, 1, 1), r(2, 8, 1, 1), r(8, 2, 1, 1), r(2, 8, 3, 3), alpha=1.0),
            f"{att}.ff.net.2": GLoRA(r(32, 2), r(2, 32), r(8, 2), r(2, 32), alpha=3.0),
        },
        "text_encoder": {
            "encoder.layers.0.self_attn.q_proj": OFT(r(4, 4, 4), alpha=0.5, convention="kohya"),  # no oft_te_: LyCORIS
            "encoder.layers.0.mlp.fc1": IA3(r(16), on_input=True),
        },
    }


@pytest.mark.parametrize("layout", ["kohya", "diffusers", "peft"])
def test_every_writer_reads_back_to_the_same_deltas(layout):
    unet, te = tiny_unet("sd1"), tiny_clip(False)
    models = {"unet": unet, "text_encoder": te}
    adapters = _kinds_for(unet, te)
    for comp, mapping in adapters.items():
        for path, kind in mapping.items():
            kind.check_fits(models[comp].get_submodule(path).weight.shape, path)
    groups = [adapters] if layout != "peft" else [{c: m} for c, m in adapters.items()]
    for part in groups:
        sd, meta = from_canonical(part, layout, family="sd1")
        if layout == "kohya":
            assert any(k.startswith("oft_unet_") for k in sd) == ("unet" in part)
            assert not any(k.startswith("oft_te") for k in sd)
        back = to_canonical(sd, meta, {c: models[c] for c in part})
        assert not back.report.skipped, back.report.summary()
        for comp, mapping in part.items():
            for path, kind in mapping.items():
                got = back.adapters[comp][path]
                assert type(got) is type(kind)
                w = models[comp].get_submodule(path).weight.detach()
                torch.testing.assert_close(got.delta_weight(w), kind.delta_weight(w), rtol=1e-5, atol=1e-6)
                if isinstance(kind, OFT) and layout == "kohya" and comp == "unet":
                    assert got.convention == kind.convention  # kohya OFT stays kohya OFT where it came from


# ----------------------------------------------------------------------------------------- SD3 fused projections
def _rows_of(model: nn.Module, paths: list[str]) -> torch.Tensor:
    return torch.cat([model.get_submodule(p).weight.detach() for p in paths])


def test_sd3_fused_qkv_and_adaln_swap_exact_or_reported():
    sd3 = {"transformer": tiny_sd3()}
    tr = sd3["transformer"]
    d = tr.transformer_blocks[0].attn.to_q.weight.shape[0]
    assert d == 8
    g = torch.Generator().manual_seed(2)
    x0, c0, x1, c1 = (f"lora_unet_joint_blocks_{i}_{b}_block_attn_qkv" for i, b in ((0, "x"), (0, "context"), (1, "x"), (1, "context")))
    sd = {
        # OFT, blocks of 4 rows: whole blocks per q|k|v part (exact)
        f"{x0}.oft_blocks": 0.2 * torch.randn(6, 4, 4, generator=g),
        f"{x0}.alpha": torch.tensor(1e-3),
        # BOFT with LyCORIS' default stage count: the last stage spans all 24 rows (reported)
        f"{c0}.oft_blocks": 0.2 * torch.randn(3, 4, 6, 6, generator=g),
        # GLoRA: a1, a2, b2 shared, b1 rows split (exact)
        f"{x1}.a1.weight": torch.randn(d, 2, generator=g),
        f"{x1}.a2.weight": torch.randn(2, d, generator=g),
        f"{x1}.b1.weight": torch.randn(3 * d, 2, generator=g),
        f"{x1}.b2.weight": torch.randn(2, d, generator=g),
        f"{x1}.alpha": torch.tensor(1.0),
        # OFT blocks of 6 rows straddle q|k|v (reported)
        f"{c1}.oft_blocks": 0.2 * torch.randn(4, 6, 6, generator=g),
        # (IA)³ input side on a direct target
        "lora_unet_joint_blocks_1_x_block_attn_proj.weight": torch.randn(d, generator=g),
        "lora_unet_joint_blocks_1_x_block_attn_proj.on_input": torch.tensor(1),
        # the swapped adaLN of the last context block (16 rows, OFT blocks of 4) and of the final layer ((IA)³)
        "lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.oft_blocks": 0.2 * torch.randn(4, 4, 4, generator=g),
        "lora_unet_final_layer_adaLN_modulation_1.weight": torch.randn(2 * d, generator=g),
        "lora_unet_final_layer_adaLN_modulation_1.on_input": torch.tensor(0),
    }
    conv = to_canonical(sd, None, sd3)
    t = conv.adapters["transformer"]
    details = {s.key.rsplit(".", 1)[0]: s for s in conv.report.skipped}
    assert set(details) == {c0, c1}
    for name, kind in ((c1, "OFT"), (c0, "BOFT")):
        s = details[name]
        assert s.reason == R.UNSUPPORTED_KIND and "cannot split" in s.detail and "straddle" in s.detail, s.detail
        assert f"{kind} " in s.detail, s.detail

    def check_split(file_kind: AdapterKind, paths: list[str]) -> None:
        fused_w = _rows_of(tr, paths)
        full = file_kind.delta_weight(fused_w)
        for i, p in enumerate(paths):
            w = tr.get_submodule(p).weight.detach()
            torch.testing.assert_close(t[p].delta_weight(w), full[i * d : (i + 1) * d], rtol=1e-5, atol=1e-6)

    check_split(OFT(sd[f"{x0}.oft_blocks"], alpha=1e-3), [f"transformer_blocks.0.attn.to_{x}" for x in "qkv"])
    glora = GLoRA(sd[f"{x1}.a1.weight"], sd[f"{x1}.a2.weight"], sd[f"{x1}.b1.weight"], sd[f"{x1}.b2.weight"], alpha=1.0)
    check_split(glora, [f"transformer_blocks.1.attn.to_{x}" for x in "qkv"])
    assert t["transformer_blocks.1.attn.to_out.0"].on_input  # (IA)³ input side on a direct target

    # the swapped halves (SAI (shift, scale) -> diffusers (scale, shift)): the delta of the swapped weight
    for _name, path, kind in (
        ("lora_unet_joint_blocks_1_context_block_adaLN_modulation_1", "transformer_blocks.1.norm1_context.linear",
         OFT(sd["lora_unet_joint_blocks_1_context_block_adaLN_modulation_1.oft_blocks"])),
        ("lora_unet_final_layer_adaLN_modulation_1", "norm_out.linear",
         IA3(sd["lora_unet_final_layer_adaLN_modulation_1.weight"])),
    ):  # fmt: skip
        w = tr.get_submodule(path).weight.detach()
        half = w.shape[0] // 2
        swap = torch.cat([torch.arange(half, 2 * half), torch.arange(0, half)])
        sai_w = w[swap]  # the weight as the file's (SAI) row order sees it
        want = kind.delta_weight(sai_w)[swap]
        torch.testing.assert_close(t[path].delta_weight(w), want, rtol=1e-5, atol=1e-6)

    inputs = sd3_inputs()
    before = output(tr, inputs)
    AdapterManager(tr).add_adapter("a", t)
    unfused = output(tr, inputs)
    AdapterManager(tr).fuse()
    assert_close(output(tr, inputs), unfused, before)


def test_multiplicative_kinds_check_their_module():
    """A norm layer, a wrong width: a shape mismatch naming the key (never a silent drop)."""
    from lorakit.errors import ShapeMismatchError

    sd = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.oft_blocks": torch.zeros(3, 3, 3),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight": torch.zeros(2, 8),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k.lora_up.weight": torch.zeros(8, 2),
    }
    with pytest.raises(ShapeMismatchError, match="attn1_to_q.oft_blocks"):
        to_canonical(sd, None, {"unet": tiny_unet("sd1")})
    norm = {
        "lora_unet_down_blocks_0_attentions_0_norm.weight": torch.zeros(8),
        "lora_unet_down_blocks_0_attentions_0_norm.on_input": torch.tensor(0),
    }
    with pytest.raises(ShapeMismatchError, match="norm layer"):
        to_canonical(norm, None, {"unet": tiny_unet("sd1")})


def test_lora_kind_is_unchanged_beside_the_new_kinds():
    """A LoRA file is read as before (the new vocabularies claim nothing of it)."""
    g = torch.Generator().manual_seed(0)
    sd = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(2, 8, 1, 1, generator=g),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(8, 2, 1, 1, generator=g),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(1.0),
    }
    conv = to_canonical(sd, None, {"unet": tiny_unet("sd1")})
    assert isinstance(conv.adapters["unet"]["down_blocks.0.attentions.0.proj_in"], LoRA)


def test_saved_file_roundtrip_through_safetensors(tmp_path):
    """The kohya writer's tensors are plain floating tensors a safetensors file holds as they are."""
    unet, te = tiny_unet("sd1"), tiny_clip(False)
    sd, meta = from_canonical(_kinds_for(unet, te), "kohya", family="sd1")
    path = tmp_path / "k.safetensors"
    save_file(sd, str(path), meta)
    back = to_canonical(load_file(str(path)), meta, {"unet": unet, "text_encoder": te})
    assert not back.report.skipped
    assert set(back.report.components["unet"].kinds) == {"oft", "boft", "ia3", "glora"}
