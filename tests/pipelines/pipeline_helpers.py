"""Shared helpers of the pipeline tests: tiny pipelines, random PEFT-style LoRA files, fixed denoiser/TE inputs."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from lorakit.tiny import tiny_pipeline

# Library loggers are quieted per test by a fixture (tests/conftest.py, restored afterwards), never at import:
# pytest imports every test module before running any, so an import-time level would silence other suites' caplog.
try:  # transformers' load report and progress bars
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass
try:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

TOL = 1e-5
FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "amused")

#: per component: module-path suffixes a test LoRA targets
TARGETS: dict[str, tuple[str, ...]] = {
    "unet": ("attn1.to_q", "attn1.to_k", "attn2.to_v", "to_out.0", "proj_in", "ff.net.0.proj", "resnets.0.conv1"),
    "unet_attn": ("attn1.to_q", "attn2.to_k", "attn2.to_v", "to_out.0", "ff.net.2"),
    "transformer_sd3": ("attn.to_q", "attn.to_k", "attn.add_v_proj", "attn.to_out.0", "ff.net.0.proj", "norm1.linear"),
    "transformer_amused": ("attn1.to_q", "attn1.to_v", "attn2.to_k", "to_out.0", "ff.net.0.proj"),
    # double blocks (attn, add_*, ff, norm1), single blocks (attn, proj_mlp, proj_out, norm), embedders, final adaLN
    "transformer_flux": ("attn.to_q", "attn.to_k", "attn.add_v_proj", "attn.to_out.0", "ff.net.0.proj", "ff_context.net.2",
                         "norm1.linear", "proj_mlp", "norm.linear", "x_embedder", "norm_out.linear"),
    "clip": ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1"),
    "t5": ("SelfAttention.q", "SelfAttention.v", "DenseReluDense.wo"),
}


def denoiser_name(family: str) -> str:
    return "transformer" if family in ("sd3", "amused", "flux") else "unet"


def text_encoders(family: str) -> list[str]:
    """The text encoders diffusers loads LoRA into (Flux: CLIP only; its T5 ``text_encoder_2`` is lorakit's extra)."""
    return {"sd1": ["text_encoder"], "sd2": ["text_encoder"], "amused": ["text_encoder"], "flux": ["text_encoder"]}.get(
        family, ["text_encoder", "text_encoder_2"]
    )


def targets_for(family: str, component: str, attn_only: bool = False) -> tuple[str, ...]:
    if component == "unet":
        return TARGETS["unet_attn" if attn_only else "unet"]
    if component == "transformer":
        return TARGETS[f"transformer_{family}"]
    if component == "text_encoder_3" or (family == "flux" and component == "text_encoder_2"):
        return TARGETS["t5"]
    return TARGETS["clip"]


@cache
def _base(family: str, task: str = "text2img") -> Any:
    return tiny_pipeline(family, task=task)


def fresh(family: str, task: str = "text2img") -> Any:
    """A tiny pipeline (deep copy of a cached one: building is cheap but copying is cheaper)."""
    return copy.deepcopy(_base(family, task))


def make_lora(
    pipe: Any,
    components: list[str],
    *,
    family: str,
    rank: int = 4,
    seed: int = 1,
    std: float = 0.3,
    attn_only: bool = False,
) -> dict[str, Tensor]:
    """A random diffusers PEFT-style LoRA state dict (``<component>.<path>.lora_A/B.weight``) for ``pipe``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    for comp in components:
        model = getattr(pipe, comp)
        pats = targets_for(family, comp, attn_only)
        for path, mod in model.named_modules():
            if not path.endswith(pats):
                continue
            if isinstance(mod, nn.Linear):
                a = torch.randn(rank, mod.in_features, generator=g) * std
                b = torch.randn(mod.out_features, rank, generator=g) * std
            elif isinstance(mod, nn.Conv2d):
                a = torch.randn(rank, mod.in_channels, *mod.kernel_size, generator=g) * std
                b = torch.randn(mod.out_channels, rank, 1, 1, generator=g) * std
            else:
                continue
            sd[f"{comp}.{path}.lora_A.weight"] = a
            sd[f"{comp}.{path}.lora_B.weight"] = b
    assert sd, f"no targets in {components}"
    return sd


def scaled_lora(sd: dict[str, Tensor], weight_of: Callable[[str, str], float]) -> dict[str, Tensor]:
    """Reference helper: ``lora_B`` of each module multiplied by ``weight_of(component, module path)``."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".lora_B.weight"):
            comp, _, rest = k.partition(".")
            v = v * weight_of(comp, rest[: -len(".lora_B.weight")])
        out[k] = v
    return out


def _inputs(family: str) -> dict[str, Any]:
    g = torch.Generator().manual_seed(123)
    if family in ("sd1", "sd2"):
        return dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=10, encoder_hidden_states=torch.randn(1, 5, 32, generator=g))
    if family == "sdxl":
        return dict(
            sample=torch.randn(1, 4, 8, 8, generator=g),
            timestep=10,
            encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
            added_cond_kwargs={"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.randn(1, 6, generator=g)},
        )
    if family == "sd3":
        return dict(
            hidden_states=torch.randn(1, 16, 8, 8, generator=g),
            encoder_hidden_states=torch.randn(1, 7, 64, generator=g),
            pooled_projections=torch.randn(1, 64, generator=g),
            timestep=torch.tensor([10.0]),
        )
    if family == "flux":  # 16 image tokens (64 = 16 latent channels × 2×2), 7 text tokens, [dev]'s guidance
        return dict(
            hidden_states=torch.randn(1, 16, 64, generator=g),
            encoder_hidden_states=torch.randn(1, 7, 32, generator=g),
            pooled_projections=torch.randn(1, 32, generator=g),
            timestep=torch.tensor([0.6]),
            img_ids=torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(16, 3),
            txt_ids=torch.zeros(7, 3),
            guidance=torch.tensor([3.5]),
        )
    return dict(
        input_ids=torch.randint(0, 8, (1, 4, 4), generator=g),
        encoder_hidden_states=torch.randn(1, 5, 8, generator=g),
        pooled_text_emb=torch.randn(1, 8, generator=g),
        micro_conds=torch.randn(1, 5, generator=g),
    )


@torch.no_grad()
def denoise(pipe: Any, family: str, **extra: Any) -> Tensor:
    model = getattr(pipe, denoiser_name(family))
    out = model(**_inputs(family), **extra)
    return out[0] if isinstance(out, tuple) else getattr(out, "sample", out)


_IDS = None


@torch.no_grad()
def encode(pipe: Any, component: str) -> Tensor:
    global _IDS
    if _IDS is None:
        _IDS = _base("sd1").tokenizer(["the cat of a dog"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    model = getattr(pipe, component)
    return model(_IDS)[0]


def outputs(pipe: Any, family: str) -> dict[str, Tensor]:
    """Denoiser output plus every present text encoder's output."""
    out = {"denoiser": denoise(pipe, family)}
    for te in [*text_encoders(family), "text_encoder_3", *(["text_encoder_2"] if family == "flux" else [])]:
        if getattr(pipe, te, None) is not None:
            out[te] = encode(pipe, te)
    return out


def max_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, float]:
    return {k: float((a[k] - b[k]).abs().max()) for k in a if k in b}


def assert_close(a: dict[str, Tensor], b: dict[str, Tensor], tol: float = TOL, keys: list[str] | None = None) -> None:
    d = max_diff(a, b)
    for k in keys or list(d):
        assert d[k] <= tol, f"{k}: max |Δ| = {d[k]:.3g} > {tol} (all: {d})"


def assert_differs(a: dict[str, Tensor], b: dict[str, Tensor], key: str = "denoiser") -> None:
    assert float((a[key] - b[key]).abs().max()) > 1e-3, f"{key}: the adapter had no effect"


def reference_load(pipe: Any, family: str, sd: dict[str, Tensor], adapter_name: str) -> None:
    """diffusers + PEFT load (aMUSEd pipelines have no loader in diffusers 0.42.1: use the model-level paths)."""
    if family == "amused":
        from diffusers.loaders import AmusedLoraLoaderMixin

        tr = {k: v for k, v in sd.items() if k.startswith("transformer.")}
        te = {k: v for k, v in sd.items() if k.startswith("text_encoder.")}
        if tr:
            AmusedLoraLoaderMixin.load_lora_into_transformer(tr, None, pipe.transformer, adapter_name=adapter_name)
        if te:
            AmusedLoraLoaderMixin.load_lora_into_text_encoder(te, None, pipe.text_encoder, adapter_name=adapter_name)
        return
    pipe.load_lora_weights(dict(sd), adapter_name=adapter_name)
