"""Real-world layouts at real model sizes, resolved against the real configs of SD1.5, SD2.1, SDXL, SD3-medium and
aMUSEd built on the meta device: every key lands on an existing module with a matching shape."""

from __future__ import annotations

import pytest
import real_layouts as L
import torch

from lorakit.errors import KeyMismatchError, ShapeMismatchError
from lorakit.formats import to_canonical
from lorakit.kinds import LoRA
from lorakit.targets import reference_components


def _check_landing(conv, expected: dict, family: str, reference: str | None = None) -> None:
    assert conv.family == family
    rep = conv.report
    assert not rep.skipped, rep.summary()
    assert rep.matched_keys == rep.total_keys
    refs = reference_components(reference or family)
    n_expected = 0
    for name, (comp, paths) in expected.items():
        paths = (paths,) if isinstance(paths, str) else paths
        for p in paths:
            n_expected += 1
            if not hasattr(refs[comp], "text_model"):  # transformers 5: CLIPTextModel is flattened
                p = p.removeprefix("text_model.")
            kind = conv.adapters[comp][p]
            module = refs[comp].get_submodule(p)
            kind.check_shape(module.weight.shape, f"{name} -> {p}")
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
    _check_landing(conv, expected, family)
    unet = conv.report.components["unet"]
    assert unet.alpha_source == "tensor" and set(unet.scales) == {0.5, 1.0}


def test_kohya_into_explicit_components_matches_guess():
    sd, expected = L.kohya_sd("sdxl", True)
    conv = to_canonical(sd, {"ss_base_model_version": "sdxl_base_v1-0"}, reference_components("sdxl"))
    _check_landing(conv, expected, "sdxl")
    assert conv.adapters["unet"]["add_embedding.linear_1"].down.shape == (L.R, 2816)
    assert "up_blocks.0.upsamplers.0.conv" in conv.adapters["unet"]


def test_sd3_kohya_sd_scripts():
    sd, expected = L.sd3_kohya()
    conv = to_canonical(sd, {"ss_network_module": "networks.lora_sd3"}, None, source="sd3-kohya")
    _check_landing(conv, expected, "sd3")
    # fused qkv split onto three modules, each with the file's down and a third of up
    q = conv.adapters["transformer"]["transformer_blocks.3.attn.to_q"]
    assert isinstance(q, LoRA) and q.up.shape == (L.D, L.R) and q.down.shape == (L.R, L.D)


def test_sd35_large_kohya_finds_its_reference_without_a_model():
    sd, expected = L.sd3_kohya(D=2432, BLOCKS=38, encoders=False)
    conv = to_canonical(sd, {"ss_base_model_version": "5-large"}, None, source="sd35-large-kohya")
    assert conv.report.reference == "sd3.5-large"
    _check_landing(conv, expected, "sd3", reference="sd3.5-large")


def test_sd3_onetrainer_and_diffusers():
    for build in (L.sd3_onetrainer, L.sd3_diffusers):
        sd, expected = build()
        conv = to_canonical(sd, None, None, source=build.__name__)
        _check_landing(conv, expected, "sd3")


def test_amused_train_script_layout():
    sd, expected = L.amused_train_script()
    conv = to_canonical(sd, None, None, source="amused")
    _check_landing(conv, expected, "amused")
    assert conv.report.components["transformer"].alpha_source == "default (rank)"


def test_old_attention_processor_keys_without_prefix():
    sd: dict = {}
    for i, c in enumerate((320, 640, 1280)):
        p = f"down_blocks.{i}.attentions.0.transformer_blocks.0"
        for proc, (o, inp) in {"attn1.processor.to_q_lora": (c, c), "attn1.processor.to_out_lora": (c, c),
                               "attn2.processor.to_k_lora": (c, 768)}.items():
            sd[f"{p}.{proc}.down.weight"] = torch.zeros(L.R, inp)
            sd[f"{p}.{proc}.up.weight"] = torch.zeros(o, L.R)
    conv = to_canonical(sd, None, None, source="pytorch_lora_weights.bin")
    assert conv.format == "diffusers-attn-procs" and conv.family == "sd1"
    assert "down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_out.0" in conv.adapters["unet"]
    assert conv.report.matched_keys == len(sd)


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
    _check_landing(conv, expected, "sd3")
    assert conv.report.components["transformer"].alpha_source == "tensor (value not read)"


def test_inpainting_unet_lora_without_a_model():
    """A LoCon that touches conv_in of an inpainting UNet (9 input channels) resolves against the inpaint variant."""
    sd, expected = L.kohya_sd("sd1")
    sd["lora_unet_conv_in.lora_down.weight"] = torch.zeros(L.R, 9, 3, 3)
    conv = to_canonical(sd, None, None, source="sd15-inpaint")
    assert conv.family == "sd1" and conv.report.reference == "sd1-inpaint"
    _check_landing(conv, expected, "sd1", reference="sd1-inpaint")
