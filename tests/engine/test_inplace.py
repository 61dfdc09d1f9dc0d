"""In-place fusing: the fused values go into the weights' own storage and unfuse gives every original bit back.

Reference: an fp64 merge for the fused values; the original tensors (cloned before) for the restore, compared bit
for bit (``torch.equal`` on the raw bytes), in fp32, bf16 and fp16, on Linear and Conv2d, with several adapters of
several kinds, also when the rounding of ``fl(fl(W + ΔW) − ΔW)`` misses the original (large deltas).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorakit.engine import AdapterManager
from lorakit.engine.inplace import can_fuse_inplace, fuse_inplace, materialize, restore_inplace
from lorakit.errors import NonFiniteError
from lorakit.kinds import DoRA, LoHa, LoRA

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def _lora(shape: torch.Size, rank: int, scale: float, seed: int) -> LoRA:
    g = torch.Generator().manual_seed(seed)
    tail = (1, 1) if len(shape) == 4 else ()
    return LoRA(
        down=torch.randn(rank, *shape[1:], generator=g) * scale,
        up=torch.randn(shape[0], rank, *tail, generator=g) * scale,
        alpha=rank / 2,
        bias=torch.randn(shape[0], generator=g) * scale,
    )


def _loha(shape: torch.Size, seed: int) -> LoHa:
    g = torch.Generator().manual_seed(seed)
    k = int(torch.Size(shape[1:]).numel())
    return LoHa(
        torch.randn(shape[0], 4, generator=g) * 0.2,
        torch.randn(4, k, generator=g) * 0.2,
        torch.randn(shape[0], 4, generator=g) * 0.2,
        torch.randn(4, k, generator=g) * 0.2,
        alpha=2.0,
    )


def _module(kind: str, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Linear(96, 80) if kind == "linear" else nn.Conv2d(12, 16, 3, padding=1)
    return m.to(dtype).requires_grad_(False)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("scale", [0.02, 0.6], ids=["small-delta", "large-delta"])
def test_fuse_in_place_then_restore_bit_for_bit(dtype: torch.dtype, layer: str, scale: float) -> None:
    m = _module(layer, dtype)
    w0, b0 = m.weight.detach().clone(), m.bias.detach().clone()
    ptr = m.weight.data_ptr()
    a, h = _lora(m.weight.shape, 4, scale, 1), _loha(m.weight.shape, 2)
    contributions = [(a, 0.7), (h, -1.3)]
    assert can_fuse_inplace(m, contributions)
    rec = fuse_inplace(m, contributions)
    assert m.weight.data_ptr() == ptr  # no new weight tensor
    ref = w0.double() + 0.7 * a.delta_weight(w0).double() - 1.3 * h.delta_weight(w0).double()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(m.weight.double(), ref, rtol=tol, atol=tol * float(ref.abs().max()))
    torch.testing.assert_close(m.bias.double(), b0.double() + 0.7 * a.delta_bias().double(), rtol=tol, atol=tol)
    w_mat, b_mat = materialize(m, rec)
    assert torch.equal(_bits(w_mat), _bits(w0)) and b_mat is not None and torch.equal(_bits(b_mat), _bits(b0))
    restore_inplace(m, rec)
    assert torch.equal(_bits(m.weight), _bits(w0)) and torch.equal(_bits(m.bias), _bits(b0))
    assert m.weight.data_ptr() == ptr
    if scale == 0.6:  # deltas as large as the weights: roundings that miss the original happen and are repaired
        assert any(r is not None for r in rec.residual)


def test_restore_is_exact_with_another_thread_count() -> None:
    m = _module("linear", torch.float32)
    w0 = m.weight.detach().clone()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        rec = fuse_inplace(m, [(_lora(m.weight.shape, 8, 0.3, 3), 1.0)])
        torch.set_num_threads(1)
        restore_inplace(m, rec)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(_bits(m.weight), _bits(w0))


def test_safe_fuse_with_a_non_finite_delta_changes_nothing() -> None:
    m = _module("linear", torch.float32)
    w0 = m.weight.detach().clone()
    bad = _lora(m.weight.shape, 2, 0.1, 4)
    bad.down[0, -1] = float("inf")
    model = nn.Sequential(m)
    mgr = AdapterManager(model)
    mgr.add_adapter("bad", {"0": bad})
    with pytest.raises(NonFiniteError):
        mgr.fuse(safe_fusing=True, strategy="inplace")
    assert torch.equal(_bits(model[0].weight), _bits(w0)) and mgr.fused == {}


@pytest.mark.parametrize("strategy", ["inplace", "copy"])
def test_manager_cycles_are_exact_and_agree(strategy: str) -> None:
    model = nn.Sequential(nn.Linear(64, 48), nn.Conv2d(4, 6, 3)).requires_grad_(False)
    originals = [p.detach().clone() for p in model.parameters()]
    mgr = AdapterManager(model)
    mgr.add_adapter("a", {"0": _lora(model[0].weight.shape, 4, 0.3, 5), "1": _lora(model[1].weight.shape, 2, 0.3, 6)})
    mgr.add_adapter("b", {"0": _loha(model[0].weight.shape, 7)})
    fused_values = None
    for _ in range(4):
        mgr.set_adapters(["a", "b"], [0.8, 0.4])
        mgr.fuse(strategy=strategy)
        now = [p.detach().clone() for p in model.parameters()]
        fused_values = fused_values or now
        assert all(torch.equal(x, y) for x, y in zip(now, fused_values))  # every cycle fuses to the same bits
        mgr.disable()
        assert all(torch.equal(_bits(p), _bits(o)) for p, o in zip(model.parameters(), originals))
        mgr.enable()
        assert all(torch.equal(p.detach(), f) for p, f in zip(model.parameters(), fused_values))
        mgr.unfuse()
        assert all(torch.equal(_bits(p), _bits(o)) for p, o in zip(model.parameters(), originals))


def test_the_default_strategy_is_copy() -> None:
    model = nn.Sequential(nn.Linear(16, 8)).requires_grad_(False)
    mgr = AdapterManager(model)
    mgr.add_adapter("l", {"0": _lora(model[0].weight.shape, 2, 0.2, 3)})
    mgr.fuse()
    assert mgr.fuse_strategy == "copy" and mgr.slots["0"].inplace is None and mgr.slots["0"].original is not None


def test_inplace_and_copy_fuse_to_the_same_bits() -> None:
    def fused(strategy: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 48)).requires_grad_(False)
        nn.init.normal_(model[0].weight)
        mgr = AdapterManager(model)
        mgr.add_adapter("a", {"0": _lora(model[0].weight.shape, 4, 0.3, 8)})
        mgr.fuse(strategy=strategy)
        return [p.detach().clone() for p in model.parameters()]

    assert all(torch.equal(x, y) for x, y in zip(fused("inplace"), fused("copy")))


def test_weight_dependent_kinds_fuse_by_copy() -> None:
    model = nn.Sequential(nn.Linear(16, 8)).requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    dora = DoRA(inner=_lora(w0.shape, 2, 0.2, 9), magnitude=torch.rand(8) + 0.5)
    assert not can_fuse_inplace(model[0], [(dora, 1.0)])
    mgr = AdapterManager(model)
    mgr.add_adapter("d", {"0": dora})
    mgr.fuse(strategy="inplace")
    slot = mgr.slots["0"]
    assert slot.inplace is None and slot.original is not None
    mgr.unfuse()
    assert torch.equal(_bits(model[0].weight), _bits(w0))


def test_a_dense_unfused_adapter_beside_an_in_place_fuse_sees_the_original() -> None:
    """DoRA unfused on top of a LoRA fused in place: its delta needs the original weight, rebuilt exactly."""
    model = nn.Sequential(nn.Linear(16, 8)).requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    lora = _lora(w0.shape, 2, 0.2, 10)
    dora = DoRA(inner=_lora(w0.shape, 2, 0.2, 11), magnitude=torch.rand(8) + 0.5)
    mgr = AdapterManager(model)
    mgr.add_adapter("l", {"0": lora})
    mgr.add_adapter("d", {"0": dora})
    mgr.set_fuse_strategy("inplace")
    mgr.fuse(["l"])
    assert mgr.slots["0"].inplace is not None
    x = torch.randn(3, 16)
    y = model(x)
    ref = x.double() @ (w0.double() + lora.delta_weight(w0).double() + dora.delta_weight(w0).double()).T
    ref = ref + (model[0].bias.double() if mgr.slots["0"].original is None else mgr.slots["0"].original[1].double())
    ref = ref + lora.delta_bias().double() + dora.delta_bias().double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    mgr.unfuse()
    assert torch.equal(_bits(model[0].weight), _bits(w0))
