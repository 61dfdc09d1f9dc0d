"""``lorakit.convert``: rewrite an adapter file in another layout (diffusers, PEFT, kohya).

The file is read (:func:`lorakit.io.read_source`), converted to canonical adapters without a model
(``formats.to_canonical``), written back in the requested layout (``formats.from_canonical``) with its metadata, and
the result is inspected. Alphas travel with the adapters, so the converted file loads to the same outputs.

Example:
    >>> import lorakit
    >>> summary = lorakit.convert("kohya_lora.safetensors", "diffusers_lora.safetensors", to="diffusers")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from . import formats
from . import io as lio
from .errors import DestinationExistsError, FormatError, ShapeMismatchError
from .inspect import _FAMILY_DISPLAY, InspectReport, _jsonable, guess_family
from .inspect import inspect as inspect_file
from .save import _output_file, _write_layout

logger = logging.getLogger(__name__)

__all__ = ["ConvertReport", "convert", "LAYOUTS"]

LAYOUTS = ("diffusers", "peft", "kohya")

#: the formats package names families in lower case ("sd1", "sdxl", ...); inspect reports "SD1", "SDXL", ...
_FAMILY_ARG = {shown: name for name, shown in _FAMILY_DISPLAY.items()}


@dataclass
class ConvertReport:
    """What :func:`convert` did. ``result`` is the :class:`InspectReport` of the written file."""

    src: str
    dst: str
    source_format: str
    to: str
    family: str
    #: component -> modules converted
    modules: dict[str, int]
    tensors_in: int
    tensors_out: int
    result: InspectReport

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = self.result.to_dict()
        return _jsonable(d)

    def format_table(self) -> str:
        head = (
            f"converted {self.src} ({self.source_format}, {self.tensors_in} tensors) -> {self.dst} ({self.to}, "
            f"{self.tensors_out} tensors); modules: "
            + ", ".join(f"{c}: {n}" for c, n in self.modules.items())
        )
        return head + "\n" + self.result.format_table()

    def __str__(self) -> str:
        return self.format_table()


def convert(
    src: lio.Source,
    dst: str | os.PathLike[str],
    to: str = "diffusers",
    *,
    overwrite: bool = False,
    family: str | None = None,
    components: Mapping[str, nn.Module] | None = None,
    **read_kwargs: Any,
) -> ConvertReport:
    """Convert an adapter file to another layout and write it as safetensors.

    Args:
        src: anything :func:`lorakit.io.read_source` reads (file, folder, Hub id, dict).
        dst: output file (or an existing folder: ``pytorch_lora_weights.safetensors`` / ``adapter_model.safetensors``
            / ``lora.safetensors`` inside it).
        to: ``"diffusers"``, ``"peft"`` or ``"kohya"``.
        overwrite: replace an existing ``dst``.
        family: base family for layouts whose names depend on it (``"sd1"``, ``"sdxl"``, ``"sd3"``, ...); guessed
            from the source (metadata, names, shapes) when omitted.
        components: optional ``{component: nn.Module}`` to resolve module names against (for models whose sizes
            differ from the family's reference model, e.g. tiny test models); by default names are resolved against
            the reference model of the family guessed from the file.
        **read_kwargs: forwarded to :func:`lorakit.io.read_source` (``weight_name``, ``subfolder``, ``revision``, ...).

    Returns:
        A :class:`ConvertReport` with the inspect report of the written file.

    Raises:
        DestinationExistsError: ``dst`` exists and ``overwrite`` is false (checked before reading).
        FormatError: unknown ``to``; plus every error of reading and converting.
    """
    if to not in LAYOUTS:
        raise FormatError(f"convert: unknown layout {to!r}; expected one of {', '.join(LAYOUTS)}")
    target = _output_file(dst, to, "lora", overwrite)

    state_dict, metadata, name = lio.read_source(src, **read_kwargs)
    try:
        conv = formats.to_canonical(state_dict, metadata, components, source=name)
    except ShapeMismatchError as exc:
        if components is not None:
            raise
        raise ShapeMismatchError(
            f"{exc} (convert resolves names against the family's reference model; pass components= for other sizes)"
        ) from None
    if family is None:
        guessed, _ = guess_family({k: tuple(t.shape) for k, t in state_dict.items()}, metadata)
        family = _FAMILY_ARG.get(guessed) or getattr(conv.report, "family", None)
    out_sd, out_meta = formats.from_canonical(conv.adapters, to, family=family)
    if not out_sd:
        raise FormatError(f"{name}: conversion to {to} produced no tensors")
    header = dict(out_meta or {})
    header.setdefault("lorakit.converted_from", conv.format)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:  # appeared while we were converting
        raise DestinationExistsError(f"{target}: already exists; pass overwrite=True to replace it")
    _write_layout(out_sd, header, target, to)
    logger.info("converted %s (%s) to %s (%s)", name, conv.format, target, to)
    return ConvertReport(
        src=name,
        dst=os.fspath(target),
        source_format=conv.format,
        to=to,
        family=family or "unknown",
        modules={c: len(m) for c, m in conv.adapters.items()},
        tensors_in=len(state_dict),
        tensors_out=len(out_sd),
        result=inspect_file(target, components=components),
    )


class _CallableModule(types.ModuleType):
    """Lets ``lorakit.convert(...)`` work whether ``lorakit.convert`` resolves to this module or the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> ConvertReport:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
