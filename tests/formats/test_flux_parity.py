"""Flux files written by the tools themselves give the same outputs through lorakit as through those tools:

* PEFT: ``inject_adapter_in_model`` on the tiny Flux transformer and CLIP, ``get_peft_model_state_dict``, saved with
  diffusers' own ``FluxPipeline.save_lora_weights`` (with each LoraConfig as header metadata); the reference is the
  PEFT-injected models' forward (and diffusers' own load of the same file);
* lycoris-lora: ``create_lycoris`` on the tiny Flux transformer (SimpleTuner's path: ``lycoris_`` + underscored
  diffusers names) for LoKr, LoHa, full and DoRA; the reference is the LyCORIS modules' own forward.

Max |Δ| <= 1e-5 relative to the adapter's effect, fp32.
"""

from __future__ import annotations

import copy
from functools import cache

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

import lorakit
from lorakit.tiny import tiny_pipeline

pytest.importorskip("peft")


@cache
def _base() -> object:
    return tiny_pipeline("flux")


def _ids() -> dict[str, Tensor]:
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return {"img_ids": ids.reshape(16, 3), "txt_ids": torch.zeros(5, 3)}


@torch.no_grad()
def run_transformer(tr: nn.Module) -> Tensor:
    g = torch.Generator().manual_seed(3)
    return tr(
        hidden_states=torch.randn(1, 16, 64, generator=g), encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.7]), guidance=torch.tensor([3.5]),
        **_ids(),
    ).sample


@torch.no_grad()
def run_text(te: nn.Module) -> Tensor:
    return te(torch.tensor([[517, 40, 41, 42, 518, 518]]))[0]


def assert_close(got: Tensor, want: Tensor, base: Tensor, tol: float = 1e-5) -> None:
    effect = float((want - base).abs().max())
    assert effect > 1e-3, "the adapter has no effect"
    err = float((got - want).abs().max())
    assert err <= tol * max(effect, 1.0), f"max |Δ| {err:.3g} (effect {effect:.3g})"


def _randomize(model: nn.Module, seed: int, names: tuple[str, ...]) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(k in n for k in names):
                if "magnitude" in n:
                    p.copy_(p.abs() * (1 + 0.3 * torch.rand(p.shape, generator=g)))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# -------------------------------------------------------------------------------------------------------------- PEFT
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "add_k_proj", "to_out.0", "to_add_out", "ff.net.0.proj",
                       "ff_context.net.2", "proj_mlp", "proj_out", "norm1.linear", "norm.linear", "norm_out.linear",
                       "x_embedder", "context_embedder", "linear_1"]
PEFT_CASES = {
    "patterns": dict(r=4, lora_alpha=8, target_modules=TRANSFORMER_TARGETS, rank_pattern={"proj_mlp": 2, "to_v": 3},
                     alpha_pattern={"to_k": 3, "norm_out.linear": 16}),
    "rslora": dict(r=4, lora_alpha=6, use_rslora=True, target_modules=["to_q", "proj_mlp", "norm1.linear"]),
    "dora": dict(r=3, lora_alpha=5, use_dora=True, target_modules=["to_q", "to_k", "proj_mlp", "ff.net.2", "x_embedder"]),
    "bias": dict(r=2, lora_alpha=4, lora_bias=True, target_modules=["to_out.0", "proj_out", "norm.linear"]),
}


def _inject(model: nn.Module, seed: int, **cfg):
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(init_lora_weights=False, **cfg)
    peft_model = copy.deepcopy(model)
    inject_adapter_in_model(config, peft_model)
    _randomize(peft_model, seed, ("lora_A", "lora_B", "lora_magnitude_vector"))
    return peft_model, get_peft_model_state_dict(peft_model), config


