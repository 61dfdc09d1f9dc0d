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
