"""Hypothesis strategies shared by the fuzz targets: JSON values, document edits, byte edits.

`json_values` draws any JSON value, biased towards the edges parsers trip on (huge and negative
integers, floats at the limits, empty and odd strings, nesting). `edit_document` draws one edit
of a parsed JSON document: a value replaced, a key removed or added, a list shortened or grown.
`splice` writes a document with one value replaced by a hostile literal that no Python value
serializes to (nesting past the stack, numbers beyond a float, a lone surrogate, NaN, duplicate
keys). `mutate_bytes` draws one edit of a byte string: bit flips, truncation, insertion,
duplication, overwriting, deletion.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

JsonPath = tuple[str | int, ...]

EDGE_INTEGERS = (0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**400)
EDGE_FLOATS = (0.0, -0.0, 0.5, 1e-320, 1.7976931348623157e308, -1e300, 1e16)
EDGE_TEXTS = ("", " ", "\x00", "\u2028", "é", "🙂", "../x", "%00", "null", "0", "-1", "²", "\u0661")

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTEGERS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_FLOATS),
    st.text(max_size=12),
    st.sampled_from(EDGE_TEXTS),
)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Any JSON value (no NaN or infinity: those are not JSON)."""
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


HOSTILE_LITERALS = (
    b"[" * 2000 + b"]" * 2000,  # deeper than Python's stack
    b"[" * 101 + b"]" * 101,
    b"1e400",  # beyond a float
    b"-1e400",
    b"1" + b"0" * 400,
    b"1" * 5000,  # more digits than int() takes
    b'"\\ud800"',  # a lone surrogate
    b"NaN",
    b"Infinity",
    b'{"a": 1, "a": 2}',
)
_MARKER = "\u0000hostile\u0000"


def paths(document: Any, prefix: JsonPath = ()) -> list[JsonPath]:
    """Every path into a JSON document, the root `()` first."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths(value, (*prefix, index))
    return found


def _parent(document: Any, path: JsonPath) -> Any:
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


def edit_document(document: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    """Return a copy of `document` with one drawn edit (the original is left as it was)."""
    edited = copy.deepcopy(document)
    path = draw(st.sampled_from(paths(edited)))
    kind = draw(st.sampled_from(("replace", "remove", "add", "shrink", "grow", "nest")))
    if not path:
        return draw(json_values()) if kind == "replace" else [edited]
    parent, step = _parent(edited, path), path[-1]
    if kind == "remove":
        del parent[step]
    elif kind == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=8))] = draw(json_values())
    elif kind == "shrink" and isinstance(parent[step], list | str) and parent[step]:
        parent[step] = parent[step][: draw(st.integers(0, len(parent[step]) - 1))]
    elif kind == "grow" and isinstance(parent[step], list):
        parent[step] = [*parent[step], draw(json_values(2))]
    elif kind == "nest":
        parent[step] = [parent[step]]
    else:
        parent[step] = draw(json_values())
    return edited


def splice(document: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """`document` as JSON text, one value (or the whole) replaced by a hostile literal."""
    edited = copy.deepcopy(document)
    path = draw(st.sampled_from(paths(edited)))
    literal: bytes = draw(st.sampled_from(HOSTILE_LITERALS))
    if not path:
        return literal
    _parent(edited, path)[path[-1]] = _MARKER
    return json.dumps(edited).replace(json.dumps(_MARKER), literal.decode()).encode()


@st.composite
def mutate_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """One edit of `data`: flip bits, truncate, insert, duplicate, overwrite or delete a run."""
    size = len(data)
    if not size:
        return bytes(draw(st.binary(min_size=1, max_size=16)))
    at = draw(st.integers(0, size - 1))
    kind = draw(st.sampled_from(("flip", "truncate", "insert", "duplicate", "overwrite", "delete")))
    if kind == "flip":
        mask = draw(st.integers(1, 255))
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    if kind == "duplicate":
        end = draw(st.integers(at + 1, min(size, at + 1024)))
        return data[:end] + data[at:end] + data[end:]
    if kind == "overwrite":
        patch = draw(st.binary(min_size=1, max_size=16))
        return data[:at] + patch + data[at + len(patch) :]
    end = draw(st.integers(at + 1, min(size, at + 64)))
    return data[:at] + data[end:]
