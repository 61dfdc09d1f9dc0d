"""Hand-named Flux layouts against an explicit fp64 merge in BFL's own layout.

Each test writes random factors under BFL / kohya / ComfyUI / OneTrainer / XLabs / fal names, merges them into BFL's
fused weights (``qkv`` = q, k, v rows; single blocks' ``linear1`` = q, k, v, then the MLP input; ``final_layer``'s
adaLN = (shift, scale)), splits those back into diffusers' modules with the table below (written here from BFL's
``flux/model.py`` and diffusers' ``FluxTransformer2DModel``, not from lorakit's), and compares with the weights lorakit
fuses into a tiny fp64 pipeline. Random tensors, so a wrong split order, a lost swap or a wrong scale fails. Then the
unfused forward equals the fused one, unfuse puts every weight back bit for bit and unload leaves no trace.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache

import pytest
import torch
from torch import Tensor, nn

import lorakit
from lorakit.tiny import tiny_pipeline

DT = torch.float64


# ------------------------------------------------------------------------------------------------ BFL's fused layout
def bfl_linears(tr: nn.Module) -> dict[str, tuple[list[str], bool]]:
    """BFL Linear -> (diffusers modules holding its output rows, in order; whether the two halves are swapped)."""
    out: dict[str, tuple[list[str], bool]] = {}
    for i in range(len(tr.transformer_blocks)):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        out[f"{d}.img_attn.qkv"] = ([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v"], False)
        out[f"{d}.txt_attn.qkv"] = ([f"{b}.attn.add_q_proj", f"{b}.attn.add_k_proj", f"{b}.attn.add_v_proj"], False)
        out[f"{d}.img_attn.proj"] = ([f"{b}.attn.to_out.0"], False)
        out[f"{d}.txt_attn.proj"] = ([f"{b}.attn.to_add_out"], False)
        out[f"{d}.img_mlp.0"] = ([f"{b}.ff.net.0.proj"], False)
        out[f"{d}.img_mlp.2"] = ([f"{b}.ff.net.2"], False)
        out[f"{d}.txt_mlp.0"] = ([f"{b}.ff_context.net.0.proj"], False)
        out[f"{d}.txt_mlp.2"] = ([f"{b}.ff_context.net.2"], False)
        out[f"{d}.img_mod.lin"] = ([f"{b}.norm1.linear"], False)
        out[f"{d}.txt_mod.lin"] = ([f"{b}.norm1_context.linear"], False)
    for i in range(len(tr.single_transformer_blocks)):
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        out[f"{s}.linear1"] = ([f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"], False)
        out[f"{s}.linear2"] = ([f"{b}.proj_out"], False)
        out[f"{s}.modulation.lin"] = ([f"{b}.norm.linear"], False)
    out["img_in"] = (["x_embedder"], False)
    out["txt_in"] = (["context_embedder"], False)
    for bfl, emb in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        out[f"{bfl}.in_layer"] = ([f"time_text_embed.{emb}.linear_1"], False)
        out[f"{bfl}.out_layer"] = ([f"time_text_embed.{emb}.linear_2"], False)
    out["final_layer.linear"] = (["proj_out"], False)
    out["final_layer.adaLN_modulation.1"] = (["norm_out.linear"], True)
    return out


def fused_weight(tr: nn.Module, name: str) -> Tensor:
    paths, swap = bfl_linears(tr)[name]
    w = torch.cat([tr.get_submodule(p).weight.detach() for p in paths], 0).to(DT)
    return torch.cat(w.chunk(2, 0)[::-1], 0) if swap else w


def merged(tr: nn.Module, deltas: list[tuple[str, int, Tensor]]) -> dict[str, Tensor]:
    """``{diffusers path: W'}``: each ``(BFL Linear, first row, ΔW)`` added to the fused weight, split back."""
    fused: dict[str, Tensor] = {}
    for name, row, dw in deltas:
        w = fused.setdefault(name, fused_weight(tr, name).clone())
        w[row : row + dw.shape[0]] += dw
    out: dict[str, Tensor] = {}
    for name, w in fused.items():
        paths, swap = bfl_linears(tr)[name]
        if swap:
            w = torch.cat(w.chunk(2, 0)[::-1], 0)
        sizes = [tr.get_submodule(p).weight.shape[0] for p in paths]
        out.update(zip(paths, w.split(sizes, 0)))
    return out


# ---------------------------------------------------------------------------------------------------- random factors
class Gen:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, std: float = 0.3) -> Tensor:
        return torch.randn(*shape, generator=self.g, dtype=DT) * std


