"""Fuzzing: generated key sets (real-looking prefixes, module names and suffixes mixed with junk), shapes, dtypes,
values and header metadata through detection / conversion and through ``pipe.load_lora_weights(dict)``.

Whatever the input, lorakit either succeeds or raises a :class:`lorakit.errors.LorakitError` (never a KeyError /
IndexError / ValueError / RuntimeError from deep inside), and never mutates the model: a failed load leaves the
pipeline exactly as it was, a successful one is undone exactly by ``delete_adapters``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safety_helpers import assert_unchanged, bits_equal, lora_dict, new_pipe, snapshot
from torch import nn

from lorakit import errors
from lorakit.formats import to_canonical

#: LORAKIT_FUZZ_EXAMPLES=1000 (and LORAKIT_FUZZ_RANDOM=1 for fresh examples) for a longer hunt outside CI
FUZZ = settings(
    max_examples=int(os.environ.get("LORAKIT_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=not os.environ.get("LORAKIT_FUZZ_RANDOM"),  # reproducible in CI; the examples are still varied
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@functools.lru_cache(maxsize=1)
def _pipe() -> Any:
    pipe = new_pipe("sd1")
    # one load + delete first: the call-scale hooks pipelines.py puts on the denoiser at the first load stay until
    # unload_lora_weights (delete_adapters keeps them); every example then starts from the same state
    pipe.load_lora_weights(lora_dict(pipe), adapter_name="warmup")
    pipe.delete_adapters("warmup")
    return pipe


@functools.lru_cache(maxsize=1)
def _modules() -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """(component, module path, weight shape) of every patchable module of the tiny SD1 pipeline."""
    pipe = _pipe()
    out = []
    for comp in ("unet", "text_encoder"):
        for name, mod in getattr(pipe, comp).named_modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.GroupNorm)) and name:
                out.append((comp, name, tuple(mod.weight.shape)))
    return tuple(out)


PREFIXES = {
    "unet": ["unet.", "lora_unet_", "lycoris_", "diffusion_model.", "base_model.model.", "", "unet.unet."],
    "text_encoder": ["text_encoder.", "lora_te_", "lora_te1_", "lora_te2_", "te.", "text_encoders.clip_l.transformer."],
}
JUNK_PREFIXES = ["", "transformer.", "lora_transformer_", "model.", "oft_unet_", "bundle_emb.tok.", "x."]
SUFFIXES = [
    ".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".lora_A.default.weight", ".lora_magnitude_vector",
    ".lora.down.weight", ".lora.up.weight", ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight",
    ".lora_up.bias", ".alpha", ".dora_scale", ".scale", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b",
    ".hada_t1", ".hada_t2", ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b",
    ".lokr_t2", ".diff", ".diff_b", ".w_norm", ".b_norm", ".oft_blocks", ".on_input", ".a1.weight", ".weight",
    ".bias", "_lora.down.weight", "_lora.up.weight", "", ".", ".lora_A", "lora_B.weight",
]
DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool,
                                torch.uint8, torch.complex64]
DIMS = [0, 1, 2, 3, 4, 8, 16, 32, 37, 64]
JUNK = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.0123456789", min_size=1, max_size=24)


@st.composite
def _name(draw: st.DrawFn) -> tuple[str, tuple[int, ...] | None]:
    """A module name with a prefix (real or junk) and the module's weight shape when it is a real module."""
    if draw(st.integers(0, 9)) < 7:
        comp, path, shape = draw(st.sampled_from(_modules()))
        prefix = draw(st.sampled_from(PREFIXES[comp] + JUNK_PREFIXES[:2]))
        if prefix.endswith("_") and draw(st.booleans()):
            path = path.replace(".", "_")
        if draw(st.integers(0, 9)) == 0:  # a near miss
            path = path.replace("1", "7", 1) if "1" in path else path + "_x"
        return prefix + path, shape
    return draw(st.sampled_from(JUNK_PREFIXES)) + draw(JUNK), None


