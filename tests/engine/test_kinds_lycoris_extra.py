"""OFT, BOFT, (IA)³ and GLoRA kinds against lycoris-lora 4.1.3's own module forward (its training path).

Each case builds the LyCORIS module on a layer, sets every trainable tensor to random non-trivial values, and checks
that the layer run with ``W + delta_weight(W)`` gives the module's forward output. The kohya OFT convention is checked
against an explicit fp64 formula written here from kohya sd-scripts' published facts (``networks/oft.py``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lorakit.errors import HotswapError, ShapeMismatchError
from lorakit.kinds.base import AdapterKind
from lorakit.kinds.boft import BOFT
from lorakit.kinds.glora import GLoRA
from lorakit.kinds.ia3 import IA3
from lorakit.kinds.oft import OFT

lycoris = pytest.importorskip("lycoris.modules")

LAYERS = {
    "linear": lambda: nn.Linear(32, 48),
    "conv1x1": lambda: nn.Conv2d(16, 24, 1),
    "conv3x3": lambda: nn.Conv2d(16, 24, 3, padding=1),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: max |error| relative to max |output|
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _x(layer: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    shape = (3, 32) if layer == "linear" else (2, 16, 6, 6)
    return torch.randn(shape, generator=g).to(dtype)


def _layer(name: str) -> nn.Module:
    torch.manual_seed(1)
    return LAYERS[name]()


def _run(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding)


def _randomise(mod: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name == "rescale":
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name == "weight" and isinstance(mod, lycoris.IA3Module):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.startswith("oft_blocks"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name != "scalar":
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def _tensors(mod: nn.Module) -> dict[str, torch.Tensor]:
    sd = mod.custom_state_dict()
    if sd is None:
        sd = mod.state_dict()
    return {k: v.detach().clone() for k, v in sd.items()}


def _kind(algo: str, sd: dict[str, torch.Tensor]) -> AdapterKind:
    """A test-local mapping of LyCORIS tensor names to the kinds (the real one belongs to lorakit.formats)."""
    if algo == "oft":
        return OFT(sd["oft_blocks"], alpha=float(sd["alpha"]), rescale=sd.get("rescale"))
    if algo == "boft":
        return BOFT(sd["oft_blocks"], alpha=float(sd["alpha"]), rescale=sd.get("rescale"))
    if algo == "ia3":
        assert sd["on_input"].dtype == torch.int64  # the integer flag files carry
        return IA3(sd["weight"], on_input=bool(sd["on_input"]))
    return GLoRA(sd["a1.weight"], sd["a2.weight"], sd["b1.weight"], sd["b2.weight"], alpha=float(sd["alpha"]))


def _module(algo: str, layer: nn.Module, multiplier: float = 1.0, **kw: object) -> nn.Module:
    cls = {
        "oft": lycoris.DiagOFTModule,
        "boft": lycoris.ButterflyOFTModule,
        "ia3": lycoris.IA3Module,
        "glora": lycoris.GLoRAModule,
    }[algo]
    mod = cls("lyco_test", layer, multiplier=multiplier, **kw)
    _randomise(mod)
    return mod


CASES = [
    ("oft", {"lora_dim": 4}),
    ("oft", {"lora_dim": 4, "constraint": 5e-3}),  # constraint·out below ‖Q‖: the norm limit is active
    ("oft", {"lora_dim": 4, "rescaled": True, "constraint": 1.0}),  # constraint inactive
    ("boft", {"lora_dim": 8}),
    ("boft", {"lora_dim": 8, "constraint": 5e-3, "rescaled": True}),
    ("ia3", {}),
    ("ia3", {"train_on_input": True}),
    ("glora", {"lora_dim": 4, "alpha": 2}),
]
PARAMS = [
    pytest.param(algo, kw, layer, dtype, id=f"{algo}{i}-{layer}-{dname}")
    for i, (algo, kw) in enumerate(CASES)
    for layer in LAYERS
    for dname, dtype in DTYPES.items()
]


@pytest.mark.parametrize(("algo", "kw", "layer_name", "dtype"), PARAMS)
def test_matches_lycoris_forward(algo: str, kw: dict, layer_name: str, dtype: torch.dtype) -> None:
    layer = _layer(layer_name)
    mod = _module(algo, layer, **kw)
    layer.to(dtype)
    mod.to(dtype)
    x = _x(layer_name, dtype)
    with torch.no_grad():
        expected = mod(x).float()
        base = layer(x).float()
    scale = float(expected.abs().max())
    assert float((expected - base).abs().max()) > 0.02 * scale  # the reference adapter does something

    kind = _kind(algo, _tensors(mod))
    w = layer.weight.detach()
    kind.check_shape(w.shape, "lyco_test")
    delta = kind.delta_weight(w)
    assert delta.dtype == torch.float32 and delta.shape == w.shape
    with torch.no_grad():
        got = _run(layer, x, (w.float() + delta).to(dtype)).float()
    assert float((got - expected).abs().max()) <= TOL[dtype] * scale

    # strength 0 leaves the base weight bit for bit
    assert torch.equal((w.float() + 0.0 * delta).to(dtype), w)


@pytest.mark.parametrize("layer_name", list(LAYERS))
@pytest.mark.parametrize(("algo", "kw"), [("oft", {"lora_dim": 4}), ("ia3", {}), ("ia3", {"train_on_input": True}),
                                          ("glora", {"lora_dim": 4, "alpha": 2})])  # fmt: skip
def test_strength_is_linear_like_lycoris(algo: str, kw: dict, layer_name: str) -> None:
    """Where LyCORIS's multiplier is linear, ``W + s·Δ`` is exactly what it computes."""
    layer = _layer(layer_name)
    mod = _module(algo, layer, multiplier=0.37, **kw)
    x = _x(layer_name, torch.float32)
    with torch.no_grad():
        expected = mod(x)
    kind = _kind(algo, _tensors(mod))
    w = layer.weight.detach()
    with torch.no_grad():
        got = _run(layer, x, w + 0.37 * kind.delta_weight(w))
    assert float((got - expected).abs().max()) <= 2e-5 * float(expected.abs().max())


