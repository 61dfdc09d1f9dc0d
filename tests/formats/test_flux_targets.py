"""The Flux.1 BFL <-> diffusers module map (lorakit.targets.flux).

* tiny model: every entry lands on existing ``nn.Linear`` modules whose rows add up to the BFL module's shape (written
  here from BFL's architecture, independently of the table), and BFL's block / final-layer forward passes computed
  from the fused weights the table implies equal diffusers' blocks (fp64), so a wrong split order or a missing swap
  fails;
* real size (FLUX.1 [dev], CLIP-L, T5-XXL on the meta device): every module of every listing in ``flux_listings``
  resolves, and its LoRA shapes (down (r, in), up (out_total, r), ...) fit.
"""

from __future__ import annotations

import re

import flux_listings as FL
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.targets import flux
from lorakit.tiny import tiny_components

Entry = tuple[str, tuple[str, ...], str]


# ----------------------------------------------------------------------------------------------------------- helpers
def bfl_shapes(n_double: int, n_single: int, d: int, mlp: int, in_ch: int, ctx: int, vec: int, out_ch: int) -> dict:
    """(out, in) of every Linear of BFL's Flux model (flux/model.py, flux/modules/layers.py) and its LoRA spellings."""
    s: dict[str, tuple[int, int]] = {
        "img_in": (d, in_ch),
        "img_in.proj": (d, in_ch),
        "txt_in": (d, ctx),
        "time_in.in_layer": (d, 256),
        "time_in.out_layer": (d, d),
        "vector_in.in_layer": (d, vec),
        "vector_in.out_layer": (d, d),
        "guidance_in.in_layer": (d, 256),
        "guidance_in.out_layer": (d, d),
        "final_layer.linear": (out_ch, d),
        "final_layer.adaLN_modulation.1": (2 * d, d),
    }
    for i in range(n_double):
        p = f"double_blocks.{i}"
        for side, n in (("img", "1"), ("txt", "2")):
            s[f"{p}.{side}_attn.qkv"] = (3 * d, d)
            s[f"{p}.{side}_attn.proj"] = (d, d)
            s[f"{p}.{side}_mlp.0"] = (mlp, d)
            s[f"{p}.{side}_mlp.2"] = (d, mlp)
            s[f"{p}.{side}_mod.lin"] = (6 * d, d)
            s[f"{p}.processor.qkv_lora{n}"] = (3 * d, d)
            s[f"{p}.processor.proj_lora{n}"] = (d, d)
            for k in range(3):
                s[f"{p}.{side}_attn.qkv.{k}"] = (d, d)
    for i in range(n_single):
        p = f"single_blocks.{i}"
        s[f"{p}.linear1"] = (3 * d + mlp, d)
        s[f"{p}.linear2"] = (d, d + mlp)
        s[f"{p}.modulation.lin"] = (3 * d, d)
        s[f"{p}.processor.qkv_lora"] = (3 * d, d)
        s[f"{p}.processor.proj_lora"] = (d, d + mlp)
        # the same two XLabs keys as the attention-processor suffix "_lora.down.weight" splits them
        s[f"{p}.processor.qkv"] = (3 * d, d)
        s[f"{p}.processor.proj"] = (d, d + mlp)
        for k, rows in enumerate((d, d, d, mlp)):
            s[f"{p}.linear1.{k}"] = (rows, d)
    return s


