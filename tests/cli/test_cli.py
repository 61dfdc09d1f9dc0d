"""The ``lorakit`` command end to end on tiny local pipelines: exit codes, output, images, baked folders.

The LoRA files are written by the reference tools (lycoris-lora's kohya network, PEFT + diffusers' writer) or by hand
from kohya's published naming (see conftest.py); images are compared with what LyCORIS' and diffusers + PEFT's own
loaders produce."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_files import REAL_SD1_MODULES, STYLE, lycoris_network, write_lycoris_file
from PIL import Image

import lorakit
from lorakit.cli import main
from lorakit.cli.commands import output_paths
from lorakit.cli.parser import parse_size

STEPS = "2"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def reference_image(model: Path, loras: list[tuple[Path, float | dict[str, float]]], prompt: str, *,
                    fuse: bool = False, plain: bool = False) -> np.ndarray:
    """What `lorakit generate` should produce, computed in-process with the library API."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    if not plain:
        lorakit.attach(pipe)
        for path, _ in loras:
            pipe.load_lora_weights(str(path), adapter_name=path.stem)
        if loras:
            pipe.set_adapters([p.stem for p, _ in loras], adapter_weights=[w for _, w in loras])
        if fuse:
            pipe.fuse_lora()
    image = pipe(prompt, num_inference_steps=int(STEPS), generator=torch.Generator().manual_seed(0)).images[0]
    return np.asarray(image)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def lycoris_image(pipe: object, file: Path, prompt: str, *, te: float, unet: float, tmp_path: Path) -> np.ndarray:
    """``pipe``'s image with ``file`` applied by LyCORIS' own modules (the network that wrote it, rebuilt on
    ``pipe`` and loaded from the file), text-encoder modules at ``te``, denoiser modules at ``unet``."""
    network = lycoris_network(pipe, STYLE, tmp_path)
    assert network.load_weights(str(file)) == {}  # no missing or unexpected keys
    for m in network.text_encoder_loras:
        m.multiplier = te
    for m in network.unet_loras:
        m.multiplier = unet
    pipe.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    image = pipe(prompt, num_inference_steps=int(STEPS), generator=torch.Generator().manual_seed(0)).images[0]  # type: ignore[operator]
    return np.asarray(image)


def assert_images_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal up to one uint8 level (fp32 sums in another order can round a pixel the other way)."""
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def n_keys(path: Path) -> int:
    from lorakit.io import read_header

    return len(read_header(path)[0])


# ----------------------------------------------------------------------------------------------- basics
def test_module_help_subprocess() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lorakit", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("inspect", "convert", "list", "generate", "bake", "demo"):
        assert cmd in proc.stdout


def test_exit_codes_of_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version")[0] == 0
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err
    code, _, err = run(capsys, "generate", "--prompt", "x")
    assert code == 2 and "--model" in err
    code, _, err = run(capsys, "convert", "x.safetensors", "--to", "onnx", "-o", "y")
    assert code == 2 and "invalid choice" in err
    code, _, err = run(capsys, "generate", "--model", "m", "--prompt", "x", "--size", "12xab", "-o", "o.png")
    assert code == 2 and "WIDTHxHEIGHT" in err
    for sub in ("inspect", "convert", "list", "generate", "bake", "demo"):
        assert run(capsys, sub, "--help")[0] == 0


def test_small_helpers() -> None:
    assert parse_size("768x512") == (768, 512)
    assert parse_size("64") == (64, 64)
    assert output_paths(Path("o/cat.png"), 1) == [Path("o/cat.png")]
    assert output_paths(Path("o/cat.png"), 2) == [Path("o/cat-1.png"), Path("o/cat-2.png")]
    assert output_paths(Path("o"), 2, [5, 6], folder=True) == [Path("o/lorakit-5.png"), Path("o/lorakit-6.png")]


# ----------------------------------------------------------------------------------------------- inspect
def test_inspect_table_and_json(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path) -> None:
    code, out, err = run(capsys, "inspect", str(real_sd1_lora))
    assert code == 0, err
    assert "kohya" in out and "SD1" in out and "unet: 3" in out and "text_encoder: 1" in out

    code, out, err = run(capsys, "inspect", "--json", str(real_sd1_lora), str(real_sd1_lora))
    assert code == 0, err
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == 2
    assert data[0]["format"] == "kohya"
    assert data[0]["family"] == "SD1"
    assert data[0]["components"] == {"text_encoder": 1, "unet": 3}
    assert data[0]["ranks"] == {"2": 4}


def test_inspect_a_peft_file_saved_by_diffusers(capsys: pytest.CaptureFixture[str],
                                                real_sd1_peft: tuple[Path, dict[str, torch.Tensor]]) -> None:
    path, _ = real_sd1_peft
    code, out, err = run(capsys, "inspect", "--json", str(path))
    assert code == 0, err
    (data,) = json.loads(out)
    assert data["format"] == "diffusers" and data["family"] == "SD1"
    assert data["components"] == {"text_encoder": 1, "unet": 3}
    assert data["ranks"] == {"2": 2, "4": 2}  # rank_pattern: the first module of each component has rank 2
    assert data["alphas"] == {"8": 4} and "lora_adapter_metadata" in data["alpha_source"]
    assert data["metadata"]["diffusers"]["unet.lora_alpha"] == 8


STRAY = "lora_unet_down_blocks_7_attentions_0_proj_in"


def stray_lora(lora_dir: Path, tmp_path: Path) -> Path:
    """style.safetensors (LyCORIS) plus one module the tiny model does not have (two keys written by hand)."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(lora_dir / "style.safetensors"))
    sd[f"{STRAY}.lora_down.weight"] = torch.zeros(4, 16)
    sd[f"{STRAY}.lora_up.weight"] = torch.zeros(16, 4)
    path = tmp_path / "stray.safetensors"
    save_file(sd, str(path))
    return path


