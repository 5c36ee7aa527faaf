"""The manifest: JSON round trip and strict validation that names the field at fault."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from shared.manifest import FileEntry, Manifest, path_problem
from shared.trust_errors import ManifestError
from tests.shared.builders import tiny_manifest

SHA = "ab" * 32


@pytest.fixture
def manifest() -> Manifest:
    files = [
        FileEntry(p, SHA, 10) for p in ("model.xml", "golden/inputs.npz", "golden/expected.npz")
    ]
    return tiny_manifest(files)


def test_json_round_trips(manifest: Manifest) -> None:
    assert Manifest.from_json(manifest.as_json()) == manifest
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    assert manifest.to_bytes().startswith(b'{"batching":{"max_batch_size":8,')


MISSING = object()


def set_field(data: dict[str, Any], path: str, value: object) -> None:
    """Set (or, with MISSING, delete) a field by a dotted path such as `files.0.sha256`."""
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value is MISSING:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("golden", MISSING, "manifest.golden: missing"),
        ("owner", "me", "manifest.owner: unknown field"),
        ("files.0.mode", 644, r"manifest.files\[0\].mode: unknown field"),
        ("version", "3", "manifest.version: expected an integer, found string '3'"),
        ("version", 0, "manifest.version: expected an integer >= 1, found 0"),
        ("version", 2.0, "manifest.version: expected an integer, found number 2.0"),
        ("name", "../evil", "manifest.name: expected a model name"),
        ("files.1.sha256", "AB" * 32, r"files\[1\].sha256: expected 64 lowercase hex"),
        ("files.0.size", -1, r"files\[0\].size: expected an integer >= 0"),
        ("files.0.path", "../x", r"files\[0\].path: expected a relative path"),
        ("files.0.path", "/abs", r"files\[0\].path: expected a relative path"),
        ("files.0.path", ".hidden", r"files\[0\].path: expected a relative path"),
        ("files.2.path", "model.xml", "manifest.files: a path is listed twice"),
        ("files", [], "manifest.files: the list is empty"),
        ("files.0.path", "golden", "manifest.files: 'golden' is both a file and a folder"),
        ("variants.0.file", "other.onnx", r"variants\[0\].file: 'other.onnx' is not among"),
        ("variants.0.devices", "CPU", r"variants\[0\].devices: expected a list"),
        ("inputs.0.datatype", "FLOAT", r"inputs\[0\].datatype: 'FLOAT' is not an Open"),
        ("inputs.0.shape", [-2, 4], r"inputs\[0\].shape\[0\]: expected an integer >= -1"),
        ("golden.tolerance", -1, "golden.tolerance: expected a finite number >= 0"),
        ("golden.expected_file", "x.npz", "golden.expected_file: 'x.npz' is not among"),
        ("batching.preferred_batch_sizes", [16], "preferred_batch_sizes: a size is above"),
        ("policy", "fastest", "manifest.policy: expected one of latency, throughput"),
        ("labels", {"logits": ["a"]}, "manifest.labels.logits: the model has no output"),
        ("compatibility.min_memory_bytes", True, "expected an integer, found boolean true"),
        ("type", "edgefleet-manifest/2", "manifest.type: expected 'edgefleet-manifest/1'"),
    ],
)
def test_a_malformed_manifest_names_the_field(
    manifest: Manifest, path: str, value: object, message: str
) -> None:
    data = copy.deepcopy(manifest.as_json())
    set_field(data, path, value)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(data)


def test_bytes_that_are_not_a_json_object_are_refused() -> None:
    with pytest.raises(ManifestError, match="manifest: expected an object, found a list"):
        Manifest.from_bytes(b"[]")
    with pytest.raises(ManifestError, match="manifest: duplicate key 'name'"):
        Manifest.from_bytes(b'{"name": "a", "name": "b"}')


@pytest.mark.parametrize(
    ("path", "ok"),
    [("mlp.onnx", True), ("golden/inputs.npz", True), ("a+b_c-d.bin", True), ("x" * 95, False),
     ("a//b", False), ("a/./b", False), ("a\\b", False), ("a b", False), ("", False)],
)  # fmt: skip
def test_file_paths_are_portable_and_short(path: str, ok: bool) -> None:
    assert (path_problem(path) is None) is ok
