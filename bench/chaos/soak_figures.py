"""The soak's table: errors, latency drift, RSS growth and slope, fds, and a short timeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bench.chaos.http_load import Tally, percentile
from bench.chaos.outcome import Figure
from bench.chaos.served_agent import MIB

if TYPE_CHECKING:
    from bench.chaos.soak import Soak

# Under load, from the end of the first tenth (the warm-up: Python's free lists and glibc's
# arenas grow to the soak's concurrency) to the end, RSS should not move beyond page-level
# noise; a leak keeps growing. Idle start to idle end also holds that warm-up (a few MiB).
RSS_GROWTH_BOUND = 8 * MIB
IDLE_GROWTH_BOUND = 16 * MIB
SLOPE_BOUND = 0.02  # share of the start RSS per hour, over the second half of the load
JUDGE_SLOPE_S = 600.0  # below this a slope is mostly sampling noise: reported, not judged
TIMELINE_ROWS = 6
MAX_IN_FLIGHT = 256  # the load generator's connections: the agent's default queue size
FDS_MARGIN = 2  # fds the agent may open for good after the start (a log file, a cache)


def errors(tally: Tally) -> int:
    """Answers other than 200, and requests without a complete answer."""
    return tally.sent - tally.statuses[200]


def window_p99(tally: Tally, start_s: float, end_s: float) -> float:
    """p99 latency (ms) of the 200s answered between `start_s` and `end_s`."""
    at = np.frombuffer(tally.ok_at_s, dtype=np.float64)
    ms = np.frombuffer(tally.ok_ms, dtype=np.float64)
    return percentile(ms[(at >= start_s) & (at < end_s)].tolist(), 0.99)


def figures(found: Soak) -> list[Figure]:
    """Every figure of the soak, the timeline rows last."""
    tally, polls, d = found.tally, found.polls, found.duration_s
    served = tally.statuses[200]
    wrong = {s: n for s, n in tally.statuses.items() if s != 200}
    failures = {k: n for k, n in tally.failures.items() if n}
    p99_first = window_p99(tally, 0, d / 10)
    p99_last = window_p99(tally, d * 0.9, float("inf"))
    start, end = found.start, found.end.after
    slope = found.rss_slope_mib_h()
    under_load = [(t, r.rss) for t, r in found.log.samples] or [(0.0, start.rss)]
    rss_warm = next((rss for t, rss in under_load if t >= d / 10), under_load[-1][1])
    rss_last = under_load[-1][1]
    slope_bound = SLOPE_BOUND * start.rss_mib
    judged = d >= JUDGE_SLOPE_S
    return [
        Figure("capacity C", found.capacity.describe()),
        Figure(
            "requests served",
            f"{served:,} answered 200 in {d:g} s ({served / d:,.0f} req/s; "
            f"{found.rate:,.0f} offered)",
        ),
        Figure(
            "errors (non-200 answers, resets, timeouts)",
            f"{errors(tally)} {wrong or ''}{failures or ''}".strip(),
            "0",
            errors(tally) == 0,
        ),
        Figure(
            "not sent (agent behind: all connections waiting)",
            f"{tally.not_sent:,} of {tally.sent + tally.not_sent:,}",
        ),
        Figure(
            "/metrics and stats polls",
            f"{polls.statuses[200]} of {polls.sent} answered 200",
            "all",
            polls.sent > 0 and polls.statuses[200] == polls.sent,
        ),
        Figure(
            "p99 first tenth -> last tenth",
            f"{p99_first:,.1f} -> {p99_last:,.1f} ms "
            f"({p99_last / p99_first if p99_first else 0:.2f}x)",
        ),
        Figure(
            "RSS under load, end of first tenth -> end",
            f"{rss_warm / MIB:,.1f} -> {rss_last / MIB:,.1f} MiB "
            f"({(rss_last - rss_warm) / MIB:+.1f})",
            f"<= +{RSS_GROWTH_BOUND / MIB:g} MiB",
            rss_last - rss_warm <= RSS_GROWTH_BOUND,
        ),
        Figure(
            "RSS idle, before -> after the load",
            f"{start.rss_mib:,.1f} -> {end.rss_mib:,.1f} MiB ({(end.rss - start.rss) / MIB:+.1f})",
            f"<= +{IDLE_GROWTH_BOUND / MIB:g} MiB",
            end.rss - start.rss <= IDLE_GROWTH_BOUND,
        ),
        Figure(
            "RSS slope, second half of the load",
            f"{slope:+,.1f} MiB/hour ({slope / start.rss_mib:+.1%} of start per hour)",
            f"<= {slope_bound:,.1f} MiB/hour ({SLOPE_BOUND:.0%})"
            + ("" if judged else f", judged from {JUDGE_SLOPE_S / 60:g}-minute runs"),
            slope <= slope_bound if judged else None,
        ),
        Figure(
            "fds start / peak / end",
            f"{start.fds} / {found.log.peak_fds} / {end.fds}",
            f"end <= start + {FDS_MARGIN}",
            found.end.fds_back,
        ),
        *timeline(found),
    ]


def timeline(found: Soak) -> list[Figure]:
    """`TIMELINE_ROWS` rows: RSS, fds, rate, p99 and errors so far at the end of each window."""
    tally, d = found.tally, found.duration_s
    at = np.frombuffer(tally.ok_at_s, dtype=np.float64)
    rows = []
    for k in range(1, TIMELINE_ROWS + 1):
        low, high = d * (k - 1) / TIMELINE_ROWS, d * k / TIMELINE_ROWS
        sampled = [r for t, r in found.log.samples if t <= high] or [found.start]
        errors_then = [e for t, e in found.errors_at if t <= high] or [0]
        rate = int(np.count_nonzero((at >= low) & (at < high))) / (high - low)
        rows.append(
            Figure(
                f"timeline {int(high) // 60:d}:{int(high) % 60:02d}",
                f"RSS {sampled[-1].rss_mib:,.1f} MiB, {sampled[-1].fds} fds, "
                f"{rate:,.0f} req/s, p99 {window_p99(tally, low, high):,.1f} ms, "
                f"errors {errors_then[-1]}",
            )
        )
    return rows


def notes(found: Soak) -> list[str]:
    """How to read the table."""
    return [
        "RSS is judged twice: under load from the end of the first tenth (the warm-up to the "
        "soak's concurrency) to the last sample, and idle before against idle after the load "
        "(once its connections closed, so in-flight buffers do not count). The slope comes "
        "from the samples under load, by least squares over the second half.",
        f"The load generator keeps at most {MAX_IN_FLIGHT} requests in flight, no more than "
        "the agent's queue: when the agent falls behind (on a shared machine, often because "
        "something else took the CPU) requests due are not sent rather than queued or "
        "answered 503, and show in the not-sent figure and the timeline's p99.",
        f"Runs shorter than {JUDGE_SLOPE_S / 60:g} minutes report the slope without judging it: "
        "over seconds, one arena growing by a MiB reads as hundreds of MiB per hour.",
    ]
