"""Canonical JSON: one byte form per value, and a strict reader."""

from __future__ import annotations

import math

import pytest

from shared.canonical import canonical_json, parse_json


def test_keys_are_sorted_and_whitespace_dropped() -> None:
    assert canonical_json({"b": [1, 2.5, None], "a": {"d": True, "c": "x"}}) == (
        b'{"a":{"c":"x","d":true},"b":[1,2.5,null]}'
    )


def test_text_is_utf8_not_escaped() -> None:
    assert canonical_json({"name": "modèle-ß"}) == '{"name":"modèle-ß"}'.encode()


def test_tuples_are_lists() -> None:
    assert canonical_json((1, (2,))) == b"[1,[2]]"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"\$\.x\[0\]: .* has no JSON form"):
        canonical_json({"x": [value]})


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, {("a",): 1}])
def test_non_string_keys_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="is not a string"):
        canonical_json(value)


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object()])
def test_values_that_are_not_json_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="is not a JSON value"):
        canonical_json({"x": value})


def test_parsing_and_writing_again_gives_the_same_bytes() -> None:
    data = canonical_json({"t": 1700000000.123456, "n": -0.0, "big": 2**70, "s": "é\n\u2028"})
    assert canonical_json(parse_json(data)) == data


def test_parse_refuses_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        parse_json(b'{"a": 1, "a": 2}')


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_parse_refuses_non_standard_constants(literal: bytes) -> None:
    with pytest.raises(ValueError, match="is not JSON"):
        parse_json(b'{"a": ' + literal + b"}")


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"\xff{}", "not UTF-8"), (b'{"a": }', "not JSON: Expecting value at line 1 column 7")],
)
def test_parse_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_json(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 5000 + b"]" * 5000, "nested deeper than 100 levels"),
        (b"[" * 101 + b"]" * 101, "nested deeper than 100 levels"),
        (b'{"a": 1e400}', "the number 1e400 is out of range"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
    ],
    ids=["deeper-than-the-stack", "deeper-than-the-limit", "overflow", "surrogate", "key"],
)
def test_parse_refuses_what_has_no_canonical_form(data: bytes, message: str) -> None:
    # Found by tests/fuzz: RecursionError leaked from the reader, and the other values parsed
    # only for canonical_json to raise on them (past every caller's TrustError seam).
    with pytest.raises(ValueError, match=message):
        parse_json(data)


def test_parse_takes_nesting_up_to_the_limit() -> None:
    data = b"[" * 100 + b"]" * 100
    assert canonical_json(parse_json(data)) == data
