"""Issue 16 from Python: warnings visible by default and the verbosity control, the load report's public home,
``lorakit.save_adapter`` (reloads to the same outputs in lorakit and in diffusers), the refused
``save_lora_weights(unet_lora_layers=adapter_state_dict(...))`` route, and the file hashes' rules."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lorakit
from lorakit import errors
from lorakit.io import file_hashes, read_header
from lorakit.report import LoadReport
from lorakit.tiny import tiny_pipeline

TB = "down_blocks.1.attentions.0.transformer_blocks.0"


def tiny_lora(path: Path, stray: bool = False) -> Path:
    """A diffusers-layout LoRA for the tiny SD1 pipeline (UNet + text encoder, alpha != rank), optionally with two
    keys for a module the model does not have."""
    g = torch.Generator().manual_seed(0)
    sd = {
        f"unet.{TB}.attn1.to_q.lora_A.weight": torch.randn(2, 16, generator=g),
        f"unet.{TB}.attn1.to_q.lora_B.weight": torch.randn(16, 2, generator=g),
        "unet.down_blocks.0.resnets.0.conv1.lora_A.weight": torch.randn(2, 8, 3, 3, generator=g),
        "unet.down_blocks.0.resnets.0.conv1.lora_B.weight": torch.randn(8, 2, 1, 1, generator=g),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 32, generator=g),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 2, generator=g),
    }
    if stray:
        sd["unet.down_blocks.7.attentions.0.proj_in.lora_A.weight"] = torch.randn(2, 16, generator=g)
        sd["unet.down_blocks.7.attentions.0.proj_in.lora_B.weight"] = torch.randn(16, 2, generator=g)
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 4, "text_encoder.r": 2,
                                                 "text_encoder.lora_alpha": 1})}
    save_file({k: v * 0.3 for k, v in sd.items()}, str(path), metadata=meta)
    return path


@torch.no_grad()
def outputs(pipe: object) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x, enc = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    ids = torch.randint(0, 500, (1, 7), generator=g)
    return {
        "unet": pipe.unet(x, torch.tensor([10]), encoder_hidden_states=enc).sample,  # type: ignore[attr-defined]
        "text_encoder": pipe.text_encoder(ids).last_hidden_state,  # type: ignore[attr-defined]
    }


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    for comp, w in want.items():
        assert float((got[comp] - w).abs().max() / w.abs().max()) <= tol, comp


# ----------------------------------------------------------------------------------------------- 1: warnings
def test_warnings_are_visible_by_default_from_python(tmp_path: Path) -> None:
    """A partial load and a call-time scale on fused adapters print to stderr with no logging set-up at all
    (a fresh interpreter: no handler on the root logger), once each; LORAKIT_VERBOSITY=error hides them."""
    path = tiny_lora(tmp_path / "stray.safetensors", stray=True)
    script = f"""
