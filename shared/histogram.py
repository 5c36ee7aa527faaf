"""The latency histogram every EdgeFleet component agrees on: fixed bounds, mergeable counts.

Agents count request latencies into `LATENCY_BUCKETS` (upper bounds in seconds, each 1.5 times
the previous, 50 us to 21.6 s) plus one overflow bucket; the control plane adds the counts of
many devices and intervals element by element and reads quantiles from the sum. The bounds
never change within a telemetry schema, so histograms from any two agents of one release add.
`counts[i]` counts latencies `<= bounds[i]` and `> bounds[i-1]`; the last entry counts those
above the last bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import zip_longest

# Fine enough that a p95 read from the histogram is within a few percent, which the agent's
# probation gate and the control plane's rollout gates rely on.
LATENCY_BUCKETS: tuple[float, ...] = tuple(float(f"{5e-5 * 1.5**i:.3g}") for i in range(33))
LATENCY_COUNTS_LENGTH = len(LATENCY_BUCKETS) + 1  # the bounds plus the overflow bucket


def quantile(
    counts: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BUCKETS
) -> float | None:
    """Estimate quantile `q` (0-1), interpolating inside its bucket; None with no observations.

    With `rank = q * total`, walk the buckets until the running sum reaches `rank`; inside that
    bucket interpolate linearly between its lower bound (the previous bound, 0 for the first)
    and its upper bound. A quantile in the overflow bucket is reported as the last bound.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be between 0 and 1, not {q}")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"expected {len(bounds) + 1} counts for {len(bounds)} bounds")
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    lower = 0.0
    for upper, count in zip((*bounds, float("inf")), counts, strict=True):
        if count and seen + count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * max(0.0, rank - seen) / count
        seen += count
        lower = upper
    return lower


def add_counts(histograms: Iterable[Sequence[int]]) -> list[int]:
    """The element-wise sum of histograms (a shorter one counts as zeros where it ends)."""
    # Column by column in one pass (C loops), not a new list per histogram: charts sum a day of
    # 10 s reports, 8,640 histograms per model.
    return [sum(column) for column in zip_longest(*histograms, fillvalue=0)]
