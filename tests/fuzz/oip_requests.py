"""Generated Open Inference Protocol requests for the echo model, and what a correct agent answers.

The echo model (`tests.agent.echo_model`) returns each input `in_<TYPE>` as `out_<TYPE>`, so
every generated request has an exact expected answer. `echo_cases` draws the row count, values
of every datatype, JSON (flat or nested) or binary encoding per input, input order, request
id, the outputs asked for (binary or JSON, top-k classification) and the body's compression.
`decode_outputs` reads an answer back into arrays, whichever encodings it uses.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from hypothesis import strategies as st

from agent.tensors import BINARY_ONLY, OIP_TO_NUMPY
from tests.agent.echo_model import ECHO_TYPES
from tests.fuzz.wire import Reply

_LENGTH = struct.Struct("<I")
# Top-k classification ranks numbers; asked of a BOOL or BYTES output, it is refused.
CLASSIFIABLE = [d for d in ECHO_TYPES if d not in ("BOOL", "BYTES")]


@dataclass
class InferCase:
    """One generated request and the answer a correct agent gives."""

    document: dict[str, Any]
    model: str = "echo"
    binary: bytes = b""
    sent: dict[str, np.ndarray] = field(default_factory=dict)  # datatype -> input array
    wanted: dict[str, int] = field(default_factory=dict)  # datatype -> top-k (0 = the tensor)
    encoding: str = "identity"  # Content-Encoding of the body
    accept: str = ""  # Accept-Encoding
    refusal: str = ""  # when the agent must answer 400: part of its message
    headers: dict[str, str] = field(default_factory=dict)  # set last, over the computed ones

    def body(self) -> tuple[bytes, dict[str, str]]:
        """The request body and its headers."""
        header = dump(self.document)
        headers = {"Content-Type": "application/json"}
        if self.binary:
            headers["Inference-Header-Content-Length"] = str(len(header))
        data = header + self.binary
        if self.encoding != "identity":
            headers["Content-Encoding"] = self.encoding
            data = gzip_bytes(data) if self.encoding == "gzip" else zlib.compress(data)
        if self.accept:
            headers["Accept-Encoding"] = self.accept
        return data, {**headers, **self.headers}


class Deep:
    """A JSON value wrapped in `depth` lists, written by hand (orjson writes only 255 levels)."""

    def __init__(self, depth: int, value: Any) -> None:
        self.depth, self.value = depth, value

    def fragment(self) -> orjson.Fragment:
        """The raw JSON text of the wrapped value."""
        return orjson.Fragment(b"[" * self.depth + dump(self.value) + b"]" * self.depth)


def dump(document: Any) -> bytes:
    """JSON bytes of a document that may hold `Deep` values and integers beyond 64 bits."""
    return orjson.dumps(_writable(document))


def _writable(value: Any) -> Any:
    if isinstance(value, Deep):
        return value.fragment()
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value).encode())
    if isinstance(value, dict):
        return {key: _writable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_writable(item) for item in value]
    return value


def gzip_bytes(data: bytes) -> bytes:
    """Gzip-compress `data` (deterministically: no time stamp)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return packer.compress(data) + packer.flush()


def _elements(datatype: str, binary: bool) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        if not binary:
            return st.text(max_size=5).map(str.encode)
        return st.binary(max_size=6) | st.sampled_from((b"\xff", b"\xc3(", b"\xed\xa0\x80"))
    if datatype == "FP16":
        return st.floats(width=16)  # binary only: NaN and infinities travel too
    if datatype == "FP32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if datatype == "FP64":
        return st.floats(allow_nan=False, allow_infinity=False)
    info = np.iinfo(datatype.lower())
    return st.integers(int(info.min), int(info.max))


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    """The binary tensor extension's bytes of an array."""
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in array.ravel())
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes()


def to_json_data(array: np.ndarray, datatype: str, nested: bool) -> Any:
    """The JSON `data` of an array: flat, or nested like its shape."""
    if datatype == "BYTES":
        array = np.vectorize(bytes.decode, otypes=[object])(array)
    return array.tolist() if nested else array.ravel().tolist()


@st.composite
def echo_cases(draw: st.DrawFn) -> InferCase:
    """A request for every input of the echo model, with its expected answer."""
    rows = draw(st.integers(1, 4))
    case = InferCase({"inputs": []})
    chunks = []
    for datatype in draw(st.permutations(list(ECHO_TYPES))):
        binary = datatype in BINARY_ONLY or draw(st.booleans())
        values = draw(st.lists(_elements(datatype, binary), min_size=rows * 3, max_size=rows * 3))
        array = np.empty(rows * 3, dtype=OIP_TO_NUMPY[datatype])
        array[:] = values
        array = array.reshape(rows, 3)
        entry: dict[str, Any] = {"name": f"in_{datatype}", "datatype": datatype, "shape": [rows, 3]}
        if binary:
            chunk = to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = to_json_data(array, datatype, draw(st.booleans()))
        case.document["inputs"].append(entry)
        case.sent[datatype] = array
    case.binary = b"".join(chunks)
    if draw(st.booleans()):
        case.document["id"] = draw(st.text(max_size=8))
    binary_output = draw(st.booleans())
    if binary_output or draw(st.booleans()):
        case.document["parameters"] = {"binary_data_output": binary_output}
    _choose_outputs(draw, case, binary_output)
    case.encoding = draw(st.sampled_from(("identity", "identity", "gzip", "deflate")))
    case.accept = draw(st.sampled_from(("", "", "gzip", "deflate;q=0.5, gzip;q=0.1", "br")))
    return case


