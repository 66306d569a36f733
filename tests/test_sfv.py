"""anytus's strict Structured Field Item parser (``anytus._sfv``) against ``http-sf``, mnot's
RFC 9651 implementation, on the RFC's edge cases: the same values are accepted, with the same
meaning, and the same are refused."""

from __future__ import annotations

import datetime
from decimal import Decimal

import http_sf
import pytest

from anytus._sfv import (
    ParseError,
    Token,
    item_bool,
    item_int,
    parse_dict,
    parse_item,
    serialize_int_dict,
)

CASES = [
    # integers
    "0", "42", "-42", "007", "999999999999999", "-999999999999999", "1000000000000000", "- 1",
    "-", "1a", "  5  ", "\t5", "5 ", "1,2",
    # decimals
    "1.5", "-0.001", "1.", "1.2345", "123456789012.123", "1234567890123.1", "0.", ".5",
    # booleans
    "?0", "?1", "?2", "?", "?10", "? 1", "?1;a", "?1;a=?0;b=2",
    # strings
    '"abc"', '"a\\"b"', '"a\\\\b"', '"a\\nb"', '"unterminated', '"tab\tx"', '""', '"é"',
    # tokens
    "abc", "*abc", "a:b/c", "Abc", "a b", "a;b",
    # byte sequences
    ":aGVsbG8=:", ":aGVsbG8:", "::", ":a$:", ":aGVsbG8=", ":YQ==:",
    # dates and display strings
    "@1659578233", "@-1", "@1.5", '%"abc"', '%"a%c3%a9"', '%"a%C3%A9"', '%"%ff"', '%"x', '%x"',
    # parameters
    "1;a=1", "1;A=1", "1; a=1", "1 ;a=1", "1;a=b;c", "1;*x=1", "1;a=", "1;1a=2", "1;a=\"x\"",
    # structure
    "", " ", "1 2", "(1 2)", "a=1", "1;a=1;a=2",
]  # fmt: skip


def _normalise(value: object) -> object:
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    if isinstance(value, http_sf.DisplayString):
        return ("display", str(value))
    if isinstance(value, http_sf.Token):
        return ("token", str(value))
    if isinstance(value, float):
        return Decimal(str(value))
    return value


def _ours(value: object) -> object:
    if isinstance(value, Token):
        return ("token", str(value))
    return value


@pytest.mark.parametrize("text", CASES)
def test_same_as_http_sf(text: str) -> None:
    try:
        theirs = http_sf.parse(text.encode(), tltype="item")
    except http_sf.StructuredFieldError:
        theirs = None
    try:
        ours = parse_item(text)
    except ParseError:
        ours = None
    if theirs is None or ours is None:
        assert theirs is ours is None, (theirs, ours)
        return
    assert isinstance(theirs, tuple)
    their_item, their_params = theirs
    our_item, our_params = ours
    if text.startswith("%"):
        assert ("display", our_item) == _normalise(their_item)
    else:
        assert _ours(our_item) == _normalise(their_item)
    assert {k: _ours(val) for k, val in our_params.items()} == {
        k: _normalise(val) for k, val in their_params.items()
    }


def test_non_ascii_is_refused() -> None:
    with pytest.raises(ParseError):
        parse_item("é")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", 5), ("0", 0), ("5;x=1", 5), ("-1", None), ("?1", None), ("1.0", None), (None, None)],
)
def test_item_int(text: str | None, expected: int | None) -> None:
    assert item_int(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("?1", True), ("?0", False), ("?1;a", True), ("1", None), ("?1, ?1", None), (None, None)],
)
def test_item_bool(text: str | None, expected: bool | None) -> None:
    assert item_bool(text) == expected


def test_dictionary_serialisation_round_trips() -> None:
    text = serialize_int_dict({"max-size": 1000, "max-age": 0, "expires": 5})
    assert text == "max-size=1000, max-age=0, expires=5"
    parsed = http_sf.parse(text.encode(), tltype="dictionary")
    assert parsed == {"max-size": (1000, {}), "max-age": (0, {}), "expires": (5, {})}


@pytest.mark.parametrize("members", [{"Max": 1}, {"": 1}, {"1a": 1}, {"a": 10**15}, {"a b": 1}])
def test_dictionary_refuses_what_is_not_a_structured_field(members: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"Dictionary key|out of range"):
        serialize_int_dict(members)


DICT_CASES = [
    "a=1", "a=1, b=2", "a=1,b=2", "a", "a, b=?0", "a=1,", ",a=1", "a=1 , b=2", "a=1\t,\tb=2",
    "a=1;x=2, b", "A=1", "a=1, a=2", "", " a=1 ", "a=1 b=2", "a=1,,b=2", "a=1.5", 'a="x"',
    "max-size=1000, max-age=60", "min-size=0,max-size=5", "a=1;", "a=",
]  # fmt: skip


@pytest.mark.parametrize("text", DICT_CASES)
def test_dictionaries_as_http_sf(text: str) -> None:
    try:
        theirs = http_sf.parse(text.encode(), tltype="dictionary")
    except http_sf.StructuredFieldError:
        theirs = None
    try:
        ours = parse_dict(text)
    except ParseError:
        ours = None
    if theirs is None or ours is None:
        assert theirs is ours is None, (theirs, ours)
        return
    assert isinstance(theirs, dict)
    expected = {}
    for key, value in theirs.items():
        assert isinstance(value, tuple)  # an Item with its parameters (no Inner List here)
        expected[key] = _normalise(value[0])
    assert ours == expected
