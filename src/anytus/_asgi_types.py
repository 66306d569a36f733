"""Types for the ASGI messages the tus app uses (after hypercorn's ``typing.py``).

Two sets of types live here:

- the public, loose ones (:data:`Scope`, :data:`Message`, :data:`Receive`, :data:`Send`,
  :data:`ASGIApp`), re-exported by :mod:`anytus.asgi`: the signature of ``TusApp.__call__``. They
  are chosen so that every framework's own ASGI types are assignable to them: Starlette's and
  FastAPI's (``MutableMapping[str, Any]``) and the ``TypedDict`` unions of Litestar and of
  hypercorn (which Quart uses). A ``TypedDict`` is a ``Mapping[str, Any]`` but not a
  ``MutableMapping``, and a ``send`` that only accepts some ``TypedDict``s can only stand in for a
  ``send`` whose message type is ``Any``;
- the private ``TypedDict``s below, which the app narrows to with ``cast``: mypy then checks every
  key we read or send. Only what :mod:`anytus.asgi` touches is typed; the ``http`` scope keys a
  server may leave out are ``NotRequired``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    # only ever read by type checkers: annotations are strings here (PEP 563)
    import sys

    if sys.version_info >= (3, 11):
        from typing import NotRequired
    else:
        from typing_extensions import NotRequired

__all__ = (
    # public (re-exported by anytus.asgi): what TusApp.__call__ accepts
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    # private: what the app narrows them to
    "ASGIReceiveCallable",
    "ASGIReceiveEvent",
    "ASGISendCallable",
    "ASGISendEvent",
    "ASGIVersions",
    "HTTPDisconnectEvent",
    "HTTPRequestEvent",
    "HTTPResponseBodyEvent",
    "HTTPResponseStartEvent",
    "HTTPScope",
    "LifespanScope",
    "LifespanShutdownCompleteEvent",
    "LifespanShutdownEvent",
    "LifespanShutdownFailedEvent",
    "LifespanStartupCompleteEvent",
    "LifespanStartupEvent",
    "LifespanStartupFailedEvent",
    "ASGIScope",
    "BodySink",
    "ReadBodyInto",
    "WebsocketScope",
)

#: an ASGI connection scope, as any server or framework passes it
Scope = Mapping[str, Any]
#: an ASGI event, as ``receive`` returns it
Message = Mapping[str, Any]
#: the ASGI ``receive`` callable
Receive = Callable[[], Awaitable[Message]]
#: the ASGI ``send`` callable. Its argument is ``Any`` so that a framework's ``send`` typed with
#: ``TypedDict``s (Litestar, hypercorn and so Quart) fits as well as Starlette's
Send = Callable[[Any], Awaitable[None]]
#: an ASGI 3 application, such as :class:`anytus.asgi.TusApp`
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: where anytus's own server hands a request body, piece by piece, in a worker thread: the view
#: is valid during the call only (the ``anytus.body_into`` scope extension)
BodySink = Callable[[memoryview], None]
#: the extension's ``read_into(sink, limit, idle_timeout)``: returns the bytes passed to the
#: sink and how the body ended ("complete", "limit", "disconnected", "idle")
ReadBodyInto = Callable[[BodySink, "int | None", float], Awaitable[tuple[int, str]]]


class ASGIVersions(TypedDict, total=False):
    spec_version: str
    version: Literal["2.0", "3.0"]


class HTTPScope(TypedDict):
    type: Literal["http"]
    asgi: ASGIVersions
    http_version: str
    method: str
    scheme: NotRequired[str]
    path: str
    raw_path: NotRequired[bytes | None]
    query_string: bytes
    root_path: NotRequired[str]
    headers: Iterable[tuple[bytes, bytes]]
    client: NotRequired[tuple[str, int] | None]
    server: NotRequired[tuple[str, int | None] | None]


class WebsocketScope(TypedDict):
    """Only so that the app's signature accepts every scope a server may send."""

    type: Literal["websocket"]


class LifespanScope(TypedDict):
    type: Literal["lifespan"]
    asgi: ASGIVersions


ASGIScope = HTTPScope | WebsocketScope | LifespanScope


class HTTPRequestEvent(TypedDict):
    type: Literal["http.request"]
    body: bytes
    more_body: bool


class HTTPDisconnectEvent(TypedDict):
    type: Literal["http.disconnect"]


class HTTPResponseStartEvent(TypedDict):
    type: Literal["http.response.start"]
    status: int
    headers: Iterable[tuple[bytes, bytes]]


class HTTPResponseBodyEvent(TypedDict):
    type: Literal["http.response.body"]
    body: bytes
    more_body: bool


class LifespanStartupEvent(TypedDict):
    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    type: Literal["lifespan.shutdown"]


class LifespanStartupCompleteEvent(TypedDict):
    type: Literal["lifespan.startup.complete"]


class LifespanStartupFailedEvent(TypedDict):
    type: Literal["lifespan.startup.failed"]
    message: str


class LifespanShutdownCompleteEvent(TypedDict):
    type: Literal["lifespan.shutdown.complete"]


class LifespanShutdownFailedEvent(TypedDict):
    type: Literal["lifespan.shutdown.failed"]
    message: str


ASGIReceiveEvent = (
    HTTPRequestEvent | HTTPDisconnectEvent | LifespanStartupEvent | LifespanShutdownEvent
)
ASGISendEvent = (
    HTTPResponseStartEvent
    | HTTPResponseBodyEvent
    | LifespanStartupCompleteEvent
    | LifespanStartupFailedEvent
    | LifespanShutdownCompleteEvent
    | LifespanShutdownFailedEvent
)
ASGIReceiveCallable = Callable[[], Awaitable[ASGIReceiveEvent]]
ASGISendCallable = Callable[[ASGISendEvent], Awaitable[None]]