def _choose_outputs(draw: st.DrawFn, case: InferCase, binary_output: bool) -> None:
    """Draw the outputs asked for; note the refusal a correct agent gives, if any."""
    asked = draw(st.none() | st.lists(st.sampled_from(list(ECHO_TYPES)), unique=True, min_size=1))
    chosen: list[tuple[str, bool, int]] = []  # datatype, binary, top-k: in the order asked
    if asked is None:
        chosen = [(datatype, binary_output, 0) for datatype in ECHO_TYPES]
    else:
        outputs = []
        for datatype in asked:
            parameters: dict[str, Any] = {}
            binary = draw(st.sampled_from((None, True, False)))
            if binary is not None:
                parameters["binary_data"] = binary
            classes = draw(st.integers(1, 4)) if draw(st.integers(0, 3)) == 0 else 0
            if classes:
                parameters["classification"] = classes
            chosen.append((datatype, binary_output if binary is None else binary, classes))
            outputs.append({"name": f"out_{datatype}", "parameters": parameters})
        case.document["outputs"] = outputs
    case.wanted = {datatype: classes for datatype, _, classes in chosen}
    for datatype, binary, classes in chosen:  # the agent checks the outputs in this order
        if classes and datatype not in CLASSIFIABLE:
            case.refusal = "classification ranks numbers only"
            return
        if datatype == "FP16" and not binary and not classes:
            case.refusal = "which cannot be sent as JSON"
            return
    if not _utf8(case.sent["BYTES"]):  # onnxruntime's Python API takes text only
        case.refusal = "UTF-8"


def _utf8(array: np.ndarray) -> bool:
    try:
        for item in array.ravel():
            item.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode_outputs(reply: Reply) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The answer's JSON header and its outputs as arrays (BYTES as object arrays of bytes)."""
    body = reply.body
    coding = reply.headers.get("content-encoding")
    if coding == "gzip":
        body = zlib.decompress(body, zlib.MAX_WBITS | 16)
    elif coding == "deflate":
        body = zlib.decompress(body)
    length = int(reply.headers.get("inference-header-content-length", len(body)))
    header, offset = orjson.loads(body[:length]), length
    arrays: dict[str, np.ndarray] = {}
    for output in header["outputs"]:
        datatype, shape = output["datatype"], output["shape"]
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            arrays[output["name"]] = _from_json(output["data"], datatype, shape)
            continue
        chunk = body[offset : offset + size]
        offset += size
        arrays[output["name"]] = _from_binary(chunk, datatype, shape)
    assert offset == len(body), "binary bytes that no output claims"
    return header, arrays


def _from_json(data: list[Any], datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        array = np.empty(len(data), dtype=object)
        array[:] = [item.encode() for item in data]
        return array.reshape(shape)
    return np.asarray(data, dtype=OIP_TO_NUMPY[datatype]).reshape(shape)


def _from_binary(chunk: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype != "BYTES":
        dtype = OIP_TO_NUMPY[datatype].newbyteorder("<")
        return np.frombuffer(chunk, dtype=dtype).reshape(shape)
    items, position = [], 0
    while position < len(chunk):
        (size,) = _LENGTH.unpack_from(chunk, position)
        items.append(chunk[position + 4 : position + 4 + size])
        position += 4 + size
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def top_k(row: np.ndarray, k: int) -> list[str] | None:
    """Triton's classification entries of one row: the k largest, ties by lower index.

    None for a row holding NaN, which has no place in an order.
    """
    if row.dtype.kind == "f" and np.isnan(row).any():
        return None
    order = sorted(range(len(row)), key=lambda i: (-row[i].item(), i))[:k]
    return [f"{float(row[i]):f}:{i}" for i in order]


@st.composite
def mlp_cases(draw: st.DrawFn) -> InferCase:
    """A request for the sample MLP (input [N, 64] FP32, output probabilities [N, 10])."""
    rows = draw(st.integers(1, 3))
    values = st.floats(-1e3, 1e3, width=32)
    array = np.asarray(draw(st.lists(values, min_size=rows * 64, max_size=rows * 64)))
    array = array.astype(np.float32).reshape(rows, 64)
    entry: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": [rows, 64]}
    case = InferCase({"inputs": [entry]}, model="mlp", sent={"FP32": array})
    if draw(st.booleans()):
        case.binary = to_binary(array, "FP32")
        entry["parameters"] = {"binary_data_size": len(case.binary)}
    else:
        entry["data"] = to_json_data(array, "FP32", draw(st.booleans()))
    if draw(st.booleans()):
        case.document["outputs"] = [
            {"name": "probabilities", "parameters": {"binary_data": draw(st.booleans())}}
        ]
    return case
