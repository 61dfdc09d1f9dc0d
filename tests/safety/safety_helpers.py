"""Helpers of the safety tests: tiny pipelines with non-trivial LoRA state, random LoRA state dicts, and a full
snapshot of everything a failed operation must leave unchanged."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import lorakit
from lorakit import errors
from lorakit.tiny import tiny_pipeline

#: module-path fragments a test LoRA targets (attention and MLP Linear layers; CLIP q/v projections)
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn2.to_k", "attn2.to_v", "to_out.0", "ff.net.2")
TE_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")
#: SD3 MMDiT / aMUSEd UVit2D transformers
TRANSFORMER_TARGETS = ("attn.to_q", "attn.to_k", "attn.add_v_proj", "attn1.to_q", "attn2.to_k", "to_out.0")
T5_TARGETS = ("SelfAttention.q", "SelfAttention.v")


def components(pipe: Any) -> list[str]:
    """The LoRA-loadable components present in ``pipe``, in the pipeline's order."""
    return [c for c in pipe._lora_loadable_modules if isinstance(getattr(pipe, c, None), nn.Module)]


def lora_dict(
    pipe: Any,
    *,
    rank: int = 2,
    seed: int = 0,
    comps: Iterable[str] | None = None,
    targets: dict[str, tuple[str, ...]] | None = None,
    scale: float = 0.1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """A diffusers/PEFT-style LoRA state dict (``<component>.<path>.lora_A/B.weight``) for ``pipe``'s Linear layers."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for comp in comps if comps is not None else components(pipe):
        frags = (targets or {}).get(comp) or {"unet": UNET_TARGETS, "transformer": TRANSFORMER_TARGETS}.get(comp)
        if frags is None:
            frags = T5_TARGETS if type(getattr(pipe, comp)).__name__.startswith("T5") else TE_TARGETS
        for name, mod in getattr(pipe, comp).named_modules():
            if isinstance(mod, nn.Linear) and any(name.endswith(f) for f in frags):
                o, i = mod.weight.shape
                out[f"{comp}.{name}.lora_A.weight"] = (torch.randn(rank, i, generator=g) * scale).to(dtype)
                out[f"{comp}.{name}.lora_B.weight"] = (torch.randn(o, rank, generator=g) * scale).to(dtype)
    assert out, "no target modules"
    return out


def new_pipe(family: str = "sd1", *, offload: bool = False, dtype: torch.dtype = torch.float32) -> Any:
    """A tiny attached pipeline, optionally with accelerate's model CPU offload hooks installed (on the CPU)."""
    pipe = lorakit.attach(tiny_pipeline(family, dtype=dtype))
    if offload:
        pipe.enable_model_cpu_offload(device="cpu")
    return pipe


def busy_pipe(family: str = "sd1", *, offload: bool = True, dtype: torch.dtype = torch.float32) -> Any:
    """A pipeline with non-trivial LoRA state: ``"style"`` active at 0.7 (unfused), ``"fz"`` fused, ``"idle"``
    loaded but inactive, and accelerate offload hooks. Every failed operation must leave all of it unchanged."""
    pipe = new_pipe(family, offload=offload, dtype=dtype)
    pipe.load_lora_weights(lora_dict(pipe, seed=1), adapter_name="style")
    pipe.load_lora_weights(lora_dict(pipe, seed=2), adapter_name="fz")
    pipe.load_lora_weights(lora_dict(pipe, seed=3), adapter_name="idle")
    pipe.set_adapters(["fz"], [0.5])
    pipe.fuse_lora(adapter_names=["fz"])
    pipe.set_adapters(["style", "fz"], [0.7, 0.5])
    assert pipe.fused_loras == {"fz"}
    return pipe


# ------------------------------------------------------------------------------------------------ forward inputs
def denoiser_output(pipe: Any) -> Tensor:
    """The denoiser's output for fixed inputs (SD1/SD2/SDXL UNets)."""
    g = torch.Generator().manual_seed(123)
    unet = pipe.unet
    dt = unet.dtype
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g).to(dt)
    ehs = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g).to(dt)
    kwargs: dict[str, Any] = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = pipe.text_encoder_2.config.projection_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, pooled, generator=g).to(dt),
            "time_ids": torch.randn(1, 6, generator=g).to(dt),
        }
    with torch.no_grad():
        return unet(x, torch.tensor([10]), ehs, **kwargs).sample


def text_output(pipe: Any, comp: str = "text_encoder") -> Tensor:
    ids = torch.tensor([[517, 40, 41, 42, 518]])
    with torch.no_grad():
        return getattr(pipe, comp)(ids)[0]


# ------------------------------------------------------------------------------------------------ snapshot
def _weight_repr(w: Any) -> Any:
    return float(w) if isinstance(w, (int, float)) else ("callable", id(w))


def _hooks(model: nn.Module) -> tuple:
    out = []
    for name, m in model.named_modules():
        hf = getattr(m, "_hf_hook", None)
        out.append(
            (
                name,
                tuple(m._forward_pre_hooks),
                tuple(m._forward_hooks),
                None if hf is None else (type(hf).__name__, id(hf)),
                "forward" in m.__dict__,
            )
        )
    return tuple(out)


@dataclass
class Snapshot:
    """Everything a failed call must leave as it was (see ``docs/safety.md``, "What unchanged covers")."""

    weights: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    storage: dict[str, dict[str, tuple]] = field(default_factory=dict)
    hooks: dict[str, tuple] = field(default_factory=dict)
    managers: dict[str, tuple] = field(default_factory=dict)
    adapter_tensors: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    pipeline: tuple = ()
    outputs: dict[str, Tensor] = field(default_factory=dict)


