"""Reading one adapter file, safely: sniffing, safetensors header validation, ``weights_only`` pickles.

Files are recognised by their content, not only their extension:

* safetensors files are parsed and validated (header length, JSON, dtypes, shapes vs. offsets, truncation) before
  any tensor is read, and never execute code;
* pickle checkpoints (``.bin``, ``.pt``, ``.ckpt``, ``.pth``) are read only through ``torch.load(weights_only=True)``;
  a pickle that needs anything more raises :class:`~lorakit.errors.UnsafeFileError` and nothing in it runs;
* HTML pages, Git LFS pointers, JSON/text files, empty files and random bytes get a one-line
  :class:`~lorakit.errors.FormatError` that names the file and says what it looks like.

:func:`read_header` reads only the safetensors header (no tensor data); :func:`read_header_state_dict` turns it into
meta tensors (plus the real single-value ``.alpha`` tensors) for :func:`lorakit.inspect`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from ..errors import DTypeError, FormatError, SourceNotFoundError, UnsafeFileError, summarize
from ..formats.keys import scalar_key

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "PEFT_CONFIG_METADATA_KEY",
    "PEFT_CONFIG_NAME",
    "PICKLE_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "describe",
    "file_kind",
    "peft_sidecar",
    "read_file",
    "read_header",
    "read_header_state_dict",
    "read_tensors",
    "validate_state_dict",
]

#: diffusers' conventional file names
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
#: pickle-based checkpoint extensions (read with ``torch.load(weights_only=True)`` only)
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
#: the sidecar config of ``PeftModel.save_pretrained`` and the metadata key it is returned under
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_CONFIG_METADATA_KEY = "adapter_config"

#: a header larger than this is not a LoRA header (safetensors itself caps it at 100 MB)
_MAX_HEADER = 100_000_000

#: safetensors dtype names -> torch dtypes (those this torch build has)
_ST_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
        "BOOL": "bool",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "F8_E4M3FNUZ": "float8_e4m3fnuz",
        "F8_E5M2FNUZ": "float8_e5m2fnuz",
        "C64": "complex64",
    }.items()
    if hasattr(torch, attr)
}

#: ``{key: (shape, dtype)}`` as a safetensors header declares them
HeaderShapes = dict[str, tuple[tuple[int, ...], torch.dtype]]


# ----------------------------------------------------------------------------------------------- validation
def is_scalar_key(key: str) -> bool:
    """A one-value setting, not a weight: an alpha / scale, or a kind's flag such as (IA)³'s ``on_input``
    (:func:`lorakit.formats.keys.scalar_key`, the kinds' vocabulary), or a ``<module>_alpha``."""
    return scalar_key(key) or key.endswith("_alpha")


def validate_state_dict(state_dict: Mapping[Any, Any], source: str = "<dict>") -> None:
    """Check that a state dict holds only string keys and usable tensors.

    Raises:
        DTypeError: a value is not a ``torch.Tensor``, or a tensor has an integer/bool dtype (allowed only for
            single-value ``.alpha`` entries and for embedded textual-inversion ``bundle_emb.*`` entries).
        FormatError: a key is not a string, or the mapping is empty.
    """
    if not isinstance(state_dict, Mapping):
        raise FormatError(f"{source}: expected a dict of tensors, got {type(state_dict).__name__}")
    if len(state_dict) == 0:
        raise FormatError(f"{source}: holds no tensors")
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise FormatError(f"{source}: key {key!r} is a {type(key).__name__}, expected a string")
        if not isinstance(value, Tensor):
            raise DTypeError(
                f"{source}: value of key {key!r} is a {type(value).__name__}, expected a torch.Tensor"
            )
        if value.dtype.is_floating_point or value.dtype.is_complex:
            continue
        if is_scalar_key(key) and value.numel() == 1:
            continue
        if key.startswith("bundle_emb."):  # A1111 embedded textual inversions carry token ids
            continue
        raise DTypeError(
            f"{source}: key {key!r} has dtype {str(value.dtype).replace('torch.', '')} with shape "
            f"{tuple(value.shape)}; adapter tensors must be floating point (only a single-value alpha or flag may be "
            "an integer)"
        )


# ----------------------------------------------------------------------------------------------- sniffing
def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or (
        text.startswith(b"<") and (b"<html" in text or b"<head" in text or b"<body" in text or b"<meta" in text)
    )


def file_kind(path: str | os.PathLike[str]) -> str:
    """What a file holds, from its first bytes: ``"safetensors"``, ``"zip"`` (torch.save), ``"pickle"``,
    ``"html"``, ``"lfs-pointer"``, ``"json"``, ``"gguf"``, ``"empty"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"GGUF"):
        return "gguf"
    if head.startswith(b"version https://git-lfs"):
        return "lfs-pointer"
    if len(head) >= 9 and head[8:9] == b"{":
        n = struct.unpack("<Q", head[:8])[0]
        if 2 <= n <= _MAX_HEADER:
            return "safetensors"
    if _looks_like_html(head):
        return "html"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "json"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


_KIND_HINTS = {
    "html": "looks like an HTML page (e.g. a download of a web page, login or error page instead of the file)",
    "lfs-pointer": "is a Git LFS pointer, not the weights (run `git lfs pull` or download the file itself)",
    "json": "is a JSON/text file, not a tensor file",
    "gguf": "is a GGUF file, which lorakit does not read",
    "unknown": "is neither a safetensors file nor a PyTorch checkpoint (random or corrupted bytes?)",
}


def _kind_error(kind: str, display: str) -> FormatError:
    """The error for a file of ``kind`` where a safetensors file was needed."""
    if kind == "empty":
        return FormatError(f"{display}: file is empty (0 bytes; failed or interrupted download?)")
    if kind in ("zip", "pickle"):
        return FormatError(f"{display}: is a PyTorch pickle checkpoint, not a safetensors file")
    return FormatError(f"{display}: {_KIND_HINTS.get(kind, _KIND_HINTS['unknown'])}")


def _check_file(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise SourceNotFoundError(f"{p}: no such file")
    if os.path.isdir(p):
        raise FormatError(f"{p}: is a folder, expected a file (pass the folder to read_source with weight_name=)")
    if os.path.getsize(p) == 0:
        raise FormatError(f"{p}: file is empty (0 bytes; failed or interrupted download?)")
    return p


def describe(exc: BaseException) -> str:
    """``"ErrorType: first line"`` of an exception raised by another library, for a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0][:200]}" if lines else exc.__class__.__name__


