"""Memory: load/unload cycles keep RSS and the number of live tensors flat, and no reference to an unloaded
adapter's tensors survives (weakrefs to the tensors of a dict source die after unload + gc)."""

from __future__ import annotations

import gc
import os
import weakref
from typing import Any

import pytest
import torch
from safety_helpers import denoiser_output, lora_dict, new_pipe, snapshot, text_output

import lorakit

#: big enough per adapter (rank 256: ~0.7 MB) that 200 leaked adapters (~140 MB) would be obvious
RANK = 256
TARGETS = {"unet": ("attn1.to_q", "attn2.to_k", "ff.net.2"), "text_encoder": ("self_attn.q_proj",)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _cycle(pipe: Any, i: int) -> None:
    sd = lora_dict(pipe, rank=RANK, seed=i, targets=TARGETS)
    pipe.load_lora_weights(sd, adapter_name=f"a{i % 3}")
    pipe.set_adapters([f"a{i % 3}"], [0.5 + (i % 5) / 10])
    text_output(pipe)
    if i % 10 == 0:
        denoiser_output(pipe)
    if i % 25 == 0:
        pipe.fuse_lora()
        pipe.unfuse_lora()
    if i % 2:
        pipe.unload_lora_weights()
    else:
        pipe.delete_adapters([f"a{i % 3}"])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_200_load_unload_cycles_keep_memory_flat() -> None:
    pipe = new_pipe("sd1")
    base = snapshot(pipe, outputs=False)
    for i in range(20):  # warm-up: allocator pools, caches of torch / diffusers
        _cycle(pipe, i)
    gc.collect()
    rss0, tensors0 = _rss(), _live_tensors()
    for i in range(20, 220):
        _cycle(pipe, i)
    gc.collect()
    grown = _rss() - rss0
    assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MB over 200 load/unload cycles"
    assert _live_tensors() <= tensors0 + 5, f"live tensors {tensors0} -> {_live_tensors()}"
    # nothing left behind: no adapters, no patched modules, weights bit-identical to the start
    assert pipe.get_list_adapters() == {}
    for comp in ("unet", "text_encoder"):
        mgr = lorakit.get_manager(getattr(pipe, comp))
        assert not mgr.adapters and not mgr.slots and not mgr.info
        sd = getattr(pipe, comp).state_dict()
        for k, v in base.weights[comp].items():
            assert torch.equal(v, sd[k]), f"{comp}.{k}"


@pytest.mark.parametrize("how", ["delete_adapters", "unload_lora_weights", "fuse-unfuse-delete", "fuse-unload"])
def test_no_reference_to_unloaded_adapter_tensors(how: str) -> None:
    pipe = new_pipe("sd1")
    pipe.load_lora_weights(lora_dict(pipe, seed=1), adapter_name="keep")  # another adapter stays loaded
    sd = lora_dict(pipe, seed=2)
    refs = [weakref.ref(t) for t in sd.values()]
    storages = [weakref.ref(t.untyped_storage()) for t in sd.values()] if hasattr(torch, "UntypedStorage") else []
    pipe.load_lora_weights(sd, adapter_name="gone")
    del sd
    pipe.set_adapters(["keep", "gone"], [0.5, 0.8])
    denoiser_output(pipe)  # builds the combined caches that hold stacked copies
    text_output(pipe)
    pipe.set_lora_device(["gone"], "cpu")
    if how.startswith("fuse"):
        pipe.fuse_lora(adapter_names=["gone"])
        if how == "fuse-unfuse-delete":
            pipe.unfuse_lora()
    if how in ("delete_adapters", "fuse-unfuse-delete"):
        pipe.delete_adapters("gone")
    else:
        pipe.unload_lora_weights()
    denoiser_output(pipe)
    text_output(pipe)
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert not alive, f"{len(alive)} of {len(refs)} tensors of the unloaded adapter are still referenced"
    del storages  # untyped storages are recreated per call; the tensor weakrefs are the check


def test_fused_then_unloaded_keeps_only_the_fused_weights() -> None:
    """After fuse + unload the fused weights stay (diffusers semantics) but no adapter tensor or original copy is
    referenced by lorakit any more."""
    pipe = new_pipe("sd1")
    sd = lora_dict(pipe, seed=3)
    refs = [weakref.ref(t) for t in sd.values()]
    original = {k: weakref.ref(v) for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(sd, adapter_name="x")
    del sd
    pipe.fuse_lora()
    fused_ptrs = {k: v.data_ptr() for k, v in pipe.unet.state_dict().items()}
    pipe.unload_lora_weights()
    gc.collect()
    assert all(r() is None for r in refs)
    assert {k: v.data_ptr() for k, v in pipe.unet.state_dict().items()} == fused_ptrs
    assert original  # (the original parameter objects are the module's own and stay)


def test_unload_leaves_no_hooks() -> None:
    pipe = new_pipe("sd1")
    before = {c: snapshot(pipe, outputs=False).hooks[c] for c in ("unet", "text_encoder")}
    pipe.load_lora_weights(lora_dict(pipe, seed=1), adapter_name="x")
    pipe.unload_lora_weights()
    after = snapshot(pipe, outputs=False).hooks
    for comp, hooks in before.items():
        assert hooks == after[comp], f"{comp}: hooks left after unload"
