"""``<lora:name:weight>`` tags: parsing, stripping, resolution to files, conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.cli.prompt import (
    LoraTag,
    PromptTagError,
    find_lora,
    merge_tags,
    parse_prompt,
    plan_loras,
    split_file_weight,
    strip_tags,
)
from lorakit.errors import SourceNotFoundError


@pytest.mark.parametrize(
    ("tag", "te", "unet"),
    [
        ("<lora:x>", 1.0, 1.0),
        ("<lora:x:0.8>", 0.8, 0.8),
        ("<lora:x:.5>", 0.5, 0.5),
        ("<lora:x:-0.5>", -0.5, -0.5),
        ("<lora:x:-.25>", -0.25, -0.25),
        ("<lora:x:1e-1>", 0.1, 0.1),
        ("<lora:x:2>", 2.0, 2.0),
        ("<lora:x:0.5:1.0>", 0.5, 1.0),  # A1111 positional: te, unet
        ("<lora:x:te=0.25:unet=0.75>", 0.25, 0.75),
        ("<lora:x:unet=0.75:te=0.25>", 0.25, 0.75),
        ("<lora:x:unet=0.3>", 1.0, 0.3),
        ("<lora:x:te=0>", 0.0, 1.0),
        ("<lora:x:0.8:unet=0.3>", 0.8, 0.3),
        ("<lora:x:transformer=0.4:te=1>", 1.0, 0.4),
        ("<lora: x : 0.7 >", 0.7, 0.7),
        ("<LoRA:x:0.7>", 0.7, 0.7),
        ("<lyco:x:0.6>", 0.6, 0.6),
    ],
)
def test_weights(tag: str, te: float, unet: float) -> None:
    clean, tags = parse_prompt(f"a cat {tag}")
    assert clean == "a cat"
    assert [(t.name, t.te, t.unet) for t in tags] == [("x", te, unet)]
    assert tags[0].text == tag


@pytest.mark.parametrize(
    ("prompt", "clean", "names"),
    [
        ("a cat, <lora:style:0.8> in the snow", "a cat, in the snow", ["style"]),
        ("<lora:a:1>a cat", "a cat", ["a"]),
        ("a cat<lora:a:1>", "a cat", ["a"]),
        ("a cat,<lora:a:1>, <lora:b:0.5>, snow", "a cat, snow", ["a", "b"]),
        ("<lora:a:1> <lora:b:1>", "", ["a", "b"]),
        ("a (cat:1.2) <lora:sub/dir/name:0.5>", "a (cat:1.2)", ["sub/dir/name"]),
        ("no tags, just <angle> brackets", "no tags, just <angle> brackets", []),
        ("a cat\n<lora:a:1>\nsnow", "a cat\n\nsnow", ["a"]),
    ],
)
def test_tags_inside_text_are_stripped(prompt: str, clean: str, names: list[str]) -> None:
    out, tags = parse_prompt(prompt)
    assert out == clean
    assert [t.name for t in tags] == names
    assert strip_tags(prompt) == clean


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora::1>", "name is empty"),
        ("<lora:>", "name is empty"),
        ("<lora:x:abc>", "not a number"),
        ("<lora:x:nan>", "not a finite number"),
        ("<lora:x:inf>", "not a finite number"),
        ("<lora:x:1:2:3>", "too many weights"),
        ("<lora:x:dyn=16>", "unsupported option 'dyn'"),
        ("<lora:x:1:lbw=ALL>", "unsupported option 'lbw'"),
        ("<lora:x::1>", "empty field"),
        ("<lora:x:te=1:te=2>", "given twice"),
        ("<lora:x:unet=1:0.5>", "plain weight after a named one"),
        ("a cat <lora:x:0.8", "unclosed"),
        ("a cat <lora:x:<lora:y:1>", "unclosed"),
    ],
)
def test_malformed_tags(prompt: str, message: str) -> None:
    with pytest.raises(PromptTagError, match=message):
        parse_prompt(prompt)


def test_repeated_names() -> None:
    _, tags = parse_prompt("<lora:x:0.5> a <lora:x:0.5>")
    assert [(t.name, t.unet) for t in merge_tags(tags)] == [("x", 0.5)]
    _, tags = parse_prompt("<lora:x:0.5> a <lora:x:0.7>")
    with pytest.raises(PromptTagError, match="tagged twice with different weights"):
        merge_tags(tags)
    # same weights written differently are the same tag
    _, tags = parse_prompt("<lora:x:0.5:0.5> <lora:x:.5>")
    assert len(merge_tags(tags)) == 1


def test_tag_record() -> None:
    tag = LoraTag("x", 0.5, 0.5, "<lora:x:0.5>")
    assert tag.uniform
    assert not LoraTag("x", 0.5, 1.0, "").uniform


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("style.safetensors", ("style.safetensors", None)),
        ("style.safetensors:0.8", ("style.safetensors", 0.8)),
        ("style.safetensors:-1", ("style.safetensors", -1.0)),
        ("dir/style.safetensors:.5", ("dir/style.safetensors", 0.5)),
        ("C:\\loras\\style.safetensors", ("C:\\loras\\style.safetensors", None)),
        ("C:\\loras\\style.safetensors:0.3", ("C:\\loras\\style.safetensors", 0.3)),
        ("odd:name.safetensors", ("odd:name.safetensors", None)),
    ],
)
def test_split_file_weight(spec: str, expected: tuple[str, float | None]) -> None:
    assert split_file_weight(spec) == expected


def test_split_file_weight_rejects_inf() -> None:
    with pytest.raises(PromptTagError):
        split_file_weight("x.safetensors:inf")


@pytest.fixture()
def lora_dir(tmp_path: Path) -> Path:
    for rel in ("style.safetensors", "detail.pt", "sub/deep.safetensors", "a/twin.safetensors",
                "b/twin.safetensors", "notes.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    return tmp_path


def test_find_lora(lora_dir: Path, tmp_path: Path) -> None:
    assert find_lora("style", [], [lora_dir]) == lora_dir / "style.safetensors"
    assert find_lora("detail", [], [lora_dir]) == lora_dir / "detail.pt"
    assert find_lora("style.safetensors", [], [lora_dir]) == lora_dir / "style.safetensors"
    assert find_lora("sub/deep", [], [lora_dir]) == lora_dir / "sub" / "deep.safetensors"
    assert find_lora("deep", [], [lora_dir]) == lora_dir / "sub" / "deep.safetensors"  # unique stem, recursive
    assert find_lora("a/twin", [], [lora_dir]) == lora_dir / "a" / "twin.safetensors"
    given = tmp_path / "elsewhere" / "mine.safetensors"
    assert find_lora("mine", [given], [lora_dir]) == given  # --lora files by stem, first
    with pytest.raises(PromptTagError, match="ambiguous"):
        find_lora("twin", [], [lora_dir])
    with pytest.raises(SourceNotFoundError, match="did you mean 'style'"):
        find_lora("styel", [], [lora_dir])
    with pytest.raises(SourceNotFoundError, match="no --lora-dir given"):
        find_lora("style", [], [])
    with pytest.raises(SourceNotFoundError, match="notes"):  # .txt is not a LoRA
        find_lora("notes", [], [lora_dir])


def test_plan_loras(lora_dir: Path) -> None:
    style = str(lora_dir / "style.safetensors")
    clean, specs = plan_loras("a cat <lora:detail:0.5:1>", [style + ":0.8"], [lora_dir])
    assert clean == "a cat"
    assert [(s.name, s.te, s.unet, s.origin) for s in specs] == [
        ("style", 0.8, 0.8, f"--lora {style}:0.8"),
        ("detail", 0.5, 1.0, "<lora:detail:0.5:1>"),
    ]
    # a tag naming a --lora file given without weight sets its weight
    _, specs = plan_loras("<lora:style:0.3>", [style], [])
    assert [(s.name, s.unet, s.path) for s in specs] == [("style", 0.3, Path(style))]
    # ... and one given with the same weight is the same LoRA
    _, specs = plan_loras("<lora:style:0.3>", [style + ":0.3"], [lora_dir])
    assert len(specs) == 1
    with pytest.raises(PromptTagError, match="given twice with different weights"):
        plan_loras("<lora:style:0.3>", [style + ":0.8"], [lora_dir])
    with pytest.raises(PromptTagError, match="given twice with different weights"):
        plan_loras("", [style + ":0.3", style + ":0.8"], [])
    _, specs = plan_loras("", [style + ":0.3", style], [])  # a repeat without weight adds nothing
    assert [(s.name, s.unet) for s in specs] == [("style", 0.3)]
    with pytest.raises(PromptTagError, match="share the name 'twin'"):
        plan_loras("", [str(lora_dir / "a" / "twin.safetensors"), str(lora_dir / "b" / "twin.safetensors")], [])
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        plan_loras("", [str(lora_dir / "missing.safetensors")], [])
    with pytest.raises(PromptTagError, match="negative prompt"):
        plan_loras("a cat", [], [lora_dir], negative_prompt="ugly <lora:style:1>")
    with pytest.raises(SourceNotFoundError, match="no LoRA file named 'nope'"):
        plan_loras("a <lora:nope:1>", [], [lora_dir])
