"""Where the ``lorakit`` command writes, and how it reports: results, step lines, warnings, one-line errors.

Results and step lines (``[ 0.12 s] loaded ...``) go to stdout; step lines move to stderr when stdout carries
``--json``; warnings, logs, progress bars and errors go to stderr. ``-q`` keeps only results and errors, ``-v`` adds
lorakit's info/debug logs and full tracebacks.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..errors import CliError, LorakitError
from ..log import default_handler
from ..report import LoadReport

__all__ = ["CliError", "Console", "cli_words", "logging_for", "one_line", "report_lines"]


class Console:
    """Where the command writes: results to ``out`` (always), step lines to ``out`` / ``err`` (unless quiet).

    Example:
        >>> console = Console(quiet=True)
        >>> console.result("wrote out.png")  # doctest: +SKIP
    """

    def __init__(self, quiet: bool = False, verbose: int = 0, out: TextIO | None = None, err: TextIO | None = None):
        self.quiet = quiet
        self.verbose = verbose
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.timings: list[tuple[str, float]] = []
        #: stdout is reserved for one JSON document
        self.json = False

    def result(self, text: str = "") -> None:
        """A result line (stdout, also with ``-q``)."""
        print(text, file=self.out, flush=True)

    def info(self, text: str = "") -> None:
        """A progress / report line (stdout, or stderr while stdout carries JSON; hidden by ``-q``)."""
        if not self.quiet:
            print(text, file=self.err if self.json else self.out, flush=True)

    def warn(self, text: str) -> None:
        """A warning line (stderr, also with ``-q``)."""
        print(f"lorakit: warning: {text}", file=self.err, flush=True)

    def error(self, text: str) -> None:
        """An error line (stderr, also with ``-q``)."""
        print(f"lorakit: error: {text}", file=self.err, flush=True)

    def traceback(self) -> None:
        """The traceback of the exception being handled (stderr), for ``-v``."""
        traceback.print_exc(file=self.err)

    @contextmanager
    def step(self, label: str) -> Iterator[dict[str, Any]]:
        """Time a step and print ``[  1.23 s] label: note`` when it ends (the yielded dict may set ``note``)."""
        extra: dict[str, Any] = {}
        t0 = time.perf_counter()
        yield extra
        dt = time.perf_counter() - t0
        self.timings.append((label, dt))
        note = f": {extra['note']}" if extra.get("note") else ""
        self.info(f"[{dt:6.2f} s] {label}{note}")


def report_lines(report: LoadReport | None, indent: str = "    ") -> list[str]:
    """The lines of a load report's summary, indented (none for ``None``), as ``generate`` and ``demo`` print it."""
    if report is None:
        return []
    return [indent + line for line in report.summary().splitlines()]


#: the library's advice in Python words -> the same advice in command-line words
_CLI_WORDS = (
    ("pass components= for other sizes", "pass --model PATH|tiny:FAMILY for other sizes"),
    ("pass overwrite=True to replace it", "pass --force to overwrite it"),
    ("pass weight_name= to choose one", "pass --weight-name to choose one"),
    ("pass weight_name= or check", "pass --weight-name or check"),
    ("pass family=", "pass --family"),
    ("(private? pass token=)", "(private? log in with `hf auth login` or set HF_TOKEN)"),
    ("give a folder (one sub-folder per component is written) or pass component=",
     "give -o a folder (one sub-folder per component is written) or --component NAME"),
    ("write the diffusers or kohya layout instead", "use --to diffusers or --to kohya instead"),
    ("overwrite=True", "--force"),
)


def cli_words(text: str) -> str:
    """A library message with its advice in command-line terms (``pass overwrite=True`` -> ``pass --force``)."""
    for python, cli in _CLI_WORDS:
        text = text.replace(python, cli)
    return text


def one_line(exc: BaseException) -> str:
    """An exception as one line: lorakit errors as they are (their advice in command-line words); others with
    their type and a hint to run with ``-v``."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and not isinstance(exc, LorakitError):
        text = f"missing key {text}"
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, LorakitError):
        return cli_words(first)
    first = f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__
    return first + " (run with -v for details)"


#: logger levels per verbosity (-1 = -q, 0 = default, 1 = -v, 2+ = -vv)
_LORAKIT_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
_DIFFUSERS_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.WARNING}
#: transformers is one step quieter: by default it warns about optional backends (torchvision) that say nothing
#: about the command
_TRANSFORMERS_LEVELS = {-1: logging.ERROR, 0: logging.ERROR, 1: logging.WARNING}


@contextmanager
def logging_for(verbosity: int, libraries: bool = True) -> Iterator[None]:
    """Logging for one command; everything is put back afterwards (``main`` may run in-process, e.g. in tests).

    lorakit's logger: -q errors, default warnings, -v info, -vv debug, to stderr. diffusers: -q errors, default and
    -v warnings, -vv info; transformers one step quieter. ``-q`` also turns the libraries' progress bars off.
    ``libraries=False`` leaves diffusers and transformers alone (and unimported).
    """
    log = logging.getLogger("lorakit")
    saved = (log.level, log.propagate)
    default = default_handler()
    had_default = default in log.handlers
    log.removeHandler(default)  # the command's own handler below prints, once
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(_LORAKIT_LEVELS.get(verbosity, logging.DEBUG))
    log.propagate = False
    restore: list[tuple[Any, int, bool]] = []
    if libraries:
        # lazy: importing diffusers + transformers takes seconds, which `lorakit inspect FILE` never needs
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        for lib, levels in ((dlog, _DIFFUSERS_LEVELS), (tlog, _TRANSFORMERS_LEVELS)):
            restore.append((lib, lib.get_verbosity(), lib.is_progress_bar_enabled()))
            lib.set_verbosity(levels.get(verbosity, logging.INFO))
            if verbosity < 0:
                lib.disable_progress_bar()
    try:
        yield
    finally:
        log.removeHandler(handler)
        if had_default:
            log.addHandler(default)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for lib, verb, bars in restore:
            lib.set_verbosity(verb)
            (lib.enable_progress_bar if bars else lib.disable_progress_bar)()
