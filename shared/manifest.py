"""The bundle manifest: what one model release holds; signed by a release key.

    {"type": "edgefleet-manifest/1", "name", "version", "created_at",
     "files": [{"path", "sha256", "size"}],                    every file of the bundle
     "variants": [{"runtime", "precision", "file", "devices"}], ways to run the model
     "inputs" / "outputs": [{"name", "datatype", "shape"}],     OIP datatypes, -1 = variable
     "compatibility": {"min_runtime_versions", "cpu_features", "min_memory_bytes"},
     "golden": {"inputs_file", "expected_file", "tolerance"},  .npz files listed in "files"
     "batching": {"max_batch_size", "preferred_batch_sizes"},
     "policy": "latency" | "throughput",
     "labels": {output name: [class label, ...]}}

An empty `devices` list means any device the runtime offers. `from_json` is the only way in
from bytes and checks everything (types, unknown or missing fields, cross-references such as a
variant naming a file the manifest does not list); `write_bundle` runs the same check on what
it is about to sign. File paths are relative, `/`-separated, made of `[A-Za-z0-9._+-]` parts
that do not start with a dot, at most 94 characters (so `files/<path>` fits a ustar name).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.canonical import canonical_json
from shared.strict_json import HEX_SHA256, JsonFields
from shared.trust_errors import ManifestError

MANIFEST_TYPE = "edgefleet-manifest/1"
POLICIES = ("latency", "throughput")
# Open Inference Protocol datatypes (the agent maps them to numpy in `agent.tensors`).
DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
    | {"FP16", "FP32", "FP64", "BF16", "BYTES"}
)
MAX_PATH_LENGTH = 94
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PATH = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*")


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the bundle: its path inside `files/`, SHA-256 (hex) and size in bytes."""

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, path: str, source: Path) -> FileEntry:
        """Hash a local file for the manifest."""
        with source.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256")
            return cls(path, digest.hexdigest(), handle.tell())


