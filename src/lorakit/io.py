"""Fetch adapter tensors and header metadata from any source, safely.

Sources: an in-memory ``dict``; a file; a folder (+ ``weight_name``); a Hugging Face Hub repository id (through
``huggingface_hub.hf_hub_download``). Files are recognised by their content, not only their extension:

* safetensors files are parsed and validated (header length, JSON, dtypes, shapes vs. offsets, truncation) before
  any tensor is read, and never execute code;
* pickle checkpoints (``.bin``, ``.pt``, ``.ckpt``, ``.pth``) are read only through ``torch.load(weights_only=True)``;
  a pickle that needs anything more raises :class:`~lorakit.errors.UnsafeFileError` and nothing in it runs;
* HTML pages, Git LFS pointers, JSON/text files, empty files and random bytes get a one-line
  :class:`~lorakit.errors.FormatError` that names the file and says what it looks like.

``read_header`` reads only the safetensors header (no tensor data) for :func:`lorakit.inspect`.
"""

from __future__ import annotations

import inspect as _pyinspect
import json
import logging
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import DTypeError, FormatError, SourceNotFoundError, UnsafeFileError, summarize

logger = logging.getLogger(__name__)

__all__ = [
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "PICKLE_SUFFIXES",
    "read_lora",
    "read_source",
    "read_file",
    "read_header",
    "read_tensors",
    "resolve_file",
    "validate_state_dict",
    "file_kind",
]

#: diffusers' conventional file names
LORA_WEIGHT_NAME_SAFE = "pytorch_lora_weights.safetensors"
LORA_WEIGHT_NAME = "pytorch_lora_weights.bin"
#: pickle-based checkpoint extensions (read with ``torch.load(weights_only=True)`` only)
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
#: file names that are never adapter weights (training state), as diffusers filters them
_NOT_LORA = ("scheduler", "optimizer", "training_state", "random_states", "scaler")
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

Source = str | os.PathLike[str] | Mapping[str, Tensor]


# ----------------------------------------------------------------------------------------------- validation
def _is_alpha_key(key: str) -> bool:
    return key == "alpha" or key.endswith(".alpha") or key.endswith("_alpha")


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
        if _is_alpha_key(key) and value.numel() == 1:
            continue
        if key.startswith("bundle_emb."):  # A1111 embedded textual inversions carry token ids
            continue
        raise DTypeError(
            f"{source}: key {key!r} has dtype {str(value.dtype).replace('torch.', '')} with shape "
            f"{tuple(value.shape)}; adapter tensors must be floating point (only a single-value .alpha may be an integer)"
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
                + _KIND_HINTS[kind if kind != "safetensors" else "unknown"]
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
        dtype = _ST_DTYPES.get(entry["dtype"])
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


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, str]]:
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
        _raise_for_kind(p, kind, str(p))
    entries, meta, _ = _parse_header(p, str(p))
    shapes = {k: (tuple(e["shape"]), _ST_DTYPES[e["dtype"]]) for k, e in entries.items()}
    return shapes, meta


def read_tensors(path: str | os.PathLike[str], keys: Iterable[str]) -> dict[str, Tensor]:
    """Read only ``keys`` from a (validated) safetensors file."""
    from safetensors import SafetensorError, safe_open

    p = _check_file(path)
    try:
        with safe_open(p, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in keys}
    except SafetensorError as exc:
        raise FormatError(f"{p}: cannot read tensors: {exc}") from None


