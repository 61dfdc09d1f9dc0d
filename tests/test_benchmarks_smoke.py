"""Smoke test of the benchmark harness (benchmarks/run.py) at toy size, so it cannot rot. No timing assertions."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


@pytest.fixture(scope="module")
def run_module():
    sys.path.insert(0, BENCH)
    try:
        import run

        yield run
    finally:
        sys.path.remove(BENCH)


def test_toy_run_writes_a_complete_report(tmp_path, run_module) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "benchmarks.md"
    raw = tmp_path / "raw.json"
    argv = [
        "--toy", "--in-process", "--workdir", str(tmp_path / "work"), "--out", str(out), "--json", str(raw),
        "--repeats", "1", "--cycles", "2", "--resident", "4", "--inner", "1",
    ]
    assert run_module.main(argv) == 0
    text = out.read_text()
    assert "| figure | diffusers + PEFT | lorakit | ratio | target | met |" in text
    assert "## Errors" not in text, text[text.find("## Errors"):]
    for figure in ("load from file", "load from in-memory dict", "fuse_lora", "unfuse_lora", "set_adapters",
                   "unload_lora_weights", "UNet forward", "peak extra RSS", "RSS growth",
                   "first fuse_lora in a fresh process", "serving loop", "during the first fuse", "per_sample",
                   "AdapterCache", "## Memory: what fits in 24 GiB"):
        assert figure in text, figure
    data = json.loads(raw.read_text())
    agg = data["aggregate"]
    for tool in ("peft", "lorakit"):
        for group, m in agg[tool]["memory"].items():
            assert 0 < m["model"] <= m["peak"], (tool, group)
        assert set(agg[tool]["ops"]) == {"kohya", "locon", "diffusers"}
        for fig in agg[tool]["ops"].values():
            assert fig["fuse_changed_weights"]  # the fuse did something
    # lorakit's unfuse gives the originals back bit for bit, after every serving-loop cycle too, in both strategies
    assert all(f["restored"]["identical"] for f in agg["lorakit"]["ops"].values())
    assert {k.split(":")[1] for k in agg["lorakit"]["fuse"]} == {"inplace", "copy"}
    assert all(f["exact"] for f in agg["lorakit"]["fuse"].values())
    # both tools compute the same LoRA: outputs agree to fp32 rounding
    for k, v in data["cross"].items():
        assert v["rel"] < 1e-4, (k, v)
    for k, v in agg["lorakit"]["forward"]["agreement"].items():
        if not k.startswith("lora_effect"):
            assert v["rel"] < 1e-4, (k, v)
    assert agg["lorakit"]["forward"]["agreement"]["lora_effect:unet"]["max_abs"] > 0
    assert agg["lorakit"]["forward"]["agreement"]["lora_effect:te"]["max_abs"] > 0


def test_cuda_fp16_path_with_the_device_faked(tmp_path, run_module, monkeypatch) -> None:
    """``--device cuda --dtype fp16`` end to end on the CPU: synchronised timing, the allocator's peak as the fuse
    memory figure, fp16 weights restored bit for bit; on a GPU machine the same command measures for real."""
    pytest.importorskip("peft")
    monkeypatch.syspath_prepend(BENCH)
    import worker

    monkeypatch.setenv(worker.FAKE_CUDA_ENV, "1")
    out, raw = tmp_path / "gpu.md", tmp_path / "raw.json"
    argv = [
        "--toy", "--in-process", "--device", "cuda", "--dtype", "fp16", "--groups", "ops,fuse", "--fuse-threads", "0",
        "--workdir", str(tmp_path / "work"), "--out", str(out), "--json", str(raw), "--repeats", "1",
    ]
    assert run_module.main(argv) == 0
    text = out.read_text()
    assert "## Errors" not in text, text[text.find("## Errors"):]
    assert "fp16 on cuda" in text
    assert "peak extra device memory during the first fuse" in text
    data = json.loads(raw.read_text())
    for group in ("ops", "fuse"):
        for tool in ("peft", "lorakit"):
            for r in data["results"][group][tool]:
                assert r["_syncs"] > 0, (group, tool)  # every timed call synchronised with the device
    agg = data["aggregate"]
    assert all(f["restored"]["identical"] for f in agg["lorakit"]["ops"].values())
    assert all(f["exact"] and f["peak_memory"] == "device" for f in agg["lorakit"]["fuse"].values())
    for fig in agg["lorakit"]["ops"].values():
        assert fig["fuse_changed_weights"]
