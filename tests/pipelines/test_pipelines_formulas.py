"""Where diffusers 0.42.1 is wrong (formats.md §7.3, §10), the reference is an explicit formula applied to the weights.

Cases: kohya files with per-module alphas; a text-encoder file with attention projections but no out_proj; LoHa;
LoKr; DoRA (``dora_scale``). Each test also shows that diffusers' own load differs (or fails), which is why the
formula is the reference.
"""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import _base, assert_close, fresh, outputs
from torch import Tensor, nn

import lorakit

FAMILY = "sd1"
UNET_PATHS = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.1.attentions.0.proj_in",  # 1×1 conv in SD1
    "up_blocks.1.resnets.0.conv1",  # 3×3 LoCon
)
TE_PATHS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.1.self_attn.v_proj", "encoder.layers.1.mlp.fc1")


def _kohya(comp: str, path: str) -> str:
    if comp == "unet":
        return "lora_unet_" + path.replace(".", "_")
    return "lora_te_text_model_" + path.replace(".", "_")


def _modules(pipe) -> dict[tuple[str, str], nn.Module]:
    out = {}
    for comp, paths in (("unet", UNET_PATHS), ("text_encoder", TE_PATHS)):
        mods = dict(getattr(pipe, comp).named_modules())
        for p in paths:
            out[(comp, p)] = mods[p]
    return out


def _apply(deltas: dict[tuple[str, str], Tensor], weight: float = 1.0, replace: bool = False):
    """The reference pipeline: base weights with the deltas added (or replaced, for DoRA)."""
    ref = fresh(FAMILY)
    mods = _modules(ref)
    with torch.no_grad():
        for key, d in deltas.items():
            w = mods[key].weight
            w.copy_(d.reshape(w.shape) if replace else w + weight * d.reshape(w.shape))
    return ref


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _lora_file(alpha_of) -> tuple[dict[str, Tensor], dict[tuple[str, str], Tensor]]:
    sd: dict[str, Tensor] = {}
    deltas = {}
    for i, ((comp, path), mod) in enumerate(_modules(_base(FAMILY)).items()):
        g = _gen(100 + i)
        r = 4
        w = mod.weight
        down = torch.randn(r, *w.shape[1:], generator=g) * 0.3 if w.dim() == 4 else torch.randn(r, w.shape[1], generator=g) * 0.3
        up = torch.randn(w.shape[0], r, *([1, 1] if w.dim() == 4 else []), generator=g) * 0.3
        alpha = alpha_of(comp, path)
        name = _kohya(comp, path)
        sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], sd[f"{name}.alpha"] = down, up, torch.tensor(alpha)
        deltas[(comp, path)] = (alpha / r) * (up.flatten(1) @ down.flatten(1))
    return sd, deltas


def _diffusers_outputs(sd):
    ref = fresh(FAMILY)
    ref.load_lora_weights(dict(sd), adapter_name="d")
    return outputs(ref, FAMILY)


def test_kohya_per_module_alphas_formula() -> None:
    """to_q / q_proj alpha 2, the rest alpha 8 (rank 4): diffusers ignores the malformed alpha_pattern key of the
    attention projection and scales it with 8/4."""
    sd, deltas = _lora_file(lambda c, p: 2.0 if p.endswith(("to_q", "q_proj")) else 8.0)
    pipe = lorakit.attach(fresh(FAMILY))
    pipe.load_lora_weights(sd, adapter_name="k")
    want = outputs(_apply(deltas), FAMILY)
    assert_close(outputs(pipe, FAMILY), want)
    pipe.fuse_lora()
    assert_close(outputs(pipe, FAMILY), want, tol=2e-5)
    theirs = _diffusers_outputs(sd)
    assert float((theirs["denoiser"] - want["denoiser"]).abs().max()) > 1e-3  # diffusers is off here


