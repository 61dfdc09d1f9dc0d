"""Issue 11 A.1: delete or hotswap of a fused adapter while LoRA is disabled must not corrupt the weights.

The snippet of the issue and its shorter forms, asserted against the formula (fp64 ΔW from the test's own
tensors): while disabled the weights are the base bit for bit, after ``enable_lora()`` they are the base plus the
fused adapters that still exist (with their current tensors), and after ``unfuse_lora()`` / unload the base again.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from state_model import lora_delta
from torch import Tensor

import lorakit
from lorakit.tiny import tiny_pipeline

M = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
N = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k"
TOL = 1e-5


def lora(pipe: Any, path: str, seed: int) -> dict[str, Tensor]:
    """A random rank-2 diffusers PEFT-style LoRA on UNet module ``path`` (alpha = rank)."""
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = pipe.unet.get_submodule(path).weight.shape
    return {
        f"unet.{path}.lora_A.weight": torch.randn(2, in_f, generator=g) * 0.3,
        f"unet.{path}.lora_B.weight": torch.randn(out_f, 2, generator=g) * 0.3,
    }


def delta(sd: dict[str, Tensor], path: str) -> Tensor:
    return lora_delta(2.0, sd[f"unet.{path}.lora_B.weight"], sd[f"unet.{path}.lora_A.weight"])


def weight(pipe: Any, path: str) -> Tensor:
    return pipe.unet.get_submodule(path).weight.detach()


def bits(t: Tensor) -> Tensor:
    return t.detach().reshape(-1).view(torch.int32)


def assert_base(pipe: Any, w0: dict[str, Tensor], when: str) -> None:
    for path, w in w0.items():
        same = torch.equal(bits(weight(pipe, path)), bits(w))
        err = float((weight(pipe, path).double() - w.double()).abs().max())
        assert same, f"{when}: {path} is not the base bit for bit (max|Δ| {err:.3g})"


def assert_formula(pipe: Any, path: str, w0: Tensor, deltas: list[Tensor], when: str) -> None:
    exp = w0.double() + sum(deltas, torch.zeros_like(w0, dtype=torch.float64))
    err = float((weight(pipe, path).double() - exp).abs().max())
    assert err <= TOL, f"{when}: {path} is off the formula base + fused by {err:.3g}"


@pytest.fixture
def pipe() -> Any:
    return lorakit.attach(tiny_pipeline("sd1"))


def test_issue_snippet_delete_fused_while_disabled(pipe: Any) -> None:
    w0 = {p: weight(pipe, p).clone() for p in (M, N)}
    a, b, c = lora(pipe, M, 1), lora(pipe, M, 3), lora(pipe, N, 5)
    pipe.load_lora_weights(a, adapter_name="a")
    pipe.load_lora_weights(b, adapter_name="b")
    pipe.load_lora_weights(c, adapter_name="c")
    pipe.set_adapters("a")
    pipe.fuse_lora()
    pipe.disable_lora()
    pipe.delete_adapters("a")
    pipe.enable_lora()
    assert_base(pipe, {M: w0[M]}, "fused 'a' deleted while disabled, enabled again")
    pipe.set_adapters("c")
    pipe.fuse_lora()
    pipe.disable_lora()
    pipe.enable_lora()
    assert_formula(pipe, N, w0[N], [delta(c, N)], "'c' fused")
    assert_base(pipe, {M: w0[M]}, "'c' fused (it does not touch M)")
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    assert_base(pipe, w0, "after unfuse + unload")


def test_fused_deleted_while_disabled_then_enabled(pipe: Any) -> None:
    """The first half of the snippet: the only fused adapter deleted while disabled."""
    w0 = weight(pipe, M).clone()
    pipe.load_lora_weights(lora(pipe, M, 1), adapter_name="a")
    pipe.fuse_lora()
    pipe.disable_lora()
    pipe.delete_adapters("a")
    assert_base(pipe, {M: w0}, "disabled, fused 'a' deleted")
    pipe.enable_lora()
    assert_base(pipe, {M: w0}, "enabled after deleting the only fused adapter")


def test_fuse_two_disable_delete_one(pipe: Any) -> None:
    """Fuse a and b, disable, delete b: the base while disabled, W0 + a after enable, W0 after unfuse."""
    w0 = weight(pipe, M).clone()
    a, b = lora(pipe, M, 1), lora(pipe, M, 3)
    pipe.load_lora_weights(a, adapter_name="a")
    pipe.load_lora_weights(b, adapter_name="b")
    pipe.set_adapters(["a", "b"])
    pipe.fuse_lora()
    assert_formula(pipe, M, w0, [delta(a, M), delta(b, M)], "a and b fused")
    pipe.disable_lora()
    assert_base(pipe, {M: w0}, "disabled")
    pipe.delete_adapters("b")
    assert_base(pipe, {M: w0}, "disabled, fused 'b' deleted")
    pipe.enable_lora()
    assert_formula(pipe, M, w0, [delta(a, M)], "enabled after deleting fused 'b'")
    pipe.unfuse_lora()
    assert_base(pipe, {M: w0}, "unfused")


def test_fuse_disable_hotswap_enable(pipe: Any) -> None:
    """Fuse, disable, hotswap the fused adapter, enable: W0 + the NEW tensors (fused status kept)."""
    w0 = weight(pipe, M).clone()
    old, new = lora(pipe, M, 1), lora(pipe, M, 7)
    pipe.load_lora_weights(old, adapter_name="a")
    pipe.fuse_lora()
    pipe.disable_lora()
    pipe.load_lora_weights(new, adapter_name="a", hotswap=True)
    assert_base(pipe, {M: w0}, "disabled, fused 'a' hotswapped")
    pipe.enable_lora()
    assert pipe.fused_loras == {"a"}
    assert_formula(pipe, M, w0, [delta(new, M)], "enabled after hotswapping fused 'a'")
    pipe.unfuse_lora()
    assert_base(pipe, {M: w0}, "unfused")
