"""AdapterManager behaviour: scales, activity, fuse/unfuse exactness, unload, delete, devices, training."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from lorakit.engine import AdapterManager, get_manager
from lorakit.errors import (
    AdapterExistsError,
    AdapterNotFoundError,
    DeviceError,
    KeyMismatchError,
    NonFiniteError,
    ShapeMismatchError,
)
from lorakit.kinds import DoRA, LoHa, LoRA


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.proj = nn.Linear(8, 16)
        self.out = nn.Linear(16, 16, bias=False)
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return self.norm(self.out(torch.relu(self.proj(h))))


def make_model(dtype: torch.dtype = torch.float32) -> Tiny:
    torch.manual_seed(0)
    return Tiny().to(dtype)


def adapter(seed: int, rank: int = 2, alpha: float | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*s: int) -> torch.Tensor:
        return torch.randn(s, generator=g) * 0.3

    return {
        "conv": LoRA(r(rank, 4, 3, 3), r(8, rank, 1, 1), alpha),
        "proj": LoRA(r(rank, 8), r(16, rank), alpha),
        "out": LoHa(r(16, rank), r(rank, 16), r(16, rank), r(rank, 16), alpha=1.0),
    }


X = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(9))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    assert list(sd) == list(snap)
    for k, v in snap.items():
        assert torch.equal(sd[k], v), k
        assert sd[k].dtype == v.dtype


def test_scale_zero_and_disabled_are_bit_identical_to_base() -> None:
    model = make_model()
    base = model(X)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    assert not torch.equal(model(X), base)
    mgr.set_adapters(["a"], [0.0])
    assert torch.equal(model(X), base)
    mgr.set_adapters(["a"], [1.0])
    mgr.disable()
    assert torch.equal(model(X), base)
    mgr.enable()
    assert not torch.equal(model(X), base)
    mgr.set_adapters([])
    assert torch.equal(model(X), base)


def test_weights_combine_linearly_and_scale_is_stateless() -> None:
    model = make_model(torch.float64)
    base = model.proj(X.double().mean(dim=(2, 3)).repeat(1, 2))
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    h = X.double().mean(dim=(2, 3)).repeat(1, 2)

    def proj_out(names: list[str], weights: list[float]) -> torch.Tensor:
        mgr.set_adapters(names, weights)
        return model.proj(h)

    da = proj_out(["a"], [1.0]) - base
    db = proj_out(["b"], [1.0]) - base
    both = proj_out(["a", "b"], [0.7, -0.4]) - base
    assert torch.allclose(both, 0.7 * da - 0.4 * db, atol=1e-12)
    first = proj_out(["a"], [1.0])
    proj_out(["a"], [0.5])
    assert torch.equal(proj_out(["a"], [1.0]), first)  # 1.0 -> 0.5 -> 1.0 gives the same output


def test_call_scale_matches_adapter_weight() -> None:
    model = make_model(torch.float64)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.set_adapters(["a"], [0.5])
    expected = model(X.double())
    mgr.set_adapters(["a"], [1.0])
    mgr.call_scale = 0.5
    assert torch.allclose(model(X.double()), expected, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fuse_matches_unfused_and_unfuse_is_bit_exact(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    snap = snapshot(model)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2, alpha=1.0))
    mgr.set_adapters(["a", "b"], [0.8, 0.3])
    unfused = model(X.to(dtype)).float()
    mgr.fuse()
    fused = model(X.to(dtype)).float()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert (fused - unfused).abs().max() <= tol * unfused.abs().max()
    # fused weight == W0 + Σ s·ΔW within a few ulps of `dtype` (fp32 maths, one cast; the fp32 matmul rounds too)
    w0 = snap["proj.weight"].double()
    da = 0.8 * adapter(1)["proj"].delta_weight(w0).double()
    db = 0.3 * adapter(2, alpha=1.0)["proj"].delta_weight(w0).double()
    exact = w0 + da + db
    ulp = 4 * torch.finfo(dtype).eps * (w0.abs() + da.abs() + db.abs())
    assert ((model.proj.weight.double() - exact).abs() <= ulp).all()
    assert mgr.unfuse() is True
    assert_bit_identical(model, snap)


def test_fuse_twice_is_idempotent_and_cycles_do_not_drift() -> None:
    model = make_model(torch.bfloat16)
    snap = snapshot(model)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.fuse()
    once = snapshot(model)
    mgr.fuse()
    assert_bit_identical(model, once)
    mgr.fuse(["a"])
    assert_bit_identical(model, once)
    for _ in range(10):
        mgr.unfuse()
        assert_bit_identical(model, snap)
        mgr.fuse()
        assert_bit_identical(model, once)
    mgr.unfuse()
    assert_bit_identical(model, snap)
    assert mgr.unfuse() is False  # nothing fused: no-op


def test_fused_adapters_are_not_applied_twice() -> None:
    model = make_model()
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    mgr.set_adapters(["a", "b"], [1.0, 1.0])
    unfused = model(X)
    mgr.fuse(["a"])  # a fused, b still through the hook
    assert torch.allclose(model(X), unfused, atol=1e-5)
    mgr.fuse(["b"])
    assert torch.allclose(model(X), unfused, atol=1e-5)
    assert sorted(mgr.fused) == ["a", "b"]


def test_fuse_order_does_not_matter() -> None:
    m1, m2 = make_model(torch.float16), make_model(torch.float16)
    g1, g2 = AdapterManager(m1), AdapterManager(m2)
    for g in (g1, g2):
        g.add_adapter("a", adapter(1))
        g.add_adapter("b", adapter(2))
    g1.fuse(["a"])
    g1.fuse(["b"])
    g2.fuse(["b"])
    g2.fuse(["a"])
    assert_bit_identical(m1, snapshot(m2))


def test_safe_fusing_rejects_nan_before_writing() -> None:
    model = make_model()
    snap = snapshot(model)
    mgr = AdapterManager(model)
    bad = adapter(1)
    bad["out"] = LoRA(torch.full((2, 16), float("nan")), torch.ones(16, 2))
    mgr.add_adapter("good", adapter(2))
    mgr.add_adapter("bad", bad)
    with pytest.raises(NonFiniteError, match="out"):
        mgr.fuse(safe_fusing=True)
    assert_bit_identical(model, snap)
    assert mgr.fused == {}


def test_unload_restores_tree_state_dict_and_outputs() -> None:
    model = make_model()
    snap = snapshot(model)
    names = [n for n, _ in model.named_modules()]
    params = [n for n, _ in model.named_parameters()]
    base = model(X)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    assert [n for n, _ in model.named_modules()] == names  # loaded: tree unchanged too
    assert list(model.state_dict()) == list(snap)
    mgr.fuse(["a"])
    mgr.unfuse()
    mgr.unload()
    assert [n for n, _ in model.named_modules()] == names
    assert [n for n, _ in model.named_parameters()] == params
    assert_bit_identical(model, snap)
    assert torch.equal(model(X), base)
    assert all(not m._forward_hooks for m in model.modules())
    assert mgr.list_adapters() == [] and mgr.slots == {}


def test_fuse_then_unload_keeps_fused_effect_like_diffusers() -> None:
    model = make_model()
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    expected = model(X)
    mgr.fuse()
    mgr.unload()
    assert torch.allclose(model(X), expected, atol=1e-5)
    assert all(not m._forward_hooks for m in model.modules())


def test_delete_removes_exactly_one_adapter() -> None:
    ref = make_model()
    AdapterManager(ref).add_adapter("b", adapter(2))
    expected = ref(X)

    model = make_model()
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    mgr.delete_adapter("a")
    assert mgr.list_adapters() == ["b"] and mgr.active == ["b"]
    assert torch.equal(model(X), expected)
    with pytest.raises(AdapterNotFoundError, match="'a'"):
        mgr.delete_adapter("a")


def test_delete_fused_adapter_refuses_the_rest_exactly() -> None:
    model = make_model(torch.float16)
    snap = snapshot(model)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    mgr.fuse(["b"])
    only_b = snapshot(model)
    mgr.fuse(["a"])
    mgr.delete_adapter("a")
    assert_bit_identical(model, only_b)
    mgr.unfuse()
    assert_bit_identical(model, snap)


def test_disable_with_fused_weights_gives_base_then_back() -> None:
    model = make_model()
    base = model(X)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.fuse()
    fused = model(X)
    mgr.disable()
    assert torch.equal(model(X), base)
    mgr.enable()
    assert torch.equal(model(X), fused)


def test_names_are_checked_and_failed_load_changes_nothing() -> None:
    model = make_model()
    snap = snapshot(model)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    with pytest.raises(AdapterExistsError):
        mgr.add_adapter("a", adapter(2))
    with pytest.raises(AdapterNotFoundError, match="did you mean 'a'"):
        mgr.set_adapters(["A"])
    with pytest.raises(AdapterNotFoundError):
        mgr.fuse(["nope"])
    broken = adapter(3)
    broken["proj"] = LoRA(torch.zeros(2, 9), torch.zeros(16, 2))  # wrong in-features on one module among several
    with pytest.raises(ShapeMismatchError, match="proj"):
        mgr.add_adapter("c", broken)
    with pytest.raises(KeyMismatchError, match="prj"):
        mgr.add_adapter("d", {"prj": LoRA(torch.zeros(2, 8), torch.zeros(16, 2))})
    assert mgr.list_adapters() == ["a"]
    assert set(mgr.slots) == {"conv", "proj", "out"}
    mgr.unload()
    assert_bit_identical(model, snap)


def test_set_device_and_bad_device() -> None:
    model = make_model()
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    out = model(X)
    mgr.set_device(["a"], "cpu")
    assert mgr.adapters["a"]["proj"].device.type == "cpu"
    assert torch.equal(model(X), out)
    with pytest.raises(DeviceError):
        mgr.set_device(["a"], "cuda:7" if not torch.cuda.is_available() else "cuda:99")
    with pytest.raises(DeviceError):
        mgr.set_device(["a"], "nonsense")


def test_fp32_adapter_on_bf16_model_unfused() -> None:
    model = make_model(torch.bfloat16)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))  # fp32 tensors
    y = model(X.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_trainable_adapters_get_gradients_and_export() -> None:
    model = make_model()
    for p in model.parameters():
        p.requires_grad_(False)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    params = mgr.make_trainable("a")
    assert params and all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    opt = torch.optim.SGD(params, lr=0.1)
    before = model(X).detach()
    loss = model(X).pow(2).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    assert not torch.equal(model(X).detach(), before)  # the update is seen by the next forward
    sd = mgr.adapter_state_dict("a")
    assert set(sd) == {"conv.down", "conv.up", "proj.down", "proj.up", "out.w1a", "out.w1b", "out.w2a", "out.w2b"}


def test_block_weights_per_module() -> None:
    model = make_model(torch.float64)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.set_adapters(["a"], [lambda path: 0.0 if path == "conv" else 1.0])
    only_tail = model(X.double())
    ref = make_model(torch.float64)
    tail = {k: v for k, v in adapter(1).items() if k != "conv"}
    AdapterManager(ref).add_adapter("a", tail)
    assert torch.allclose(only_tail, ref(X.double()), atol=1e-12)


def test_no_reference_to_unloaded_tensors_remains() -> None:
    model = make_model()
    mgr = get_manager(model)
    a = adapter(1)
    refs = [weakref.ref(k.down) for k in a.values() if isinstance(k, LoRA)]
    mgr.add_adapter("a", a)
    model(X)
    mgr.fuse()
    mgr.unfuse()
    del a
    mgr.unload()
    gc.collect()
    assert all(r() is None for r in refs)
    assert get_manager(model, create=False) is mgr


def test_dora_strength_is_linear_interpolation() -> None:
    model = make_model(torch.float64)
    w0 = model.proj.weight.detach().clone()
    inner = LoRA(torch.randn(2, 8, dtype=torch.float64) * 0.3, torch.randn(16, 2, dtype=torch.float64) * 0.3)
    kind = DoRA(inner, w0.norm(dim=1) * 1.2, "out")
    mgr = AdapterManager(model)
    mgr.add_adapter("d", {"proj": kind})
    mgr.set_adapters(["d"], [0.5])
    mgr.fuse()
    v = w0 + inner.delta_weight(w0).double()
    full = w0.norm(dim=1, keepdim=True) * 1.2 * v / (v.norm(dim=1, keepdim=True) + torch.finfo(torch.float32).eps)
    assert torch.allclose(model.proj.weight, w0 + 0.5 * (full - w0), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merged_strategy_matches_lowrank_and_never_touches_weights(dtype: torch.dtype) -> None:
    model = make_model(dtype)
    snap = snapshot(model)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.add_adapter("b", adapter(2))
    mgr.set_adapters(["a", "b"], [0.6, 0.9])
    lowrank = model(X.to(dtype)).float()
    mgr.set_unfused_strategy("merged")
    merged = model(X.to(dtype)).float()
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    assert (merged - lowrank).abs().max() <= tol * lowrank.abs().max()
    assert_bit_identical(model, snap)  # the originals are back after every call
    mgr.fuse(["a"])  # merged on top of fused weights: b only
    assert (model(X.to(dtype)).float() - lowrank).abs().max() <= tol * lowrank.abs().max()
    mgr.unfuse()
    assert_bit_identical(model, snap)
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 5, 5, dtype=dtype))  # wrong channels: the forward raises mid-way
    assert_bit_identical(model, snap)


def test_merged_strategy_with_a_call_scale_still_applies_the_adapters() -> None:
    """A call-time scale makes the merged strategy fall back to the low-rank form; a merged form cached by an earlier
    call must not be taken for it (that would drop the adapters)."""
    model = make_model(torch.float64)
    mgr = AdapterManager(model)
    mgr.add_adapter("a", adapter(1))
    mgr.set_adapters(["a"], [0.5])
    expected = model(X.double())
    mgr.set_adapters(["a"], [1.0])
    mgr.set_unfused_strategy("merged")
    model(X.double())  # caches the merged form
    mgr.call_scale = 0.5
    assert torch.allclose(model(X.double()), expected, atol=1e-12)
