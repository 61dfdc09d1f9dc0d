"""Typed errors raised by lorakit.

Every error derives from :class:`LorakitError`, so callers can catch one type. Messages are one line, name the
file / key / module involved and summarise long lists (counts, first few items, closest matches) instead of
dumping them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import LoadReport

__all__ = [
    "LorakitError",
    "FormatError",
    "UnsafeFileError",
    "KeyMismatchError",
    "ShapeMismatchError",
    "ControlLoRAError",
    "DTypeError",
    "AdapterNotFoundError",
    "AdapterExistsError",
    "FusedStateError",
    "NonFiniteError",
    "DeviceError",
    "HotswapError",
    "UnsupportedPipelineError",
    "SourceNotFoundError",
    "DestinationExistsError",
    "AdapterWeightError",
    "ComponentError",
    "AdapterNameError",
    "BatchLayoutError",
    "DestinationError",
    "PerSampleError",
    "CliError",
    "PromptTagError",
    "summarize",
    "closest",
    "did_you_mean",
]


def summarize(items: Iterable[object], limit: int = 5) -> str:
    """Return ``"a, b, c (+N more)"`` for a possibly long collection."""
    seq = [str(i) for i in items]
    head = ", ".join(seq[:limit])
    more = len(seq) - limit
    return f"{head} (+{more} more)" if more > 0 else head


def closest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """Closest names by difflib ratio (case-insensitive), for "did you mean" hints."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    hits = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[h] for h in hits]


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    hint = closest(name, candidates, n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


class LorakitError(Exception):
    """Base class of every error lorakit raises on purpose.

    Errors raised while converting a checkpoint carry the conversion's :class:`~lorakit.report.LoadReport` in
    :attr:`report` (``None`` otherwise).
    """

    def __init__(self, *args: object, report: LoadReport | None = None) -> None:
        super().__init__(*args)
        self.report: LoadReport | None = report


class FormatError(LorakitError, ValueError):
    """A file or state dict is not a readable adapter checkpoint (bad bytes, unknown layout, bad header)."""


class UnsafeFileError(LorakitError):
    """A file would need arbitrary code execution to be read (a pickle with code objects)."""


class KeyMismatchError(LorakitError, KeyError):
    """Checkpoint keys do not land on modules of the model (zero matches, or strict mode with leftovers)."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ShapeMismatchError(LorakitError, ValueError):
    """An adapter tensor's shape does not fit the target module or the other tensors of its adapter."""


class ControlLoRAError(ShapeMismatchError):
    """A Flux Control LoRA: it would widen ``x_embedder``'s input channels and overwrite q/k norm weights, which
    lorakit never does (modules keep their shapes, parameters are only fused reversibly)."""


class DTypeError(LorakitError, TypeError):
    """A tensor has a dtype an adapter cannot use (integer, bool) or a value is not a tensor."""


class AdapterNotFoundError(LorakitError, ValueError):
    """An adapter name is not loaded."""


class AdapterExistsError(LorakitError, ValueError):
    """An adapter name is already loaded."""


class FusedStateError(LorakitError, RuntimeError):
    """An operation does not fit the current fused / unfused state."""


class NonFiniteError(LorakitError, ValueError):
    """Fusing would write NaN or Inf values (raised by ``safe_fusing`` before anything is written)."""


class DeviceError(LorakitError, RuntimeError):
    """A device does not exist or cannot be used."""


class HotswapError(LorakitError, ValueError):
    """A hotswap cannot replace the loaded adapter in place."""


class UnsupportedPipelineError(LorakitError, TypeError):
    """``attach`` was given a pipeline of a family lorakit does not know."""


class SourceNotFoundError(LorakitError, FileNotFoundError, ValueError):
    """A file, folder, hub repository or file inside a repository does not exist (or is not in the offline cache).

    Also a ``ValueError``, which diffusers raises where it cannot choose a file (an offline repository id without
    ``weight_name``).
    """


class DestinationError(LorakitError, OSError):
    """A write cannot happen where it was asked to (a missing or unwritable folder, a folder where a file goes)."""


class DestinationExistsError(DestinationError, FileExistsError):
    """A write would replace an existing file (pass ``overwrite=True``) or the destination is not usable."""


class AdapterWeightError(LorakitError, ValueError):
    """An adapter weight spec does not fit (bad value, wrong count, unknown block or too many layer weights)."""


class ComponentError(LorakitError, ValueError):
    """A component name is not one of the pipeline's LoRA-loadable components."""


class AdapterNameError(LorakitError, ValueError):
    """An adapter name is not a non-empty string."""


class PerSampleError(LorakitError, RuntimeError):
    """A per-sample batch cannot run as asked (a context already active, entries that do not match the prompts)."""


class BatchLayoutError(PerSampleError, ValueError):
    """A batch's rows cannot be mapped to the samples of a per-sample plan."""


class CliError(LorakitError):
    """A command-line level problem (bad option value, nothing to do) reported as one line."""


class PromptTagError(LorakitError, ValueError):
    """A ``<lora:...>`` tag is malformed, or two tags / files name the same LoRA with different weights."""
