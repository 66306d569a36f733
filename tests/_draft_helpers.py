"""Raw-socket helpers for the resumable-upload draft's tests: interim (1xx) responses must be
seen, which HTTP client libraries hide."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anyio.abc

__all__ = ("RawReader", "head_bytes")


class RawReader:
    """Reads HTTP/1.1 responses from a socket, interim responses included, keeping what arrives
    beyond one response for the next."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def response(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive()
        raw_head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        length = 0 if head or status < 200 else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += await self.stream.receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    async def responses(self) -> list[tuple[int, dict[str, str], bytes]]:
        """Interim responses, then the final one."""
        found = [await self.response()]
        while found[-1][0] < 200:
            found.append(await self.response())
        return found


def head_bytes(method: str, target: str, host: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {target} HTTP/1.1",
        f"Host: {host}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
