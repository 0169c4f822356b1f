"""``python cli.py ...``: the tinydae command line (the same click group as the
``tinydae`` console script; it lives in tinydae/cli.py so the installed package has it)."""
import sys

try:  # Ctrl-C while numpy, h5py and click load (the first ~0.3 s) ends quietly, as it does later
    from tinydae.cli import cli, main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(130)

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
