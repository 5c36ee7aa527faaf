"""Progress of a batch-scoring run on stderr, and the summary table printed at the end.

On a terminal, one line redrawn in place (a bar, rows done, rows/s and the time left), at most
ten times a second; otherwise (a log file, the systemd journal) a plain line every `interval`
seconds and one at the end; with `--quiet`, nothing. Rates count only the rows scored by this
run, so a resumed run does not claim the rows of the one it resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from shared.table import format_rows

Clock = Callable[[], float]
BAR_WIDTH = 24
REDRAW_S = 0.1


class Progress:
    """Silent progress (`--quiet`); the base of the visible kinds."""

    def start(self, total: int, done: int) -> None:
        """Scoring begins: `total` rows, of which `done` were scored by an earlier run."""

    def advance(self, rows: int) -> None:
        """`rows` more rows are scored."""

    def finish(self) -> None:
        """Scoring is over (completed or interrupted)."""

    def note(self, message: str) -> None:
        """Say something worth knowing (a resume, a fresh start)."""


class StreamProgress(Progress):
    """Progress written to a stream: a redrawn bar on a terminal, plain lines otherwise."""

    def __init__(
        self,
        stream: TextIO,
        tty: bool,
        interval: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._interval = interval
        self._clock = clock
        self._total = self._done = self._resumed = 0
        self._started = self._shown = 0.0

    def start(self, total: int, done: int) -> None:
        """Remember where the run starts."""
        self._total, self._done, self._resumed = total, done, done
        self._started = self._shown = self._clock()
        if not self._tty:
            self._stream.write(f"scoring {total:,} rows ({done:,} done before)\n")
            self._stream.flush()

    def advance(self, rows: int) -> None:
        """Count rows; redraw or print when it is time."""
        self._done += rows
        now = self._clock()
        if now - self._shown >= (REDRAW_S if self._tty else self._interval):
            self._shown = now
            self._show(now)

    def finish(self) -> None:
        """Show the final state and end the line."""
        self._show(self._clock())
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def note(self, message: str) -> None:
        """Write a line of its own."""
        self._stream.write(message + "\n")
        self._stream.flush()

    def _show(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = (self._done - self._resumed) / elapsed
        left = self._total - self._done
        eta = _duration(left / rate) if rate > 0 else "?"
        share = self._done / self._total if self._total else 1.0
        figures = f"{self._done:,}/{self._total:,} rows  {rate:,.0f} rows/s  ETA {eta}"
        if self._tty:
            filled = round(share * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self._stream.write(f"\r[{bar}] {share:4.0%}  {figures}\033[K")
        else:
            self._stream.write(f"{share:4.0%}  {figures}\n")
        self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a finished run did."""

    output: str
    rows: int
    rows_resumed: int
    scoring_s: float  # reading, running the model and saving chunks
    total_s: float  # from the command's start: also loading, selection and assembly
    backend: str
    selection: str  # how the backend was chosen: measured, cache, pinned, resumed
    batch_size: int
    chunk_rows: int
    chunks: int
    chunks_resumed: int

    @property
    def rows_per_s(self) -> float:
        """Rows scored by this run per second of scoring."""
        return (self.rows - self.rows_resumed) / self.scoring_s if self.scoring_s > 0 else 0.0

    def table(self) -> str:
        """The summary as a two-column table."""
        rows = [
            ("output", self.output),
            ("rows", f"{self.rows:,} ({self.rows_resumed:,} resumed)"),
            ("seconds", f"{self.scoring_s:.2f} scoring, {self.total_s:.2f} in all"),
            ("rows/s", f"{self.rows_per_s:,.0f}"),
            ("backend", f"{self.backend} ({self.selection})"),
            ("batch size", str(self.batch_size)),
            ("chunks", f"{self.chunks} of up to {self.chunk_rows:,} rows"),
            ("chunks resumed", str(self.chunks_resumed)),
        ]
        return format_rows(["summary", ""], rows)
