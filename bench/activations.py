"""A real `edgefleet agent run` following an assignment file, and the phases of its activations.

The agent appends one event per lifecycle transition to `<state_dir>/events.jsonl`, stamped
with `time.time()` after the new phase was persisted. The time of a phase is the gap between
the event that opens it and the next one; each gap therefore also holds the agent's own
bookkeeping (one fsynced event append and one fsynced state-file save), which the
`staged -> validating` gap, where nothing else happens, measures on its own. No event closes
the warm-up, so warm-up and the swap (one dictionary assignment in the repository) share a gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agent.bundles.lifecycle import EventLog, LifecycleEvent
from bench import BenchError
from bench.bundle_server import PREFIX
from bench.processes import Command, Server, edgefleet_executable, tail
from bench.releases import DEVICE_ID, Release, ReleaseDesk

EVENTS_FILE = "events.jsonl"  # agent.runner.EVENTS_FILE, under the state directory
POLL_INTERVAL_S = 0.1  # the agent re-reads the assignment file this often
PROBATION_S = 1.0  # short, so that it ends inside a swap window (the default is 60 s)
ACTIVATION_DEADLINE_S = 120.0
OUTCOMES = frozenset({"active", "failed", "reverted"})

# (phase, the state that opens it, the state that closes it)
PHASES = (
    ("download", "downloading", "verifying"),
    ("verify + extract", "verifying", "staged"),
    ("state writes", "staged", "validating"),
    ("load + select + golden", "validating", "warming"),
    ("warm + swap", "warming", "probation"),
    ("probation", "probation", "active"),
)


@dataclass(frozen=True)
class Activation:
    """The event times of one activation of a release."""

    version: int
    size: int
    assigned_at: float  # when the benchmark wrote the assignment
    times: dict[str, float]  # state -> time of its event
    backend: str  # what the new version serves with
    outcome: str  # "active", or "reverted" when probation sent the previous version back
    reason: str  # the outcome event's reason

    def phase(self, name: str) -> float:
        """Seconds spent in a phase of `PHASES`."""
        _, opens, closes = next(p for p in PHASES if p[0] == name)
        return self.times[closes] - self.times[opens]

    @property
    def serving_at(self) -> float:
        """When the new version started answering: the probation event, just after the swap."""
        return self.times["probation"]

    @property
    def ended_at(self) -> float:
        """When probation ended, with a commit or a revert."""
        return self.times[self.outcome]

    @property
    def to_serving_s(self) -> float:
        """From the assignment file being written to the new version serving."""
        return self.serving_at - self.assigned_at


def agent_config(work: Path, desk: ReleaseDesk) -> Path:
    """The agent's TOML settings: follow the desk's assignment file, trust its keys."""
    config = work / "agent.toml"
    keys = desk.keys.path
    config.write_text(
        f'state_dir = "{work / "agent-state"}"\n'
        "[bundles]\n"
        f'assignment = "{desk.assignment_path}"\n'
        f'root_key = "{keys / "root.pub"}"\n'
        f'keylist = "{keys / "keylist.json"}"\n'
        f"poll_interval_s = {POLL_INTERVAL_S}\n"
        f"probation_duration_s = {PROBATION_S}\n"
    )
    return config


def agent_command(config: Path) -> Command:
    """The command line of `edgefleet agent run` with the settings file, for a port."""
    executable = str(edgefleet_executable())

    def command(port: int) -> list[str]:
        # The device id is a flag rather than a setting: the flag's name is the stable one.
        flags = ["--config", str(config), "--device-id", DEVICE_ID, "--port", str(port)]
        return [executable, "agent", "run", *flags]

    return command


class AgentUnderTest:
    """A running agent, the desk that assigns it releases, and where those can be downloaded."""

    def __init__(self, server: Server, desk: ReleaseDesk, work: Path, bundle_port: int) -> None:
        self.server = server
        self.desk = desk
        self.events = EventLog(work / "agent-state" / EVENTS_FILE)
        self.bundle_port = bundle_port

    def url(self, release: Release, via: str) -> str:
        """Where the agent downloads `release`: "file" or "http"."""
        if via == "file":
            return release.path.resolve().as_uri()
        return f"http://127.0.0.1:{self.bundle_port}{PREFIX}/{release.path.name}"

    def assign(self, release: Release, via: str) -> float:
        """Assign `release`; return when the assignment was written."""
        return self.desk.assign(release, self.url(release, via))

    def activate(self, release: Release, via: str) -> Activation:
        """Assign `release` and wait until it is active."""
        return self.wait(release, self.assign(release, via))

    def wait(self, release: Release, assigned_at: float, may_revert: bool = False) -> Activation:
        """Wait until the activation of `release` ends; raise unless it ended active.

        With `may_revert`, a version that served and was then reverted by probation is a
        result too (under load, probation judges latencies that noise can spoil).
        """
        deadline = time.monotonic() + ACTIVATION_DEADLINE_S
        while True:
            events = self._attempt(release.digest)
            if events and events[-1].state in OUTCOMES:
                break
            if self.server.process.poll() is not None:
                raise BenchError(f"the agent exited:\n{tail(self.server.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"v{release.version} not active after {ACTIVATION_DEADLINE_S} s")
            time.sleep(0.02)
        last = events[-1]
        if not (last.state == "active" or (may_revert and last.state == "reverted")):
            raise BenchError(f"v{release.version} ended {last.state}: {last.reason}")
        times = {event.state: event.time for event in events}
        details = next(e.details for e in events if e.state == "probation") or {}
        backend = str(details.get("backend", "unknown"))
        return Activation(
            release.version, release.size, assigned_at, times, backend, last.state, last.reason
        )

    def _attempt(self, digest: str) -> list[LifecycleEvent]:
        """The events of the last attempt at `digest`, up to its outcome."""
        attempt: list[LifecycleEvent] = []
        for event in self.events.read():
            if event.digest != digest:
                continue
            if event.state == "downloading":
                attempt = []
            attempt.append(event)
            if event.state in OUTCOMES:
                break
        return attempt
