"""Power loss on a full disk: the state directory on a small tmpfs that fills up mid-download.

The agent's state directory lives on a tmpfs with a size cap (`tmpfs.SmallDisk`; needs root).
It serves v1 (the MLP, about 50 KB). Each attempt assigns v2 (the same MLP padded with 4 MiB of
random weights, downloaded over a rate-capped HTTP server so the download lasts about a second)
with room for it, and once the download is under way another writer fills the disk to the last
page: the agent's next write fails with ENOSPC. (A cap below v2's size would not do: the agent
refuses a download that cannot fit before it starts, `agent.bundles.space`.) In half of the
attempts (chosen at random, seeded) the agent is also killed with SIGKILL, before or after the
disk filled up, and started again on the full disk. The agent must keep serving the verified v1
(inference checked against v1's golden vectors throughout), record why the update failed in its
event log, leave no more of the disk used than before the attempt (plus bounded slack for its
logs), also after its next retry, keep a consistent state, and, once the cap is raised, finish
the move to v2 by itself. Then the filler is removed and v1 assigned again (`keep_versions = 1`
drops v2's files), ready for the next attempt.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field

from agent.bundles.state import InstalledVersion
from bench import BenchError, say
from bench.bundle_server import PREFIX, READY_PATH
from bench.chaos import slow_server
from bench.chaos.device import AgentProcess, gist
from bench.chaos.kit import DEVICE_ID, MODEL, ChaosRelease, Kit, build_kit
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.state_check import inspect_state
from bench.chaos.tmpfs import SmallDisk, mounted
from bench.processes import running

PADDING = 4 << 20  # v2's random weights
RATE = 4 << 20  # bytes per second from the bundle server
SLACK = 64 * 1024  # growth allowed over an attempt: event-log lines and state rewrites
HEADROOM = 256 * 1024  # room beyond what v2 needs, when the cap lets it in
DEADLINE_S = 30.0
FULL = 64 * 1024  # a disk with less free space than this counts as full
CLEAR_WORDS = ("disk is full", "disk space")

FINDINGS = (
    "Found and fixed in the agent: the partial download that ran into ENOSPC stayed on the "
    "full disk, so the agent could write neither its state nor its event log: the failure "
    "was never recorded (v2's last event stayed `downloading`; the log said only `assignment "
    "sync failed: [Errno 28] No space left on device`) and the disk stayed full. Now the "
    "failed attempt's files go first and the event log says `the disk is full: ...` "
    "(agent/bundles/activation.py, agent/bundles/space.py).",
    "Found and fixed: an agent restarted on the full disk exited at once (`error: [Errno 28] "
    "No space left on device`: it rewrote the kept key list at every start), a crash loop "
    "serving nothing, and past that its recovery could not log the interrupted attempt and "
    "never became ready. Now the key list is written only when it changed (agent/runner.py), "
    "and recovery logs what it cannot record and serves anyway (agent/bundles/recovery.py).",
    "Found and fixed: an attempt whose first state write failed logged the illegal transition "
    "none -> failed, an AssertionError that silently ended the sync loop; and an assignment "
    "whose acceptance could not be saved was never read again (agent/bundles/activation.py, "
    "agent/bundles/sync.py).",
    "Changed: a download that cannot fit with its extraction (about twice the bundle) is "
    "refused before it starts, so a disk too small for v2 is not filled again at every sync; "
    "that is why the disk here fills up from another writer, not from a cap below v2's size "
    "(agent/bundles/download.py). Regression tests: tests/agent/bundles/test_disk_full.py.",
)


@dataclass
class Tally:
    """What the attempts found."""

    served: int = 0
    bounded: int = 0
    clear: int = 0
    consistent: int = 0
    moved: int = 0
    killed: int = 0
    full_restarts: int = 0  # restarts with less than `FULL` bytes free
    growth: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fault(self, where: str, message: str) -> None:
        """Keep a note of a check that failed."""
        if len(self.notes) < 8:
            self.notes.append(f"{where}: {message}")
        say(f"   {where}: {message}")


class FullDiskDevice:
    """The agent on the small disk, the kit it is assigned from, and the bundle server's port."""

    def __init__(self, kit: Kit, device: AgentProcess, disk: SmallDisk, port: int) -> None:
        self.kit = kit
        self.device = device
        self.disk = disk
        self.port = port
        self.v1, self.v2 = kit.releases[1], kit.releases[2]
        self.served_other = 0  # answers that were not a verified v1 while v1 had to serve

    def assign(self, release: ChaosRelease) -> float:
        """Assign `release`; return when."""
        url = f"http://127.0.0.1:{self.port}{PREFIX}/{release.release.path.name}"
        return self.kit.desk.assign(release.release, url)

    def committed(self, release: ChaosRelease) -> bool:
        """True once `release` is committed and serving."""
        record = self.device.state().model(MODEL)
        done = record.active is not None and record.active.digest == release.digest
        return done and record.activation is None and self.device.ready()

    def move(self, release: ChaosRelease) -> None:
        """Assign `release` and wait until it is committed."""
        self.assign(release)
        self.device.wait_for(lambda: self.committed(release), f"v{release.version}", DEADLINE_S)

    def serves_v1(self) -> bool:
        """Check one answer against v1's golden vectors (counting any other answer)."""
        try:
            ok = self.device.serves_verified() == 1
        except (BenchError, OSError):
            ok = False
        self.served_other += not ok
        return ok

    def downloading(self) -> bool:
        """True once a quarter of v2 has been downloaded (v1 checked on the way)."""
        self.serves_v1()
        part = self.device.state_dir / "bundles" / "partial" / f"{self.v2.digest}.part"
        return part.is_file() and part.stat().st_size >= self.v2.size // 4

    def failures(self, since: float) -> list[str]:
        """The reasons v2's attempts since `since` failed, in order (v1 checked on the way)."""
        self.serves_v1()
        events = [e for e in self.device.events(self.v2.digest) if e.time >= since]
        # A restart logs the attempt it interrupted; the failures wanted are the disk's.
        restarts = [e for e in events if e.reason.startswith("the agent restarted during")]
        return [e.reason for e in events if e.state == "failed" and e not in restarts]

    def room_for_v2(self) -> int:
        """A cap that lets v2's download and extraction in, over what the disk holds now."""
        return self.disk.used() + 2 * self.v2.size + HEADROOM


