"""The Open Inference Protocol's REST wire format, with Triton's binary tensor extension.

`decode_request` turns a request body (JSON header, then binary tensor bytes) into an
`InferenceRequest`; `encode_response` does the reverse for the answer. Both are pure functions
on bytes and numpy arrays (no aiohttp here), so they are unit-tested on their own and can run
in a worker thread when a body is large. Every malformed body raises `InvalidRequest` with a
message that names the field at fault.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from agent.errors import InvalidRequest, PayloadTooLarge, Unsupported
from agent.inference import InferenceRequest, RequestedOutput
from agent.tensors import BINARY_ONLY, OIP_TO_NUMPY, numpy_to_oip

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """A response body and the length of its JSON part when binary data follows."""

    body: bytes
    json_length: int | None  # for Inference-Header-Content-Length; None = all JSON


def decode_request(body: bytes, header_length: int | None, max_elements: int) -> InferenceRequest:
    """Parse an inference request body; `header_length` is Inference-Header-Content-Length."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if header_length == 0:
            raise Unsupported(
                "raw binary requests (Inference-Header-Content-Length: 0) are not supported; "
                "send a JSON header that describes the input"
            )
        if header_length < 0 or header_length > len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"({len(body)} bytes)"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    document = decode_json_object(header)
    request = InferenceRequest(inputs={}, datatypes={})
    request_id = document.get("id")
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidRequest("'id' must be a string")
        request.id = request_id
    _read_parameters(document.get("parameters"), request)
    offset = 0
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest("'inputs' must be a non-empty list of tensors")
    budget = max_elements
    for index, raw in enumerate(raw_inputs):
        name, datatype, array, used = _decode_input(index, raw, binary, offset, budget)
        if name in request.inputs:
            raise InvalidRequest(f"input '{name}' appears more than once")
        request.inputs[name] = array
        request.datatypes[name] = datatype
        budget -= array.size
        offset += used
    if offset != len(binary):
        raise InvalidRequest(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )
    request.outputs = _decode_outputs(document.get("outputs"))
    return request


