"""Bad files and bad sources through the public pipeline API: a typed one-line error naming the file, and the
pipeline (weights, adapters, active / fused sets, hooks, offload, outputs) exactly as before."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from safety_helpers import busy_pipe, check_fails, lora_dict, new_pipe

import lorakit
from lorakit import errors
from lorakit.formats import from_canonical, to_canonical


@pytest.fixture
def pipe() -> Any:
    return busy_pipe("sd1")


@pytest.fixture
def good_file(tmp_path: Path, pipe: Any) -> Path:
    path = tmp_path / "good.safetensors"
    save_file(lora_dict(pipe, seed=7), str(path))
    return path


def _header(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _with_header(header: dict[str, Any], data: bytes) -> bytes:
    hb = json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data


def test_good_file_loads(pipe: Any, good_file: Path) -> None:
    """Control: the well-formed file the corruptions start from loads."""
    pipe.load_lora_weights(str(good_file), adapter_name="good")
    assert "good" in pipe.get_list_adapters()["unet"]


# ------------------------------------------------------------------------------------------------ broken bytes
@pytest.mark.parametrize("cut", ["data", "header"])
def test_truncated_safetensors(pipe: Any, good_file: Path, tmp_path: Path, cut: str) -> None:
    raw = good_file.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(raw[:-40] if cut == "data" else raw[:20])
    check_fails(pipe, lambda: pipe.load_lora_weights(str(bad)), errors.FormatError, str(bad), "truncated")


def test_zero_byte_file(pipe: Any, tmp_path: Path) -> None:
    bad = tmp_path / "empty.safetensors"
    bad.write_bytes(b"")
    check_fails(pipe, lambda: pipe.load_lora_weights(str(bad)), errors.FormatError, str(bad), "empty")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes(pipe: Any, tmp_path: Path, seed: int) -> None:
    bad = tmp_path / f"random{seed}.safetensors"
    bad.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).numpy().tobytes())
    check_fails(pipe, lambda: pipe.load_lora_weights(str(bad)), errors.FormatError, str(bad))


@pytest.mark.parametrize(
    "page",
    [
        b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Log in to download</body></html>",
        b"\n\n  <html lang='en'><head><meta charset='utf-8'></head><body>404</body></html>",
    ],
    ids=["doctype", "html"],
)
def test_html_page_saved_as_safetensors(pipe: Any, tmp_path: Path, page: bytes) -> None:
    bad = tmp_path / "lora.safetensors"
    bad.write_bytes(page)
    check_fails(pipe, lambda: pipe.load_lora_weights(str(bad)), errors.FormatError, str(bad), "HTML")


@pytest.mark.parametrize("lie", ["shape", "offsets", "dtype", "extra-bytes"])
def test_header_lies(pipe: Any, good_file: Path, tmp_path: Path, lie: str) -> None:
    header, data = _header(good_file.read_bytes())
    key = next(k for k in header if k != "__metadata__")
    if lie == "shape":
        header[key]["shape"] = [header[key]["shape"][0] * 2, *header[key]["shape"][1:]]
    elif lie == "offsets":
        begin, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = [begin + 4, end + 4]
    elif lie == "dtype":
        header[key]["dtype"] = "F16"
    else:
        data = data + b"\0" * 64
    bad = tmp_path / "lying.safetensors"
    bad.write_bytes(_with_header(header, data))
    frags = [str(bad)] + ([key] if lie != "extra-bytes" else [])
    check_fails(pipe, lambda: pipe.load_lora_weights(str(bad)), errors.FormatError, *frags)


# ------------------------------------------------------------------------------------------------ sources
def test_missing_file(pipe: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    check_fails(pipe, lambda: pipe.load_lora_weights(str(missing)), errors.SourceNotFoundError, str(missing))


def test_missing_weight_name_in_folder(pipe: Any, good_file: Path) -> None:
    folder = good_file.parent
    check_fails(
        pipe,
        lambda: pipe.load_lora_weights(str(folder), weight_name="other.safetensors"),
        errors.SourceNotFoundError,
        "other.safetensors",
        "good.safetensors",  # what the folder does hold
    )


def test_folder_with_several_candidates(pipe: Any, tmp_path: Path) -> None:
    folder = tmp_path / "loras"
    folder.mkdir()
    for name in ("style_a.safetensors", "style_b.safetensors"):
        save_file(lora_dict(pipe, seed=9), str(folder / name))
    check_fails(
        pipe,
        lambda: pipe.load_lora_weights(str(folder)),
        errors.FormatError,
        str(folder),
        "style_a.safetensors",
        "style_b.safetensors",
        "weight_name",
    )
    # and the documented way out works
    pipe.load_lora_weights(str(folder), weight_name="style_b.safetensors", adapter_name="b")
    assert "b" in pipe.get_list_adapters()["unet"]


# ------------------------------------------------------------------------------------------------ pickles
class _Payload:
    """Unpickling this runs ``exec``: it writes a marker file (the proof that code ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("variant", ["torch-zip.bin", "torch-legacy.ckpt", "raw-pickle.pt", "pickle-named.safetensors"])
def test_pickle_that_would_run_code(pipe: Any, tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "PWNED"
    evil = tmp_path / f"evil-{variant}"
    sd = dict(lora_dict(pipe, seed=4))
    sd["unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"] = _Payload(marker)  # type: ignore[assignment]
    if variant.startswith("torch-zip"):
        torch.save(sd, evil)
    elif variant.startswith("torch-legacy"):
        torch.save(sd, evil, _use_new_zipfile_serialization=False)
    else:
        with open(evil, "wb") as f:
            pickle.dump(sd, f, protocol=2)
    check_fails(pipe, lambda: pipe.load_lora_weights(str(evil)), errors.UnsafeFileError, str(evil), "nothing was executed")
    assert not marker.exists(), "the pickle's code ran"
    # the proof that the file is really malicious: a plain unpickler runs the payload
    if variant.startswith(("raw", "pickle")):
        with open(evil, "rb") as f:
            pickle.load(f)  # noqa: S301 - deliberate, to prove the payload
    else:
        torch.load(evil, weights_only=False)
    assert marker.read_text() == "code ran"


# ------------------------------------------------------------------------------------------------ layouts
def test_file_of_unknown_layout(pipe: Any, tmp_path: Path) -> None:
    """A full model checkpoint (or anything that is not an adapter) saved as a LoRA."""
    bad = tmp_path / "model.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.randn(32),
        },
        str(bad),
    )
    msg = check_fails(
        pipe, lambda: pipe.load_lora_weights(str(bad)), (errors.KeyMismatchError, errors.FormatError), str(bad)
    )
    assert "model.diffusion_model.input_blocks.0.0.weight" in msg


