"""What one run of `bench.bundles` measures, the targets it is judged against, and its figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.activations import Activation
from bench.verify_speed import VerifySpeed
from bench.wrk import WrkResult

# Targets from the issue, reported as met or missed.
VERIFY_TARGET_RATIO = 0.8  # verify_bundle's MB/s against hashlib SHA-256 of the same archive
SWAP_P99_TARGET_RATIO = 2.0  # p99 during a swap against steady state

CONNECTIONS = 8  # wrk connections during the latency windows
WARMUP_S = 1  # a discarded wrk run before the steady window
TRIGGER_S = 1.0  # the new assignment is written this long into the swap window
DEFAULT_SIZE_MB = 256


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    size_mb: int  # of the large bundle's random weights file (MB = 10^6 bytes)
    rounds: int  # timed rounds of the verification figures (after one warm-up round)
    repeats: int  # activations of the MLP bundle per download scheme
    swaps: int  # pairs of latency windows: steady, then with a swap
    window_s: int  # each latency window

    @classmethod
    def of(cls, size_mb: int | None, quick: bool) -> Plan:
        """The default plan, or a shorter one with `quick`."""
        size = size_mb or DEFAULT_SIZE_MB
        return cls(size, 2, 1, 1, 3) if quick else cls(size, 5, 3, 3, 6)


@dataclass(frozen=True)
class SwapRun:
    """One pair of latency windows, and the activation assigned during the second."""

    steady: WrkResult
    swapping: WrkResult
    activation: Activation  # MLP bundle over HTTP, assigned TRIGGER_S into the window
    started: float  # wall-clock start of the swap window

    @property
    def inside(self) -> bool:
        """True when the whole activation, swap included, fell inside the swap window."""
        end = self.started + self.swapping.duration_s
        first = self.activation.times["downloading"]
        return self.started <= first <= self.activation.serving_at < end


@dataclass(frozen=True)
class Windows:
    """Latency windows of one kind, summed (errors) or summarised by their medians."""

    runs: tuple[WrkResult, ...]

    @property
    def p99_ms(self) -> float:
        """The median p99."""
        return statistics.median(run.p99_ms for run in self.runs)

    @property
    def p50_ms(self) -> float:
        """The median p50."""
        return statistics.median(run.p50_ms for run in self.runs)

    @property
    def rate(self) -> float:
        """The median requests per second."""
        return statistics.median(run.rate for run in self.runs)

    @property
    def errors(self) -> int:
        """Failed requests over every window."""
        return sum(run.errors for run in self.runs)

    @property
    def non_2xx(self) -> int:
        """Answers other than 2xx over every window."""
        return sum(run.non_2xx for run in self.runs)

    @property
    def socket_errors(self) -> int:
        """Connect, read, write and timeout errors over every window."""
        return sum(run.socket_errors for run in self.runs)


@dataclass(frozen=True)
class BundleResults:
    """Every figure of one run."""

    plan: Plan
    speed: VerifySpeed  # over the large bundle's archive
    small_size: int  # bytes of an MLP bundle's archive
    file: Sequence[Activation]  # MLP bundle, file:// URL
    http: Sequence[Activation]  # MLP bundle, HTTP
    large: Activation  # the large bundle, HTTP
    plain_download_s: float  # a plain aiohttp GET of the large bundle from the same server
    swaps: Sequence[SwapRun]
    versions: str

    @property
    def small(self) -> list[Activation]:
        """Every unloaded activation of the MLP bundle, whatever the download scheme."""
        return [*self.file, *self.http]

    @property
    def loaded(self) -> list[Activation]:
        """The activations assigned during the swap windows."""
        return [swap.activation for swap in self.swaps]

    @property
    def committed(self) -> list[SwapRun]:
        """The swap windows whose new version passed probation."""
        return [swap for swap in self.swaps if swap.activation.outcome == "active"]

    @property
    def steady(self) -> Windows:
        """The steady windows."""
        return Windows(tuple(swap.steady for swap in self.swaps))

    @property
    def swapping(self) -> Windows:
        """The windows with a swap."""
        return Windows(tuple(swap.swapping for swap in self.swaps))

    @property
    def swaps_inside(self) -> bool:
        """True when every activation under load fell inside its window."""
        return all(swap.inside for swap in self.swaps)


def median_phase(activations: Sequence[Activation], phase: str) -> float:
    """The median seconds of a phase over several activations."""
    return statistics.median(a.phase(phase) for a in activations)


def median_to_serving(activations: Sequence[Activation]) -> float:
    """The median seconds from the assignment being written to the new version serving."""
    return statistics.median(a.to_serving_s for a in activations)
