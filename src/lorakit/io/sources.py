"""Where adapter tensors come from: an in-memory ``dict``, a file, a folder (+ ``weight_name``), or a Hugging Face
Hub repository (its offline cache, or ``huggingface_hub.hf_hub_download``).

:func:`resolve_file` turns any of them into one local file; :func:`read_source` reads it through
:mod:`lorakit.io.files`.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from torch import Tensor

from ..errors import FormatError, SourceNotFoundError, summarize
from .files import (
    LORA_WEIGHT_NAME,
    LORA_WEIGHT_NAME_SAFE,
    PICKLE_SUFFIXES,
    WEIGHT_SUFFIXES,
    describe,
    read_file,
    validate_state_dict,
)

logger = logging.getLogger(__name__)

__all__ = ["Source", "choose_weight_name", "read_lora", "read_source", "resolve_file"]

#: what :func:`read_source` accepts
Source = str | os.PathLike[str] | Mapping[str, Tensor]

#: file names that are never adapter weights (training state), as diffusers filters them
_NOT_LORA = ("scheduler", "optimizer", "training_state", "random_states", "scaler")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_NO_REPO = "not a local file or folder and not a Hub repository you can access (private? pass token=)"


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
    names = sorted(f for f in files if _lora_looking(f))
    safe = [f for f in names if f.endswith(".safetensors")]
    pick = [f for f in names if f.endswith(PICKLE_SUFFIXES)]
    if use_safetensors is not False:
        chosen = _pick_one(safe, LORA_WEIGHT_NAME_SAFE, where)
        if chosen is not None:
            return chosen
        if use_safetensors:
            raise SourceNotFoundError(
                f"{where}: no .safetensors file (use_safetensors=True); found {summarize(names) or 'nothing'}"
            )
    chosen = _pick_one(pick, LORA_WEIGHT_NAME, where)
    if chosen is not None:
        return chosen
    raise SourceNotFoundError(f"{where}: no LoRA weight file (.safetensors, {', '.join(PICKLE_SUFFIXES)}) found")


def _list_folder(folder: str) -> list[str]:
    return [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]


def _looks_like_repo_id(s: str) -> bool:
    return bool(_REPO_ID.match(s)) and not s.lower().endswith(WEIGHT_SUFFIXES) and ".." not in s


# ----------------------------------------------------------------------------------------------- the Hub
def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or a wrapped callable without a signature: assume it does
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _offline(local_files_only: bool | None) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    return bool(hf_constants.HF_HUB_OFFLINE)


def _cached_repo_files(repo_id: str, cache_dir: str | os.PathLike[str] | None, revision: str | None) -> list[str] | None:
    """Files of a cached snapshot (offline listing), relative to the snapshot root, or ``None``."""
    root = Path(cache_dir) if cache_dir is not None else Path(hf_constants.HF_HUB_CACHE)
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
    # through the module attribute, so that a patched hf_hub_download (tests, mirrors) is the one called
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
        return str(download(repo_id, filename=filename, **call))
    except hf_errors.LocalEntryNotFoundError:
        raise SourceNotFoundError(
            f"{display}: not in the local Hugging Face cache and downloads are off (local_files_only / HF_HUB_OFFLINE)"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceNotFoundError(f"{repo_id}: {_NO_REPO}") from None
    except hf_errors.RevisionNotFoundError:
        raise SourceNotFoundError(f"{repo_id}: revision {kwargs.get('revision')!r} not found on the Hub") from None
    except hf_errors.EntryNotFoundError:
        raise SourceNotFoundError(f"{display}: no such file in the Hub repository") from None
    except Exception as exc:  # noqa: BLE001 - HTTP / network / httpx errors differ between huggingface_hub versions
        raise SourceNotFoundError(f"{display}: download failed ({describe(exc)})") from None


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
        try:
            files = list(huggingface_hub.list_repo_files(repo_id, revision=revision, token=token))
        except hf_errors.RepositoryNotFoundError:
            raise SourceNotFoundError(f"{repo_id}: {_NO_REPO}") from None
        except Exception as exc:  # noqa: BLE001 - HTTP / network / httpx errors differ between huggingface_hub versions
            raise SourceNotFoundError(
                f"{repo_id}: cannot list the repository files ({describe(exc)}); pass weight_name= or check the connection"
            ) from None
    rel = [f[len(prefix):] for f in files if f.startswith(prefix)]
    return choose_weight_name(rel, where, use_safetensors)


# ----------------------------------------------------------------------------------------------- entry points
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
    """Resolve a file, folder or Hub id to a local file. Returns ``(local_path, display_name)``.

    Raises:
        SourceNotFoundError: missing file / folder / repository / cached file, or a URL.
        FormatError: several candidate files and no ``weight_name``.
    """
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
    if _URL.match(src):
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
    return path, display


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