def attempt(fixture: FullDiskDevice, n: int, kill: str, rng: random.Random, tally: Tally) -> None:
    """One attempt: fill the disk during v2's download, kill the agent `kill` ("before" the
    disk fills up, "after", or "" for no kill), then check and recover."""
    device, disk, v2 = fixture.device, fixture.disk, fixture.v2
    disk.resize(fixture.room_for_v2())
    before = disk.used()
    fixture.served_other = 0
    since = fixture.assign(v2)
    device.wait_for(fixture.downloading, "v2's download to start", DEADLINE_S)
    ballast = device.state_dir.parent / f"filler-{n}"
    if kill == "before":
        device.kill()
    filled = disk.fill(ballast)
    if kill:
        tally.killed += 1
        if kill == "after":
            time.sleep(rng.uniform(0.0, 1.0))  # a random moment, not a wait for an event
            device.kill()
        tally.full_restarts += disk.size - disk.used() < FULL
        device.start()
        device.wait_ready(DEADLINE_S)
    device.wait_for(lambda: bool(fixture.failures(since)), "v2's failure", DEADLINE_S)
    reason = fixture.failures(since)[0]  # the attempt the full disk stopped
    tally.reasons.append(reason)
    if fixture.serves_v1() and not fixture.served_other:
        tally.served += 1
    else:
        tally.fault(f"attempt {n}", f"{fixture.served_other} answers were not a verified v1")
    if any(word in reason for word in CLEAR_WORDS):
        tally.clear += 1
    else:
        tally.fault(f"attempt {n}", f"unclear failure: {reason!r}")
    growth = disk.used() - filled - before
    # The next sync retries: it must be refused without filling the disk again.
    device.wait_for(lambda: len(fixture.failures(since)) > 1, "v2's retry", DEADLINE_S)
    growth = max(growth, disk.used() - filled - before)
    tally.growth.append(growth)
    if growth <= SLACK:
        tally.bounded += 1
    else:
        tally.fault(f"attempt {n}", f"the disk holds {growth} bytes more than before the attempt")
    versions = {r.digest: r.version for r in fixture.kit.releases.values()}
    found = inspect_state(device.state_dir, MODEL, fixture.kit.desk.trust, versions)
    v1 = InstalledVersion(1, fixture.v1.digest)
    if found.consistent and found.record is not None and found.record.active == v1:
        tally.consistent += 1
    else:
        tally.fault(f"attempt {n}", f"inconsistent state: {found.problems or found.record}")
    disk.resize(fixture.room_for_v2())  # the operator grows the volume; the filler stays
    device.wait_for(lambda: fixture.committed(v2), "v2 once there was room", DEADLINE_S)
    if device.serves_verified() == 2:
        tally.moved += 1
    ballast.unlink()
    fixture.move(fixture.v1)  # and back, so the next attempt downloads v2 again