def shapes_of(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {p: tuple(m.weight.shape) for p, m in model.named_modules() if isinstance(m, nn.Linear)}


def fused(model: nn.Module, entry: Entry, what: str = "weight") -> torch.Tensor:
    """The BFL tensor the entry says the diffusers modules hold (rows concatenated / halves swapped back)."""
    _, paths, op = entry
    parts = [getattr(model.get_submodule(p), what) for p in paths]
    t = torch.cat(parts, 0)
    if op == "swap":
        t = torch.cat(t.chunk(2, 0)[::-1], 0)
    return t


def entries_by_name(model: nn.Module) -> dict[str, Entry]:
    out = {e[0]: e for e in flux.bfl_entries(model)}
    assert len(out) == len(flux.bfl_entries(model)), "duplicate BFL names"
    return out


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return tiny_components("flux", seed=3, dtype=torch.float64)["transformer"]


# ------------------------------------------------------------------------------------------------------ tiny model
def test_is_flux(tiny: nn.Module) -> None:
    assert flux.is_flux(tiny)
    sd3 = tiny_components("sd3", with_t5=False)
    assert not flux.is_flux(sd3["transformer"]) and not flux.is_flux(sd3["text_encoder"])
    assert not flux.is_flux(nn.Linear(2, 2))


def test_every_entry_lands_and_adds_up(tiny: nn.Module) -> None:
    cfg = tiny.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    ref = bfl_shapes(cfg.num_layers, cfg.num_single_layers, d, 4 * d, cfg.in_channels, cfg.joint_attention_dim,
                     cfg.pooled_projection_dim, cfg.patch_size**2 * (cfg.out_channels or cfg.in_channels))
    own = shapes_of(tiny)
    entries = entries_by_name(tiny)
    assert set(entries) == set(ref)  # every BFL / kohya / XLabs / OneTrainer name, nothing else
    for name, paths, op in entries.values():
        assert op in ("direct", "split", "swap"), name
        assert all(p in own for p in paths), (name, paths)
        rows, ins = [own[p][0] for p in paths], {own[p][1] for p in paths}
        assert ins == {ref[name][1]}, name
        assert sum(rows) == ref[name][0], (name, rows, ref[name])
        assert (len(paths) > 1) == (op == "split"), name
        if op == "swap":
            assert rows[0] % 2 == 0
    # underscored spellings (kohya) stay distinct from each other and from the model's own paths
    flat = [n.replace(".", "_") for n in entries]
    assert len(set(flat)) == len(flat)
    assert not set(flat) & {p.replace(".", "_") for p in own}
    # the unequal split of linear1: q, k, v (d rows each) then the MLP (4d rows)
    l1 = entries["single_blocks.1.linear1"]
    assert [own[p][0] for p in l1[1]] == [d, d, d, 4 * d] and l1[1][-1].endswith("proj_mlp")


def test_schnell_has_no_guidance_targets() -> None:
    from diffusers import FluxTransformer2DModel

    m = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                               num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                               guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    own = shapes_of(m)
    missing = {n for n, paths, _ in flux.bfl_entries(m) if not all(p in own for p in paths)}
    assert missing == {"guidance_in.in_layer", "guidance_in.out_layer"}


def test_norm_params_exist(tiny: nn.Module) -> None:
    params = dict(tiny.named_parameters())
    pairs = flux.bfl_norm_params(tiny)
    assert len(pairs) == 4 * tiny.config.num_layers + 2 * tiny.config.num_single_layers
    for _, p in pairs:
        assert tuple(params[p].shape) == (tiny.config.attention_head_dim,), p


# BFL's forward passes, written from flux/modules/layers.py (DoubleStreamBlock, SingleStreamBlock, LastLayer) in terms
# of the fused BFL tensors; attention without positional embedding (diffusers' blocks skip RoPE when given None).
def _ln(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _lin(m: nn.Module, e: dict[str, Entry], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, fused(m, e[name]), fused(m, e[name], "bias"))


def _heads(qkv: torch.Tensor, h: int) -> tuple[torch.Tensor, ...]:
    b, n, _ = qkv.shape
    return tuple(qkv.view(b, n, 3, h, -1).permute(2, 0, 3, 1, 4))  # "B L (K H D) -> K B H L D"


def _rms(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    o = F.scaled_dot_product_attention(q, k, v)
    return o.permute(0, 2, 1, 3).flatten(2)


def _randomize_norms(m: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for p, prm in m.named_parameters():
        if ".norm_" in p:
            prm.data = 1 + 0.5 * torch.randn(prm.shape, generator=g, dtype=prm.dtype)


def test_double_block_matches_bfl(tiny: nn.Module) -> None:
    _randomize_norms(tiny)
    e = entries_by_name(tiny)
    norms = {bfl: dict(tiny.named_parameters())[p] for bfl, p in flux.bfl_norm_params(tiny)}
    h, i, p = tiny.config.num_attention_heads, 1, "double_blocks.1"
    g = torch.Generator().manual_seed(1)
    img, txt, vec = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 6, 32), (2, 5, 32), (2, 32)))

    mods = {}
    for side in ("img", "txt"):
        mods[side] = _lin(tiny, e, f"{p}.{side}_mod.lin", F.silu(vec))[:, None, :].chunk(6, -1)
    qs, ks, vs = [], [], []
    for side, x in (("txt", txt), ("img", img)):
        shift, scale = mods[side][0], mods[side][1]
        q, k, v = _heads(_lin(tiny, e, f"{p}.{side}_attn.qkv", (1 + scale) * _ln(x) + shift), h)
        qs.append(_rms(q, norms[f"{p}.{side}_attn.norm.query_norm.scale"]))
        ks.append(_rms(k, norms[f"{p}.{side}_attn.norm.key_norm.scale"]))
        vs.append(v)
    a = _attn(torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2))
    attn = {"txt": a[:, : txt.shape[1]], "img": a[:, txt.shape[1] :]}
    out = {}
    for side, x in (("img", img), ("txt", txt)):
        m = mods[side]
        x = x + m[2] * _lin(tiny, e, f"{p}.{side}_attn.proj", attn[side])
        y = F.gelu(_lin(tiny, e, f"{p}.{side}_mlp.0", (1 + m[4]) * _ln(x) + m[3]), approximate="tanh")
        out[side] = x + m[5] * _lin(tiny, e, f"{p}.{side}_mlp.2", y)

    with torch.no_grad():
        d_txt, d_img = tiny.transformer_blocks[i](img, txt, vec, image_rotary_emb=None)
    torch.testing.assert_close(d_img, out["img"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_txt, out["txt"], rtol=1e-10, atol=1e-10)


def test_single_block_and_final_layer_match_bfl(tiny: nn.Module) -> None:
    _randomize_norms(tiny)
    e = entries_by_name(tiny)
    norms = {bfl: dict(tiny.named_parameters())[p] for bfl, p in flux.bfl_norm_params(tiny)}
    h, d, p = tiny.config.num_attention_heads, 32, "single_blocks.1"
    g = torch.Generator().manual_seed(2)
    txt, img, vec = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((2, 5, d), (2, 6, d), (2, d)))
    x = torch.cat([txt, img], 1)

    shift, scale, gate = _lin(tiny, e, f"{p}.modulation.lin", F.silu(vec))[:, None, :].chunk(3, -1)
    qkv, mlp = _lin(tiny, e, f"{p}.linear1", (1 + scale) * _ln(x) + shift).split([3 * d, 4 * d], -1)
    q, k, v = _heads(qkv, h)
    q = _rms(q, norms[f"{p}.norm.query_norm.scale"])
    k = _rms(k, norms[f"{p}.norm.key_norm.scale"])
    ref = x + gate * _lin(tiny, e, f"{p}.linear2", torch.cat([_attn(q, k, v), F.gelu(mlp, approximate="tanh")], 2))
    with torch.no_grad():
        d_txt, d_img = tiny.single_transformer_blocks[1](img, txt, vec, image_rotary_emb=None)
    torch.testing.assert_close(torch.cat([d_txt, d_img], 1), ref, rtol=1e-10, atol=1e-10)

    # final layer: BFL's adaLN_modulation gives (shift, scale), diffusers' norm_out (scale, shift)
    shift, scale = _lin(tiny, e, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, 1)
    ref = _lin(tiny, e, "final_layer.linear", (1 + scale[:, None]) * _ln(img) + shift[:, None])
    with torch.no_grad():
        got = tiny.proj_out(tiny.norm_out(img, vec))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------------------ real size
