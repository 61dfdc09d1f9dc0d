"""``lorakit.convert``: rewrite an adapter file in another layout (diffusers, PEFT, kohya).

The file is read (:func:`lorakit.io.read_source`), converted to canonical adapters (``formats.to_canonical``),
written back in the requested layout (``formats.from_canonical``, through :func:`lorakit.save.write_adapters`, so
output paths follow one rule: a ``.safetensors`` file, or a folder that receives the layout's usual name) and the
result is inspected. Alphas travel with the adapters, so the converted file loads to the same outputs. The output
family (kohya prefixes, SDXL's SGM UNet names, the base-model tag) comes from :mod:`lorakit.families.detect`, the
detector loading uses.

The header travels too (:func:`carried_header`): the kohya training metadata (``ss_*``: tag frequencies, output name,
dataset, learning rates, ...), ``modelspec.*`` (title, author, trigger phrase, ...) and any other entry, except what
no longer holds for the new file: hashes of the source's bytes (``sshs_model_hash``, ``sshs_legacy_hash``,
``modelspec.hash_sha256``), the entries the writer sets from the adapters themselves (``lora_adapter_metadata``,
``adapter_config``, kohya's ``ss_network_module`` / ``ss_network_dim`` / ``ss_network_alpha`` /
``ss_base_model_version`` when the kohya writer writes them), ``modelspec.implementation`` when the layout changes,
and the provenance of an earlier conversion. The new file records where it came from: ``lorakit.converted_from``
(the source layout), ``lorakit.source`` (its file name), ``lorakit.source_sha256`` and
``lorakit.dropped_metadata`` (the header keys not carried).

Example:
    >>> import lorakit
    >>> summary = lorakit.convert("kohya_lora.safetensors", "diffusers_lora.safetensors", to="diffusers")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import families, formats
from . import io as lio
from .errors import DestinationExistsError, FormatError, ShapeMismatchError
from .families import detect
from .inspection import InspectReport, inspect, jsonable
from .io.hashes import file_hashes
from .report import LoadReport
from .save import is_folder_target, write_adapters

logger = logging.getLogger(__name__)

__all__ = ["REFERENCE_HINT", "ConvertReport", "carried_header", "convert"]

#: the end of the message when names resolve against a reference model that does not fit (the CLI says --model)
REFERENCE_HINT = "pass components= for other sizes"
#: header entries that describe the source file's bytes: never true of the output
STALE_KEYS = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")
#: header entries that the writers set from the adapters (the source's value would contradict them)
WRITER_KEYS = (lio.PEFT_CONFIG_METADATA_KEY, "lora_adapter_metadata", "peft_type", "format")
#: modelspec entries that name the code the key names are for: true only while the layout stays
LAYOUT_KEYS = ("modelspec.implementation",)
#: the provenance entries this module writes
PROVENANCE_PREFIX = "lorakit."


@dataclass
class ConvertReport:
    """What :func:`convert` did. ``result`` is the :class:`InspectReport` of the (first) written file, ``results``
    those of every file (PEFT writes one per component)."""

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
    #: every file written
    files: list[str] = field(default_factory=list)
    results: list[InspectReport] = field(default_factory=list)
    #: header keys of the source carried into the output, and those dropped because they no longer hold
    carried_metadata: list[str] = field(default_factory=list)
    dropped_metadata: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the inspect reports of the written files under ``result`` / ``results``)."""
        d = asdict(self)
        d["result"] = self.result.to_dict()
        d["results"] = [r.to_dict() for r in self.results]
        out: dict[str, Any] = jsonable(d)
        return out

    def format_table(self) -> str:
        """One summary line, then the inspect table of each written file."""
        head = (
            f"converted {self.src} ({self.source_format}, {self.tensors_in} tensors) -> {self.dst} ({self.to}, "
            f"{self.tensors_out} tensors); modules: "
            + ", ".join(f"{c}: {n}" for c, n in self.modules.items())
        )
        if self.carried_metadata or self.dropped_metadata:
            head += f"\nheader: {len(self.carried_metadata)} entries carried"
            if self.dropped_metadata:
                head += f", dropped (no longer true of the new file): {', '.join(self.dropped_metadata)}"
        tables = [r.format_table() for r in (self.results or [self.result])]
        return head + "\n" + "\n\n".join(tables)

    def __str__(self) -> str:
        return self.format_table()


def carried_header(metadata: Mapping[str, str], *, same_layout: bool) -> tuple[dict[str, str], list[str]]:
    """``(entries to carry, keys dropped)`` of a source header (see the module docstring for the rule)."""
    carried: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in metadata.items():
        if key in WRITER_KEYS or key.startswith(PROVENANCE_PREFIX):
            continue  # replaced, not lost: the writer and the provenance write their own
        if key in STALE_KEYS or (not same_layout and key in LAYOUT_KEYS):
            dropped.append(key)
            continue
        carried[key] = value
    return carried, sorted(dropped)


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


def _misfit_message(name: str, exc: ShapeMismatchError) -> str:
    """One short line: how many modules do not fit which reference model, the first one, and the way out."""
    rep = exc.report
    bad = [s for s in (rep.skipped if rep is not None else []) if s.reason == "shape mismatch"]
    if rep is None or not bad:
        return f"{exc} (convert resolves names against the family's reference model; {REFERENCE_HINT})"
    modules = {(s.component, s.module) for s in bad}
    fam = families.get(rep.family).display if rep.family else "family's"
    example = bad[0].detail or bad[0].key
    if len(example) > 140:
        example = example[:139] + "…"
    return (
        f"{name}: {len(modules)} module(s) do not fit the {fam} reference model (first: {example}); "
        f"convert resolves names against the family's reference model; {REFERENCE_HINT}"
    )


