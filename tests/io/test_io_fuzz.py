"""Fuzzing the file readers: corrupted, truncated or invented files raise only lorakit errors (never a bare
KeyError / IndexError / ValueError / SafetensorError / struct.error from deep inside), and never execute code."""

from __future__ import annotations

import json
import pickle
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lorakit import errors
from lorakit.inspection import inspect
from lorakit.io import read_header, read_source

SETTINGS = settings(max_examples=int(__import__("os").environ.get("LORAKIT_FUZZ_EXAMPLES", "120")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.safetensors"
        save_file(
            {
                "unet.a.lora_A.weight": torch.arange(8.0).reshape(2, 4),
                "unet.a.lora_B.weight": torch.ones(4, 2),
                "unet.a.alpha": torch.tensor(2.0),
            },
            str(p),
            metadata={"ss_network_dim": "2"},
        )
        return p.read_bytes()


VALID = _valid_bytes()


def _read_all_ways(path: Path) -> None:
    for fn in (read_source, read_header, inspect):
        try:
            fn(path)
        except errors.LorakitError:
            pass


@SETTINGS
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, len(VALID))),
)
def test_mutated_safetensors_raise_only_lorakit_errors(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(VALID)
    for pos, val in edits:
        data[pos] = val
    if cut is not None:
        data = data[:cut]
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.safetensors"
        p.write_bytes(bytes(data))
        _read_all_ways(p)


_dtype = st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F64", "XX", 3])
_shape = st.lists(st.integers(-2, 5), max_size=3)
_entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": _dtype,
        "shape": st.one_of(_shape, st.just("4")),
        "data_offsets": st.one_of(st.lists(st.integers(-4, 80), min_size=0, max_size=3), st.none()),
    },
)


@SETTINGS
@given(
    header=st.dictionaries(
        st.sampled_from(["unet.a.lora_A.weight", "unet.a.lora_B.weight", "x.alpha", "__metadata__", ""]),
        st.one_of(_entry, st.integers(), st.text(max_size=3), st.dictionaries(st.text(max_size=2), st.text(max_size=2))),
        max_size=4,
    ),
    data_len=st.integers(0, 96),
    declared=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_invented_headers_raise_only_lorakit_errors(header: dict, data_len: int, declared: int | None) -> None:
    raw = json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "h.safetensors"
        p.write_bytes(struct.pack("<Q", n) + raw + b"\x01" * data_len)
        _read_all_ways(p)


@SETTINGS
@given(blob=st.binary(max_size=300), ext=st.sampled_from([".safetensors", ".bin", ".pt", ".ckpt", ".pth"]))
def test_random_files_raise_only_lorakit_errors(blob: bytes, ext: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"r{ext}"
        p.write_bytes(blob)
        _read_all_ways(p)


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


@SETTINGS
@given(
    protocol=st.integers(2, 5),
    wrap=st.sampled_from(["dict", "list", "nested"]),
    cut=st.one_of(st.none(), st.integers(1, 200)),
)
def test_code_running_pickles_never_run(protocol: int, wrap: str, cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as d:
        marker = Path(d) / "MARKER"
        payload = _Marker(str(marker))
        obj = {"w": torch.zeros(2), "p": payload} if wrap == "dict" else [payload] if wrap == "list" else {"state_dict": {"x": payload}}
        data = pickle.dumps(obj, protocol=protocol)
        if cut is not None:
            data = data[:cut]
        p = Path(d) / "e.bin"
        p.write_bytes(data)
        _read_all_ways(p)
        assert not marker.exists()