def test_inspect_with_model_reports_coverage(capsys: pytest.CaptureFixture[str], tiny_sd1: Path,
                                             lora_dir: Path, tmp_path: Path,
                                             style_modules: dict[str, tuple[str, str]]) -> None:
    """Every module LyCORIS wrapped is reported on the module LyCORIS wrapped (found by identity, not by name)."""
    path = stray_lora(lora_dir, tmp_path)
    stray = STRAY
    expected = {comp: {p for c, p in style_modules.values() if c == comp} for comp in ("unet", "text_encoder")}

    code, out, err = run(capsys, "inspect", "--json", "--model", str(tiny_sd1), str(path))
    assert code == 0, err
    (data,) = json.loads(out)
    for comp, paths in expected.items():
        assert data["coverage"][comp]["matched"] == len(paths)
        assert set(data["landed"][comp]) == paths
    name_of = {where: name for name, where in style_modules.items()}
    to_q_path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    to_q = data["landed"]["unet"][to_q_path]
    assert to_q["rank"] == 4 and to_q["alpha"] == 2.0 and to_q["kind"] == "lora"
    stem = name_of[("unet", to_q_path)]
    assert to_q["keys"] == [f"{stem}.lora_down.weight", f"{stem}.lora_up.weight"]  # which keys feed the module
    q_proj = next(p for c, p in style_modules.values() if c == "text_encoder" and p.endswith("0.self_attn.q_proj"))
    assert data["landed"]["text_encoder"][q_proj]["keys"][0].startswith(name_of[("text_encoder", q_proj)] + ".")
    not_landed = {s["key"] for s in data["not_landed"]}
    assert not_landed == {f"{stray}.lora_down.weight", f"{stray}.lora_up.weight"}

    code, out, err = run(capsys, "inspect", "--model", str(tiny_sd1), "--modules", str(path))
    assert code == 0, err
    assert f"lands on unet: {len(expected['unet'])} modules" in out
    assert f"{stem}.{{lora_down.weight, lora_up.weight}} -> unet.{to_q_path}" in out
    assert "does not land" in out and stray in out


def test_inspect_a_lycoris_loha(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, texture_file: Path) -> None:
    code, out, err = run(capsys, "inspect", "--json", "--model", str(tiny_sd1), str(texture_file))
    assert code == 0, err
    (data,) = json.loads(out)
    from safetensors.torch import load_file

    modules = {k.split(".")[0] for k in load_file(str(texture_file))}  # LyCORIS' module names
    assert data["format"] == "kohya" and data["kinds"] == {"loha": len(modules)}
    assert set(data["landed"]) == {"unet"} and len(data["landed"]["unet"]) == len(modules)
    assert data["not_landed"] == []
    assert {m["rank"] for m in data["landed"]["unet"].values()} == {2}