@dataclass(frozen=True, slots=True)
class Variant:
    """One way to run the model: a runtime, a precision, the file it loads, device hints."""

    runtime: str
    precision: str
    file: str
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TensorSignature:
    """Name, OIP datatype and shape (-1 = variable) of a model input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Compatibility:
    """What a device needs: runtime versions, CPU features, memory."""

    min_runtime_versions: dict[str, str] = field(default_factory=dict)
    cpu_features: tuple[str, ...] = ()
    min_memory_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Golden:
    """Golden test vectors: an inputs .npz, the expected outputs .npz, and the tolerance."""

    inputs_file: str
    expected_file: str
    tolerance: float


@dataclass(frozen=True, slots=True)
class BatchingHints:
    """The largest batch the model takes and the batch sizes it runs best at."""

    max_batch_size: int = 1
    preferred_batch_sizes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything a release says about itself; the signature covers its canonical bytes."""

    name: str
    version: int
    created_at: float
    files: tuple[FileEntry, ...]
    variants: tuple[Variant, ...]
    inputs: tuple[TensorSignature, ...]
    outputs: tuple[TensorSignature, ...]
    compatibility: Compatibility
    golden: Golden
    batching: BatchingHints
    policy: str = "latency"
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def file(self, path: str) -> FileEntry:
        """Return the entry for `path`; raise KeyError if the manifest does not list it."""
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    @property
    def total_size(self) -> int:
        """The sum of the files' sizes."""
        return sum(entry.size for entry in self.files)

    def as_json(self) -> dict[str, object]:
        """Return the manifest as plain JSON data (dicts, lists, strings, numbers)."""
        return {"type": MANIFEST_TYPE, **asdict(self, dict_factory=_plain_dict)}

    def to_bytes(self) -> bytes:
        """The canonical JSON bytes that the release signature covers."""
        return canonical_json(self.as_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Parse and check manifest bytes; raise `ManifestError` naming the field at fault."""
        return cls.from_json(JsonFields.parse(data, "manifest", ManifestError).raw)

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Check and read manifest JSON data; raise `ManifestError` naming the field at fault."""
        fields = JsonFields(data, "manifest", ManifestError)
        if fields.text("type") != MANIFEST_TYPE:
            fields.fail("type", f"expected {MANIFEST_TYPE!r}")
        files = tuple(_file_entry(item) for item in _non_empty(fields, "files"))
        paths = {entry.path for entry in files}
        if len(paths) != len(files):
            fields.fail("files", "a path is listed twice")
        folders = {path.rsplit("/", i)[0] for path in paths for i in range(1, path.count("/") + 1)}
        if paths & folders:
            fields.fail("files", f"{min(paths & folders)!r} is both a file and a folder")
        inputs = _tensors(fields, "inputs")
        outputs = _tensors(fields, "outputs")
        manifest = cls(
            name=fields.text("name", MODEL_NAME, "a model name of [A-Za-z0-9._-]"),
            version=fields.integer("version", minimum=1),
            created_at=fields.number("created_at", minimum=0),
            files=files,
            variants=tuple(_variant(item, paths) for item in _non_empty(fields, "variants")),
            inputs=inputs,
            outputs=outputs,
            compatibility=_compatibility(fields.child("compatibility")),
            golden=_golden(fields.child("golden"), paths),
            batching=_batching(fields.child("batching")),
            policy=fields.text("policy"),
            labels=fields.texts_map("labels"),
        )
        if manifest.policy not in POLICIES:
            fields.fail(
                "policy", f"expected one of {', '.join(POLICIES)}, found {manifest.policy!r}"
            )
        names = {t.name for t in outputs}
        for output in manifest.labels:
            if output not in names:
                fields.fail(f"labels.{output}", "the model has no output of that name")
        fields.finish()
        return manifest


def _plain_dict(items: list[tuple[str, object]]) -> dict[str, object]:
    """`asdict` keeps tuples as tuples; JSON data has lists."""
    return {key: _plain(value) for key, value in items}


def _plain(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _non_empty(fields: JsonFields, key: str) -> list[JsonFields]:
    items = fields.children(key)
    if not items:
        fields.fail(key, "the list is empty")
    return items


def _file_entry(fields: JsonFields) -> FileEntry:
    path = fields.text("path")
    problem = path_problem(path)
    if problem:
        fields.fail("path", f"{problem}, found {path!r}")
    entry = FileEntry(
        path=path,
        sha256=fields.text("sha256", HEX_SHA256, "64 lowercase hex characters"),
        size=fields.integer("size", minimum=0),
    )
    fields.finish()
    return entry


def _variant(fields: JsonFields, paths: set[str]) -> Variant:
    variant = Variant(
        runtime=fields.text("runtime"),
        precision=fields.text("precision"),
        file=_listed(fields, "file", paths),
        devices=fields.texts("devices"),
    )
    fields.finish()
    return variant


def _listed(fields: JsonFields, key: str, paths: set[str]) -> str:
    path = fields.text(key)
    if path not in paths:
        fields.fail(key, f"{path!r} is not among the manifest's files")
    return path


def _tensors(fields: JsonFields, key: str) -> tuple[TensorSignature, ...]:
    tensors = []
    for item in _non_empty(fields, key):
        datatype = item.text("datatype")
        if datatype not in DATATYPES:
            item.fail("datatype", f"{datatype!r} is not an Open Inference Protocol datatype")
        tensors.append(TensorSignature(item.text("name"), datatype, item.integers("shape", -1)))
        item.finish()
    if len({t.name for t in tensors}) != len(tensors):
        fields.fail(key, "a tensor name is used twice")
    return tuple(tensors)


def _compatibility(fields: JsonFields) -> Compatibility:
    compatibility = Compatibility(
        min_runtime_versions=fields.text_map("min_runtime_versions"),
        cpu_features=fields.texts("cpu_features"),
        min_memory_bytes=fields.integer("min_memory_bytes", minimum=0),
    )
    fields.finish()
    return compatibility


def _golden(fields: JsonFields, paths: set[str]) -> Golden:
    golden = Golden(
        inputs_file=_listed(fields, "inputs_file", paths),
        expected_file=_listed(fields, "expected_file", paths),
        tolerance=fields.number("tolerance", minimum=0),
    )
    fields.finish()
    return golden


def _batching(fields: JsonFields) -> BatchingHints:
    hints = BatchingHints(
        max_batch_size=fields.integer("max_batch_size", minimum=1),
        preferred_batch_sizes=fields.integers("preferred_batch_sizes", minimum=1),
    )
    if any(size > hints.max_batch_size for size in hints.preferred_batch_sizes):
        fields.fail("preferred_batch_sizes", "a size is above max_batch_size")
    fields.finish()
    return hints


def path_problem(path: str) -> str | None:
    """Say why `path` is not an acceptable bundle file path, or return None."""
    if len(path) > MAX_PATH_LENGTH:
        return f"longer than {MAX_PATH_LENGTH} characters"
    if not _PATH.fullmatch(path):
        return "expected a relative path of [A-Za-z0-9._+-] parts not starting with a dot"
    return None