def _plausible_shape(draw: st.DrawFn, suffix: str, shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    out_f = shape[0]
    in_f = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else shape[0]
    if any(s in suffix for s in ("lora_A", "lora_down", "lora.down", "_lora.down", "hada_w1_b", "hada_w2_b", "lokr_w1_b", "lokr_w2_b")):
        return (rank, *shape[1:]) if len(shape) == 4 and draw(st.booleans()) else (rank, in_f)
    if any(s in suffix for s in ("lora_B", "lora_up", "lora.up", "_lora.up", "hada_w1_a", "hada_w2_a", "lokr_w1_a", "lokr_w2_a")):
        return (out_f, rank, 1, 1) if len(shape) == 4 and draw(st.booleans()) else (out_f, rank)
    if suffix in (".alpha", ".scale"):
        return draw(st.sampled_from([(), (1,)]))
    if suffix in (".diff", ".w_norm", ".weight"):
        return shape
    if suffix in (".diff_b", ".b_norm", ".bias", ".lora_B.bias", ".lora_up.bias", ".dora_scale", ".lora_magnitude_vector"):
        return draw(st.sampled_from([(out_f,), (1, in_f), (out_f, 1)]))
    return tuple(draw(st.lists(st.sampled_from(DIMS), max_size=4)))


def _tensor(draw: st.DrawFn, shape: tuple[int, ...], chaos: bool) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES)) if chaos and draw(st.integers(0, 4)) == 0 else torch.float32
    fill = draw(st.sampled_from(["randn"] * 6 + ["zeros", "nan", "inf", "huge"]))
    numel = 1
    for d in shape:
        numel *= d
    if numel > 8192:
        shape = (2, 3)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(shape, generator=g)
    if fill == "zeros":
        t = torch.zeros(shape)
    elif fill == "nan" and t.numel():
        t.view(-1)[0] = float("nan")
    elif fill == "inf" and t.numel():
        t.view(-1)[0] = float("inf")
    elif fill == "huge":
        t = t * 1e30
    if dtype == torch.bool:
        return t > 0
    if not dtype.is_floating_point and not dtype.is_complex:
        return t.clamp(-100, 100).to(dtype)
    return t.to(dtype)


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    chaos = draw(st.integers(0, 9)) < 3  # 30 %: odd dtypes and more random roles / shapes
    for _ in range(draw(st.integers(1, 8))):
        name, shape = draw(_name())
        rank = draw(st.sampled_from([1, 2, 4, 3]))
        # mostly complete adapters (down + up [+ alpha]); sometimes single random roles
        if shape is not None and (not chaos or draw(st.integers(0, 3)) > 0):
            style = draw(st.sampled_from([(".lora_A.weight", ".lora_B.weight"), (".lora_down.weight", ".lora_up.weight"),
                                          (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"), (".lokr_w1", ".lokr_w2"),
                                          (".diff",), (".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale")]))
        else:
            style = tuple(draw(st.lists(st.sampled_from(SUFFIXES), min_size=1, max_size=3)))
        for suffix in style:
            if shape is not None and (not chaos or draw(st.integers(0, 4)) > 0):
                if suffix in (".lokr_w1", ".lokr_w2"):
                    shp = draw(st.sampled_from([(1, 1), (2, 2), (shape[0], shape[-1] if len(shape) == 2 else 1)]))
                else:
                    shp = _plausible_shape(draw, suffix, shape, rank)
            else:
                shp = tuple(draw(st.lists(st.sampled_from(DIMS), max_size=4)))
            sd[name + suffix] = _tensor(draw, shp, chaos)
    return sd


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, str] | None:
    if draw(st.booleans()):
        return None
    out: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(
        ["ss_network_alpha", "ss_network_dim", "ss_base_model_version", "ss_network_module", "ss_network_args",
         "lora_adapter_metadata", "adapter_config", "modelspec.architecture", "lora_alpha", "network_alpha", "alpha", "x"]
    ), max_size=4)):
        value = draw(st.one_of(
            st.sampled_from(["1", "4.0", "-2", "nan", "inf", "", "sdxl_base_v1-0", "sd_v1", "lycoris.kohya", "{", "null", "[]"]),
            st.builds(json.dumps, st.fixed_dictionaries({}, optional={
                "r": st.integers(-2, 64), "lora_alpha": st.one_of(st.integers(-2, 64), st.text(max_size=3)),
                "target_modules": st.lists(JUNK, max_size=2), "use_dora": st.booleans(),
                "rank_pattern": st.dictionaries(JUNK, st.integers(0, 8), max_size=2),
                "alpha_pattern": st.dictionaries(JUNK, st.one_of(st.integers(0, 8), st.text(max_size=2)), max_size=2),
                "unet.r": st.integers(0, 8), "unet.lora_alpha": st.floats(allow_nan=True),
            })),
            JUNK,
        ))
        out[key] = value
    return out


