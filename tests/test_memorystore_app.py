"""TusApp on a MemoryStore, over real HTTP: a whole upload's life, as a client sees it."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

from _server import CLIENT_TLS, serve_app
from anytus import MemoryStore, SyncUpload, UploadNotFound
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

TUS = {"Tus-Resumable": "1.0.0"}
# what the server adds to every response, whatever the app says
TRANSPORT = {"date", "server"}


class CountingStore(MemoryStore):
    """A MemoryStore that counts the one-hop requests TusApp makes of it."""

    def __init__(self) -> None:
        super().__init__()
        self.one_hops = 0

    async def run_nowait(
        self, upload_id: str, fn: Callable[[SyncUpload], T], *, read_only: bool = False
    ) -> T:
        self.one_hops += 1
        return await super().run_nowait(upload_id, fn, read_only=read_only)


def app_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in TRANSPORT}


async def test_a_whole_upload_on_a_memory_store() -> None:
    store = CountingStore()
    app = TusApp(store)
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        created = await http.post(
            url,
            headers={**TUS, "Upload-Length": "11", "Upload-Metadata": "filename aGVsbG8udHh0"},
        )
        assert created.status_code == 201
        location = created.headers["Location"]
        upload_id = location.rsplit("/", 1)[-1]
        assert location == f"{url}{upload_id}"
        assert await store.list_uploads() == [upload_id]

        patched = await http.patch(
            location,
            content=b"hello world",
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204
        assert app_headers(patched) == {
            "tus-resumable": "1.0.0",
            "vary": "Origin",
            "upload-offset": "11",
        }

        head = await http.head(location, headers=TUS)
        assert head.status_code == 200
        assert app_headers(head) == {
            "tus-resumable": "1.0.0",
            "vary": "Origin",
            "upload-offset": "11",
            "upload-length": "11",
            "upload-metadata": "filename aGVsbG8udHh0",
            "cache-control": "no-store",
            "content-length": "11",
        }
        info = await store.get_info(upload_id)
        assert (info.offset, info.size, info.is_complete) == (11, 11, True)
        async with store.get_reader(upload_id) as stream:
            assert b"".join([chunk async for chunk in stream]) == b"hello world"

        deleted = await http.delete(location, headers=TUS)
        assert deleted.status_code == 204
        assert app_headers(deleted) == {"tus-resumable": "1.0.0", "vary": "Origin"}
        assert await store.list_uploads() == []
        with pytest.raises(UploadNotFound):
            await store.get_info(upload_id)

        gone = await http.head(location, headers=TUS)
        assert gone.status_code == 404

    # PATCH, HEAD, DELETE and the last HEAD each took the one-hop path; no lock is left behind
    assert store.one_hops == 4
    assert not store.locker.locked(upload_id)