@pytest.mark.parametrize("case", list(PEFT_CASES))
def test_peft_file_saved_by_diffusers(tmp_path, case: str) -> None:
    from diffusers import FluxPipeline

    base = _base()
    tr_peft, tr_sd, tr_cfg = _inject(base.transformer, 7, **PEFT_CASES[case])
    te_peft, te_sd, te_cfg = _inject(base.text_encoder, 8, r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "fc1"])
    FluxPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=tr_sd, text_encoder_lora_layers=te_sd,
        transformer_lora_adapter_metadata=tr_cfg.to_dict(), text_encoder_lora_adapter_metadata=te_cfg.to_dict(),
    )
    path = str(tmp_path / "pytorch_lora_weights.safetensors")
    ours = lorakit.attach(copy.deepcopy(base))
    ours.load_lora_weights(path, adapter_name="p")
    rep = ours.lora_report("p")
    assert not rep.skipped and rep.format == "diffusers", rep.summary()
    assert_close(run_transformer(ours.transformer), run_transformer(tr_peft), run_transformer(base.transformer))
    assert_close(run_text(ours.text_encoder), run_text(te_peft), run_text(base.text_encoder))
    # fused: the same outputs; unfused again: bit-exact weights
    ours.fuse_lora(components=[])
    assert_close(run_transformer(ours.transformer), run_transformer(tr_peft), run_transformer(base.transformer), tol=2e-5)
    ours.unfuse_lora()
    for (k, v), w in zip(ours.transformer.state_dict().items(), base.transformer.state_dict().values()):
        assert torch.equal(v, w), k
    # diffusers' own load of the file gives the same outputs
    ref = copy.deepcopy(base)
    ref.load_lora_weights(path, adapter_name="p")
    assert_close(run_transformer(ours.transformer), run_transformer(ref.transformer), run_transformer(base.transformer))


def test_peft_adapter_model_without_prefix() -> None:
    """raw PEFT (``base_model.model.<diffusers path>``, PeftModel.save_pretrained): diffusers routes it to its fal
    Kontext converter and fails; lorakit loads it with the adapter_config alphas."""
    import json

    from peft import get_peft_model_state_dict

    base = _base()
    tr_peft, _, cfg = _inject(base.transformer, 9, r=2, lora_alpha=5, target_modules=["to_q", "proj_mlp", "norm1.linear"])
    sd = {f"base_model.model.{k}": v for k, v in get_peft_model_state_dict(tr_peft).items()}
    header = {"adapter_config": json.dumps(cfg.to_dict(), default=list)}
    conv = lorakit.formats.to_canonical(sd, header, {"transformer": copy.deepcopy(base.transformer)})
    assert conv.format == "peft" and not conv.report.skipped
    tr = copy.deepcopy(base.transformer)
    lorakit.AdapterManager(tr).add_adapter("a", conv.adapters["transformer"])
    assert_close(run_transformer(tr), run_transformer(tr_peft), run_transformer(base.transformer))


# ----------------------------------------------------------------------------------------------------------- LyCORIS
@pytest.fixture
def _restore_lycoris_presets():
    """LyCORIS applies presets by mutating class attributes; put them back for other tests."""
    from lycoris import kohya, wrapper

    classes = (kohya.LycorisNetworkKohya, wrapper.LycorisNetwork)
    saved = [{k: v for k, v in vars(c).items() if k.isupper()} for c in classes]
    yield
    for c, attrs in zip(classes, saved):
        for k, v in attrs.items():
            setattr(c, k, v)


LYCORIS_CASES = {
    "lokr": dict(algo="lokr", factor=4),
    "lokr-full": dict(algo="lokr", factor=2, decompose_both=False, full_matrix=True),
    "loha": dict(algo="loha"),
    "full": dict(algo="full"),
    "dora": dict(algo="lora", dora_wd=True),
}


@pytest.mark.usefixtures("_restore_lycoris_presets")
@pytest.mark.parametrize("case", list(LYCORIS_CASES))
def test_lycoris_wrapper_file(tmp_path, case: str) -> None:
    pytest.importorskip("lycoris")
    from lycoris import create_lycoris
    from lycoris.wrapper import LycorisNetwork

    base = _base()
    ref = copy.deepcopy(base.transformer)
    LycorisNetwork.apply_preset({
        "target_module": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
        "target_name": ["x_embedder", "context_embedder", "proj_out", "norm_out.linear"],
    })
    net = create_lycoris(ref, 1.0, linear_dim=4, linear_alpha=2.0, **LYCORIS_CASES[case])
    net.apply_to()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith("dora_scale"):
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if case == "full" else 0.2))
    path = str(tmp_path / "lycoris.safetensors")
    net.save_weights(path, torch.float32, None)
    sd = load_file(path)
    assert sd and all(k.startswith("lycoris_") for k in sd)
    ours = lorakit.attach(copy.deepcopy(base))
    ours.load_lora_weights(path, adapter_name="l")
    rep = ours.lora_report("l")
    assert rep.format == "lycoris" and not rep.skipped, rep.summary()
    want = {"lokr": "lokr", "lokr-full": "lokr", "loha": "loha", "full": "full", "dora": "dora"}[case]
    assert set(rep.components["transformer"].kinds) == {want}
    assert rep.components["transformer"].matched_modules == len({k.split(".")[0] for k in sd})
    assert_close(run_transformer(ours.transformer), run_transformer(ref), run_transformer(base.transformer))
