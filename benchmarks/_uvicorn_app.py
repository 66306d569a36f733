"""``TusApp`` for uvicorn, for ``bench_vs_tusd.py``: ``python -m uvicorn _uvicorn_app:app``.

uvicorn takes an import string, not arguments for the app, so the directory comes from
``ANYTUS_BENCH_DIR`` and the durability from ``ANYTUS_BENCH_DURABILITY`` (default ``finish``,
FileStore's own default).
"""

from __future__ import annotations

import os
from typing import Literal, cast

from anytus import FileStore
from anytus.asgi import TusApp

Durability = Literal["none", "finish", "always"]

app = TusApp(
    FileStore(
        os.environ["ANYTUS_BENCH_DIR"],
        durability=cast("Durability", os.environ.get("ANYTUS_BENCH_DURABILITY", "finish")),
    ),
    base_path="/files/",
)
