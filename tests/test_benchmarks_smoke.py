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
                   "AdapterCache"):
        assert figure in text, figure
    data = json.loads(raw.read_text())
    agg = data["aggregate"]
    for tool in ("peft", "lorakit"):
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
