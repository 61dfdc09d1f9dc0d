"""attach(): every family and task; names, errors, atomic loads, bare-model classmethods, offload."""

from __future__ import annotations

import pickle

import pytest
import torch
from pipeline_helpers import (
    _base,
    assert_close,
    denoise,
    denoiser_name,
    fresh,
    make_lora,
    outputs,
    text_encoders,
)

import lorakit
from lorakit.errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    ComponentError,
    HotswapError,
    KeyMismatchError,
    ShapeMismatchError,
    UnsupportedPipelineError,
)
from lorakit.tiny import TASKS

CASES = [(f, t) for f in TASKS for t in TASKS[f] if f != "sd2"]


@pytest.mark.parametrize(("family", "task"), CASES)
def test_attach_every_task(family: str, task: str) -> None:
    pipe = fresh(family, task)
    cls = type(pipe)
    name = cls.__name__
    same = lorakit.attach(pipe)
    assert same is pipe and type(pipe).__name__ == name and isinstance(pipe, cls)
    assert lorakit.attach(pipe) is pipe and type(pipe) is type(same)  # twice: harmless
    other = lorakit.attach(fresh(family, task))
    assert type(other) is type(pipe)  # one subclass per class
    sd = make_lora(_base(family), [denoiser_name(family), *text_encoders(family)], family=family)
    pipe.load_lora_weights(sd, adapter_name="a")
    assert pipe.get_active_adapters() == ["a"]
    assert "a" in pipe.get_list_adapters()[denoiser_name(family)]


