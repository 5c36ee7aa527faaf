"""Parquet for batch scoring, through pyarrow when it is installed (it is optional).

pyarrow is imported on first use only, and its types and exceptions stay in this module: a
missing pyarrow is a `BatchError` that says `pip install pyarrow`; an unreadable file or an
unconvertible column is a `BatchError` naming the file and the column.

Reading: one row group at a time, the last one kept decoded, since chunk boundaries seldom fall
on row-group boundaries. A list column (fixed-size, variable or nested, every row the same
length) holds one row's values; a scalar column holds one value per row. Writing: one column
per output, a scalar column when an output has one value per row, else a fixed-size list of the
row's values in C order; one row group per chunk.
"""

from __future__ import annotations

import bisect
import importlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import numpy as np

from agent.batch_errors import BatchError
from agent.batch_sources import Column, Source
from agent.tensors import TensorSpec

INSTALL_HINT = "pip install pyarrow"


def import_pyarrow(path: Path) -> tuple[ModuleType, ModuleType]:
    """pyarrow and pyarrow.parquet, or a `BatchError` saying how to install them."""
    try:
        return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise BatchError(
            f"{path}: Parquet needs pyarrow, which is not installed ({exc}): {INSTALL_HINT}"
        ) from None


class ParquetSource(Source):
    """A Parquet file; its columns feed one or several model inputs."""

    holds_several = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pa, pq = import_pyarrow(path)
        try:
            self._file = pq.ParquetFile(str(path))
            metadata = self._file.metadata
            sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
        except Exception as exc:  # pyarrow's ArrowInvalid and OSError: no Parquet here
            raise BatchError(f"{path}: cannot read it as Parquet: {exc}") from exc
        self.names: tuple[str, ...] = tuple(self._file.schema_arrow.names)
        self.starts = [0, *np.cumsum(sizes).tolist()]  # row-group i holds [starts[i], starts[i+1])
        self.rows = int(metadata.num_rows)

    def column(self, spec: TensorSpec, exclusive: bool) -> Column:
        """The column named after the input, else (a single-input model) every column."""
        if spec.name in self.names:
            return ParquetColumn(self, (spec.name,))
        if exclusive:
            return ParquetColumn(self, self.names)
        raise BatchError(
            f"{self.path}: no column named {spec.name!r} for the model's input of that name "
            f"(columns: {', '.join(self.names)})"
        )

    def row_group(self, index: int, columns: tuple[str, ...]) -> np.ndarray:
        """Row group `index` of `columns` as an array with one row per Parquet row."""
        try:
            table = self._file.read_row_group(index, columns=list(columns))
            arrays = [self._values(table.column(name).combine_chunks(), name) for name in columns]
        except BatchError:
            raise
        except Exception as exc:
            raise BatchError(f"{self.path}: cannot read row group {index}: {exc}") from exc
        if len(arrays) == 1:
            return arrays[0]
        scalar = [a.reshape(len(a), -1) for a in arrays]
        return np.concatenate(scalar, axis=1)

    def _values(self, array: Any, name: str) -> np.ndarray:
        rows, types = len(array), self._pa.types
        if array.null_count:
            raise BatchError(f"{self.path}: column {name!r} has {array.null_count} null values")
        while (
            types.is_list(array.type)
            or types.is_large_list(array.type)
            or (types.is_fixed_size_list(array.type))
        ):
            if not types.is_fixed_size_list(array.type):
                lengths = np.diff(array.offsets.to_numpy())
                if len(lengths) and (lengths != lengths[0]).any():
                    raise BatchError(f"{self.path}: column {name!r} has lists of different lengths")
            array = array.flatten()
        values = np.asarray(array.to_numpy(zero_copy_only=False))
        if values.dtype.hasobject:
            raise BatchError(f"{self.path}: column {name!r} is not numeric ({array.type})")
        return values.reshape(rows, -1) if rows else values

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class ParquetColumn(Column):
    """Rows of one input taken from one or several Parquet columns."""

    def __init__(self, source: ParquetSource, columns: tuple[str, ...]) -> None:
        self.path = source.path
        self.rows = source.rows
        self._source = source
        self._columns = columns
        self._cached: tuple[int, np.ndarray] | None = None

    def read(self, start: int, stop: int, dtype: np.dtype[Any]) -> np.ndarray:
        """Rows `[start, stop)`, from the row groups that hold them."""
        starts = self._source.starts
        parts = []
        group = bisect.bisect_right(starts, start) - 1
        while start < stop:
            values = self._group(group)
            end = min(stop, starts[group + 1])
            parts.append(values[start - starts[group] : end - starts[group]])
            start, group = end, group + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _group(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, self._source.row_group(index, self._columns))
        return self._cached[1]


def write_parquet(
    handle: BinaryIO, path: Path, names: tuple[str, ...], chunks: Iterable[Mapping[str, Any]]
) -> None:
    """Write the outputs' chunks to `handle` as a Parquet file, one row group per chunk."""
    pa, pq = import_pyarrow(path)
    writer = None
    try:
        for chunk in chunks:
            table = pa.table({name: _arrow_column(pa, chunk[name]) for name in names})
            if writer is None:
                writer = pq.ParquetWriter(handle, table.schema)
            writer.write_table(table)
    except BatchError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid / ArrowNotImplementedError
        raise BatchError(f"{path}: cannot write the outputs as Parquet: {exc}") from exc
    finally:
        if writer is not None:
            writer.close()


def _arrow_column(pa: ModuleType, array: np.ndarray) -> Any:
    flat = pa.array(np.ascontiguousarray(array).reshape(-1))
    width = int(np.prod(array.shape[1:], dtype=np.int64))
    if array.ndim == 1 or (array.ndim == 2 and width == 1):
        return flat
    return pa.FixedSizeListArray.from_arrays(flat, width)
