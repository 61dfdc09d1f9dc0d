"""Issue 16, the first hour with lorakit, through the command line: ``convert --model`` / ``--to peft`` / headers /
``--force``, ``inspect`` trigger words, hashes and full checkpoints, ``lorakit list``, ``generate``'s A1111 parameters
and seeds, ``-o DIR/``, ``--lora FILE:abc``, the ambiguous-name hint, the demo's difference row, the Makefile's
``TORCH_INDEX``. Every command is run and its output and files are checked; the references are independent
(hashlib over the file's bytes, PEFT's own loader, A1111's infotext regex, lorakit's load of the original file)."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import lorakit
from lorakit.cli import main
from lorakit.io import read_header
from lorakit.tiny import tiny_pipeline

STEPS = "2"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test's own set-up printed (a library's import-time notice) is not the command's
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@torch.no_grad()
def forward(comps: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tiny SD1 UNet and text encoder on fixed inputs."""
    g = torch.Generator().manual_seed(5)
    x, enc = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    ids = torch.randint(0, 500, (1, 7), generator=g)
    return {
        "unet": comps["unet"](x, torch.tensor([10]), encoder_hidden_states=enc).sample,
        "text_encoder": comps["text_encoder"](ids).last_hidden_state,
    }


def lorakit_outputs(path: Path | str, **kwargs: Any) -> dict[str, torch.Tensor]:
    pipe = lorakit.attach(tiny_pipeline("sd1"))
    pipe.load_lora_weights(str(path), adapter_name="x", **kwargs)
    return forward({"unet": pipe.unet, "text_encoder": pipe.text_encoder})


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    for comp, w in want.items():
        rel = float((got[comp] - w).abs().max() / w.abs().max())
        assert rel <= tol, (comp, rel)


def with_header(src: Path, dst: Path, header: dict[str, str]) -> Path:
    """``src``'s tensors with ``header`` (a kohya training header, say)."""
    save_file(load_file(str(src)), str(dst), metadata=header)
    return dst


KOHYA_HEADER = {
    "ss_network_module": "lycoris.kohya",
    "ss_output_name": "snowcat",
    "ss_tag_frequency": json.dumps({"10_snowcat": {"snowcat": 40, "cat": 31, " snow": 22, "outdoors": 5},
                                    "5_extra": {"cat": 4, "night": 3}}),
    "ss_learning_rate": "0.0001",
    "ss_num_train_images": "45",
    "sshs_model_hash": "0123456789abcdef" * 4,
    "sshs_legacy_hash": "01234567",
    "modelspec.title": "Snow cat",
    "modelspec.author": "someone",
    "modelspec.description": "a cat in the snow, trained on 45 images",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    "modelspec.hash_sha256": "0x" + "ab" * 32,
    "training_note": "kept",
}


# ----------------------------------------------------------------------------------------------- convert
def test_convert_with_model_converts_the_demo_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """2: the demo's own files (tiny widths) convert with ``--model tiny:sd1``; without it the error says so in CLI
    words."""
    from lorakit.cli.demo import write_demo_file

    src = tmp_path / "demo.safetensors"
    write_demo_file(tiny_pipeline("sd1"), src, "sd1")
    code, _, err = run(capsys, "convert", str(src), "--to", "diffusers", "-o", str(tmp_path / "a.safetensors"))
    assert code == 1 and err.count("\n") == 1
    assert "--model PATH|tiny:FAMILY" in err and "components=" not in err
    code, out, err = run(capsys, "convert", str(src), "--to", "diffusers", "--model", "tiny:sd1", "-o",
                         str(tmp_path / "out") + "/")
    assert code == 0, err
    dst = tmp_path / "out" / "pytorch_lora_weights.safetensors"
    assert dst.is_file() and "loaded tiny:sd1" in out
    assert_same(lorakit_outputs(dst), lorakit_outputs(src))


