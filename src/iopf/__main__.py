"""``python -m iopf``: the command line (see ``iopf.cli``)."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
