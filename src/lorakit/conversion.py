"""``lorakit.convert``: rewrite an adapter file in another layout (diffusers, PEFT, kohya).

The file is read (:func:`lorakit.io.read_source`), converted to canonical adapters (``formats.to_canonical``),
written back in the requested layout (``formats.from_canonical``) with its metadata, and the result is inspected.
Alphas travel with the adapters, so the converted file loads to the same outputs. The output family (kohya prefixes,
SDXL's SGM UNet names, the base-model tag) comes from :mod:`lorakit.families.detect`, the detector loading uses.

Example:
    >>> import lorakit
    >>> summary = lorakit.convert("kohya_lora.safetensors", "diffusers_lora.safetensors", to="diffusers")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from . import families, formats
from . import io as lio
from .errors import DestinationExistsError, FormatError, ShapeMismatchError
from .families import detect
from .inspection import InspectReport, inspect, jsonable
from .report import LoadReport
from .save import _output_file, _write_layout

logger = logging.getLogger(__name__)

__all__ = ["ConvertReport", "convert"]


@dataclass
class ConvertReport:
    """What :func:`convert` did. ``result`` is the :class:`InspectReport` of the written file."""

    src: str
    dst: str
    source_format: str
    to: str
    #: the lorakit family name the file was written for ("sd1", "sdxl", ...) or "unknown"
    family: str
    #: component -> modules converted
    modules: dict[str, int]
    tensors_in: int
    tensors_out: int
    result: InspectReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the inspect report of the written file under ``result``)."""
        d = asdict(self)
        d["result"] = self.result.to_dict()
        out: dict[str, Any] = jsonable(d)
        return out

    def format_table(self) -> str:
        """One summary line, then the inspect table of the written file."""
        head = (
            f"converted {self.src} ({self.source_format}, {self.tensors_in} tensors) -> {self.dst} ({self.to}, "
            f"{self.tensors_out} tensors); modules: "
            + ", ".join(f"{c}: {n}" for c, n in self.modules.items())
        )
        return head + "\n" + self.result.format_table()

    def __str__(self) -> str:
        return self.format_table()


def _output_family(
    family: families.Family | None,
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, str],
    components: Mapping[str, nn.Module] | None,
    report: LoadReport,
) -> families.Family | None:
    """``family`` when given; else the detector's answer from the header, names and shapes; else the family of
    ``components``; else the family whose reference model the keys resolved against."""
    if family is not None:
        return family
    guess = detect.from_keys({k: tuple(t.shape) for k, t in state_dict.items()}, metadata)
    if guess.family is not None:
        return guess.family
    if components:
        of_model = detect.of_components(components)
        if of_model is not None:
            return of_model
    return families.get(report.family) if report.family else None


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
        to: one of ``formats.LAYOUTS`` (``"diffusers"``, ``"peft"``, ``"kohya"``).
        overwrite: replace an existing ``dst``.
        family: base family for layouts whose names depend on it (``"sd1"``, ``"sdxl"``, ``"sd3"``, ...; display
            names such as ``"SDXL"`` work too); detected from the source (header, names, shapes) when omitted.
        components: optional ``{component: nn.Module}`` to resolve module names against (for models whose sizes
            differ from the family's reference model, e.g. tiny test models); by default names are resolved against
            the reference model of the family detected from the file.
        **read_kwargs: forwarded to :func:`lorakit.io.read_source` (``weight_name``, ``subfolder``, ``revision``, ...).

    Returns:
        A :class:`ConvertReport` with the inspect report of the written file.

    Raises:
        DestinationExistsError: ``dst`` exists and ``overwrite`` is false (checked before reading).
        FormatError: unknown ``to`` or ``family``; plus every error of reading and converting.

    Example:
        >>> rep = lorakit.convert("style.safetensors", "out/", to="diffusers")  # doctest: +SKIP
        >>> rep.dst  # doctest: +SKIP
        'out/pytorch_lora_weights.safetensors'
    """
    if to not in formats.LAYOUTS:
        raise FormatError(f"convert: unknown layout {to!r}; expected one of {', '.join(formats.LAYOUTS)}")
    chosen = families.get(family) if family is not None else None
    target = _output_file(dst, to, "lora", overwrite)

    state_dict, metadata, name = lio.read_source(src, **read_kwargs)
    try:
        conv = formats.to_canonical(state_dict, metadata, components, source=name)
    except ShapeMismatchError as exc:
        if components is not None:
            raise
        raise ShapeMismatchError(
            f"{exc} (convert resolves names against the family's reference model; pass components= for other sizes)",
            report=exc.report,
        ) from None
    out_family = _output_family(chosen, state_dict, metadata, components, conv.report)
    out_sd, out_meta = formats.from_canonical(conv.adapters, to, family=out_family.name if out_family else None)
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
        family=out_family.name if out_family else "unknown",
        modules={c: len(m) for c, m in conv.adapters.items()},
        tensors_in=len(state_dict),
        tensors_out=len(out_sd),
        result=inspect(target, components=components),
    )
