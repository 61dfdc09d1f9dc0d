"""Hotswap under torch.compile: zero recompilations after the first compile, correct outputs after every swap."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import _base, assert_close, denoise, denoiser_name, encode, fresh, make_lora

import lorakit


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", ["sd1", "sd3"])
def test_hotswap_compiled_denoiser_does_not_recompile(family: str) -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    from torch._dynamo.utils import counters

    base = _base(family)
    den = denoiser_name(family)
    comps = [den, "text_encoder"]
    pipe = lorakit.attach(fresh(family))
    pipe.enable_lora_hotswap(target_rank=8)
    pipe.load_lora_weights(make_lora(base, comps, family=family, rank=4, seed=0), adapter_name="a")
    dynamo.reset()
    counters.clear()
    # the "eager" backend: dynamo's guards and recompilations are what is measured; codegen is irrelevant here
    setattr(pipe, den, torch.compile(getattr(pipe, den), backend="eager"))
    denoise(pipe, family)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    for i, rank in enumerate((2, 8, 5)):
        sd = make_lora(base, comps, family=family, rank=rank, seed=i + 1)
        pipe.load_lora_weights(sd, adapter_name="a", hotswap=True)
        got = {"d": denoise(pipe, family), "te": encode(pipe, "text_encoder")}
        assert counters["stats"]["unique_graphs"] == graphs, f"swap {i}: recompiled"
        ref = lorakit.attach(fresh(family))
        ref.load_lora_weights(sd, adapter_name="r")
        assert_close(got, {"d": denoise(ref, family), "te": encode(ref, "text_encoder")})
    assert pipe.get_list_adapters() == {den: ["a"], "text_encoder": ["a"]}
    dynamo.reset()