def _model_fingerprint(pipe: Any) -> dict[str, Any]:
    out = {}
    for comp in ("unet", "text_encoder"):
        model = getattr(pipe, comp)
        out[comp] = [(k, v.data_ptr(), v.clone()) for k, v in model.state_dict().items()]
        out[comp + "/hooks"] = [(n, len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()]
    return out


def _assert_same_model(a: dict[str, Any], b: dict[str, Any]) -> None:
    for comp in ("unet", "text_encoder"):
        assert a[comp + "/hooks"] == b[comp + "/hooks"]
        for (k, p, v), (k2, p2, v2) in zip(a[comp], b[comp]):
            assert k == k2 and p == p2 and bits_equal(v, v2), f"{comp}.{k} changed"


def _only_lorakit_errors(call: Any) -> Any:
    try:
        out = call()
    except errors.LorakitError as exc:
        event(f"raised {type(exc).__name__}")
        return None
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"non-lorakit exception {type(exc).__name__}: {exc}")
    event("converted")
    return out


@FUZZ
@given(sd=state_dicts(), meta=metadata())
def test_fuzz_to_canonical_with_components(sd: dict[str, torch.Tensor], meta: dict[str, str] | None) -> None:
    pipe = _pipe()
    before = _model_fingerprint(pipe)
    conv = _only_lorakit_errors(lambda: to_canonical(sd, meta, {"unet": pipe.unet, "text_encoder": pipe.text_encoder}))
    if conv is not None:
        assert conv.report.matched_keys > 0
        assert conv.report.matched_keys + len(conv.report.skipped) >= len(sd) - sum(k.endswith(".alpha") for k in sd)
    _assert_same_model(before, _model_fingerprint(pipe))


@FUZZ
@given(sd=state_dicts(), meta=metadata())
def test_fuzz_to_canonical_without_components(sd: dict[str, torch.Tensor], meta: dict[str, str] | None) -> None:
    conv = _only_lorakit_errors(lambda: to_canonical(sd, meta))
    if conv is not None:
        assert conv.report.matched_keys > 0


@FUZZ
@given(sd=state_dicts())
def test_fuzz_load_lora_weights(sd: dict[str, torch.Tensor]) -> None:
    pipe = _pipe()
    before = snapshot(pipe, outputs=False)
    try:
        pipe.load_lora_weights(sd, adapter_name="fuzz")
    except errors.LorakitError as exc:
        event(f"raised {type(exc).__name__}")
        assert_unchanged(before, snapshot(pipe, outputs=False))
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"non-lorakit exception {type(exc).__name__}: {exc}")
    event("loaded")
    try:
        # a loaded adapter must run (the output may be non-finite: NaN values are allowed unfused)
        from safety_helpers import denoiser_output, text_output

        denoiser_output(pipe)
        text_output(pipe)
    finally:
        pipe.delete_adapters("fuzz")
    assert_unchanged(before, snapshot(pipe, outputs=False), ignore=["version"])