def test_boft_single_stage_strength_matches_lycoris() -> None:
    """With one butterfly stage LyCORIS's per-stage interpolation is linear too."""
    layer = nn.Linear(8, 8)
    mod = _module("boft", layer, multiplier=0.6, lora_dim=8)
    assert mod.oft_blocks.shape[0] == 1
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    kind = _kind("boft", _tensors(mod))
    w = layer.weight.detach()
    with torch.no_grad():
        expected = mod(x)
        got = F.linear(x, w + 0.6 * kind.delta_weight(w), layer.bias)
    assert float((got - expected).abs().max()) <= 2e-5 * float(expected.abs().max())


@pytest.mark.parametrize("algo", ["oft", "boft"])
@pytest.mark.parametrize("layer_name", ["linear", "conv3x3"])
def test_output_side_transform_equals_fused(algo: str, layer_name: str) -> None:
    """Transforming the layer's bias-free output along its channel axis equals running the transformed weight."""
    layer = _layer(layer_name)
    mod = _module(algo, layer, lora_dim=4 if algo == "oft" else 8, rescaled=True)
    kind = _kind(algo, _tensors(mod))
    x = _x(layer_name, torch.float32)
    w = layer.weight.detach()
    with torch.no_grad():
        bias_free = _run(layer, x, w) - (0 if layer.bias is None else _run(layer, x, torch.zeros_like(w)))
        rotated_out = kind.transform(bias_free, dim=-1 if layer_name == "linear" else 1)
        fused = _run(layer, x, w + kind.delta_weight(w)) - _run(layer, x, torch.zeros_like(w))
    assert float((rotated_out - fused).abs().max()) <= 2e-5 * float(fused.abs().max())


@pytest.mark.parametrize("algo", ["oft", "boft"])
def test_rotation_preserves_norm_without_rescale(algo: str) -> None:
    layer = _layer("linear")
    mod = _module(algo, layer, lora_dim=4 if algo == "oft" else 8)
    kind = _kind(algo, _tensors(mod))
    w = layer.weight.detach().double()
    rotated = w + kind.delta_weight(layer.weight.detach()).double()
    assert torch.allclose(rotated.norm(dim=0), w.norm(dim=0), rtol=1e-5)  # orthogonal on the output axis