def test_inspect_errors(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.safetensors"
    code, out, err = run(capsys, "inspect", str(missing))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("lorakit: error:") and "missing.safetensors" in err
    # one bad file among good ones: the good one is still reported, the exit status says something failed
    code, out, err = run(capsys, "inspect", "--json", str(real_sd1_lora), str(missing))
    assert code == 1
    data = json.loads(out)
    assert data[0]["format"] == "kohya" and "error" in data[1]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    code, _, err = run(capsys, "inspect", str(garbage))
    assert code == 1 and err.startswith("lorakit: error:") and "Traceback" not in err
    code, _, err = run(capsys, "inspect", "-v", str(garbage))
    assert code == 1 and "Traceback" in err
    code, _, err = run(capsys, "-v", "inspect", str(garbage))  # before the subcommand too
    assert code == 1 and "Traceback" in err


# ----------------------------------------------------------------------------------------------- convert
@pytest.mark.parametrize("layout", ["diffusers", "kohya"])
def test_convert(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path, tmp_path: Path, layout: str) -> None:
    dst = tmp_path / f"out-{layout}.safetensors"
    code, out, err = run(capsys, "convert", str(real_sd1_lora), "--to", layout, "-o", str(dst))
    assert code == 0, err
    assert dst.is_file()
    code, out, _ = run(capsys, "inspect", "--json", str(dst))
    (data,) = json.loads(out)
    assert data["format"] == layout
    assert data["components"] == {"text_encoder": 1, "unet": 3}
    assert data["alphas"] == {"1": 4}

    before = dst.read_bytes()
    code, _, err = run(capsys, "convert", str(real_sd1_lora), "--to", layout, "-o", str(dst))
    assert code == 1 and "already exists" in err and "--force" in err
    assert dst.read_bytes() == before
    code, _, err = run(capsys, "convert", "--force", str(real_sd1_lora), "--to", layout, "-o", str(dst))
    assert code == 0, err


def test_convert_a_peft_file_to_kohya_keeps_every_delta(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         real_sd1_peft: tuple[Path, dict[str, torch.Tensor]]) -> None:
    """PEFT's own ``scaling · B @ A`` equals what the kohya file says by kohya's published rules
    (``alpha / rank · up @ down`` under ``lora_unet_`` / ``lora_te_`` + the module path with ``_``)."""
    from safetensors.torch import load_file

    src, deltas = real_sd1_peft
    dst = tmp_path / "kohya.safetensors"
    code, out, err = run(capsys, "convert", str(src), "--to", "kohya", "-o", str(dst))
    assert code == 0, err
    sd = load_file(str(dst))
    prefix = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    assert len(sd) == 3 * len(REAL_SD1_MODULES)
    for comp, path, _ in REAL_SD1_MODULES:
        key = prefix[comp] + path.replace(".", "_")
        down, up, alpha = sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"], sd[f"{key}.alpha"]
        got = float(alpha) / down.shape[0] * (up @ down)
        torch.testing.assert_close(got, deltas[f"{comp}.{path}"], rtol=1e-5, atol=1e-6)


def test_convert_json(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path, tmp_path: Path) -> None:
    code, out, err = run(capsys, "convert", "--json", str(real_sd1_lora), "--to", "diffusers", "-o",
                         str(tmp_path / "x.safetensors"))
    assert code == 0, err
    data = json.loads(out)
    assert data["to"] == "diffusers" and data["source_format"] == "kohya"


# ----------------------------------------------------------------------------------------------- generate
def test_generate_with_prompt_tags(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                   tmp_path: Path) -> None:
    out_png = tmp_path / "cat.png"
    code, out, err = run(capsys, "generate", "--model", str(tiny_sd1), "--lora-dir", str(lora_dir), "--prompt",
                         "a cat, <lora:style:0.8> in the snow", "--steps", STEPS, "-o", str(out_png))
    assert code == 0, err
    assert f"wrote {out_png}" in out
    n = n_keys(lora_dir / "style.safetensors")
    assert "format kohya" in out and f"{n}/{n} keys matched" in out  # the load report summary
    assert "prompt: 'a cat, in the snow'" in out
    assert "generated 1 image(s)" in out
    got = read_png(out_png)
    with Image.open(out_png) as im:
        assert im.info["parameters"].startswith("a cat, <lora:style:0.8> in the snow\nSteps: 2, ")
    from diffusers import DiffusionPipeline

    want = lycoris_image(DiffusionPipeline.from_pretrained(str(tiny_sd1)), lora_dir / "style.safetensors",
                         "a cat, in the snow", te=0.8, unet=0.8, tmp_path=tmp_path)
    assert_images_close(got, want)
    base = reference_image(tiny_sd1, [], "a cat, in the snow", plain=True)
    assert not np.array_equal(got, base)


def test_generate_matches_diffusers_and_peft(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                            tmp_path: Path) -> None:
    """A PEFT file saved by diffusers, with different text-encoder and UNet weights: the image diffusers + PEFT make."""
    from diffusers import DiffusionPipeline

    out_png = tmp_path / "dog.png"
    code, out, err = run(capsys, "-q", "generate", "--model", str(tiny_sd1), "--lora-dir", str(lora_dir),
                         "--prompt", "<lora:detail:te=0.5:unet=1.5> a dog", "--steps", STEPS, "-o", str(out_png))
    assert code == 0, err
    ref = DiffusionPipeline.from_pretrained(str(tiny_sd1))
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(lora_dir / "sub"), weight_name="detail.safetensors", adapter_name="detail")
    ref.set_adapters(["detail"], adapter_weights=[{"unet": 1.5, "text_encoder": 0.5}])
    want = ref("a dog", num_inference_steps=int(STEPS), generator=torch.Generator().manual_seed(0)).images[0]
    assert_images_close(read_png(out_png), np.asarray(want))


