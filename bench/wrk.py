"""The load generator: find or install wrk, run it with `wrk_post.lua`, read its summary."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from bench import BenchError, say
from bench.payloads import Payload

LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")


def ensure_wrk() -> str:
    """Return the path of `wrk`, installing it with apt-get when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    say("wrk is not installed: installing it with `apt-get update && apt-get install -y wrk`")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise BenchError("wrk is missing and apt-get cannot run here (needs root): install wrk")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"`{shlex.join(command)}` failed:\n{done.stderr[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get installed wrk but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    """The first line of wrk's banner, e.g. `wrk debian/4.1.0-3+b2 [epoll]`."""
    banner = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    return banner.split("Copyright")[0].strip() or "wrk"


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    rows_per_request: int = 1  # rows in each request body
    rows_per_batch: float | None = None  # from the agent's statistics, when it was the target

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s

    @property
    def rows_rate(self) -> float:
        """Rows per second: requests per second times rows per request."""
        return self.rate * self.rows_per_request

    @property
    def errors(self) -> int:
        """Responses that were not 2xx/3xx, plus connect, read, write and timeout errors."""
        return self.non_2xx + self.socket_errors


def run_wrk(wrk: str, url: str, payload: Payload, connections: int, duration_s: int) -> WrkResult:
    """Run wrk with `wrk_post.lua` against `url` and read the summary line it prints."""
    length = "" if payload.header_length is None else str(payload.header_length)
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    command += ["-s", str(LUA_SCRIPT), url, "--", str(payload.path), payload.content_type, length]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return replace(parse_wrk(done.stdout), rows_per_request=payload.rows)


def parse_wrk(stdout: str) -> WrkResult:
    """Read the `BENCH_JSON` line that `wrk_post.lua`'s `done` hook prints."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = orjson.loads(line.removeprefix("BENCH_JSON "))
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1e3,
                p99_ms=data["p99_us"] / 1e3,
                non_2xx=int(data["non_2xx"]),
                socket_errors=sum(int(data[k]) for k in ("connect", "read", "write", "timeout")),
            )
    raise BenchError(f"wrk printed no BENCH_JSON summary:\n{stdout[-1000:]}")