def _read_safetensors(path: str, display: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _, meta, _ = _parse_header(path, display)
    try:
        state_dict = load_file(path, device="cpu")
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise FormatError(f"{display}: cannot read safetensors data: {exc}") from None
    return state_dict, meta


# ----------------------------------------------------------------------------------------------- pickles
def _describe(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{exc.__class__.__name__}: {lines[0][:200]}" if lines else exc.__class__.__name__


def _read_pickle(path: str, display: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol N" chatter
            # a file object, not the path: torch routes some extensions (.safetensors) to other readers
            with open(path, "rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            detail = f"it imports {found.group(1)}"
        else:
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "unsupported content")
        raise UnsafeFileError(
            f"{display}: refused to unpickle: the file needs code beyond plain tensors ({detail.strip()[:200]}); "
            "nothing was executed. Convert it to safetensors with a trusted tool if you trust its origin."
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load on corrupted bytes raises nearly anything
        raise FormatError(f"{display}: not a readable PyTorch checkpoint ({_describe(exc)})") from None
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


# ----------------------------------------------------------------------------------------------- files
def _check_file(path: str | os.PathLike[str]) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise SourceNotFoundError(f"{p}: no such file")
    if os.path.isdir(p):
        raise FormatError(f"{p}: is a folder, expected a file (pass the folder to read_source with weight_name=)")
    if os.path.getsize(p) == 0:
        raise FormatError(f"{p}: file is empty (0 bytes; failed or interrupted download?)")
    return p


def _raise_for_kind(path: str, kind: str, display: str) -> None:
    if kind == "empty":
        raise FormatError(f"{display}: file is empty (0 bytes; failed or interrupted download?)")
    if kind == "safetensors":
        return
    if kind in ("zip", "pickle"):
        raise FormatError(f"{display}: is a PyTorch pickle checkpoint, not a safetensors file")
    raise FormatError(f"{display}: {_KIND_HINTS[kind]}")


def _peft_sidecar(path: str, meta: dict[str, str]) -> None:
    """Attach a raw-PEFT ``adapter_config.json`` found beside the weights (its alpha lives there)."""
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
        _raise_for_kind(p, kind, shown)
        raise AssertionError("unreachable")  # pragma: no cover
    validate_state_dict(sd, shown)
    _peft_sidecar(p, meta)
    return dict(sd), meta


# ----------------------------------------------------------------------------------------------- choosing a file
def _lora_looking(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base.endswith(WEIGHT_SUFFIXES) and not any(s in base for s in _NOT_LORA)


def _pick_one(candidates: list[str], conventional: str, where: str) -> str | None:
    """The conventional name, else the single top-level candidate; several candidates are an error."""
    if conventional in candidates:
        return conventional
    top = [f for f in candidates if "/" not in f] or candidates
    if len(top) > 1:
        raise FormatError(
            f"{where}: {len(top)} candidate weight files and no weight_name: {summarize(top, 8)}; "
            "pass weight_name= to choose one"
        )
    return top[0] if top else None


def choose_weight_name(files: Iterable[str], where: str, use_safetensors: bool | None = None) -> str:
    """Pick the adapter file among ``files`` (paths relative to the folder / repo subfolder).

    Order: ``pytorch_lora_weights.safetensors``; the single LoRA-looking ``.safetensors`` file; (unless
    ``use_safetensors=True``) ``pytorch_lora_weights.bin``; the single pickle checkpoint. Several candidates raise a
    :class:`FormatError` that lists them.
    """
    files = sorted(f for f in files if _lora_looking(f))
    safe = [f for f in files if f.endswith(".safetensors")]
    pick = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if use_safetensors is not False:
        chosen = _pick_one(safe, LORA_WEIGHT_NAME_SAFE, where)
        if chosen is not None:
            return chosen
        if use_safetensors:
            raise SourceNotFoundError(f"{where}: no .safetensors file (use_safetensors=True); found {summarize(files) or 'nothing'}")
    chosen = _pick_one(pick, LORA_WEIGHT_NAME, where)
    if chosen is not None:
        return chosen
    raise SourceNotFoundError(f"{where}: no LoRA weight file (.safetensors, {', '.join(PICKLE_SUFFIXES)}) found")


def _list_folder(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_like_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s)) and not s.lower().endswith(WEIGHT_SUFFIXES) and ".." not in s


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = _pyinspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def _cached_repo_files(repo_id: str, cache_dir: str | os.PathLike[str] | None, revision: str | None) -> list[str] | None:
    """Files of a cached snapshot (offline listing), relative to the snapshot root, or ``None``."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    repo = root / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    commit = rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    if commit is None:
        ref = repo / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snap = repo / "snapshots" / commit
    if not snap.is_dir():
        return None
    return [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]


def _hub_download(repo_id: str, filename: str, display: str, **kwargs: Any) -> str:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    download = huggingface_hub.hf_hub_download
    call = {k: v for k, v in kwargs.items() if k != "proxies"}
    if kwargs.get("proxies") is not None:
        if _accepts(download, "proxies"):
            call["proxies"] = kwargs["proxies"]
        else:
            logger.warning(
                "huggingface_hub %s takes proxies from the HTTP(S)_PROXY environment variables; `proxies=` is ignored",
                getattr(huggingface_hub, "__version__", "?"),
            )
    try:
        return download(repo_id, filename=filename, **call)
    except hf_errors.LocalEntryNotFoundError:
        raise SourceNotFoundError(
            f"{display}: not in the local Hugging Face cache and downloads are off (local_files_only / HF_HUB_OFFLINE)"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceNotFoundError(
            f"{repo_id}: not a local file or folder and not a Hub repository you can access (private? pass token=)"
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise SourceNotFoundError(f"{repo_id}: revision {kwargs.get('revision')!r} not found on the Hub") from None
    except hf_errors.EntryNotFoundError:
        raise SourceNotFoundError(f"{display}: no such file in the Hub repository") from None
    except Exception as exc:  # noqa: BLE001 - HTTP / network / httpx errors of any huggingface_hub version
        raise SourceNotFoundError(f"{display}: download failed ({_describe(exc)})") from None


def _hub_weight_name(
    repo_id: str,
    subfolder: str | None,
    *,
    offline: bool,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
    token: str | bool | None,
    use_safetensors: bool | None,
) -> str:
    prefix = (subfolder.strip("/") + "/") if subfolder else ""
    where = f"{repo_id}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    files: list[str] | None
    if offline:
        files = _cached_repo_files(repo_id, cache_dir, revision)
        if files is None:
            # nothing to list: try the conventional name (hf_hub_download will say whether it is cached)
            return LORA_WEIGHT_NAME_SAFE if use_safetensors is not False else LORA_WEIGHT_NAME
    else:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors

        try:
            files = list(huggingface_hub.list_repo_files(repo_id, revision=revision, token=token))
        except hf_errors.RepositoryNotFoundError:
            raise SourceNotFoundError(
                f"{repo_id}: not a local file or folder and not a Hub repository you can access (private? pass token=)"
            ) from None
        except Exception as exc:  # noqa: BLE001 - HTTP / network / httpx errors of any huggingface_hub version
            raise SourceNotFoundError(
                f"{repo_id}: cannot list the repository files ({_describe(exc)}); pass weight_name= or check the connection"
            ) from None
    rel = [f[len(prefix):] for f in files if f.startswith(prefix)]
    return choose_weight_name(rel, where, use_safetensors)


# ----------------------------------------------------------------------------------------------- entry point
def resolve_file(
    source: str | os.PathLike[str],
    *,
    weight_name: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    proxies: dict[str, str] | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    use_safetensors: bool | None = None,
) -> tuple[str, str]:
    """Resolve a file, folder or Hub id to a local file. Returns ``(local_path, display_name)``."""
    src = os.fspath(source)
    if os.path.isfile(src):
        return src, src
    if os.path.isdir(src):
        folder = os.path.join(src, subfolder) if subfolder else src
        if not os.path.isdir(folder):
            raise SourceNotFoundError(f"{folder}: no such folder")
        if weight_name is None:
            weight_name = choose_weight_name(_list_folder(folder), folder, use_safetensors)
        path = os.path.join(folder, weight_name)
        if not os.path.isfile(path):
            found = [f for f in _list_folder(folder) if _lora_looking(f)]
            raise SourceNotFoundError(
                f"{path}: no such file" + (f"; the folder holds {summarize(found)}" if found else "")
            )
        return path, path
    if re.match(r"^[a-z][a-z0-9+.-]*://", src, re.IGNORECASE):
        raise SourceNotFoundError(
            f"{src}: lorakit does not download URLs; download the file itself (not the web page around it) and pass "
            "its path, or pass a Hub repository id"
        )
    if not _looks_like_repo_id(src):
        raise SourceNotFoundError(f"{src}: no such file or folder")
    offline = _offline(local_files_only)
    guessed = weight_name is None
    if weight_name is None:
        weight_name = _hub_weight_name(
            src,
            subfolder,
            offline=offline,
            cache_dir=cache_dir,
            revision=revision,
            token=token,
            use_safetensors=use_safetensors,
        )
    display = f"hf://{src}/" + (f"{subfolder.strip('/')}/" if subfolder else "") + weight_name
    try:
        path = _hub_download(
            src,
            weight_name,
            display,
            subfolder=subfolder or None,
            cache_dir=cache_dir,
            force_download=force_download,
            proxies=proxies,
            local_files_only=offline,
            token=token,
            revision=revision,
        )
    except SourceNotFoundError as exc:
        if guessed and offline:  # diffusers' wording for the same situation, which scripts match on
            raise SourceNotFoundError(f"When using the offline mode, you must specify a `weight_name`. {exc}") from None
        raise
    return os.fspath(path), display


def read_source(
    source: Source,
    *,
    weight_name: str | None = None,
    subfolder: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    force_download: bool = False,
    proxies: dict[str, str] | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    use_safetensors: bool | None = None,
) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """Read adapter tensors and header metadata from a dict, file, folder or Hub repository.

    Args:
        source: a ``{key: Tensor}`` dict; a file path; a folder (with ``weight_name``, or holding one LoRA file or
            ``pytorch_lora_weights.safetensors``); or a Hub repository id.
        weight_name: the file inside the folder / repository.
        subfolder: a folder inside the folder / repository.
        cache_dir, force_download, proxies, local_files_only, token, revision: forwarded to
            ``huggingface_hub.hf_hub_download`` (``local_files_only=None`` follows ``HF_HUB_OFFLINE``).
        use_safetensors: ``True`` accepts only safetensors files when choosing a file, ``False`` prefers pickles,
            ``None`` prefers safetensors and falls back to pickles.

    Returns:
        ``(state_dict, metadata, source_name)``: tensors on CPU, the header ``__metadata__`` (``{}`` for dicts and
        pickles) and a display name for messages (the path, ``hf://repo/file`` or ``"<dict>"``).

    Raises:
        SourceNotFoundError: missing file / folder / repository / cached file.
        FormatError: unreadable, truncated, empty or non-tensor file; several candidate files.
        UnsafeFileError: a pickle that would execute code (nothing was executed).
        DTypeError: a non-tensor value or an integer/bool tensor other than an alpha.

    Example:
        >>> sd, meta, name = read_source("lora_dir", weight_name="style.safetensors")  # doctest: +SKIP
    """
    if isinstance(source, Mapping):
        validate_state_dict(source, "<dict>")
        return dict(source), {}, "<dict>"
    if not isinstance(source, (str, os.PathLike)):
        raise FormatError(
            f"cannot read a LoRA from a {type(source).__name__}; pass a dict of tensors, a path or a Hub repository id"
        )
    path, display = resolve_file(
        source,
        weight_name=weight_name,
        subfolder=subfolder,
        cache_dir=cache_dir,
        force_download=force_download,
        proxies=proxies,
        local_files_only=local_files_only,
        token=token,
        revision=revision,
        use_safetensors=use_safetensors,
    )
    state_dict, metadata = read_file(path, display=display)
    logger.debug("read %d tensors from %s", len(state_dict), display)
    return state_dict, metadata, display


def read_lora(source: Source, **kwargs: Any) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and the whole raw header of a LoRA file, folder, Hub repository or dict (``lorakit.read_lora``).

    ``lora_state_dict(..., return_lora_metadata=True)`` returns only the parsed ``lora_adapter_metadata``, as
    diffusers does; this keeps every header entry (kohya ``ss_*``, ``modelspec.*``, ...). ``kwargs`` are those of
    :func:`read_source`.

    Example:
        >>> state_dict, header = lorakit.read_lora("style.safetensors")  # doctest: +SKIP
        >>> header.get("ss_output_name")  # doctest: +SKIP
    """
    state_dict, metadata, _ = read_source(source, **kwargs)
    return state_dict, metadata
