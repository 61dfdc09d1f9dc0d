"""lorakit.io.read_source: every source kind, and every bad file gives a typed one-line error naming the file."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lorakit import errors
from lorakit.io import read_file, read_header, read_source


def lora_sd(seed: int = 0, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.randn(2, 8, generator=g),
        f"{prefix}down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.randn(8, 2, generator=g),
    }


def write_st(path: Path, sd: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None) -> Path:
    save_file(sd if sd is not None else lora_sd(), str(path), metadata=metadata)
    return path


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------------------------- sources
def test_dict_source() -> None:
    sd = lora_sd()
    out, meta, name = read_source(sd)
    assert_same(out, sd)
    assert meta == {} and name == "<dict>"
    assert out is not sd  # a copy of the mapping, same tensors


def test_dict_int_alpha_allowed() -> None:
    sd = {"lora_unet_x.alpha": torch.tensor(4), "lora_unet_x.lora_down.weight": torch.randn(2, 3)}
    out, _, _ = read_source(sd)
    assert out["lora_unet_x.alpha"].item() == 4


@pytest.mark.parametrize(
    "value",
    [[1.0, 2.0], 3.0, "text", None],
    ids=["list", "float", "str", "none"],
)
def test_dict_non_tensor_value(value: object) -> None:
    sd = dict(lora_sd())
    sd["unet.bad.lora_A.weight"] = value  # type: ignore[assignment]
    with pytest.raises(errors.DTypeError) as ei:
        read_source(sd)
    msg = one_line(ei.value)
    assert "unet.bad.lora_A.weight" in msg and "torch.Tensor" in msg


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.uint8])
def test_dict_integer_dtype(dtype: torch.dtype) -> None:
    sd = dict(lora_sd())
    sd["unet.x.lora_A.weight"] = torch.zeros(2, 8, dtype=dtype)
    with pytest.raises(errors.DTypeError) as ei:
        read_source(sd)
    assert "unet.x.lora_A.weight" in one_line(ei.value)


def test_dict_integer_alpha_not_scalar_refused() -> None:
    with pytest.raises(errors.DTypeError, match="lora_unet_x.alpha"):
        read_source({"lora_unet_x.alpha": torch.tensor([4, 4])})


def test_empty_dict_refused() -> None:
    with pytest.raises(errors.FormatError, match="no tensors"):
        read_source({})


def test_file_source_with_metadata(tmp_path: Path) -> None:
    sd = lora_sd()
    p = write_st(tmp_path / "a.safetensors", sd, {"ss_network_dim": "4"})
    out, meta, name = read_source(p)
    assert_same(out, sd)
    assert meta == {"ss_network_dim": "4"}
    assert name == str(p)


@pytest.mark.parametrize("ext", [".bin", ".pt", ".ckpt", ".pth"])
def test_pickle_file_weights_only(tmp_path: Path, ext: str) -> None:
    sd = lora_sd()
    p = tmp_path / f"w{ext}"
    torch.save(sd, p)
    out, meta, _ = read_source(p)
    assert_same(out, sd)
    assert meta == {}


def test_pickle_wrapped_state_dict(tmp_path: Path) -> None:
    sd = lora_sd()
    p = tmp_path / "w.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, p)
    assert_same(read_source(p)[0], sd)


def test_folder_conventional_name(tmp_path: Path) -> None:
    sd = lora_sd(1)
    write_st(tmp_path / "pytorch_lora_weights.safetensors", sd)
    write_st(tmp_path / "other.safetensors", lora_sd(2))
    out, _, name = read_source(tmp_path)
    assert_same(out, sd)
    assert name.endswith("pytorch_lora_weights.safetensors")


def test_folder_single_candidate(tmp_path: Path) -> None:
    sd = lora_sd(3)
    write_st(tmp_path / "my_style.safetensors", sd)
    (tmp_path / "README.md").write_text("hello")
    write_st(tmp_path / "optimizer.safetensors", lora_sd(4))  # training state is not a candidate
    out, _, name = read_source(tmp_path)
    assert_same(out, sd)
    assert name.endswith("my_style.safetensors")


def test_folder_with_weight_name_and_subfolder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_st(tmp_path / "sub" / "a.safetensors", lora_sd(5))
    sd = lora_sd(6)
    write_st(tmp_path / "sub" / "b.safetensors", sd)
    out, _, _ = read_source(tmp_path, subfolder="sub", weight_name="b.safetensors")
    assert_same(out, sd)


def test_folder_several_candidates(tmp_path: Path) -> None:
    for n in ("a", "b", "c"):
        write_st(tmp_path / f"{n}.safetensors", lora_sd())
    with pytest.raises(errors.FormatError) as ei:
        read_source(tmp_path)
    msg = one_line(ei.value)
    assert str(tmp_path) in msg and "a.safetensors" in msg and "c.safetensors" in msg and "weight_name" in msg


def test_folder_pickle_fallback_and_use_safetensors(tmp_path: Path) -> None:
    sd = lora_sd(7)
    torch.save(sd, tmp_path / "pytorch_lora_weights.bin")
    assert_same(read_source(tmp_path)[0], sd)
    with pytest.raises(errors.SourceNotFoundError, match="use_safetensors"):
        read_source(tmp_path, use_safetensors=True)


def test_folder_use_safetensors_false_prefers_pickle(tmp_path: Path) -> None:
    sd = lora_sd(8)
    write_st(tmp_path / "pytorch_lora_weights.safetensors", lora_sd(9))
    torch.save(sd, tmp_path / "pytorch_lora_weights.bin")
    assert_same(read_source(tmp_path, use_safetensors=False)[0], sd)


def test_folder_missing_weight_name(tmp_path: Path) -> None:
    write_st(tmp_path / "a.safetensors")
    with pytest.raises(errors.SourceNotFoundError) as ei:
        read_source(tmp_path, weight_name="nope.safetensors")
    msg = one_line(ei.value)
    assert "nope.safetensors" in msg and "a.safetensors" in msg


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(errors.SourceNotFoundError, match=str(tmp_path)):
        read_source(tmp_path)


def test_peft_sidecar_config(tmp_path: Path) -> None:
    sd = {"base_model.model.x.lora_A.weight": torch.randn(2, 4), "base_model.model.x.lora_B.weight": torch.randn(4, 2)}
    write_st(tmp_path / "adapter_model.safetensors", sd)
    cfg = {"r": 2, "lora_alpha": 8, "target_modules": ["x"]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    _, meta, _ = read_source(tmp_path)
    assert json.loads(meta["adapter_config"]) == cfg


# ----------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.safetensors"
    with pytest.raises(errors.SourceNotFoundError) as ei:
        read_source(p)
    assert str(p) in one_line(ei.value)
    assert isinstance(ei.value, FileNotFoundError)


def test_missing_relative_path_is_not_sent_to_the_hub() -> None:
    with pytest.raises(errors.SourceNotFoundError, match="no such file"):
        read_source("./does/not/exist.safetensors")


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and "empty" in msg


def test_truncated_safetensors(tmp_path: Path) -> None:
    good = write_st(tmp_path / "good.safetensors").read_bytes()
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(good[:-10])
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and "truncated" in msg


def test_truncated_inside_header(tmp_path: Path) -> None:
    good = write_st(tmp_path / "good.safetensors").read_bytes()
    p = tmp_path / "trunc2.safetensors"
    p.write_bytes(good[:40])
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    assert str(p) in one_line(ei.value) and "truncated" in str(ei.value)


def test_random_bytes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    p = tmp_path / "random.safetensors"
    p.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist()))
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and "not a safetensors file" in msg


@pytest.mark.parametrize("ext", [".bin", ".pt"])
def test_random_bytes_pickle_extension(tmp_path: Path, ext: str) -> None:
    p = tmp_path / f"random{ext}"
    p.write_bytes(os.urandom(0) + bytes(range(7, 250)) * 4)
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    assert str(p) in one_line(ei.value)


HTML = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Civitai | Sign in</title></head>
<body><div>Please log in to download this model.</div></body></html>
"""