# ----------------------------------------------------------------------------------- kohya OFT (explicit fp64 formula)
def _kohya_reference(blocks: torch.Tensor, alpha: float, w: torch.Tensor) -> torch.Tensor:
    """kohya sd-scripts networks/oft.py facts: Q = B − Bᵀ; c = alpha·out; Q ← Q·(min(‖Q‖,c)+1e-8)/(‖Q‖+1e-8);
    R = (I+Q)(I−Q)⁻¹; output row k·b+m of the new weight is Σ_n R_k[n, m] · (row k·b+n of W)."""
    b = blocks.double()
    n_blocks, size, _ = b.shape
    out = w.shape[0]
    q = b - b.transpose(1, 2)
    norm = float(q.flatten().norm())
    c = alpha * out
    q = q * ((min(norm, c) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(size, dtype=torch.float64)
    flat = w.double().reshape(out, -1)
    new = torch.empty_like(flat)
    for k in range(n_blocks):
        r = (eye + q[k]) @ torch.linalg.inv(eye - q[k])
        for m in range(size):
            new[k * size + m] = sum(r[n, m] * flat[k * size + n] for n in range(size))
    return new.reshape(w.shape)


@pytest.mark.parametrize("alpha", [1e-3, 0.5, 0.0])
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_kohya_oft_convention(alpha: float, layer_name: str) -> None:
    layer = _layer(layer_name)
    w = layer.weight.detach()
    num_blocks = 4  # kohya: network_dim = number of blocks, block size = out / dim
    blocks = 0.1 * torch.randn(num_blocks, w.shape[0] // num_blocks, w.shape[0] // num_blocks,
                               generator=torch.Generator().manual_seed(5))  # fmt: skip
    kind = OFT(blocks, alpha=alpha, convention="kohya")
    kind.check_shape(w.shape, "oft_unet_x")
    expected = _kohya_reference(blocks, alpha, w)
    got = w.double() + kind.delta_weight(w).double()
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    if alpha == 0.0:  # kohya clamps the norm to 0: R ≈ I (LyCORIS would treat 0 as "no constraint")
        assert float(kind.delta_weight(w).abs().max()) < 1e-6
        assert float(OFT(blocks, alpha=0.0).delta_weight(w).abs().max()) > 1e-2


def test_rotation_convention_uses_blocks_as_r() -> None:
    w = torch.randn(12, 5, generator=torch.Generator().manual_seed(2))
    q = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(4))
    r = torch.linalg.matrix_exp(q - q.transpose(1, 2))  # any orthogonal blocks
    kind = OFT(r, alpha=123.0, convention="rotation")
    expected = torch.block_diag(*r).t() @ w
    assert torch.allclose(w + kind.delta_weight(w), expected, atol=1e-5)


def test_glora_tucker_core_formula() -> None:
    g = torch.Generator().manual_seed(9)
    w = torch.randn(6, 5, 3, 3, generator=g, dtype=torch.float64)
    a1, a2 = torch.randn(5, 2, 1, 1, generator=g), torch.randn(2, 5, 1, 1, generator=g)
    b1, b2, bm = (
        torch.randn(6, 2, 1, 1, generator=g),
        torch.randn(2, 5, 1, 1, generator=g),
        torch.randn(2, 2, 3, 3, generator=g),
    )
    kind = GLoRA(a1, a2, b1, b2, alpha=1.0, bm=bm)
    kind.check_shape(w.shape)
    a = a1.double()[:, :, 0, 0] @ a2.double()[:, :, 0, 0]
    wa = torch.einsum("oiyx,ij->ojyx", w, a)
    bb = torch.einsum("oa,abyx,bi->oiyx", b1.double()[:, :, 0, 0], bm.double(), b2.double()[:, :, 0, 0])
    assert torch.allclose(kind.delta_weight(w).double(), 0.5 * (wa + bb), atol=1e-5)


# ----------------------------------------------------------------------------------- shape checks
def test_check_shape_raises() -> None:
    g = torch.Generator().manual_seed(0)
    oft = OFT(torch.randn(12, 4, 4, generator=g), alpha=0.0, rescale=torch.ones(48, 1))
    oft.check_shape(torch.Size([48, 32]))
    oft.check_shape(torch.Size([48, 16, 3, 3]))
    with pytest.raises(ShapeMismatchError, match="cover 48 rows"):
        oft.check_shape(torch.Size([40, 32]), "m")
    with pytest.raises(ShapeMismatchError, match="rescale"):
        OFT(torch.randn(12, 4, 4), rescale=torch.ones(40)).check_shape(torch.Size([48, 32]))
    with pytest.raises(ShapeMismatchError):
        OFT(torch.randn(2, 12, 4, 4)).check_shape(torch.Size([48, 32]))

    boft = BOFT(torch.randn(4, 8, 6, 6, generator=g), alpha=0.0)
    boft.check_shape(torch.Size([48, 32]))
    with pytest.raises(ShapeMismatchError, match="cover 48 rows"):
        boft.check_shape(torch.Size([24, 32]))
    with pytest.raises(ShapeMismatchError, match="butterfly stages"):
        BOFT(torch.randn(4, 6, 8, 8)).check_shape(torch.Size([48, 32]))  # 2**3 does not divide 6 blocks

    IA3(torch.randn(48)).check_shape(torch.Size([48, 32]))
    IA3(torch.randn(1, 16, 1, 1), on_input=True).check_shape(torch.Size([24, 16, 3, 3]))
    with pytest.raises(ShapeMismatchError, match="input axis"):
        IA3(torch.randn(48), on_input=True).check_shape(torch.Size([48, 32]))
    with pytest.raises(ShapeMismatchError, match="output axis"):
        IA3(torch.randn(32)).check_shape(torch.Size([48, 32]))

    glora = GLoRA(torch.randn(32, 4), torch.randn(4, 32), torch.randn(48, 4), torch.randn(4, 32), alpha=2.0)
    glora.check_shape(torch.Size([48, 32]))
    with pytest.raises(ShapeMismatchError, match="GLoRA"):
        glora.check_shape(torch.Size([48, 16]))
    with pytest.raises(ShapeMismatchError, match="GLoRA"):
        glora.check_shape(torch.Size([40, 32]))


def test_on_input_stays_a_bool_through_casts() -> None:
    kind = IA3(torch.randn(8), on_input=True).to(dtype=torch.bfloat16)
    assert kind.on_input is True and kind.weight.dtype == torch.bfloat16
    assert [n for n, _ in kind.named_tensors()] == ["weight"]


def test_unknown_oft_convention_rejected() -> None:
    with pytest.raises(ValueError, match="convention"):
        OFT(torch.zeros(2, 2, 2), convention="peft")


# ----------------------------------------------------------------------------------- hotswap helpers
@pytest.mark.parametrize(
    "kind",
    [
        OFT(torch.randn(6, 4, 4), alpha=0.0, rescale=torch.rand(24, 1) + 0.5),
        OFT(torch.randn(6, 4, 4), alpha=0.5, convention="kohya"),
        OFT(torch.linalg.matrix_exp(torch.randn(6, 4, 4) * 0.1), convention="rotation"),
        BOFT(torch.randn(3, 4, 6, 6), alpha=0.0, rescale=torch.rand(24, 1, 1, 1) + 0.5),
        IA3(torch.randn(24)),
        GLoRA(
            torch.randn(16, 2, 1, 1),
            torch.randn(2, 16, 1, 1),
            torch.randn(24, 2, 1, 1),
            torch.randn(2, 16, 3, 3),
            alpha=1.0,
        ),
    ],
    ids=["oft", "oft-kohya", "oft-rotation", "boft", "ia3", "glora"],
)
def test_zeroed_has_zero_delta_and_same_shapes(kind: AdapterKind) -> None:
    w = torch.randn(24, 16, 3, 3, generator=torch.Generator().manual_seed(1))
    assert float(kind.delta_weight(w).abs().max()) > 1e-3
    zero = kind.zeroed("m")
    assert zero.shapes() == kind.shapes()
    assert float(zero.delta_weight(w).abs().max()) < 1e-6


def test_glora_padded_keeps_delta() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(24, 16, 3, 3, generator=g)
    kind = GLoRA(torch.randn(16, 2, 1, 1, generator=g), torch.randn(2, 16, 1, 1, generator=g),
                 torch.randn(24, 2, 1, 1, generator=g), torch.randn(2, 16, 3, 3, generator=g), alpha=1.0)  # fmt: skip
    wide = kind.padded(5, "m")
    assert wide.rank == 5 and wide.scale == kind.scale
    wide.check_shape(w.shape)
    assert torch.allclose(wide.delta_weight(w), kind.delta_weight(w), atol=1e-5)
    with pytest.raises(HotswapError):
        wide.padded(4)


# ----------------------------------------------------------------------------------- through the registry and the manager
def _from_file_names(tensors: dict[str, torch.Tensor], layout: str = "") -> AdapterKind:
    """One module's tensors (LyCORIS names) -> the kind the registry builds: suffix -> role by the kinds' own
    vocabularies, the one claiming kind's ``from_roles``, alpha applied as formats apply it."""
    from lorakit import kinds
    from lorakit.kinds.vocab import KOHYA, KeySource

    by_suffix = {s.text: s.role for k in kinds.KINDS for s in k.SUFFIXES if s.style == KOHYA}
    roles = {by_suffix.get(sfx, sfx): t for sfx, t in tensors.items()}
    claimants = [k for k in kinds.KINDS if k.claims(roles)]
    assert len(claimants) == 1, claimants
    kind = claimants[0].from_roles(roles, KeySource(layout))
    alpha = roles.get("alpha")
    return kind.with_alpha(None if alpha is None or float(alpha) == 0 else float(alpha))


MANAGER_PARAMS = [
    pytest.param(algo, kw, layer, dtype, id=f"{algo}{i}-{layer}-{dname}")
    for i, (algo, kw) in enumerate(CASES)
    for layer in LAYERS
    for dname, dtype in DTYPES.items()
]


@pytest.mark.parametrize(("algo", "kw", "layer_name", "dtype"), MANAGER_PARAMS)
def test_manager_fused_equals_unfused_equals_lycoris(algo: str, kw: dict, layer_name: str, dtype: torch.dtype) -> None:
    """The kind built by the registry from LyCORIS's own tensors, applied by the manager: unfused == fused ==
    LyCORIS's module forward; unfuse and unload give the base bit for bit; weight 0 is the base exactly."""
    from lorakit.engine import AdapterManager

    layer = _layer(layer_name)
    mod = _module(algo, layer, **kw)
    layer.to(dtype)
    mod.to(dtype)
    x = _x(layer_name, dtype)
    with torch.no_grad():
        expected = mod(x).float()
    kind = _from_file_names(_tensors(mod))
    assert kind.kind_name == {"oft": "oft", "boft": "boft", "ia3": "ia3", "glora": "glora"}[algo]

    model = nn.Sequential(layer)
    w0 = layer.weight.detach().clone()
    ptr = layer.weight.data_ptr()
    with torch.no_grad():
        base = model(x)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", {"0": kind})
    with torch.no_grad():
        unfused = model(x).float()
        mgr.fuse()
        fused = model(x).float()
    scale = float(expected.abs().max())
    tol = TOL[dtype] * scale
    assert float((unfused - expected).abs().max()) <= tol
    assert float((fused - expected).abs().max()) <= tol
    assert float((fused - unfused).abs().max()) <= tol
    assert float((fused - base.float()).abs().max()) > 0.02 * scale  # the adapter does something

    mgr.unfuse()
    assert torch.equal(layer.weight, w0) and layer.weight.data_ptr() == ptr
    with torch.no_grad():
        assert torch.equal(model(x).float(), unfused)
        mgr.set_adapters(["a"], [0.0])  # strength 0: the base, unfused and fused
        assert torch.equal(model(x), base)
        mgr.fuse()
        assert torch.equal(layer.weight, w0)
        mgr.unfuse()
        mgr.set_adapters(["a"], [1.0])
        mgr.unload()
        assert torch.equal(model(x), base) and torch.equal(layer.weight, w0)


@pytest.mark.parametrize(("algo", "kw"), CASES, ids=[f"{a}{i}" for i, (a, _) in enumerate(CASES)])
def test_written_tensors_read_back_to_the_same_delta(algo: str, kw: dict) -> None:
    """``lycoris_tensors()`` uses the kind's own suffixes and rebuilds the same delta through the registry (the
    (IA)³ flag as a float, the OFT/BOFT constraint kept)."""
    for layer_name in ("linear", "conv3x3"):
        layer = _layer(layer_name)
        kind = _from_file_names(_tensors(_module(algo, layer, **kw)))
        written = kind.lycoris_tensors()
        assert all(t.is_floating_point() for t in written.values())
        back = _from_file_names(dict(written))
        assert type(back) is type(kind) and back.shapes() == kind.shapes() and back.rank == kind.rank
        w = layer.weight.detach()
        torch.testing.assert_close(back.delta_weight(w), kind.delta_weight(w), rtol=1e-6, atol=1e-7)


def test_kohya_oft_writes_back_as_itself_and_portably() -> None:
    """kohya's clamp is kept under its own layout; the LyCORIS spelling folds it into the blocks (alpha 0 = no
    constraint in LyCORIS), so either reader rebuilds the same rotation, also where kohya's alpha 0 collapses Q."""
    w = torch.randn(24, 16, generator=torch.Generator().manual_seed(4))
    for alpha in (1e-3, 0.0, 2.0):
        blocks = 0.2 * torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(6))
        kind = _from_file_names({"oft_blocks": blocks, "alpha": torch.tensor(alpha)}, layout="kohya-oft")
        assert isinstance(kind, OFT) and kind.convention == "kohya" and kind.alpha == pytest.approx(alpha)
        native = kind.native()
        assert native is not None and native[0] == "kohya-oft"
        assert torch.equal(native[1]["oft_blocks"], blocks) and float(native[1]["alpha"]) == kind.alpha
        portable = _from_file_names(kind.lycoris_tensors())
        assert isinstance(portable, OFT) and portable.convention == "lycoris"
        torch.testing.assert_close(portable.delta_weight(w), kind.delta_weight(w), rtol=1e-5, atol=1e-6)
    assert OFT(blocks, alpha=0.1).native() is None  # LyCORIS files stay LyCORIS


