"""The `edgefleet sample-models DIR` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# None of these import a runtime package (onnx, onnxruntime, openvino, ai-edge-litert): those
# load only while models are written, so `edgefleet --help` stays fast.
from agent.sample_models.errors import SampleModelsError
from agent.sample_models.index import INDEX_FILE, SampleIndex
from agent.sample_models.writer import write_sample_models

_DESCRIPTION = """\
Write small deterministic sample models for tests, demos and benchmarks into DIR.

Two networks are generated offline from a fixed seed (nothing is downloaded):
  mlp  input "input" FP32 [N,64] -> output "probabilities" FP32 [N,10]
  cnn  input "image" FP32 [N,3,32,32] (NCHW) -> output "logits" FP32 [N,10]

Each is written as FP32 ONNX (<model>.onnx), INT8 ONNX (<model>.int8.onnx), OpenVINO IR
(<model>.xml + .bin) and TFLite (<model>.tflite), with fixed inputs (<model>.inputs.npz),
outputs expected from a numpy reference (<model>.expected.npz) and an index, samples.json,
listing every file with its runtime, precision, sha256 and tolerance. Existing files are
overwritten. OpenVINO IR and TFLite are skipped, with a warning, when the openvino or
ai-edge-litert package is missing; the onnx package is required.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `sample-models` subcommand."""
    parser = subparsers.add_parser(
        "sample-models",
        help="write small deterministic sample models (ONNX, INT8, OpenVINO IR, TFLite)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: edgefleet sample-models ./samples",
    )
    parser.add_argument(
        "directory",
        metavar="DIR",
        type=Path,
        help="directory to write into (created if missing)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    try:
        index = write_sample_models(directory, progress=lambda line: print(line, flush=True))
    except SampleModelsError as exc:
        print(f"edgefleet sample-models: error: {exc}", file=sys.stderr)
        return 1
    print()
    print(format_table(index))
    print(f"\nindex: {directory / INDEX_FILE}")
    return 0


def format_table(index: SampleIndex) -> str:
    """Render the written files as a table: model, format, runtime, precision, file, size."""
    rows = [("model", "format", "runtime", "precision", "file", "size")]
    for model in index.models:
        for entry in model.files:
            name = " + ".join([entry.model.file, *(c.file for c in entry.companions)])
            size = f"{entry.total_size / 1024:.1f} KiB"
            rows.append((model.name, entry.format, entry.runtime, entry.precision, name, size))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, row[-1].rjust(widths[-1])]))
    return "\n".join(lines)