import torch, lorakit
from lorakit.tiny import tiny_pipeline
pipe = lorakit.attach(tiny_pipeline("sd1"))
pipe.load_lora_weights({str(path)!r}, adapter_name="x")
pipe.fuse_lora()
pipe("a cat", num_inference_steps=1, height=16, width=16, cross_attention_kwargs={{"scale": 0.5}})
"""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LORAKIT_VERBOSITY", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("WARNING lorakit")]
    assert any("2 of 8 keys not loaded" in line and "down_blocks.7" in line for line in lines), proc.stderr
    assert sum("call-time LoRA scale 0.5 does not apply to the fused adapter" in line for line in lines) >= 1
    assert len(lines) == len(set(lines))  # printed once, not once per handler

    env["LORAKIT_VERBOSITY"] = "error"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING lorakit" not in proc.stderr


def test_verbosity_control(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("lorakit")
    before = log.level
    try:
        assert lorakit.log.WARNING == logging.WARNING and lorakit.get_verbosity() in (logging.WARNING, before)
        lorakit.set_verbosity_info()
        assert lorakit.get_verbosity() == logging.INFO
        lorakit.set_verbosity("debug")
        assert lorakit.get_verbosity() == logging.DEBUG
        lorakit.set_verbosity(logging.ERROR)
        assert lorakit.get_verbosity() == logging.ERROR
        lorakit.set_verbosity_warning()
        assert lorakit.get_verbosity() == logging.WARNING
        lorakit.set_verbosity_error()
        with caplog.at_level(logging.WARNING, logger="lorakit"):  # caplog still sees lorakit (it propagates)
            logging.getLogger("lorakit.probe").warning("seen by caplog")
        assert "seen by caplog" in caplog.text
        with pytest.raises(ValueError, match="unknown verbosity"):
            lorakit.set_verbosity("loud")
        with pytest.raises(TypeError):
            lorakit.set_verbosity(None)  # type: ignore[arg-type]
    finally:
        log.setLevel(before)
    # lorakit's handler is installed (no NullHandler) and steps aside while the root logger has handlers
    assert lorakit.log.default_handler() in log.handlers
    assert not any(isinstance(h, logging.NullHandler) for h in log.handlers)
    assert log.propagate


# ----------------------------------------------------------------------------------------------- 1: load report
def test_load_report_public_home(tmp_path: Path, quiet_libraries: None) -> None:
    path = tiny_lora(tmp_path / "stray.safetensors", stray=True)
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    pipe.load_lora_weights(str(path), adapter_name="style")
    report = pipe.lora_report("style")
    assert isinstance(report, LoadReport) and report is lorakit.load_report(pipe, "style")
    assert (report.matched_keys, report.total_keys) == (6, 8)
    assert {s.key for s in report.skipped} == {f"unet.down_blocks.7.attentions.0.proj_in.lora_{x}.weight"
                                               for x in "AB"}
    assert "6/8 keys matched" in report.summary()
    json.dumps(report.to_dict())
    with pytest.raises(lorakit.errors.AdapterNotFoundError, match="nope"):
        pipe.lora_report("nope")


# ----------------------------------------------------------------------------------------------- 5: saving
def test_save_lora_weights_refuses_lorakits_canonical_state_dict(tmp_path: Path, quiet_libraries: None) -> None:
    """The obvious route writes nothing (it used to write a file that could not be loaded back): a typed error
    points to save_adapter."""
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    pipe.load_lora_weights(str(tiny_lora(tmp_path / "a.safetensors")), adapter_name="style")
    canonical = lorakit.get_manager(pipe.unet).adapter_state_dict("style")
    out = tmp_path / "out"
    with pytest.raises(errors.FormatError, match=r"canonical adapter tensors.*lorakit\.save_adapter") as ei:
        pipe.save_lora_weights(str(out), unet_lora_layers=canonical)
    assert "unet_lora_layers" in str(ei.value) and isinstance(ei.value, ValueError)
    assert not (out / "pytorch_lora_weights.safetensors").exists()


@pytest.mark.parametrize("layout", ["diffusers", "kohya", "peft"])
def test_save_adapter_reloads_to_the_same_outputs(tmp_path: Path, layout: str, quiet_libraries: None) -> None:
    """Every component of a loaded adapter (a LyCORIS-style LoCon conv + attention + text encoder), to a folder or
    a file, reloads in lorakit to the same outputs."""
    src = tiny_lora(tmp_path / "src.safetensors")
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    pipe.load_lora_weights(str(src), adapter_name="style")
    want = outputs(pipe)
    folder = tmp_path / layout
    path = lorakit.save_adapter(pipe, "style", str(folder) + "/", layout)
    expected = {"diffusers": folder / "pytorch_lora_weights.safetensors", "kohya": folder / "style.safetensors",
                "peft": folder}[layout]
    assert Path(path) == expected
    fresh = lorakit.attach(tiny_pipeline("sd1"))
    if layout == "peft":  # one sub-folder per component, each with its adapter_config.json
        for comp in ("unet", "text_encoder"):
            assert (folder / comp / "adapter_config.json").is_file()
            fresh.load_lora_weights(str(folder / comp), adapter_name=f"style_{comp}")
        fresh.set_adapters(["style_unet", "style_text_encoder"])
    else:
        _, header = read_header(path)
        assert header["lorakit.saved_from"] == "src.safetensors" and header["lorakit.source_format"] == "diffusers"
        fresh.load_lora_weights(path, adapter_name="style")
    assert_same(outputs(fresh), want)

    with pytest.raises(errors.DestinationExistsError):
        lorakit.save_adapter(pipe, "style", str(folder) + "/", layout)
    file_path = tmp_path / f"one-{layout}.safetensors"
    if layout == "peft":
        with pytest.raises(errors.FormatError, match="one component per adapter_config.json"):
            lorakit.save_adapter(pipe, "style", file_path, layout)
        assert lorakit.save_adapter(pipe, "style", file_path, layout, component="unet") == str(file_path)
    else:
        assert lorakit.save_adapter(pipe, "style", file_path, layout) == str(file_path)
        again = lorakit.attach(tiny_pipeline("sd1"))
        again.load_lora_weights(str(file_path))
        assert_same(outputs(again), want)


def test_save_adapter_diffusers_layout_reloads_in_diffusers(tmp_path: Path, quiet_libraries: None) -> None:
    """The diffusers layout, loaded by plain diffusers + PEFT (no lorakit), gives lorakit's outputs."""
    src = tiny_lora(tmp_path / "src.safetensors")
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    pipe.load_lora_weights(str(src), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.3])  # saved as loaded: weights are not baked in
    pipe.set_adapters(["style"], adapter_weights=[1.0])
    want = outputs(pipe)
    lorakit.save_adapter(pipe, "style", tmp_path / "out")
    plain = tiny_pipeline("sd1")
    assert not isinstance(plain, lorakit.LoraBaseMixin)
    plain.load_lora_weights(str(tmp_path / "out"), adapter_name="style")
    assert_same(outputs(plain), want)