def test_convert_errors_speak_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, real_sd1_lora: Path) -> None:
    dst = tmp_path / "x.safetensors"
    dst.write_bytes(b"keep")
    code, _, err = run(capsys, "convert", str(real_sd1_lora), "--to", "kohya", "-o", str(dst))
    assert code == 1 and "--force" in err and "overwrite=True" not in err
    code, _, err = run(capsys, "convert", str(real_sd1_lora), "--to", "kohya", "-o", str(tmp_path / "x.bin"))
    assert code == 1 and "safetensors" in err
    code, _, err = run(capsys, "convert", str(real_sd1_lora), "--to", "kohya", "--component", "unte",
                       "-o", str(tmp_path / "y.safetensors"))
    assert code == 1 and "did you mean 'unet'" in err


def test_convert_to_peft_writes_one_folder_per_component_that_peft_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lora_dir: Path, tiny_sd1: Path
) -> None:
    """3: an SD LoRA (UNet + text encoder) to PEFT: OUT/<component>/adapter_model.safetensors + adapter_config.json,
    each loaded by PEFT's own ``PeftModel.from_pretrained`` to lorakit's outputs of the original file."""
    from peft import PeftModel

    src = lora_dir / "style.safetensors"
    out = tmp_path / "peft"
    code, stdout, err = run(capsys, "convert", str(src), "--to", "peft", "--model", str(tiny_sd1), "-o", str(out))
    assert code == 0, err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "text_encoder/adapter_config.json", "text_encoder/adapter_model.safetensors",
        "unet/adapter_config.json", "unet/adapter_model.safetensors",
    ]
    want = lorakit_outputs(src)
    base = tiny_pipeline("sd1")
    got = {}
    for comp in ("unet", "text_encoder"):
        config = json.loads((out / comp / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and config["target_modules"]
        assert read_header(out / comp / "adapter_model.safetensors")[1]["lorakit.component"] == comp
        model = PeftModel.from_pretrained(copy.deepcopy(getattr(base, comp)), str(out / comp))
        got[comp] = model.get_base_model()
    assert_same(forward(got), want)

    # --component: one component into one file, its adapter_config.json beside it
    one = tmp_path / "one" / "unet_only.safetensors"
    code, _, err = run(capsys, "convert", str(src), "--to", "peft", "--model", str(tiny_sd1), "--component", "unet",
                       "-o", str(one))
    assert code == 0, err
    assert one.is_file() and (one.parent / "adapter_config.json").is_file()
    assert all(k.startswith("base_model.model.") for k in load_file(str(one)))
    # one file for two components: refused, with the two ways out
    code, _, err = run(capsys, "convert", str(src), "--to", "peft", "--model", str(tiny_sd1), "-o",
                       str(tmp_path / "both.safetensors"))
    assert code == 1 and "--component NAME" in err and "folder" in err


def test_convert_to_peft_honours_force_and_refuses_loha(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         lora_dir: Path, tiny_sd1: Path, texture_file: Path) -> None:
    """7: an existing adapter_config.json is not replaced without --force; a LoHa is refused (FormatError), not
    written with a placeholder config."""
    src = lora_dir / "style.safetensors"
    out = tmp_path / "unet.safetensors"
    config = tmp_path / "adapter_config.json"
    config.write_text("{}")
    args = ["convert", str(src), "--to", "peft", "--model", str(tiny_sd1), "--component", "unet", "-o", str(out)]
    code, _, err = run(capsys, *args)
    assert code == 1 and "adapter_config.json: already exists" in err and "--force" in err
    assert config.read_text() == "{}" and not out.exists()
    code, _, err = run(capsys, *args, "--force")
    assert code == 0, err
    assert json.loads(config.read_text())["peft_type"] == "LORA"

    loha_out = tmp_path / "loha"
    code, _, err = run(capsys, "convert", str(texture_file), "--to", "peft", "--model", str(tiny_sd1), "-o",
                       str(loha_out))
    assert code == 1 and "PEFT's LoraConfig cannot express" in err and "loha" in err and "--to diffusers" in err
    assert not loha_out.exists()
    with pytest.raises(lorakit.errors.FormatError, match="cannot express"):
        lorakit.convert(texture_file, tmp_path / "loha2", to="peft",
                        components={"unet": tiny_pipeline("sd1").unet})


@pytest.mark.parametrize("to", ["kohya", "diffusers"])
def test_convert_carries_the_header(capsys: pytest.CaptureFixture[str], tmp_path: Path, lora_dir: Path,
                                    tiny_sd1: Path, to: str) -> None:
    """4: every header entry that still holds travels (kohya -> kohya too); hashes of the old bytes and the
    layout-bound modelspec.implementation (when the layout changes) are dropped; the origin is recorded."""
    src = with_header(lora_dir / "style.safetensors", tmp_path / "snowcat.safetensors", KOHYA_HEADER)
    out = tmp_path / f"out-{to}.safetensors"
    code, stdout, err = run(capsys, "convert", str(src), "--to", to, "--model", str(tiny_sd1), "-o", str(out))
    assert code == 0, err
    _, header = read_header(out)
    for key in ("ss_output_name", "ss_tag_frequency", "ss_learning_rate", "ss_num_train_images", "modelspec.title",
                "modelspec.author", "modelspec.description", "modelspec.architecture", "training_note"):
        assert header[key] == KOHYA_HEADER[key], key
    stale = ["modelspec.hash_sha256", "sshs_legacy_hash", "sshs_model_hash"]
    if to != "kohya":
        stale.insert(0, "modelspec.implementation")
    else:
        assert header["modelspec.implementation"] == KOHYA_HEADER["modelspec.implementation"]
    assert not set(stale) & set(header)
    assert header["lorakit.converted_from"] == "kohya" and header["lorakit.source"] == src.name
    assert header["lorakit.source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert header["lorakit.dropped_metadata"] == ", ".join(sorted(stale))
    assert "dropped (no longer true of the new file)" in stdout
    # the output's own entries come from the writer, not the source
    if to == "diffusers":
        assert "lora_adapter_metadata" in header and header["ss_network_module"] == "lycoris.kohya"
    assert_same(lorakit_outputs(out), lorakit_outputs(src))


# ----------------------------------------------------------------------------------------------- inspect
def a1111_addnet_hash(path: Path) -> str:
    """kohya's / A1111's LoRA hash, written out from their rule: sha256 of the bytes after the header."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()


def test_inspect_shows_trigger_words_and_hashes(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                lora_dir: Path) -> None:
    """8: trigger words (modelspec.trigger_phrase, else the most frequent training tags), title/author/description,
    sha256, AutoV2 and A1111's LoRA hash, in the table and in --json."""
    header = {k: v for k, v in KOHYA_HEADER.items() if k != "sshs_model_hash"}
    src = with_header(lora_dir / "style.safetensors", tmp_path / "snowcat.safetensors", header)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    code, out, err = run(capsys, "inspect", "--json", str(src))
    assert code == 0, err
    (data,) = json.loads(out)
    assert data["trigger_words"] == ["snowcat", "cat", "snow", "outdoors", "night"]
    assert data["tags"][:2] == [["snowcat", 40], ["cat", 35]]
    assert (data["title"], data["author"]) == ("Snow cat", "someone")
    assert data["description"] == KOHYA_HEADER["modelspec.description"]
    hashes = data["hashes"]
    assert hashes["sha256"] == sha and hashes["autov2"] == sha[:10]
    assert hashes["lora_hash"] == a1111_addnet_hash(src) and hashes["lora_hash_short"] == a1111_addnet_hash(src)[:12]
    assert hashes["lora_hash"] != sha and data["header_only"] is True
    code, out, err = run(capsys, "inspect", str(src))
    assert code == 0, err
    for label, value in (("trigger words", "snowcat, cat, snow, outdoors, night"), ("sha256", sha),
                         ("AutoV2", sha[:10]), ("A1111 LoRA hash", a1111_addnet_hash(src)[:12]),
                         ("title", "Snow cat"), ("author", "someone")):
        assert re.search(rf"^{label} +{re.escape(value)}$", out, re.M), label

    # a trigger phrase wins over the tags; a header hash is what A1111 shows, and a stale one is flagged
    header2 = {**header, "modelspec.trigger_phrase": "snowcat, winter", "sshs_model_hash": "f" * 64}
    src2 = with_header(lora_dir / "style.safetensors", tmp_path / "phrase.safetensors", header2)
    code, out, err = run(capsys, "inspect", "--json", str(src2))
    (data,) = json.loads(out)
    assert data["trigger_words"] == ["snowcat", "winter"]
    assert data["hashes"]["lora_hash_short"] == "f" * 12 and data["hashes"]["header_hash_stale"] is True
    code, out, _ = run(capsys, "inspect", "--no-hashes", "--json", str(src2))
    assert json.loads(out)[0]["hashes"] is None


def test_inspect_names_a_full_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_sd1: Path,
                                         real_sd1_lora: Path) -> None:
    """8: a model checkpoint given as a LoRA is named as such, exit status 1; the other files are still reported."""
    pipe = tiny_pipeline("sd1")
    single = {f"model.diffusion_model.{k}": v for k, v in pipe.unet.state_dict().items()}
    single.update({f"first_stage_model.{k}": v for k, v in pipe.vae.state_dict().items()})
    single.update({f"cond_stage_model.transformer.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    ckpt = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in single.items()}, str(ckpt))
    unet_file = next((tiny_sd1 / "unet").glob("*.safetensors"))
    for path, what in ((ckpt, "single-file Stable Diffusion checkpoint"), (unet_file, "diffusers model weights")):
        code, out, err = run(capsys, "inspect", str(path))
        assert code == 1 and err.count("\n") == 1
        assert "a full model checkpoint, not a LoRA" in err and what in err
    code, out, err = run(capsys, "inspect", "--json", str(real_sd1_lora), str(ckpt))
    assert code == 1
    good, bad = json.loads(out)
    assert good["format"] == "kohya" and "full model checkpoint" in bad["error"]


# ----------------------------------------------------------------------------------------------- list
def test_list_shows_the_names_tags_resolve(capsys: pytest.CaptureFixture[str], tmp_path: Path, lora_dir: Path,
                                           texture_file: Path, real_sd1_lora: Path) -> None:
    """9: every LoRA file under the folders with the <lora:name> that resolves to it, family, kinds, rank, size,
    trigger words (header only); a checkpoint among them is an error row."""
    root = tmp_path / "loras"
    shutil.copytree(lora_dir, root)
    (root / "a").mkdir()
    (root / "b").mkdir()
    with_header(real_sd1_lora, root / "a" / "snowcat.safetensors", KOHYA_HEADER)  # real SD1 shapes, rank 2
    shutil.copy(texture_file, root / "b" / "texture.safetensors")
    shutil.copy(texture_file, root / "a" / "texture.safetensors")  # two files of one stem: names with folders
    save_file({f"w{i}.weight": torch.zeros(2) for i in range(10)}, str(root / "notalora.safetensors"))

    code, out, err = run(capsys, "list", "--json", str(root))
    assert code == 1  # the checkpoint
    entries = {e["tag"]: e for e in json.loads(out)}
    assert set(entries) == {"<lora:style>", "<lora:detail>", "<lora:snowcat>", "<lora:a/texture>",
                            "<lora:b/texture>", "<lora:notalora>"}
    from lorakit.cli.prompt import find_lora

    for tag, e in entries.items():  # each name resolves to its file
        assert find_lora(e["name"], (), [str(root)]) == Path(e["file"]), tag
    snow = entries["<lora:snowcat>"]
    assert snow["trigger_words"][:2] == ["snowcat", "cat"] and snow["title"] == "Snow cat"
    assert snow["family"] == "SD1" and list(snow["kinds"]) == ["lora"]
    assert snow["ranks"] == {"2": 4} and snow["components"] == {"text_encoder": 1, "unet": 3}
    assert snow["header_only"] is True
    assert snow["size"] == (root / "a" / "snowcat.safetensors").stat().st_size
    assert "full model checkpoint" in entries["<lora:notalora>"]["error"]
    assert "hashes" not in snow

    code, out, err = run(capsys, "list", str(root))
    lines = out.splitlines()
    assert lines[0].split() == ["tag", "family", "kinds", "rank", "size", "trigger", "words"]
    row = next(line for line in lines if line.startswith("<lora:snowcat>"))
    assert row.split()[1:4] == ["SD1", "lora", "2"] and "KiB" in row and "snowcat, cat" in row
    code, out, err = run(capsys, "list", "--hashes", "--json", str(root / "b"))
    assert code == 0, err
    (entry,) = json.loads(out)
    assert entry["hashes"]["lora_hash"] == a1111_addnet_hash(root / "b" / "texture.safetensors")
    code, out, err = run(capsys, "list", str(tmp_path / "nope"))
    assert code == 1 and "no such folder" in err


# ----------------------------------------------------------------------------------------------- generate
#: A1111's infotext parser (modules/infotext_utils.py): the regex of its ``Key: value`` pairs
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_read(text: str) -> tuple[str, str, dict[str, str]]:
    """What A1111's ``parse_generation_parameters`` reads: prompt, negative prompt, parameters (unquoted)."""
    *lines, last = text.strip().split("\n")
    params = {k: (json.loads(v) if v.startswith('"') else v) for k, v in A1111_PARAM.findall(last)}
    assert len(params) >= 3
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative), params


def test_generate_writes_parameters_a1111_reads(capsys: pytest.CaptureFixture[str], tiny_sd1: Path,
                                                lora_dir: Path, tmp_path: Path) -> None:
    """10: prompt with its tags (a --lora file gets one), negative prompt, steps, sampler, CFG, seed per image,
    size, model, Lora hashes (A1111's short hash of each file)."""
    detail = lora_dir / "sub" / "detail.safetensors"
    out_dir = tmp_path / "imgs"
    code, out, err = run(capsys, "generate", "--model", str(tiny_sd1), "--lora-dir", str(lora_dir), "--lora",
                         f"{detail}:0.5", "--prompt", "a cat, <lora:style:0.8> in the snow", "--negative-prompt",
                         "blurry, dark", "--steps", STEPS, "--seed", "7", "--guidance", "6", "--num-images", "2",
                         "-o", str(out_dir) + "/")
    assert code == 0, err
    files = sorted(out_dir.iterdir())
    assert [p.name for p in files] == ["lorakit-7.png", "lorakit-8.png"]
    style_header = read_header(lora_dir / "style.safetensors")[1]
    style_hash = (style_header.get("sshs_model_hash") or a1111_addnet_hash(lora_dir / "style.safetensors"))[:12]
    for path, seed in zip(files, (7, 8)):
        with Image.open(path) as im:
            prompt, negative, params = a1111_read(im.info["parameters"])
        assert prompt == "a cat, <lora:style:0.8> in the snow <lora:detail:0.5>"
        assert negative == "blurry, dark"
        assert params["Steps"] == STEPS and params["Seed"] == str(seed) and params["CFG scale"] == "6"
        assert params["Size"] == "{}x{}".format(*Image.open(path).size)
        assert params["Sampler"] == "DDIM"  # the tiny pipeline's DDIMScheduler, by A1111's name
        assert params["Model"] == "tiny-sd1" and params["Version"].startswith("lorakit")
        assert params["Lora hashes"] == f"detail: {a1111_addnet_hash(detail)[:12]}, style: {style_hash}"
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in files)
    assert not np.array_equal(a, b)  # a distinct seed per image


def test_generate_batch_image_i_is_seed_plus_i(capsys: pytest.CaptureFixture[str], tiny_sd1: Path,
                                               tmp_path: Path) -> None:
    """10: image 2 of a batch seeded 3 is the single image seeded 4 (as A1111 does), and -o without a suffix is a
    folder."""
    code, _, err = run(capsys, "-q", "generate", "--model", str(tiny_sd1), "--prompt", "a cat", "--steps", STEPS,
                       "--seed", "3", "--num-images", "2", "-o", str(tmp_path / "batch"))
    assert code == 0, err
    code, _, err = run(capsys, "-q", "generate", "--model", str(tiny_sd1), "--prompt", "a cat", "--steps", STEPS,
                       "--seed", "4", "-o", str(tmp_path / "single.png"))
    assert code == 0, err
    second = np.asarray(Image.open(tmp_path / "batch" / "lorakit-4.png").convert("RGB")).astype(int)
    single = np.asarray(Image.open(tmp_path / "single.png").convert("RGB")).astype(int)
    assert np.abs(second - single).max() <= 1  # a batched forward may round a pixel the other way


def test_generate_lora_weight_and_ambiguity_messages(capsys: pytest.CaptureFixture[str], lora_dir: Path,
                                                     tmp_path: Path, texture_file: Path) -> None:
    """10: ``--lora x.safetensors:abc`` says the weight is not a number; the ambiguous-name hint names tags that
    resolve."""
    style = lora_dir / "style.safetensors"
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--lora", f"{style}:abc", "--prompt", "x", "-o",
                       str(tmp_path / "x.png"))
    assert code == 1 and "weight 'abc' is not a number" in err and "does not exist" not in err
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--lora", str(tmp_path / "gone.safetensors:xyz"),
                       "--prompt", "x", "-o", str(tmp_path / "x.png"))
    assert code == 1 and "weight 'xyz' is not a number" in err

    root = tmp_path / "amb"
    for sub in ("one/deep", "two"):
        (root / sub).mkdir(parents=True)
        shutil.copy(texture_file, root / sub / "tex.safetensors")
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--lora-dir", str(root), "--prompt",
                       "<lora:tex> x", "-o", str(tmp_path / "x.png"))
    assert code == 1 and "ambiguous" in err
    hints = re.findall(r"<lora:([^>]+)>", err.split("write the sub-folder")[1])
    assert sorted(hints) == ["one/deep/tex", "two/tex"]
    from lorakit.cli.prompt import find_lora

    for name in hints:
        assert find_lora(name, (), [str(root)]).parent.name in ("deep", "two")
    code, _, err = run(capsys, "generate", "--model", "tiny:sd1", "--prompt", "x", "-o", str(tmp_path / "x.gif"))
    assert code == 1 and "image file name" in err


