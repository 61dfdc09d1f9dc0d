"""Real Flux.1 [dev] LoRA layouts at real size (meta tensors from ``flux_listings``) through ``formats.to_canonical``.

Every key of every listing lands on the module the rules below say (written here from BFL's architecture and the
producers' conventions, not from lorakit's tables), every part of a fused projection gets the rows of its own module,
and nothing is left over. The component models are FLUX.1 [dev]'s transformer, CLIP-L and T5-XXL built on the meta
device from the published configs. Control LoRAs are refused with a typed error.
"""

from __future__ import annotations

import re

import flux_listings as FL
import pytest
import torch
from torch import nn

from lorakit import families
from lorakit.errors import ControlLoRAError
from lorakit.formats import to_canonical
from lorakit.kinds import DoRA, LoRA
from lorakit.targets import reference_components

# -------------------------------------------------------------------------------- expected landing, from BFL's code
_S = "[._]"  # kohya names underscore what the others dot


def _double(i: str, side: str) -> dict[str, tuple[tuple[str, ...], str]]:
    b = f"transformer_blocks.{i}"
    img = side == "img"
    qkv = (f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v") if img else (
        f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj")
    ff = f"{b}.ff" if img else f"{b}.ff_context"
    return {
        "qkv": (qkv, "split"),
        **{f"qkv.{k}": ((p,), "direct") for k, p in enumerate(qkv)},
        "proj": ((f"{b}.attn.to_out.0" if img else f"{b}.attn.to_add_out",), "direct"),
        "mlp.0": ((f"{ff}.net.0.proj",), "direct"),
        "mlp.2": ((f"{ff}.net.2",), "direct"),
        "mod.lin": ((f"{b}.norm1.linear" if img else f"{b}.norm1_context.linear",), "direct"),
    }


def bfl_target(name: str) -> tuple[tuple[str, ...], str] | None:
    """diffusers paths and op of a BFL / kohya / XLabs / OneTrainer module name (any separator), else ``None``."""
    m = re.fullmatch(rf"double_blocks{_S}(\d+){_S}(img|txt)_(attn{_S}qkv(?:{_S}[012])?|attn{_S}proj|mlp{_S}[02]|mod{_S}lin)", name)
    if m:
        return _double(m[1], m[2])[re.sub(_S, ".", m[3]).removeprefix("attn.")]
    m = re.fullmatch(rf"double_blocks{_S}(\d+){_S}processor{_S}(qkv|proj)_lora([12])", name)
    if m:  # XLabs: lora1 = image stream, lora2 = text stream
        return _double(m[1], "img" if m[3] == "1" else "txt")[m[2]]
    m = re.fullmatch(rf"single_blocks{_S}(\d+){_S}(linear1(?:{_S}[0-3])?|linear2|modulation{_S}lin|processor{_S}(?:qkv|proj)_lora)", name)
    if m:
        b = f"single_transformer_blocks.{m[1]}"
        parts = (f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp")
        what = re.sub(_S, ".", m[2])
        if what == "linear1":
            return parts, "split"
        if what.startswith("linear1."):
            return (parts[int(what[-1])],), "direct"
        if what == "processor.qkv_lora":  # XLabs: q, k, v rows of linear1 only
            return parts[:3], "split"
        return ((f"{b}.norm.linear" if what == "modulation.lin" else f"{b}.proj_out",), "direct")
    top = {
        "img_in": "x_embedder", "txt_in": "context_embedder",
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "final_layer.linear": "proj_out",
    }
    for bfl, path in top.items():
        if re.fullmatch(bfl.replace(".", _S), name):
            return (path,), "direct"
    if re.fullmatch(f"final_layer{_S}adaLN_modulation{_S}1", name):  # BFL (shift, scale) vs diffusers (scale, shift)
        return ("norm_out.linear",), "swap"
    return None


#: (key prefix, component, whether the rest is a BFL name); longest first
PREFIXES = [
    ("lora_transformer_", "transformer", False), ("diffusion_model.", "transformer", True),
    ("base_model.model.", "transformer", None), ("transformer.", "transformer", None), ("lora_unet_", "transformer", True),
    ("lora_te1_", "text_encoder", False), ("lora_te2_", "text_encoder_2", False), ("lora_te3_", "text_encoder_2", False),
    ("", "transformer", True),
]
ROLE = re.compile(r"\.(lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|down\.weight|up\.weight|alpha|"
                  r"dora_scale|lora_magnitude_vector)$")


def _own_path(model: nn.Module, name: str) -> str:
    """The model path a diffusers / transformers name means (dotted, or underscored as kohya writes it)."""
    paths = {p for p, m in model.named_modules() if isinstance(m, nn.Linear)}
    for cand in (name, name.removeprefix("text_model.")):
        if cand in paths:
            return cand
    flat = {p.replace(".", "_"): p for p in paths}
    return flat.get(name, flat.get(name.removeprefix("text_model_"), ""))


def expected(listing: dict[str, tuple[int, ...]], models: dict[str, nn.Module]) -> dict[str, dict[str, str]]:
    """component -> diffusers path -> op, for every module of the listing."""
    out: dict[str, dict[str, str]] = {}
    for key in listing:
        stem = key[: ROLE.search(key).start()]
        prefix, comp, bfl = next(p for p in PREFIXES if stem.startswith(p[0]))
        name = stem[len(prefix):]
        hit = bfl_target(name) if bfl in (True, None) else None
        if hit is None:
            assert bfl is not True, key
            path = _own_path(models[comp], name)
            assert path, key
            hit = ((path,), "direct")
        for p in hit[0]:
            out.setdefault(comp, {})[p] = hit[1]
    return out


# ------------------------------------------------------------------------------------------------------------ models
@pytest.fixture(scope="module")
def real() -> dict[str, nn.Module]:
    return FL.real_models()


def meta_state_dict(listing: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in listing.items()}


def _check(conv, listing, models) -> None:
    rep = conv.report
    assert not rep.skipped, rep.summary()
    assert rep.matched_keys == rep.total_keys == len(listing)
    want = expected(listing, models)
    got = {c: set(m) for c, m in conv.adapters.items() if m}
    assert got == {c: set(m) for c, m in want.items()}
    for comp, mods in conv.adapters.items():
        shapes = {p: tuple(m.weight.shape) for p, m in models[comp].named_modules() if isinstance(m, nn.Linear)}
        for path, kind in mods.items():
            out, inp = shapes[path]
            inner = kind.inner if isinstance(kind, DoRA) else kind
            assert isinstance(inner, LoRA), (path, kind)
            # every part has its own module's rows; the factors meet at the rank
            assert inner.up.shape[0] == out and inner.down.shape[1] == inp and inner.up.shape[1] == inner.down.shape[0], path


LANDING = [n for n in FL.LAYOUTS if n not in ("bfl_control", "kohya_t5")]


@pytest.mark.parametrize("layout", LANDING)
def test_real_listing_lands_on_the_real_models(layout: str, real: dict[str, nn.Module]) -> None:
    listing = FL.LAYOUTS[layout]
    conv = to_canonical(meta_state_dict(listing), None, real, source=layout, allow_meta=True)
    assert conv.family == "flux"
    _check(conv, listing, real)


@pytest.mark.parametrize("layout", LANDING)
def test_real_listing_without_a_model_is_flux(layout: str, real: dict[str, nn.Module]) -> None:
    """No model given: the keys alone pick Flux's reference model ([dev], the published config)."""
    listing = FL.LAYOUTS[layout]
    conv = to_canonical(meta_state_dict(listing), None, None, source=layout, allow_meta=True)
    assert conv.family == "flux" and conv.report.reference == "flux"
    _check(conv, listing, real)


def test_reference_configs_are_the_published_ones(real: dict[str, nn.Module]) -> None:
    refs = reference_components("flux")
    for comp, model in real.items():
        ours = {p: tuple(t.shape) for p, t in refs[comp].state_dict().items()}
        assert ours == {p: tuple(t.shape) for p, t in model.state_dict().items()}, comp
    schnell = reference_components("flux-schnell")["transformer"]
    assert not hasattr(schnell.time_text_embed, "guidance_embedder")
    assert families.of_variant("flux-schnell") is families.FLUX


@pytest.mark.parametrize("layout", ["kohya", "kohya_te1", "xlabs", "onetrainer_bfl"])
def test_schnell_loads_what_has_no_guidance_keys(layout: str) -> None:
    refs = reference_components("flux-schnell")
    listing = FL.LAYOUTS[layout]
    conv = to_canonical(meta_state_dict(listing), None, refs, source=layout, allow_meta=True)
    assert not conv.report.skipped and conv.family == "flux"


def test_kohya_guidance_keys_on_schnell_are_reported() -> None:
    refs = reference_components("flux-schnell")
    listing = FL.LAYOUTS["kohya_embedders"]
    conv = to_canonical(meta_state_dict(listing), None, refs, source="schnell", allow_meta=True)
    skipped = {s.key for s in conv.report.skipped}
    assert skipped == {k for k in listing if "guidance_in" in k}


def test_t5_keys_land_in_text_encoder_2(real: dict[str, nn.Module]) -> None:
    """sd-scripts' lora_te3_ (T5-XXL) and OneTrainer's lora_te2_ are Flux's text_encoder_2 (SD3 calls T5
    text_encoder_3); a T5-only file names its family in the header."""
    listing = {**FL.LAYOUTS["kohya"], **FL.LAYOUTS["kohya_t5"]}
    conv = to_canonical(meta_state_dict(listing), None, real, source="t5", allow_meta=True)
    _check(conv, listing, real)
    assert len(conv.adapters["text_encoder_2"]) == 14
    alone = to_canonical(meta_state_dict(FL.LAYOUTS["kohya_t5"]), {"ss_base_model_version": "flux1"}, None,
                         source="t5 only", allow_meta=True)
    assert alone.family == "flux" and set(alone.adapters) == {"text_encoder_2"}
    ot = FL.LAYOUTS["onetrainer_dora"]
    assert any(k.startswith("lora_te2_") for k in ot)
    conv = to_canonical(meta_state_dict(ot), None, real, source="onetrainer", allow_meta=True)
    assert {p.split(".")[0] for p in conv.adapters["text_encoder_2"]} == {"encoder"}


def test_onetrainer_dora_scale_is_an_input_axis_magnitude(real: dict[str, nn.Module]) -> None:
    listing = FL.LAYOUTS["onetrainer_dora"]
    conv = to_canonical(meta_state_dict(listing), None, real, source="dora", allow_meta=True)
    kinds = [k for mods in conv.adapters.values() for k in mods.values()]
    assert kinds and all(isinstance(k, DoRA) and k.axis == "in" for k in kinds)


@pytest.mark.parametrize(
    ("layout", "fmt"),
    [("kohya", "kohya"), ("diffusers", "diffusers"), ("peft_base_model", "peft"), ("comfy_aitoolkit", "comfyui"),
     ("xlabs", "xlabs"), ("fal_kontext", "flux-bfl"), ("onetrainer_bfl", "flux-bfl"), ("kohya_embedders", "kohya")],
)
def test_format_names(layout: str, fmt: str, real: dict[str, nn.Module]) -> None:
    conv = to_canonical(meta_state_dict(FL.LAYOUTS[layout]), None, real, source=layout, allow_meta=True)
    assert conv.format == fmt


def test_kohya_split_qkv_header_splits_meta_blocks(real: dict[str, nn.Module]) -> None:
    """sd-scripts split_qkv=True: down (3r, in), block-diagonal up; each part keeps its own rank-r block (and so
    alpha / r), read from the header flag when the tensors are meta."""
    r = 4
    listing = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (3 * r, 3072),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 3 * r),
        "lora_unet_single_blocks_0_linear1.lora_down.weight": (4 * r, 3072),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": (21504, 4 * r),
    }
    meta = {"ss_network_args": '{"split_qkv": "True"}', "ss_network_module": "networks.lora_flux"}
    conv = to_canonical(meta_state_dict(listing), meta, real, source="split", allow_meta=True)
    tr = conv.adapters["transformer"]
    assert {k.rank for k in tr.values()} == {r} and len(tr) == 7