def test_text_encoder_attention_only_formula() -> None:
    """A TE file with q/v projections but no out_proj: diffusers silently skips q/v (only fc1 loads)."""
    sd, deltas = _lora_file(lambda c, p: 4.0)
    sd = {k: v for k, v in sd.items() if k.startswith("lora_te_")}
    deltas = {k: v for k, v in deltas.items() if k[0] == "text_encoder"}
    pipe = lorakit.attach(fresh(FAMILY))
    pipe.load_lora_weights(sd, adapter_name="te")
    want = outputs(_apply(deltas), FAMILY)
    assert_close(outputs(pipe, FAMILY), want)
    theirs = _diffusers_outputs(sd)
    assert float((theirs["text_encoder"] - want["text_encoder"]).abs().max()) > 1e-3


def _loha_file() -> tuple[dict[str, Tensor], dict[tuple[str, str], Tensor]]:
    sd, deltas = {}, {}
    for i, ((comp, path), mod) in enumerate(_modules(_base(FAMILY)).items()):
        g = _gen(200 + i)
        r, alpha = 4, 2.0
        out, fan_in = mod.weight.shape[0], mod.weight[0].numel()
        w1a, w1b = torch.randn(out, r, generator=g) * 0.5, torch.randn(r, fan_in, generator=g) * 0.5
        w2a, w2b = torch.randn(out, r, generator=g) * 0.5, torch.randn(r, fan_in, generator=g) * 0.5
        name = _kohya(comp, path)
        sd |= {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b}
        sd[f"{name}.alpha"] = torch.tensor(alpha)
        deltas[(comp, path)] = (alpha / r) * (w1a @ w1b) * (w2a @ w2b)
    return sd, deltas


def _lokr_file() -> tuple[dict[str, Tensor], dict[tuple[str, str], Tensor]]:
    sd, deltas = {}, {}
    for i, ((comp, path), mod) in enumerate(_modules(_base(FAMILY)).items()):
        if mod.weight.dim() != 2 or mod.weight.shape[0] % 2 or mod.weight.shape[1] % 2:
            continue
        g = _gen(300 + i)
        out, fan_in = mod.weight.shape
        out_l, in_m = 2, 2
        out_k, in_n = out // out_l, fan_in // in_m
        r, alpha = 2, 1.0
        w1 = torch.randn(out_l, in_m, generator=g) * 0.5
        w2a, w2b = torch.randn(out_k, r, generator=g) * 0.5, torch.randn(r, in_n, generator=g) * 0.5
        name = _kohya(comp, path)
        sd |= {f"{name}.lokr_w1": w1, f"{name}.lokr_w2_a": w2a, f"{name}.lokr_w2_b": w2b, f"{name}.alpha": torch.tensor(alpha)}
        deltas[(comp, path)] = (alpha / r) * torch.kron(w1, w2a @ w2b)
    return sd, deltas


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_formula(kind: str) -> None:
    sd, deltas = _loha_file() if kind == "loha" else _lokr_file()
    pipe = lorakit.attach(fresh(FAMILY))
    pipe.load_lora_weights(sd, adapter_name=kind)
    pipe.set_adapters([kind], [0.5])
    want = outputs(_apply(deltas, weight=0.5), FAMILY)
    assert_close(outputs(pipe, FAMILY), want)
    pipe.fuse_lora()
    assert_close(outputs(pipe, FAMILY), want, tol=2e-5)
    with pytest.raises(ValueError):  # diffusers: "The following keys have not been correctly renamed" / invalid
        fresh(FAMILY).load_lora_weights(dict(sd))