def test_amused_pipeline_gets_a_loader() -> None:
    import diffusers

    pipe = fresh("amused")
    assert not hasattr(diffusers.AmusedPipeline, "load_lora_weights")
    lorakit.attach(pipe)
    sd = make_lora(_base("amused"), ["transformer", "text_encoder"], family="amused")
    pipe.load_lora_weights(sd)
    img = pipe("a cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 16, 16, 3)


def test_unknown_pipeline_raises() -> None:
    class NotAPipeline:
        pass

    with pytest.raises(UnsupportedPipelineError, match="NotAPipeline"):
        lorakit.attach(NotAPipeline())


def test_attached_pipeline_still_saves_and_pickles(tmp_path) -> None:
    pipe = lorakit.attach(fresh("sd1"))
    pipe.save_pretrained(tmp_path)
    assert '"_class_name": "StableDiffusionPipeline"' in (tmp_path / "model_index.json").read_text()
    assert type(pickle.loads(pickle.dumps(pipe.scheduler))) is type(pipe.scheduler)


def test_names_default_given_duplicate_unknown() -> None:
    pipe = lorakit.attach(fresh("sd1"))
    sd = make_lora(_base("sd1"), ["unet", "text_encoder"], family="sd1")
    pipe.load_lora_weights(sd)
    pipe.load_lora_weights(sd)
    pipe.load_lora_weights(sd, adapter_name="mine")
    assert pipe.get_list_adapters()["unet"] == ["default_0", "default_1", "mine"]
    with pytest.raises(AdapterExistsError, match="mine"):
        pipe.load_lora_weights(sd, adapter_name="mine")
    with pytest.raises(AdapterNotFoundError, match="nope"):
        pipe.set_adapters(["mine", "nope"])
    with pytest.raises(AdapterNotFoundError):
        pipe.delete_adapters("nope")
    with pytest.raises(AdapterNotFoundError):
        pipe.fuse_lora(adapter_names=["nope"])
    with pytest.raises(ComponentError, match="unett"):
        pipe.fuse_lora(components=["unett"])
    with pytest.raises(ComponentError):
        pipe.set_adapters("mine", {"unett": 1.0})
    with pytest.raises(KeyMismatchError):
        pipe.set_adapters("mine", {"unet": {"down": {"block_7": 1.0}}})
    with pytest.raises(ValueError):
        pipe.set_adapters("mine", {"unet": {"up": {"block_0": [1.0, 2.0]}}})  # up blocks have 3 layers
    with pytest.raises(ValueError):
        pipe.set_adapters("mine", {"text_encoder": {"down": 1.0}})  # no blocks in a text encoder
    assert pipe.get_active_adapters() == ["mine"]  # the last load is the active one; failed calls changed nothing


def test_failed_load_changes_nothing() -> None:
    """Atomic across components: a bad text-encoder entry leaves the UNet untouched too."""
    pipe = lorakit.attach(fresh("sd1"))
    sd = make_lora(_base("sd1"), ["unet", "text_encoder"], family="sd1")
    before = outputs(pipe, "sd1")
    bad = dict(sd)
    key = next(k for k in bad if k.startswith("text_encoder.") and k.endswith("lora_B.weight"))
    bad[key] = torch.zeros(bad[key].shape[0] + 1, bad[key].shape[1])
    with pytest.raises(ShapeMismatchError):
        pipe.load_lora_weights(bad, adapter_name="x")
    assert pipe.get_list_adapters() == {}
    for k, v in outputs(pipe, "sd1").items():
        assert torch.equal(v, before[k])
    with pytest.raises(KeyMismatchError):  # nothing for this pipeline
        pipe.load_lora_weights({"foo.lora_A.weight": torch.zeros(1, 2), "foo.lora_B.weight": torch.zeros(2, 1)})


def test_classmethods_on_bare_models() -> None:
    """load_lora_into_unet / _text_encoder / _transformer work on models outside a pipeline; lora_state_dict splits alphas."""
    base = _base("sd1")
    sd = make_lora(base, ["unet", "text_encoder"], family="sd1")
    ref = lorakit.attach(fresh("sd1"))
    ref.load_lora_weights(sd, adapter_name="a")
    comps = fresh("sd1")
    state, alphas = lorakit.StableDiffusionLoraLoaderMixin.lora_state_dict(sd)
    assert alphas is None and state.keys() == sd.keys()
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, comps.unet, adapter_name="a")
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(state, alphas, comps.text_encoder, adapter_name="a")
    assert_close(outputs(comps, "sd1"), outputs(ref, "sd1"), tol=0.0)
    # keys indexed directly into the model (no "unet." prefix)
    bare = fresh("sd1").unet
    direct = {k[len("unet.") :]: v for k, v in sd.items() if k.startswith("unet.")}
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_unet(direct, None, bare)
    assert lorakit.get_manager(bare).list_adapters() == ["default_0"]
    # lora_scale of load_lora_into_text_encoder is the adapter's weight there
    te = fresh("sd1").text_encoder
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(state, None, te, lora_scale=0.0)
    assert lorakit.get_manager(te).weights["default_0"] == 0.0
    # SD3 / aMUSEd transformers
    for family, mixin in (("sd3", lorakit.SD3LoraLoaderMixin), ("amused", lorakit.AmusedLoraLoaderMixin)):
        p = fresh(family)
        sd_t = make_lora(_base(family), ["transformer"], family=family)
        before = denoise(p, family)
        if family == "sd3":
            mixin.load_lora_into_transformer(sd_t, p.transformer, adapter_name="t")
        else:
            mixin.load_lora_into_transformer(sd_t, None, p.transformer, adapter_name="t")
        assert float((denoise(p, family) - before).abs().max()) > 1e-3
    # alphas: split by lora_state_dict, joined back on load
    with_alpha = dict(sd) | {"unet.some.alpha": torch.tensor(4.0)}
    state, alphas = lorakit.StableDiffusionLoraLoaderMixin.lora_state_dict(with_alpha)
    assert alphas == {"unet.some.alpha": 4.0} and "unet.some.alpha" not in state
    state, alphas, meta = lorakit.StableDiffusionLoraLoaderMixin.lora_state_dict(sd, return_lora_metadata=True)
    assert meta is None


def test_hotswap_errors() -> None:
    pipe = lorakit.attach(fresh("sd1"))
    pipe.enable_lora_hotswap(target_rank=4)
    base = _base("sd1")
    sd = make_lora(base, ["unet"], family="sd1", rank=2)
    pipe.load_lora_weights(sd, adapter_name="a")
    with pytest.raises(HotswapError):
        pipe.enable_lora_hotswap(target_rank=8)  # after the first load
    with pytest.raises(HotswapError, match="not loaded"):
        pipe.load_lora_weights(sd, adapter_name="b", hotswap=True)
    with pytest.raises(HotswapError, match="rank 8"):
        pipe.load_lora_weights(make_lora(base, ["unet"], family="sd1", rank=8), adapter_name="a", hotswap=True)
    more = make_lora(base, ["unet", "text_encoder"], family="sd1", rank=2)
    with pytest.raises(HotswapError):
        pipe.load_lora_weights(more, adapter_name="a", hotswap=True)  # text encoder not targeted before
    extra = dict(sd)
    conv = base.unet.conv_out
    extra["unet.conv_out.lora_A.weight"] = torch.zeros(2, conv.in_channels, 3, 3)
    extra["unet.conv_out.lora_B.weight"] = torch.zeros(conv.out_channels, 2, 1, 1)
    with pytest.raises(HotswapError, match="conv_out"):
        pipe.load_lora_weights(extra, adapter_name="a", hotswap=True)
    # a smaller file: the modules it leaves out are zeroed
    fewer = {k: v for k, v in make_lora(base, ["unet"], family="sd1", rank=3, seed=9).items() if "attn1" in k}
    pipe.load_lora_weights(fewer, adapter_name="a", hotswap=True)
    ref = lorakit.attach(fresh("sd1"))
    ref.load_lora_weights(fewer, adapter_name="r")
    assert_close({"d": denoise(pipe, "sd1")}, {"d": denoise(ref, "sd1")})


