"""Reading a dataset for batch scoring: `.npy`, `.npz`, CSV and Parquet files, chunk by chunk.

A `Source` is one input file. `bind_inputs` asks each source for the `Column` that feeds each
model input and checks the first row against the model's signature, so a wrong shape or dtype
fails before any work, naming the input and what the model expects. `Dataset.read` then returns
rows `[start, stop)` of every input, converted to the model's dtype and row shape, always as a
fresh C-contiguous copy: the copy is what makes a memory-mapped `.npy` fault its pages in on
the reader thread rather than on the thread that runs the model.

Formats: `.npy` is memory-mapped; `.npz` arrays (keyed by input name) are loaded when bound;
CSV is one row per line, its values flattened in C order, a first line that is not numeric is a
header, and it is read sequentially in chunks; Parquet (needs pyarrow) is read one row group at
a time: a column named after the input (a list column holds a row's values), else, for a file
that feeds one input, all its columns side by side.
"""

from __future__ import annotations

import abc
import itertools
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.batch_errors import BatchError
from agent.tensors import OIP_TO_NUMPY, TensorSpec

INPUT_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


class Column(abc.ABC):
    """The rows of one model input in one file, read in increasing order."""

    path: Path
    rows: int
    text = False  # CSV: values are parsed, so any numeric conversion is what was asked for
    views = False  # `read` returns views of the file's memory (copy them before use)

    @abc.abstractmethod
    def read(self, start: int, stop: int, dtype: np.dtype[Any]) -> np.ndarray:
        """Rows `[start, stop)` as stored (CSV: parsed as `dtype`'s kind); may be a view."""


class Source(abc.ABC):
    """One dataset file; it gives the column for an input, or says why it cannot."""

    path: Path
    holds_several = False  # .npz and Parquet may hold every input of a model

    @abc.abstractmethod
    def column(self, spec: TensorSpec, exclusive: bool) -> Column:
        """The column feeding `spec`; `exclusive` when this file feeds no other input."""

    def close(self) -> None:  # noqa: B027 - only some sources hold something to release
        """Release open files."""


def open_source(path: Path) -> Source:
    """Open a dataset file by its extension; raise `BatchError` if it is unknown or unreadable."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise BatchError(
            f"{path}: unknown input extension {suffix or '(none)'!r}; expected one of "
            f"{', '.join(INPUT_SUFFIXES)}"
        )
    if not path.is_file():
        raise BatchError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return NpySource(path)
        if suffix == ".npz":
            return NpzSource(path)
        if suffix == ".csv":
            return CsvSource(path)
        from agent.batch_parquet import ParquetSource  # here: it imports this module

        return ParquetSource(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BatchError(f"{path}: cannot read it as {suffix[1:]}: {exc}") from exc


class ArrayColumn(Column, Source):
    """An array with rows along its first axis: a memory-mapped `.npy`, or one `.npz` array."""

    views = True

    def __init__(self, path: Path, array: np.ndarray) -> None:
        if array.ndim == 0:
            raise BatchError(f"{path}: holds a single value, not rows")
        if array.dtype.hasobject:
            raise BatchError(f"{path}: holds Python objects; batch scoring reads numeric arrays")
        self.path = path
        self.array = array
        self.rows = int(array.shape[0])

    def read(self, start: int, stop: int, dtype: np.dtype[Any]) -> np.ndarray:
        """A view of the rows (the caller copies)."""
        return self.array[start:stop]

    def column(self, spec: TensorSpec, exclusive: bool) -> Column:
        """The whole array feeds the input."""
        return self


class NpySource(ArrayColumn):
    """A `.npy` file, memory-mapped (nothing is read until rows are asked for)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, np.load(path, mmap_mode="r", allow_pickle=False))


class NpzSource(Source):
    """A `.npz` file of arrays named after the model's inputs (each loaded when bound)."""

    holds_several = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._archive = np.load(path, allow_pickle=False)
        self.names = tuple(self._archive.files)

    def column(self, spec: TensorSpec, exclusive: bool) -> Column:
        """The array named after the input, or the only one for a single-input model."""
        if spec.name in self.names:
            name = spec.name
        elif exclusive and len(self.names) == 1:
            name = self.names[0]
        else:
            raise BatchError(
                f"{self.path}: no array named {spec.name!r} for the model's input of that name "
                f"(arrays: {', '.join(self.names) or 'none'})"
            )
        try:
            array = self._archive[name]
        except (OSError, ValueError) as exc:
            raise BatchError(f"{self.path}: cannot read array {name!r}: {exc}") from exc
        return ArrayColumn(self.path, array)

    def close(self) -> None:
        """Close the zip archive."""
        self._archive.close()


