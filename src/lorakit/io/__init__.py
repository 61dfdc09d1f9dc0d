"""Fetch adapter tensors and header metadata from any source, safely, and write safetensors files atomically.

* :mod:`lorakit.io.files`: one file: content sniffing, safetensors header validation, ``weights_only`` pickles
  (:func:`read_file`, :func:`read_header`, :func:`read_tensors`, :func:`validate_state_dict`, :func:`file_kind`).
* :mod:`lorakit.io.sources`: dict / file / folder / Hub resolution (:func:`read_source`, :func:`resolve_file`,
  :func:`read_lora`).
* :mod:`lorakit.io.write`: :func:`save_safetensors` (temporary file, then rename).
* :mod:`lorakit.io.hashes`: :func:`file_hashes` (sha256, civitai AutoV2, A1111's LoRA hash).

Example:
    >>> from lorakit.io import read_source
    >>> sd, meta, name = read_source("style.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

from .files import (
    LORA_WEIGHT_NAME,
    LORA_WEIGHT_NAME_SAFE,
    PEFT_CONFIG_METADATA_KEY,
    PEFT_CONFIG_NAME,
    PICKLE_SUFFIXES,
    WEIGHT_SUFFIXES,
    file_kind,
    read_file,
    read_header,
    read_header_state_dict,
    read_tensors,
    validate_state_dict,
)
from .hashes import FileHashes, file_hashes
from .sources import Source, choose_weight_name, read_lora, read_source, resolve_file
from .write import save_safetensors

__all__ = [
    "LORA_WEIGHT_NAME",
    "LORA_WEIGHT_NAME_SAFE",
    "PEFT_CONFIG_METADATA_KEY",
    "PEFT_CONFIG_NAME",
    "PICKLE_SUFFIXES",
    "WEIGHT_SUFFIXES",
    "FileHashes",
    "Source",
    "choose_weight_name",
    "file_hashes",
    "file_kind",
    "read_file",
    "read_header",
    "read_header_state_dict",
    "read_lora",
    "read_source",
    "read_tensors",
    "resolve_file",
    "save_safetensors",
    "validate_state_dict",
]
