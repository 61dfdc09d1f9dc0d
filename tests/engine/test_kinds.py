"""Every adapter kind × layer type × dtype: fused == unfused == an independent reference formula.

For the LyCORIS kinds the reference is also the lycoris-lora module's own forward (its training path).
The reference formulas below are written from formats.md §4, independently of lorakit.kinds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.engine import AdapterManager
from lorakit.kinds import AdapterKind, DoRA, Full, LoHa, LoKr, LoRA

LAYERS = {
    "linear": lambda: nn.Linear(32, 48),
    "conv1x1": lambda: nn.Conv2d(16, 24, 1),
    "conv3x3": lambda: nn.Conv2d(16, 24, 3, padding=1, stride=1),
}


def _x(layer: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    shape = (3, 32) if layer == "linear" else (2, 16, 6, 6)
    return torch.randn(shape, generator=g).to(dtype)


def _rand(g: torch.Generator, *shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale


# ----------------------------------------------------------------------------------- reference formulas (fp64)
def ref_delta(kind: str, t: dict[str, torch.Tensor], wshape: torch.Size, base: torch.Tensor) -> torch.Tensor:
    d = {k: v.double() for k, v in t.items() if isinstance(v, torch.Tensor)}
    alpha = t.get("alpha")
    if kind.startswith("dora_"):
        inner = ref_delta(kind[5:].removesuffix("_in"), t, wshape, base)
        v = base.double() + inner
        if t["axis"] == "out":
            n = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (v.dim() - 1))
            m = d["magnitude"].reshape(n.shape)
        else:
            n = v.transpose(0, 1).reshape(v.shape[1], -1).norm(dim=1).reshape(1, -1, *[1] * (v.dim() - 2))
            m = d["magnitude"].reshape(n.shape)
        return m * v / (n + torch.finfo(torch.float32).eps) - base.double()
    if kind == "lora":
        r = d["down"].shape[0]
        s = 1.0 if alpha is None else alpha / r
        return s * (d["up"].reshape(wshape[0], r) @ d["down"].reshape(r, -1)).reshape(wshape)
    if kind == "lora_tucker":
        r = d["down"].shape[0]
        s = alpha / r
        full = torch.zeros(wshape, dtype=torch.float64)
        up, mid, down = d["up"][:, :, 0, 0], d["mid"], d["down"][:, :, 0, 0]
        for o in range(wshape[0]):
            # ΔW[o,i,y,x] = Σ_ab up[o,a] mid[a,b,y,x] down[b,i]
            full[o] = torch.einsum("a,abyx,bi->iyx", up[o], mid, down)
        return s * full
    if kind == "loha":
        r = d["w1b"].shape[0]
        return (alpha / r) * ((d["w1a"] @ d["w1b"]) * (d["w2a"] @ d["w2b"])).reshape(wshape)
    if kind == "loha_tucker":
        r = d["w1b"].shape[0]
        m1 = torch.einsum("abyx,ao,bi->oiyx", d["t1"], d["w1a"], d["w1b"])
        m2 = torch.einsum("abyx,ao,bi->oiyx", d["t2"], d["w2a"], d["w2b"])
        return (alpha / r) * m1 * m2
    if kind.startswith("lokr"):
        w1 = d["w1"] if "w1" in d else d["w1a"] @ d["w1b"]
        if "t2" in d:
            w2 = torch.einsum("abyx,ao,bi->oiyx", d["t2"], d["w2a"], d["w2b"])
        elif "w2" in d:
            w2 = d["w2"]
        else:
            w2 = d["w2a"] @ d["w2b"]
        r = d["w1b"].shape[0] if "w1b" in d else (d["w2b"].shape[0] if "w2b" in d else None)
        s = 1.0 if r is None else alpha / r
        # explicit Kronecker: out index a*ok+o, in index b*in_n+i (spatial dims carried by w2)
        w2 = w2.reshape(w2.shape[0], -1, *wshape[2:]) if len(wshape) == 4 else w2
        ol, im = w1.shape
        ok, inn = w2.shape[:2]
        full = torch.zeros(wshape, dtype=torch.float64)
        for a in range(ol):
            for b in range(im):
                full[a * ok : (a + 1) * ok, b * inn : (b + 1) * inn] = w1[a, b] * w2
        return s * full
    if kind == "full":
        return d["diff"].reshape(wshape)
    raise AssertionError(kind)


def ref_forward(layer: nn.Module, x: torch.Tensor, dw: torch.Tensor, db: torch.Tensor | None) -> torch.Tensor:
    w = layer.weight.double() + dw
    b = None if layer.bias is None else layer.bias.double() + (0 if db is None else db.double())
    if isinstance(layer, nn.Linear):
        return F.linear(x.double(), w, b)
    return F.conv2d(x.double(), w, b, layer.stride, layer.padding)


# ----------------------------------------------------------------------------------- kind factories
def make_kind(kind: str, layer: nn.Module, g: torch.Generator) -> tuple[AdapterKind, dict]:
    out, inn = layer.weight.shape[:2]
    k = layer.weight.shape[2] if layer.weight.dim() == 4 else None
    kk = (k or 1) ** 2
    r = 4
    t: dict = {}
    if kind.startswith("dora_"):
        inner, t = make_kind(kind[5:].removesuffix("_in"), layer, g)
        axis = "in" if kind.endswith("_in") else "out"
        t = dict(t)
        t["magnitude"] = torch.rand(out if axis == "out" else inn, generator=g) + 0.5
        t["axis"] = axis
        return DoRA(inner=inner, magnitude=t["magnitude"], axis=axis), t
    if kind == "lora":
        down = _rand(g, r, inn, *( (k, k) if k else ()))
        up = _rand(g, out, r, *((1, 1) if k else ()))
        t = {"down": down, "up": up, "alpha": 2.0}
        return LoRA(down=down, up=up, alpha=2.0), t
    if kind == "lora_tucker":
        t = {"down": _rand(g, r, inn, 1, 1), "mid": _rand(g, r, r, k, k), "up": _rand(g, out, r, 1, 1), "alpha": 3.0}
        return LoRA(down=t["down"], up=t["up"], mid=t["mid"], alpha=3.0), t
    if kind == "loha":
        t = {"w1a": _rand(g, out, r), "w1b": _rand(g, r, inn * kk), "w2a": _rand(g, out, r), "w2b": _rand(g, r, inn * kk)}
        t["alpha"] = 1.0
        return LoHa(t["w1a"], t["w1b"], t["w2a"], t["w2b"], alpha=1.0), t
    if kind == "loha_tucker":
        t = {
            "t1": _rand(g, r, r, k, k), "t2": _rand(g, r, r, k, k),
            "w1a": _rand(g, r, out), "w1b": _rand(g, r, inn), "w2a": _rand(g, r, out), "w2b": _rand(g, r, inn),
            "alpha": 2.0,
        }  # fmt: skip
        return LoHa(t["w1a"], t["w1b"], t["w2a"], t["w2b"], alpha=2.0, t1=t["t1"], t2=t["t2"]), t
    if kind == "lokr":  # both factors full: alpha ignored
        t = {"w1": _rand(g, 4, 4), "w2": _rand(g, out // 4, inn // 4, *((k, k) if k else ())), "alpha": 1e4}
        return LoKr(w1=t["w1"], w2=t["w2"], alpha=1e4), t
    if kind == "lokr_decomposed":
        t = {
            "w1a": _rand(g, 4, 2), "w1b": _rand(g, 2, 4),
            "w2a": _rand(g, out // 4, 2), "w2b": _rand(g, 2, (inn // 4) * kk), "alpha": 1.0,
        }  # fmt: skip
        return LoKr(w1a=t["w1a"], w1b=t["w1b"], w2a=t["w2a"], w2b=t["w2b"], alpha=1.0), t
    if kind == "lokr_tucker":
        t = {"w1": _rand(g, 4, 4), "t2": _rand(g, 2, 2, k, k), "w2a": _rand(g, 2, out // 4), "w2b": _rand(g, 2, inn // 4)}
        t["alpha"] = 1.0
        return LoKr(w1=t["w1"], t2=t["t2"], w2a=t["w2a"], w2b=t["w2b"], alpha=1.0), t
    if kind == "full":
        t = {"diff": _rand(g, *layer.weight.shape, scale=0.05), "diff_b": _rand(g, out, scale=0.05)}
        return Full(diff=t["diff"], diff_b=t["diff_b"]), t
    raise AssertionError(kind)


KINDS_ALL = ["lora", "loha", "lokr", "lokr_decomposed", "full", "dora_lora", "dora_loha", "dora_lokr", "dora_lora_in"]
KINDS_CONV_ONLY = ["lora_tucker", "loha_tucker", "lokr_tucker"]
CASES = [(k, layer) for layer in LAYERS for k in KINDS_ALL] + [(k, "conv3x3") for k in KINDS_CONV_ONLY]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("kind", "layer_name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_fused_equals_unfused_equals_reference(kind: str, layer_name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = LAYERS[layer_name]()
    with torch.no_grad():  # base values representable in `dtype`, so the reference sees the same base
        for p in layer.parameters():
            p.copy_(p.to(dtype).float())
    g = torch.Generator().manual_seed(sum(map(ord, kind + layer_name)))
    adapter, tensors = make_kind(kind, layer, g)
    ref_dw = ref_delta(kind, tensors, layer.weight.shape, layer.weight.detach())
    ref_db = tensors.get("diff_b")
    x = _x(layer_name, torch.float32)
    expected = ref_forward(layer, x, ref_dw, ref_db)

    model = nn.Sequential(layer.to(dtype))
    mgr = AdapterManager(model)
    mgr.add_adapter("a", {"0": adapter})  # fp32 adapter on a model of `dtype`
    unfused = model(x.to(dtype)).double()
    mgr.fuse()
    fused = model(x.to(dtype)).double()
    mgr.unfuse()

    scale = expected.abs().max().item()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    assert (unfused - expected).abs().max().item() <= tol * scale
    assert (fused - expected).abs().max().item() <= tol * scale
    assert (fused - unfused).abs().max().item() <= tol * scale
    # the delta itself (fp32 maths) matches the reference formula tightly, whatever the model dtype
    dw = adapter.delta_weight(layer.weight.detach().float())
    assert torch.allclose(dw.double(), ref_dw, rtol=1e-5, atol=1e-6 * ref_dw.abs().max().item())


def test_kind_shapes_are_checked() -> None:
    from lorakit.errors import ShapeMismatchError

    k = LoRA(down=torch.zeros(4, 31), up=torch.zeros(48, 4))
    with pytest.raises(ShapeMismatchError):
        k.check_shape(torch.Size([48, 32]), "m")
    bad_rank = LoRA(down=torch.zeros(4, 32), up=torch.zeros(48, 3))
    with pytest.raises(ShapeMismatchError, match="m"):
        bad_rank.check_shape(torch.Size([48, 32]), "m")
    LoRA(down=torch.zeros(4, 32), up=torch.zeros(48, 4)).check_shape(torch.Size([48, 32]))


def test_alpha_defaults_to_rank_and_scales() -> None:
    down, up = torch.randn(4, 8), torch.randn(6, 4)
    base = torch.zeros(6, 8)
    assert torch.allclose(LoRA(down, up).delta_weight(base), up @ down)
    assert torch.allclose(LoRA(down, up, alpha=2.0).delta_weight(base), 0.5 * up @ down)
    assert torch.allclose(LoRA(down, up, alpha=16.0).delta_weight(base), 4 * up @ down)  # alpha > rank kept
    assert torch.allclose(LoRA(down, up, alpha=0.5).delta_weight(base), up @ down / 8)  # fractional alpha kept


# ----------------------------------------------------------------------------------- LyCORIS forward parity
lycoris = pytest.importorskip("lycoris.modules")


def _lycoris_module(algo: str, layer: nn.Module, **kw: object) -> nn.Module:
    cls: Callable = {
        "locon": lycoris.LoConModule,
        "loha": lycoris.LohaModule,
        "lokr": lycoris.LokrModule,
        "full": lycoris.FullModule,
    }[algo]
    mod = cls("lyco_test", layer, multiplier=1.0, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name == "dora_scale":
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name != "scalar":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return mod


def _kind_from_lycoris(sd: dict[str, torch.Tensor], wshape: torch.Size) -> AdapterKind:
    """A test-local mapping of LyCORIS tensor names to canonical kinds (the real one lives in lorakit.formats)."""
    alpha = float(sd["alpha"]) if "alpha" in sd else None
    if "lora_down.weight" in sd:
        kind: AdapterKind = LoRA(sd["lora_down.weight"], sd["lora_up.weight"], alpha, sd.get("lora_mid.weight"))
    elif "hada_w1_a" in sd:
        kind = LoHa(sd["hada_w1_a"], sd["hada_w1_b"], sd["hada_w2_a"], sd["hada_w2_b"], alpha, sd.get("hada_t1"), sd.get("hada_t2"))
    elif any(k.startswith("lokr_") for k in sd):
        kind = LoKr(
            w1=sd.get("lokr_w1"), w1a=sd.get("lokr_w1_a"), w1b=sd.get("lokr_w1_b"),
            w2=sd.get("lokr_w2"), w2a=sd.get("lokr_w2_a"), w2b=sd.get("lokr_w2_b"), t2=sd.get("lokr_t2"), alpha=alpha,
        )  # fmt: skip
    else:
        kind = Full(diff=sd["diff"], diff_b=sd.get("diff_b"))
    if "dora_scale" in sd:
        m = sd["dora_scale"]
        axis = "out" if m.shape[0] == wshape[0] and m.numel() == wshape[0] else "in"
        kind = DoRA(kind, m.flatten(), axis)
    return kind


LYCO_CASES = [
    ("locon", "linear", {"lora_dim": 4, "alpha": 2}),
    ("locon", "conv3x3", {"lora_dim": 4, "alpha": 2}),
    ("locon", "conv1x1", {"lora_dim": 4, "alpha": 8}),
    ("locon", "conv3x3", {"lora_dim": 4, "alpha": 2, "use_tucker": True}),
    ("locon", "linear", {"lora_dim": 4, "alpha": 2, "weight_decompose": True}),
    ("locon", "conv3x3", {"lora_dim": 4, "alpha": 2, "weight_decompose": True, "wd_on_out": False}),
    ("locon", "linear", {"lora_dim": 4, "alpha": 2, "weight_decompose": True, "wd_on_out": False}),
    ("loha", "linear", {"lora_dim": 4, "alpha": 1}),
    ("loha", "conv3x3", {"lora_dim": 4, "alpha": 1}),
    ("loha", "conv3x3", {"lora_dim": 4, "alpha": 2, "use_tucker": True}),
    ("loha", "linear", {"lora_dim": 4, "alpha": 1, "weight_decompose": True}),
    ("lokr", "linear", {"lora_dim": 4, "alpha": 1}),
    ("lokr", "linear", {"lora_dim": 2, "alpha": 1, "decompose_both": True, "factor": 4}),
    ("lokr", "conv3x3", {"lora_dim": 2, "alpha": 1}),
    ("lokr", "conv3x3", {"lora_dim": 2, "alpha": 1, "use_tucker": True}),
    ("lokr", "conv1x1", {"lora_dim": 4, "alpha": 1, "full_matrix": True}),
    ("lokr", "linear", {"lora_dim": 2, "alpha": 1, "weight_decompose": True, "decompose_both": True}),
    ("full", "linear", {}),
    ("full", "conv3x3", {}),
]


@pytest.mark.parametrize(("algo", "layer_name", "kw"), LYCO_CASES, ids=[f"{a}-{n}-{i}" for i, (a, n, _) in enumerate(LYCO_CASES)])
def test_matches_lycoris_forward(algo: str, layer_name: str, kw: dict) -> None:
    torch.manual_seed(1)
    layer = LAYERS[layer_name]()
    mod = _lycoris_module(algo, layer, **kw)
    x = _x(layer_name, torch.float32)
    with torch.no_grad():
        expected = mod(x)
        base = layer(x)
    assert (expected - base).abs().max() > 1e-3  # the reference adapter does something
    if algo == "full":  # its custom_state_dict assumes apply_to() ran; take the diff it applies instead
        diff, diff_b = mod.get_diff_weight()
        sd = {"diff": diff.detach().clone()} | ({} if diff_b is None else {"diff_b": diff_b.detach().clone()})
    else:
        sd = {k: v.detach().clone() for k, v in mod.custom_state_dict().items()}
    kind = _kind_from_lycoris(sd, layer.weight.shape)
    model = nn.Sequential(layer)
    mgr = AdapterManager(model)
    mgr.add_adapter("lyco", {"0": kind})
    with torch.no_grad():
        unfused = model(x)
        mgr.fuse()
        fused = model(x)
    scale = expected.abs().max()
    assert (unfused - expected).abs().max() <= 1e-5 * scale
    assert (fused - expected).abs().max() <= 1e-5 * scale
    assert math.isfinite(float(scale))


# ----------------------------------------------------------------------------------- key vocabulary (the registry)
def _read_back(tensors: dict[str, torch.Tensor], style: str) -> AdapterKind:
    """What the registry makes of one module's keys written in ``style``: suffix -> role by the kinds' own
    vocabularies, the single claiming kind builds itself, alpha applied, the wrappers wrap."""
    from lorakit import kinds
    from lorakit.kinds.vocab import KeySource

    by_suffix = {s.text: s.role for k in (*kinds.KINDS, *kinds.WRAPPERS) for s in k.SUFFIXES if s.style == style}
    roles = {by_suffix[sfx] if sfx != "alpha" else "alpha": t for sfx, t in tensors.items()}
    claimants = [k for k in kinds.KINDS if k.claims(roles)]
    assert len(claimants) == 1, claimants
    alpha = roles.get("alpha")
    kind = claimants[0].from_roles(roles, KeySource()).with_alpha(None if alpha is None else float(alpha))
    for wrapper in kinds.WRAPPERS:
        kind, _ = wrapper.wrap(kind, roles)
    return kind


#: the kinds PEFT has names for: LoRA without a Tucker core, and output-axis DoRA over it
PEFT_NAMED = {"lora", "dora_lora"}


@pytest.mark.parametrize(("kind", "layer_name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_written_tensors_read_back_through_the_registry(kind: str, layer_name: str) -> None:
    """Each kind writes only suffixes of its own vocabulary, and what it writes rebuilds the same delta (kohya /
    LyCORIS names always; PEFT names where the kind has them)."""
    from lorakit.kinds.vocab import KOHYA, PEFT

    layer = LAYERS[layer_name]()
    g = torch.Generator().manual_seed(sum(map(ord, kind + layer_name)) + 1)
    adapter, _ = make_kind(kind, layer, g)
    base = layer.weight.detach()
    want = adapter.delta_weight(base)
    assert (adapter.peft_tensors() is None) == (kind not in PEFT_NAMED)
    for style, tensors in ((KOHYA, adapter.lycoris_tensors()), (PEFT, adapter.peft_tensors())):
        if tensors is None:
            continue
        back = _read_back(dict(tensors), style)
        if style == PEFT:  # PEFT files carry no alpha: a LoraConfig does; the scale is the caller's
            back = back.with_alpha(adapter.alpha)
        assert type(back) is type(adapter) and back.rank == adapter.rank
        torch.testing.assert_close(back.delta_weight(base), want, rtol=1e-6, atol=1e-7)
        back.check_fits(base.shape, "m", has_bias=layer.bias is not None)


def test_registry_lists_every_kind_once_with_its_vocabulary() -> None:
    from lorakit import kinds

    listed = [*kinds.KINDS, *kinds.WRAPPERS, *kinds.NOT_APPLIED]
    assert len(set(listed)) == len(listed)
    for k in listed:
        assert k.SUFFIXES and k.display != "adapter" and k.kind_name != "base", k
    # the multiplicative kinds are claimed by their own rules (OFT 3-D blocks, BOFT 4-D, (IA)^3 on_input, GLoRA a1..b2)
    def claimants(roles: dict[str, torch.Tensor]) -> list[str]:
        return [k.kind_name for k in (*kinds.KINDS, *kinds.NOT_APPLIED) if k.claims(roles)]

    assert claimants({"oft_blocks": torch.zeros(2, 4, 4)}) == ["oft"]
    assert claimants({"oft_diag": torch.zeros(2, 4, 4)}) == ["oft"]
    assert claimants({"oft_blocks": torch.zeros(2, 2, 4, 4), "rescale": torch.zeros(8, 1)}) == ["boft"]
    assert claimants({"weight": torch.zeros(4), "on_input": torch.zeros(())}) == ["ia3"]
    assert claimants({f"glora_{n}": torch.zeros(2, 2) for n in ("a1", "a2", "b1", "b2")}) == ["glora"]
    assert not claimants({"weight": torch.zeros(4)})


def test_check_fits_norm_layers_and_bias() -> None:
    from lorakit.errors import ShapeMismatchError

    full = Full(diff=torch.ones(8), diff_b=torch.ones(8))
    full.check_fits(torch.Size([8]), "norm", norm=True)
    lora = LoRA(down=torch.zeros(2, 8), up=torch.zeros(8, 2), bias=torch.zeros(8))
    with pytest.raises(ShapeMismatchError, match="norm layer"):
        lora.check_fits(torch.Size([8]), "norm", norm=True)
    with pytest.raises(ShapeMismatchError, match="no bias"):
        lora.check_fits(torch.Size([8, 8]), "m", has_bias=False)
    lora.check_fits(torch.Size([8, 8]), "m", has_bias=True)