def test_glora_old_layout_reads_as_today() -> None:
    """Old LyCORIS GLoRA names the factors the other way round (a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r))."""
    g = torch.Generator().manual_seed(8)
    for out, inn, r in ((48, 32, 4), (16, 16, 3)):  # square: both shape tests pass, the smaller size is the rank
        a1, a2, b1, b2 = (torch.randn(s, generator=g) for s in ((inn, r), (r, inn), (out, r), (r, inn)))
        new = _from_file_names({"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": torch.tensor(2.0)})
        old = _from_file_names({"a1.weight": a2, "a2.weight": a1, "b1.weight": b2, "b2.weight": b1, "alpha": torch.tensor(2.0)})
        w = torch.randn(out, inn, generator=g)
        assert new.rank == old.rank == r
        torch.testing.assert_close(old.delta_weight(w), new.delta_weight(w))


# ----------------------------------------------------------------------------------- rows of fused projections
def _rows_case(kind: AdapterKind, total: int, in_shape: tuple[int, ...], rows: torch.Tensor) -> None:
    """``select_rows`` keeps exactly those rows of the delta (taken of the selected rows' own base weight)."""
    w = torch.randn(total, *in_shape, generator=torch.Generator().manual_seed(5))
    part = kind.select_rows(rows, total, in_shape)
    part.check_shape(torch.Size((rows.numel(), *in_shape)), "part")
    torch.testing.assert_close(part.delta_weight(w[rows]), kind.delta_weight(w)[rows], rtol=1e-5, atol=1e-6)


