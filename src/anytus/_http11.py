"""HTTP/1.1 on the wire, sans I/O: what anytus's own server (:mod:`anytus._httpserver`) parses
and writes.

In the spirit of h11 (which this replaces there): nothing here reads a socket or awaits. A
:class:`RequestReader` is fed the bytes a connection receives and is pulled for what they hold:
the next request's head (:meth:`RequestReader.next_request`), then its body, piece by piece
(:meth:`RequestReader.next_body`). :func:`response_head` and :class:`BodyWriter` turn a response
into bytes.

Why not h11 itself: it is general (events, a state machine for both roles, header objects) and
cost about 100 µs of Python per request and response, a sixth of a small tus request's CPU.
This is the subset a server needs, with h11's rules where they are sound (the grammar of RFC 9112,
Content-Length and Transfer-Encoding checks, keep-alive, response framing) and stricter ones
where h11 is lenient in ways that invite request smuggling:

- a request with both ``Transfer-Encoding`` and ``Content-Length`` is refused (400), as RFC 9112
  6.3 allows, instead of reading it as chunked;
- obsolete line folding is refused (400), as RFC 9112 5.2 allows, instead of unfolding it;
- the CRLF after each chunk's data is checked;
- a request head longer than the limit is refused (431) even when it arrives in one read;
- an HTTP major version other than 1 is refused (505), and a later HTTP/1.x is read as HTTP/1.1
  (so it must have a ``Host``).

``tests/test_http11.py`` checks the reader against h11 on generated requests.
"""

from __future__ import annotations

import re
from typing import Final, Literal

__all__ = (
    "CLOSED",
    "END",
    "NEED_DATA",
    "BodyWriter",
    "ProtocolError",
    "Request",
    "RequestReader",
    "frame_response",
    "response_head",
)


