"""Interop with tusd v2.10 at draft interop version 6 (``tusd -enable-experimental-protocol``).

A sequence of draft-6 requests was sent to tusd and its answers recorded in
``tests/data/tusd-draft-6.json`` (``python tests/test_draft_tusd.py`` records it again).
:func:`test_recording_is_what_tusd_answers` checks the recording against a live tusd;
:func:`test_replay_against_anytus` replays the same requests against ``anytus serve`` and
expects tusd's answers wherever tusd follows draft -05, and the draft's answer wherever tusd
departs from it (:data:`DEPARTURES`, explained in docs/draft.md), instead of copying tusd.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import http_sf

from _client_helpers import start_peer
from _draft_helpers import RawReader, head_bytes
from _server import run_server_process

if TYPE_CHECKING:
    from collections.abc import Iterator

RECORDING = Path(__file__).parent / "data" / "tusd-draft-6.json"
V6 = {"Upload-Draft-Interop-Version": "6"}
APPEND = {**V6, "Content-Type": "application/partial-upload"}
MAX_SIZE = 1000

#: (name, method, target, headers, body); "{a}" and "{b}" are the uploads created by
#: create_partial and create_b
STEPS: list[tuple[str, str, str, dict[str, str], str]] = [
    ("options", "OPTIONS", "/files/", V6, ""),
    ("create_partial", "POST", "/files/", {**V6, "Upload-Complete": "?0"}, "hello"),
    ("head", "HEAD", "{a}", V6, ""),
    ("head_with_offset", "HEAD", "{a}", {**V6, "Upload-Offset": "5"}, ""),
    ("append", "PATCH", "{a}", {**APPEND, "Upload-Complete": "?0", "Upload-Offset": "5"}, " wor"),
    ("mismatch", "PATCH", "{a}", {**APPEND, "Upload-Complete": "?0", "Upload-Offset": "3"}, "x"),
    ("wrong_media_type", "PATCH", "{a}",
     {**V6, "Content-Type": "application/offset+octet-stream", "Upload-Complete": "?0",
      "Upload-Offset": "9"}, "x"),
    ("complete", "PATCH", "{a}", {**APPEND, "Upload-Complete": "?1", "Upload-Offset": "9"}, "ld"),
    ("head_complete", "HEAD", "{a}", V6, ""),
    ("append_to_completed", "PATCH", "{a}",
     {**APPEND, "Upload-Complete": "?1", "Upload-Offset": "11"}, "x"),
    ("inconsistent_length", "POST", "/files/",
     {**V6, "Upload-Complete": "?1", "Upload-Length": "9"}, "hello"),
    ("length_past_max_size", "POST", "/files/",
     {**V6, "Upload-Complete": "?0", "Upload-Length": "2000"}, ""),
    ("content_past_max_size", "POST", "/files/", {**V6, "Upload-Complete": "?1"}, "x" * 1500),
    ("create_b", "POST", "/files/", {**V6, "Upload-Complete": "?0"}, ""),
    ("delete_with_offset", "DELETE", "{b}", {**V6, "Upload-Offset": "0"}, ""),
    ("delete", "DELETE", "{b}", V6, ""),
    ("head_deleted", "HEAD", "{b}", V6, ""),
]  # fmt: skip

#: where tusd v2.10 departs from draft -05 (interop 6): what the draft says instead, which is
#: what anytus answers; every key is compared
DEPARTURES: dict[str, dict[str, Any]] = {
    # tus's OPTIONS (200, Tus-*); the draft's carries Accept-Patch
    "options": {"status": 204, "accept-patch": "application/partial-upload"},
    # "MUST acknowledge it by responding with the 201 (Created) status code and the
    # Upload-Complete header value set to false": tusd leaves out Upload-Complete
    "create_partial": {"upload-complete": "?0"},
    # "The request MUST NOT include an Upload-Offset or Upload-Complete header field. The server
    # MUST reject requests with either of these fields": tusd answers it
    "head_with_offset": {"status": 400},
    "delete_with_offset": {"status": 400},
    # an append that leaves the upload incomplete is answered 201 with Upload-Complete: ?0 until
    # -05; tusd answers 204 without Upload-Complete
    "append": {"status": 201, "upload-complete": "?0"},
    "complete": {"status": 201, "upload-complete": "?1"},
    # the 409 must say the right offset; tusd's does not
    "mismatch": {"upload-offset": "9"},
    # a PATCH without application/partial-upload is not an append: 415 (tusd: 400)
    "wrong_media_type": {"status": 415},
    # a completed upload "MUST NOT be modified [...] MUST reject": tusd answers 204
    "append_to_completed": {"status": 400},
    # Upload-Limit: max-size is advertised, so enforced (413 with Upload-Limit); tusd accepts
    "length_past_max_size": {"status": 413, "interim": []},
    "content_past_max_size": {"status": 413, "interim": []},
    # not a departure of its own: tusd deleted the upload in delete_with_offset already
    "delete": {"status": 204},
}

FIELDS = ("upload-offset", "upload-complete", "upload-length", "accept-patch")


def _max_size(value: str | None) -> int | None:
    if value is None:
        return None
    parsed = http_sf.parse(value.encode(), tltype="dictionary")
    assert isinstance(parsed, dict)
    member = parsed.get("max-size")
    return None if member is None else int(member[0])  # type: ignore[index, arg-type]


async def run_sequence(port: int) -> dict[str, dict[str, Any]]:
    """Send :data:`STEPS` to a server on 127.0.0.1:*port*, one connection each; return what each
    answered (interim statuses, status, the draft's fields, the announced max-size)."""
    uploads: dict[str, str] = {}
    observed: dict[str, dict[str, Any]] = {}
    host = f"127.0.0.1:{port}"
    for name, method, target, headers, body in STEPS:
        target = target.format(**uploads)
        data = body.encode()
        request_headers = {**headers, "Content-Length": str(len(data))}
        if method in ("HEAD", "OPTIONS", "DELETE") and not data:
            del request_headers["Content-Length"]
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            reader = RawReader(stream)
            await stream.send(head_bytes(method, target, host, request_headers) + data)
            answers = [await reader.response(head=method == "HEAD")]
            while answers[-1][0] < 200:
                answers.append(await reader.response(head=method == "HEAD"))
        *interims, (status, final, _) = answers
        record: dict[str, Any] = {
            "interim": [
                [code, fields.get("upload-draft-interop-version"), "location" in fields]
                for code, fields, _ in interims
            ],
            "status": status,
            "max-size": _max_size(final.get("upload-limit")),
        }
        record.update({field: final[field] for field in FIELDS if field in final})
        observed[name] = record
        if name in ("create_partial", "create_b"):
            location = final["location"]
            uploads[name[-1] if name == "create_b" else "a"] = "/" + location.split("/", 3)[3]
    return observed


@contextlib.contextmanager
def running_tusd(directory: Path) -> Iterator[int]:
    """tusd with the draft on, on a free port (it picks one and names it); yields the port."""
    extra = ("-enable-experimental-protocol", "-max-size", str(MAX_SIZE))
    with start_peer("tusd", directory, *extra) as peer:
        yield peer.port


async def test_recording_is_what_tusd_answers(tmp_path: Path) -> None:
    with running_tusd(tmp_path / "uploads") as port:
        assert await run_sequence(port) == json.loads(RECORDING.read_text())


async def test_replay_against_anytus(tmp_path: Path) -> None:
    recorded: dict[str, dict[str, Any]] = json.loads(RECORDING.read_text())
    # the trio backend's server sends the 104, as tusd does
    with run_server_process(tmp_path, "--backend", "trio", "--max-size", str(MAX_SIZE)) as process:
        ours = await run_sequence(process.port)
    assert set(ours) == set(recorded)
    for name, theirs in recorded.items():
        departure = DEPARTURES.get(name, {})
        for key, value in departure.items():
            # it is a departure: tusd does otherwise, anytus does what the draft says
            assert theirs.get(key) != value, (name, key)
            assert ours[name].get(key) == value, (name, key, ours[name])
        if ours[name]["status"] != theirs["status"]:
            assert "status" in departure, (name, ours[name], theirs)
            continue  # a different answer altogether: its other fields are not comparable
        for key, value in theirs.items():
            if key not in departure:
                assert ours[name].get(key) == value, (name, key, ours[name], theirs)


def record() -> None:
    """Record :data:`STEPS` against the tusd at :data:`_client_helpers.TUSD` into :data:`RECORDING`."""
    import tempfile

    async def main() -> dict[str, dict[str, Any]]:
        with (
            tempfile.TemporaryDirectory() as directory,
            running_tusd(Path(directory, "uploads")) as port,
        ):
            return await run_sequence(port)

    observed = anyio.run(main)
    RECORDING.parent.mkdir(exist_ok=True)
    RECORDING.write_text(json.dumps(observed, indent=1) + "\n")
    sys.stderr.write(f"recorded {len(observed)} steps in {RECORDING}\n")


if __name__ == "__main__":
    record()