def test_dora_scale_formula() -> None:
    """LyCORIS DoRA (output axis ``dora_scale``): W' = m · V / ‖V‖_row with V = W + ΔW. diffusers drops the magnitudes."""
    sd, deltas = _lora_file(lambda c, p: 4.0)
    new_weights = {}
    for (comp, path), mod in _modules(_base(FAMILY)).items():
        name = _kohya(comp, path)
        v = mod.weight.detach().flatten(1) + deltas[(comp, path)]
        m = v.norm(dim=1, keepdim=True) * (1.0 + 0.2 * torch.rand(v.shape[0], 1, generator=_gen(len(path))))
        sd[f"{name}.dora_scale"] = m.reshape(v.shape[0], *([1] * (mod.weight.dim() - 1)))
        new_weights[(comp, path)] = m * v / v.norm(dim=1, keepdim=True)
    pipe = lorakit.attach(fresh(FAMILY))
    pipe.load_lora_weights(sd, adapter_name="dora")
    want = outputs(_apply(new_weights, replace=True), FAMILY)
    assert_close(outputs(pipe, FAMILY), want)
    pipe.fuse_lora()
    assert_close(outputs(pipe, FAMILY), want, tol=2e-5)
    theirs = _diffusers_outputs(sd)
    assert float((theirs["denoiser"] - want["denoiser"]).abs().max()) > 1e-3


def test_sd3_t5_text_encoder_3_formula() -> None:
    """diffusers never loads T5 LoRAs (``_lora_loadable_modules`` stops at text_encoder_2): formula reference.

    A file with ``text_encoder_3`` keys loads into the T5 encoder; without a T5 in the pipeline those entries are
    skipped (and the rest loads)."""
    from pipeline_helpers import encode, make_lora

    base = _base("sd3")
    sd = make_lora(base, ["transformer", "text_encoder_3"], family="sd3", seed=7)
    pipe = lorakit.attach(fresh("sd3"))
    pipe.load_lora_weights(sd, adapter_name="t5")
    assert pipe.get_list_adapters() == {"transformer": ["t5"], "text_encoder_3": ["t5"]}
    ref = fresh("sd3")
    mods = dict(ref.text_encoder_3.named_modules())
    with torch.no_grad():
        for k, a in sd.items():
            if k.startswith("text_encoder_3.") and k.endswith(".lora_A.weight"):
                path = k[len("text_encoder_3.") : -len(".lora_A.weight")]
                b = sd[k.replace("lora_A", "lora_B")]
                mods[path].weight += b @ a
    assert_close({"t5": encode(pipe, "text_encoder_3")}, {"t5": encode(ref, "text_encoder_3")})
    # encode_prompt(lora_scale=0) gives the base T5 output exactly
    kw = dict(prompt="a cat", prompt_2=None, prompt_3=None, device="cpu", num_images_per_prompt=1,
              do_classifier_free_guidance=False, max_sequence_length=8)
    plain = fresh("sd3").encode_prompt(**kw)[0]
    assert torch.equal(pipe.encode_prompt(**kw, lora_scale=0.0)[0], plain)
    no_t5 = lorakit.attach(lorakit.tiny.tiny_pipeline("sd3", with_t5=False))
    no_t5.load_lora_weights(sd, adapter_name="t5")
    assert no_t5.get_list_adapters() == {"transformer": ["t5"]}


def test_diffusers_lora_state_dict_output_into_lorakit_loaders() -> None:
    """Code that calls diffusers' own ``lora_state_dict`` (kohya converted to old diffusers names, alphas split out
    under malformed keys) and hands the pair to lorakit's ``load_lora_into_*`` gets the exact per-module alphas."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin as DiffusersMixin

    sd, deltas = _lora_file(lambda c, p: 2.0 if p.endswith(("to_q", "q_proj")) else 8.0)
    state, alphas = DiffusersMixin.lora_state_dict(dict(sd))
    assert alphas and any(".processor." in k for k in state)
    pipe = fresh(FAMILY)
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_unet(state, alphas, pipe.unet, adapter_name="a")
    lorakit.StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(state, alphas, pipe.text_encoder, adapter_name="a")
    assert_close(outputs(pipe, FAMILY), outputs(_apply(deltas), FAMILY))
