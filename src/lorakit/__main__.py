"""``python -m lorakit``: the ``lorakit`` command line (see :mod:`lorakit.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
