"""OFT, BOFT, (IA)³ and GLoRA through the pipeline API (issue 13), on tiny SD1 and SDXL pipelines, UNet + text
encoder(s).

Files come from lycoris-lora 4.1.3's kohya network (``lycoris.kohya.create_network`` + ``save_weights``: kohya
``lora_unet_`` / ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` names; for SDXL the UNet names are rewritten to the SGM
names sd-scripts' SDXL trainer writes, with a table written here from the SGM naming facts), never from lorakit's
writer, and kohya ``networks.oft`` files are written by hand from its published key facts. References: the LyCORIS
network's own forward (its modules' ``multiplier`` set per module for component / block weights) and, for kohya OFT,
an explicit fp64 formula.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from pipeline_helpers import assert_close, assert_differs, denoise, encode, fresh, outputs
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lorakit

kohya_net = pytest.importorskip("lycoris.kohya")

PRESET = """
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = []
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""
#: algo -> create_network kwargs
ALGOS = {
    "diag-oft": dict(algo="diag-oft", constraint=1e-3, rescaled=True),
    "boft": dict(algo="boft", network_dim=8),
    "ia3": dict(algo="ia3"),
    "glora": dict(algo="glora"),
}
TOL = 2e-5


@pytest.fixture(autouse=True)
def _lycoris_state():
    """LyCORIS applies presets by mutating class attributes (restored afterwards); its logger is chatty."""
    from lycoris import kohya, wrapper

    classes = (kohya.LycorisNetworkKohya, wrapper.LycorisNetwork)
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    log = logging.getLogger("LyCORIS")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)
    for c, attrs in zip(classes, saved):
        for k, v in attrs.items():
            setattr(c, k, v)


# ----------------------------------------------------------------------------------------- SGM names (sd-scripts SDXL)
_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection", "norm1": "in_layers_0", "norm2": "out_layers_0"}  # fmt: skip


def sgm_name(flat: str, layers: int = 2, up_attn: tuple[bool, ...] = (True, False)) -> str:
    """A diffusers-derived underscored UNet name -> the SGM name of sd-scripts' SDXL UNet (facts: ``input_blocks``
    0 = conv_in, then per level ``layers`` (resnet, attention) pairs and the downsampler ``op``; ``middle_block``
    0/1/2 = resnet, attention, resnet; ``output_blocks`` ``layers + 1`` per level, the upsampler last; resnet parts
    ``in_layers_2`` / ``out_layers_3`` / ``emb_layers_1`` / ``skip_connection``)."""

    def resnet(tail: str) -> str:
        part, _, rest = tail.partition("_") if not tail.startswith(("time_emb_proj", "conv_shortcut")) else (
            tail, "", "")  # fmt: skip
        return _RESNET.get(part, part) + (f"_{rest}" if rest else "")

    m = re.match(r"down_blocks_(\d+)_(resnets|attentions)_(\d+)_(.+)$", flat)
    if m:
        i, what, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + i * (layers + 1) + j
        return f"input_blocks_{idx}_0_{resnet(tail)}" if what == "resnets" else f"input_blocks_{idx}_1_{tail}"
    m = re.match(r"mid_block_(resnets|attentions)_(\d+)_(.+)$", flat)
    if m:
        what, j, tail = m[1], int(m[2]), m[3]
        return f"middle_block_1_{tail}" if what == "attentions" else f"middle_block_{2 * j}_{resnet(tail)}"
    m = re.match(r"up_blocks_(\d+)_(resnets|attentions)_(\d+)_(.+)$", flat)
    if m:
        i, what, j, tail = int(m[1]), m[2], int(m[3]), m[4]
        idx = i * (layers + 1) + j
        return f"output_blocks_{idx}_0_{resnet(tail)}" if what == "resnets" else f"output_blocks_{idx}_1_{tail}"
    raise AssertionError(f"no SGM name for {flat}")


