"""``python -m h2pool``: see :mod:`h2pool.cli`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
