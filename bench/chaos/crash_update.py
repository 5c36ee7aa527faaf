"""Crash during update: `kill -9` of the agent at random moments of an activation, then a restart.

Three signed releases of the MLP (each padded so that its download over a rate-capped HTTP
server lasts about a second) are assigned in turn to one real `edgefleet agent run`, which
keeps two versions (`keep_versions = 2`), so every move downloads, verifies, loads, validates,
warms and serves on probation. One unkilled move measures how long a cycle takes and when its
phases begin; then, for each crash, the next release is assigned, the agent is killed with
SIGKILL after a seeded random delay (uniform over the move, or, every other crash, over the few
tens of milliseconds between the end of the download and probation, which uniform delays over
the whole move almost never hit), and what the kill left is inspected while nothing runs
(`state_check`). The agent is started again and must become ready, serve a verified
version (an inference matches the golden vectors of the version that answered), log the
interrupted attempt, and then finish the move by itself.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from bench import BenchError, say
from bench.bundle_server import PREFIX, READY_PATH
from bench.chaos import slow_server
from bench.chaos.device import AgentProcess, gist
from bench.chaos.kit import DEVICE_ID, MODEL, ChaosRelease, Kit, build_kit
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.state_check import Inspection, inspect_state
from bench.processes import running

PADDING = 512 * 1024  # random weights per release: the download lasts about a second...
RATE = 512 * 1024  # ...at this many bytes per second
PROBATION_S = 0.3
CYCLE_DEADLINE_S = 60.0  # readiness, and the move to finish, after each restart
BUDGET_PER_CRASH_S = 30.0  # the whole loop stops once it has used this much per crash
MARGIN_S = 0.05  # around the verify-to-probation stretch, which lasts tens of milliseconds
FINDINGS = [
    "Found and fixed: every kill during a save of state.json left its temporary file "
    "(`.state.json.<hex>.tmp`) in the state directory for good (a 50-kill run left 3). The "
    "agent now removes them at start, before it saves anything (agent/bundles/state.py "
    "`discard_interrupted_writes`, called by agent/runner.py; regression test in "
    "tests/agent/bundles/test_state.py). Other files written atomically (the selection cache) "
    "are written once per new version and are left alone.",
    "Every named point of the bundle path is also killed, one at a time, by "
    "tests/agent/bundles/test_crash_recovery.py; the kills here land wherever the clock puts "
    "them, unsynchronised with the agent.",
]
PHASES = ("idle", "downloading", "verifying", "staged", "validating", "warming", "probation")


@dataclass
class Tally:
    """What the crashes found."""

    served: int = 0
    consistent: int = 0
    accounted: int = 0
    moved: int = 0
    landed: Counter[str] = field(default_factory=Counter)
    ready_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    torn_lines: int = 0
    temporary_files: int = 0
    other_temporary_files: int = 0

    def fault(self, where: str, message: str) -> None:
        """Keep a note of a check that failed (the first few; the figures count them all)."""
        if len(self.notes) < 8:
            self.notes.append(f"{where}: {message}")
        say(f"   {where}: {message}")


@dataclass(frozen=True)
class Timing:
    """An unkilled move: its length, and when verification and probation began (from the
    assignment, in seconds)."""

    duration: float
    verifying: float
    probation: float

    def draw(self, rng: random.Random, n: int) -> float:
        """The delay before kill `n`: uniform over the move, or, every other kill, uniform over
        the short stretch from the end of the download to the start of probation."""
        if n % 2:
            return rng.uniform(0.0, self.duration)
        return rng.uniform(self.verifying - MARGIN_S, self.probation + MARGIN_S)

    def __str__(self) -> str:
        return (
            f"{self.duration:.2f} s, verifying at {self.verifying:.2f} s, probation at "
            f"{self.probation:.2f} s"
        )


class UpdateCycle:
    """One device, the kit it is assigned from, and the bundle server it downloads from."""

    def __init__(self, kit: Kit, device: AgentProcess, port: int) -> None:
        self.kit = kit
        self.device = device
        self.port = port
        self.versions = {r.digest: r.version for r in kit.releases.values()}

    def assign(self, release: ChaosRelease) -> None:
        """Sign and write an assignment naming `release`, downloaded from the slow server."""
        url = f"http://127.0.0.1:{self.port}{PREFIX}/{release.release.path.name}"
        self.kit.desk.assign(release.release, url)

    def moved(self, release: ChaosRelease) -> bool:
        """True once `release` is committed and serving."""
        record = self.device.state().model(MODEL)
        committed = record.active is not None and record.active.digest == release.digest
        return committed and record.activation is None and self.device.ready()

    def move(self, release: ChaosRelease) -> Timing:
        """Assign `release`, wait until it is committed, return when its phases began."""
        since = time.time()
        self.assign(release)
        self.device.wait_for(lambda: self.moved(release), f"v{release.version} to commit")
        duration = time.time() - since
        events = [e for e in self.device.events(release.digest) if e.time >= since]
        began = {e.state: e.time - since for e in events}
        return Timing(duration, began["verifying"], began["probation"])

    def inspect(self) -> Inspection:
        """Check the state directory (call while the agent is not running)."""
        return inspect_state(self.device.state_dir, MODEL, self.kit.desk.trust, self.versions)


def landed(found: Inspection, target: ChaosRelease, since: float) -> str:
    """Where the kill landed, from the target's last event logged since the assignment."""
    states = [e.state for e in found.events if e.digest == target.digest and e.time >= since]
    if not states:
        return "idle"
    return "committed" if states[-1] == "active" else states[-1]


