"""The CLI on Flux: ``lorakit demo --family flux`` and ``--model tiny:flux`` (offline, tiny seeded pipelines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorakit.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_and_generate_on_tiny_flux(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "--family", "flux", "-o", str(tmp_path), "--steps", "1")
    assert code == 0, out + err
    assert out.count("PASS") == 5 and "FAIL" not in out
    assert "built a tiny seeded flux pipeline" in out and "family flux" in out
    lora = tmp_path / "lorakit-demo-lora.safetensors"

    def generate(*extra: str, name: str) -> np.ndarray:
        path = tmp_path / name
        code, out, err = run(capsys, "-q", "generate", "--model", "tiny:flux", "--prompt", "a cat", "--steps", "1",
                             "--size", "32x32", "--seed", "3", *extra, "-o", str(path))
        assert code == 0, out + err
        with Image.open(path) as im:
            assert im.size == (32, 32)
            return np.asarray(im).astype(np.int16)

    plain = generate(name="plain.png")
    styled = generate("--lora", f"{lora}:1.0", name="styled.png")
    off = generate("--lora", f"{lora}:0.0", name="off.png")
    assert np.abs(styled - plain).max() > 0
    assert np.array_equal(off, plain)
