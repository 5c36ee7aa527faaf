"""Canonical JSON: the one byte form that signatures cover.

`canonical_json` sorts keys, drops insignificant whitespace and writes UTF-8 (non-ASCII text as
is, not `\\u` escapes). Floats use Python's shortest round-trip form, so parsing a canonical
document and writing it again gives the same bytes; that is what lets a verifier recompute the
signed bytes of `{"signed": ...}` documents. NaN, infinities, non-string keys and values that
are not JSON (bytes, sets, objects) are refused rather than coerced, because a silent coercion
would let two different objects share one signature.

`parse_json` is the matching strict reader: it refuses duplicate keys (which JSON parsers
resolve differently, a classic way to make signer and verifier see different documents) and
the non-standard `NaN`/`Infinity` literals. Whatever it returns has a canonical form, so it
also refuses what `canonical_json` would: numbers that overflow to infinity (`1e400`), text
with lone surrogates (`"\\ud800"`), and nesting deeper than `MAX_DEPTH` (deeper still would
exhaust Python's stack in the reader or the writer).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 100  # levels of arrays and objects: far more than any EdgeFleet document has


def canonical_json(obj: object) -> bytes:
    """Return the canonical UTF-8 bytes of a JSON-ready value; raise TypeError or ValueError."""
    _check(obj, "$")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def parse_json(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly; raise ValueError naming what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    _check_parsed(value)
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:24]} is out of range")
    return value


def _check_parsed(value: object) -> None:
    """Refuse deep nesting and lone surrogates, walking without recursion."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                for key in item:
                    _check_text(key)
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text holds a lone surrogate ({text[exc.start]!r})") from None


def _check(value: object, where: str) -> None:
    """Refuse anything `json.dumps` would coerce or write in a non-portable form."""
    if value is None or isinstance(value, bool | str | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} has no JSON form")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where}: {type(value).__name__} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