def test_model_cpu_offload_is_kept() -> None:
    """Load / fuse / unfuse / unload keep the accelerate offload hooks (on CPU-only machines: offload "to" cpu)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = lorakit.attach(fresh("sd1"))
    pipe.enable_model_cpu_offload(device=device)

    def hooks() -> dict[str, str]:
        return {n: type(getattr(m, "_hf_hook", None)).__name__ for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}

    before = hooks()
    assert before["unet"] == "CpuOffload"
    sd = make_lora(_base("sd1"), ["unet", "text_encoder"], family="sd1")
    plain = lorakit.attach(fresh("sd1"))
    plain.load_lora_weights(sd, adapter_name="a")

    def run(p):
        out = p("a cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
        return torch.from_numpy(out)

    pipe.load_lora_weights(sd, adapter_name="a")
    assert hooks() == before
    assert float((run(pipe) - run(plain)).abs().max()) <= 1e-4
    pipe.fuse_lora()
    assert hooks() == before
    assert float((run(pipe) - run(plain)).abs().max()) <= 1e-4
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert hooks() == before
    assert float((run(pipe) - run(fresh("sd1"))).abs().max()) <= 1e-6
    if device != "cpu":
        assert pipe.unet.device.type == "cpu"  # offloaded between calls


def test_fuse_is_atomic_across_components() -> None:
    """safe_fusing: an overflow (finite tensors, Inf product) in the text encoder, found after the UNet was fused,
    puts the UNet back exactly, including an adapter that was fused before."""
    pipe = lorakit.attach(fresh("sd1"))
    base = _base("sd1")
    pipe.load_lora_weights(make_lora(base, ["unet", "text_encoder"], family="sd1", seed=1), adapter_name="ok")
    pipe.set_adapters(["ok"], [0.7])
    pipe.fuse_lora(adapter_names=["ok"], lora_scale=0.5)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    before_te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    out = outputs(pipe, "sd1")
    huge = make_lora(base, ["unet", "text_encoder"], family="sd1", seed=2)
    key = next(k for k in huge if k.startswith("text_encoder.") and k.endswith("lora_B.weight"))
    huge[key] = torch.full_like(huge[key], 1e30)
    huge[key.replace("lora_B", "lora_A")] = torch.full_like(huge[key.replace("lora_B", "lora_A")], 1e30)
    pipe.load_lora_weights(huge, adapter_name="huge")
    pipe.set_adapters(["ok", "huge"], [0.7, 1.0])
    with pytest.raises(lorakit.errors.NonFiniteError):
        pipe.fuse_lora(adapter_names=["huge"], safe_fusing=True)
    assert pipe.fused_loras == {"ok"}
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in pipe.text_encoder.state_dict().items():
        assert torch.equal(v, before_te[k]), k
    pipe.set_adapters(["ok"], [0.7])
    assert_close(outputs(pipe, "sd1"), out, tol=0.0)
    # errors live in lorakit.errors
    assert lorakit.errors.ComponentError is ComponentError
    assert issubclass(lorakit.errors.AdapterWeightError, ValueError)


def test_tiny_pipelines_are_seeded_and_leave_the_global_rng() -> None:
    from lorakit.tiny import FAMILIES, tiny_components, tiny_pipeline

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    a, b, c = tiny_pipeline("sd1", seed=3), tiny_pipeline("sd1", seed=3), tiny_pipeline("sd1", seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, x), y in zip(a.unet.state_dict().items(), b.unet.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    assert tiny_pipeline("sd3", with_t5=False).text_encoder_3 is None
    assert tiny_components("sdxl", dtype=torch.float16)["unet"].dtype == torch.float16
    assert set(FAMILIES) == {"sd1", "sd2", "sdxl", "sd3", "flux", "amused"}
    with pytest.raises(ValueError, match="unknown tiny"):
        tiny_pipeline("sd9")
