"""The hostile-clients table: the well-behaved client, how each attack ended, the agent's memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.chaos.attacks import Attack, Ending
from bench.chaos.http_load import Tally, percentile
from bench.chaos.outcome import Figure
from bench.chaos.served_agent import MIB

if TYPE_CHECKING:
    from bench.chaos.hostile_clients import Hostile

# What the attacks may cost in memory: the endless body at full speed is buffered up to the body
# limit before its 413 (a bytearray, which may hold twice that while it grows), each connection
# one read buffer (aiohttp's read_bufsize), and allocator slack.
CONNECTION_BYTES = 64 * 1024
RSS_SLACK = 16 * MIB
FDS_MARGIN = 2


@dataclass(frozen=True)
class Bounds:
    """The agent's limits the attacks run into, and the slack the targets allow."""

    idle_s: float
    body_s: float
    linger_s: float
    slack_s: float
    max_body: int  # bytes

    def answered_by(self, attack: Attack) -> float:
        """Seconds from connecting by which the attack's answer must arrive."""
        return (self.body_s if attack.limit == "body" else 0.0) + self.slack_s

    def closed_by(self, attack: Attack) -> float:
        """Seconds from connecting by which the server must have closed the connection."""
        limit = {"idle": self.idle_s, "body": self.body_s}.get(attack.limit, 0.0)
        return limit + (self.linger_s if attack.lingers else 0.0) + self.slack_s


def ended_well(ending: Ending, attack: Attack, bounds: Bounds) -> bool:
    """Whether the server ended this connection as it should, within its bounds."""
    if ending.refused or ending.closed_s is None or ending.closed_s > bounds.closed_by(attack):
        return False
    if attack.answer is None or ending.status is None:
        # a reset may beat a 400 to an oversized header: the connection was still refused
        return ending.status is None and (attack.answer is None or attack.answer == 400)
    answered = ending.answered_s is not None and ending.answered_s <= bounds.answered_by(attack)
    return ending.status == attack.answer and answered


def span(values: list[float]) -> str:
    """`1.0-2.5 s`, or `1.0 s` when all are about the same."""
    low, high = min(values), max(values)
    return f"{low:.1f} s" if high - low < 0.05 else f"{low:.1f}-{high:.1f} s"


def attack_figure(attack: Attack, endings: list[Ending], bounds: Bounds) -> Figure:
    """One attack's line: what the server answered, when, and when it closed."""
    statuses: dict[str, int] = {}
    for ending in endings:
        key = "refused" if ending.refused else str(ending.status or "no answer")
        key += ", reset" if ending.reset else ""
        statuses[key] = statuses.get(key, 0) + 1
    answered = [e.answered_s for e in endings if e.answered_s is not None]
    closed = [e.closed_s for e in endings if e.closed_s is not None]
    parts = [", ".join(f"{n} x {key}" for key, n in statuses.items())]
    if answered:
        parts.append(f"answered after {span(answered)}")
    if closed:
        parts.append(f"closed by the server after {span(closed)}")
    if len(closed) < len(endings):
        parts.append(f"{len(endings) - len(closed)} still open at the end")
    target = f"closed within {bounds.closed_by(attack):g} s"
    if attack.answer:
        within = f" within {bounds.answered_by(attack):g} s" if attack.limit == "body" else ""
        target = f"{attack.answer}{within}, {target}"
    return Figure(
        attack.name,
        "; ".join(parts),
        target,
        all(ended_well(e, attack, bounds) for e in endings),
    )


def good_client(label: str, tally: Tally) -> Figure:
    """How many of the well-behaved client's requests succeeded."""
    due = tally.sent + tally.not_sent
    ok = tally.statuses[200]
    wrong = {s: n for s, n in tally.statuses.items() if s != 200}
    failed = {k: n for k, n in tally.failures.items() if n}
    if tally.not_sent:
        failed["not sent"] = tally.not_sent
    value = f"{ok} of {due} {wrong or ''}{failed or ''}".strip()
    return Figure(label, value, "all", due > 0 and ok == due)


def figures(found: Hostile) -> list[Figure]:
    """The client's figures, one line per attack, then memory and descriptors."""
    before = percentile(found.baseline.ok_ms, 0.99)
    during = percentile(found.during.ok_ms, 0.99)
    connections = sum(a.count for a, _ in found.endings)
    rss_bound = 2 * found.bounds.max_body + connections * CONNECTION_BYTES + RSS_SLACK
    idle, peak, after = found.idle, found.log.peak_rss, found.after.after
    return [
        good_client("normal requests succeeded, baseline", found.baseline),
        good_client("normal requests succeeded during the attack", found.during),
        Figure(
            "p99 of normal requests, attack vs baseline",
            f"{during:,.1f} ms vs {before:,.1f} ms ({during / before if before else 0:.1f}x)",
        ),
        *(attack_figure(a, e, found.bounds) for a, e in found.endings),
        Figure(
            "peak RSS during the attack vs idle",
            f"{peak / MIB:,.0f} MiB vs {idle.rss_mib:,.0f} MiB (+{(peak - idle.rss) / MIB:,.1f})",
            f"<= idle + {rss_bound / MIB:,.0f} MiB",
            peak <= idle.rss + rss_bound,
        ),
        Figure(
            "fds idle / peak / after",
            f"{idle.fds} / {found.log.peak_fds} / {after.fds} (after {found.after.seconds:.1f} s)",
            f"after <= idle + {FDS_MARGIN}",
            found.after.fds_back,
        ),
        Figure(
            "RSS after vs idle",
            f"{(after.rss - idle.rss) / MIB:+.1f} MiB",
        ),
        Figure("ERROR lines in the agent's log", found.log_errors[0], "0", found.log_errors[1]),
    ]
