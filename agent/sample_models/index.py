"""`samples.json`: what a sample-model directory holds, and how closely each file must match.

Tolerances are the largest absolute difference, element by element, allowed between a runtime's
output on `<model>.inputs.npz` and `<model>.expected.npz` (the numpy reference).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.sample_models.errors import SampleModelsError
from agent.tensors import TensorSpec

INDEX_FILE = "samples.json"
INDEX_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileDigest:
    """A written file: its name inside the sample directory, size in bytes and sha256."""

    file: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> FileDigest:
        """Describe the file at `path` (read in full; sample files are small)."""
        data = path.read_bytes()
        return cls(path.name, len(data), hashlib.sha256(data).hexdigest())

    def as_json(self) -> dict[str, Any]:
        """Return the digest as a JSON object."""
        return {"file": self.file, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One model in one format: the runtime that loads it, its precision and its files."""

    format: str  # "onnx" | "openvino-ir" | "tflite"
    runtime: str  # "onnxruntime" | "openvino" | "tflite"
    precision: str  # "fp32" | "int8"
    model: FileDigest  # the file to load
    companions: tuple[FileDigest, ...] = ()  # loaded alongside it (OpenVINO's weights `.bin`)

    @property
    def total_size(self) -> int:
        """Bytes on disk of the model file and its companions."""
        return self.model.size + sum(c.size for c in self.companions)

    def as_json(self) -> dict[str, Any]:
        """Return the entry as a JSON object (the model file's digest fields inlined)."""
        return {
            "format": self.format,
            "runtime": self.runtime,
            "precision": self.precision,
            **self.model.as_json(),
            "companions": [c.as_json() for c in self.companions],
        }


@dataclass(frozen=True, slots=True)
class SampleModel:
    """One sample network: its signature, files per format, fixed inputs and expected outputs."""

    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[ModelFile, ...]
    inputs_file: str  # npz keyed by input name
    expected_file: str  # npz keyed by output name
    tolerance: Mapping[str, float] = field(default_factory=dict)  # precision -> max |diff|

    def as_json(self) -> dict[str, Any]:
        """Return the model as a JSON object."""
        return {
            "name": self.name,
            "description": self.description,
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
            "files": [f.as_json() for f in self.files],
            "inputs_file": self.inputs_file,
            "expected_file": self.expected_file,
            "tolerance": dict(self.tolerance),
        }


@dataclass(frozen=True, slots=True)
class SampleIndex:
    """Everything a sample-model directory holds; what `samples.json` stores."""

    seed: int
    models: tuple[SampleModel, ...]
    version: int = INDEX_VERSION

    def model(self, name: str) -> SampleModel:
        """Return the model called `name`; raise `KeyError` if there is none."""
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def as_json(self) -> dict[str, Any]:
        """Return the index as the JSON object written to `samples.json`."""
        return {
            "version": self.version,
            "seed": self.seed,
            "models": [m.as_json() for m in self.models],
        }


def write_index(directory: Path, index: SampleIndex) -> Path:
    """Write `samples.json` into `directory` and return its path."""
    path = directory / INDEX_FILE
    path.write_text(json.dumps(index.as_json(), indent=2) + "\n", encoding="utf-8")
    return path


def read_index(directory: Path) -> SampleIndex:
    """Read `samples.json` from a sample directory; raise `SampleModelsError` if it is unusable."""
    path = directory / INDEX_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["version"] != INDEX_VERSION:
            raise SampleModelsError(f"{path}: version {data['version']}, expected {INDEX_VERSION}")
        return SampleIndex(
            seed=int(data["seed"]),
            models=tuple(_model(m) for m in data["models"]),
            version=int(data["version"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SampleModelsError(f"{path}: unreadable sample index ({exc!r})") from exc


def _model(data: Mapping[str, Any]) -> SampleModel:
    return SampleModel(
        name=str(data["name"]),
        description=str(data["description"]),
        inputs=tuple(_tensor(t) for t in data["inputs"]),
        outputs=tuple(_tensor(t) for t in data["outputs"]),
        files=tuple(_model_file(f) for f in data["files"]),
        inputs_file=str(data["inputs_file"]),
        expected_file=str(data["expected_file"]),
        tolerance={str(k): float(v) for k, v in data["tolerance"].items()},
    )


def _tensor(data: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"])
    )


def _model_file(data: Mapping[str, Any]) -> ModelFile:
    return ModelFile(
        format=str(data["format"]),
        runtime=str(data["runtime"]),
        precision=str(data["precision"]),
        model=_digest(data),
        companions=tuple(_digest(c) for c in data["companions"]),
    )


def _digest(data: Mapping[str, Any]) -> FileDigest:
    return FileDigest(str(data["file"]), int(data["size"]), str(data["sha256"]))