class CsvSource(Column, Source):
    """Comma-separated values, one row per line, read front to back in chunks."""

    text = True

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
        self._header = bool(first.strip()) and not _numeric(first)
        self.rows = _count_lines(path) - int(self._header)
        self._handle: IO[str] | None = None
        self._next = 0  # the row the open handle reads next

    def column(self, spec: TensorSpec, exclusive: bool) -> Column:
        """The whole file feeds the input."""
        return self

    def read(self, start: int, stop: int, dtype: np.dtype[Any]) -> np.ndarray:
        """Parse rows `[start, stop)`, reopening the file only to go backwards."""
        if self._handle is None or start < self._next:
            self.close()
            self._handle = self.path.open(encoding="utf-8")
            self._next = -int(self._header)
        handle = self._handle
        for _ in itertools.islice(handle, start - self._next):
            pass
        lines = list(itertools.islice(handle, stop - start))
        self._next = start + len(lines)
        where = f"{self.path}: data rows {start + 1}-{stop}"
        if len(lines) != stop - start or any(not line.strip() for line in lines):
            raise BatchError(f"{where}: the file has an empty line or ends early")
        parse = dtype if dtype.kind in "iu" else np.dtype(np.float64)
        try:
            values = np.loadtxt(lines, delimiter=",", dtype=parse, comments=None, ndmin=2)
        except ValueError as exc:
            raise BatchError(f"{where}: {exc}") from exc
        return values

    def close(self) -> None:
        """Close the file if it is open."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass(frozen=True, slots=True)
class BoundInput:
    """A column and what the model's input wants of it: datatype and shape of one row."""

    spec: TensorSpec
    column: Column
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...] | None  # None: keep the stored shape (variable dims)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `[start, stop)` in the model's dtype and row shape, as a C-contiguous copy."""
        stored = self.column.read(start, stop, self.dtype)
        where = f"input {self.spec.name!r} from {self.column.path}"
        rows = stored.shape[0]
        if self.row_shape is None:
            shaped = stored
            if not _fits(stored.shape[1:], self.spec.shape[1:]):
                raise BatchError(f"{where}: rows have shape {stored.shape[1:]}, {self._wants()}")
        elif stored.shape[1:] == self.row_shape or math.prod(stored.shape[1:]) == math.prod(
            self.row_shape
        ):
            shaped = stored.reshape(rows, *self.row_shape)
        else:
            raise BatchError(f"{where}: rows have shape {stored.shape[1:]}, {self._wants()}")
        lossy = stored.dtype != self.dtype and not _can_cast(stored.dtype, self.dtype)
        if lossy and not self.column.text:
            raise BatchError(
                f"{where}: {stored.dtype} values cannot be converted to {self.dtype} without "
                f"loss; {self._wants()}"
            )
        if self.column.views:  # the copy faults the mapped pages in on the reader thread
            return np.array(shaped, dtype=self.dtype, order="C", copy=True)
        return np.ascontiguousarray(shaped, dtype=self.dtype)

    def _wants(self) -> str:
        return f"the model expects {self.spec.datatype} {list(self.spec.shape)}"


@dataclass(frozen=True, slots=True)
class Dataset:
    """The bound inputs of a model, all with the same number of rows."""

    inputs: tuple[BoundInput, ...]
    rows: int

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows `[start, stop)` of every input, ready for the backend."""
        return {bound.spec.name: bound.read(start, stop) for bound in self.inputs}


def bind_inputs(
    sources: Sequence[tuple[str | None, Source]], specs: Sequence[TensorSpec]
) -> Dataset:
    """Match the files to the model's inputs and check their first row; raise `BatchError`."""
    if len(sources) == 1 and sources[0][0] is None:
        source = sources[0][1]
        if len(specs) > 1 and not source.holds_several:
            raise BatchError(
                f"the model has inputs {_names(specs)}: give --input NAME=FILE for each, or one "
                f".npz with arrays named after them"
            )
        columns = {spec.name: source.column(spec, len(specs) == 1) for spec in specs}
    else:
        by_name: dict[str, Source] = {}
        for name, source in sources:
            if name is None:
                raise BatchError("with several --input files, name each one: --input NAME=FILE")
            if name not in {spec.name for spec in specs}:
                raise BatchError(f"--input names {name!r}; the model's inputs are {_names(specs)}")
            by_name[name] = source
        missing = [spec.name for spec in specs if spec.name not in by_name]
        if missing:
            raise BatchError(f"no --input for the model's input(s) {', '.join(missing)}")
        columns = {spec.name: by_name[spec.name].column(spec, True) for spec in specs}
    bound = tuple(_bind(spec, columns[spec.name]) for spec in specs)
    counts = {b.spec.name: b.column.rows for b in bound}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}: {rows}" for name, rows in counts.items())
        raise BatchError(f"the inputs have different numbers of rows ({detail})")
    rows = next(iter(counts.values()))
    if rows == 0:
        raise BatchError(f"{bound[0].column.path}: the input has no rows")
    dataset = Dataset(bound, rows)
    dataset.read(0, 1)  # a wrong shape or dtype fails here, before the model runs
    return dataset


def _bind(spec: TensorSpec, column: Column) -> BoundInput:
    if spec.datatype == "BYTES":
        raise BatchError(f"input {spec.name!r} is BYTES: batch scoring reads numeric inputs only")
    if not spec.shape:
        raise BatchError(f"input {spec.name!r} has no batch dimension (shape [])")
    row = spec.shape[1:]
    return BoundInput(spec, column, OIP_TO_NUMPY[spec.datatype], None if -1 in row else row)


def _fits(found: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    if len(found) != len(wanted):
        return False
    return all(w in (-1, f) for f, w in zip(found, wanted, strict=True))


def _can_cast(found: np.dtype[Any], wanted: np.dtype[Any]) -> bool:
    try:
        return bool(np.can_cast(found, wanted, casting="same_kind"))
    except TypeError:  # ml_dtypes' bfloat16 against some dtypes
        return found.kind == "f"


def _names(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(spec.name for spec in specs)


def _numeric(line: str) -> bool:
    try:
        [float(value) for value in line.split(",")]
    except ValueError:
        return False
    return True


def _count_lines(path: Path) -> int:
    """Lines with content: newlines counted in blocks, trailing blank lines left out."""
    newlines, size = 0, 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            newlines += block.count(b"\n")
            size += len(block)
        handle.seek(max(0, size - 4096))
        tail = handle.read()
    stripped = tail.rstrip()
    if not stripped and size <= 4096:
        return 0
    return newlines - tail[len(stripped) :].count(b"\n") + 1
