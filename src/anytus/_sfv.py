"""A small, strict parser of HTTP Structured Field *Items* (RFC 9651 §4.2.3), and the
serialisation of a Dictionary of Integers (§4.1.2).

The resumable-upload draft parses ``Upload-Offset``, ``Upload-Length``, ``Upload-Complete`` and
``Upload-Draft-Interop-Version`` as Items, and sends ``Upload-Limit`` as a Dictionary of Integers.
That is all it needs, so anytus keeps its core dependency-free (anyio) with these ~150 lines
instead of a runtime dependency; ``tests/test_sfv.py`` checks them against ``http-sf`` (mnot's
RFC 9651 implementation) on the RFC's own edge cases.

Every bare-item type is parsed (a parameter may carry any), so a well-formed ``?1;a="x"`` is a
Boolean and ``?1,?0`` (a repeated field, joined) is not an Item at all.
"""

from __future__ import annotations

import base64
import binascii
import string
from decimal import Decimal
from typing import Final

__all__ = (
    "ParseError",
    "Token",
    "dict_ints",
    "item_bool",
    "item_int",
    "parse_dict",
    "parse_item",
    "serialize_int_dict",
)

_DIGITS: Final = frozenset(string.digits)
_LCALPHA: Final = frozenset(string.ascii_lowercase)
_ALPHA: Final = frozenset(string.ascii_letters)
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_TOKEN_CHARS: Final = _TCHAR | frozenset(":/")
_KEY_CHARS: Final = _LCALPHA | _DIGITS | frozenset("_-.*")
_BASE64: Final = frozenset(string.ascii_letters + string.digits + "+/=")
_MAX_INT: Final = 999_999_999_999_999

BareItem = int | Decimal | str | bytes | bool


class Token(str):
    """An sf-token (distinct from an sf-string)."""

    __slots__ = ()


class ParseError(ValueError):
    """The text is not a valid Structured Field of the expected kind."""


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1
        return char

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    # RFC 9651 §4.2.3.1
    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or char in _DIGITS:
            return self.number()
        if char == '"':
            return self.string()
        if char == "*" or char in _ALPHA:
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        if char == "@":
            self.pos += 1
            value = self.number()
            if not isinstance(value, int):
                raise ParseError("a Date is an Integer")
            return value
        if char == "%":
            return self.display_string()
        raise ParseError(f"unexpected {char!r} at {self.pos}")

    # §4.2.3.2
    def parameters(self) -> dict[str, BareItem]:
        params: dict[str, BareItem] = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    # §4.2.3.3
    def key(self) -> str:
        if not (self.peek() in _LCALPHA or self.peek() == "*"):
            raise ParseError("a key starts with a lower-case letter or '*'")
        start = self.pos
        while self.peek() and self.peek() in _KEY_CHARS:
            self.pos += 1
        return self.text[start : self.pos]

    # §4.2.4
    def number(self) -> int | Decimal:
        sign = 1
        if self.peek() == "-":
            self.pos += 1
            sign = -1
        if not self.peek() or self.peek() not in _DIGITS:
            raise ParseError("a number needs a digit")
        start = self.pos
        is_decimal = False
        while True:
            char = self.peek()
            if char and char in _DIGITS:
                self.pos += 1
            elif char == "." and not is_decimal:
                if self.pos - start > 12:
                    raise ParseError("too many integer digits in a Decimal")
                is_decimal = True
                self.pos += 1
            else:
                break
            if not is_decimal and self.pos - start > 15:
                raise ParseError("an Integer has at most 15 digits")
            if is_decimal and self.pos - start > 16:
                raise ParseError("a Decimal has at most 16 characters")
        number = self.text[start : self.pos]
        if not is_decimal:
            return sign * int(number)
        if number.endswith("."):
            raise ParseError("a Decimal ends with a digit")
        if len(number.split(".", 1)[1]) > 3:
            raise ParseError("a Decimal has at most 3 fraction digits")
        return sign * Decimal(number)

    # §4.2.5
    def string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.take()
            if char == "":
                raise ParseError("unterminated String")
            if char == "\\":
                escaped = self.take()
                if escaped not in ('"', "\\"):
                    raise ParseError("bad escape in a String")
                out.append(escaped)
            elif char == '"':
                return "".join(out)
            elif not (0x20 <= ord(char) <= 0x7E):
                raise ParseError("a String is printable ASCII")
            else:
                out.append(char)

    # §4.2.6
    def token(self) -> Token:
        start = self.pos
        self.pos += 1
        while self.peek() and self.peek() in _TOKEN_CHARS:
            self.pos += 1
        return Token(self.text[start : self.pos])

    # §4.2.7
    def byte_sequence(self) -> bytes:
        self.pos += 1
        end = self.text.find(":", self.pos)
        if end < 0:
            raise ParseError("unterminated Byte Sequence")
        content = self.text[self.pos : end]
        self.pos = end + 1
        if not set(content) <= _BASE64:
            raise ParseError("bad base64 in a Byte Sequence")
        try:
            return base64.b64decode(content + "=" * (-len(content) % 4), validate=True)
        except binascii.Error as exc:
            raise ParseError("bad base64 in a Byte Sequence") from exc

    # §4.2.8
    def boolean(self) -> bool:
        self.pos += 1
        char = self.take()
        if char == "1":
            return True
        if char == "0":
            return False
        raise ParseError("a Boolean is ?0 or ?1")

    # §4.2.10
    def display_string(self) -> str:
        if self.text[self.pos : self.pos + 2] != '%"':
            raise ParseError('a Display String starts with %"')
        self.pos += 2
        out = bytearray()
        while True:
            char = self.take()
            if char == "":
                raise ParseError("unterminated Display String")
            if not (0x20 <= ord(char) <= 0x7E):
                raise ParseError("a Display String is printable ASCII")
            if char == "%":
                octet = self.text[self.pos : self.pos + 2]
                if len(octet) != 2 or not set(octet) <= set("0123456789abcdef"):
                    raise ParseError("bad percent-encoding in a Display String")
                out.append(int(octet, 16))
                self.pos += 2
            elif char == '"':
                try:
                    return out.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ParseError("a Display String is UTF-8") from exc
            else:
                out.append(ord(char))