@cache
def _pipe() -> object:
    return tiny_pipeline("flux", dtype=DT)


def fresh() -> object:
    return lorakit.attach(copy.deepcopy(_pipe()))


def every_bfl(tr: nn.Module, blocks_only: bool = False) -> list[str]:
    names = list(bfl_linears(tr))
    return [n for n in names if n.startswith(("double_", "single_"))] if blocks_only else names


def lora_factors(tr: nn.Module, names: list[str], gen: Gen, rank: int = 3, alphas: bool = True):
    """``name -> (down, up, alpha or None)`` for BFL Linears (shapes of the fused weight)."""
    out = {}
    for i, name in enumerate(names):
        o, n_in = fused_weight(tr, name).shape
        out[name] = (gen(rank, n_in), gen(o, rank), (1.5 + 0.25 * i) if alphas else None)
    return out


def lora_deltas(factors) -> list[tuple[str, int, Tensor]]:
    return [(n, 0, (1.0 if a is None else a / d.shape[0]) * (u @ d)) for n, (d, u, a) in factors.items()]


# ----------------------------------------------------------------------------------------------------------- checks
@torch.no_grad()
def forward(tr: nn.Module) -> Tensor:
    g = torch.Generator().manual_seed(3)
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    return tr(
        hidden_states=torch.randn(1, 16, 64, generator=g, dtype=DT),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=g, dtype=DT),
        pooled_projections=torch.randn(1, 32, generator=g, dtype=DT),
        timestep=torch.tensor([0.7], dtype=DT), img_ids=ids.reshape(16, 3), txt_ids=torch.zeros(5, 3),
        guidance=torch.tensor([3.5], dtype=DT),
    ).sample


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {p: m.weight.detach().clone() for p, m in model.named_modules() if isinstance(m, nn.Linear)}


def check(sd: dict[str, Tensor], want: dict[str, dict[str, Tensor]], *, header: dict | None = None,
          rtol: float = 2e-6, fmt: str | None = None) -> object:
    """Load ``sd`` into a fresh tiny fp64 pipeline and compare with the reference weights ``want[component][path]``."""
    pipe = fresh()
    before = {c: _weights(getattr(pipe, c)) for c in ("transformer", "text_encoder", "text_encoder_2")}
    base_out = forward(pipe.transformer)
    snapshot = {k: v.clone() for k, v in sd.items()}
    src = sd if header is None else _file(sd, header)
    pipe.load_lora_weights(src, adapter_name="x")
    for k, v in sd.items():  # the caller's dict is unchanged
        assert torch.equal(v, snapshot[k]), k
    rep = pipe.lora_report("x")
    assert not rep.skipped, rep.summary()
    if fmt is not None:
        assert rep.format == fmt
    unfused = forward(pipe.transformer)
    pipe.fuse_lora(components=[])
    for comp, mods in before.items():
        model = getattr(pipe, comp)
        for path, w0 in mods.items():
            w = model.get_submodule(path).weight.detach()
            ref = want.get(comp, {}).get(path)
            if ref is None:
                assert torch.equal(w, w0), f"{comp}.{path} changed"
            else:
                err = float((w - ref).abs().max()) / max(float((ref - w0).abs().max()), 1e-30)
                assert err <= rtol, f"{comp}.{path}: rel. error {err:.2e}"
    fused = forward(pipe.transformer)
    scale = float((fused - base_out).abs().max())
    assert scale > 1e-3
    assert float((unfused - fused).abs().max()) <= 1e-5 * scale
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    for comp, mods in before.items():
        model = getattr(pipe, comp)
        for path, w0 in mods.items():
            assert torch.equal(model.get_submodule(path).weight, w0), f"{comp}.{path} not restored"
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(forward(pipe.transformer), base_out)
    return rep


def _file(sd: dict[str, Tensor], header: dict) -> str:
    import tempfile

    from safetensors.torch import save_file

    path = tempfile.mkdtemp() + "/lora.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata={k: str(v) for k, v in header.items()})
    return path


def _want(tr: nn.Module, deltas) -> dict[str, dict[str, Tensor]]:
    return {"transformer": merged(tr, deltas)}


