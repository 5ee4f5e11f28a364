"""``python -m bmsfw.cli._entry``: the console script, for environments without it on PATH."""

from bmsfw.cli import main

if __name__ == "__main__":
    main()