# ----------------------------------------------------------------------------------------------- safetensors
def _parse_header(path: str, display: str) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Parse and validate a safetensors header. Returns (entries, metadata, data_start)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise FormatError(f"{display}: file of {size} bytes is too short to be a safetensors file")
        n = struct.unpack("<Q", prefix)[0]
        if n > _MAX_HEADER or n < 2:
            kind = file_kind(path)
            raise FormatError(
                f"{display}: not a safetensors file (header length field says {n} bytes); it "
                + _KIND_HINTS[kind if kind in _KIND_HINTS else "unknown"]
            )
        if 8 + n > size:
            raise FormatError(
                f"{display}: truncated safetensors file: the header needs {n} bytes but the file has {size - 8} "
                "after the length field (incomplete download?)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{display}: safetensors header is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{display}: safetensors header is a JSON {type(header).__name__}, expected an object")
    meta_raw = header.pop("__metadata__", None) or {}
    if not isinstance(meta_raw, dict) or not all(isinstance(v, str) for v in meta_raw.values()):
        raise FormatError(f"{display}: safetensors __metadata__ must map strings to strings")
    data_size = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise FormatError(f"{display}: header entry {key!r} lacks dtype/shape/data_offsets")
        dtype = _ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise FormatError(f"{display}: tensor {key!r} has dtype {entry['dtype']!r}, which this torch cannot read")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]
        ):
            raise FormatError(f"{display}: tensor {key!r} has a malformed shape {shape!r} or data_offsets {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if offsets[1] - offsets[0] != nbytes:
            raise FormatError(
                f"{display}: header lies about tensor {key!r}: shape {tuple(shape)} {entry['dtype']} needs {nbytes} "
                f"bytes but its data_offsets {offsets} span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    pos = 0
    for begin, end, key in spans:
        if begin != pos:
            raise FormatError(
                f"{display}: header lies about offsets: tensor {key!r} starts at byte {begin}, expected {pos} "
                "(overlapping or gapped tensors)"
            )
        pos = end
    if pos > data_size:
        raise FormatError(
            f"{display}: truncated safetensors file: tensors need {pos} data bytes, the file has {data_size} "
            "(incomplete download?)"
        )
    if pos < data_size:
        raise FormatError(
            f"{display}: header does not cover the file: {data_size - pos} bytes after the last tensor "
            "(corrupted or concatenated file?)"
        )
    return header, dict(meta_raw), 8 + n


def read_header(path: str | os.PathLike[str]) -> tuple[HeaderShapes, dict[str, str]]:
    """Read only the header of a safetensors file: no tensor data is touched.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        ``({key: (shape, dtype)}, metadata)`` where ``metadata`` is the header's ``__metadata__`` (strings).

    Raises:
        SourceNotFoundError: the file does not exist.
        FormatError: the file is not a valid safetensors file (empty, truncated, HTML, lying header, ...).

    Example:
        >>> shapes, meta = read_header("pytorch_lora_weights.safetensors")  # doctest: +SKIP
    """
    p = _check_file(path)
    kind = file_kind(p)
    if kind != "safetensors":
        raise _kind_error(kind, p)
    entries, meta, _ = _parse_header(p, p)
    shapes = {k: (tuple(e["shape"]), _ST_DTYPES[e["dtype"]]) for k, e in entries.items()}
    return shapes, meta


def read_tensors(path: str | os.PathLike[str], keys: Iterable[str]) -> dict[str, Tensor]:
    """Read only ``keys`` from a (validated) safetensors file."""
    p = _check_file(path)
    try:
        with safetensors.safe_open(p, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except safetensors.SafetensorError as exc:
        raise FormatError(f"{p}: cannot read tensors: {exc}") from None


def read_header_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A safetensors file as ``meta``-device tensors of the declared shapes and dtypes, without reading its data.

    Only the single-value ``.alpha`` tensors are read from disk (converters need their values). The metadata gets
    the PEFT ``adapter_config.json`` beside a raw ``adapter_model.safetensors``, as :func:`read_file` does.

    Raises:
        SourceNotFoundError, FormatError: see :func:`read_header`.
    """
    shapes, metadata = read_header(path)
    alpha_keys = [
        k for k, (shape, _) in shapes.items() if is_scalar_key(k) and len(shape) <= 1 and (not shape or shape[0] == 1)
    ]
    alphas = read_tensors(path, alpha_keys) if alpha_keys else {}
    sd = {k: alphas[k] if k in alphas else torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in shapes.items()}
    peft_sidecar(os.fspath(path), metadata)
    return sd, metadata


def _read_safetensors(path: str, display: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    _, meta, _ = _parse_header(path, display)
    try:
        state_dict = safetensors.torch.load_file(path, device="cpu")
    except (safetensors.SafetensorError, OSError, RuntimeError) as exc:  # bytes changed after the header check
        raise FormatError(f"{display}: cannot read safetensors data: {exc}") from None
    return state_dict, meta


# ----------------------------------------------------------------------------------------------- pickles
def _refused(display: str, exc: pickle.UnpicklingError) -> UnsafeFileError:
    """The error for a pickle that ``weights_only`` refused, naming what it wanted to import."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        detail = f"it imports {found.group(1)}"
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "unsupported content")
    return UnsafeFileError(
        f"{display}: refused to unpickle: the file needs code beyond plain tensors ({detail.strip()[:200]}); "
        "nothing was executed. Convert it to safetensors with a trusted tool if you trust its origin."
    )


def _read_pickle(path: str, display: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    # a file object, not the path: torch routes some extensions (.safetensors) to other readers
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N" chatter
        try:
            obj = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _refused(display, exc) from None
        except Exception as exc:  # noqa: BLE001 - torch.load on corrupted bytes raises nearly anything (no lorakit code runs)
            raise FormatError(f"{display}: not a readable PyTorch checkpoint ({describe(exc)})") from None
    # common wrappers: {"state_dict": {...}} / {"model": {...}}
    if isinstance(obj, dict) and len(obj) >= 1:
        for wrapper in ("state_dict", "model", "params"):
            inner = obj.get(wrapper)
            if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                logger.debug("%s: using the tensors under %r", display, wrapper)
                obj = inner
                break
    if not isinstance(obj, dict):
        raise FormatError(f"{display}: holds a {type(obj).__name__}, not a dict of tensors")
    # training scripts sometimes store plain values beside the tensors ("epoch", "global_step", "name"): keys
    # without a dot are not module keys, so keep those as metadata instead of refusing the file
    meta: dict[str, str] = {}
    for key in [k for k, v in obj.items() if isinstance(k, str) and "." not in k and isinstance(v, (str, int, float, bool))]:
        meta[key] = str(obj.pop(key))
    if meta:
        logger.debug("%s: kept %d non-tensor entries as metadata: %s", display, len(meta), summarize(meta))
    return obj, meta


# ----------------------------------------------------------------------------------------------- read_file
def peft_sidecar(path: str, meta: dict[str, str]) -> None:
    """Add a raw-PEFT ``adapter_config.json`` found beside ``adapter_model.*`` to ``meta`` (its alpha lives there)."""
    cfg = os.path.join(os.path.dirname(path), PEFT_CONFIG_NAME)
    if PEFT_CONFIG_METADATA_KEY in meta or not os.path.basename(path).startswith("adapter_model"):
        return
    if os.path.isfile(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                text = f.read()
            json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("%s: ignoring unreadable %s (%s)", path, PEFT_CONFIG_NAME, exc)
            return
        meta[PEFT_CONFIG_METADATA_KEY] = text


def read_file(path: str | os.PathLike[str], *, display: str | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read one checkpoint file (safetensors, or a pickle through ``weights_only=True``) and validate it.

    Returns:
        ``(state_dict, metadata)``; metadata is the safetensors ``__metadata__`` (for pickles: plain top-level
        values such as ``epoch``, as strings), plus
        ``adapter_config`` (the JSON text of ``adapter_config.json``) for a raw PEFT ``adapter_model.*`` file
        that has one beside it.

    Raises:
        SourceNotFoundError, FormatError, UnsafeFileError, DTypeError: see the module docstring.
    """
    p = _check_file(path)
    shown = display or p
    kind = file_kind(p)
    ext = os.path.splitext(p)[1].lower()
    if kind == "safetensors":
        if ext in PICKLE_SUFFIXES:
            logger.warning("%s: the file is a safetensors file despite its %s extension; reading it as such", shown, ext)
        sd, meta = _read_safetensors(p, shown)
    elif kind in ("zip", "pickle"):
        if ext == ".safetensors":
            logger.warning("%s: the file is a PyTorch checkpoint despite its extension; reading it with weights_only", shown)
        sd, meta = _read_pickle(p, shown)
    elif ext == ".safetensors" and kind == "unknown":
        _parse_header(p, shown)  # gives the precise reason (bad length, truncated, ...)
        raise FormatError(f"{shown}: {_KIND_HINTS['unknown']}")
    else:
        raise _kind_error(kind, shown)
    validate_state_dict(sd, shown)
    peft_sidecar(p, meta)
    return dict(sd), meta