# ----------------------------------------------------------------------------------------------- demo
def test_demo_shows_the_difference_and_no_long_warning(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """11: a second row shows |image - base| (non-zero for the LoRA panels, black after unload); the happy path
    prints no warning."""
    code, out, err = run(capsys, "demo", "-o", str(tmp_path), "--steps", "1")
    assert code == 0, out + err
    assert "warning" not in out.lower() and "warning" not in err.lower()
    assert max(len(line) for line in out.splitlines()) < 300
    with Image.open(tmp_path / "lorakit-demo.png") as im:
        grid = np.asarray(im.convert("RGB")).astype(int)
    pad, label_h, tile = 8, 16, 128  # make_grid's layout: 64x64 images upscaled x2
    row2 = pad + (label_h + tile + pad) + label_h

    def tile_at(col: int) -> np.ndarray:
        x = pad + col * (tile + pad)
        return grid[row2 : row2 + tile, x : x + tile]

    assert tile_at(1).max() > 100 and tile_at(2).max() > 100  # LoRA and LoRA + LoHa differ visibly
    assert tile_at(4).max() == 0  # after unload: bit-identical, black


# ----------------------------------------------------------------------------------------------- Makefile
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_torch_index_is_passed_to_pip() -> None:
    """6: ``make test TORCH_INDEX=URL`` adds ``--extra-index-url URL`` to the torch install; no host is built in."""
    root = Path(__file__).resolve().parents[2]
    url = "https://download.pytorch.org/whl/cpu"

    def dry(*extra: str) -> str:
        proc = subprocess.run(["make", "-n", "-B", "test", *extra], cwd=root, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    with_index = [line for line in dry(f"TORCH_INDEX={url}").splitlines() if "torch==" in line]
    assert len(with_index) == 1 and f"--extra-index-url {url}" in with_index[0]
    plain = [line for line in dry().splitlines() if "torch==" in line]
    assert len(plain) == 1 and "index-url" not in plain[0]
    assert "download.pytorch.org" not in (root / "Makefile").read_text()
