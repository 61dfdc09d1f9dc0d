"""lorakit's logging: warnings visible by default, one verbosity control (as ``diffusers.utils.logging``).

lorakit logs through the ``"lorakit"`` logger (``logging.getLogger("lorakit.<module>")`` in each module). On import,
lorakit gives that logger its own handler, which writes to stderr, so a partial load ("3 of 183 keys not loaded") or
the warning about a call-time scale on fused adapters is seen without any set-up, as with diffusers. The default
level is ``WARNING``.

The handler steps aside when the application has configured logging itself (a handler on the root logger, e.g.
``logging.basicConfig(...)`` or pytest's log capture): records then reach the application's handlers once, through
normal propagation, and are not printed twice. ``propagate`` stays on, so ``caplog`` sees every record.

Verbosity (same names and levels as diffusers' ``logging.set_verbosity_*``)::

    lorakit.set_verbosity_error()      # only errors
    lorakit.set_verbosity_warning()    # the default
    lorakit.set_verbosity_info()       # + what was loaded, converted, saved
    lorakit.set_verbosity_debug()      # everything
    lorakit.set_verbosity("info")      # the same by name, or logging.INFO
    lorakit.get_verbosity()            # -> 20

The environment variable ``LORAKIT_VERBOSITY`` (``debug``, ``info``, ``warning``, ``error``, ``critical``) sets the
level at import. :func:`disable_default_handler` removes lorakit's handler (records still propagate).
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = [
    "CRITICAL",
    "DEBUG",
    "ERROR",
    "INFO",
    "WARNING",
    "default_handler",
    "disable_default_handler",
    "enable_default_handler",
    "get_logger",
    "get_verbosity",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_error",
    "set_verbosity_info",
    "set_verbosity_warning",
]

CRITICAL = logging.CRITICAL
ERROR = logging.ERROR
WARNING = logging.WARNING
INFO = logging.INFO
DEBUG = logging.DEBUG

#: the environment variable read at import
ENV_VERBOSITY = "LORAKIT_VERBOSITY"
_LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "warn": WARNING, "error": ERROR, "critical": CRITICAL}
_ROOT = "lorakit"


class _DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """stderr, looked up at each record (so a replaced ``sys.stderr`` is honoured); silent while the root logger has
    handlers of its own (the application configured logging: the record reaches those through propagation)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        self.stream = sys.stderr
        super().emit(record)


_handler = _DefaultHandler()


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``"lorakit"`` logger, or ``"lorakit.<name>"``."""
    return logging.getLogger(_ROOT if not name else f"{_ROOT}.{name.removeprefix(_ROOT + '.')}")


def _level(value: int | str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"verbosity must be a logging level or one of {', '.join(_LEVELS)}, got {value!r}")
    if isinstance(value, str):
        try:
            return _LEVELS[value.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown verbosity {value!r}; expected one of {', '.join(_LEVELS)}") from None
    return int(value)


def set_verbosity(level: int | str) -> None:
    """Set the level of lorakit's logger: a ``logging`` level (``lorakit.log.INFO`` = ``logging.INFO``) or a name
    (``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"critical"``).

    Raises:
        ValueError: an unknown name. TypeError: neither a number nor a name.
    """
    get_logger().setLevel(_level(level))


def get_verbosity() -> int:
    """The effective level of lorakit's logger (``logging.WARNING`` = 30 by default)."""
    return get_logger().getEffectiveLevel()


def set_verbosity_debug() -> None:
    """Everything, debug messages included."""
    set_verbosity(DEBUG)


def set_verbosity_info() -> None:
    """Info and above: what was loaded, converted and saved."""
    set_verbosity(INFO)


def set_verbosity_warning() -> None:
    """Warnings and errors (the default)."""
    set_verbosity(WARNING)


def set_verbosity_error() -> None:
    """Errors only."""
    set_verbosity(ERROR)


def default_handler() -> logging.Handler:
    """lorakit's own stderr handler (the one the ``lorakit`` command swaps for its own while it runs)."""
    return _handler


def disable_default_handler() -> None:
    """Remove lorakit's stderr handler (records still propagate to the application's handlers)."""
    get_logger().removeHandler(_handler)


def enable_default_handler() -> None:
    """Put lorakit's stderr handler back (the state after import)."""
    log = get_logger()
    if _handler not in log.handlers:
        log.addHandler(_handler)


def _install() -> None:
    log = get_logger()
    enable_default_handler()
    if log.level == logging.NOTSET:
        env = os.environ.get(ENV_VERBOSITY, "").strip()
        try:
            log.setLevel(_level(env) if env else WARNING)
        except ValueError:
            log.setLevel(WARNING)
            log.warning("%s=%r is not a level (%s); using warning", ENV_VERBOSITY, env, ", ".join(_LEVELS))


_install()