def test_sgm_table_matches_known_names() -> None:
    assert sgm_name("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q") == "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert sgm_name("down_blocks_0_resnets_1_conv1") == "input_blocks_2_0_in_layers_2"
    assert sgm_name("mid_block_resnets_1_time_emb_proj") == "middle_block_2_emb_layers_1"
    assert sgm_name("up_blocks_1_resnets_2_conv_shortcut") == "output_blocks_5_0_skip_connection"
    assert sgm_name("up_blocks_0_attentions_2_proj_out") == "output_blocks_2_1_proj_out"


# ----------------------------------------------------------------------------------------- files from LyCORIS
def _randomize(network: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_((1.0 if name.endswith("rescale") else 0.0) + 0.15 * torch.randn(p.shape, generator=g))


def lycoris_file(tmp_path, family: str, algo: str, seed: int = 11, **extra):
    """A file written by LyCORIS' kohya network for ``family``'s tiny pipeline, the pipeline it was written on (its
    modules applied: the reference) and the network."""
    kwargs = dict(ALGOS[algo], **extra)
    dim = kwargs.pop("network_dim", 4)
    ref = fresh(family)
    tes = ref.text_encoder if family == "sd1" else [ref.text_encoder, ref.text_encoder_2]
    preset = tmp_path / "preset.toml"
    # BOFT needs a power-of-two factorisation of each width: the tiny CLIP's MLP (37 wide) has none
    preset.write_text(PRESET.replace('"CLIPAttention", "CLIPMLP"', '"CLIPAttention"') if algo == "boft" else PRESET)
    net = kohya_net.create_network(1.0, dim, 1.0, None, tes, ref.unet, preset=str(preset), **kwargs)
    net.apply_to(tes, ref.unet, apply_text_encoder=True, apply_unet=True)
    _randomize(net, seed)
    path = tmp_path / f"{family}-{algo}-{seed}.safetensors"
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    if family == "sdxl":  # sd-scripts' SDXL trainer names the UNet after the SGM code
        sd = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        renamed = {}
        for k, v in sd.items():
            name, _, suffix = k.partition(".")
            if name.startswith("lora_unet_"):
                name = "lora_unet_" + sgm_name(name[len("lora_unet_"):])
            renamed[f"{name}.{suffix}"] = v
        save_file(renamed, str(path), meta)
    return path, ref, net


FAMILIES = ("sd1", "sdxl")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("algo", list(ALGOS))
def test_lycoris_files_through_the_pipeline_api(tmp_path, family: str, algo: str) -> None:
    path, ref, _ = lycoris_file(tmp_path, family, algo)
    keys = load_file(str(path))
    if family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in keys)
        assert any(k.startswith("lora_te2_") for k in keys)
    want = outputs(ref, family)
    pipe = lorakit.attach(fresh(family))
    base = outputs(pipe, family)
    pipe.load_lora_weights(str(path), adapter_name="x")
    rep = pipe.lora_report("x")
    assert not rep.skipped, rep.summary()
    kind = {"diag-oft": "oft"}.get(algo, algo)
    assert all(set(c.kinds) == {kind} for c in rep.components.values()), rep.summary()
    assert set(rep.components) == ({"unet", "text_encoder"} | ({"text_encoder_2"} if family == "sdxl" else set()))
    unfused = outputs(pipe, family)
    assert_differs(want, base)
    assert_close(unfused, want, TOL)
    pipe.fuse_lora(components=list(rep.components))
    assert_close(outputs(pipe, family), want, TOL)
    pipe.unfuse_lora(components=list(rep.components))
    assert_close(outputs(pipe, family), unfused, 0.0)
    pipe.unload_lora_weights()
    assert_close(outputs(pipe, family), base, 0.0)


