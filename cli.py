"""``python cli.py ...``: the tinydae command line (the same click group as the
``tinydae`` console script; it lives in tinydae/cli.py so the installed package has it)."""
from tinydae.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