def within_bounds(found: Inspection, target: ChaosRelease) -> str:
    """Empty when the leftovers of one crash are bounded, else what is not."""
    if set(found.partial) - {target.digest} or found.partial.get(target.digest, 0) > target.size:
        return f"partial downloads {found.partial}"
    # A kill between a commit and the collection of the old version leaves that one behind,
    # and an interrupted extraction its temporary directory, until the next commit.
    if len(found.stray_blobs) > 1 or len(found.stray_extractions) > 2:
        return f"leftovers: archives {found.stray_blobs}, extractions {found.stray_extractions}"
    return ""


def crash_once(
    cycle: UpdateCycle, target: ChaosRelease, delay: float, tally: Tally, n: int
) -> None:
    """Assign `target`, kill after `delay`, inspect, restart, and check what the agent does."""
    device = cycle.device
    since = time.time()
    cycle.assign(target)
    time.sleep(delay)  # the random moment itself, not a wait for something to happen
    device.kill()
    found = cycle.inspect()
    phase = landed(found, target, since)
    tally.landed[phase] += 1
    tally.torn_lines = max(tally.torn_lines, found.torn_lines)
    tally.temporary_files = max(tally.temporary_files, len(found.temporary_files))
    tally.other_temporary_files = max(tally.other_temporary_files, len(found.other_temporary_files))
    bounds = within_bounds(found, target)
    if found.consistent and not bounds:
        tally.consistent += 1
    else:
        tally.fault(f"crash {n}", f"after a kill in {phase}: {'; '.join(found.problems) or bounds}")
    under_way = found.record.activation if found.record is not None else None

    device.start()
    tally.ready_s.append(device.wait_ready(CYCLE_DEADLINE_S))
    old = found.record.active.version if found.record and found.record.active else None
    served = device.serves_verified()
    if served in (old, target.version):
        tally.served += 1
    else:
        tally.fault(f"crash {n}", f"served v{served}, neither v{old} nor v{target.version}")
    device.wait_for(lambda: cycle.moved(target), f"v{target.version} to commit", CYCLE_DEADLINE_S)
    if device.serves_verified() == target.version:
        tally.moved += 1
    if under_way is None or any(
        e.previous == under_way.phase and f"restarted during {under_way.phase}" in e.reason
        for e in device.events(under_way.digest)
        if e.time >= since
    ):
        tally.accounted += 1
    else:
        tally.fault(
            f"crash {n}", f"the event log does not account for the attempt killed in {phase}"
        )


