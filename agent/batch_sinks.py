"""Writing batch-scoring results: the final output file, assembled from the saved chunks.

`.npy` holds one output; `.npz` one array per output (a stored, uncompressed zip with fixed
timestamps, so the same results always give the same bytes); CSV a header and one line per
row, each output's values flattened into columns `NAME` (one value per row) or `NAME_0`,
`NAME_1`, ...; Parquet (needs pyarrow) a column per output. The file is written through
`shared.atomic.atomic_writer`: readers see no file, or the complete one.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np

from agent.batch_errors import BatchError
from agent.batch_parquet import import_pyarrow, write_parquet
from shared.atomic import atomic_writer

OUTPUT_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: no wall-clock time in the bytes

# (chunk index, output position) -> that output's rows in the chunk
ChunkLoader = Callable[[int, int], np.ndarray]


def check_output(path: Path, force: bool) -> None:
    """Refuse an unknown extension, a missing directory, or an existing file without `force`."""
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise BatchError(
            f"{path}: unknown output extension {suffix or '(none)'!r}; expected one of "
            f"{', '.join(OUTPUT_SUFFIXES)}"
        )
    if not path.parent.is_dir():
        raise BatchError(f"{path}: the directory {path.parent} does not exist")
    if path.exists() and not force:
        raise BatchError(f"{path} already exists: use --force to replace it")
    if suffix == ".parquet":
        import_pyarrow(path)  # say so now, not after the scoring


def check_format(path: Path, outputs: Sequence[str]) -> None:
    """`.npy` holds a single array: refuse several outputs for it."""
    if path.suffix.lower() == ".npy" and len(outputs) != 1:
        raise BatchError(
            f"{path}: a .npy file holds one output, the model has {', '.join(outputs)}: choose "
            f"one with --outputs NAME, or write .npz, .csv or .parquet"
        )


def remove_stale_temporaries(path: Path) -> None:
    """Delete what a run killed while writing `path` left beside it (`.NAME.*.tmp`)."""
    for entry in path.parent.iterdir():
        if entry.name.startswith(f".{path.name}.") and entry.name.endswith(".tmp"):
            entry.unlink(missing_ok=True)


def assemble(path: Path, names: Sequence[str], chunks: int, rows: int, load: ChunkLoader) -> None:
    """Write the final output from `chunks` saved chunks holding `rows` rows in all."""
    suffix = path.suffix.lower()
    with atomic_writer(path) as handle:
        if suffix == ".npy":
            _write_npy(handle, rows, (load(i, 0) for i in range(chunks)))
        elif suffix == ".npz":
            _write_npz(handle, names, chunks, rows, load)
        elif suffix == ".csv":
            _write_csv(handle, names, chunks, load)
        else:
            blocks = ({name: load(i, k) for k, name in enumerate(names)} for i in range(chunks))
            write_parquet(handle, path, tuple(names), blocks)


def _write_npy(handle: IO[bytes], rows: int, blocks: Iterator[np.ndarray]) -> None:
    """A `.npy` header for all rows, then each block's bytes: the file never holds in memory."""
    first = next(blocks)
    header = {
        "descr": np.lib.format.dtype_to_descr(first.dtype),
        "fortran_order": False,
        "shape": (rows, *first.shape[1:]),
    }
    try:
        np.lib.format.write_array_header_1_0(handle, header)
    except ValueError:  # a header over 64 KiB (a very long shape or record dtype)
        np.lib.format.write_array_header_2_0(handle, header)
    for block in (first, *blocks):
        handle.write(np.ascontiguousarray(block).view(np.uint8).data)


def _write_npz(
    handle: BinaryIO, names: Sequence[str], chunks: int, rows: int, load: ChunkLoader
) -> None:
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for k, name in enumerate(names):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                _write_npy(member, rows, (load(i, k) for i in range(chunks)))


def _write_csv(handle: BinaryIO, names: Sequence[str], chunks: int, load: ChunkLoader) -> None:
    first = [load(0, k) for k in range(len(names))]
    widths = [int(np.prod(b.shape[1:], dtype=np.int64)) for b in first]
    columns = [c for name, width in zip(names, widths, strict=True) for c in _columns(name, width)]
    handle.write((",".join(columns) + "\n").encode())
    formats = [_format(b.dtype) for b, w in zip(first, widths, strict=True) for _ in range(w)]
    # One table per chunk for savetxt: integers stay exact as int64, anything else as float64
    # (which holds every float32 and float16 value exactly, so %.9g prints the same digits).
    common = np.int64 if all(b.dtype.kind in "biu" for b in first) else np.float64
    for i in range(chunks):
        blocks = first if i == 0 else [load(i, k) for k in range(len(names))]
        table = np.hstack([b.reshape(len(b), -1).astype(common) for b in blocks])
        np.savetxt(handle, table, fmt=formats, delimiter=",")


def _columns(name: str, width: int) -> list[str]:
    return [name] if width == 1 else [f"{name}_{j}" for j in range(width)]


def _format(dtype: np.dtype[Any]) -> str:
    """Enough digits to read back the same value (`%.9g` round-trips a float32)."""
    if dtype.kind in "biu":
        return "%d"
    return "%.17g" if dtype.itemsize > 4 else "%.9g"