def parse_item(text: str) -> tuple[BareItem, dict[str, BareItem]]:
    """Parse a whole field value as an Item (RFC 9651 §4.2, ``sf-item``): its bare item and its
    parameters.

    :raises ParseError: if it is not exactly one well-formed Item
    """
    if not text.isascii():
        raise ParseError("a Structured Field is ASCII")
    parser = _Parser(text)
    parser.skip_sp()
    item = parser.bare_item()
    params = parser.parameters()
    parser.skip_sp()
    if parser.pos != len(text):
        raise ParseError(f"trailing characters at {parser.pos}")
    return item, params


def parse_dict(text: str) -> dict[str, BareItem]:
    """Parse a whole field value as a Dictionary (RFC 9651 §4.2.2): its members' bare items
    (a member without a value is ``True``; parameters and Inner Lists are not kept: an Inner List
    is refused, as no field read here has one).

    :raises ParseError: if it is not a well-formed Dictionary of Items
    """
    if not text.isascii():
        raise ParseError("a Structured Field is ASCII")
    parser = _Parser(text)
    parser.skip_sp()
    members: dict[str, BareItem] = {}
    while parser.pos < len(text):
        key = parser.key()
        value: BareItem = True
        if parser.peek() == "=":
            parser.pos += 1
            value = parser.bare_item()
        parser.parameters()
        members[key] = value
        while parser.peek() in (" ", "\t") and parser.peek():
            parser.pos += 1
        if parser.pos == len(text):
            break
        if parser.take() != ",":
            raise ParseError(f"expected ',' at {parser.pos - 1}")
        while parser.peek() in (" ", "\t") and parser.peek():
            parser.pos += 1
        if parser.pos == len(text):
            raise ParseError("a Dictionary does not end with ','")
    return members


def dict_ints(text: str | None) -> dict[str, int]:
    """The Integer members of a Dictionary field (``Upload-Limit``), or ``{}`` when the field is
    absent or malformed (ignored whole, as the draft says of its fields)."""
    if text is None:
        return {}
    try:
        members = parse_dict(text)
    except ParseError:
        return {}
    return {
        key: value
        for key, value in members.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


def item_int(text: str | None, *, minimum: int = 0) -> int | None:
    """An Item that is an Integer of at least *minimum*, or ``None`` for anything else (absent,
    malformed, another type): the draft says "other values MUST cause the entire header field
    to be ignored"."""
    if text is None:
        return None
    try:
        value, _ = parse_item(text)
    except ParseError:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        return None
    return value


def item_bool(text: str | None) -> bool | None:
    """An Item that is a Boolean, or ``None`` for anything else (ignored, as :func:`item_int`)."""
    if text is None:
        return None
    try:
        value, _ = parse_item(text)
    except ParseError:
        return None
    return value if isinstance(value, bool) else None


def serialize_int_dict(members: dict[str, int]) -> str:
    """A Dictionary whose members are Integers (RFC 9651 §4.1.2)."""
    for key, value in members.items():
        if not key or not (key[0] in _LCALPHA or key[0] == "*") or not set(key) <= _KEY_CHARS:
            raise ValueError(f"bad Dictionary key {key!r}")
        if not -_MAX_INT <= value <= _MAX_INT:
            raise ValueError(f"Integer out of range: {value}")
    return ", ".join(f"{key}={value}" for key, value in members.items())
