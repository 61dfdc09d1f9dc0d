"""The same guarantees on every family lorakit supports (SD2, SDXL, SD3 with its T5 encoder, aMUSEd): a failure in
the *last* component (validated after the denoiser) leaves every component unchanged, and a load + unload gives the
pipeline back bit for bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safety_helpers import assert_unchanged, busy_pipe, check_fails, components, lora_dict, new_pipe, snapshot

from lorakit import errors

FAMILIES = ["sd2", "sdxl", "sd3", "amused"]


@pytest.fixture(params=FAMILIES)
def pipe(request: pytest.FixtureRequest) -> Any:
    return busy_pipe(request.param)


def _last_key(pipe: Any, sd: dict[str, torch.Tensor], role: str) -> str:
    last = components(pipe)[-1]
    return sorted(k for k in sd if k.startswith(last + ".") and f".{role}." in k)[0]


def test_shape_mismatch_in_the_last_component(pipe: Any) -> None:
    sd = lora_dict(pipe, seed=5)
    key = _last_key(pipe, sd, "lora_A")
    sd[key] = torch.randn(2, sd[key].shape[1] + 1)
    check_fails(pipe, lambda: pipe.load_lora_weights(sd, adapter_name="bad"), errors.ShapeMismatchError, key)


def test_zero_matching_keys(pipe: Any) -> None:
    sd = {"lora_unet_nowhere_to_q.lora_down.weight": torch.randn(2, 8), "lora_unet_nowhere_to_q.lora_up.weight": torch.randn(8, 2)}
    check_fails(pipe, lambda: pipe.load_lora_weights(sd), errors.KeyMismatchError, "no key matched")


def test_unknown_adapter_name(pipe: Any) -> None:
    check_fails(pipe, lambda: pipe.set_adapters(["style", "nope"]), errors.AdapterNotFoundError, "nope")


def test_nan_in_the_last_component_with_safe_fusing(pipe: Any) -> None:
    sd = lora_dict(pipe, seed=5)
    key = _last_key(pipe, sd, "lora_B")
    t = sd[key].clone()
    t[0, 0] = float("nan")
    sd[key] = t
    pipe.load_lora_weights(sd, adapter_name="broken")
    check_fails(
        pipe, lambda: pipe.fuse_lora(adapter_names=["broken"], safe_fusing=True), errors.NonFiniteError, "broken"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_load_then_unload_gives_the_pipeline_back(family: str) -> None:
    fresh = new_pipe(family, offload=True)
    before = snapshot(fresh)
    fresh.load_lora_weights(lora_dict(fresh, seed=1), adapter_name="x")
    listed = fresh.get_list_adapters()
    assert sorted(listed) == sorted(components(fresh)), listed  # every component got its part
    fresh.unload_lora_weights()
    assert_unchanged(before, snapshot(fresh))


def test_wrong_family_is_named_in_the_error() -> None:
    """An SDXL-only file (second text encoder) into SD1.5 says it looks like an SDXL LoRA, and changes nothing."""
    pipe = new_pipe("sd1")
    before = snapshot(pipe)
    sd = {
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(2, 4),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(4, 2),
    }
    with pytest.raises(errors.KeyMismatchError, match="looks like a SDXL LoRA .* the model is SD1"):
        pipe.load_lora_weights(sd)
    assert_unchanged(before, snapshot(pipe))
