"""Hostile inference requests: almost-valid documents, broken HTTP framing, odd URL paths.

Each strategy starts from a valid request (`oip_requests`) and breaks it in a way a careless
or malicious client would: `almost_valid_cases` edits the JSON document (datatypes, shapes,
data nesting, parameters, outputs, the binary part), `framing_cases` breaks the HTTP message
around a valid body (lengths, chunking, encodings, headers, the request head itself), and
`path_requests` aims any method at any endpoint with odd model names and versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import strategies as st

from agent.tensors import OIP_TO_NUMPY
from tests.agent.echo_model import ECHO_TYPES
from tests.fuzz.mutations import EDGE_INTEGERS, edit_document, json_values, mutate_bytes, scalars
from tests.fuzz.oip_requests import Deep, InferCase, dump, echo_cases, gzip_bytes, mlp_cases

DATATYPE_NAMES = (*OIP_TO_NUMPY, "FP8", "fp32", "STRING", "", "INT128", "TYPE_FP32", "BYTES ")
DEPTHS = (2, 64, 65, 200, 1000, 1000)  # orjson refuses more than 1024 levels
OUTPUT_NAMES = (*(f"out_{d}" for d in ECHO_TYPES), "probabilities", "", "nope")
shape_dims = st.one_of(
    st.integers(-3, 70),
    st.sampled_from(EDGE_INTEGERS),
    st.floats(-2, 70, allow_nan=False),
    st.booleans(),
    st.text(max_size=2),
)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
token = st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)


def _input(draw: st.DrawFn, case: InferCase) -> dict[str, Any] | None:
    inputs = case.document.get("inputs") if isinstance(case.document, dict) else None
    entries = [e for e in inputs if isinstance(e, dict)] if isinstance(inputs, list) else []
    return draw(st.sampled_from(entries)) if entries else None


def _edit_tree(draw: st.DrawFn, case: InferCase) -> None:
    case.document = edit_document(case.document, draw)


def _edit_datatype(draw: st.DrawFn, case: InferCase) -> None:
    if (entry := _input(draw, case)) is not None:
        entry["datatype"] = draw(st.sampled_from(DATATYPE_NAMES) | st.text(max_size=5))


def _edit_shape(draw: st.DrawFn, case: InferCase) -> None:
    if (entry := _input(draw, case)) is not None:
        entry["shape"] = draw(st.lists(shape_dims, max_size=4))


def _edit_data(draw: st.DrawFn, case: InferCase) -> None:
    entry = _input(draw, case)
    if entry is None:
        return
    data = entry.get("data", [])
    how = draw(st.sampled_from(("deep", "deep", "flat", "text", "short", "long", "any")))
    if how == "deep":  # of the datatypes whose JSON data the agent flattens itself, often
        entry["datatype"] = draw(st.sampled_from(("BYTES", "BOOL", entry.get("datatype"))))
        entry["data"] = Deep(draw(st.sampled_from(DEPTHS)), data if data else ["a"])
    elif how == "flat" and isinstance(data, list):
        entry["data"] = [x for row in data for x in (row if isinstance(row, list) else [row])]
    elif how == "text":
        entry["data"] = orjson.dumps(data).decode()
    elif how in ("short", "long") and isinstance(data, list):
        entry["data"] = data[:-1] if how == "short" else [*data, draw(scalars)]
    else:
        entry["data"] = draw(json_values())


def _edit_parameters(draw: st.DrawFn, case: InferCase) -> None:
    keys = ("timeout", "binary_data_output", "sequence_id", "priority", "binary_data_size")
    parameters = draw(st.dictionaries(st.sampled_from(keys) | st.text(max_size=4), scalars))
    entry = _input(draw, case) if draw(st.booleans()) else None
    target = entry if entry is not None else case.document
    if isinstance(target, dict):
        target["parameters"] = parameters if draw(st.integers(0, 9)) else draw(json_values())


def _edit_outputs(draw: st.DrawFn, case: InferCase) -> None:
    keys = ("binary_data", "classification", "shared_memory_region")
    output = st.fixed_dictionaries(
        {"name": st.sampled_from(OUTPUT_NAMES) | json_values(1)},
        optional={"parameters": st.dictionaries(st.sampled_from(keys), scalars)},
    )
    if isinstance(case.document, dict):
        case.document["outputs"] = draw(st.lists(output, max_size=4) | json_values(2))


def _edit_binary(draw: st.DrawFn, case: InferCase) -> None:
    if draw(st.booleans()):
        case.binary = draw(mutate_bytes(case.binary))
    else:
        length = st.integers(-2, len(dump(case.document)) + 2).map(str) | header_text
        case.headers["Inference-Header-Content-Length"] = draw(length)


EDITS: tuple[Callable[[st.DrawFn, InferCase], None], ...] = (
    _edit_tree,
    _edit_datatype,
    _edit_shape,
    _edit_data,
    _edit_parameters,
    _edit_outputs,
    _edit_binary,
)


@st.composite
def almost_valid_cases(draw: st.DrawFn) -> InferCase:
    """A valid request with one to three edits; whatever it became, the agent must say why."""
    case: InferCase = draw(echo_cases() | mlp_cases())
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from(EDITS))(draw, case)
    return case


@dataclass(frozen=True)
class RawRequest:
    """Request bytes as sent, and how to end the exchange when the server waits for more."""

    what: str
    data: bytes
    half_close: bool = False  # the body is shorter than promised: show the server its end
    patience_s: float | None = None  # unknown: half-close after this long without an answer


def _head(path: str, headers: list[tuple[str, str]], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunked(draw: st.DrawFn, body: bytes) -> tuple[bytes, bool]:
    """A chunked body, sometimes broken; True when it is certainly complete."""
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
    if draw(st.booleans()):
        return out, True
    return draw(mutate_bytes(out)), False


@st.composite
def framing_cases(draw: st.DrawFn) -> RawRequest:
    """A valid inference body in broken or unusual HTTP framing."""
    case: InferCase = draw(echo_cases() | mlp_cases())
    body, fields = case.body()
    path = f"/v2/models/{case.model}/infer"
    headers = list(fields.items())
    kind = draw(st.sampled_from(("length", "chunked", "encoding", "headers", "expect", "head")))
    if kind == "length":
        declared = draw(
            st.integers(0, len(body) * 2).map(str)
            | st.sampled_from(("-1", "abc", "1e3", "+5", " 5", "0x10", "9" * 30, "", "5, 5"))
        )
        half = declared.isdigit() and int(declared) > len(body)
        extra = [("Content-Length", declared)] * draw(st.integers(1, 2))
        return RawRequest(kind, _head(path, headers + extra) + body, half_close=half)
    if kind == "chunked":
        chunked, complete = _chunked(draw, body)
        extra = [
            ("Transfer-Encoding", draw(st.sampled_from(("chunked", "Chunked", "gzip, chunked"))))
        ]
        if draw(st.booleans()):
            extra.append(("Content-Length", str(len(body))))
        patience = None if complete else 0.5
        return RawRequest(kind, _head(path, headers + extra) + chunked, patience_s=patience)
    if kind == "encoding":
        codings = ("gzip", "x-gzip", "deflate", "br", "compress", "gzip, gzip", "GZIP", "")
        coding = draw(st.sampled_from(codings) | token)
        content = draw(
            st.sampled_from((body, gzip_bytes(body)[:-8], b"\x1f\x8b" + body))
            | st.binary(max_size=64)
            | mutate_bytes(gzip_bytes(body))
        )
        headers = [(k, v) for k, v in headers if k != "Content-Encoding"]
        extra = [("Content-Encoding", coding), ("Content-Length", str(len(content)))]
        return RawRequest(kind, _head(path, headers + extra) + content)
    if kind == "headers":
        extra = draw(st.lists(st.tuples(token, header_text), max_size=6))
        extra.append(("Content-Length", str(len(body))))
        return RawRequest(kind, _head(path, headers + extra) + body, patience_s=0.5)
    if kind == "expect":
        extra = [
            ("Expect", draw(st.sampled_from(("100-continue", "nothing")))),
            ("Content-Length", str(len(body))),
        ]
        return RawRequest(kind, _head(path, headers + extra) + body)
    head = _head(path, [*headers, ("Content-Length", str(len(body)))])
    return RawRequest(kind, draw(mutate_bytes(head)) + body, patience_s=0.5)


ODD_NAMES = ("mlp", "echo", "", ".", "..", "%2e%2e", "mlp%2F..", "%00", "%ZZ", "a" * 300, "stats")
ODD_VERSIONS = ("1", "01", "0", "-1", "²", "\u0661", "1.0", "9" * 30, "", "%201", "0x1")
SUFFIXES = ("", "/ready", "/config", "/stats", "/infer")
ENDPOINTS = ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/stats", "/metrics")


def _odd(samples: tuple[str, ...], size: int) -> st.SearchStrategy[str]:
    """Odd path segments: samples raw or percent-encoded, any text or Unicode digits encoded."""
    sampled = st.sampled_from(samples)
    digits = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=3)
    return (
        sampled
        | sampled.map(lambda s: quote(s, safe="%"))
        | (st.text(max_size=size) | digits).map(lambda s: quote(s, safe=""))
    )


segment = _odd(ODD_NAMES, 16)
version = _odd(ODD_VERSIONS, 6)
methods = st.sampled_from(("GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


@st.composite
def path_requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """Method, path and body aimed at any endpoint, with odd model names and versions."""
    name = draw(segment)
    shape = draw(st.sampled_from(("model", "versioned", "fixed", "repository")))
    if shape == "model":
        path = f"/v2/models/{name}{draw(st.sampled_from(SUFFIXES))}"
    elif shape == "versioned":
        path = f"/v2/models/{name}/versions/{draw(version)}{draw(st.sampled_from(SUFFIXES))}"
    elif shape == "fixed":
        path = draw(st.sampled_from(ENDPOINTS))
    else:  # never the served models: unloading them would take them from the other tests
        action = draw(st.sampled_from(("load", "unload", "index")))
        path = (
            "/v2/repository/index"
            if action == "index"
            else f"/v2/repository/models/x{name}/{action}"
        )
    if draw(st.booleans()):
        path += "?" + quote(draw(st.text(max_size=8)), safe="=&")
    body = draw(st.sampled_from((b"", b'{"ready": true}')) | json_values().map(dump))
    return draw(methods), path, body
