"""Real-world layouts at real model sizes, resolved against the real configs of SD1.5, SD2.1, SDXL, SD3-medium and
aMUSEd built on the meta device: every key lands on the module the fixture says, with the delta the file's tensors
give by the formula below (written here, independently of lorakit's name tables and row surgery).

The deltas are compared on a random probe vector: ``ΔW · v`` costs ``O(rank · (in + out))`` even at real sizes.
"""

from __future__ import annotations

import pytest
import real_layouts as L
import torch

from lorakit.errors import KeyMismatchError, ShapeMismatchError
from lorakit.formats import to_canonical
from lorakit.kinds import LoRA
from lorakit.targets import reference_components

_SUFFIXES = (("lora_down.weight", "lora_up.weight"), ("lora_A.weight", "lora_B.weight"),
             ("processor.to_q_lora.down.weight", "processor.to_q_lora.up.weight"))


def file_factors(sd: dict, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(down (r, in·k·k), up (out, r), alpha / r)`` of one module as the file stores it (no alpha: scale 1)."""
    for d, u in _SUFFIXES:
        if f"{name}.{d}" in sd:
            down, up = sd[f"{name}.{d}"].flatten(1).double(), sd[f"{name}.{u}"].flatten(1).double()
            break
    else:  # pragma: no cover - a fixture bug
        raise AssertionError(name)
    alpha = sd.get(f"{name}.alpha")
    return down, up, 1.0 if alpha is None else float(alpha) / down.shape[0]


def expected_probe(sd: dict, name: str, op: str, n_paths: int, v: torch.Tensor) -> list[torch.Tensor]:
    """``ΔW_target · v`` for every target of the file module, by the formula of its op:

    * direct: ``ΔW = (α/r) · up @ down``;
    * split (a fused projection over n parts): part i gets rows ``[i·out/n, (i+1)·out/n)`` of that ΔW, in the order
      the fixture lists the parts (q, k, v);
    * swap: the two output halves exchanged, ``ΔW' = [ΔW[out/2:], ΔW[:out/2]]``.
    """
    down, up, scale = file_factors(sd, name)
    full = scale * (up @ (down @ v))
    if op == "direct":
        return [full]
    if op == "split":
        chunk = full.shape[0] // n_paths
        return [full[i * chunk : (i + 1) * chunk] for i in range(n_paths)]
    assert op == "swap"
    half = full.shape[0] // 2
    return [torch.cat([full[half:], full[:half]])]


def lorakit_probe(kind, shape: torch.Size, v: torch.Tensor) -> torch.Tensor:
    """``ΔW · v`` of a canonical LoRA through its low-rank factors (scale folded into ``up``)."""
    assert isinstance(kind, LoRA), type(kind)
    down, up = kind.low_rank(shape)
    return up.double() @ (down.flatten(1).double() @ v)


def _check_landing(conv, sd: dict, expected: dict, family: str, reference: str | None = None, values: bool = True,
                   probe=expected_probe) -> None:
    assert conv.family == family
    rep = conv.report
    assert not rep.skipped, rep.summary()
    assert rep.matched_keys == rep.total_keys
    refs = reference_components(reference or family)
    g = torch.Generator().manual_seed(5)
    n_expected = 0
    for name, (comp, paths, op) in expected.items():
        v = None
        if values:
            v = torch.randn(file_factors(sd, name)[0].shape[1], generator=g, dtype=torch.float64)
            want = probe(sd, name, op, len(paths), v)
        for i, p in enumerate(paths):
            n_expected += 1
            if not hasattr(refs[comp], "text_model"):  # transformers 5: CLIPTextModel is flattened
                p = p.removeprefix("text_model.")
            kind = conv.adapters[comp][p]
            shape = refs[comp].get_submodule(p).weight.shape
            kind.check_shape(shape, f"{name} -> {p}")
            if v is not None:
                got = lorakit_probe(kind, shape, v)
                torch.testing.assert_close(got, want[i], rtol=1e-6, atol=1e-9, msg=f"{name} -> {comp}.{p} ({op})")
    assert sum(len(m) for m in conv.adapters.values()) == n_expected


@pytest.mark.parametrize(
    "family,compvis",
    [("sd1", False), ("sd1", True), ("sd2", False), ("sdxl", True)],
    ids=["sd15-kohya", "sd15-a1111-compvis", "sd21-kohya", "sdxl-kohya-sgm"],
)
def test_kohya_sd_families(family, compvis):
    sd, expected = L.kohya_sd(family, compvis)
    conv = to_canonical(sd, None, None, source=f"{family}-kohya")
    assert conv.format == "kohya"
    _check_landing(conv, sd, expected, family)
    unet = conv.report.components["unet"]
    assert unet.alpha_source == "tensor" and set(unet.scales) == {0.5, 1.0}


def test_kohya_into_explicit_components_matches_guess():
    sd, expected = L.kohya_sd("sdxl", True)
    conv = to_canonical(sd, {"ss_base_model_version": "sdxl_base_v1-0"}, reference_components("sdxl"))
    _check_landing(conv, sd, expected, "sdxl")
    assert conv.adapters["unet"]["add_embedding.linear_1"].down.shape == (L.R, 2816)
    assert "up_blocks.0.upsamplers.0.conv" in conv.adapters["unet"]


def test_sd3_kohya_sd_scripts():
    sd, expected = L.sd3_kohya()
    conv = to_canonical(sd, {"ss_network_module": "networks.lora_sd3"}, None, source="sd3-kohya")
    _check_landing(conv, sd, expected, "sd3")
    # fused qkv split onto three modules, each with the file's down and a third of up
    q = conv.adapters["transformer"]["transformer_blocks.3.attn.to_q"]
    assert isinstance(q, LoRA) and q.up.shape == (L.D, L.R) and q.down.shape == (L.R, L.D)


def test_sd35_large_kohya_finds_its_reference_without_a_model():
    sd, expected = L.sd3_kohya(D=2432, BLOCKS=38, encoders=False)
    conv = to_canonical(sd, {"ss_base_model_version": "5-large"}, None, source="sd35-large-kohya")
    assert conv.report.reference == "sd3.5-large"
    _check_landing(conv, sd, expected, "sd3", reference="sd3.5-large")


def test_sd3_onetrainer_and_diffusers():
    for build in (L.sd3_onetrainer, L.sd3_diffusers):
        sd, expected = build()
        conv = to_canonical(sd, None, None, source=build.__name__)
        _check_landing(conv, sd, expected, "sd3")


def test_amused_train_script_layout():
    sd, expected = L.amused_train_script()
    conv = to_canonical(sd, None, None, source="amused")
    _check_landing(conv, sd, expected, "amused")
    assert conv.report.components["transformer"].alpha_source == "default (rank)"


def test_old_attention_processor_keys_without_prefix():
    sd: dict = {}
    landing: dict[str, tuple[str, str]] = {}  # processor name -> (diffusers module, file prefix)
    for i, c in enumerate((320, 640, 1280)):
        p = f"down_blocks.{i}.attentions.0.transformer_blocks.0"
        for proc, leaf, (o, inp) in (("attn1.processor.to_q_lora", "attn1.to_q", (c, c)),
                                     ("attn1.processor.to_out_lora", "attn1.to_out.0", (c, c)),
                                     ("attn2.processor.to_k_lora", "attn2.to_k", (c, 768))):
            sd[f"{p}.{proc}.down.weight"] = L.rnd(L.R, inp)
            sd[f"{p}.{proc}.up.weight"] = L.rnd(o, L.R)
            landing[f"{p}.{proc}"] = (f"{p}.{leaf}", f"{p}.{proc}")
    conv = to_canonical(sd, None, None, source="pytorch_lora_weights.bin")
    assert conv.format == "diffusers-attn-procs" and conv.family == "sd1"
    assert conv.report.matched_keys == len(sd)
    unet = conv.adapters["unet"]
    assert len(unet) == len(landing)
    for path, key in landing.values():  # no alpha in this layout: ΔW = up @ down
        want = sd[f"{key}.up.weight"] @ sd[f"{key}.down.weight"]
        torch.testing.assert_close(unet[path].delta_weight(torch.empty(want.shape)), want, msg=path)


def test_wrong_family_raises_before_anything():
    sd, _ = L.kohya_sd("sd1")
    with pytest.raises(ShapeMismatchError, match="expects|do not fit"):
        to_canonical(sd, None, reference_components("sdxl"), source="sd15-on-sdxl")
    sd3, _ = L.sd3_diffusers()
    with pytest.raises(KeyMismatchError, match="no key matched"):
        to_canonical({k: v for k, v in sd3.items() if k.startswith("transformer.")}, None,
                     {"unet": reference_components("sd1")["unet"]}, source="sd3-on-sd1")


def test_meta_tensors_from_a_header_only_read():
    """inspect() passes meta tensors (alphas may be real or meta): everything still lands, nothing is computed."""
    sd, expected = L.sd3_kohya()
    meta_sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sd.items()}
    conv = to_canonical(meta_sd, {"ss_network_args": '{"split_qkv": "False"}'}, None, source="header-only", allow_meta=True)
    _check_landing(conv, meta_sd, expected, "sd3", values=False)
    assert conv.report.components["transformer"].alpha_source == "tensor (value not read)"


def test_inpainting_unet_lora_without_a_model():
    """A LoCon that touches conv_in of an inpainting UNet (9 input channels) resolves against the inpaint variant."""
    sd, expected = L.kohya_sd("sd1")
    sd["lora_unet_conv_in.lora_down.weight"] = L.rnd(L.R, 9, 3, 3)
    conv = to_canonical(sd, None, None, source="sd15-inpaint")
    assert conv.family == "sd1" and conv.report.reference == "sd1-inpaint"
    _check_landing(conv, sd, expected, "sd1", reference="sd1-inpaint")


def split_qkv_probe(sd: dict, name: str, op: str, n_paths: int, v: torch.Tensor) -> list[torch.Tensor]:
    """kohya ``split_qkv``: a fused qkv holds one rank-R LoRA per part: part i is
    ``(α/R) · up[i·d:(i+1)·d, i·R:(i+1)·R] @ down[i·R:(i+1)·R]`` (α over the per-part rank R, not 3R)."""
    if op != "split":
        return expected_probe(sd, name, op, n_paths, v)
    down, up, _ = file_factors(sd, name)
    alpha = float(sd[f"{name}.alpha"])
    d = up.shape[0] // n_paths
    return [(alpha / L.R) * (up[i * d : (i + 1) * d, i * L.R : (i + 1) * L.R] @ (down[i * L.R : (i + 1) * L.R] @ v))
            for i in range(n_paths)]


def test_sd3_kohya_split_qkv_block_diagonal():
    sd, expected = L.sd3_kohya(encoders=False, split_qkv=True)
    conv = to_canonical(sd, {"ss_network_args": '{"split_qkv": "True"}'}, None, source="sd3-kohya-split-qkv")
    _check_landing(conv, sd, expected, "sd3", probe=split_qkv_probe)
    assert conv.adapters["transformer"]["transformer_blocks.5.attn.add_k_proj"].rank == L.R
