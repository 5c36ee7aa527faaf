"""One rollout of the cp-restart scenario, with its fault injected once its second wave starts.

A canary-and-waves rollout of the next MLP version to the simulated fleet's group, observed
briefly per wave. When a poll sees the rollout past its canary (the controller has just
assigned the next wave, so devices are in the middle of activating), the fault strikes:

- `kill_control_plane`: SIGKILL `cp serve` and start it again at once; recovery is the time
  from the kill to `/api/v1/health` answering.
- `restart_database`: halt PostgreSQL (`fast` or `immediate`, a crash), keep it down for a
  while (or not at all) as the control plane runs on, start it again on the same data and
  port; recovery is the time from its return until the API answers from the database again.

The rollout is then followed, without any operator action, until it ends or its deadline
passes; `RolloutRun` says how it ended, whether every device ended on the new version, and
which warnings and errors the control plane logged once it was healthy again or its database
was back (it should have nothing more to say: a stale pooled connection would show up there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import BenchError
from bench.chaos.cp_world import GROUP, MODEL, ApiError, Fleet
from bench.chaos.sim_process import POLL_FAILED

TERMINAL = ("completed", "rolled_back", "aborted", "paused")  # paused: an operator is needed
WAIT_S = 1.0  # observation per wave
ACTIVATION_TIMEOUT_S = 60.0
ROLLOUT_DEADLINE_S = 120.0
INVENTORY_DEADLINE_S = 20.0
POLL_S = 0.1


@dataclass(frozen=True)
class Recovery:
    """How the system came back from one fault."""

    seconds: float  # kill -> healthy, or PostgreSQL back -> the API reads from it
    at: float  # time.time() from which the control plane should be quiet: healthy, or the
    # database back (what fails after that, a stale pooled connection say, is a complaint)


Fault = Callable[[Fleet, int], Recovery]  # (fleet, rollout id) -> how it recovered


@dataclass(frozen=True)
class RolloutRun:
    """How one rollout under a fault ended."""

    fault: str
    rollout_id: int
    version: int
    state: str  # its final state, or "running" when the deadline passed
    reason: str | None
    active: int  # members active
    members: int
    wrong_devices: tuple[str, ...]  # devices not reporting the version READY at the end
    recovery_s: float | None  # None: the fault never struck, or the system did not recover
    fault_error: str | None  # why it did not recover
    complaints: tuple[str, ...]  # warnings and errors the control plane logged after recovery
    device_errors: int  # failed assignment polls the simulator logged meanwhile
    started: float  # time.monotonic() at create
    ended: float  # ... when it ended or its deadline passed

    @property
    def seconds(self) -> float:
        """From create to the end."""
        return self.ended - self.started

    @property
    def correct(self) -> bool:
        """Completed, every member active, every device of the group on the version."""
        return (
            self.state == "completed"
            and self.active == self.members
            and not self.wrong_devices
            and self.recovery_s is not None
        )


def roll_out(fleet: Fleet, version: int, name: str, fault: Fault | None) -> RolloutRun:
    """Create the rollout, strike once it is past its canary, follow it to its end."""
    log_before = len(fleet.sim_log_text())
    strategy = {"kind": "canary", "canary": "10%", "waves": ["50%", "100%"], "wait_s": WAIT_S}
    strategy["activation_timeout_s"] = ACTIVATION_TIMEOUT_S
    body = {"model": MODEL, "version": version, "target": f"group:{GROUP}", "strategy": strategy}
    started = time.monotonic()
    rollout_id = int(fleet.operator.call("POST", "/rollouts", body)["id"])
    recovery = None if fault is not None else Recovery(0.0, time.time())
    struck, fault_error = fault is None, None
    rollout: dict[str, Any] = {}
    while True:
        fleet.check()
        try:
            rollout = fleet.operator.call("GET", f"/rollouts/{rollout_id}")
        except ApiError:
            fleet.cp.check()  # down is fine only while it is starting again
        if rollout.get("state") in TERMINAL:
            break
        if not struck and fault is not None and rollout.get("current_wave", 0) >= 1:
            struck = True
            try:
                recovery = fault(fleet, rollout_id)
            except BenchError as error:  # a finding, not a reason to stop the scenario
                fault_error = str(error)
                break
        if time.monotonic() - started > ROLLOUT_DEADLINE_S:
            break
        time.sleep(POLL_S)
    ended = time.monotonic()
    wrong = _wrong_devices(fleet, version) if rollout.get("state") == "completed" else ("all",)
    counts = rollout.get("devices", {})
    return RolloutRun(
        fault=name,
        rollout_id=rollout_id,
        version=version,
        state=str(rollout.get("state", "unknown")),
        reason=rollout.get("reason"),
        active=int(counts.get("active", 0)),
        members=int(counts.get("total", -1)),
        wrong_devices=wrong,
        recovery_s=None if recovery is None else recovery.seconds,
        fault_error=fault_error,
        complaints=() if recovery is None else fleet.cp.complaints_since(recovery.at),
        device_errors=fleet.sim_log_text()[log_before:].count(POLL_FAILED),
        started=started,
        ended=ended,
    )


def _wrong_devices(fleet: Fleet, version: int) -> tuple[str, ...]:
    """The group's devices not reporting `version` READY once the inventory settles."""
    deadline = time.monotonic() + INVENTORY_DEADLINE_S
    while True:
        page = fleet.operator.call("GET", f"/devices?group={GROUP}&limit=1000")
        wrong = tuple(
            device["id"]
            for device in page["devices"]
            if not any(
                m.get("model") == MODEL
                and m.get("version") == version
                and m.get("state") == "READY"
                for m in device["models"]
            )
        )
        if len(page["devices"]) < fleet.devices:
            wrong += ("(devices missing from the inventory)",)
        if not wrong or time.monotonic() > deadline:
            return wrong
        time.sleep(POLL_S * 5)


def _runs(models: list[dict[str, Any]], version: int) -> bool:
    """Whether a device's reported models have `version` of the MLP ready."""
    return any(
        m.get("model") == MODEL and m.get("version") == version and m.get("state") == "READY"
        for m in models
    )


def kill_control_plane(delay_s: float) -> Fault:
    """`delay_s` into the wave, SIGKILL `cp serve` and start it again; seconds from the kill
    until it is healthy. BenchError when it does not come back healthy."""

    def fault(fleet: Fleet, rollout_id: int) -> Recovery:
        time.sleep(delay_s)  # the moment of the crash within the activations, on purpose
        killed = time.monotonic()
        fleet.cp.kill()
        fleet.cp.start()
        return Recovery(time.monotonic() - killed, time.time())

    return fault


def restart_database(mode: str, down_s: float) -> Fault:
    """Halt PostgreSQL (`mode`), hold it down `down_s`, start it; seconds until the API reads.

    BenchError when the control plane exits meanwhile or its API does not read again.
    """

    def fault(fleet: Fleet, rollout_id: int) -> Recovery:
        fleet.postgres.halt(mode)
        back = time.monotonic() + down_s
        while time.monotonic() < back:  # the outage: the control plane must stay up
            fleet.cp.check()
            time.sleep(POLL_S)
        fleet.postgres.resume()
        resumed, back = time.monotonic(), time.time()
        while True:
            try:
                fleet.operator.call("GET", f"/rollouts/{rollout_id}", timeout=5.0)
            except ApiError as error:
                fleet.cp.check()
                if time.monotonic() - resumed > ROLLOUT_DEADLINE_S:
                    raise BenchError(f"the API fails after PostgreSQL is back: {error}") from None
                time.sleep(POLL_S)
                continue
            return Recovery(time.monotonic() - resumed, back)

    return fault
