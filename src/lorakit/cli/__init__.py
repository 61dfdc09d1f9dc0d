"""The ``lorakit`` command: inspect, convert, generate (with ``<lora:name:weight>`` prompt tags), bake, demo.

Run ``lorakit --help`` or ``python -m lorakit --help``; ``docs/cli.md`` has an example per subcommand.

* :mod:`~lorakit.cli.parser`: the command line; :mod:`~lorakit.cli.console`: output, logging, one-line errors;
* :mod:`~lorakit.cli.session`: pipeline loading (folder, Hub id, ``tiny:FAMILY``), device / dtype, LoRA loading;
* :mod:`~lorakit.cli.commands`: the subcommands; :mod:`~lorakit.cli.prompt`: A1111 prompt tags;
  :mod:`~lorakit.cli.demo`: the offline demo.

Errors print one line ``lorakit: error: ...`` and exit 1 (2 for a bad command line). diffusers and transformers are
imported only by the commands that need a pipeline, so ``--help`` and ``inspect FILE`` stay fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .commands import COMMANDS
from .console import CliError, Console, logging_for, one_line
from .parser import build_parser

__all__ = ["CliError", "Console", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad arguments, 130 interrupted).

    Example:
        >>> main(["inspect", "style.safetensors"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    console = Console(quiet=args.quiet, verbose=args.verbose)
    console.json = bool(getattr(args, "json", False))
    # a plain `inspect` never needs diffusers: do not import it just to set its verbosity
    libraries = args.command != "inspect" or bool(args.model)
    try:
        with logging_for(-1 if args.quiet else args.verbose, libraries):
            return COMMANDS[args.command](args, console)
    except BrokenPipeError:  # `lorakit inspect --json x | head`: stop quietly, as Unix tools do
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from failing at exit flush
        except OSError:
            pass
        return 141
    except KeyboardInterrupt:
        console.err.write("lorakit: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - the outermost handler: one line (lorakit errors as they are, others
        # with their type and "run with -v"); -v prints the traceback
        if args.verbose:
            console.traceback()
        console.error(one_line(exc))
        return 1