class ProtocolError(Exception):
    """The client broke HTTP/1.1; :attr:`status` is the answer it should get (400, 431, 501 or
    505)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: :meth:`RequestReader.next_request` and :meth:`~RequestReader.next_body`: feed more bytes first
NEED_DATA: Final = _Marker("NEED_DATA")
#: :meth:`RequestReader.next_body`: the body is complete
END: Final = _Marker("END")
#: :meth:`RequestReader.next_request`: the client closed the connection between requests
CLOSED: Final = _Marker("CLOSED")

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9110 5.5's field-value, read as h11 does: any byte but NUL and whitespace, spaces and tabs
# only between them
_FIELD_CHAR = rb"[^\x00\s]"
_HEADER = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*(" + _FIELD_CHAR + rb"+(?:[ \t]+" + _FIELD_CHAR + rb"+)*)?[ \t]*"
)
_NAME = re.compile(_TOKEN)
_VALUE = re.compile(rb"(?:" + _FIELD_CHAR + rb"+(?:[ \t]+" + _FIELD_CHAR + rb"+)*)?")
# the blank line that ends a head (a bare LF is taken for a CRLF, as h11 and most servers do)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LINES = re.compile(rb"\r?\n")
_CHUNK_LINE_END = re.compile(rb"\r\n")
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\r\n]*)?[ \t]*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,20}")
#: the headers :meth:`RequestReader.next_request` looks at itself
_FRAMING_HEADERS = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}
)


class Request:
    """A request head, as the server needs it."""

    __slots__ = (
        "chunked",
        "content_length",
        "expects_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None,
        *,
        chunked: bool,
        keep_alive: bool,
        expects_continue: bool,
    ) -> None:
        self.method = method
        self.target = target
        #: ``b"1.1"`` or ``b"1.0"`` (a later 1.x is served as 1.1)
        self.http_version = http_version
        #: (lowercased name, value) pairs, in order; one ``content-length`` at most
        self.headers = headers
        #: the body's length; None when it is chunked (0: no body)
        self.content_length = content_length
        self.chunked = chunked
        #: neither side of the request asked to close the connection after it
        self.keep_alive = keep_alive
        #: ``Expect: 100-continue`` on an HTTP/1.1 request
        self.expects_continue = expects_continue

    def __repr__(self) -> str:
        return f"<Request {self.method!r} {self.target!r} HTTP/{self.http_version.decode()}>"


_ReaderState = Literal["idle", "body", "done", "error"]


class RequestReader:
    """Requests from one connection's bytes: feed what arrives with :meth:`receive_data`, then
    pull :meth:`next_request` and :meth:`next_body`; after a body's :data:`END`,
    :meth:`start_next_cycle` for the next request (pipelined bytes stay buffered).

    *max_head_size*: the longest request head (request line and headers), and the longest chunk
    header or trailer section, accepted (then 431, or 400).
    """

    __slots__ = (
        "_buffer",
        "_chunk_left",
        "_chunk_phase",
        "_chunked",
        "_eof",
        "_remaining",
        "_search_from",
        "expects_continue",
        "max_head_size",
        "state",
    )

    def __init__(self, max_head_size: int) -> None:
        self.max_head_size = max_head_size
        self._buffer = bytearray()
        self._eof = False
        #: where to go on looking for the head's end (a head that trickles in is not searched
        #: from its start again for each byte)
        self._search_from = 0
        #: ``idle`` (waiting for a head), ``body``, ``done`` (the request is read whole),
        #: ``error`` (the client broke the protocol: nothing more is read)
        self.state: _ReaderState = "idle"
        self._remaining = 0
        self._chunked = False
        #: chunked body: ``size`` (a chunk header is next), ``data``, ``crlf`` (after a
        #: chunk's data), ``trailer`` (after the last chunk)
        self._chunk_phase = "size"
        self._chunk_left = 0
        #: the client waits for ``100 Continue`` (cleared once any of its body arrives)
        self.expects_continue = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet taken: the rest of a body, or a next request's."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """What the socket gave; ``b""`` when the client closed (or half-closed) its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    def _fail(self, message: str, status: int = 400) -> ProtocolError:
        self.state = "error"
        return ProtocolError(message, status)

    # -- the head -------------------------------------------------------------------------------

    def next_request(self) -> Request | _Marker:
        """The next request's head, :data:`NEED_DATA`, or :data:`CLOSED` (the client closed the
        connection with nothing of a request sent).

        :raises ProtocolError: a malformed head (or the client closed the connection in one)
        """
        if self.state != "idle":
            raise RuntimeError(f"next_request() with the reader in state {self.state!r}")
        buffer = self._buffer
        if not buffer:
            return CLOSED if self._eof else NEED_DATA
        blank = _BLANK_LINE.search(buffer, self._search_from)
        if blank is None:
            if buffer[0] < 0x21:
                # not the start of a request line (whitespace, a blank line, a TLS record):
                # no need to wait for the rest
                raise self._fail("illegal request line")
            if len(buffer) > self.max_head_size:
                raise self._fail("request head too large", 431)
            if self._eof:
                raise self._fail("the client closed the connection in the middle of a request head")
            # the blank line may start in the last two bytes
            self._search_from = max(0, len(buffer) - 2)
            return NEED_DATA
        end = blank.end()
        if end > self.max_head_size:
            raise self._fail("request head too large", 431)
        head = bytes(buffer[: blank.start()])
        del buffer[:end]
        self._search_from = 0
        return self._parse_head(head)

    def _parse_head(self, head: bytes) -> Request:
        if head.endswith(b"\r"):
            head = head[:-1]
        lines = _LINES.split(head)
        line = _REQUEST_LINE.fullmatch(lines[0])
        if line is None:
            raise self._fail(f"illegal request line: {lines[0]!r}")
        method, target, major, minor = line.groups()
        if major != b"1":
            raise self._fail(f"HTTP/{major.decode()}.{minor.decode()} is not supported", 505)
        http_version = b"1.0" if minor == b"0" else b"1.1"
        headers: list[tuple[bytes, bytes]] = []
        content_length: bytes | None = None
        chunked = False
        hosts = 0
        close = http_version == b"1.0"
        expects_continue = False
        header = _HEADER.fullmatch
        # the first header that breaks the framing rules; raised once every line is known to be
        # well-formed (a malformed line is answered first, as h11 does)
        problem: tuple[str, int] | None = None
        for raw in lines[1:]:
            field = header(raw)
            if field is None:
                if raw[:1] in (b" ", b"\t"):
                    raise self._fail("obsolete line folding is not accepted")
                raise self._fail(f"illegal header line: {raw!r}")
            name = field[1].lower()
            value = field[2] or b""
            if name in _FRAMING_HEADERS and problem is None:
                if name == b"content-length":
                    lengths = {length.strip() for length in value.split(b",")}
                    length = lengths.pop()
                    if lengths or (content_length is not None and content_length != length):
                        problem = ("conflicting Content-Length headers", 400)
                    elif not _CONTENT_LENGTH.fullmatch(length):
                        problem = (f"bad Content-Length: {value!r}", 400)
                    elif content_length is not None:
                        continue  # the same again: one is enough
                    content_length = value = length
                elif name == b"transfer-encoding":
                    value = value.lower()
                    if chunked:
                        problem = ("multiple Transfer-Encoding headers", 501)
                    elif value != b"chunked":
                        problem = ("only Transfer-Encoding: chunked is supported", 501)
                    chunked = True
                elif name == b"host":
                    hosts += 1
                elif name == b"connection":
                    if b"close" in _tokens(value):
                        close = True
                elif b"100-continue" in _tokens(value):  # expect
                    expects_continue = http_version == b"1.1"
            headers.append((name, value))
        if problem is not None:
            raise self._fail(*problem)
        if hosts > 1:
            raise self._fail("multiple Host headers")
        if hosts == 0 and http_version == b"1.1":
            raise self._fail("missing Host header")
        if chunked and content_length is not None:
            # RFC 9112 6.3: a sign of request smuggling; a server may refuse it
            raise self._fail("both Transfer-Encoding and Content-Length")
        length = None if chunked else int(content_length or 0)
        self._chunked = chunked
        self._chunk_phase = "size"
        self._remaining = length or 0
        self.expects_continue = expects_continue
        self.state = "body"
        return Request(
            method,
            target,
            http_version,
            headers,
            length,
            chunked=chunked,
            keep_alive=not close,
            expects_continue=expects_continue,
        )

    # -- the body -------------------------------------------------------------------------------

    def next_body(self) -> bytes | _Marker:
        """The next piece of the body (all of it that is buffered), :data:`END`, or
        :data:`NEED_DATA`.

        :raises ProtocolError: a malformed chunked body, or the client closed the connection
            before the body's end
        """
        if self.state == "done":
            return END
        if self.state != "body":
            raise RuntimeError(f"next_body() with the reader in state {self.state!r}")
        if self._chunked:
            return self._next_chunked()
        remaining = self._remaining
        if not remaining:
            self.state = "done"
            self.expects_continue = False
            return END
        buffer = self._buffer
        if not buffer:
            if self._eof:
                raise self._fail("the client closed the connection in the middle of a body")
            return NEED_DATA
        self.expects_continue = False
        data = _take(buffer, remaining)
        self._remaining = remaining - len(data)
        return data

    def _next_chunked(self) -> bytes | _Marker:
        buffer = self._buffer
        while True:
            phase = self._chunk_phase
            if phase == "data":
                if not buffer:
                    break
                self.expects_continue = False
                data = _take(buffer, self._chunk_left)
                self._chunk_left -= len(data)
                if not self._chunk_left:
                    self._chunk_phase = "crlf"
                return data
            if phase == "crlf":
                if not b"\r\n".startswith(buffer[:2]):
                    raise self._fail("malformed chunked body: no CRLF after a chunk")
                if len(buffer) < 2:
                    break
                del buffer[:2]
                self._chunk_phase = "size"
                continue
            if phase == "size":
                line_end = _CHUNK_LINE_END.search(buffer)
                if line_end is None:
                    if len(buffer) > self.max_head_size:
                        raise self._fail("malformed chunked body: chunk header too long")
                    break
                header = _CHUNK_HEADER.fullmatch(buffer, 0, line_end.start())
                if header is None:
                    raise self._fail("malformed chunked body: bad chunk header")
                size = int(header[1], 16)
                del buffer[: line_end.end()]
                self.expects_continue = False
                if size:
                    self._chunk_left = size
                    self._chunk_phase = "data"
                else:
                    self._chunk_phase = "trailer"
                continue
            # the trailer section: header lines (dropped), then a blank line
            if buffer[:2] == b"\r\n" or buffer[:1] == b"\n":
                del buffer[: 2 if buffer[:1] == b"\r" else 1]
                self.state = "done"
                return END
            blank = _BLANK_LINE.search(buffer)
            if blank is None:
                if len(buffer) > self.max_head_size:
                    raise self._fail("malformed chunked body: trailer section too long", 431)
                break
            section = bytes(buffer[: blank.start()])
            del buffer[: blank.end()]
            for raw in _LINES.split(section.removesuffix(b"\r")):
                if _HEADER.fullmatch(raw) is None:
                    raise self._fail(f"malformed chunked body: illegal trailer line: {raw!r}")
            self.state = "done"
            return END
        if self._eof:
            raise self._fail("the client closed the connection in the middle of a body")
        return NEED_DATA

    def start_next_cycle(self) -> None:
        """After a request read whole (and answered): wait for the next one."""
        if self.state != "done":
            raise RuntimeError(f"start_next_cycle() with the reader in state {self.state!r}")
        self.state = "idle"
        self.expects_continue = False


