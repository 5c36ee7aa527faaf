"""Fuzz: Hypothesis against the inference API, the trust parsers and the control-plane API.

The fuzz tests live in `tests/fuzz`, where `make test` runs them with a small budget. This
scenario runs the same tests in a child process with `options.fuzz_examples` examples per
target and a seed, bounded by a timeout, and reads back the line each target appends to a
report file (`tests/fuzz/recorder.py`): examples run, failures, and the HTTP statuses or
parser outcomes seen. Each target is one figure, held to zero failures; a target that failed
names its test in the notes, and the pytest output (kept in the scratch directory) holds the
shrunk example and how to reproduce it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.outcome import ChaosOptions, Figure, Outcome

REPO = Path(__file__).resolve().parents[2]
FUZZ_TESTS = "tests/fuzz"
# Read by tests/fuzz/budget.py and tests/fuzz/recorder.py in the child process.
EXAMPLES_ENV = "EDGEFLEET_FUZZ_EXAMPLES"
REPORT_ENV = "EDGEFLEET_FUZZ_REPORT"
# A bound for a hung run, not an expected duration: about 0.1 s per example and target is
# typical on 2 vCPUs, and there are about a dozen targets.
BASE_TIMEOUT_S = 300.0
TIMEOUT_S_PER_EXAMPLE = 3.0


@dataclass
class TargetFigures:
    """What the report says about one fuzz target (summed if it reported more than once)."""

    examples: int = 0
    failures: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class PytestRun:
    """How the child pytest ended: its exit status (None: timed out), time and output."""

    returncode: int | None
    seconds: float
    output: str


def timeout_s(options: ChaosOptions) -> float:
    """The limit of the whole pytest run."""
    return BASE_TIMEOUT_S + TIMEOUT_S_PER_EXAMPLE * options.fuzz_examples


def run_pytest(options: ChaosOptions, report: Path) -> PytestRun:
    """Run `pytest tests/fuzz` with the options' budget and seed; keep its output in `work`."""
    env = {**os.environ, EXAMPLES_ENV: str(options.fuzz_examples), REPORT_ENV: str(report)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={options.seed}",
        FUZZ_TESTS,
    ]
    log = options.work / "pytest-output.txt"
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        try:
            finished = subprocess.run(
                command,
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s(options),
                check=False,
            )
            returncode: int | None = finished.returncode
        except subprocess.TimeoutExpired:
            returncode = None
    return PytestRun(returncode, time.monotonic() - started, log.read_text(errors="replace"))


def read_report(report: Path) -> dict[str, TargetFigures]:
    """The report's lines by target, in the order the targets first reported."""
    targets: dict[str, TargetFigures] = {}
    if not report.exists():
        return targets
    for line in report.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a killed run: its target reported nothing
            continue
        figures = targets.setdefault(str(entry["target"]), TargetFigures())
        figures.examples += int(entry["examples"])
        figures.failures += int(entry["failures"])
        figures.statuses.update({str(k): int(v) for k, v in entry.get("statuses", {}).items()})
    return targets


def _seen(statuses: Counter[str]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in sorted(statuses.items()))


def _failed_tests(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]


def run(options: ChaosOptions) -> Outcome:
    """Fuzz every target in `tests/fuzz` with `options.fuzz_examples` examples each."""
    report = options.work / "fuzz-report.jsonl"
    report.unlink(missing_ok=True)
    pytest_run = run_pytest(options, report)
    targets = read_report(report)
    figures = [
        Figure(
            f"{name}: failures",
            f"{found.failures} in {found.examples} examples",
            "0",
            met=found.failures == 0,
        )
        for name, found in targets.items()
    ]
    if pytest_run.returncode is None:
        ended = f"timed out after {pytest_run.seconds:.0f} s"
    else:
        verdict = "passed" if pytest_run.returncode == 0 else f"exit {pytest_run.returncode}"
        ended = f"{verdict} in {pytest_run.seconds:.0f} s"
    figures.append(Figure("pytest tests/fuzz", ended, "passes", met=pytest_run.returncode == 0))
    notes = [f"{name}: seen {_seen(found.statuses)}" for name, found in targets.items()]
    notes.append(
        "501 is the agent's documented answer to a protocol feature it does not implement "
        "(an unknown Content-Encoding, sequence batching, shared memory); answers marked "
        "'(HTTP layer)' come from aiohttp before the application (its parser's 400, the 417 "
        "for an unknown Expect); 'closed' is a connection that never sent its promised body."
    )
    notes += [f"failed: {line}" for line in _failed_tests(pytest_run.output)]
    did = (
        f"Ran `pytest {FUZZ_TESTS}` in a child process with Hypothesis seed {options.seed} and "
        f"{options.fuzz_examples} examples per target ({len(targets)} targets: "
        f"{'; '.join(targets) or 'none reported'}). The inference API of a live agent serving "
        "real ONNX models got generated, edited and byte-mutated Open Inference Protocol "
        "requests (JSON and binary tensors), broken HTTP framing and odd paths: never a 5xx "
        "but 501, every error a JSON message, exact answers to valid requests. A signed "
        "bundle got byte, tar-member, manifest and signature mutations, verified and "
        "extracted; assignments and key lists got edited, re-signed and re-serialized: only "
        "the parsers' own errors, nothing written outside the extraction directory. The "
        "control-plane API got every operation of its OpenAPI document (schemathesis) as each "
        "kind of caller: no 5xx, the route table's authorization, JSON errors."
    )
    return Outcome("fuzz", "Fuzzing", did, figures, notes)
