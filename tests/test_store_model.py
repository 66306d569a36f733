"""``FileStore`` and ``MemoryStore`` driven side by side through random sequences of the store API
(hypothesis's stateful testing): every call must end the same way in both, the same value or the
same exception type, and after every step both must hold the same uploads with the same bytes.

The contract suite (``test_store_contract.py``) pins down each rule on its own; this looks for
the sequences nobody thought of: a write after a truncation after a declared length, a final
upload whose partial was deleted, an out-of-range read of an upload being concatenated...
``MemoryStore`` is the model: it is what users test their code against, so it must not differ.
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from typing import TYPE_CHECKING, Any

import anyio.from_thread
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from _helpers import Chunks
from anytus import FileStore, MemoryStore, SyncUpload, UploadInfo

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.from_thread import BlockingPortal

#: compared between the stores (``storage`` and ``modified_at`` are each store's own)
FIELDS = ("id", "size", "offset", "metadata", "is_partial", "is_final", "partial_uploads")

_ids = itertools.count()


def _outcome(value: Any) -> Any:
    """What a call's result is compared by."""
    if isinstance(value, UploadInfo):
        return {name: getattr(value, name) for name in FIELDS}
    return value


class StoresAgree(RuleBasedStateMachine):
    backend = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self._portal_manager = anyio.from_thread.start_blocking_portal(self.backend)
        self.portal: BlockingPortal = self._portal_manager.__enter__()
        self._directory = tempfile.TemporaryDirectory(prefix="anytus-model-")
        self.file = FileStore(self._directory.name, durability="none")
        self.memory = MemoryStore()

    def teardown(self) -> None:
        self._portal_manager.__exit__(None, None, None)
        self._directory.cleanup()

    uploads = Bundle("uploads")

    def both(self, call: Callable[[Any], Awaitable[Any]]) -> Any:
        """``call(store)`` on each store; the two must end alike. Returns the result, or the
        exception type both raised."""
        ends = []
        for store in (self.file, self.memory):
            try:
                ends.append(("value", _outcome(self.portal.call(call, store))))
            except Exception as exc:  # noqa: BLE001 - compared below
                ends.append(("raised", type(exc)))
        assert ends[0] == ends[1], f"FileStore {ends[0]}, MemoryStore {ends[1]}"
        return ends[0][1]

    @initialize(target=uploads)
    def first(self) -> str:
        return self._create(5, partial=False)

    @rule(
        target=uploads,
        size=st.none() | st.integers(0, 12),
        partial=st.booleans(),
    )
    def create(self, size: int | None, partial: bool) -> str:
        return self._create(size, partial=partial)

    def _create(self, size: int | None, *, partial: bool) -> str:
        upload_id = f"model{next(_ids):08d}"
        info = UploadInfo(id=upload_id, size=size, is_partial=partial, metadata={"n": "v"})
        self.both(lambda store: store.new_upload(info))
        return upload_id

    @rule(
        target=uploads,
        picked=st.lists(st.integers(0, 20), min_size=1, max_size=3),
        size=st.none() | st.integers(0, 30),
    )
    def create_final(self, picked: list[int], size: int | None) -> str:
        # partial IDs by position among those made so far (some deleted, some not partial)
        made = [f"model{index:08d}" for index in picked]
        upload_id = f"model{next(_ids):08d}"
        final = UploadInfo(id=upload_id, size=size, is_final=True, partial_uploads=tuple(made))

        async def create_and_concat(store: Any) -> Any:
            await store.new_upload(final)
            await store.concat_uploads(upload_id, made)
            return await store.get_info(upload_id)

        self.both(create_and_concat)
        return upload_id

    @rule(
        upload_id=uploads,
        shift=st.sampled_from([0, 0, 0, -1, 1]),
        pieces=st.lists(st.binary(max_size=6), max_size=3),
    )
    def write(self, upload_id: str, shift: int, pieces: list[bytes]) -> None:
        async def write_at_offset(store: Any) -> Any:
            info = await store.get_info(upload_id)
            return await store.write_chunk(upload_id, info.offset + shift, Chunks(pieces))

        self.both(write_at_offset)

    @rule(
        upload_id=uploads,
        data=st.binary(max_size=8),
        more=st.none() | st.integers(-1, 3),
        back=st.none() | st.integers(0, 3),
    )
    def one_hop(self, upload_id: str, data: bytes, more: int | None, back: int | None) -> None:
        # what a small PATCH does in one worker-thread hop (OneHopStore.run_nowait): a length
        # declared around the offset, the bytes written, maybe some taken back
        def steps(upload: SyncUpload) -> Any:
            if more is not None:
                upload.declare_length(max(upload.info.offset + more, 0))
            upload.write(data)
            if back is not None:
                upload.truncate(max(upload.info.offset - back, 0))
            return _outcome(upload.info)

        self.both(lambda store: store.run_nowait(upload_id, steps))

    @rule(upload_id=uploads, more=st.integers(-2, 3))
    def declare_length(self, upload_id: str, more: int) -> None:
        # around the bytes stored: the boundaries are where the rules are
        async def declare_around_offset(store: Any) -> Any:
            info = await store.get_info(upload_id)
            return await store.declare_length(upload_id, max(info.offset + more, 0))

        self.both(declare_around_offset)

    @rule(upload_id=uploads, back=st.integers(-1, 4))
    def truncate(self, upload_id: str, back: int) -> None:
        async def truncate_back(store: Any) -> Any:
            info = await store.get_info(upload_id)
            return await store.truncate(upload_id, info.offset - back)

        self.both(truncate_back)

    @rule(upload_id=uploads)
    def terminate(self, upload_id: str) -> None:
        self.both(lambda store: store.terminate(upload_id))

    @rule(upload_id=uploads, start=st.integers(-1, 8), end=st.none() | st.integers(0, 14))
    def read(self, upload_id: str, start: int, end: int | None) -> None:
        async def read_range(store: Any) -> bytes:
            received = bytearray()
            async with store.get_reader(upload_id, start=start, end=end) as stream:
                async for chunk in stream:
                    received += chunk
            return bytes(received)

        self.both(read_range)

    @invariant()
    def same_uploads(self) -> None:
        ids = self.both(lambda store: store.list_uploads())
        for upload_id in ids:
            self.both(functools.partial(_get_info, upload_id))
            self.both(functools.partial(_read_all, upload_id))


async def _get_info(upload_id: str, store: Any) -> UploadInfo:
    info: UploadInfo = await store.get_info(upload_id)
    return info


async def _read_all(upload_id: str, store: Any) -> bytes:
    received = bytearray()
    async with store.get_reader(upload_id) as stream:
        async for chunk in stream:
            received += chunk
    return bytes(received)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_file_store_and_memory_store_agree(backend: str) -> None:
    machine = type(f"StoresAgree_{backend}", (StoresAgree,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