def _take(buffer: bytearray, most: int) -> bytes:
    """Up to *most* bytes from the start of *buffer*, removed from it."""
    if len(buffer) <= most:
        data = bytes(buffer)
        buffer.clear()
    else:
        data = bytes(buffer[:most])
        del buffer[:most]
    return data


def _tokens(value: bytes) -> list[bytes]:
    """A comma-separated header value's tokens, lowercased."""
    return [token.strip() for token in value.lower().split(b",")]


# -- responses ------------------------------------------------------------------------------------

#: statuses whose responses never have a body
_NO_BODY_STATUSES = frozenset({204, 304})


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A status line and headers, ready to send.

    :raises ValueError: a header name that is not a token, or a value with a CR, LF or NUL (a
        response must never be split by what an app put into a header)
    """
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        if _NAME.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            raise ValueError(f"illegal response header {name!r}: {value!r}")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return b"".join(lines)


class BodyWriter:
    """How a response's body goes on the wire: framed by its Content-Length, chunked, or up to the
    end of the connection (an HTTP/1.0 client and no length), or none at all (HEAD, 204, 304).

    Built by :func:`frame_response`, which also completes the response's headers.
    """

    __slots__ = ("_left", "mode")

    def __init__(self, mode: Literal["length", "chunked", "close", "none"], length: int = 0):
        self.mode = mode
        self._left = length

    def data(self, body: bytes) -> list[bytes]:
        """The wire pieces for *body*.

        :raises RuntimeError: more bytes than the Content-Length said
        """
        if not body:
            return []
        mode = self.mode
        if mode == "length":
            if len(body) > self._left:
                raise RuntimeError("the response body is longer than its Content-Length")
            self._left -= len(body)
            return [body]
        if mode == "chunked":
            return [b"%x\r\n" % len(body), body, b"\r\n"]
        if mode == "close":
            return [body]
        raise RuntimeError("this response has no body")

    def end(self) -> bytes:
        """What ends the body on the wire.

        :raises RuntimeError: fewer bytes than the Content-Length said
        """
        if self.mode == "chunked":
            return b"0\r\n\r\n"
        if self.mode == "length" and self._left:
            raise RuntimeError("the response body is shorter than its Content-Length")
        return b""


def frame_response(
    request: Request, status: int, headers: list[tuple[bytes, bytes]], *, keep_alive: bool
) -> tuple[BodyWriter, bool]:
    """Decide how a final response to *request* is framed, adding to *headers* (lowercased names)
    what that takes (``transfer-encoding: chunked``, ``connection: close``), as h11 does. Returns
    the body's writer and whether the connection may serve another request after it;
    *keep_alive*: whether the server wants that.

    :raises ValueError: a malformed Content-Length among *headers*
    """
    keep_alive = keep_alive and request.keep_alive
    length: int | None = None
    chunked = False
    connection: list[bytes] | None = None
    for name, value in headers:
        if name == b"content-length":
            if _CONTENT_LENGTH.fullmatch(value) is None:
                raise ValueError(f"illegal response Content-Length: {value!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"connection":
            connection = _tokens(value)
            if b"close" in connection:
                keep_alive = False
    no_body = status in _NO_BODY_STATUSES or request.method == b"HEAD"
    if not chunked and length is None and status not in _NO_BODY_STATUSES:
        # no length given: chunked for HTTP/1.1; for HTTP/1.0, the body ends with the
        # connection (h11 frames a HEAD response as a GET's)
        if request.http_version == b"1.1":
            headers.append((b"transfer-encoding", b"chunked"))
            chunked = True
        elif request.method != b"HEAD":
            keep_alive = False
    if not keep_alive:
        tokens = [token for token in connection or () if token not in (b"keep-alive", b"close")]
        if connection is not None:
            headers[:] = [(name, value) for name, value in headers if name != b"connection"]
        headers.append((b"connection", b", ".join([*tokens, b"close"])))
    if no_body:
        return BodyWriter("none"), keep_alive
    if chunked:
        return BodyWriter("chunked"), keep_alive
    if length is not None:
        return BodyWriter("length", length), keep_alive
    return BodyWriter("close"), False
