"""``python -m anytus``: the same as the ``anytus`` command."""

from __future__ import annotations

import sys

from ._cli import main

# the guard matters: `serve --workers N` spawns processes that import this module again
if __name__ == "__main__":
    sys.exit(main())