def test_save_adapter_errors(tmp_path: Path, quiet_libraries: None) -> None:
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    with pytest.raises(errors.FormatError, match="0 adapters loaded"):
        lorakit.save_adapter(pipe, None, tmp_path)
    pipe.load_lora_weights(str(tiny_lora(tmp_path / "a.safetensors")), adapter_name="style")
    with pytest.raises(errors.AdapterNotFoundError):
        lorakit.save_adapter(pipe, "styel", tmp_path / "o")
    with pytest.raises(errors.ComponentError, match="did you mean 'unet'"):
        lorakit.save_adapter(pipe, "style", tmp_path / "o", component="unte")
    with pytest.raises(errors.UnsupportedPipelineError):
        lorakit.save_adapter(tiny_pipeline("sd1"), "style", tmp_path / "o")
    assert Path(lorakit.save_adapter(pipe, None, tmp_path / "o")).name == "pytorch_lora_weights.safetensors"


# ----------------------------------------------------------------------------------------------- 8: hashes
def test_file_hashes_follow_the_published_rules(tmp_path: Path) -> None:
    """sha256 of the file; AutoV2 = its first 10 hex digits; A1111's LoRA hash = sha256 of the bytes after the
    8-byte length and the JSON header (kohya's addnet hash), 12 hex digits; not changed by editing the header."""
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    t = {"x.lora_down.weight": torch.arange(12.0).reshape(3, 4)}
    save_file(t, str(a), metadata={"ss_output_name": "a"})
    save_file(t, str(b), metadata={"ss_output_name": "a much longer name, so the header has another length"})
    data = a.read_bytes()
    n = int.from_bytes(data[:8], "little")
    ha, hb = file_hashes(a), file_hashes(b)
    assert ha.sha256 == hashlib.sha256(data).hexdigest() and ha.autov2 == ha.sha256[:10]
    assert ha.lora_hash == hashlib.sha256(data[8 + n :]).hexdigest() and ha.lora_hash_short == ha.lora_hash[:12]
    assert ha.lora_hash == hb.lora_hash and ha.sha256 != hb.sha256
    with_header = file_hashes(a, header_lora_hash=ha.lora_hash.upper())
    assert with_header.lora_hash_short == ha.lora_hash[:12] and not with_header.header_hash_stale
    assert file_hashes(a, header_lora_hash="0" * 64).header_hash_stale
    pickle = tmp_path / "p.pt"
    torch.save(t, pickle)
    hp = file_hashes(pickle)  # not safetensors: A1111 hashes the whole file
    assert hp.lora_hash == hp.sha256 == hashlib.sha256(pickle.read_bytes()).hexdigest()
