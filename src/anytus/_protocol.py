"""The tus 1.0.0 protocol without I/O: parse and build header values.

Everything here is a pure, synchronous function over ``str`` header values (decoded as Latin-1, so
no byte is lost) or a frozen dataclass. The ASGI app (:mod:`anytus.asgi`) does the I/O and calls
these; their tests need no event loop (as h11 separates its state machine from the sockets).

Spec sentences are quoted from tus 1.0.0 (``protocol.md``) above the rule that enforces them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import email.utils
import re
import urllib.parse
from typing import TYPE_CHECKING, Final, Literal

from ._exceptions import (
    InvalidHeader,
    InvalidUploadId,
    RangeNotSatisfiable,
    UnsupportedChecksumAlgorithm,
    UnsupportedVersion,
)
from ._ids import validate_upload_id

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = (
    "CHECKSUM_ALGORITHMS",
    "MAX_INTEGER",
    "OFFSET_CONTENT_TYPE",
    "TUS_VERSION",
    "ByteRange",
    "Checksum",
    "Concat",
    "Forwarded",
    "Route",
    "build_url",
    "check_tus_resumable",
    "content_disposition",
    "content_type_for",
    "extract_upload_id",
    "format_http_date",
    "forwarded",
    "parse_checksum",
    "parse_concat",
    "parse_defer_length",
    "parse_forwarded",
    "parse_forwarded_prefix",
    "parse_integer",
    "parse_metadata",
    "parse_range",
    "route",
    "serialize_concat",
    "serialize_metadata",
    "split_mount",
    "valid_host",
)

#: the only protocol version we speak
TUS_VERSION: Final = "1.0.0"

#: "The Content-Type header MUST be set to application/offset+octet-stream" (PATCH)
OFFSET_CONTENT_TYPE: Final = "application/offset+octet-stream"

#: the largest Upload-Offset / Upload-Length we accept: a signed 64-bit integer, as tusd (int64)
MAX_INTEGER: Final = 2**63 - 1

#: checksum algorithms, with their digest sizes; "The Server MUST support at least the SHA1 checksum
#: algorithm identified by sha1"; crc32 digests are the 4 big-endian bytes of zlib's CRC-32
CHECKSUM_ALGORITHMS: Final[Mapping[str, int]] = {
    "sha1": 20,
    "md5": 16,
    "sha256": 32,
    "sha512": 64,
    "crc32": 4,
}

# ASCII digits only: int() would also take "+1", " 1", "1_000" and non-ASCII digits (Arabic-Indic...)
_DIGITS = re.compile(r"[0-9]{1,19}")
# RFC 4648 base64 with padding, nothing else (no whitespace, no URL-safe alphabet)
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
# a metadata key may be anything visible but the separators: it is echoed in HEAD responses, so no
# control character (header smuggling) and nothing the next parse would split on
_KEY_FORBIDDEN = re.compile(r"[\x00-\x20,\x7f]")
# RFC 9110 host = uri-host [ ":" port ]: reg-name / IPv4, or an IPv6 literal in brackets
_HOST = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
# RFC 6838 type/subtype (restricted-name), with optional parameters that carry nothing hostile
_MIME_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(?:\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(?:[A-Za-z0-9!#$&^_.+-]+|\"[^\"\\\x00-\x1f\x7f]*\"))*"
)
# tusd's mimeInlineBrowserWhitelist: types a browser may show inline without running anything
_INLINE_TYPES: Final = frozenset(
    {
        "text/plain",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/bmp",
        "image/webp",
        "audio/wave",
        "audio/wav",
        "audio/x-wav",
        "audio/x-pn-wav",
        "audio/webm",
        "video/webm",
        "audio/ogg",
        "video/ogg",
        "application/ogg",
    }
)


# -- versions -------------------------------------------------------------------------------------


def check_tus_resumable(value: str | None) -> None:
    """Check a request's ``Tus-Resumable`` header.

    :raises ~anytus.UnsupportedVersion: if it is missing or is not ``1.0.0``
    """
    # "The Tus-Resumable header MUST be included in every request and response except for OPTIONS
    # requests. [...] If the the version specified by the Client is not supported by the Server,
    # it MUST respond with the 412 Precondition Failed status and MUST include the Tus-Version
    # header into the response. In addition, the Server MUST NOT process the request."
    if value is None:
        raise UnsupportedVersion("missing Tus-Resumable header")
    if value.strip() != TUS_VERSION:
        raise UnsupportedVersion(f"unsupported Tus-Resumable version {value!r:.40}")


# -- integers -------------------------------------------------------------------------------------


def parse_integer(value: str, name: str) -> int:
    """Parse ``Upload-Offset`` or ``Upload-Length``: ASCII digits only, at most ``2**63 - 1``.

    :param name: the header's name, for the error message
    :raises ~anytus.InvalidHeader: on anything else (signs, spaces, other digits, huge numbers)
    """
    # "The Upload-Offset request and response header indicates a byte offset within a resource.
    # The value MUST be a non-negative integer." (Upload-Length likewise)
    if _DIGITS.fullmatch(value) is None:
        raise InvalidHeader(f"{name} must be a non-negative decimal integer, got {value!r:.40}")
    number = int(value)
    if number > MAX_INTEGER:
        raise InvalidHeader(f"{name} is too large: {value:.40}")
    return number


def parse_defer_length(value: str) -> bool:
    """Parse ``Upload-Defer-Length``; its only valid value is ``1``.

    :raises ~anytus.InvalidHeader: on any other value
    """
    # "The value of the Upload-Defer-Length header MUST be 1. If the header is present with any
    # other value, the Server MUST respond with 400 Bad Request."
    if value.strip() != "1":
        raise InvalidHeader(f"Upload-Defer-Length must be 1, got {value!r:.40}")
    return True


# -- metadata -------------------------------------------------------------------------------------


def parse_metadata(value: str, *, max_length: int | None = None) -> dict[str, str]:
    """Parse ``Upload-Metadata`` into a dict of text values.

    Values are decoded from base64, then from UTF-8 with ``surrogateescape``, so that bytes that are
    not UTF-8 survive and :func:`serialize_metadata` echoes every value byte for byte. Keys are
    handled the same way (the header's bytes are UTF-8-decoded, not Latin-1).

    :param value: the header, decoded as Latin-1
    :param max_length: refuse headers longer than this many bytes
    :raises ~anytus.InvalidHeader: on a malformed pair, invalid base64, a duplicate key, or a
        header longer than *max_length*
    """
    if max_length is not None and len(value) > max_length:
        raise InvalidHeader(f"Upload-Metadata is longer than {max_length} bytes")
    metadata: dict[str, str] = {}
    if not value.strip(" \t"):
        return metadata
    # "The Upload-Metadata request and response header MUST consist of one or more comma-separated
    # key-value pairs."
    for element in value.split(","):
        # optional whitespace around list elements, as for any HTTP list (RFC 9110 §5.6.1)
        pair = element.strip(" \t")
        # "The key and value MUST be separated by a space." "The value MAY be empty. In these
        # cases, the space, which would normally separate the key and the value, MAY be left out."
        raw_key, _, encoded = pair.partition(" ")
        # "The key MUST NOT contain spaces and commas and MUST NOT be empty."
        if not raw_key or _KEY_FORBIDDEN.search(raw_key):
            raise InvalidHeader(f"invalid Upload-Metadata key {raw_key!r:.40}")
        key = raw_key.encode("latin-1").decode("utf-8", "surrogateescape")
        # "The key SHOULD be ASCII encoded [...] All keys MUST be unique."
        if key in metadata:
            raise InvalidHeader(f"duplicate Upload-Metadata key {key!r:.40}")
        # "The value MUST be Base64 encoded."
        decoded = _strict_b64decode(encoded)
        if decoded is None:
            raise InvalidHeader(f"Upload-Metadata value of {key!r:.40} is not base64")
        metadata[key] = decoded.decode("utf-8", "surrogateescape")
    return metadata


def serialize_metadata(metadata: Mapping[str, str]) -> str:
    """Build ``Upload-Metadata`` from a metadata mapping (the inverse of :func:`parse_metadata`).

    An empty value is sent as the bare key: a trailing space would be stripped by HTTP parsers (and
    h11 refuses to send it). Keys that could not have come from a header (with spaces, commas,
    control characters, or lone surrogates that are not byte escapes), which only an application
    writing through the store directly can make, are left out rather than corrupt the header.
    """
    pairs = []
    for key, value in metadata.items():
        try:
            raw_key = key.encode("utf-8", "surrogateescape").decode("latin-1")
            raw_value = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            continue
        if not raw_key or _KEY_FORBIDDEN.search(raw_key):
            continue
        pairs.append(
            f"{raw_key} {base64.b64encode(raw_value).decode('ascii')}" if raw_value else raw_key
        )
    return ",".join(pairs)


# -- routing and IDs ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """Where a request path points: the creation URL or one upload."""

    #: ``"collection"`` for the creation URL (``base_path``), ``"upload"`` for ``base_path + id``
    kind: Literal["collection", "upload"]
    #: the validated upload ID, for ``"upload"``
    upload_id: str = ""


def route(raw_path: str, base_path: str) -> Route | None:
    """Find what a request's path (still percent-encoded) names, or ``None`` if nothing of ours.

    :param raw_path: the path as sent, without the query (ASGI ``raw_path``, Latin-1-decoded)
    :param base_path: where uploads live, with a trailing slash (``/files/``)
    :raises ~anytus.InvalidUploadId: if the path is under *base_path* but does not name a valid
        ID (``%2F``, ``..``, NUL, non-ASCII, a trailing slash...): to a client that is a 404
    """
    if raw_path in (base_path, base_path.rstrip("/")):
        return Route(kind="collection")
    if not raw_path.startswith(base_path):
        return None
    return Route(kind="upload", upload_id=extract_upload_id(raw_path[len(base_path) :]))


def extract_upload_id(encoded: str) -> str:
    """Percent-decode one path segment and validate it as an upload ID.

    The segment is decoded *before* validation, so ``%2F``, ``%2E%2E`` or ``%00`` can never slip
    through as an encoded separator.

    :raises ~anytus.InvalidUploadId: unless the decoded text is a valid ID
    """
    try:
        decoded = urllib.parse.unquote_to_bytes(encoded).decode("ascii")
    except UnicodeDecodeError:
        raise InvalidUploadId(f"invalid upload ID: {encoded!r:.80}") from None
    return validate_upload_id(decoded)


def valid_host(host: str) -> bool:
    """Whether a ``Host`` header is safe to build a ``Location`` URL from."""
    return _HOST.fullmatch(host) is not None


def build_url(scheme: str, host: str | None, base_path: str, upload_id: str) -> str:
    """Build an upload's URL: absolute when *host* is known, else relative to the server.

    :param host: ``host[:port]`` as in a ``Host`` header, already checked with :func:`valid_host`
    """
    # "The Server MUST respond with the 201 Created status. The Location header MUST be set to the
    # URL of the created upload. This URL MAY be absolute or relative."
    path = base_path + upload_id
    return f"{scheme}://{host}{path}" if host else path


# -- behind a reverse proxy, mounted in an application --------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Forwarded:
    """What a reverse proxy says of the request the client made: each part ``None`` when no
    header says it validly."""

    #: ``host[:port]`` the client asked for (checked with :func:`valid_host`)
    host: str | None = None
    #: ``"http"`` or ``"https"``
    proto: str | None = None
    #: the path the proxy removed before passing the request on (``/api``), ``""`` for none
    prefix: str | None = None


# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string (RFC 9110 §5.6)
_FORWARDED_PAIR = re.compile(
    r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)="
    r"([!#$%&'*+.^_`|~0-9A-Za-z-]+|\"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e])*\")[ \t]*"
)
_QUOTED_PAIR = re.compile(r"\\(.)")
# RFC 3986 path-abempty: segments of pchar (pct-encoded checked), at least one
_PREFIX = re.compile(r"(?:/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})+)+")
#: the longest host or prefix taken from a proxy's header
_MAX_FORWARDED = 1024


def parse_forwarded(value: str) -> Forwarded:
    """Read ``host`` and ``proto`` from the first element of an RFC 7239 ``Forwarded`` header
    (the one the proxy nearest the client added).

    Malformed syntax (a pair that is not ``token=token`` or ``token="quoted"``, a parameter
    twice) makes the whole header say nothing, and so does an invalid value for its part: the
    caller falls back to what it knew without the header (as tusd, which drops a ``proto`` that
    is not ``http`` or ``https``).
    """
    pairs: dict[str, str] = {}
    position = 0
    # a list may start with empty elements (RFC 9110 §5.6.1)
    while position < len(value) and value[position] in " \t,":
        position += 1
    while position < len(value) and value[position] != ",":
        if value[position] in "; \t":  # an empty pair: forwarded-element = [pair] *(";" [pair])
            position += 1
            continue
        match = _FORWARDED_PAIR.match(value, position)
        if match is None:
            return Forwarded()
        name, raw = match.group(1).lower(), match.group(2)
        if name in pairs:
            # "Each parameter MUST NOT occur more than once per forwarded-element."
            return Forwarded()
        pairs[name] = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
        if position < len(value) and value[position] not in ";,":
            return Forwarded()
    return Forwarded(
        host=_forwarded_host(pairs.get("host")), proto=_forwarded_proto(pairs.get("proto"))
    )


def parse_forwarded_prefix(value: str) -> str | None:
    """Check an ``X-Forwarded-Prefix`` path: ``""`` for none (empty, ``/``), the path without
    its trailing slash, or ``None`` if it is not a plain absolute path (dot segments, empty
    segments, characters a URL path cannot hold unencoded, too long)."""
    prefix = value.strip(" \t").rstrip("/")
    if not prefix:
        return ""
    if len(prefix) > _MAX_FORWARDED or _PREFIX.fullmatch(prefix) is None:
        return None
    # no dot segments, encoded or not ("%2e%2E" too): a client would resolve them away
    segments = urllib.parse.unquote(prefix).split("/")[1:]
    if any(segment in (".", "..") for segment in segments) or "" in segments:
        return None
    return prefix


def forwarded(headers: Mapping[str, str]) -> Forwarded:
    """What the proxy headers of a request say: ``Forwarded`` (RFC 7239, first element) first,
    then ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` (first of a list) for what it leaves
    unsaid, as tusd's ``-behind-proxy``; and ``X-Forwarded-Prefix``. A part no header says
    validly is ``None``.

    :param headers: normalized request headers (lower-case names, repeats joined with ``", "``)
    """
    host = proto = prefix = None
    value = headers.get("forwarded")
    if value is not None:
        standard = parse_forwarded(value)
        host, proto = standard.host, standard.proto
    if host is None and (value := headers.get("x-forwarded-host")) is not None:
        host = _forwarded_host(_first(value))
    if proto is None and (value := headers.get("x-forwarded-proto")) is not None:
        proto = _forwarded_proto(_first(value))
    if (value := headers.get("x-forwarded-prefix")) is not None:
        prefix = parse_forwarded_prefix(_first(value))
    return Forwarded(host=host, proto=proto, prefix=prefix)


def _first(value: str) -> str:
    return value.split(",", 1)[0].strip(" \t")


def _forwarded_host(value: str | None) -> str | None:
    if value is None or len(value) > _MAX_FORWARDED or not valid_host(value):
        return None
    return value


def _forwarded_proto(value: str | None) -> str | None:
    proto = None if value is None else value.lower()
    return proto if proto in ("http", "https") else None


def split_mount(root_path: str, path: str, raw_path: str | None) -> tuple[str, str]:
    """Split a request's path into the prefix the app is mounted under and the rest.

    Returns ``(mount, rest)``, both percent-encoded as on the wire: *mount* without a trailing
    slash (``""`` when not mounted), ``mount + rest`` the whole path the client sent to the server
    (behind any proxy that removed a prefix).

    :param root_path: ASGI ``root_path``: where the app is mounted (decoded)
    :param path: ASGI ``path`` (decoded): whole (it includes *root_path*, as the ASGI spec says
        and Starlette and uvicorn do), or without *root_path* (hypercorn's ``root_path``
        setting), or cut down to what follows a mount that left *root_path* alone (Litestar)
    :param raw_path: ASGI ``raw_path`` (Latin-1-decoded, without the query), if the server gave
        it: the bytes sent to the server, with or without *root_path*
    """
    root = root_path.rstrip("/")
    if raw_path is None:
        if root and _under(path, root):
            path = path[len(root) :]
        return _quote(root), _quote(path)
    decoded = urllib.parse.unquote(raw_path)
    missing = ""
    if not _under(decoded, root):
        # raw_path lacks root_path, or its start: the server was told root_path for a prefix a
        # proxy removed (and a framework may have added its mount to root_path after it)
        slashes = [index for index, char in enumerate(root) if char == "/"]
        cut = next((i for i in slashes if _under(decoded, root[i:])), len(root))
        missing = root[:cut]
        raw_path, decoded = _quote(missing) + raw_path, missing + decoded
    mount = root
    if path not in (decoded, decoded[len(missing) :]):
        # a framework cut the mount off path but left root_path (and raw_path) alone: what it
        # cut is the mount (Litestar also appends a slash to what is left)
        tail = path.rstrip("/")
        whole = decoded.rstrip("/")
        head = whole[: len(whole) - len(tail)]
        if whole.endswith(tail) and head.startswith("/") and _under(head, root):
            mount = head
    if not mount:
        return "", raw_path
    # the mount as sent: as many "/"-separated pieces of raw_path as the mount has (an encoded
    # "%2F" stays one piece)
    encoded = "/".join(raw_path.split("/")[: mount.count("/") + 1])
    if urllib.parse.unquote(encoded) == mount:
        return encoded, raw_path[len(encoded) :]
    return _quote(mount), _quote(decoded[len(mount) :])


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or not prefix


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/")


# -- concatenation --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Concat:
    """A parsed ``Upload-Concat`` header."""

    #: ``"partial"`` or ``"final"``
    kind: Literal["partial", "final"]
    #: for ``"final"``: the IDs of the partial uploads, in order (repeats allowed)
    partial_ids: tuple[str, ...] = ()


def parse_concat(value: str, base_path: str, *, prefix: str = "") -> Concat:
    """Parse ``Upload-Concat``: ``partial``, or ``final;`` followed by space-separated upload URLs.

    Each URL may be absolute (any host: the path decides) or relative; relative references are
    resolved against *base_path* as a browser would (RFC 3986 §5.2), so ``/files/abc`` and ``abc``
    both name upload ``abc``. The resolved path must be *base_path* plus a valid ID, or
    *prefix* + *base_path* plus one: the URLs a proxy that removes *prefix* gave the client.

    :raises ~anytus.InvalidHeader: if the value or any URL is malformed, or a URL is not one of
        our uploads
    """
    # "In order to create a partial upload the Client MUST add the Upload-Concat header to the
    # upload creation request. The value MUST be partial."
    stripped = value.strip(" \t")
    if stripped == "partial":
        return Concat(kind="partial")
    # "the Client MUST send the Upload-Concat header [...] The value MUST be final followed by a
    # semicolon and a space-separated list of the partial upload URLs that need to be
    # concatenated. The partial uploads MUST be concatenated as per the order specified in the
    # list."
    if not stripped.startswith("final;"):
        raise InvalidHeader(f"invalid Upload-Concat: {value!r:.80}")
    urls = stripped[len("final;") :].split()
    if not urls:
        raise InvalidHeader("Upload-Concat: final lists no partial uploads")
    return Concat(
        kind="final", partial_ids=tuple(_id_from_url(url, base_path, prefix) for url in urls)
    )


def _id_from_url(url: str, base_path: str, prefix: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if (parts.scheme or parts.netloc) and (
        parts.scheme not in ("http", "https") or not parts.netloc
    ):
        raise InvalidHeader(f"invalid partial upload URL {url!r:.80}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise InvalidHeader(f"invalid partial upload URL {url!r:.80}")
    # resolve the path (only: the host names this server or another, it does not matter) the way
    # RFC 3986 does, which also removes dot segments: "../x" cannot escape base_path unnoticed
    path = urllib.parse.urljoin(prefix + base_path, parts.path)
    if prefix and path.startswith(prefix + base_path):
        path = path[len(prefix) :]
    if not path.startswith(base_path) or len(path) == len(base_path):
        raise InvalidHeader(f"partial upload URL {url!r:.80} is not an upload of this server")
    try:
        return extract_upload_id(path[len(base_path) :])
    except InvalidUploadId:
        raise InvalidHeader(f"invalid upload ID in partial upload URL {url!r:.80}") from None


def serialize_concat(
    *, is_partial: bool, is_final: bool, partial_urls: Sequence[str] = ()
) -> str | None:
    """Build the ``Upload-Concat`` response header, or ``None`` for a plain upload."""
    # "The Upload-Concat header MUST be present in the HEAD response for partial and final
    # uploads" (the response to a final upload lists absolute URLs, as tusd does)
    if is_final:
        return "final;" + " ".join(partial_urls)
    if is_partial:
        return "partial"
    return None


# -- checksum -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Checksum:
    """A parsed ``Upload-Checksum`` header."""

    #: one of :data:`CHECKSUM_ALGORITHMS`
    algorithm: str
    #: the expected digest, decoded from base64
    digest: bytes


def parse_checksum(value: str) -> Checksum:
    """Parse ``Upload-Checksum: <algorithm> <base64 digest>``.

    :raises ~anytus.UnsupportedChecksumAlgorithm: if the algorithm is not one we support
    :raises ~anytus.InvalidHeader: if the value is malformed or the digest has the wrong size
    """
    # "The Upload-Checksum header MUST consist of the name of the used checksum algorithm and the
    # Base64 encoded checksum separated by a space."
    algorithm, sep, encoded = value.strip(" \t").partition(" ")
    if not sep or not algorithm or not encoded:
        raise InvalidHeader(f"invalid Upload-Checksum: {value!r:.80}")
    # "If the hash algorithm is not supported by the server, it MUST respond with the 400 Bad
    # Request status." "The name of the algorithm MUST only contain ASCII lowercase characters"
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise UnsupportedChecksumAlgorithm(f"unsupported checksum algorithm {algorithm!r:.40}")
    digest = _strict_b64decode(encoded)
    if digest is None:
        raise InvalidHeader("Upload-Checksum digest is not base64")
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]:
        raise InvalidHeader(
            f"a {algorithm} digest has {CHECKSUM_ALGORITHMS[algorithm]} bytes, got {len(digest)}"
        )
    return Checksum(algorithm=algorithm, digest=digest)


def _strict_b64decode(text: str) -> bytes | None:
    """Decode standard, padded base64 as Go's ``base64.StdEncoding`` does (tusd), or ``None``.

    Python's decoder, even with ``validate=True``, takes excess padding such as ``YWJj=``.
    """
    if _BASE64.fullmatch(text) is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern rules these out
        return None


# -- dates ----------------------------------------------------------------------------------------


def format_http_date(timestamp: float) -> str:
    """Format a POSIX time as an RFC 9110 HTTP date (``Upload-Expires``, ``Last-Modified``)."""
    # "The value of the Upload-Expires header MUST be in RFC 9110 datetime format."
    return email.utils.formatdate(timestamp, usegmt=True)


# -- downloads ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ByteRange:
    """A satisfiable byte range: ``[start, end)`` of a representation of *size* bytes."""

    start: int
    end: int
    size: int

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` header for a 206 response."""
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


def parse_range(value: str, size: int) -> ByteRange | None:
    """Interpret a ``Range`` header against a representation of *size* bytes.

    Only a single byte range is honoured (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``). A header
    with another unit, a syntax error, or several ranges is ignored (``None``: send the whole
    body with 200), which RFC 9110 §14.2 allows: "A server MAY ignore the Range header field."
    Serving multipart/byteranges is not worth it for uploads.

    :raises ~anytus.RangeNotSatisfiable: if the single range lies wholly outside the
        representation (416 with ``Content-Range: bytes */size``)
    """
    unit, sep, spec = value.partition("=")
    # "An origin server MUST ignore a Range header field that contains a range unit it does not
    # understand." (RFC 9110 §14.2)
    if not sep or unit.strip(" \t").lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip(" \t").partition("-")
    if not dash or (first and _DIGITS.fullmatch(first) is None):
        return None
    if (last and _DIGITS.fullmatch(last) is None) or (not first and not last):
        return None
    if not first:
        # "suffix-range = "-" suffix-length": the last n bytes; "If the selected representation
        # is shorter than the specified suffix-length, the entire representation is used."
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(start=max(size - length, 0), end=size, size=size)
    start = int(first)
    if last and int(last) < start:
        # "A range-spec is invalid if [...] the last-pos value is less than the first-pos value"
        return None
    end = size if not last else int(last) + 1
    # "For byte ranges, failing to overlap the current extent means that the first-pos of all of
    # the range-spec values were greater than or equal to the current length"
    if start >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(start=start, end=min(end, size), size=size)


def content_type_for(filetype: str | None) -> tuple[str, bool]:
    """Choose a download's ``Content-Type`` from the ``filetype`` metadata, and whether it may be
    shown inline (tusd's allowlist); anything that is not a well-formed media type is served as
    ``application/octet-stream``.
    """
    if filetype is None or _MIME_TYPE.fullmatch(filetype) is None:
        return "application/octet-stream", False
    essence = filetype.split(";", 1)[0].strip().lower()
    return filetype, essence in _INLINE_TYPES


def content_disposition(filename: str | None, *, inline: bool) -> str:
    """Build ``Content-Disposition`` for a download (RFC 6266).

    The name is reduced to its last path component. ``filename=`` carries an ASCII fallback with
    every risky character replaced by ``_``; ``filename*=`` carries the exact name, UTF-8 and
    percent-encoded (RFC 8187), which current browsers prefer.
    """
    disposition = "inline" if inline else "attachment"
    if not filename:
        return disposition
    name = re.split(r"[/\\]", filename)[-1]
    if name in ("", ".", ".."):
        return disposition
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\%' else "_" for c in name)
    encoded = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
