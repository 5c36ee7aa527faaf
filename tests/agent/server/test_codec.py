"""The REST wire format, checked against the bytes tritonclient itself produces and parses."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from agent.errors import InvalidRequest, PayloadTooLarge, Unsupported
from agent.server.codec import decode_request, encode_response

NUMERIC = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[0.5, -1.25, 1e300]], dtype=np.float64),
}
BYTES = np.array([[b"ab", b"", b"\x00\xffz"]], dtype=np.object_)


def triton_body(
    tensors: dict[str, tuple[str, np.ndarray]], binary: bool = True, **kwargs: Any
) -> tuple[bytes, int | None]:
    """The exact body and header length tritonclient sends for these inputs."""
    inputs = []
    for name, (datatype, array) in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return bytes(body), json_size


# FP16 cannot travel as JSON (refused, see BAD_JSON), so it is only sent binary.
ENCODINGS = [
    (d, b) for d in [*NUMERIC, "BYTES"] for b in (True, False) if (d, b) != ("FP16", False)
]


@pytest.mark.parametrize(("datatype", "binary"), ENCODINGS)
def test_every_datatype_decodes_as_sent(datatype: str, binary: bool) -> None:
    array = BYTES if datatype == "BYTES" else NUMERIC[datatype]
    if datatype == "BYTES" and not binary:
        array = np.array([[b"ab", b"", b"z"]], dtype=np.object_)  # JSON carries text only
    body, json_size = triton_body({"x": (datatype, array)}, binary=binary)
    request = decode_request(body, json_size, max_elements=1000)
    assert request.datatypes["x"] == datatype
    got = request.inputs["x"]
    assert got.shape == array.shape
    if datatype == "BYTES":
        assert got.tolist() == array.tolist()
    else:
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype


def test_bf16_decodes_to_bfloat16() -> None:
    values = np.array([[1.0, -2.5, 0.15625]], dtype=ml_dtypes.bfloat16)
    body, json_size = triton_body({"x": ("BF16", values)})
    request = decode_request(body, json_size, max_elements=100)
    got = request.inputs["x"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.astype(np.float32), values.astype(np.float32))
    encoded = encode_response("m", "1", None, [("x", got, True)])
    result = httpclient.InferenceServerClient.parse_response_body(
        encoded.body, header_length=encoded.json_length
    )
    back = result.as_numpy("x")
    assert back is not None
    np.testing.assert_array_equal(back.astype(np.float32), values.astype(np.float32))


def test_parameters_id_and_outputs_are_read() -> None:
    out = httpclient.InferRequestedOutput("y", binary_data=False, class_count=3)
    body, json_size = triton_body(
        {"x": ("FP32", NUMERIC["FP32"])}, outputs=[out], request_id="42", timeout=1500
    )
    request = decode_request(body, json_size, max_elements=100)
    assert request.id == "42"
    assert request.timeout_us == 1500
    assert request.outputs is not None
    assert [(o.name, o.binary, o.classification) for o in request.outputs] == [("y", False, 3)]


def test_nested_json_data_is_accepted() -> None:
    document = {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]
    }
    request = decode_request(orjson.dumps(document), None, max_elements=100)
    np.testing.assert_array_equal(request.inputs["x"], [[1, 2], [3, 4]])


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL"])
def test_data_nested_as_deep_as_orjson_allows_is_not_a_crash(datatype: str) -> None:
    # Found by tests/fuzz: flattening BYTES and BOOL data recursed past Python's stack (a 500).
    depth = 1000
    leaf = b'"a"' if datatype == "BYTES" else b"true"
    data = b"[" * depth + leaf + b"]" * depth
    body = b'{"inputs":[{"name":"x","datatype":"%s","shape":[1],"data":%s}]}' % (
        datatype.encode(),
        data,
    )
    if datatype == "BYTES":  # BYTES data may nest as it likes; only the element count counts
        request = decode_request(body, None, max_elements=100)
        assert request.inputs["x"].tolist() == [b"a"]
    else:
        with pytest.raises(InvalidRequest, match="does not hold BOOL values"):
            decode_request(body, None, max_elements=100)


def tensor(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}
    base.update(fields)
    return base


BAD_JSON: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "must be a JSON object"),
    ("no inputs", {}, "'inputs' must be a non-empty list"),
    ("input without name", {"inputs": [tensor(name=None)]}, r"inputs\[0\]\.name"),
    ("unknown datatype", {"inputs": [tensor(datatype="FLOAT")]}, "'datatype' must be one of"),
    ("negative dim", {"inputs": [tensor(shape=[1, -2])]}, "'shape' must be a list"),
    ("shape not a list", {"inputs": [tensor(shape="1,2")]}, "'shape' must be a list"),
    (
        "missing data",
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]},
        "'data' is missing",
    ),
    ("too few elements", {"inputs": [tensor(data=[1])]}, "holds 2 elements but 'data' has 1"),
    ("strings for FP32", {"inputs": [tensor(data=["a", "b"])]}, "does not hold FP32"),
    ("ragged data", {"inputs": [tensor(shape=[2, 2], data=[[1, 2], [3]])]}, "does not hold"),
    ("bool as number", {"inputs": [tensor(datatype="BOOL", data=[1, 0])]}, "true or false"),
    ("FP16 in JSON", {"inputs": [tensor(datatype="FP16")]}, "must be sent in binary"),
    ("duplicate input", {"inputs": [tensor(), tensor()]}, "more than once"),
    ("bad timeout", {"inputs": [tensor()], "parameters": {"timeout": -1}}, "'timeout'"),
    ("id not a string", {"id": 7, "inputs": [tensor()]}, "'id' must be a string"),
    ("outputs not a list", {"inputs": [tensor()], "outputs": {"name": "y"}}, "'outputs'"),
    (
        "duplicate output",
        {"inputs": [tensor()], "outputs": [{"name": "y"}, {"name": "y"}]},
        "more than once",
    ),
    (
        "binary_data not bool",
        {"inputs": [tensor()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
        "'binary_data' must be a boolean",
    ),
]


@pytest.mark.parametrize(("case", "document", "message"), BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_malformed_json_names_the_field(case: str, document: Any, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_request(orjson.dumps(document), None, max_elements=100)


def test_invalid_json_is_400() -> None:
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        decode_request(b'{"inputs": [', None, max_elements=100)


def test_truncated_binary_part_is_refused() -> None:
    body, json_size = triton_body({"x": ("FP32", NUMERIC["FP32"])})
    with pytest.raises(InvalidRequest, match="expects 12 bytes of binary data but only 8 remain"):
        decode_request(body[:-4], json_size, max_elements=100)


def test_binary_size_mismatch_is_refused() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1, 3],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(InvalidRequest, match="binary_data_size is 8 bytes but shape"):
        decode_request(header + b"\0" * 8, len(header), max_elements=100)


def test_trailing_bytes_are_refused() -> None:
    body, json_size = triton_body({"x": ("FP32", NUMERIC["FP32"])})
    with pytest.raises(InvalidRequest, match="4 bytes of binary data that no input claims"):
        decode_request(body + b"abcd", json_size, max_elements=100)


def test_corrupt_bytes_lengths_are_refused() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "s",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                }
            ]
        }
    )
    with pytest.raises(InvalidRequest, match="runs past the end"):
        decode_request(header + b"\xff\0\0\0ab", len(header), max_elements=100)


def test_header_length_outside_body_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="outside the body"):
        decode_request(b"{}", 10, max_elements=100)
    with pytest.raises(Unsupported, match="raw binary"):
        decode_request(b"{}", 0, max_elements=100)


def test_element_limit() -> None:
    document = {"inputs": [tensor(shape=[1000, 1000])]}
    with pytest.raises(PayloadTooLarge, match="elements exceed the limit"):
        decode_request(orjson.dumps(document), None, max_elements=10_000)


def test_response_round_trips_through_tritonclient() -> None:
    outputs: list[tuple[str, np.ndarray, bool]] = [
        ("probabilities", np.arange(6, dtype=np.float32).reshape(2, 3), True),
        ("counts", np.array([[1, 2]], dtype=np.int64), False),
        ("labels", np.array([b"cat", b"\x00dog"], dtype=np.object_), True),
        ("half", np.array([1.5, 2.0], dtype=np.float16), True),
    ]
    encoded = encode_response("m", "3", "req-1", outputs)
    assert encoded.json_length is not None
    result = httpclient.InferenceServerClient.parse_response_body(
        encoded.body, header_length=encoded.json_length
    )
    response = result.get_response()
    assert response["model_name"] == "m"
    assert response["model_version"] == "3"
    assert response["id"] == "req-1"
    for name, array, _ in outputs:
        got = result.as_numpy(name)
        assert got is not None
        if array.dtype == np.object_:
            assert got.tolist() == array.tolist()
        else:
            np.testing.assert_array_equal(got, array)


def test_json_only_response_has_no_header_length() -> None:
    encoded = encode_response("m", "1", None, [("y", np.array([1.0], dtype=np.float32), False)])
    assert encoded.json_length is None
    document = orjson.loads(encoded.body)
    assert document["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1], "data": [1.0]}]
    assert "id" not in document


def test_fp16_json_output_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="binary_data=true"):
        encode_response("m", "1", None, [("h", np.array([1.0], dtype=np.float16), False)])