@pytest.mark.parametrize("ext", [".safetensors", ".bin"])
def test_html_page(tmp_path: Path, ext: str) -> None:
    p = tmp_path / f"lora{ext}"
    p.write_bytes(b"\n  " + HTML)
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and "HTML" in msg and "web page" in msg


def test_git_lfs_pointer(tmp_path: Path) -> None:
    p = tmp_path / "lora.safetensors"
    p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(errors.FormatError, match="Git LFS pointer"):
        read_source(p)


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize(
    "header,data,needle",
    [
        ({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}}, b"\0" * 32, "header lies"),
        ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            "offsets",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 20, "does not cover"),
        ({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 8]}}, b"\0" * 8, "malformed"),
        ({"w": {"dtype": "Q4_K", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "dtype"),
        ({"w": {"shape": [2]}}, b"", "lacks"),
        ({"__metadata__": {"a": 1}, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "__metadata__"),
    ],
    ids=["shape-vs-offsets", "offsets-past-end", "overlap", "trailing", "negative-dim", "dtype", "incomplete", "metadata"],
)
def test_lying_header(tmp_path: Path, header: dict, data: bytes, needle: str) -> None:
    p = tmp_path / "liar.safetensors"
    p.write_bytes(_raw_safetensors(header, data))
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and needle in msg


def test_header_not_json(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"")
    with pytest.raises(errors.FormatError, match="not valid JSON"):
        read_source(p)


def test_non_tensor_files(tmp_path: Path) -> None:
    p = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], p)
    with pytest.raises(errors.FormatError) as ei:
        read_source(p)
    assert str(p) in one_line(ei.value) and "list" in str(ei.value)

    p2 = tmp_path / "strings.pt"
    torch.save({"unet.a.lora_A.weight": "not a tensor"}, p2)
    with pytest.raises(errors.DTypeError) as ei2:
        read_source(p2)
    assert str(p2) in one_line(ei2.value) and "unet.a.lora_A.weight" in str(ei2.value)

    p3 = tmp_path / "config.safetensors"
    p3.write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    with pytest.raises(errors.FormatError) as ei3:
        read_source(p3)
    assert str(p3) in one_line(ei3.value) and "JSON" in str(ei3.value)