SPLIT_KINDS = {
    "oft": lambda: OFT(0.3 * torch.randn(6, 4, 4), alpha=2e-3, rescale=torch.rand(24, 1) + 0.5),
    "oft-kohya": lambda: OFT(0.3 * torch.randn(6, 4, 4), alpha=2e-3, convention="kohya"),
    "boft": lambda: BOFT(0.3 * torch.randn(1, 6, 4, 4), alpha=1e-3, rescale=torch.rand(24, 1) + 0.5),
    "ia3": lambda: IA3(torch.randn(24)),
    "ia3-in": lambda: IA3(torch.randn(16), on_input=True),
    "glora": lambda: GLoRA(torch.randn(16, 2), torch.randn(2, 16), torch.randn(24, 2), torch.randn(2, 16), alpha=1.0),
}


@pytest.mark.parametrize("name", list(SPLIT_KINDS))
def test_split_and_swap_rows_are_exact(name: str) -> None:
    torch.manual_seed(0)
    kind = SPLIT_KINDS[name]()
    for size in ((8, 8, 8),):  # q|k|v of 8 rows: whole OFT blocks of 4, whole BOFT spans of 8
        parts = kind.split_rows(list(size), (16,))
        start = 0
        w = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
        for n, part in zip(size, parts):
            rows = torch.arange(start, start + n)
            torch.testing.assert_close(part.delta_weight(w[rows]), kind.delta_weight(w)[rows], rtol=1e-5, atol=1e-6)
            start += n
    _rows_case(kind, 24, (16,), torch.cat([torch.arange(12, 24), torch.arange(0, 12)]))  # adaLN halves swapped