@pytest.mark.parametrize("algo", ["diag-oft", "ia3", "glora"])  # LyCORIS' multiplier is linear for these
def test_component_and_block_weights_match_lycoris_multipliers(tmp_path, algo: str) -> None:
    extra = {"rescaled": False} if algo == "diag-oft" else {}
    path, ref, net = lycoris_file(tmp_path, "sd1", algo, **extra)
    weights = {"unet": {"down": 0.5, "mid": 0.0, "up": {"block_0": 1.0, "block_1": [0.2, 0.7, 1.3]}}, "text_encoder": 0.3}

    def weight_of(lora_name: str) -> float:
        if lora_name.startswith("lora_te"):
            return 0.3
        name = lora_name[len("lora_unet_"):]
        if name.startswith("down_blocks"):
            return 0.5
        if name.startswith("mid_block"):
            return 0.0
        m = re.match(r"up_blocks_(\d+)_(resnets|attentions)_(\d+)", name)
        assert m, name
        return 1.0 if m[1] == "0" else [0.2, 0.7, 1.3][int(m[3])]

    for mod in net.loras:
        mod.multiplier = weight_of(mod.lora_name)
    want = outputs(ref, "sd1")
    pipe = lorakit.attach(fresh("sd1"))
    pipe.load_lora_weights(str(path), adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[weights])
    assert_close(outputs(pipe, "sd1"), want, TOL)
    pipe.fuse_lora()
    assert_close(outputs(pipe, "sd1"), want, TOL)


def test_int64_on_input_file_loads_through_the_pipeline(tmp_path) -> None:
    """LyCORIS without a save dtype writes (IA)³'s on_input as int64."""
    path, ref, net = lycoris_file(tmp_path, "sd1", "ia3")
    net.save_weights(str(path), None, {"ss_network_module": "lycoris.kohya"})
    assert {v.dtype for k, v in load_file(str(path)).items() if k.endswith(".on_input")} == {torch.int64}
    pipe = lorakit.attach(fresh("sd1"))
    pipe.load_lora_weights(str(path), adapter_name="x")
    assert_close(outputs(pipe, "sd1"), outputs(ref, "sd1"), TOL)


def test_strength_zero_is_the_base_bit_for_bit(tmp_path) -> None:
    pipe = lorakit.attach(fresh("sd1"))
    base = outputs(pipe, "sd1")
    for algo in ALGOS:
        path, _, _ = lycoris_file(tmp_path, "sd1", algo)
        pipe.load_lora_weights(str(path), adapter_name=algo)
    pipe.set_adapters(list(ALGOS), [0.0] * len(ALGOS))
    assert_close(outputs(pipe, "sd1"), base, 0.0)
    pipe.fuse_lora()
    assert_close(outputs(pipe, "sd1"), base, 0.0)


@pytest.mark.parametrize("algo", ["diag-oft", "boft", "ia3", "glora"])
def test_hotswap_between_files_of_one_structure(tmp_path, algo: str) -> None:
    """Same shapes (OFT/BOFT/(IA)³) swap in place; GLoRA of rank 2 swaps into a rank-4 slot (zero-padded)."""
    first, _, _ = lycoris_file(tmp_path, "sd1", algo, seed=1)
    second, ref, _ = lycoris_file(tmp_path, "sd1", algo, seed=2, **({"network_dim": 2} if algo == "glora" else {}))
    pipe = lorakit.attach(fresh("sd1"))
    pipe.enable_lora_hotswap(target_rank=4)
    pipe.load_lora_weights(str(first), adapter_name="a")
    before = outputs(pipe, "sd1")
    pipe.load_lora_weights(str(second), adapter_name="a", hotswap=True)
    got = outputs(pipe, "sd1")
    assert_differs(got, before)
    assert_close(got, outputs(ref, "sd1"), TOL)
    assert pipe.get_list_adapters() == {"unet": ["a"], "text_encoder": ["a"]}


