"""Bad dict sources and bad state operations through the public pipeline API: a typed one-line error naming the
key / module / adapter, and the pipeline exactly as before. Also the defined behaviour of the edge cases that are
not errors (unfuse with nothing fused, fuse twice, load while fused)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from safety_helpers import (
    assert_unchanged,
    busy_pipe,
    check_fails,
    denoiser_output,
    lora_dict,
    new_pipe,
    snapshot,
    text_output,
)

import lorakit
from lorakit import errors
from lorakit.errors import AdapterWeightError, ComponentError
from lorakit.report import NO_SUCH_MODULE, UNRECOGNISED


@pytest.fixture
def pipe() -> Any:
    return busy_pipe("sd1")


def _key(sd: dict[str, torch.Tensor], comp: str, part: str, index: int = 2) -> str:
    return sorted(k for k in sd if k.startswith(comp + ".") and f".{part}." in k)[index]


def _module(key: str) -> str:
    return key.split(".", 1)[1].rsplit(".lora_", 1)[0]


# ------------------------------------------------------------------------------------------------ bad tensors
@pytest.mark.parametrize("comp", ["unet", "text_encoder"])
def test_shape_mismatch_on_one_module_among_many(pipe: Any, comp: str) -> None:
    sd = lora_dict(pipe, seed=5)
    key = _key(sd, comp, "lora_A")
    sd[key] = torch.randn(2, sd[key].shape[1] + 3)
    assert len(sd) > 50  # one bad module among many good ones, in both components
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="bad"), errors.ShapeMismatchError, key, _module(key))
    assert "bad" not in str(pipe.get_list_adapters())


@pytest.mark.parametrize("comp", ["unet", "text_encoder"])
def test_up_down_rank_mismatch_inside_one_module(pipe: Any, comp: str) -> None:
    sd = lora_dict(pipe, seed=5, rank=2)
    key = _key(sd, comp, "lora_A")
    sd[key] = torch.randn(3, sd[key].shape[1])  # down has rank 3, up rank 2
    msg = check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="bad"), errors.ShapeMismatchError, key, _module(key))
    assert "(3, " in msg and ", 2)" in msg, msg


@pytest.mark.parametrize(
    "value",
    [[0.1, 0.2], 0.5, "0.1", None, np.zeros((2, 16), dtype=np.float32)],
    ids=["list", "float", "str", "none", "ndarray"],
)
def test_non_tensor_value_in_dict_source(pipe: Any, value: object) -> None:
    sd: dict[str, Any] = dict(lora_dict(pipe, seed=5))
    key = _key(sd, "unet", "lora_A")
    sd[key] = value
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="bad"), errors.DTypeError, key, type(value).__name__)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool], ids=str)
def test_integer_dtype_tensor(pipe: Any, dtype: torch.dtype) -> None:
    sd = lora_dict(pipe, seed=5)
    key = _key(sd, "unet", "lora_B")
    sd[key] = sd[key].to(dtype)
    check_fails(
        pipe, lambda: pipe.load_lora_weights(sd, adapter_name="bad"), errors.DTypeError, key, str(dtype).replace("torch.", "")
    )


# ------------------------------------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "overflow"])
@pytest.mark.parametrize("comp", ["unet", "text_encoder"])
def test_nan_inf_with_safe_fusing(pipe: Any, comp: str, bad: str) -> None:
    """NaN/Inf in the file (a broken file), or finite tensors whose fused weight overflows: nothing is fused, in
    any component (the UNet is fused before the text encoder, so a text-encoder failure exercises the rollback)."""
    sd = lora_dict(pipe, seed=5)
    key = _key(sd, comp, "lora_B")
    if bad == "overflow":  # every tensor finite; up @ down ~ 1e40 > float32 max
        sd[key] = sd[key] * 1e21
        down = key.replace("lora_B", "lora_A")
        sd[down] = sd[down] * 1e21
    else:
        t = sd[key].clone()
        t[0, 0] = float(bad)
        sd[key] = t
    pipe.load_lora_weights(sd, adapter_name="broken")  # loading unfused is allowed: nothing is written
    pipe.set_adapters(["style", "fz", "broken"], [0.7, 0.5, 1.0])
    check_fails(
        pipe,
        lambda: pipe.fuse_lora(adapter_names=["broken"], safe_fusing=True),
        errors.NonFiniteError,
        _module(key),
        "broken",
        "nothing was fused",
        # a failure found after the UNet was fused is rolled back exactly, but the rollback re-installs the
        # previous fused set, which counts as a state change for the lazily rebuilt caches
        ignore=["version"] if (bad, comp) == ("overflow", "text_encoder") else (),
    )
    assert pipe.fused_loras == {"fz"}


# ------------------------------------------------------------------------------------------------ names
def test_adapter_name_that_already_exists(pipe: Any) -> None:
    sd = lora_dict(pipe, seed=5)
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="style"), errors.AdapterExistsError, "'style'")


@pytest.mark.parametrize(
    "op",
    ["set_adapters", "delete_adapters", "fuse_lora", "set_lora_device"],
)
def test_unknown_adapter_name(pipe: Any, op: str) -> None:
    names = ["style", "nope"]  # one valid name first: nothing may happen to it either
    calls = {
        "set_adapters": lambda: pipe.set_adapters(names, [0.1, 0.2]),
        "delete_adapters": lambda: pipe.delete_adapters(names),
        "fuse_lora": lambda: pipe.fuse_lora(adapter_names=names),
        "set_lora_device": lambda: pipe.set_lora_device(names, "cpu"),
    }
    check_fails(pipe, calls[op], errors.AdapterNotFoundError, "nope", "style")


def test_unknown_adapter_name_suggests_the_closest(pipe: Any) -> None:
    check_fails(pipe, lambda: pipe.set_adapters(["styel"]), errors.AdapterNotFoundError, "styel", "did you mean 'style'")


@pytest.mark.parametrize(
    "names,weights",
    [(["style"], [0.5, 0.5]), (["style", "fz"], [0.5, 0.5, 0.5]), (["style", "fz"], [0.5])],
    ids=["1-name-2-weights", "2-names-3-weights", "2-names-1-weight"],
)
def test_set_adapters_weight_count_mismatch(pipe: Any, names: list[str], weights: list[float]) -> None:
    check_fails(
        pipe, lambda: pipe.set_adapters(names, weights), AdapterWeightError, f"{len(weights)} adapter weights for {len(names)}"
    )


@pytest.mark.parametrize("cls", [AdapterWeightError, ComponentError], ids=lambda c: c.__name__)
def test_public_error_types_live_in_lorakit_errors(cls: type) -> None:
    """Every error type the pipeline API raises can be caught by name from ``lorakit.errors``."""
    assert getattr(errors, cls.__name__, None) is cls


def test_unknown_component(pipe: Any) -> None:
    check_fails(pipe, lambda: pipe.fuse_lora(components=["unet", "text_encdoer"]), ComponentError, "text_encdoer")


# ------------------------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("device", ["cuda:99", "bogus", "mps", 99], ids=str)
def test_set_lora_device_that_does_not_exist(pipe: Any, device: Any) -> None:
    check_fails(pipe, lambda: pipe.set_lora_device(["style", "idle"], device), errors.DeviceError, str(device))


def test_set_lora_device_meta_is_refused(pipe: Any) -> None:
    check_fails(pipe, lambda: pipe.set_lora_device(["style"], "meta"), errors.DeviceError, "meta")


# ------------------------------------------------------------------------------------------------ fuse / unfuse
def test_unfuse_with_nothing_fused_is_a_harmless_no_op() -> None:
    """diffusers makes it a no-op; so does lorakit (``AdapterManager.unfuse`` returns False)."""
    fresh = new_pipe("sd1")
    before = snapshot(fresh)
    assert fresh.unfuse_lora() is None
    assert_unchanged(before, snapshot(fresh))
    fresh.load_lora_weights(lora_dict(fresh, seed=1), adapter_name="a")  # loaded, active, not fused
    before = snapshot(fresh)
    fresh.unfuse_lora()
    fresh.unfuse_lora(components=["text_encoder"])
    assert_unchanged(before, snapshot(fresh))
    assert lorakit.get_manager(fresh.unet).unfuse() is False


def test_fuse_twice_is_idempotent(pipe: Any) -> None:
    base = new_pipe("sd1")
    base_weights = snapshot(base, outputs=False).weights
    pipe.fuse_lora()  # fuses the active set {style, fz}
    once = snapshot(pipe)
    pipe.fuse_lora()
    assert_unchanged(once, snapshot(pipe), ignore=["version"])
    pipe.fuse_lora(adapter_names=["style", "fz"])
    pipe.fuse_lora(adapter_names=["style"])
    assert_unchanged(once, snapshot(pipe), ignore=["version"])
    assert pipe.fused_loras == {"style", "fz"} and pipe.num_fused_loras == 2
    # no double application: one unfuse gives the original weights back bit for bit
    pipe.unfuse_lora()
    after = snapshot(pipe, outputs=False).weights
    for comp, sd in base_weights.items():
        for k, v in sd.items():
            assert torch.equal(v, after[comp][k]), f"{comp}.{k}"


def test_fuse_twice_matches_a_single_fuse_on_a_fresh_pipeline() -> None:
    a = new_pipe("sd1")
    b = new_pipe("sd1")
    for p in (a, b):
        p.load_lora_weights(lora_dict(p, seed=1), adapter_name="x")
    a.fuse_lora()
    b.fuse_lora()
    b.fuse_lora()
    wa, wb = snapshot(a, outputs=False).weights, snapshot(b, outputs=False).weights
    for comp in wa:
        for k in wa[comp]:
            assert torch.equal(wa[comp][k], wb[comp][k]), f"{comp}.{k}"


def test_load_while_fused_runs_unfused_on_top() -> None:
    """Defined behaviour: the fused weights stay as they are; the new adapter runs unfused on top of them (and, as
    in diffusers, becomes the only active one: the fused one still applies through the weights)."""
    pipe = new_pipe("sd1")
    pipe.load_lora_weights(lora_dict(pipe, seed=1), adapter_name="a")
    pipe.fuse_lora()
    fused = snapshot(pipe, outputs=False)
    pipe.load_lora_weights(lora_dict(pipe, seed=2), adapter_name="b")
    now = snapshot(pipe, outputs=False)
    for comp, sd in fused.weights.items():
        for k, v in sd.items():
            assert torch.equal(v, now.weights[comp][k]), f"{comp}.{k}: the load wrote into fused weights"
    assert pipe.fused_loras == {"a"}
    assert pipe.get_active_adapters() == ["b"]
    # reference: both adapters unfused on a fresh pipeline
    ref = new_pipe("sd1")
    ref.load_lora_weights(lora_dict(ref, seed=1), adapter_name="a")
    ref.load_lora_weights(lora_dict(ref, seed=2), adapter_name="b")
    ref.set_adapters(["a", "b"])
    torch.testing.assert_close(denoiser_output(pipe), denoiser_output(ref), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(text_output(pipe), text_output(ref), rtol=1e-5, atol=1e-5)
    base_out = denoiser_output(new_pipe("sd1"))
    assert not torch.allclose(denoiser_output(pipe), base_out)
    # unfuse: original weights bit for bit; with both active again, both unfused
    pipe.unfuse_lora()
    pipe.set_adapters(["a", "b"])
    base = snapshot(new_pipe("sd1"), outputs=False)
    after = snapshot(pipe, outputs=False)
    for comp, sd in base.weights.items():
        for k, v in sd.items():
            assert torch.equal(v, after.weights[comp][k]), f"{comp}.{k}"
    assert pipe.fused_loras == set() and pipe.get_active_adapters() == ["a", "b"]
    torch.testing.assert_close(denoiser_output(pipe), denoiser_output(ref), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ hotswap
def test_hotswap_into_a_name_that_is_not_loaded(pipe: Any) -> None:
    sd = lora_dict(pipe, seed=5)
    check_fails(
        pipe,
        lambda: pipe.load_lora_weights(sd, adapter_name="ghost", hotswap=True),
        (errors.AdapterNotFoundError, errors.HotswapError),
        "ghost",
    )


def test_hotswap_without_a_name(pipe: Any) -> None:
    sd = lora_dict(pipe, seed=5)
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, hotswap=True), errors.HotswapError, "adapter_name")


@pytest.mark.parametrize(
    "target_rank,new_ranks",
    [(None, {"unet": 4, "text_encoder": 2}), (4, {"unet": 8, "text_encoder": 8}), (4, {"unet": 4, "text_encoder": 8})],
    ids=["no-target-unet", "target4-both", "target4-text-encoder-only"],
)
def test_hotswap_with_a_larger_rank_than_the_target(target_rank: int | None, new_ranks: dict[str, int]) -> None:
    pipe = new_pipe("sd1", offload=True)
    if target_rank is not None:
        pipe.enable_lora_hotswap(target_rank=target_rank)
    pipe.load_lora_weights(lora_dict(pipe, seed=1, rank=2), adapter_name="slot")
    pipe.load_lora_weights(lora_dict(pipe, seed=2, rank=2), adapter_name="other")
    new = {}
    for comp, r in new_ranks.items():
        new.update(lora_dict(pipe, seed=3, rank=r, comps=[comp]))
    biggest = max(new_ranks.values())
    check_fails(
        pipe,
        lambda: pipe.load_lora_weights(new, adapter_name="slot", hotswap=True),
        errors.HotswapError,
        "'slot'",
        f"rank {biggest}",
        f"target_rank={biggest}",
    )


def test_hotswap_within_the_target_rank_works() -> None:
    """Control for the test above: a rank within the target swaps in place and changes the output."""
    pipe = new_pipe("sd1")
    pipe.enable_lora_hotswap(target_rank=4)
    pipe.load_lora_weights(lora_dict(pipe, seed=1, rank=2), adapter_name="slot")
    before = denoiser_output(pipe)
    pipe.load_lora_weights(lora_dict(pipe, seed=3, rank=4), adapter_name="slot", hotswap=True)
    assert pipe.get_list_adapters() == {"unet": ["slot"], "text_encoder": ["slot"]}
    assert not torch.equal(before, denoiser_output(pipe))


# ------------------------------------------------------------------------------------------------ strict / report
def _with_leftovers(pipe: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    sd = lora_dict(pipe, seed=5)
    junk = {
        "unet.down_blocks.1.attentions.9.proj_in.lora_A.weight": torch.randn(2, 16),
        "unet.down_blocks.1.attentions.9.proj_in.lora_B.weight": torch.randn(16, 2),
        "totally_unrelated_tensor": torch.randn(3),
    }
    sd.update(junk)
    return sd, list(junk)


def test_strict_raises_on_any_unmatched_key(pipe: Any) -> None:
    sd, junk = _with_leftovers(pipe)
    check_fails(
        pipe, lambda: pipe.load_lora_weights(sd, adapter_name="s", strict=True), errors.KeyMismatchError, "strict", junk[0]
    )


def test_default_mode_loads_and_reports_the_rest(pipe: Any) -> None:
    sd, junk = _with_leftovers(pipe)
    pipe.load_lora_weights(sd, adapter_name="s")
    assert "s" in pipe.get_list_adapters()["unet"] and "s" in pipe.get_list_adapters()["text_encoder"]
    report = lorakit.get_manager(pipe.unet).info["s"]["report"]
    skipped = {s.key: s.reason for s in report.skipped}
    assert skipped == {junk[0]: NO_SUCH_MODULE, junk[1]: NO_SUCH_MODULE, junk[2]: UNRECOGNISED}
    assert report.total_keys == len(sd) and report.matched_keys == len(sd) - 3
    assert 0 < report.coverage < 1
    assert junk[0] in report.summary()
    near = next(s for s in report.skipped if s.key == junk[0]).closest
    assert any("attentions.1.proj_in" in n or "attentions.0.proj_in" in n for n in near), near


def test_default_mode_raises_on_zero_matches(pipe: Any) -> None:
    sd = {"unet.nowhere.lora_A.weight": torch.randn(2, 16), "unet.nowhere.lora_B.weight": torch.randn(16, 2)}
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="z"), errors.KeyMismatchError, "no key matched", "nowhere")


_INCOMPLETE = {
    "up-only": ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight", (16, 2)),
    "down-only": ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", (2, 16)),
    "alpha-only": ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha", ()),
    "half-loha": ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.hada_w1_a", (16, 2)),
}


@pytest.mark.parametrize("variant", ["up-only", "down-only", "alpha-only", "half-loha"])
def test_incomplete_adapter_is_reported_in_default_mode(variant: str) -> None:
    pipe = new_pipe("sd1")
    sd = lora_dict(pipe, seed=5, targets={"unet": ("attn1.to_k", "attn2.to_v")})
    key, shape = _INCOMPLETE[variant]
    sd[key] = torch.randn(shape) if shape else torch.tensor(2.0)
    pipe.load_lora_weights(sd, adapter_name="partial")
    report = lorakit.get_manager(pipe.unet).info["partial"]["report"]
    assert [(s.key, s.reason) for s in report.skipped] == [(key, "incomplete adapter")]


@pytest.mark.parametrize("variant", ["up-only", "down-only", "alpha-only", "half-loha"])
def test_incomplete_adapter_raises_in_strict_mode(pipe: Any, variant: str) -> None:
    sd = lora_dict(pipe, seed=5, targets={"unet": ("attn1.to_k", "attn2.to_v")})
    key, shape = _INCOMPLETE[variant]
    sd[key] = torch.randn(shape) if shape else torch.tensor(2.0)
    check_fails(
        pipe, lambda: pipe.load_lora_weights(sd, adapter_name="partial", strict=True), errors.KeyMismatchError, key, "incomplete"
    )


# ------------------------------------------------------------------------------------------------ other entry points
@pytest.mark.parametrize(
    "source,fragment",
    [(None, "NoneType"), (12345, "int"), ({}, "no tensors"), ({1: torch.randn(2)}, "key 1")],
    ids=["none", "int", "empty-dict", "int-key"],
)
def test_not_a_source(pipe: Any, source: Any, fragment: str) -> None:
    check_fails(pipe, lambda: pipe.load_lora_weights(source), errors.FormatError, fragment)


@pytest.mark.parametrize("bad", ["exists", "int-dtype", "list-value", "shape"])
@pytest.mark.parametrize("into", ["unet", "text_encoder"])
def test_load_lora_into_component_methods(pipe: Any, into: str, bad: str) -> None:
    """``load_lora_into_unet`` / ``load_lora_into_text_encoder`` (the lower-level public loaders, which bypass the
    io checks of ``load_lora_weights``) are as safe."""
    sd: dict[str, Any] = {k[len(into) + 1 :]: v for k, v in lora_dict(pipe, seed=5, comps=[into]).items()}
    key = sorted(sd)[3]
    name = "style" if bad == "exists" else "new"
    if bad == "int-dtype":
        sd[key] = sd[key].to(torch.int32)
    elif bad == "list-value":
        sd[key] = [1, 2]
    elif bad == "shape":
        sd[key] = torch.randn(2, 99) if "lora_A" in key else torch.randn(99, 2)
    exc = {"exists": errors.AdapterExistsError, "int-dtype": errors.DTypeError, "list-value": errors.DTypeError,
           "shape": errors.ShapeMismatchError}[bad]
    if into == "unet":
        call = lambda: pipe.load_lora_into_unet(sd, None, pipe.unet, adapter_name=name)  # noqa: E731
    else:
        call = lambda: pipe.load_lora_into_text_encoder(sd, None, pipe.text_encoder, adapter_name=name)  # noqa: E731
    check_fails(pipe, call, exc, *([] if bad == "exists" else [key.rsplit(".lora_", 1)[0]]))


@pytest.mark.parametrize("weight", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_set_adapters_with_a_non_finite_weight(pipe: Any, weight: float) -> None:
    check_fails(pipe, lambda: pipe.set_adapters(["style"], [weight]), AdapterWeightError, "style")


def test_fp16_overflow_with_safe_fusing() -> None:
    """The classic "Inf means overflow": finite fp32 adapter tensors whose fused weight exceeds the fp16 range
    (65504) in an fp16 pipeline. ``safe_fusing`` refuses; without it the Inf is written (as in diffusers) and
    ``unfuse_lora`` still gives the original weights back bit for bit."""
    pipe = busy_pipe("sd1", dtype=torch.float16)
    pipe.load_lora_weights(lora_dict(pipe, seed=5, scale=300.0), adapter_name="hot")
    assert all(bool(torch.isfinite(t).all()) for t in lora_dict(pipe, seed=5, scale=300.0).values())
    check_fails(
        pipe, lambda: pipe.fuse_lora(adapter_names=["hot"], safe_fusing=True), errors.NonFiniteError, "nothing was fused"
    )
    before = snapshot(pipe, outputs=False)
    pipe.fuse_lora(adapter_names=["hot"])
    assert not all(bool(torch.isfinite(v).all()) for v in pipe.unet.state_dict().values())
    pipe.unfuse_lora()
    pipe.fuse_lora(adapter_names=["fz"])  # back to the starting fused set
    assert_unchanged(before, snapshot(pipe, outputs=False), ignore=["version"])


@pytest.mark.parametrize(
    "weights,exc,fragment",
    [
        ([0.5, {"unet": {"down": {"block_9": 1.0}}}], errors.KeyMismatchError, "block_9"),
        ([0.5, {"unet": 0.5, "text_encoder": {"down": 1.0}}], AdapterWeightError, "text_encoder"),
        ([0.5, {"unet": 0.5, "text_encdoer": 1.0}], ComponentError, "text_encdoer"),
        ([0.5, {"unet": {"up": {"block_0": [1.0, 1.0, 1.0, 1.0, 1.0]}}}], AdapterWeightError, "block_0"),
        ([0.5, "abc"], AdapterWeightError, ""),
    ],
    ids=["unknown-block", "blocks-for-text-encoder", "unknown-component", "too-many-layer-weights", "not-a-number"],
)
def test_set_adapters_with_bad_block_weights(pipe: Any, weights: list[Any], exc: type, fragment: str) -> None:
    """The second adapter's spec is bad: the first adapter's (valid) weight must not be applied either."""
    check_fails(pipe, lambda: pipe.set_adapters(["style", "fz"], weights), exc, fragment)