def test_generate_te_unet_weights_and_lora_files(capsys: pytest.CaptureFixture[str], tiny_sd1: Path,
                                                 lora_dir: Path, tmp_path: Path) -> None:
    out_png = tmp_path / "two.png"
    style = lora_dir / "style.safetensors"
    detail = lora_dir / "sub" / "detail.safetensors"
    code, out, err = run(capsys, "-q", "generate", "--model", str(tiny_sd1), "--lora", f"{style}:-0.5",
                         "--lora-dir", str(lora_dir), "--prompt", "<lora:detail:te=0:unet=1.5> a dog",
                         "--steps", STEPS, "-o", str(out_png))
    assert code == 0, err
    assert out.strip() == f"wrote {out_png}"  # -q: results only
    want = reference_image(tiny_sd1, [(style, -0.5), (detail, {"unet": 1.5, "text_encoder": 0.0})], "a dog")
    np.testing.assert_array_equal(read_png(out_png), want)


def test_generate_fused_matches_unfused(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                        tmp_path: Path) -> None:
    style = lora_dir / "style.safetensors"
    fused, unfused = tmp_path / "fused.png", tmp_path / "unfused.png"
    for flag, path in (("--fuse", fused), (None, unfused)):
        args = ["generate", "--model", str(tiny_sd1), "--lora", str(style), "--prompt", "a cat", "--steps", STEPS,
                "--num-images", "2", "-o", str(path)]
        code, out, err = run(capsys, *args, *([flag] if flag else []))
        assert code == 0, err
    for i in (1, 2):
        a = read_png(tmp_path / f"fused-{i}.png").astype(int)
        b = read_png(tmp_path / f"unfused-{i}.png").astype(int)
        assert np.abs(a - b).max() <= 1  # uint8 rounding of fp32 differences