def decode_json_object(body: bytes | memoryview) -> dict[str, Any]:
    """Parse a JSON object body; an empty body is an empty object."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not bytes(body).strip():  # checked only on this path: bodies can be large
            return {}
        raise InvalidRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return document


def _read_parameters(raw: object, request: InferenceRequest) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise InvalidRequest("'parameters' must be an object")
    request.parameters = raw
    timeout = raw.get("timeout", 0)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0:
        raise InvalidRequest("parameter 'timeout' must be a non-negative integer (microseconds)")
    request.timeout_us = timeout
    binary_output = raw.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest("parameter 'binary_data_output' must be a boolean")
    request.binary_output = binary_output
    if raw.get("sequence_id") not in (None, 0, ""):
        raise Unsupported("sequence batching (parameter 'sequence_id') is not supported")


def _decode_input(
    index: int, raw: object, binary: memoryview, offset: int, budget: int
) -> tuple[str, str, np.ndarray, int]:
    """Decode one entry of 'inputs'; return name, datatype, array and binary bytes consumed."""
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{where}' must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"'{where}.name' must be a non-empty string")
    where = f"input '{name}'"
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in OIP_TO_NUMPY:
        raise InvalidRequest(
            f"{where}: 'datatype' must be one of {', '.join(OIP_TO_NUMPY)}, got {datatype!r}"
        )
    shape = raw.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**63 for d in shape
    ):
        raise InvalidRequest(f"{where}: 'shape' must be a list of non-negative integers")
    count = math.prod(shape)
    if count > budget:
        raise PayloadTooLarge(
            f"{where}: {count} elements exceed the limit of the request ({budget} left)"
        )
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"{where}: 'parameters' must be an object")
    if "shared_memory_region" in parameters:
        raise Unsupported(f"{where}: shared memory inputs are not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"{where}: 'binary_data_size' must be a non-negative integer")
        if "data" in raw:
            raise InvalidRequest(f"{where}: give either 'data' or 'binary_data_size', not both")
        if offset + size > len(binary):
            raise InvalidRequest(
                f"{where}: expects {size} bytes of binary data but only "
                f"{len(binary) - offset} remain in the body"
            )
        chunk = binary[offset : offset + size]
        return name, datatype, _from_binary(where, datatype, shape, count, chunk), size
    if "data" not in raw:
        raise InvalidRequest(
            f"{where}: 'data' is missing (or send it binary with binary_data_size)"
        )
    if datatype in BINARY_ONLY:
        raise InvalidRequest(f"{where}: {datatype} data must be sent in binary, not as JSON")
    return name, datatype, _from_json(where, datatype, shape, count, raw["data"]), 0


def _from_binary(
    where: str, datatype: str, shape: list[int], count: int, chunk: memoryview
) -> np.ndarray:
    if datatype == "BYTES":
        return _unpack_bytes(where, chunk, count).reshape(shape)
    dtype = OIP_TO_NUMPY[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidRequest(
            f"{where}: binary_data_size is {len(chunk)} bytes but shape {shape} of {datatype} "
            f"needs {expected}"
        )
    array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.size and np.frombuffer(chunk, np.uint8).max() > 1:
        raise InvalidRequest(f"{where}: BOOL elements must be bytes 0 or 1")
    return array


def _unpack_bytes(where: str, chunk: memoryview, count: int) -> np.ndarray:
    """Split BYTES elements, each prefixed by its uint32 little-endian length."""
    items = np.empty(count, dtype=np.object_)
    position = 0
    end = len(chunk)
    for i in range(count):
        if position + 4 > end:
            raise InvalidRequest(f"{where}: binary BYTES data ends before element {i}")
        (length,) = _LENGTH.unpack_from(chunk, position)
        position += 4
        if position + length > end:
            raise InvalidRequest(f"{where}: BYTES element {i} runs past the end of its data")
        items[i] = bytes(chunk[position : position + length])
        position += length
    if position != end:
        raise InvalidRequest(
            f"{where}: binary_data_size has {end - position} bytes after the last BYTES element"
        )
    return items


def _from_json(where: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            if not all(isinstance(item, str) for item in flat):
                raise InvalidRequest(f"{where}: BYTES data must be strings")
            array = np.empty(len(flat), dtype=np.object_)
            array[:] = [item.encode() for item in flat]
        else:
            if datatype == "BOOL":
                flat = _flatten(data)
                if not all(isinstance(item, bool) for item in flat):
                    raise InvalidRequest(f"{where}: BOOL data must be true or false")
            array = np.asarray(data, dtype=OIP_TO_NUMPY[datatype])
            if array.dtype == np.object_:
                raise ValueError("ragged")
    except (ValueError, TypeError, OverflowError) as error:
        raise InvalidRequest(f"{where}: 'data' does not hold {datatype} values ({error})") from None
    if array.size != count:
        raise InvalidRequest(
            f"{where}: shape {shape} holds {count} elements but 'data' has {array.size}"
        )
    return array.reshape(shape)


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    # Without recursion: orjson accepts 1024 levels of nesting, deeper than Python's stack.
    flat: list[Any] = []
    pending = [iter(data)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, list):
                pending.append(iter(item))
                break
            flat.append(item)
        else:
            pending.pop()
    return flat


def _decode_outputs(raw: object) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidRequest("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidRequest(f"'outputs[{index}]' must be an object with a 'name'")
        name = item["name"]
        if name in seen:
            raise InvalidRequest(f"output '{name}' is requested more than once")
        seen.add(name)
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"output '{name}': 'parameters' must be an object")
        if "shared_memory_region" in parameters:
            raise Unsupported(f"output '{name}': shared memory outputs are not supported")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidRequest(f"output '{name}': 'binary_data' must be a boolean")
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise InvalidRequest(f"output '{name}': 'classification' must be a positive integer")
        outputs.append(RequestedOutput(name=name, binary=binary, classification=classes))
    return outputs


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> EncodedResponse:
    """Encode named output arrays; each tuple says whether that output goes binary."""
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array, binary in outputs:
        datatype = numpy_to_oip(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            chunk = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = _to_json_data(name, array, datatype)
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = described
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return EncodedResponse(header, None)
    return EncodedResponse(b"".join([header, *chunks]), len(header))


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.ravel():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()


def _to_json_data(name: str, array: np.ndarray, datatype: str) -> Any:
    if datatype in BINARY_ONLY:
        raise InvalidRequest(
            f"output '{name}' is {datatype}, which cannot be sent as JSON; "
            "request it with binary_data=true"
        )
    if datatype == "BYTES":
        try:
            return [
                item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()
            ]
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"output '{name}' holds bytes that are not UTF-8 text; "
                "request it with binary_data=true"
            ) from None
    return np.ascontiguousarray(array).ravel()