# ------------------------------------------------------------------------------------------------ transformer layouts
def _write(factors, key: Callable[[str], str], down: str, up: str, alpha: bool) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    for name, (d, u, a) in factors.items():
        sd[f"{key(name)}.{down}"] = d
        sd[f"{key(name)}.{up}"] = u
        if alpha and a is not None:
            sd[f"{key(name)}.alpha"] = torch.tensor(a, dtype=DT)
    return sd


LAYOUTS = {
    # name: (key of a BFL name, down suffix, up suffix, has .alpha, expected format)
    "kohya": (lambda n: "lora_unet_" + n.replace(".", "_"), "lora_down.weight", "lora_up.weight", True, "kohya"),
    "comfy-kohya": (lambda n: "diffusion_model." + n, "lora_down.weight", "lora_up.weight", True, "comfyui"),
    "comfy-aitoolkit": (lambda n: "diffusion_model." + n, "lora_A.weight", "lora_B.weight", False, "comfyui"),
    "transformer-bfl": (lambda n: "transformer." + n, "lora_A.weight", "lora_B.weight", False, "flux-bfl"),
    "bare-bfl": (lambda n: n, "lora_A.weight", "lora_B.weight", False, "flux-bfl"),
    "fal-kontext": (lambda n: "base_model.model." + n, "lora_A.weight", "lora_B.weight", False, "flux-bfl"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bfl_named_layout_every_module(layout: str) -> None:
    key, down, up, alpha, fmt = LAYOUTS[layout]
    tr = _pipe().transformer
    factors = lora_factors(tr, every_bfl(tr), Gen(1), alphas=alpha)
    check(_write(factors, key, down, up, alpha), _want(tr, lora_deltas(factors)), fmt=fmt)


def test_kohya_split_qkv_blocks_keep_their_own_alpha_over_rank() -> None:
    """sd-scripts ``split_qkv=True``: each of q, k, v (and linear1's MLP part) is its own rank-r LoRA, stored as
    down = [A_q; A_k; A_v] and a block-diagonal up; the training scale is alpha / r per part (diffusers uses
    alpha / 3r)."""
    tr = _pipe().transformer
    gen, r, alpha = Gen(2), 2, 3.0
    sd: dict[str, Tensor] = {}
    deltas = []
    for name in ("double_blocks.0.img_attn.qkv", "double_blocks.1.txt_attn.qkv", "single_blocks.0.linear1"):
        paths = bfl_linears(tr)[name][0]
        sizes = [tr.get_submodule(p).weight.shape[0] for p in paths]
        downs = [gen(r, 32) for _ in sizes]
        ups = [gen(s, r) for s in sizes]
        block = torch.zeros(sum(sizes), r * len(sizes), dtype=DT)
        row = 0
        for i, (s, u, d) in enumerate(zip(sizes, ups, downs)):
            block[row : row + s, i * r : (i + 1) * r] = u
            deltas.append((name, row, alpha / r * (u @ d)))
            row += s
        k = "lora_unet_" + name.replace(".", "_")
        sd[f"{k}.lora_down.weight"] = torch.cat(downs, 0)
        sd[f"{k}.lora_up.weight"] = block
        sd[f"{k}.alpha"] = torch.tensor(alpha, dtype=DT)
    header = {"ss_network_module": "networks.lora_flux", "ss_network_args": json.dumps({"split_qkv": "True"})}
    check(sd, _want(tr, deltas))
    check(sd, _want(tr, deltas), header=header)


def test_onetrainer_bfl_split_parts() -> None:
    """OneTrainer's BFL export: q, k, v of ``qkv`` as ``.qkv.0/.1/.2`` and ``linear1`` as ``.linear1.0-3`` (q, k, v,
    MLP), each with its own factors and alpha, under ``transformer.`` with kohya suffixes."""
    tr = _pipe().transformer
    gen = Gen(3)
    sd: dict[str, Tensor] = {}
    deltas = []
    for j, name in enumerate(every_bfl(tr)):
        paths = bfl_linears(tr)[name][0]
        sizes = [tr.get_submodule(p).weight.shape[0] for p in paths]
        split = name.endswith(("qkv", "linear1"))
        parts = list(enumerate(sizes)) if split else [(None, sum(sizes))]
        row = 0
        for k, size in parts:
            key = f"transformer.{name}" + ("" if k is None else f".{k}")
            d, u, a = gen(2, fused_weight(tr, name).shape[1]), gen(size, 2), 1.0 + 0.5 * ((j + (k or 0)) % 3)
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = d, u
            sd[f"{key}.alpha"] = torch.tensor(a, dtype=DT)
            deltas.append((name, row, a / 2 * (u @ d)))
            row += size
    check(sd, _want(tr, deltas), fmt="flux-bfl")


def test_xlabs_processors() -> None:
    """XLabs: ``qkv_lora1``/``proj_lora1`` = image stream, ``qkv_lora2``/``proj_lora2`` = text stream of a double
    block; a single block's ``qkv_lora`` adds to the q, k, v rows of ``linear1`` (not the MLP rows) and ``proj_lora``
    to ``linear2``. No alphas: scale 1."""
    tr = _pipe().transformer
    gen = Gen(4)
    sd: dict[str, Tensor] = {}
    deltas = []

    def add(key: str, bfl: str, rows: int, n_in: int) -> None:
        d, u = gen(4, n_in), gen(rows, 4)
        sd[f"{key}.down.weight"], sd[f"{key}.up.weight"] = d, u
        deltas.append((bfl, 0, u @ d))

    for i in range(2):
        p = f"double_blocks.{i}"
        add(f"{p}.processor.qkv_lora1", f"{p}.img_attn.qkv", 96, 32)
        add(f"{p}.processor.proj_lora1", f"{p}.img_attn.proj", 32, 32)
        add(f"{p}.processor.qkv_lora2", f"{p}.txt_attn.qkv", 96, 32)
        add(f"{p}.processor.proj_lora2", f"{p}.txt_attn.proj", 32, 32)
        s = f"single_blocks.{i}"
        add(f"{s}.processor.qkv_lora", f"{s}.linear1", 96, 32)
        add(f"{s}.processor.proj_lora", f"{s}.linear2", 32, 160)
    check(sd, _want(tr, deltas), fmt="xlabs")


# ----------------------------------------------------------------------------------------- LyCORIS kinds on BFL names
def _kron_factors(gen: Gen, out: int, n_in: int):
    """LoKr factors whose first factor has 4 row blocks (so a split of 3 equal parts is no whole-block split for
    qkv: the exact dense fallback is exercised too)."""
    a = 4 if out % 4 == 0 else 2
    b = 2
    return gen(a, b), gen(out // a, 2), gen(2, n_in // b)


@pytest.mark.parametrize("algo", ["loha", "lokr", "full", "dora"])
def test_lycoris_kinds_on_bfl_names(algo: str) -> None:
    """kohya-LyCORIS files on BFL's model (``lora_unet_`` + BFL names): the fused projections are split row-wise by
    each kind's rule; the reference is each kind's formula on the fused BFL weight."""
    tr = _pipe().transformer
    gen = Gen(5)
    sd: dict[str, Tensor] = {}
    deltas = []
    names = ["double_blocks.0.img_attn.qkv", "double_blocks.1.txt_attn.qkv", "double_blocks.0.img_mlp.2",
             "single_blocks.1.linear1", "single_blocks.0.linear2", "final_layer.adaLN_modulation.1", "img_in"]
    doras: dict[str, Tensor] = {}
    for name in names:
        w = fused_weight(tr, name)
        out, n_in = w.shape
        k = "lora_unet_" + name.replace(".", "_")
        alpha = 2.0
        if algo == "loha":
            w1a, w1b, w2a, w2b = gen(out, 2), gen(2, n_in), gen(out, 2), gen(2, n_in)
            sd.update({f"{k}.hada_w1_a": w1a, f"{k}.hada_w1_b": w1b, f"{k}.hada_w2_a": w2a, f"{k}.hada_w2_b": w2b})
            dw = alpha / 2 * (w1a @ w1b) * (w2a @ w2b)
        elif algo == "lokr":
            w1, w2a, w2b = _kron_factors(gen, out, n_in)
            sd.update({f"{k}.lokr_w1": w1, f"{k}.lokr_w2_a": w2a, f"{k}.lokr_w2_b": w2b})
            dw = alpha / 2 * torch.kron(w1, w2a @ w2b)
        elif algo == "full":
            dw = gen(out, n_in, std=0.05)
            sd[f"{k}.diff"] = dw  # LyCORIS writes no alpha for full deltas
        else:  # DoRA, output-axis magnitude (LyCORIS wd_on_output=True): dora_scale (out, 1)
            d, u = gen(2, n_in), gen(out, 2)
            sd.update({f"{k}.lora_down.weight": d, f"{k}.lora_up.weight": u})
            v = w + alpha / 2 * (u @ d)
            m = v.norm(dim=1, keepdim=True) * (1 + 0.3 * torch.rand(out, 1, generator=gen.g, dtype=DT))
            sd[f"{k}.dora_scale"] = m
            doras[name] = m * v / v.norm(dim=1, keepdim=True)
            dw = doras[name] - w
        if algo != "full":
            sd[f"{k}.alpha"] = torch.tensor(alpha, dtype=DT)
        deltas.append((name, 0, dw))
    rep = check(sd, _want(tr, deltas), rtol=2e-5 if algo == "dora" else 2e-6)
    assert set(rep.components["transformer"].kinds) <= {"loha", "lokr", "full", "dora"}


def test_input_axis_dora_on_a_fused_projection_is_reported_not_split() -> None:
    """An input-axis magnitude (kohya / OneTrainer ``dora_scale`` (1, in)) normalises columns over every row of the
    fused ``qkv``: it cannot be split onto q, k, v exactly, so lorakit reports it (and loads the rest)."""
    gen = Gen(6)
    sd = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": gen(2, 32),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": gen(96, 2),
        "lora_unet_double_blocks_0_img_attn_qkv.dora_scale": 1 + gen(1, 32, std=0.1).abs(),
        "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": gen(2, 32),
        "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": gen(32, 2),
    }
    pipe = fresh()
    pipe.load_lora_weights(sd, adapter_name="x")
    rep = pipe.lora_report("x")
    skipped = {s.key: s for s in rep.skipped}
    assert set(skipped) == {k for k in sd if "qkv" in k}
    assert all(s.reason == "unsupported kind" and "input-axis" in s.detail for s in skipped.values())
    assert set(lorakit.get_manager(pipe.transformer).adapters["x"]) == {"transformer_blocks.0.attn.to_out.0"}


# ---------------------------------------------------------------------------------------------------- text encoders
@pytest.mark.parametrize(
    ("clip", "t5"),
    [("lora_te1_", "lora_te3_"), ("lora_te1_", "lora_te2_"),
     ("text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer.")],
    ids=["sd-scripts", "onetrainer", "comfyui"],
)
def test_text_encoders_clip_and_t5(clip: str, t5: str) -> None:
    """kohya ``lora_te1_`` / ComfyUI ``text_encoders.clip_l.transformer.`` (CLIP-L, transformers-4 paths) ->
    text_encoder; sd-scripts ``lora_te3_``, OneTrainer ``lora_te2_`` and ComfyUI ``text_encoders.t5xxl.`` (T5-XXL)
    -> text_encoder_2 (SD3 calls T5 text_encoder_3), with each module's own alpha."""
    pipe = _pipe()
    gen = Gen(7)
    sd: dict[str, Tensor] = {}
    want: dict[str, dict[str, Tensor]] = {"text_encoder": {}, "text_encoder_2": {}, "transformer": {}}
    for comp, prefix, leaves in (
        ("text_encoder", clip, ("self_attn.q_proj", "self_attn.out_proj", "mlp.fc1")),
        ("text_encoder_2", t5, ("SelfAttention.q", "SelfAttention.o", "DenseReluDense.wi_0", "DenseReluDense.wo")),
    ):
        model = getattr(pipe, comp)
        for path, mod in model.named_modules():
            if not isinstance(mod, nn.Linear) or not path.endswith(leaves):
                continue
            name = path if comp == "text_encoder_2" else "text_model." + path.removeprefix("text_model.")
            key = prefix + (name.replace(".", "_") if prefix.startswith("lora_") else name)
            d, u, a = gen(2, mod.in_features), gen(mod.out_features, 2), 0.5 + len(path) % 3
            sd.update({f"{key}.lora_down.weight": d, f"{key}.lora_up.weight": u, f"{key}.alpha": torch.tensor(a, dtype=DT)})
            want[comp][path] = mod.weight.detach() + a / 2 * (u @ d)
    name = "double_blocks.0.img_attn.qkv"
    f = lora_factors(pipe.transformer, [name], gen)
    sd.update(_write(f, LAYOUTS["kohya"][0], "lora_down.weight", "lora_up.weight", True))
    want["transformer"] = merged(pipe.transformer, lora_deltas(f))
    rep = check(sd, want)
    assert rep.components["text_encoder_2"].matched_modules == 8
