"""The agent's memory and file descriptors over time: sampled during load, polled after it.

A `ResourceLog` runs as a task beside the load generator and reads the agent's RSS and open
file descriptors (psutil, from /proc) every `interval_s`; `settled` polls after the load until
both are back within a margin of their baseline, with a deadline instead of a fixed wait.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psutil

from bench.chaos.served_agent import Resources, resources


@dataclass
class ResourceLog:
    """Samples of one process: (seconds since the log started, resources)."""

    pid: int
    interval_s: float
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, Resources]] = field(default_factory=list)

    def sample(self) -> Resources | None:
        """Read the process now and keep the sample (None once the process is gone)."""
        try:
            now = resources(self.pid)
        except psutil.Error:
            return None
        self.samples.append((time.monotonic() - self.started, now))
        return now

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every `interval_s` until `stop` is set."""
        while not stop.is_set():
            if self.sample() is None:
                return
            try:
                async with asyncio.timeout(self.interval_s):
                    await stop.wait()
            except TimeoutError:
                pass

    @property
    def peak_rss(self) -> int:
        """The highest RSS sampled, in bytes (0 without samples)."""
        return max((r.rss for _, r in self.samples), default=0)

    @property
    def peak_fds(self) -> int:
        """The most file descriptors sampled."""
        return max((r.fds for _, r in self.samples), default=0)


@dataclass(frozen=True)
class Settled:
    """Where RSS and fds stood when `settled` stopped polling, and after how long."""

    after: Resources
    seconds: float
    rss_back: bool
    fds_back: bool


def settled(
    pid: int, baseline: Resources, rss_margin: int, fds_margin: int, deadline_s: float
) -> Settled:
    """Poll until RSS <= baseline + `rss_margin` and fds <= baseline + `fds_margin`, or time out."""
    started = time.monotonic()
    while True:
        now = resources(pid)
        rss_back = now.rss <= baseline.rss + rss_margin
        fds_back = now.fds <= baseline.fds + fds_margin
        elapsed = time.monotonic() - started
        if (rss_back and fds_back) or elapsed >= deadline_s:
            return Settled(now, elapsed, rss_back, fds_back)
        time.sleep(0.1)


def idle_baseline(pid: int, deadline_s: float = 10.0) -> Resources:
    """The process's resources once its fd count holds still (the last load's sockets closed)."""
    previous = resources(pid)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = resources(pid)
        if now.fds == previous.fds:
            return now
        previous = now
    return previous