def test_generate_threads_and_per_step_time(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    seen: dict[str, int] = {}  # the suite's own thread count stays as it is
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.__setitem__("threads", n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: seen.get("threads", threads))
    args = ["generate", "--model", str(tiny_sd1), "--lora", str(lora_dir / "style.safetensors"), "--prompt", "a cat",
            "--steps", STEPS, "--num-images", "2"]
    code, out, err = run(capsys, *args, "--threads", "1", "-o", str(tmp_path / "one.png"))
    assert code == 0, err
    assert seen.pop("threads") == 1
    # one timed callback per denoising step of the one batched call
    assert re.search(rf"per step \d+\.\d+ s \(median of {STEPS}; first \d+\.\d+ s, slowest \d+\.\d+ s\), 1 torch "
                     r"thread\(s\)", out), out
    code, out, err = run(capsys, *args, "-o", str(tmp_path / "default.png"))
    assert code == 0, err
    assert f", {threads} torch thread(s)" in out
    code, out, err = run(capsys, *args, "--threads", "0", "-o", str(tmp_path / "zero.png"))
    assert code != 0 and "--threads must be at least 1 (got 0)" in err


@pytest.mark.parametrize(
    ("prompt", "extra", "message"),
    [
        ("a cat <lora:nope:1>", [], "no LoRA file named 'nope'"),
        ("a cat <lora:styel:1>", [], "did you mean 'style'"),
        ("a cat <lora:style:abc>", [], "weight 'abc' is not a number"),
        ("a cat <lora:style:0.5", [], "unclosed"),
        ("<lora:style:0.5> a cat <lora:style:0.7>", [], "tagged twice with different weights"),
        ("a cat <lora:style:0.5>", ["--lora", "{style}:0.7"], "given twice with different weights"),
        ("a cat", ["--lora", "{missing}"], "does not exist"),
        ("a cat", ["--negative-prompt", "<lora:style:1>"], "negative prompt"),
        ("a cat", ["--lora-dir", "{missing}"], "no such folder"),
    ],
)
def test_generate_lora_errors(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path, tmp_path: Path,
                              prompt: str, extra: list[str], message: str) -> None:
    fill = {"style": lora_dir / "style.safetensors", "missing": tmp_path / "missing.safetensors"}
    extra = [e.format(**fill) for e in extra]
    out_png = tmp_path / "x.png"
    dirs = [] if "--lora-dir" in extra else ["--lora-dir", str(lora_dir)]
    code, out, err = run(capsys, "generate", "--model", str(tiny_sd1), *dirs, "--prompt", prompt, *extra,
                         "-o", str(out_png))
    assert code == 1
    assert err.startswith("lorakit: error:") and err.count("\n") == 1, err
    assert message in err
    assert not out_png.exists()


def test_generate_model_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, lora_dir: Path) -> None:
    code, _, err = run(capsys, "generate", "--model", str(tmp_path / "nothing"), "--prompt", "x", "-o",
                       str(tmp_path / "x.png"))
    assert code == 1 and "no such folder" in err
    code, _, err = run(capsys, "generate", "--model", str(tmp_path), "--prompt", "x", "-o", str(tmp_path / "x.png"))
    assert code == 1 and "model_index.json" in err
    code, _, err = run(capsys, "generate", "--model", str(lora_dir / "style.safetensors"), "--prompt", "x", "-o",
                       str(tmp_path / "x.png"))
    assert code == 1 and "single-file" in err
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--prompt", "x", "-o", str(tmp_path / "x.txt"))
    assert code == 1 and "image file name" in err
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--prompt", "x", "--steps", "0", "-o",
                       str(tmp_path / "x.png"))
    assert code == 1 and "at least 1" in err
    code, _, err = run(capsys, "generate", "--model", "tiny:sd9", "--prompt", "x", "-o", str(tmp_path / "x.png"))
    assert code == 1 and "unknown tiny family" in err
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--device", "nonsense", "--prompt", "x", "-o",
                       str(tmp_path / "x.png"))
    assert code == 1 and "nonsense" in err and err.count("\n") == 1