def snapshot(pipe: Any, *, outputs: bool = True) -> Snapshot:
    s = Snapshot()
    for comp in components(pipe):
        model = getattr(pipe, comp)
        s.weights[comp] = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        # accelerate's CpuOffload hook moves the model to its execution device on every forward; on the CPU that
        # still copies every parameter (device "cpu:0" vs "cpu"), so storage identity is only compared without it
        offloaded = getattr(model, "_hf_hook", None) is not None
        s.storage[comp] = {
            k: (None if offloaded else v.data_ptr(), v.device, v.dtype, tuple(v.shape), v.requires_grad)
            for k, v in model.state_dict(keep_vars=True).items()
        }
        s.hooks[comp] = _hooks(model)
        mgr = lorakit.get_manager(model, create=False)
        if mgr is not None and (mgr.adapters or mgr.slots):  # an empty manager is no state
            s.managers[comp] = {
                "adapters": mgr.list_adapters(),
                "active": list(mgr.active),
                "weights": {n: _weight_repr(w) for n, w in mgr.weights.items()},
                "enabled": mgr.enabled,
                "fused": {n: _weight_repr(w) for n, w in mgr.fused.items()},
                "call_scale": mgr.call_scale,
                "strategy": mgr.unfused_strategy,
                "version": mgr.version,
                "slots": sorted(mgr.slots),
                "targets": {n: sorted(m) for n, m in mgr.adapters.items()},
            }
            for n in mgr.list_adapters():
                s.adapter_tensors[f"{comp}/{n}"] = {k: v.clone() for k, v in mgr.adapter_state_dict(n).items()}
    s.pipeline = (
        pipe.get_list_adapters(),
        pipe.get_active_adapters(),
        sorted(pipe.fused_loras),
        pipe.num_fused_loras,
        getattr(pipe, "_offload_device", None),
        getattr(pipe, "_offload_gpu_id", None),
        tuple(id(h) for h in getattr(pipe, "_all_hooks", []) or []),
        str(pipe.device),
    )
    if outputs:
        if hasattr(pipe, "unet"):
            s.outputs["unet"] = denoiser_output(pipe)
        s.outputs["text_encoder"] = text_output(pipe)
    return s


def bits_equal(a: Tensor, b: Tensor) -> bool:
    """Bit-identical (same device, dtype, shape and bytes; NaN payloads included)."""
    if a.device != b.device or a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.detach().reshape(-1).view(torch.uint8), b.detach().reshape(-1).view(torch.uint8))


def _short(x: Any, n: int = 300) -> str:
    r = repr(x)
    return r if len(r) <= n else r[:n] + "..."


def assert_unchanged(before: Snapshot, after: Snapshot, ignore: Iterable[str] = ()) -> None:
    """Bit-identical weights (same storage), same hooks, same adapters / active / fused sets, same outputs.

    ``ignore``: manager fields not compared (``"version"`` after an operation that legitimately re-applies the
    same state, e.g. a second fuse).
    """
    assert before.pipeline == after.pipeline, f"pipeline LoRA/offload state changed: {before.pipeline} -> {after.pipeline}"
    assert set(before.managers) == set(after.managers), f"managers: {set(before.managers)} -> {set(after.managers)}"
    for comp, fields in before.managers.items():
        for name, value in fields.items():
            if name not in ignore:
                new = after.managers[comp][name]
                assert value == new, f"{comp} manager {name} changed: {_short(value)} -> {_short(new)}"
    assert before.hooks == after.hooks, "module hooks (torch forward hooks or accelerate _hf_hook) changed"
    for comp, sd in before.weights.items():
        assert set(sd) == set(after.weights[comp]), f"{comp}: state_dict keys changed"
        for k, v in sd.items():
            assert bits_equal(v, after.weights[comp][k]), f"{comp}.{k}: weight changed"
        assert before.storage[comp] == after.storage[comp], f"{comp}: parameter storage/device/dtype changed"
    assert set(before.adapter_tensors) == set(after.adapter_tensors)
    for n, sd in before.adapter_tensors.items():
        for k, v in sd.items():
            assert bits_equal(v, after.adapter_tensors[n][k]), f"adapter tensor {n}:{k} changed"
    for name, out in before.outputs.items():
        assert bits_equal(out, after.outputs[name]), f"{name} output changed"


def check_fails(
    pipe: Any,
    call: Callable[[], Any],
    exc_type: type[BaseException] | tuple[type[BaseException], ...],
    *fragments: str,
    ignore: Iterable[str] = (),
) -> str:
    """Run ``call``: it must raise ``exc_type`` (a lorakit error) with a one-line message containing every fragment,
    and leave ``pipe`` unchanged (``ignore``: manager fields not compared, see :func:`assert_unchanged`). Returns
    the message."""
    before = snapshot(pipe)
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - checked below
        err = exc
    else:
        raise AssertionError(f"expected {exc_type}, nothing was raised")
    assert isinstance(err, exc_type), f"expected {exc_type}, got {type(err).__name__}: {err}"
    assert isinstance(err, errors.LorakitError), f"{type(err).__name__} is not a LorakitError"
    msg = str(err)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert len(msg) < 1500, f"message too long ({len(msg)} chars)"
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in message {msg!r}"
    assert_unchanged(before, snapshot(pipe), ignore)
    log = os.environ.get("LORAKIT_SAFETY_MESSAGES")
    if log:  # collect real messages for docs/safety.md
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{type(err).__name__}\t{msg}\n")
    return msg