def run(options: ChaosOptions) -> Outcome:
    """Kill the agent `options.crashes` times during updates; see the module docstring."""
    work = options.work
    say(f"   signing three releases of {MODEL} in {work}")
    kit = build_kit(work, {1: PADDING, 2: PADDING, 3: PADDING})
    rotation = [kit.releases[v] for v in (1, 2, 3)]
    random_ = random.Random(options.seed)
    tally = Tally()
    (work / "device").mkdir()
    device = AgentProcess(
        work / "device",
        device_id=DEVICE_ID,
        model=MODEL,
        keys=kit.keys,
        goldens=kit.goldens,
        assignment=kit.desk.assignment_path,
        poll_interval_s=0.1,
        probation_duration_s=PROBATION_S,
        keep_versions=2,
    )
    server_command = slow_server.command(kit.bundles, RATE)
    with running("bundle-server", server_command, READY_PATH, work, 30.0) as server:
        cycle = UpdateCycle(kit, device, server.port)
        try:
            cycle.assign(rotation[0])
            device.start()
            device.wait_ready()
            # The first move also pays for first use (connections, imports); time the second.
            cycle.move(rotation[1])
            timing = cycle.move(rotation[2])
            say(f"   an unkilled move: {timing}; {options.crashes} crashes follow")
            deadline = time.monotonic() + BUDGET_PER_CRASH_S * options.crashes
            for n in range(1, options.crashes + 1):
                if time.monotonic() > deadline:
                    tally.fault(
                        f"crash {n}", "the time budget ran out; the remaining crashes did not run"
                    )
                    break
                target = rotation[(n + 2) % len(rotation)]
                try:
                    crash_once(cycle, target, timing.draw(random_, n), tally, n)
                except BenchError as error:
                    tally.fault(f"crash {n}", gist(error))
                    if not revive(device):
                        break
            final = finish(cycle, tally)
        finally:
            device.close()
    return outcome(options, tally, timing, final)


def revive(device: AgentProcess) -> bool:
    """Start the agent again after a failed crash; False if it does not become ready."""
    device.close()
    try:
        device.start()
        device.wait_ready(CYCLE_DEADLINE_S)
    except BenchError as error:
        say(f"   the agent does not come back: {error}")
        return False
    return True


def finish(cycle: UpdateCycle, tally: Tally) -> Inspection:
    """Stop the agent with SIGTERM and inspect what it leaves behind."""
    try:
        cycle.device.stop()
    except BenchError as error:
        tally.fault("at the end", f"the agent did not stop cleanly: {gist(error)}")
        cycle.device.close()
    return cycle.inspect()


def outcome(options: ChaosOptions, tally: Tally, timing: Timing, final: Inspection) -> Outcome:
    """The figures of the run."""
    n = options.crashes
    phases = [p for p in (*PHASES, "committed") if tally.landed[p]]
    phases += sorted(set(tally.landed) - set(phases))
    ready = sorted(tally.ready_s) or [float("nan")]
    clean = not final.problems and not final.partial and len(final.stray_blobs) <= 1
    return Outcome(
        "crash-update",
        "Crash during update",
        f"`kill -9` of `edgefleet agent run` at {n} random moments of a download-verify-"
        f"activate-probation cycle (seed {options.seed}): every other delay uniform over an "
        f"unkilled move ({timing.duration:.1f} s from the assignment), the others uniform over "
        f"its verify-to-probation stretch ({timing.verifying:.2f}-{timing.probation:.2f} s, "
        f"+-{MARGIN_S} s), which the first kind rarely hits. The agent moves between three "
        f"signed releases of the MLP ({PADDING // 1024} KiB padded, downloaded over HTTP at "
        f"{RATE // 1024} KiB/s, probation {PROBATION_S} s); after each kill the state "
        "directory is checked, the agent is started again and must serve a verified version "
        "and finish the move.",
        [
            Figure(
                "restarts that served a valid version",
                f"{tally.served}/{n}",
                f"{n}/{n}",
                tally.served == n,
            ),
            Figure(
                "state consistent after the kill",
                f"{tally.consistent}/{n}",
                f"{n}/{n}",
                tally.consistent == n,
            ),
            Figure(
                "interrupted attempt in the event log",
                f"{tally.accounted}/{n}",
                f"{n}/{n}",
                tally.accounted == n,
            ),
            Figure(
                "moves completed after the restart",
                f"{tally.moved}/{n}",
                f"{n}/{n}",
                tally.moved == n,
            ),
            Figure("where the kills landed", ", ".join(f"{p} {tally.landed[p]}" for p in phases)),
            Figure(
                "restart to ready, median (max)",
                f"{statistics.median(ready):.2f} s ({ready[-1]:.2f} s)",
            ),
            Figure(
                "state directory clean after the last move", "yes" if clean else "no", "yes", clean
            ),
            Figure("torn event-log lines, most seen", str(tally.torn_lines)),
            # A kill during a save leaves its temporary file; the next start removes it.
            Figure(
                "temporary files of interrupted state saves, most seen",
                str(tally.temporary_files),
                "<= 1",
                tally.temporary_files <= 1,
            ),
            Figure(
                "temporary files of other interrupted writes, most seen",
                str(tally.other_temporary_files),
            ),
        ],
        [*tally.notes, *FINDINGS],
    )