def run(options: ChaosOptions) -> Outcome:
    """Fill the disk under `options.disk_attempts` downloads; see the module docstring."""
    work = options.work
    attempts = options.disk_attempts
    rng = random.Random(options.seed)
    # Half the attempts get a kill; the first of them before the disk fills up, so that even
    # the quick setting restarts the agent on a full disk, the others before or after at random.
    killed = sorted(rng.sample(range(1, attempts + 1), max(1, attempts // 2)))
    kills = {n: "before" if n == killed[0] else rng.choice(("before", "after")) for n in killed}
    say(f"   signing v1 and a {PADDING >> 20} MiB v2 of {MODEL} in {work}")
    kit = build_kit(work, {1: 0, 2: PADDING})
    tally = Tally()
    server_command = slow_server.command(kit.bundles, RATE)
    with (
        running("bundle-server", server_command, READY_PATH, work, DEADLINE_S) as server,
        mounted(work / "disk", 4 * kit.releases[2].size) as disk,
    ):
        (work / "device").mkdir()
        device = AgentProcess(
            work / "device",
            device_id=DEVICE_ID,
            model=MODEL,
            keys=kit.keys,
            goldens=kit.goldens,
            assignment=kit.desk.assignment_path,
            state_dir=disk.path / "state",
            poll_interval_s=0.5,
            probation_duration_s=0.3,
            keep_versions=1,
        )
        fixture = FullDiskDevice(kit, device, disk, server.port)
        try:
            fixture.assign(fixture.v1)
            device.start()
            device.wait_ready()
            device.wait_for(lambda: fixture.committed(fixture.v1), "v1", DEADLINE_S)
            footprint = disk.used()
            say(f"   v1 installed: {footprint} bytes used; {attempts} attempts follow")
            for n in range(1, attempts + 1):
                try:
                    attempt(fixture, n, kills.get(n, ""), rng, tally)
                except BenchError as error:
                    tally.fault(f"attempt {n}", gist(error))
                    break  # the device is in an unknown state: the figures say how far it got
            stop_cleanly(device, tally)
        finally:
            device.close()
    return outcome(options, tally, footprint)


def stop_cleanly(device: AgentProcess, tally: Tally) -> None:
    """SIGTERM; an agent that is gone or ends badly is a fault, not a reason to stop reporting."""
    try:
        device.stop()
    except BenchError as error:
        tally.fault("at the end", f"the agent did not stop cleanly: {gist(error)}")


def outcome(options: ChaosOptions, tally: Tally, footprint: int) -> Outcome:
    """The figures of the run."""
    n = options.disk_attempts

    def count(value: int) -> Figure:
        return Figure("", f"{value}/{n}", f"{n}/{n}", value == n)

    figures = [
        ("recoveries: served a verified v1 throughout", tally.served),
        ("disk left within bounds after the failure", tally.bounded),
        ("clear error in the event log", tally.clear),
        ("state consistent after the failure", tally.consistent),
        ("move to v2 completed once there was room", tally.moved),
    ]
    table = [dataclasses.replace(count(value), figure=name) for name, value in figures]
    worst = max(tally.growth, default=None)
    table += [
        Figure(
            "most disk growth over an attempt",
            "not measured" if worst is None else f"{worst} bytes",
            f"<= {SLACK} bytes",
            worst is not None and worst <= SLACK,
        ),
        Figure("v1 footprint on the disk", f"{footprint} bytes"),
        Figure("attempts with a kill -9", f"{tally.killed}/{n}"),
        Figure("of those, restarts on a full disk", f"{tally.full_restarts}/{tally.killed}"),
    ]
    notes = [*tally.notes, *FINDINGS]
    for reason in sorted({r.split(" for bundle")[0] for r in tally.reasons}):
        example = next(r for r in tally.reasons if r.startswith(reason))
        notes.append(f'the event log said: "{example}"')
    return Outcome(
        "disk-full",
        "Power loss on a full disk",
        f"The agent's state directory on a size-capped tmpfs, serving v1 ({footprint} bytes "
        f"used). {n} times: v2 ({PADDING >> 20} MiB of padding, downloaded over HTTP at "
        f"{RATE >> 20} MiB/s) was assigned with the cap set to fit it, and another writer "
        "filled the disk to the last page mid-download; in half of the attempts (seeded) the "
        "agent was also killed with SIGKILL, before or after the disk filled up, and started "
        "again. The disk was measured after the failure and after the next (refused) retry; "
        "then the cap was raised and the move to v2 had to finish, and v1 was assigned again.",
        table,
        notes,
    )
