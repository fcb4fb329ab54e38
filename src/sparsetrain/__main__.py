"""``python -m sparsetrain``: the same command line as the ``sparsetrain`` entry point."""

from sparsetrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
