"""Writing safetensors files atomically: a temporary file in the same folder, then a rename.

Every lorakit writer (``save_lora_weights``, ``lorakit.convert``, ``save_adapter``, the demo) ends here, so a crash or
a full disk never leaves a half-written file under the destination name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import Tensor

from ..errors import DTypeError

__all__ = ["json_default", "plain_tensors", "save_safetensors"]


def plain_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous tensors that safetensors accepts (no two entries sharing storage).

    Raises:
        DTypeError: a ``meta`` tensor (it has no data to write).
    """
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, t in state_dict.items():
        t = t.detach()
        if t.device.type == "meta":
            raise DTypeError(f"{key!r} is a meta tensor (no data) and cannot be saved")
        if not t.is_contiguous():
            t = t.contiguous()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and ident in seen:
            t = t.clone()
        elif t.numel():
            seen.add(ident)
        out[key] = t
    return out


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for header values: sets (sorted) and tuples as lists, one-value tensors as
    numbers, anything else as its ``str``."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def save_safetensors(
    state_dict: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: Mapping[str, Any] | None
) -> None:
    """Write a safetensors file atomically (temporary file in the same folder, then rename).

    Args:
        state_dict: the tensors (detached and made contiguous here; shared storage is copied).
        path: the destination file; its folder must exist.
        metadata: header ``__metadata__``; values that are not strings are JSON-encoded.

    Raises:
        DTypeError: a ``meta`` tensor.
        OSError: the folder cannot be written (the temporary file is removed).
    """
    target = Path(path)
    header = {str(k): v if isinstance(v, str) else json.dumps(v, default=json_default) for k, v in (metadata or {}).items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file(plain_tensors(state_dict), tmp, metadata=header or None)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
