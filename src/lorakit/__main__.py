"""``python -m lorakit``: the command line (placeholder until the CLI lands: runs the engine demo)."""

from .demo_engine import main

if __name__ == "__main__":
    raise SystemExit(main())
