"""What makes batch scoring resumable: chunk files and a journal in `OUTPUT.partial/`.

    OUTPUT.partial/
        journal.json          the job's key and the chunks completed, as ranges
        chunk-000000.npz      the selected outputs of chunk 0 (arrays arr_0, arr_1, ... in order)
        ...

A chunk file is written atomically (temporary file, fsync, rename) before the journal names
it, and the journal itself is replaced atomically, so after a `kill -9` or a power cut every
chunk the journal lists is complete; a chunk written but not yet listed is computed again.

The key says what the chunks were computed from: each input file's size, mtime and the SHA-256
of its first MiB, the model's digest, the backend that ran it, the batch and chunk sizes and the
outputs kept. A restart resumes only under the same key. The backend is part of it because two
backends may differ in the last bits of a float; a restart therefore runs the recorded backend
again (`recorded_backend`) instead of measuring afresh, and the assembled output is identical to
that of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.batch_errors import BatchError
from shared.atomic import atomic_writer, write_atomic

JOURNAL = "journal.json"
JOURNAL_TYPE = "edgefleet-batch-journal/1"
HEAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class FileFingerprint:
    """An input file as it was when scoring began: cheap to take, and changes with the file."""

    path: str
    size: int
    mtime_ns: int
    head_sha256: str  # of the first MiB

    @classmethod
    def of(cls, path: Path) -> FileFingerprint:
        """Fingerprint the file at `path`."""
        stat = path.stat()
        with path.open("rb") as handle:
            head = hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest()
        return cls(str(path.resolve()), stat.st_size, stat.st_mtime_ns, head)


@dataclass(frozen=True, slots=True)
class JobKey:
    """Everything the chunk files depend on; resuming requires the same key."""

    inputs: tuple[FileFingerprint, ...]
    model_digest: str
    backend: str  # the candidate key, e.g. onnxruntime/CPU/mlp.onnx
    batch_size: int
    chunk_rows: int
    rows: int
    outputs: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """The key as JSON-ready data."""
        data = asdict(self)
        data["inputs"] = [asdict(f) for f in self.inputs]
        data["outputs"] = list(self.outputs)
        return data


class Journal:
    """The partial directory of one output: chunk files and the journal naming them."""

    def __init__(self, output: Path) -> None:
        self.directory = output.with_name(output.name + ".partial")
        self._key: dict[str, Any] | None = None
        self._completed: set[int] = set()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the partial directory for this run; a second run on the same output is refused.

        A systemd timer never starts a unit that is still running, but cron or a person can;
        two runs saving chunks into one directory would overwrite each other's journal.
        """
        try:
            self.directory.mkdir(exist_ok=True)
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BatchError(f"cannot create {self.directory}: {exc.strerror or exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BatchError(
                    f"another edgefleet batch is writing {self.directory}: two runs cannot "
                    f"write the same output at once"
                ) from None
            try:
                yield
            finally:
                if not self._completed:  # a run that failed before saving anything
                    with contextlib.suppress(OSError):
                        (self.directory / JOURNAL).unlink(missing_ok=True)
                        self.directory.rmdir()
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.directory / JOURNAL).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable: the chunks cannot be trusted, start over
        return data if isinstance(data, dict) and data.get("type") == JOURNAL_TYPE else None

    def recorded_backend(self, model_digest: str, inputs: Sequence[FileFingerprint]) -> str | None:
        """The backend an interrupted run of this model on these inputs used, if there is one."""
        data = self._read()
        if data is None:
            return None
        key = data.get("key", {})
        same = key.get("model_digest") == model_digest and key.get("inputs") == [
            asdict(f) for f in inputs
        ]
        backend = key.get("backend")
        return backend if same and isinstance(backend, str) else None

    def open(self, key: JobKey) -> tuple[set[int], str | None]:
        """Resume under `key` or start afresh; return the chunks done and why it started over.

        Call it inside `locked()`, which made the directory.
        """
        data = self._read()
        wanted = key.as_json()
        resume = data is not None and data.get("key") == wanted
        self._completed = set()
        if resume and data is not None:
            listed = {i for start, stop in data.get("completed", []) for i in range(start, stop)}
            self._completed = {i for i in listed if self.chunk_path(i).is_file()}
        reason = None
        try:
            # What a killed atomic write left, and when starting over everything else too.
            stale = [e for e in self.directory.iterdir() if e.name.endswith(".tmp") or not resume]
            if any(not e.name.endswith(".tmp") for e in stale):
                reason = (
                    f"{self.directory} holds the chunks of another input, model or settings (or "
                    f"an unreadable journal): starting over"
                )
            for entry in stale:
                entry.unlink()
        except OSError as exc:
            raise BatchError(f"cannot clear {self.directory}: {exc.strerror or exc}") from exc
        self._key = wanted
        self._write()
        return set(self._completed), reason

    def chunk_path(self, index: int) -> Path:
        """Where chunk `index` is kept."""
        return self.directory / f"chunk-{index:06d}.npz"

    def save_chunk(self, index: int, outputs: Sequence[np.ndarray]) -> None:
        """Write chunk `index` durably, then record it in the journal (blocking: fsyncs)."""
        with atomic_writer(self.chunk_path(index)) as handle:
            np.savez(handle, *outputs)
        self._completed.add(index)
        self._write()

    def load_output(self, index: int, position: int) -> np.ndarray:
        """Output number `position` (in the key's order) of chunk `index`."""
        path = self.chunk_path(index)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                array: np.ndarray = arrays[f"arr_{position}"]
                return array
        except (OSError, KeyError, ValueError) as exc:
            raise BatchError(f"{path}: cannot read a saved chunk ({exc}); delete it") from exc

    def remove(self) -> None:
        """Delete the partial directory (after the output was assembled)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write(self) -> None:
        journal = {"type": JOURNAL_TYPE, "key": self._key, "completed": _ranges(self._completed)}
        data = json.dumps(journal, indent=1, sort_keys=True).encode() + b"\n"
        write_atomic(self.directory / JOURNAL, data)


def _ranges(indices: set[int]) -> list[list[int]]:
    """`{0, 1, 2, 5}` -> `[[0, 3], [5, 6]]` (half-open), so the journal stays small."""
    ranges: list[list[int]] = []
    for index in sorted(indices):
        if ranges and ranges[-1][1] == index:
            ranges[-1][1] = index + 1
        else:
            ranges.append([index, index + 1])
    return ranges


def model_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the model files (and an OpenVINO IR's weights), by name and content."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        parts = [path]
        weights = path.with_suffix(".bin")
        if path.suffix == ".xml" and weights.is_file():
            parts.append(weights)
        for part in parts:
            with part.open("rb") as handle:
                file_hash = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{part.name}\0{file_hash}\0".encode())
    return digest.hexdigest()