def test_file_with_zero_matching_keys(pipe: Any, tmp_path: Path) -> None:
    bad = tmp_path / "other-model.safetensors"
    save_file(
        {
            "unet.mid_block.attentions.7.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, 16),
            "unet.mid_block.attentions.7.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(16, 2),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, 16),
            "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(16, 2),
        },
        str(bad),
    )
    check_fails(
        pipe, lambda: pipe.load_lora_weights(str(bad)), errors.KeyMismatchError, str(bad), "no key matched", "mid_block"
    )


# ------------------------------------------------------------------------------------------------ wrong family
def _family_file(tmp_path: Path, family: str, layout: str) -> Path:
    """A LoRA file made for a tiny ``family`` pipeline (attention layers of the UNet and every text encoder)."""
    src = new_pipe(family)
    sd = lora_dict(src, seed=11)
    meta: dict[str, str] = {}
    if layout == "kohya":
        comps = {c: getattr(src, c) for c in ("unet", "text_encoder", "text_encoder_2") if hasattr(src, c)}
        sd, meta = from_canonical(to_canonical(sd, {}, comps).adapters, "kohya", family=family)
    path = tmp_path / f"{family}-{layout}.safetensors"
    save_file(sd, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_sdxl_file_into_sd15_pipeline(pipe: Any, tmp_path: Path, layout: str) -> None:
    path = _family_file(tmp_path, "sdxl", layout)
    # SDXL cross-attention takes 64-wide text states in the tiny models (2048 in the real ones), SD1.5 32 (768)
    msg = check_fails(pipe, lambda: pipe.load_lora_weights(str(path)), errors.ShapeMismatchError, str(path), "attn2.to_")
    assert "16, 32" in msg and "64" in msg, msg  # the module's shape and the file's


@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_sd15_file_into_sdxl_pipeline(tmp_path: Path, layout: str) -> None:
    path = _family_file(tmp_path, "sd1", layout)
    xl = busy_pipe("sdxl")
    msg = check_fails(xl, lambda: xl.load_lora_weights(str(path)), errors.ShapeMismatchError, str(path), "attn2.to_")
    assert "16, 64" in msg and "32" in msg, msg


def test_failed_load_creates_no_manager_state_on_fresh_pipeline(tmp_path: Path) -> None:
    """On a pipeline that never had a LoRA, a failed load leaves no adapters and no hooks behind."""
    fresh = new_pipe("sd1", offload=True)
    path = _family_file(tmp_path, "sdxl", "diffusers")
    check_fails(fresh, lambda: fresh.load_lora_weights(str(path)), errors.ShapeMismatchError, str(path))
    assert fresh.get_list_adapters() == {}
    for comp in ("unet", "text_encoder"):
        mgr = lorakit.get_manager(getattr(fresh, comp), create=False)
        assert mgr is None or (not mgr.adapters and not mgr.slots)


def test_pickle_payload_marker_is_clean(tmp_path: Path) -> None:
    """Sanity: nothing in this module leaves the payload's marker behind in the working directory."""
    assert not os.path.exists("PWNED")