def _source_sha256(src: lio.Source, name: str) -> str | None:
    if isinstance(src, Mapping):
        return None
    for candidate in (name, os.fspath(src) if isinstance(src, (str, os.PathLike)) else None):
        if candidate and Path(candidate).is_file():
            return file_hashes(candidate).sha256
    return None


def convert(
    src: lio.Source,
    dst: str | os.PathLike[str],
    to: str = "diffusers",
    *,
    overwrite: bool = False,
    family: str | None = None,
    components: Mapping[str, nn.Module] | None = None,
    component: str | None = None,
    **read_kwargs: Any,
) -> ConvertReport:
    """Convert an adapter file to another layout and write it as safetensors, with its header carried over.

    Args:
        src: anything :func:`lorakit.io.read_source` reads (file, folder, Hub id, dict).
        dst: a ``.safetensors`` file, or a folder (created when missing) that receives
            ``pytorch_lora_weights.safetensors`` (diffusers), ``adapter_model.safetensors`` + ``adapter_config.json``
            (PEFT; one sub-folder per component when the file has several) or ``<source stem>.safetensors`` (kohya).
        to: one of ``formats.LAYOUTS`` (``"diffusers"``, ``"peft"``, ``"kohya"``).
        overwrite: replace existing files (``adapter_config.json`` included).
        family: base family for layouts whose names depend on it (``"sd1"``, ``"sdxl"``, ``"sd3"``, ...; display
            names such as ``"SDXL"`` work too); detected from the source (header, names, shapes) when omitted.
        components: optional ``{component: nn.Module}`` to resolve module names against (for models whose sizes
            differ from the family's reference model, e.g. tiny test models); by default names are resolved against
            the reference model of the family detected from the file.
        component: write only this component (e.g. ``"unet"``).
        **read_kwargs: forwarded to :func:`lorakit.io.read_source` (``weight_name``, ``subfolder``, ``revision``, ...).

    Returns:
        A :class:`ConvertReport` with the inspect reports of the written files.

    Raises:
        DestinationExistsError: an output exists and ``overwrite`` is false (a file ``dst`` is checked before
            reading; every output before anything is written).
        FormatError: unknown ``to`` or ``family``; kinds PEFT's LoraConfig cannot express (``to="peft"``: LoHa,
            LoKr, full, Tucker, input-axis DoRA); several components into one PEFT file; plus every error of reading
            and converting.
        ComponentError: ``component`` is not in the file.

    Example:
        >>> rep = lorakit.convert("style.safetensors", "out/", to="diffusers")  # doctest: +SKIP
        >>> rep.dst  # doctest: +SKIP
        'out/pytorch_lora_weights.safetensors'
    """
    if to not in formats.LAYOUTS:
        raise FormatError(f"convert: unknown layout {to!r}; expected one of {', '.join(formats.LAYOUTS)}")
    chosen = families.get(family) if family is not None else None
    if not is_folder_target(dst) and Path(dst).exists() and not overwrite:  # before reading anything
        raise DestinationExistsError(f"{os.fspath(dst)}: already exists; pass overwrite=True to replace it")

    state_dict, metadata, name = lio.read_source(src, **read_kwargs)
    try:
        conv = formats.to_canonical(state_dict, metadata, components, source=name)
    except ShapeMismatchError as exc:
        if components is not None:
            raise
        raise ShapeMismatchError(_misfit_message(name, exc), report=exc.report) from None
    out_family = _output_family(chosen, state_dict, metadata, components, conv.report)
    carried, dropped = carried_header(metadata, same_layout=conv.format == to)
    provenance: dict[str, str] = {
        "lorakit.converted_from": conv.format,
        "lorakit.source": os.path.basename(name),
    }
    sha = _source_sha256(src, name)
    if sha:
        provenance["lorakit.source_sha256"] = sha
    if dropped:
        provenance["lorakit.dropped_metadata"] = ", ".join(dropped)
    stem = Path(name).stem if not isinstance(src, Mapping) else "lora"
    written = write_adapters(
        conv.adapters, dst, to, family=out_family.name if out_family else None, metadata=provenance,
        carried=carried, component=component, overwrite=overwrite, stem=stem,
    )
    results = [inspect(path, components=components) for path in written]
    logger.info("converted %s (%s) to %s (%s)", name, conv.format, ", ".join(map(str, written)), to)
    kept = {component} if component else set(conv.adapters)
    return ConvertReport(
        src=name,
        dst=os.fspath(written[0]) if len(written) == 1 else os.fspath(dst),
        source_format=conv.format,
        to=to,
        family=out_family.name if out_family else "unknown",
        modules={c: len(m) for c, m in conv.adapters.items() if c in kept and m},
        tensors_in=len(state_dict),
        tensors_out=sum(r.num_tensors for r in results),
        result=results[0],
        files=[os.fspath(p) for p in written],
        results=results,
        carried_metadata=sorted(carried),
        dropped_metadata=dropped,
    )
