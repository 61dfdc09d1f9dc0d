"""Thread safety with the default ("lowrank") unfused strategy: what docs/safety.md promises.

* forwards in several threads on one pipeline, with no state change meanwhile: outputs identical to one thread;
* ``set_adapters`` in one thread while another runs forwards: no crash, no weight or adapter tensor ever written,
  and once the writer is done (and the state changed once more) outputs are those of the final state;
* loads of different adapter names from two threads: both land, in every component.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from safety_helpers import assert_unchanged, denoiser_output, lora_dict, new_pipe, snapshot, text_output

import lorakit

STATES: list[tuple[list[str], list[float]]] = [(["a"], [1.0]), (["b"], [0.5]), (["a", "b"], [0.3, 0.8]), ([], [])]


@pytest.fixture(autouse=True)
def _fast_switching() -> Iterator[None]:
    """Switch threads every 10 µs instead of 5 ms so that the interleavings are many."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _pipe() -> Any:
    pipe = new_pipe("sd1")
    pipe.load_lora_weights(lora_dict(pipe, seed=1), adapter_name="a")
    pipe.load_lora_weights(lora_dict(pipe, seed=2), adapter_name="b")
    pipe.set_adapters(["a", "b"])  # a load activates only the new adapter (as diffusers): combine both
    return pipe


def _run(*targets: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung (deadlock?)"
    return errors


def test_concurrent_forwards_match_a_single_thread() -> None:
    pipe = _pipe()
    pipe.set_adapters(["a", "b"], [0.6, 0.4])
    want_te, want_unet = text_output(pipe), denoiser_output(pipe)
    got: list[tuple[str, torch.Tensor]] = []

    def worker() -> None:
        for i in range(8):
            got.append(("te", text_output(pipe)))
            if i % 4 == 0:
                got.append(("unet", denoiser_output(pipe)))

    assert _run(worker, worker) == []
    assert len(got) == 2 * 10
    for name, out in got:
        assert torch.equal(out, want_te if name == "te" else want_unet), name


def test_set_adapters_while_another_thread_runs_forwards() -> None:
    pipe = _pipe()
    ref = _pipe()
    before = snapshot(pipe, outputs=False)
    done = threading.Event()
    outputs: list[torch.Tensor] = []

    def writer() -> None:
        i = 0
        while not done.is_set():
            names, weights = STATES[i % len(STATES)]
            if names:
                pipe.set_adapters(names, weights)
            else:
                pipe.disable_lora()
                pipe.enable_lora()
            i += 1

    def reader() -> None:
        try:
            for i in range(40):
                outputs.append(text_output(pipe))
                if i % 8 == 0:
                    outputs.append(denoiser_output(pipe))
        finally:
            done.set()

    assert _run(writer, reader) == []
    assert len(outputs) == 45 and all(bool(torch.isfinite(o).all()) for o in outputs)
    # nothing was ever written into the model or the adapters (the default strategy never touches weights)
    pipe.set_adapters(["a", "b"])  # the starting state again
    assert_unchanged(before, snapshot(pipe, outputs=False), ignore=["version"])
    # once the writer is done, one more state change gives exactly the outputs of that state
    for names, weights in STATES[:3]:
        pipe.set_adapters(names, weights)
        ref.set_adapters(names, weights)
        assert torch.equal(text_output(pipe), text_output(ref))
        assert torch.equal(denoiser_output(pipe), denoiser_output(ref))


def test_state_change_during_a_cache_rebuild_does_not_leave_stale_outputs() -> None:
    """Deterministic replay of a two-thread interleaving: another thread's ``set_adapters(["b"])`` lands while a
    forward is rebuilding a module's combined form (simulated by running it inside ``weight_of``, which the rebuild
    calls after reading the active set). Every forward after that must give state ``b``'s output."""
    pipe = _pipe()
    ref = _pipe()
    ref.set_adapters(["b"])
    want = text_output(ref)
    pipe.set_adapters(["a"])
    text_output(pipe)
    mgr = lorakit.get_manager(pipe.text_encoder)
    real_weight_of = mgr.weight_of
    fired: list[bool] = []

    def weight_of(name: str, path: str) -> float:
        w = real_weight_of(name, path)
        if not fired:
            fired.append(True)
            pipe.set_adapters(["b"])  # "the other thread"
        return w

    mgr.weight_of = weight_of  # type: ignore[method-assign]
    try:
        pipe.set_adapters(["a"], [0.9])
        text_output(pipe)  # the forward during which the other thread switched to "b"
    finally:
        del mgr.weight_of
    assert fired
    assert torch.equal(text_output(pipe), want), "a stale combined form survived the state change"


def test_loads_of_different_names_from_two_threads() -> None:
    pipe = new_pipe("sd1")
    dicts = {f"t{i}": lora_dict(pipe, seed=10 + i) for i in range(4)}

    def loader(names: list[str]) -> Callable[[], None]:
        def run() -> None:
            for n in names:
                pipe.load_lora_weights(dicts[n], adapter_name=n)

        return run

    assert _run(loader(["t0", "t2"]), loader(["t1", "t3"])) == []
    listed = pipe.get_list_adapters()
    assert sorted(listed["unet"]) == sorted(dicts) and sorted(listed["text_encoder"]) == sorted(dicts)
    ref = new_pipe("sd1")
    for n in sorted(dicts):
        ref.load_lora_weights(dicts[n], adapter_name=n)
    pipe.set_adapters(sorted(dicts), [0.25] * 4)
    ref.set_adapters(sorted(dicts), [0.25] * 4)
    torch.testing.assert_close(denoiser_output(pipe), denoiser_output(ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(text_output(pipe), text_output(ref), rtol=1e-5, atol=1e-6)


def test_concurrent_set_adapters_leave_every_component_in_one_state() -> None:
    """The pipeline lock serialises state changes: after two threads race set_adapters, the UNet and the text encoder
    hold the same active set and weights (one thread's call as a whole, never half of each)."""
    pipe = _pipe()

    def switch(names: list[str], weights: list[float]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(200):
                pipe.set_adapters(names, weights)

        return run

    assert _run(switch(["a"], [0.7]), switch(["b"], [0.2])) == []
    unet = lorakit.get_manager(pipe.unet)
    te = lorakit.get_manager(pipe.text_encoder)
    assert unet.active == te.active and len(unet.active) == 1
    assert unet.weight_of(unet.active[0], "x") == te.weight_of(te.active[0], "x")


def test_default_names_from_two_threads_do_not_collide() -> None:
    pipe = new_pipe("sd1")
    dicts = [lora_dict(pipe, seed=30 + i) for i in range(6)]

    def loader(ds: list[dict]) -> Callable[[], None]:
        def run() -> None:
            for d in ds:
                pipe.load_lora_weights(d)

        return run

    assert _run(loader(dicts[:3]), loader(dicts[3:])) == []
    assert sorted(pipe.get_list_adapters()["unet"]) == [f"default_{i}" for i in range(6)]
