"""One ASGI request as :class:`~anytus.asgi.TusApp` handles it: the ASGI callables, where the
request body stands, and the three ways a body is read — whole, when it is small
(:meth:`Exchange.read_small`); streamed to the store message by message (:class:`BodyReader`); or
taken from the socket by a worker thread, which only anytus's own server offers
(:meth:`Exchange.body_reader_into`).
"""

from __future__ import annotations

import dataclasses
import enum

# at run time too: HookRequest is public, and its annotations must resolve (typing.get_type_hints)
from collections.abc import Mapping  # noqa: TC003
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import anyio

from ._exceptions import RequestBodyTimeout, ServerShuttingDown, TusError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from . import _core as core
    from ._asgi_types import (
        ASGIReceiveCallable,
        ASGIReceiveEvent,
        ASGISendCallable,
        BodySink,
        HTTPScope,
        ReadBodyInto,
    )

__all__ = (
    "RAW_BODY",
    "SMALL_BODY",
    "Body",
    "BodyReader",
    "Exchange",
    "HeaderBuilder",
    "HookRequest",
    "hashing",
)

#: a body at most this long (by its ``Content-Length``) is read whole before the upload is
#: touched, and written with the lock, load and unlock in one worker-thread hop
SMALL_BODY: Final = 64 * 1024


