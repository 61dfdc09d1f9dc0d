"""Parity with diffusers + PEFT on tiny pipelines of every family: same file into both, fp32 max |Δ| <= 1e-5."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import (
    FAMILIES,
    TOL,
    _base,
    assert_close,
    assert_differs,
    denoise,
    denoiser_name,
    fresh,
    make_lora,
    outputs,
    reference_load,
    scaled_lora,
    text_encoders,
)

import lorakit


def _pair(family: str):
    return fresh(family), lorakit.attach(fresh(family))


def _lora(pipe, family, seed=1, rank=4, attn_only=False):
    pipe = _base(family)  # a pipeline without PEFT layers
    return make_lora(pipe, [denoiser_name(family), *text_encoders(family)], family=family, seed=seed, rank=rank, attn_only=attn_only)


@pytest.mark.parametrize("family", FAMILIES)
def test_load_one_adapter(family: str) -> None:
    ref, ours = _pair(family)
    base = outputs(ref, family)
    sd = _lora(ref, family)
    reference_load(ref, family, sd, "a")
    ours.load_lora_weights(dict(sd))  # default name
    assert ours.get_list_adapters() == {c: ["default_0"] for c in [denoiser_name(family), *text_encoders(family)]}
    assert ours.get_active_adapters() == ["default_0"]
    want = outputs(ref, family)
    got = outputs(ours, family)
    assert_close(got, want)
    for k in ["denoiser", *text_encoders(family)]:
        assert_differs(got, base, k)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "amused"])
def test_three_adapters_set_adapters_weights(family: str) -> None:
    ref, ours = _pair(family)
    for i, name in enumerate("abc"):
        sd = _lora(ref, family, seed=10 + i, rank=2 + i)
        reference_load(ref, family, sd, name)
        ours.load_lora_weights(sd, adapter_name=name)
    weights = [0.5, 1.25, -0.75]
    if family == "amused":  # no pipeline set_adapters in diffusers: model-level
        ref.transformer.set_adapters(["a", "b", "c"], weights)
        from diffusers.loaders.lora_base import set_adapters_for_text_encoder

        set_adapters_for_text_encoder(["a", "b", "c"], ref.text_encoder, weights)
    else:
        ref.set_adapters(["a", "b", "c"], adapter_weights=weights)
    ours.set_adapters(["a", "b", "c"], adapter_weights=weights)
    assert_close(outputs(ours, family), outputs(ref, family))
    # a subset with one weight for all
    if family != "amused":
        ref.set_adapters(["c", "a"], 0.6)
        ours.set_adapters(["c", "a"], 0.6)
        assert ours.get_active_adapters() == ["c", "a"]
        assert_close(outputs(ours, family), outputs(ref, family))


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_per_component_weights(family: str) -> None:
    ref, ours = _pair(family)
    sd_a, sd_b = _lora(ref, family, seed=3), _lora(ref, family, seed=4, rank=3)
    for name, sd in (("a", sd_a), ("b", sd_b)):
        ref.load_lora_weights(dict(sd), adapter_name=name)
        ours.load_lora_weights(sd, adapter_name=name)
    den = denoiser_name(family)
    w = [{den: 0.5, "text_encoder": 0.8}, {"text_encoder": -0.4}]  # unlisted components: 1.0
    ref.set_adapters(["a", "b"], [dict(x) for x in w])
    ours.set_adapters(["a", "b"], w)
    assert_close(outputs(ours, family), outputs(ref, family))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_unet_per_block_weights_match_diffusers(family: str) -> None:
    ref, ours = _pair(family)
    sd = _lora(ref, family, attn_only=True)
    ref.load_lora_weights(dict(sd), adapter_name="a")
    ours.load_lora_weights(sd, adapter_name="a")
    spec = {"unet": {"down": 0.5, "mid": 0.25, "up": {"block_0": [0.2, 0.6, 1.5]}}, "text_encoder": 0.7}
    import copy

    ref.set_adapters("a", copy.deepcopy(spec))
    ours.set_adapters("a", spec)
    assert_close(outputs(ours, family), outputs(ref, family))
    # fused block weights give the same output as unfused ones
    unfused = outputs(ours, family)
    ours.fuse_lora()
    assert_close(outputs(ours, family), unfused, tol=2e-5)


def _block_weight_unet(path: str) -> float:
    """The documented rule, written independently: layer j of a block = resnets.j + attentions.j."""
    parts = path.split(".")
    if parts[0] == "mid_block":
        return 0.25
    if parts[0] == "down_blocks":
        return 0.5
    if parts[0] == "up_blocks" and parts[1] == "0":
        layers = [0.2, 0.6, 1.5]
        return layers[int(parts[3])] if parts[2] in ("resnets", "attentions") else layers[0]
    return 1.0


def test_unet_per_block_weights_cover_resnets_formula() -> None:
    """LoCon on resnets (diffusers gives blocks without attention 1.0 and crashes on conv_in): explicit reference."""
    family = "sd1"
    ref, ours = _pair(family)
    sd = make_lora(ref, ["unet"], family=family)
    sd_extra = {}
    for path, mod in ref.unet.named_modules():
        if path in ("conv_in", "down_blocks.0.resnets.1.conv2", "mid_block.resnets.0.conv1", "up_blocks.0.upsamplers.0.conv"):
            g = torch.Generator().manual_seed(len(path))
            sd_extra[f"unet.{path}.lora_A.weight"] = torch.randn(2, mod.in_channels, 3, 3, generator=g) * 0.3
            sd_extra[f"unet.{path}.lora_B.weight"] = torch.randn(mod.out_channels, 2, 1, 1, generator=g) * 0.3
    sd.update(sd_extra)
    ours.load_lora_weights(sd, adapter_name="a")
    ours.set_adapters("a", {"unet": {"down": 0.5, "mid": 0.25, "up": {"block_0": [0.2, 0.6, 1.5]}}})
    reference_load(ref, family, scaled_lora(sd, lambda c, p: _block_weight_unet(p)), "a")
    assert_close({"d": denoise(ours, family)}, {"d": denoise(ref, family)})


@pytest.mark.parametrize("family", ["sd3", "amused"])
def test_transformer_per_block_weights_formula(family: str) -> None:
    """diffusers has no per-block weights for transformers: reference = the file with lora_B scaled per block."""
    ref, ours = _pair(family)
    sd = _lora(ref, family)
    ours.load_lora_weights(sd, adapter_name="a")
    blocks = "transformer_blocks" if family == "sd3" else "transformer_layers"
    spec: dict = {"block_0": 0.3, 1: -0.5}
    if family == "amused":
        spec["down"] = 0.0

    def w(comp: str, path: str) -> float:
        if comp == "text_encoder":
            return 0.9
        if path.startswith(f"{blocks}.0."):
            return 0.3
        if path.startswith(f"{blocks}.1."):
            return -0.5
        if family == "amused" and path.startswith("down_block."):
            return 0.0
        return 1.0

    ours.set_adapters(["a"], [{"transformer": spec, "text_encoder": 0.9}])
    reference_load(ref, family, scaled_lora(sd, w), "a")
    assert_close(outputs(ours, family), outputs(ref, family), keys=["denoiser", "text_encoder"])


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "amused"])
def test_call_time_scale_kwargs(family: str) -> None:
    ref, ours = _pair(family)
    sd = _lora(ref, family)
    reference_load(ref, family, sd, "a")
    ours.load_lora_weights(sd, adapter_name="a")
    kw = "joint_attention_kwargs" if family == "sd3" else "cross_attention_kwargs"
    for s in (0.0, 0.4, -1.0):
        got = denoise(ours, family, **{kw: {"scale": s}})
        want = denoise(ref, family, **{kw: {"scale": s}})
        assert float((got - want).abs().max()) <= TOL
    base = denoise(fresh(family), family)
    assert torch.equal(denoise(ours, family, **{kw: {"scale": 0.0}}), base)  # scale 0: exactly the base
    assert get_scale(ours, family) == 1.0  # restored
    assert float((denoise(ours, family) - denoise(ref, family)).abs().max()) <= TOL
    if family == "amused":
        return
    # whole pipeline: the text encoders get the scale through encode_prompt(lora_scale=...)
    args = dict(num_inference_steps=2, output_type="np", height=16, width=16)
    if family == "sd3":
        args["max_sequence_length"] = 8
    a = ref("a cat", generator=torch.Generator().manual_seed(0), **{kw: {"scale": 0.5}}, **args).images
    b = ours("a cat", generator=torch.Generator().manual_seed(0), **{kw: {"scale": 0.5}}, **args).images
    assert abs(a - b).max() <= TOL
    assert all(m.call_scale == 1.0 for m in ours._lorakit_set().managers().values())


def test_call_time_scale_on_fused_adapters_warns_once(caplog) -> None:
    ref, ours = _pair("sd1")
    ours.load_lora_weights(_lora(ref, "sd1"), adapter_name="a")
    ours.fuse_lora()
    fused = denoise(ours, "sd1")
    with caplog.at_level("WARNING", logger="lorakit"):
        for _ in range(3):
            out = denoise(ours, "sd1", cross_attention_kwargs={"scale": 0.5})
    assert torch.equal(out, fused)  # fused weights ignore the call-time scale, as merged PEFT layers do
    warnings = [r for r in caplog.records if "does not apply to the fused" in r.getMessage()]
    assert len(warnings) == 1


def get_scale(pipe, family):
    return pipe._lorakit_set().managers()[denoiser_name(family)].call_scale


def test_encode_prompt_lora_scale_restored_also_on_error() -> None:
    ref, ours = _pair("sdxl")
    sd = _lora(ref, "sdxl")
    ref.load_lora_weights(dict(sd), adapter_name="a")
    ours.load_lora_weights(sd, adapter_name="a")
    kw = dict(prompt="a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, lora_scale=0.3)
    got, want = ours.encode_prompt(**kw), ref.encode_prompt(**kw)
    for g, w in zip(got, want):
        if g is not None:
            assert float((g - w).detach().abs().max()) <= TOL
    mgrs = ours._lorakit_set().managers(["text_encoder", "text_encoder_2"]).values()
    assert all(m.call_scale == 1.0 for m in mgrs)
    with pytest.raises((TypeError, ValueError, AttributeError)):
        ours.encode_prompt(prompt=None, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False, lora_scale=0.3)
    assert all(m.call_scale == 1.0 for m in mgrs)
    unet_mgr = ours._lorakit_set().managers(["unet"])["unet"]
    with pytest.raises(TypeError):  # no added_cond_kwargs: the SDXL UNet raises mid-forward
        ours.unet(torch.zeros(1, 3, 8, 8), 1, torch.zeros(1, 5, 64), cross_attention_kwargs={"scale": 0.2})
    assert unet_mgr.call_scale == 1.0


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_fuse_unfuse(family: str) -> None:
    ref, ours = _pair(family)
    original = {k: v.clone() for k, v in getattr(ours, denoiser_name(family)).state_dict().items()}
    sd_a, sd_b = _lora(ref, family, seed=5), _lora(ref, family, seed=6, rank=2)
    for name, sd in (("a", sd_a), ("b", sd_b)):
        ref.load_lora_weights(dict(sd), adapter_name=name)
        ours.load_lora_weights(sd, adapter_name=name)
    ref.set_adapters(["a", "b"], [0.8, 0.5])
    ours.set_adapters(["a", "b"], [0.8, 0.5])
    before = outputs(ours, family)
    assert_close(before, outputs(ref, family))
    ref.fuse_lora(lora_scale=0.7)
    ours.fuse_lora(lora_scale=0.7)
    assert ours.num_fused_loras == 2 and ours.fused_loras == {"a", "b"}
    assert_close(outputs(ours, family), outputs(ref, family), tol=2e-5)
    ours.unfuse_lora()
    assert ours.num_fused_loras == 0
    for k, v in getattr(ours, denoiser_name(family)).state_dict().items():
        assert torch.equal(v, original[k]), k  # bit-exact
    # diffusers 0.42.1 leaves lora_scale in the denoiser's PEFT scaling after unfuse_lora (documented deviation):
    # compare with the state before fusing instead
    assert_close(outputs(ours, family), before, tol=0.0)
    # a component subset
    ours.fuse_lora(components=[denoiser_name(family)], adapter_names=["a"])
    assert ours.fused_loras == {"a"}
    ours.unfuse_lora(components=[denoiser_name(family)])
    assert ours.fused_loras == set()


@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_disable_enable_delete_unload(family: str) -> None:
    ref, ours = _pair(family)
    base = outputs(ref, family)
    for i, name in enumerate(("a", "b")):
        sd = _lora(ref, family, seed=20 + i)
        ref.load_lora_weights(dict(sd), adapter_name=name)
        ours.load_lora_weights(sd, adapter_name=name)
    with_both = outputs(ours, family)
    ours.disable_lora()
    for k, v in outputs(ours, family).items():
        assert torch.equal(v, base[k]), k  # exactly the base
    ours.enable_lora()
    assert_close(outputs(ours, family), with_both, tol=0.0)
    ref.delete_adapters("b")
    ours.delete_adapters(["b"])
    assert ours.get_list_adapters() == {c: ["a"] for c in [denoiser_name(family), *text_encoders(family)]}
    assert_close(outputs(ours, family), outputs(ref, family))
    ours.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    for model in ours._lorakit_models().values():  # no hook left behind
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    for k, v in outputs(ours, family).items():
        assert torch.equal(v, base[k]), k


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3", "amused"])
def test_save_then_reload(tmp_path, family: str) -> None:
    ref, ours = _pair(family)
    sd = _lora(ref, family)
    ours.load_lora_weights(sd, adapter_name="a")
    expected = outputs(ours, family)
    layers = {}
    for comp, mgr in ours._lorakit_set().managers().items():
        layers[f"{comp}_lora_layers"] = {
            f"{p}.lora_{'A' if f == 'down' else 'B'}.weight": t for p, k in mgr.adapters["a"].items() for f, t in k.named_tensors()
        }
    type(ours).save_lora_weights(tmp_path, **layers)
    again = lorakit.attach(fresh(family))
    again.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="x")
    assert_close(outputs(again, family), expected, tol=0.0)
    # diffusers reads the file too
    reference_load(ref, family, __import__("safetensors.torch").torch.load_file(tmp_path / "pytorch_lora_weights.safetensors"), "x")
    assert_close(outputs(ref, family), expected)


def test_set_lora_device_cpu_and_back() -> None:
    family = "sd1"
    ref, ours = _pair(family)
    sd_a, sd_b = _lora(ref, family, seed=1), _lora(ref, family, seed=2)
    ours.load_lora_weights(sd_a, adapter_name="a")
    ours.load_lora_weights(sd_b, adapter_name="b")
    before = outputs(ours, family)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ours.set_lora_device(["a"], "cpu")
    ours.set_lora_device(["a"], dev)
    ours.set_lora_device(["a"], "cpu")
    for mgr in ours._lorakit_set().managers().values():
        assert all(k.device.type == "cpu" for k in mgr.adapters["a"].values())
    assert_close(outputs(ours, family), before, tol=0.0)
    with pytest.raises(lorakit.errors.AdapterNotFoundError):
        ours.set_lora_device(["nope"], "cpu")
    with pytest.raises(lorakit.errors.DeviceError):
        ours.set_lora_device(["a"], "cuda:97")