def test_save_writes_lycoris_names_that_reload(tmp_path) -> None:
    """``save_adapter`` in the kohya layout: the kinds' own LyCORIS names (no lora_down for these kinds), reloaded
    by lorakit to the same outputs."""
    pipe = lorakit.attach(fresh("sd1"))
    for algo in ALGOS:
        path, _, _ = lycoris_file(tmp_path, "sd1", algo)
        pipe.load_lora_weights(str(path), adapter_name=algo.replace("-", "_"))
    for name in pipe.get_active_adapters():
        pipe.set_adapters([name])
        want = outputs(pipe, "sd1")
        out = lorakit.save_adapter(pipe, name, tmp_path / f"saved-{name}.safetensors", "kohya")
        keys = load_file(out)
        suffixes = {k.split(".", 1)[1] for k in keys}
        assert not any("lora_down" in s for s in suffixes), suffixes
        assert suffixes & {"oft_blocks", "on_input", "a1.weight"}, suffixes
        other = lorakit.attach(fresh("sd1"))
        other.load_lora_weights(out, adapter_name="r")
        assert not other.lora_report("r").skipped
        assert_close(outputs(other, "sd1"), want, TOL)


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_convert_writes_each_kind_back_and_it_reloads(tmp_path, layout: str) -> None:
    """``lorakit.convert`` (names resolved against the tiny pipeline): every kind keeps its LyCORIS names (dotted
    diffusers paths in the diffusers layout) and reloads to LyCORIS' own outputs."""
    for algo in ALGOS:
        path, ref, _ = lycoris_file(tmp_path, "sd1", algo)
        base = fresh("sd1")
        dst = tmp_path / f"{algo}-{layout}.safetensors"
        lorakit.convert(str(path), str(dst), to=layout, components={"unet": base.unet, "text_encoder": base.text_encoder})
        keys = load_file(str(dst))
        assert all(k.startswith(("lora_unet_", "lora_te_") if layout == "kohya" else ("unet.", "text_encoder.")) for k in keys)
        pipe = lorakit.attach(fresh("sd1"))
        pipe.load_lora_weights(str(dst), adapter_name="x")
        assert not pipe.lora_report("x").skipped
        assert_close(outputs(pipe, "sd1"), outputs(ref, "sd1"), TOL)


# ----------------------------------------------------------------------------------------- kohya networks.oft
def _kohya_oft(blocks: torch.Tensor, alpha: float, w: torch.Tensor) -> torch.Tensor:
    """kohya networks/oft.py facts, fp64 (see tests/formats/test_kinds_extra.py)."""
    b = blocks.double()
    q = b - b.transpose(1, 2)
    norm = float(q.flatten().norm())
    q = q * ((min(norm, alpha * w.shape[0]) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(b.shape[1], dtype=torch.float64)
    r = torch.block_diag(*[(eye + qk) @ torch.linalg.inv(eye - qk) for qk in q])
    return (r.t() @ w.double().flatten(1)).reshape(w.shape)


def test_kohya_oft_sdxl_file_through_the_pipeline(tmp_path) -> None:
    """``oft_unet_`` + SGM names on every attention projection of the tiny SDXL UNet (kohya's default targets)."""
    pipe = lorakit.attach(fresh("sdxl"))
    ref = fresh("sdxl")
    g = torch.Generator().manual_seed(5)
    sd: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, mod in ref.unet.named_modules():
            if not path.endswith(("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0")):
                continue
            key = "oft_unet_" + sgm_name(path.replace(".", "_"))
            out = mod.weight.shape[0]
            sd[f"{key}.oft_blocks"] = 0.3 * torch.randn(4, out // 4, out // 4, generator=g)
            sd[f"{key}.alpha"] = torch.tensor(2e-2)
            mod.weight.copy_(_kohya_oft(sd[f"{key}.oft_blocks"], 2e-2, mod.weight).float())
    file = tmp_path / "kohya-oft.safetensors"
    save_file(sd, str(file), {"ss_network_module": "networks.oft", "ss_network_dim": "4", "ss_network_alpha": "0.02"})
    base = denoise(pipe, "sdxl")
    pipe.load_lora_weights(str(file), adapter_name="oft")
    rep = pipe.lora_report("oft")
    assert rep.format == "kohya-oft" and not rep.skipped and rep.components["unet"].kinds == {"oft": len(sd) // 2}
    want = denoise(ref, "sdxl")
    assert float((want - base).abs().max()) > 1e-3
    assert float((denoise(pipe, "sdxl") - want).abs().max()) <= TOL
    assert torch.equal(encode(pipe, "text_encoder"), encode(fresh("sdxl"), "text_encoder"))
    out = lorakit.save_adapter(pipe, "oft", tmp_path / "back.safetensors", "kohya")
    back = load_file(out)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)  # kohya OFT written as kohya OFT
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_network_module"] == "networks.oft"
