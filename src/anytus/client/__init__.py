"""anytus.client: an async tus client on anyio and httpx, for asyncio and trio.

Needs the ``client`` extra: ``pip install 'anytus[client]'``.

.. code-block:: python

    from anytus.client import TusClient

    async with TusClient("http://127.0.0.1:1080/files/") as client:
        url = await client.upload("video.mp4", metadata={"filename": "video.mp4"})
"""

from __future__ import annotations

from ._client import ProgressCallback as ProgressCallback
from ._client import TusClient as TusClient
from ._urlstore import StoredUpload as StoredUpload
from ._urlstore import URLStore as URLStore
from ._urlstore import default_store_path as default_store_path

__all__ = (
    "TusClient",
    "ProgressCallback",
    # where interrupted uploads are remembered
    "URLStore",
    "StoredUpload",
    "default_store_path",
)