def test_integer_tensor_in_file(tmp_path: Path) -> None:
    sd = dict(lora_sd())
    sd["unet.x.lora_A.weight"] = torch.ones(2, 3, dtype=torch.int32)
    p = write_st(tmp_path / "int.safetensors", sd)
    with pytest.raises(errors.DTypeError) as ei:
        read_source(p)
    assert str(p) in one_line(ei.value) and "unet.x.lora_A.weight" in str(ei.value)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle-p2", "pickle-p5"])
@pytest.mark.parametrize("ext", [".bin", ".ckpt", ".pt", ".pth", ".safetensors"])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, how: str, ext: str) -> None:
    marker = tmp_path / "MARKER"
    evil = {"unet.a.lora_A.weight": torch.zeros(2, 2), "payload": _Evil(str(marker))}
    p = tmp_path / f"evil{ext}"
    if how == "torch.save":
        torch.save(evil, p)
    else:
        with open(p, "wb") as f:
            pickle.dump(evil, f, protocol=2 if how == "pickle-p2" else 5)
    # the payload really runs when unpickled without restrictions (sanity check of the fixture) ...
    sanity = tmp_path / "SANITY"
    pickle.loads(pickle.dumps(_Evil(str(sanity))))
    assert sanity.exists()
    # ... and lorakit refuses it and runs nothing
    with pytest.raises(errors.UnsafeFileError) as ei:
        read_source(p)
    msg = one_line(ei.value)
    assert str(p) in msg and "nothing was executed" in msg
    assert not marker.exists()


def test_read_header_reads_no_data(tmp_path: Path) -> None:
    sd = {"unet.a.lora_A.weight": torch.randn(3, 5), "unet.a.lora_B.weight": torch.randn(7, 3).half()}
    p = write_st(tmp_path / "h.safetensors", sd, {"k": "v"})
    raw = bytearray(p.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    raw[8 + n :] = b"\xff" * (len(raw) - 8 - n)  # garbage data region, valid header
    p.write_bytes(bytes(raw))
    shapes, meta = read_header(p)
    assert shapes == {"unet.a.lora_A.weight": ((3, 5), torch.float32), "unet.a.lora_B.weight": ((7, 3), torch.float16)}
    assert meta == {"k": "v"}


def test_read_file_of_a_folder(tmp_path: Path) -> None:
    with pytest.raises(errors.FormatError, match="is a folder"):
        read_file(tmp_path)


def test_safetensors_with_pickle_extension_is_read_as_safetensors(tmp_path: Path) -> None:
    sd = lora_sd()
    p = tmp_path / "actually_safe.bin"
    save_file(sd, str(p))
    assert_same(read_source(p)[0], sd)


def test_unsupported_source_type() -> None:
    with pytest.raises(errors.FormatError, match="list"):
        read_source([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["https://civitai.com/models/1234?modelVersionId=5", "s3://bucket/lora.safetensors"])
def test_urls_are_not_fetched(url: str) -> None:
    with pytest.raises(errors.SourceNotFoundError) as ei:
        read_source(url)
    assert url in one_line(ei.value) and "download" in str(ei.value)


def test_pickle_plain_values_become_metadata(tmp_path: Path) -> None:
    sd = lora_sd()
    p = tmp_path / "trainer.pt"
    torch.save({**sd, "epoch": 3, "name": "style"}, p)
    out, meta, _ = read_source(p)
    assert_same(out, sd)
    assert meta == {"epoch": "3", "name": "style"}
