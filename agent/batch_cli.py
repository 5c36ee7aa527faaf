"""`edgefleet batch`: score a dataset file with a model, resumably (see `agent.batch`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.batch import BatchJob, run_batch
from agent.batch_model import SelectionOptions
from agent.batch_progress import Progress, StreamProgress
from agent.errors import AgentError
from agent.selection import POLICIES
from shared.trust_errors import TrustError

DESCRIPTION = """\
Score every row of a dataset file with a model and write the outputs to a file. The rows go
through the same runtimes and accelerator selection as `agent serve`, in large batches, read,
run and written in overlapping chunks. Each finished chunk is saved in OUTPUT.partial/ with a
journal, so an interrupted run (Ctrl-C, kill -9, power cut) started again with the same
command resumes where it stopped and writes the same bytes an uninterrupted run would.

Inputs: .npy (memory-mapped), .npz (arrays named after the model's inputs), .csv (one row per
line, values flattened; a non-numeric first line is a header), .parquet (needs pyarrow; a
column named after the input, or all columns). The model's first input takes the rows of a
single file; give a multi-input model --input NAME=FILE for each input, or one .npz.
Outputs: .npy (one output), .npz, .csv, .parquet.
"""

EPILOG = """\
examples:
  edgefleet batch --model mlp=mlp.onnx,mlp.tflite --input rows.npy --output scores.npy
  edgefleet batch --bundle mlp-3.bundle --keys ./keys --input rows.csv --output scores.parquet

Progress goes to stderr (a bar on a terminal, a line every --progress-interval seconds
otherwise), the summary table to stdout. Exit status: 0 done, 1 error, 130 interrupted.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `batch` command."""
    parser = subparsers.add_parser(
        "batch",
        help="score a dataset file with a model, in large batches, resumably",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument(
        "--model", metavar="NAME=PATH[,PATH...]",
        help="local model files, each a variant; the selector measures them",
    )  # fmt: skip
    model.add_argument("--bundle", type=Path, metavar="FILE", help="a signed model bundle")
    trust = parser.add_argument_group("verifying a --bundle (one of these is required)")
    trust.add_argument(
        "--keys", type=Path, metavar="DIR", help="key directory (root.pub, keylist.json)"
    )
    trust.add_argument("--root-key", type=Path, metavar="FILE", help="pinned root key (root.pub)")
    trust.add_argument("--keylist", type=Path, metavar="FILE", help="key list (keylist.json)")
    trust.add_argument(
        "--insecure", action="store_true",
        help="score with a bundle WITHOUT verifying its signature or contents",
    )  # fmt: skip
    parser.add_argument(
        "--input", "-i", action="append", required=True, metavar="[NAME=]FILE",
        help="the dataset; repeat as NAME=FILE for each input of a multi-input model",
    )  # fmt: skip
    parser.add_argument(
        "--output", "-o", required=True, type=Path, metavar="FILE",
        help="where to write the outputs: .npy, .npz, .csv or .parquet",
    )  # fmt: skip
    parser.add_argument(
        "--outputs", metavar="NAME[,NAME...]", help="the outputs to write (default: all)"
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N",
        help="rows per backend call (default: the bundle's max batch, else 256)",
    )  # fmt: skip
    parser.add_argument(
        "--chunk-rows", type=int, metavar="N",
        help="rows per saved chunk, rounded to whole batches (default: about 16 MiB of input)",
    )  # fmt: skip
    parser.add_argument(
        "--policy", choices=POLICIES, default="throughput",
        help="what the selection optimises (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--pin", metavar="RUNTIME[/DEVICE]", help="skip measuring, e.g. onnxruntime/CPU"
    )
    parser.add_argument(
        "--selection-budget", type=float, default=3.0, metavar="SECONDS",
        help="time to measure the candidates (default %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N",
        help="intra-op threads of the runtime (default: the runtime's choice)",
    )  # fmt: skip
    parser.add_argument(
        "--state", type=Path, metavar="DIR",
        help="keep the selection cache here, so scheduled runs do not measure again",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--progress-interval", type=float, default=10.0, metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 10)",
    )  # fmt: skip
    parser.set_defaults(func=_batch)


def _batch(args: argparse.Namespace) -> int:
    job = BatchJob(
        inputs=tuple(_input(value) for value in args.input),
        output=args.output,
        model=args.model,
        bundle=args.bundle,
        keys=args.keys,
        root_key=args.root_key,
        keylist=args.keylist,
        insecure=args.insecure,
        outputs=tuple(n for n in (args.outputs or "").split(",") if n),
        batch_size=args.batch_size,
        chunk_rows=args.chunk_rows,
        selection=SelectionOptions(
            policy=args.policy,
            pin=args.pin,
            budget_s=args.selection_budget,
            threads=args.threads,
            state_dir=args.state,
        ),
        force=args.force,
    )
    progress = (
        Progress()
        if args.quiet
        else StreamProgress(sys.stderr, sys.stderr.isatty(), args.progress_interval)
    )
    try:
        summary = run_batch(job, progress)
    except (AgentError, TrustError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        reason = f"{error.filename}: {error.strerror}" if error.filename else str(error)
        print(f"error: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: the finished chunks are kept in {args.output}.partial/; run the "
            "same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(summary.table())
    return 0


def _input(value: str) -> tuple[str | None, Path]:
    """`NAME=FILE` or `FILE` (a file whose name holds `=` is taken whole when it exists)."""
    name, sep, path = value.partition("=")
    if sep and name and path and not Path(value).exists():
        return name, Path(path)
    return None, Path(value)