@pytest.fixture(scope="module")
def real() -> dict[str, nn.Module]:
    return FL.real_models()


# (prefix, component, spelling): the file's module-name prefixes, written from the producers' conventions
PREFIXES = [
    ("lora_unet_", "transformer"), ("lora_transformer_", "transformer"), ("diffusion_model.", "transformer"),
    ("base_model.model.", "transformer"), ("transformer.", "transformer"),
    ("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2"), ("lora_te3_", "text_encoder_2"),
    ("", "transformer"),
]
ROLES = re.compile(
    r"\.(lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|lora_B\.bias|down\.weight|up\.weight|"
    r"alpha|dora_scale|scale)$"
)


def _targets(models: dict[str, nn.Module]) -> dict[str, dict[str, tuple[tuple[str, ...], str]]]:
    """component -> {module name in any spelling: (diffusers paths, op)}."""
    out: dict[str, dict[str, tuple[tuple[str, ...], str]]] = {}
    for comp, m in models.items():
        t: dict[str, tuple[tuple[str, ...], str]] = {}
        for p in shapes_of(m):
            for v in {p, "text_model." + p}:
                t[v] = t[v.replace(".", "_")] = ((p,), "direct")
        if comp == "transformer":
            for name, paths, op in flux.bfl_entries(m):
                t[name] = t[name.replace(".", "_")] = (paths, op)
        out[comp] = t
    return out