# ------------------------------------------------------------------------------------------------------ Control LoRAs
def test_bfl_control_lora_is_refused_with_the_reason(real: dict[str, nn.Module]) -> None:
    listing = FL.LAYOUTS["bfl_control"]
    with pytest.raises(ControlLoRAError, match=r"x_embedder from 64 to 128 input channels.*q/k norm"):
        to_canonical(meta_state_dict(listing), None, real, source="control", allow_meta=True)
    with pytest.raises(ControlLoRAError):  # no model: the reference ([dev]) decides the same
        to_canonical(meta_state_dict(listing), None, None, source="control", allow_meta=True)


def test_diffusers_converted_control_lora_is_refused(real: dict[str, nn.Module]) -> None:
    """diffusers' own spelling of a Control LoRA: a (r, 128) x_embedder factor and norm_q / norm_k weights."""
    sd = {
        "transformer.x_embedder.lora_A.weight": (8, 128), "transformer.x_embedder.lora_B.weight": (3072, 8),
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (8, 3072),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 8),
    }
    with pytest.raises(ControlLoRAError, match="widens x_embedder"):
        to_canonical(meta_state_dict(sd), None, real, source="wide", allow_meta=True)
    norms = {k: v for k, v in sd.items() if "x_embedder" not in k} | {"transformer.transformer_blocks.0.attn.norm_q.weight": (128,)}
    with pytest.raises(ControlLoRAError, match=r"replaces 1 q/k norm"):
        to_canonical(meta_state_dict(norms), None, real, source="norms", allow_meta=True)
    # the same norm names on another family's model are no Control LoRA (reported as plain weights, not refused)
    sd3 = reference_components("sd3")
    assert to_canonical({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.empty(2, 1536, device="meta"),
                         "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.empty(1536, 2, device="meta")},
                        None, sd3, allow_meta=True).family == "sd3"
