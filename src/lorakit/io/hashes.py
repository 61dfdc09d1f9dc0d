"""The hashes other tools identify a LoRA file by, computed in one pass over the file.

* ``sha256``: of the whole file (what civitai lists as SHA256).
* ``autov2``: its first 10 hex digits (civitai's "AutoV2", A1111's checkpoint "Model hash").
* ``lora_hash``: A1111's LoRA hash, the one its ``Lora hashes:`` infotext field shows (12 hex digits). For a
  safetensors file it is kohya's "addnet" hash (``sshs_model_hash`` in kohya's header): the sha256 of the bytes after
  the 8-byte length field and the JSON header, i.e. of the tensor data only, so editing the metadata does not change
  it. A1111 (``extensions-builtin/Lora/network.py``) takes the header's ``sshs_model_hash`` when there is one and
  computes that hash otherwise (``modules/hashes.py: addnet_hash_safetensors``); for other files it uses the whole
  file's sha256. The short form is the first 12 hex digits (``NetworkOnDisk.set_hash``).

Example:
    >>> h = file_hashes("style.safetensors")  # doctest: +SKIP
    >>> h.autov2, h.lora_hash_short  # doctest: +SKIP
    ('2c1d3e4f5a', '9b8c7d6e5f4a')
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["AUTOV2_DIGITS", "LORA_HASH_DIGITS", "FileHashes", "file_hashes"]

#: civitai AutoV2 / A1111 "Model hash": the first 10 hex digits of the file's sha256
AUTOV2_DIGITS = 10
#: A1111's LoRA short hash (``shorthash``): the first 12 hex digits of the LoRA hash
LORA_HASH_DIGITS = 12
_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileHashes:
    """The hashes of one file (hex strings). ``lora_hash`` is computed from the bytes; ``header_lora_hash`` is the
    header's ``sshs_model_hash`` (what A1111 shows when present), and ``header_hash_stale`` says it does not match."""

    sha256: str
    #: the addnet hash (tensor data only) for safetensors files, the whole file's sha256 otherwise
    lora_hash: str
    header_lora_hash: str | None = None

    @property
    def autov2(self) -> str:
        """civitai's AutoV2 (and A1111's checkpoint "Model hash"): 10 hex digits of the file's sha256."""
        return self.sha256[:AUTOV2_DIGITS]

    @property
    def lora_hash_short(self) -> str:
        """What A1111 writes in ``Lora hashes:``: 12 hex digits of the header's hash, else of the computed one."""
        return (self.header_lora_hash or self.lora_hash)[:LORA_HASH_DIGITS]

    @property
    def header_hash_stale(self) -> bool:
        """The header carries an ``sshs_model_hash`` that is not the hash of this file's tensor data."""
        return bool(self.header_lora_hash) and self.header_lora_hash != self.lora_hash

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every hash, the short forms and the staleness flag."""
        out = asdict(self)
        out.update(autov2=self.autov2, lora_hash_short=self.lora_hash_short, header_hash_stale=self.header_hash_stale)
        return out


def file_hashes(path: str | os.PathLike[str], header_lora_hash: str | None = None) -> FileHashes:
    """Hash a file in one read. ``header_lora_hash``: the header's ``sshs_model_hash``, if the caller has it.

    A file that starts with a length field that fits the file is hashed as safetensors (the addnet hash skips the
    header); anything else gets its whole sha256 as its LoRA hash, as A1111 does for non-safetensors files.
    """
    size = os.path.getsize(path)
    whole = hashlib.sha256()
    data = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        whole.update(head)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        safetensors = 0 <= n and 8 + n <= size and f.read(1) == b"{"
        f.seek(8)
        skip = n if safetensors else 0
        while skip > 0:  # the header: in the whole-file hash only
            chunk = f.read(min(skip, _BLOCK))
            if not chunk:
                break
            whole.update(chunk)
            skip -= len(chunk)
        for chunk in iter(lambda: f.read(_BLOCK), b""):
            whole.update(chunk)
            data.update(chunk)
    sha = whole.hexdigest()
    header_hash = header_lora_hash.strip().lower() if header_lora_hash and header_lora_hash.strip() else None
    return FileHashes(sha256=sha, lora_hash=data.hexdigest() if safetensors else sha, header_lora_hash=header_hash)