def _modules(keys: dict[str, tuple[int, ...]]) -> dict[tuple[str, str], dict[str, tuple[int, ...]]]:
    """(prefix, module name) -> {role: shape}."""
    out: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for key, shape in keys.items():
        m = ROLES.search(key)
        assert m, key
        stem = key[: m.start()]
        prefix = next(p for p, _ in PREFIXES if stem.startswith(p))
        out.setdefault((prefix, stem[len(prefix) :]), {})[m.group(1)] = shape
    return out


@pytest.mark.parametrize("layout", list(FL.LAYOUTS))
def test_real_listing_lands(layout: str, real: dict[str, nn.Module]) -> None:
    targets = _targets(real)
    shapes = {c: shapes_of(m) for c, m in real.items()}
    params = {p: tuple(t.shape) for p, t in real["transformer"].named_parameters()}
    norms = dict(flux.bfl_norm_params(real["transformer"]))
    comp_of = dict(PREFIXES)
    mods = _modules(FL.LAYOUTS[layout])
    assert mods
    for (prefix, name), roles in mods.items():
        comp = comp_of[prefix]
        where = f"{layout}: {prefix}{name}"
        if set(roles) == {"scale"}:  # Control LoRA q/k norm scales: full replacement tensors
            assert params[norms[f"{name}.scale"]] == roles["scale"], where
            continue
        assert name in targets[comp], f"{where} does not resolve"
        paths, op = targets[comp][name]
        out_total = sum(shapes[comp][p][0] for p in paths)
        ins = {shapes[comp][p][1] for p in paths}
        assert len(ins) == 1, where
        (inp,) = ins
        down = roles.get("lora_down.weight") or roles.get("lora_A.weight") or roles.get("down.weight")
        up = roles.get("lora_up.weight") or roles.get("lora_B.weight") or roles.get("up.weight")
        assert down is not None and up is not None, where
        assert down[0] == up[1], where
        if layout == "bfl_control" and name == "img_in":
            # Control LoRAs widen x_embedder's input (64 latent + 64 control channels); diffusers zero-pads the base
            assert (down[1], inp) == (2 * inp, inp), where
        else:
            assert down[1] == inp, (where, down, inp)
        assert up[0] == out_total, (where, up, out_total, paths)
        if "lora_B.bias" in roles:
            assert roles["lora_B.bias"] == (out_total,), where
        if "dora_scale" in roles:  # OneTrainer / kohya DoRA magnitude: one value per input column
            assert roles["dora_scale"] == (1, inp), where
        if "alpha" in roles:
            assert roles["alpha"] == (), where


def test_listings_cover_every_module_kind() -> None:
    names = {re.sub(r"\d+", "N", k) for sd in FL.LAYOUTS.values() for k in sd}
    for kind in (
        "lora_unet_double_blocks_N_img_attn_qkv.", "lora_unet_double_blocks_N_txt_attn_qkv.",
        "lora_unet_double_blocks_N_img_attn_proj.", "lora_unet_double_blocks_N_txt_attn_proj.",
        "lora_unet_double_blocks_N_img_mlp_N.", "lora_unet_double_blocks_N_txt_mlp_N.",
        "lora_unet_double_blocks_N_img_mod_lin.", "lora_unet_double_blocks_N_txt_mod_lin.",
        "lora_unet_single_blocks_N_linearN.", "lora_unet_single_blocks_N_modulation_lin.",
        "lora_unet_img_in.", "lora_unet_txt_in.", "lora_unet_time_in_in_layer.", "lora_unet_vector_in_out_layer.",
        "lora_unet_guidance_in_in_layer.", "lora_unet_final_layer_linear.", "lora_unet_final_layer_adaLN_modulation_N.",
        "lora_teN_text_model_encoder_layers_N_self_attn_q_proj.", "lora_teN_encoder_block_N_layer_N_SelfAttention_q.",
        "double_blocks.N.processor.qkv_loraN.", "final_layer.adaLN_modulation.N.lora_B.", "img_in.lora_A.",
        "double_blocks.N.img_attn.norm.query_norm.scale", "single_blocks.N.norm.key_norm.scale",
        "transformer.double_blocks.N.img_attn.qkv.N.", "transformer.single_blocks.N.linearN.N.",
        "diffusion_model.single_blocks.N.linearN.", "base_model.model.double_blocks.N.txt_attn.qkv.",
        "transformer.norm_out.linear.", "transformer.single_transformer_blocks.N.proj_mlp.",
    ):
        assert any(n.startswith(kind) for n in names), kind