def test_generate_tiny_model_id(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``--model tiny:FAMILY`` builds a tiny pipeline: the CLI can be tried without a download."""
    out_png = tmp_path / "t.png"
    code, out, err = run(capsys, "generate", "--model", "tiny:sd3", "--prompt", "a cat", "--steps", STEPS,
                         "--size", "16x16", "-o", str(out_png))
    assert code == 0, err
    assert read_png(out_png).shape == (16, 16, 3)


# ----------------------------------------------------------------------------------------------- bake
def test_bake_loads_with_plain_diffusers(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                         tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    style = lora_dir / "style.safetensors"
    detail = lora_dir / "sub" / "detail.safetensors"
    baked = tmp_path / "baked"
    code, out, err = run(capsys, "bake", "--model", str(tiny_sd1), "--lora", f"{style}:0.8", "--lora",
                         str(detail), "-o", str(baked))
    assert code == 0, err
    assert f"wrote {baked}" in out

    # no lorakit in the saved folder: same files and state_dict keys as the base, a plain diffusers class
    for comp in ("unet", "text_encoder"):
        base_files = sorted(p.name for p in (tiny_sd1 / comp).iterdir())
        assert sorted(p.name for p in (baked / comp).iterdir()) == base_files
        (weights,) = [p for p in (baked / comp).iterdir() if p.suffix == ".safetensors"]
        (base_weights,) = [p for p in (tiny_sd1 / comp).iterdir() if p.suffix == ".safetensors"]
        assert sorted(load_file(str(weights))) == sorted(load_file(str(base_weights)))
    index = json.loads((baked / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    plain = DiffusionPipeline.from_pretrained(str(baked))
    assert not isinstance(plain, lorakit.LoraBaseMixin)
    plain.set_progress_bar_config(disable=True)
    got = plain("a cat", num_inference_steps=int(STEPS), generator=torch.Generator().manual_seed(0),
                output_type="np").images

    # the fused pipeline, in-process
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd1))
    pipe.set_progress_bar_config(disable=True)
    lorakit.attach(pipe)
    pipe.load_lora_weights(str(style), adapter_name="style")
    pipe.load_lora_weights(str(detail), adapter_name="detail")
    pipe.set_adapters(["style", "detail"], adapter_weights=[0.8, 1.0])
    pipe.fuse_lora()
    want = pipe("a cat", num_inference_steps=int(STEPS), generator=torch.Generator().manual_seed(0),
                output_type="np").images
    np.testing.assert_array_equal(got, want)
    for comp in ("unet", "text_encoder"):
        fused_sd = getattr(pipe, comp).state_dict()
        for k, v in getattr(plain, comp).state_dict().items():
            assert torch.equal(v, fused_sd[k]), f"{comp}.{k}"


def test_bake_refuses_to_overwrite(capsys: pytest.CaptureFixture[str], tiny_sd1: Path, lora_dir: Path,
                                   tmp_path: Path) -> None:
    baked = tmp_path / "baked"
    baked.mkdir()
    (baked / "keep.txt").write_text("mine")
    args = ["bake", "--model", str(tiny_sd1), "--lora", str(lora_dir / "style.safetensors"), "-o", str(baked)]
    code, _, err = run(capsys, *args)
    assert code == 1 and "--force" in err
    assert sorted(p.name for p in baked.iterdir()) == ["keep.txt"]
    code, _, err = run(capsys, "bake", "--model", str(tiny_sd1), "-o", str(tmp_path / "b2"))
    assert code == 1 and "--lora" in err


# ----------------------------------------------------------------------------------------------- demo
def test_demo(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "-o", str(tmp_path), "--steps", "2")
    assert code == 0, out + err
    image = tmp_path / "lorakit-demo.png"
    lora = tmp_path / "lorakit-demo-lora.safetensors"
    assert image.is_file() and lora.is_file()
    with Image.open(image) as im:
        assert im.width > 5 * 64 and im.height > 64
    assert out.count("PASS") == 5 and "FAIL" not in out
    assert "noise by design" in out and "lorakit generate --model" in out
    for step in ("built a tiny seeded sd1 pipeline", "wrote a kohya-layout LoRA", "wrote a LyCORIS LoHa",
                 "inspected lorakit-demo-lora.safetensors", "342/342 keys matched", "480/480 keys matched",
                 "fused both", "unfused", "wrote the image grid"):
        assert step in out
    # the files the demo wrote are a kohya LoRA and a LyCORIS LoHa
    code, out, _ = run(capsys, "inspect", "--json", "--model", "tiny:sd1", str(lora),
                       str(tmp_path / "lorakit-demo-loha.safetensors"))
    lora_info, loha_info = json.loads(out)
    assert lora_info["format"] == "kohya" and lora_info["kinds"] == {"lora": 114}
    assert loha_info["kinds"] == {"loha": 96}


def test_demo_writes_into_the_current_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "-q", "demo", "--steps", "1")
    assert code == 0, out + err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lorakit-demo-loha.safetensors", "lorakit-demo-lora.safetensors", "lorakit-demo.png"
    ]
    assert "noise by design" not in out  # -q: only results
    assert "demo passed" in out


def test_bake_keeps_the_saved_dtype(capsys: pytest.CaptureFixture[str], lora_dir: Path, tmp_path: Path) -> None:
    from lorakit.io import read_header
    from lorakit.tiny import tiny_pipeline

    model = tmp_path / "tiny16"
    tiny_pipeline("sd1", dtype=torch.float16).save_pretrained(str(model))
    baked = tmp_path / "baked16"
    code, out, err = run(capsys, "bake", "--model", str(model), "--lora", str(lora_dir / "style.safetensors"),
                         "-o", str(baked))
    assert code == 0, err
    assert "float16 (as saved)" in out
    for comp in ("unet", "text_encoder"):
        (weights,) = (baked / comp).glob("*.safetensors")
        shapes, _ = read_header(weights)
        assert {dt for _, dt in shapes.values()} == {torch.float16}, comp


def test_lora_dir_from_the_environment(capsys: pytest.CaptureFixture[str], lora_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAKIT_LORA_DIR", os.pathsep.join([str(tmp_path), str(lora_dir)]))
    out_png = tmp_path / "env.png"
    code, out, err = run(capsys, "generate", "--model", "tiny:sd1", "--prompt", "a cat <lora:detail:0.5>",
                         "--steps", "1", "-o", str(out_png))
    assert code == 0, err
    assert "loaded LoRA 'detail'" in out and out_png.is_file()


def test_inspect_a_lora_that_does_not_fit_the_model(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path,
                                                    tiny_sd1: Path) -> None:
    """Real-SD1 shapes against the tiny SD1: the report says what does not land and why; inspect itself succeeds."""
    code, out, err = run(capsys, "inspect", "--json", "--model", str(tiny_sd1), str(real_sd1_lora))
    assert code == 0, err
    (data,) = json.loads(out)
    assert "do not fit" in data["landing_error"]
    reasons = {s["reason"] for s in data["not_landed"]}
    assert "shape mismatch" in reasons
    code, out, err = run(capsys, "inspect", "--model", str(tiny_sd1), str(real_sd1_lora))
    assert code == 0, err
    assert "cannot load into" in out and "does not land" in out


def test_generate_warns_about_keys_that_do_not_land(capsys: pytest.CaptureFixture[str], lora_dir: Path,
                                                   tmp_path: Path) -> None:
    path = stray_lora(lora_dir, tmp_path)
    code, out, err = run(capsys, "-q", "generate", "--model", "tiny:sd1", "--lora", str(path), "--prompt", "a cat",
                         "--steps", "1", "-o", str(tmp_path / "s.png"))
    assert code == 0, err
    assert f"LoRA 'stray': 2 of {n_keys(path)} keys did not land" in err


def test_main_leaves_logging_as_it_found_it(capsys: pytest.CaptureFixture[str], real_sd1_lora: Path) -> None:
    """main() runs in-process (tests, notebooks): logger levels, handlers and progress bars are put back."""
    import logging

    from diffusers.utils import logging as dlog

    log = logging.getLogger("lorakit")
    before = (log.level, log.propagate, list(log.handlers), dlog.get_verbosity(), dlog.is_progress_bar_enabled())
    for argv in (["-q", "inspect", str(real_sd1_lora)], ["-vv", "inspect", str(real_sd1_lora)],
                 ["-q", "inspect", "--model", "tiny:sd1", str(real_sd1_lora)]):
        assert run(capsys, *argv)[0] == 0
        assert (log.level, log.propagate, list(log.handlers), dlog.get_verbosity(),
                dlog.is_progress_bar_enabled()) == before


def test_generate_sdxl_te_weight_reaches_both_text_encoders(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    """``<lora:x:te:unet>`` on SDXL: the te weight goes to text_encoder and text_encoder_2 (a LyCORIS file with
    ``lora_te1_`` / ``lora_te2_`` keys; the reference is LyCORIS' forward at those multipliers)."""
    from lorakit.tiny import tiny_pipeline

    modules = write_lycoris_file(tmp_path / "xl.safetensors", "sdxl", STYLE, seed=5)
    assert {c for c, _ in modules.values()} == {"unet", "text_encoder", "text_encoder_2"}
    assert any(name.startswith("lora_te2_") for name in modules)
    out_png = tmp_path / "xl.png"
    code, out, err = run(capsys, "generate", "--model", "tiny:sdxl", "--lora-dir", str(tmp_path), "--prompt",
                         "a cat <lora:xl:0.5:1.5>", "--steps", STEPS, "-o", str(out_png))
    assert code == 0, err
    want = lycoris_image(tiny_pipeline("sdxl"), tmp_path / "xl.safetensors", "a cat", te=0.5, unet=1.5,
                         tmp_path=tmp_path)
    assert_images_close(read_png(out_png), want)
