"""Flux.1 pipelines on lorakit: attach on every pipeline deriving from diffusers' ``FluxLoraLoaderMixin``, outputs equal
to diffusers + PEFT for the files diffusers 0.42.1 loads correctly, and lorakit's extras (T5, block weights over double
and single blocks, hotswap, per-component weights) against explicit references. Tiny pipelines, fp32, max |Δ| <= 1e-5.
"""

from __future__ import annotations

import copy

import pytest
import torch
from pipeline_helpers import (
    TOL,
    _base,
    assert_close,
    assert_differs,
    denoise,
    encode,
    fresh,
    make_lora,
    outputs,
    scaled_lora,
)
from torch import Tensor, nn

import lorakit
from lorakit.errors import ComponentError, ControlLoRAError, HotswapError
from lorakit.tiny import tiny_components

F = "flux"


def _lora(seed: int = 1, rank: int = 4, comps: tuple[str, ...] = ("transformer", "text_encoder")) -> dict[str, Tensor]:
    return make_lora(_base(F), list(comps), family=F, seed=seed, rank=rank)


def _pair():
    return fresh(F), lorakit.attach(fresh(F))


def _rand(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g) * 0.3


# ------------------------------------------------------------------------------------------------------------ attach
def _pipeline(name: str):
    import diffusers

    comps = tiny_components(F)
    cls = getattr(diffusers, name)
    if "ControlNet" in name:
        torch.manual_seed(0)
        comps["controlnet"] = diffusers.FluxControlNetModel(
            in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
        )
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters)
    pipe = cls(**{k: v for k, v in comps.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


FLUX_PIPELINES = ["FluxFillPipeline", "FluxKontextPipeline", "FluxKontextInpaintPipeline", "FluxControlPipeline",
                  "FluxControlImg2ImgPipeline", "FluxControlInpaintPipeline", "FluxControlNetPipeline",
                  "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline", "VisualClozePipeline",
                  "VisualClozeGenerationPipeline"]


@pytest.mark.parametrize("name", FLUX_PIPELINES)
def test_attach_every_flux_pipeline(name: str) -> None:
    import diffusers

    pipe = _pipeline(name)
    assert isinstance(pipe, diffusers.loaders.FluxLoraLoaderMixin)
    before = denoise(pipe, F)
    assert lorakit.attach(pipe) is pipe and type(pipe).__name__ == name
    assert isinstance(pipe, lorakit.FluxLoraLoaderMixin)
    pipe.load_lora_weights(_lora(), adapter_name="a")
    assert pipe.get_list_adapters() == {"transformer": ["a"], "text_encoder": ["a"]}
    assert float((denoise(pipe, F) - before).abs().max()) > 1e-3
    pipe.unload_lora_weights()
    assert torch.equal(denoise(pipe, F), before)


def test_kontext_pipeline_runs_with_a_lora() -> None:
    pipe = lorakit.attach(_pipeline("FluxKontextPipeline"))
    pipe.load_lora_weights(_lora(), adapter_name="a")
    out = pipe(prompt="a cat", image=torch.rand(1, 3, 32, 32), num_inference_steps=2, height=32, width=32,
               max_sequence_length=16, output_type="np", max_area=32 * 32, _auto_resize=False).images
    assert out.shape == (1, 32, 32, 3)


# ------------------------------------------------------------------------------------------- parity with diffusers
def _double_blocks(g: torch.Generator) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """BFL name -> (down, up, alpha) for every Linear of both double blocks (sd-scripts ``train_blocks=double``)."""
    d = 32
    shapes = {"img_attn.qkv": (3 * d, d), "txt_attn.qkv": (3 * d, d), "img_attn.proj": (d, d), "txt_attn.proj": (d, d),
              "img_mlp.0": (4 * d, d), "img_mlp.2": (d, 4 * d), "txt_mlp.0": (4 * d, d), "txt_mlp.2": (d, 4 * d),
              "img_mod.lin": (6 * d, d), "txt_mod.lin": (6 * d, d)}
    return {f"double_blocks.{i}.{name}": (_rand(g, 4, n_in), _rand(g, o, 4), torch.tensor(1.0 + j % 4))
            for i in range(2) for j, (name, (o, n_in)) in enumerate(shapes.items())}


def _kohya_double(g: torch.Generator) -> dict[str, Tensor]:
    """sd-scripts ``train_blocks=double`` + CLIP (``lora_te1_``), per-module alphas (diffusers converts exactly)."""
    sd: dict[str, Tensor] = {}
    for name, (down, up, alpha) in _double_blocks(g).items():
        k = "lora_unet_" + name.replace(".", "_")
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"] = down, up, alpha
    # every attention projection, as sd-scripts writes them (diffusers 0.42.1 silently drops a layer's q/k/v/out
    # unless all four are in the file)
    for leaf, (n_out, n_in) in {"self_attn_q_proj": (32, 32), "self_attn_k_proj": (32, 32), "self_attn_v_proj": (32, 32),
                                "self_attn_out_proj": (32, 32), "mlp_fc1": (37, 32), "mlp_fc2": (32, 37)}.items():
        k = f"lora_te1_text_model_encoder_layers_1_{leaf}"
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"] = _rand(g, 2, n_in), _rand(g, n_out, 2)
        sd[f"{k}.alpha"] = torch.tensor(3.0)
    return sd


def _comfy_double(g: torch.Generator) -> dict[str, Tensor]:
    """ComfyUI-native ``diffusion_model.`` + dotted BFL names, kohya suffixes and alphas, double blocks only."""
    sd: dict[str, Tensor] = {}
    for name, (down, up, alpha) in _double_blocks(g).items():
        k = "diffusion_model." + name
        sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"] = down, up, alpha
    return sd


def _onetrainer(g: torch.Generator) -> dict[str, Tensor]:
    """OneTrainer's legacy layout: ``lora_transformer_`` + underscored diffusers names, ``lora_te1_`` CLIP; attention
    projections only, as OneTrainer's Flux files have (diffusers 0.42.1 raises KeyError on its ``proj_mlp``,
    ``norm.linear``, ``ff``, ``proj_out`` names)."""
    tr = _base(F).transformer
    sd: dict[str, Tensor] = {}
    for path, mod in tr.named_modules():
        if isinstance(mod, nn.Linear) and path.endswith(("attn.to_q", "attn.to_k", "attn.add_k_proj", "attn.to_out.0", "attn.to_add_out")):
            k = "lora_transformer_" + path.replace(".", "_")
            sd[f"{k}.lora_down.weight"] = _rand(g, 3, mod.in_features)
            sd[f"{k}.lora_up.weight"] = _rand(g, mod.out_features, 3)
            sd[f"{k}.alpha"] = torch.tensor(1.5)
    k = "lora_te1_text_model_encoder_layers_0_self_attn_k_proj"
    sd[f"{k}.lora_down.weight"], sd[f"{k}.lora_up.weight"], sd[f"{k}.alpha"] = _rand(g, 2, 32), _rand(g, 32, 2), torch.tensor(2.0)
    return sd


def _xlabs(g: torch.Generator) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    for i in range(2):
        for name, (o, n_in) in {"qkv_lora1": (96, 32), "proj_lora1": (32, 32), "qkv_lora2": (96, 32), "proj_lora2": (32, 32)}.items():
            k = f"double_blocks.{i}.processor.{name}"
            sd[f"{k}.down.weight"], sd[f"{k}.up.weight"] = _rand(g, 4, n_in), _rand(g, o, 4)
        for name, (o, n_in) in {"qkv_lora": (96, 32), "proj_lora": (32, 160)}.items():
            k = f"single_blocks.{i}.processor.{name}"
            sd[f"{k}.down.weight"], sd[f"{k}.up.weight"] = _rand(g, 4, n_in), _rand(g, o, 4)
    return sd


DIFFUSERS_EXACT = {"diffusers": lambda g: _lora(seed=5), "kohya-double+te1": _kohya_double, "onetrainer": _onetrainer,
                   "comfyui-double": _comfy_double, "xlabs": _xlabs}


@pytest.mark.parametrize("layout", list(DIFFUSERS_EXACT))
def test_same_outputs_as_diffusers(layout: str) -> None:
    """The layouts diffusers 0.42.1 converts exactly: the same file into both pipelines, the same outputs (unfused,
    and fused with diffusers' default components: the transformer only)."""
    ref, ours = _pair()
    base = outputs(ref, F)
    sd = DIFFUSERS_EXACT[layout](torch.Generator().manual_seed(2))
    ref.load_lora_weights(copy.deepcopy(sd), adapter_name="a")
    ours.load_lora_weights(sd, adapter_name="a")
    assert not ours.lora_report("a").skipped
    got, want = outputs(ours, F), outputs(ref, F)
    assert_close(got, want)
    assert_differs(got, base)
    ref.fuse_lora()
    ours.fuse_lora()
    assert ours.fused_loras == {"a"}
    assert_close(outputs(ours, F), outputs(ref, F), tol=2e-5)


def test_whole_pipeline_call_with_joint_attention_scale() -> None:
    """``joint_attention_kwargs={"scale": s}`` scales the transformer's adapters (the forward hook) and, through
    ``encode_prompt(lora_scale=s)``, the text encoders' (CLIP and T5), as diffusers does."""
    ref, ours = _pair()
    sd = _lora(seed=3)
    ref.load_lora_weights(dict(sd), adapter_name="a")
    ours.load_lora_weights(sd, adapter_name="a")
    args = dict(num_inference_steps=2, output_type="np", height=32, width=32, max_sequence_length=16)
    for s in (0.5, 0.0):
        a = ref("a cat", generator=torch.Generator().manual_seed(0), joint_attention_kwargs={"scale": s}, **args).images
        b = ours("a cat", generator=torch.Generator().manual_seed(0), joint_attention_kwargs={"scale": s}, **args).images
        assert abs(a - b).max() <= TOL
    plain = fresh(F)("a cat", generator=torch.Generator().manual_seed(0), **args).images
    assert abs(b - plain).max() == 0.0  # scale 0: exactly the base pipeline
    assert all(m.call_scale == 1.0 for m in ours._lorakit_set().managers().values())
    assert ours.lora_scale == 0.0  # the last call's scale, as diffusers' property


def test_t5_scale_follows_encode_prompt() -> None:
    ours = lorakit.attach(fresh(F))
    base_t5 = encode(ours, "text_encoder_2")
    ours.load_lora_weights(_lora(seed=4, comps=("transformer", "text_encoder_2")), adapter_name="t")
    assert set(ours.get_list_adapters()) == {"transformer", "text_encoder_2"}
    assert_differs({"t5": encode(ours, "text_encoder_2")}, {"t5": base_t5}, "t5")
    kw = dict(prompt="a cat", prompt_2=None, device="cpu", num_images_per_prompt=1, max_sequence_length=8)
    zero = ours.encode_prompt(**kw, lora_scale=0.0)[0]
    plain = fresh(F).encode_prompt(**kw)[0]
    assert torch.equal(zero, plain)
    assert ours._lorakit_set().managers()["text_encoder_2"].call_scale == 1.0


def test_fuse_defaults_to_the_transformer_and_unfuse_is_exact() -> None:
    ref, ours = _pair()
    sd_a, sd_b = _lora(seed=5), _lora(seed=6, rank=2)
    te_before = {k: v.clone() for k, v in ours.text_encoder.state_dict().items()}
    tr_before = {k: v.clone() for k, v in ours.transformer.state_dict().items()}
    for name, sd in (("a", sd_a), ("b", sd_b)):
        ref.load_lora_weights(dict(sd), adapter_name=name)
        ours.load_lora_weights(sd, adapter_name=name)
    ref.set_adapters(["a", "b"], [0.8, 0.5])
    ours.set_adapters(["a", "b"], [0.8, 0.5])
    unfused = outputs(ours, F)
    ref.fuse_lora(lora_scale=0.7)
    ours.fuse_lora(lora_scale=0.7)
    assert_close(outputs(ours, F), outputs(ref, F), tol=2e-5)
    for k, v in ours.text_encoder.state_dict().items():  # CLIP stays unfused (its adapters still apply)
        assert torch.equal(v, te_before[k]), k
    assert any(not torch.equal(v, tr_before[k]) for k, v in ours.transformer.state_dict().items())
    ours.unfuse_lora()
    for k, v in ours.transformer.state_dict().items():
        assert torch.equal(v, tr_before[k]), k
    assert_close(outputs(ours, F), unfused, tol=0.0)
    ours.fuse_lora(components=[])  # every component, lorakit's spelling
    assert any(not torch.equal(v, te_before[k]) for k, v in ours.text_encoder.state_dict().items())
    ours.unfuse_lora()
    ours.unload_lora_weights(reset_to_overwritten_params=True)
    for model in ours._lorakit_models().values():
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    for k, v in ours.text_encoder.state_dict().items():
        assert torch.equal(v, te_before[k]), k
    with pytest.raises(ComponentError):
        ours.fuse_lora(components=["unet"])


def test_per_component_weights_match_diffusers() -> None:
    ref, ours = _pair()
    for name, seed in (("a", 7), ("b", 8)):
        sd = _lora(seed=seed)
        ref.load_lora_weights(dict(sd), adapter_name=name)
        ours.load_lora_weights(sd, adapter_name=name)
    w = [{"transformer": 0.5, "text_encoder": 0.8}, {"text_encoder": -0.4}]
    ref.set_adapters(["a", "b"], [dict(x) for x in w])
    ours.set_adapters(["a", "b"], w)
    assert_close(outputs(ours, F), outputs(ref, F))


def test_block_weights_over_double_then_single_blocks() -> None:
    """``block_i`` numbers the double blocks first, then the single blocks (the tiny model: block_0, block_1 double,
    block_2, block_3 single); modules outside the blocks keep 1.0. Reference: the file with lora_B scaled per block,
    loaded by diffusers + PEFT."""
    ref, ours = _pair()
    sd = _lora(seed=9)
    ours.load_lora_weights(sd, adapter_name="a")
    ours.set_adapters(["a"], [{"transformer": {"block_0": 0.3, "block_2": -0.5, 3: 0.0}, "text_encoder": 0.9}])

    def weight(comp: str, path: str) -> float:
        if comp == "text_encoder":
            return 0.9
        for prefix, w in (("transformer_blocks.0.", 0.3), ("single_transformer_blocks.0.", -0.5),
                          ("single_transformer_blocks.1.", 0.0)):
            if path.startswith(prefix):
                return w
        return 1.0

    ref.load_lora_weights(scaled_lora(sd, weight), adapter_name="a")
    assert_close(outputs(ours, F), outputs(ref, F))
    with pytest.raises(lorakit.errors.KeyMismatchError, match="blocks 0..3"):
        ours.set_adapters("a", {"transformer": {"block_4": 1.0}})


def test_hotswap() -> None:
    ours = lorakit.attach(fresh(F))
    ours.enable_lora_hotswap(target_rank=8)
    ours.load_lora_weights(_lora(seed=10, rank=2), adapter_name="a")
    new = _lora(seed=11, rank=6)
    ours.load_lora_weights(new, adapter_name="a", hotswap=True)
    ref = lorakit.attach(fresh(F))
    ref.load_lora_weights(new, adapter_name="r")
    assert_close(outputs(ours, F), outputs(ref, F))
    with pytest.raises(HotswapError):
        ours.load_lora_weights(_lora(seed=12, rank=9), adapter_name="a", hotswap=True)


# ------------------------------------------------------------------------------------------------ API details
def test_a_dict_comes_back_unchanged() -> None:
    """diffusers' kohya path scales the caller's CLIP tensors in place (its dict.copy() is shallow); lorakit reads."""
    sd = _kohya_double(torch.Generator().manual_seed(13))
    keep = {k: v.clone() for k, v in sd.items()}
    ours = lorakit.attach(fresh(F))
    ours.load_lora_weights(sd, adapter_name="a")
    ours.fuse_lora(components=[])
    ours.unfuse_lora()
    assert sd.keys() == keep.keys() and all(torch.equal(sd[k], keep[k]) for k in sd)
    theirs = {k: v.clone() for k, v in keep.items()}
    fresh(F).load_lora_weights(theirs, adapter_name="a")
    assert any(not torch.equal(theirs[k], keep[k]) for k in keep if k.startswith("lora_te1_"))  # diffusers 0.42.1


def test_lora_state_dict_returns_as_diffusers_flux() -> None:
    sd = _kohya_double(torch.Generator().manual_seed(14))
    mixin = lorakit.FluxLoraLoaderMixin
    state = mixin.lora_state_dict(sd)
    assert isinstance(state, dict) and state.keys() == sd.keys()  # alphas stay in: the file, unchanged
    state, alphas = mixin.lora_state_dict(sd, return_alphas=True)
    assert alphas and all(k.endswith(".alpha") for k in alphas) and not any(k.endswith(".alpha") for k in state)
    state2, meta = mixin.lora_state_dict(sd, return_lora_metadata=True)
    assert meta is None and state2.keys() == sd.keys()
    state3, alphas3, meta3 = mixin.lora_state_dict(sd, True, return_lora_metadata=True)
    assert alphas3 == alphas and meta3 is None
    # the pieces load back to the same adapter, also into bare models
    a = lorakit.attach(fresh(F))
    a.load_lora_weights(sd, adapter_name="x")
    b = fresh(F)
    mixin.load_lora_into_transformer(state, alphas, b.transformer, adapter_name="x")
    mixin.load_lora_into_text_encoder(state, alphas, b.text_encoder, adapter_name="x")
    assert_close(outputs(b, F), outputs(a, F), tol=0.0)


def test_save_lora_weights_with_t5_roundtrip(tmp_path) -> None:
    ours = lorakit.attach(fresh(F))
    ours.load_lora_weights(_lora(seed=15, comps=("transformer", "text_encoder", "text_encoder_2")), adapter_name="a")
    expected = outputs(ours, F)
    layers = {}
    for comp, mgr in ours._lorakit_set().managers().items():
        layers[f"{comp}_lora_layers"] = {
            f"{p}.lora_{'A' if f == 'down' else 'B'}.weight": t for p, k in mgr.adapters["a"].items() for f, t in k.named_tensors()
        }
    assert set(layers) == {"transformer_lora_layers", "text_encoder_lora_layers", "text_encoder_2_lora_layers"}
    type(ours).save_lora_weights(tmp_path, **layers)
    again = lorakit.attach(fresh(F))
    again.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="b")
    assert_close(outputs(again, F), expected, tol=0.0)
    assert set(again.get_list_adapters()) == {"transformer", "text_encoder", "text_encoder_2"}


def test_control_lora_is_refused_and_changes_nothing() -> None:
    ours = lorakit.attach(fresh(F))
    before = outputs(ours, F)
    g = torch.Generator().manual_seed(16)
    sd = {"img_in.lora_A.weight": _rand(g, 4, 128), "img_in.lora_B.weight": _rand(g, 32, 4),
          "double_blocks.0.img_attn.qkv.lora_A.weight": _rand(g, 4, 32),
          "double_blocks.0.img_attn.qkv.lora_B.weight": _rand(g, 96, 4),
          "double_blocks.0.img_attn.norm.query_norm.scale": torch.ones(16)}
    with pytest.raises(ControlLoRAError, match="Control LoRA"):
        ours.load_lora_weights(sd, adapter_name="c")
    assert ours.get_list_adapters() == {}
    for k, v in outputs(ours, F).items():
        assert torch.equal(v, before[k]), k