def test_boft_splits_along_whole_spans_of_its_last_stage() -> None:
    torch.manual_seed(3)
    kind = BOFT(0.3 * torch.randn(2, 12, 4, 4), alpha=1e-3, rescale=torch.rand(48, 1, 1, 1) + 0.5)  # span 8 rows
    assert kind.span == 8
    w = torch.randn(48, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    for part, rows in zip(kind.split_rows([16, 16, 16], (4, 3, 3)), torch.arange(48).reshape(3, 16)):
        torch.testing.assert_close(part.delta_weight(w[rows]), kind.delta_weight(w)[rows], rtol=1e-5, atol=1e-6)
    _rows_case(kind, 48, (4, 3, 3), torch.cat([torch.arange(24, 48), torch.arange(0, 24)]))


def test_rows_that_straddle_blocks_are_not_separable() -> None:
    from lorakit.kinds import NotSeparable

    oft = OFT(torch.randn(4, 6, 6), alpha=0.0)  # blocks of 6 over q|k|v of 8
    with pytest.raises(NotSeparable, match="straddle"):
        oft.split_rows([8, 8, 8], (16,))
    boft = BOFT(torch.randn(3, 4, 6, 6), alpha=0.0)  # LyCORIS' default stage count: the last stage spans all rows
    with pytest.raises(NotSeparable):
        boft.split_rows([8, 8, 8], (16,))
    with pytest.raises(NotSeparable):
        boft.select_rows(torch.cat([torch.arange(12, 24), torch.arange(0, 12)]), 24, (16,))


# ----------------------------------------------------------------------------------- hotswap through the manager
def test_hotswap_keeps_shapes_and_gives_the_new_adapter() -> None:
    """Same-shape OFT/BOFT/(IA)³ swap in place; GLoRA is padded to the target rank; a module the new adapter does
    not target gets an identity (zero-delta) adapter of the old shapes."""
    from lorakit.engine import AdapterManager

    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 24), nn.Linear(24, 24), nn.Linear(24, 24), nn.Linear(24, 24))
    x = torch.randn(3, 16)

    def make(seed: int, r: int) -> dict[str, AdapterKind]:
        g = torch.Generator().manual_seed(seed)
        return {
            "0": GLoRA(*(0.3 * torch.randn(s, generator=g) for s in ((16, r), (r, 16), (24, r), (r, 16))), alpha=1.0),
            "1": OFT(0.3 * torch.randn(6, 4, 4, generator=g), alpha=0.0),
            "2": BOFT(0.3 * torch.randn(2, 6, 4, 4, generator=g), alpha=0.0),
            "3": IA3(torch.randn(24, generator=g)),
        }

    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    mgr = AdapterManager(model)
    mgr.hotswap_rank = 6
    mgr.add_adapter("a", mgr.padded(make(0, 4)))
    with torch.no_grad():
        model(x)
    for seed, r, keep in ((1, 2, ("0", "1", "2", "3")), (2, 6, ("0", "2"))):
        new = {p: k for p, k in make(seed, r).items() if p in keep}
        full = mgr.prepare_hotswap("a", new)
        mgr.hotswap("a", full)
        ref = nn.Sequential(nn.Linear(16, 24), nn.Linear(24, 24), nn.Linear(24, 24), nn.Linear(24, 24))
        ref.load_state_dict(base_state)
        with torch.no_grad():
            for p, k in new.items():
                lin = ref[int(p)]
                lin.weight.copy_(lin.weight + k.delta_weight(lin.weight))
            torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
        assert all(type(mgr.adapters["a"][p]) is type(k) for p, k in make(0, 4).items())