class HeaderBuilder(Protocol):
    def response_headers(
        self, request: core.Request, response: core.Response, extra: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HookRequest:
    """The HTTP request an ``on_create`` hook is called for."""

    #: the method (after ``X-HTTP-Method-Override``), upper case
    method: str
    #: the request path, percent-decoded
    path: str
    #: request headers: lower-case names, Latin-1-decoded values, repeats joined with ``", "``
    headers: Mapping[str, str]
    #: the client's address, if the server knows it
    client: tuple[str, int] | None
    #: ``"http"`` or ``"https"``
    scheme: str


class Body(enum.Enum):
    """Where the request body stands."""

    #: bytes may still arrive
    UNREAD = enum.auto()
    #: the last message arrived (or there was no body)
    DONE = enum.auto()
    #: the client stalled or was interrupted: the rest is not waited for
    ABANDONED = enum.auto()
    #: the request side ended early (``http.disconnect``): nothing more arrives; the answer is
    #: still sent, for a client that only half-closed
    DISCONNECTED = enum.auto()


class Exchange:
    """One HTTP request and its answer: the ASGI callables and the connection's state."""

    __slots__ = (
        "body",
        "builder",
        "extra_headers",
        "planner",
        "receive",
        "request",
        "response_started",
        "scope",
        "send",
    )

    def __init__(
        self,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
        request: core.Request,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.request = request
        self.body = Body.UNREAD
        self.response_started = False
        #: headers every response to this request carries, errors included (``Location``)
        self.extra_headers: list[tuple[str, str]] = []
        #: builds the response headers: the tus core, or the draft's for a draft request
        self.builder: HeaderBuilder | None = None
        #: the append rules (``TusCore.plan_append`` unless the draft's)
        self.planner: Callable[..., core.AppendPlan] | None = None

    @property
    def scheme(self) -> str:
        return self.scope.get("scheme") or "http"

    def body_reader_into(self) -> ReadBodyInto | None:
        """The server's ``read_into`` (anytus's own server, see ``_httpserver.RAW_BODY``) if it
        can take this request's body now, else None."""
        extensions = cast("dict[str, Any]", self.scope.get("extensions") or {})
        extension = extensions.get(RAW_BODY)
        if not extension or self.body is not Body.UNREAD or not extension["available"]():
            return None
        read_into: ReadBodyInto = extension["read_into"]
        return read_into

    def after_body_into(
        self, outcome: str, exceeded: TusError, idle_timeout: float
    ) -> tuple[TusError | None, bool]:
        """The body's state after ``read_into`` ended with *outcome*: the error to answer with,
        if any, and whether the whole body arrived."""
        if outcome == "complete":
            self.body = Body.DONE
            return None, True
        if outcome == "disconnected":
            self.body = Body.DISCONNECTED
            return None, False
        # the rest of the body was not read, and cannot be any more
        self.body = Body.ABANDONED
        if outcome == "idle":
            return RequestBodyTimeout(f"no data received for {idle_timeout:g} seconds"), False
        if outcome == "limit":
            return exceeded, False
        return None, False  # the store failed, or a release request stopped the transfer

    @property
    def body_pending(self) -> bool:
        """Whether the headers announced a body that has not been read to its end."""
        return self.body is Body.UNREAD and self.request.has_body

    def hook_request(self) -> HookRequest:
        client = self.scope.get("client")
        return HookRequest(
            method=self.request.method,
            path=self.scope["path"],
            headers=dict(self.request.headers),
            client=(str(client[0]), int(client[1])) if client else None,
            scheme=self.scheme,
        )

    async def read_small(
        self, idle_timeout: float, interrupt: anyio.CancelScope
    ) -> tuple[bytes, TusError | None]:
        """Read a small body whole (at most :data:`SMALL_BODY` bytes are kept); stop early on a
        disconnect, once the client has been idle for *idle_timeout*, or when *interrupt* is
        cancelled (a shutdown): then return what came, to be stored, and the error to answer
        with."""
        chunks: list[bytes] = []
        size = 0
        with interrupt:
            while self.body is Body.UNREAD:
                message: ASGIReceiveEvent | None = None
                with anyio.move_on_after(idle_timeout):
                    message = await self.receive()
                if message is None:
                    self.body = Body.ABANDONED
                    timeout = RequestBodyTimeout(f"no data received for {idle_timeout:g} seconds")
                    return b"".join(chunks), timeout
                if message["type"] != "http.request":
                    self.body = Body.DISCONNECTED
                    break
                body = message.get("body", b"")
                if body and size < SMALL_BODY:
                    chunks.append(body[: SMALL_BODY - size])
                    size += len(chunks[-1])
                if not message.get("more_body", False):
                    self.body = Body.DONE
        if interrupt.cancelled_caught and self.body is Body.UNREAD:
            self.body = Body.ABANDONED
            return b"".join(chunks), ServerShuttingDown()
        return b"".join(chunks), None


class BodyReader:
    """The request body as an async iterator of ``bytes`` for ``write_chunk``.

    As tusd's ``bodyReader``: the store never sees a body error. A disconnect or a body longer
    than *limit* end the iteration cleanly after the last byte that may be stored, and the reason
    is kept in :attr:`error` / the exchange's body state for the handler to act on once the bytes
    are safely in the store. A stalled body is ended by :meth:`watch_idle`, which runs beside the
    write and cancels it (the store keeps what it took, as for a release request).

    A class, not an async generator: the store may stop iterating early, and an async generator
    would need ``aclosing()`` discipline (trio's async-generator notes).
    """

    __slots__ = (
        "_exceeded",
        "_exchange",
        "_hasher",
        "_limit",
        "_started",
        "complete",
        "error",
        "last_activity",
    )

    def __init__(
        self,
        exchange: Exchange,
        *,
        limit: int | None,
        exceeded: TusError,
        hasher: core.Hasher | None,
    ) -> None:
        self._exchange = exchange
        self._limit = limit
        self._exceeded = exceeded
        self._hasher = hasher
        self._started = False
        #: why the body ended early (timeout, too long), if it did
        self.error: TusError | None = None
        #: the body's last byte has arrived
        self.complete = exchange.body is Body.DONE
        #: when the last message arrived (``anyio.current_time()``)
        self.last_activity = anyio.current_time()

    def __aiter__(self) -> BodyReader:
        return self

    async def __anext__(self) -> bytes:
        exchange = self._exchange
        if not self._started:
            # the client is idle only from when the body is asked for: the time the store took
            # to get ready (opening the file) is not the client's
            self._started = True
            self.last_activity = anyio.current_time()
        while exchange.body is Body.UNREAD and self.error is None:
            # No fail_after() here: one per message (64 KiB from some servers) was 12-16% of the
            # CPU time of a large PATCH. Stamping the time is all the idle watchdog needs.
            message = await exchange.receive()
            self.last_activity = anyio.current_time()
            if message["type"] != "http.request":
                # "http.disconnect": the body ends here; what came before is kept (tus: "The
                # Server SHOULD always attempt to store as much of the received data as possible")
                exchange.body = Body.DISCONNECTED
                break
            body = message.get("body", b"")
            if not message.get("more_body", False):
                exchange.body = Body.DONE
                self.complete = True
            if self._limit is not None:
                if len(body) > self._limit:
                    # store exactly what fits, then refuse the rest
                    body = body[: self._limit]
                    self.error = self._exceeded
                    self.complete = False
                self._limit -= len(body)
            if body:
                if self._hasher is not None:
                    self._hasher.update(body)
                return body
        raise StopAsyncIteration

    async def watch_idle(self, timeout: float, body_scope: anyio.CancelScope) -> None:
        """Cancel *body_scope* once no message has arrived for *timeout* seconds."""
        while True:
            idle = anyio.current_time() - self.last_activity
            if idle >= timeout:
                self._exchange.body = Body.ABANDONED
                self.error = RequestBodyTimeout(f"no data received for {timeout:g} seconds")
                body_scope.cancel()
                return
            await anyio.sleep(timeout - idle)


#: the scope extension of anytus's own server (``_httpserver.RAW_BODY``)
RAW_BODY = "anytus.body_into"


def hashing(sink: BodySink, hasher: core.Hasher | None) -> BodySink:
    """*sink*, feeding *hasher* first (in the worker thread)."""
    if hasher is None:
        return sink

    def hash_and_store(view: memoryview) -> None:
        hasher.update(view)
        sink(view)

    return hash_and_store
