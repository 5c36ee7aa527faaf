"""What the agent does at start: serve the last committed versions, whatever happened before.

A `kill -9` or a power cut may have interrupted an activation at any step. The state file (written
atomically) says which version was committed and which activation was under way: the interrupted
one is logged as failed (or reverted, if it was on probation), keeps its attempt count so a bundle
that keeps crashing the agent is given up, and the committed version is verified and served again.
If the committed version no longer verifies (a damaged disk), the previous committed ones are tried.
A commit whose `active` event the crash kept out of the event log is logged then. A disk too
full to append to the event log does not stop the agent from serving: the state file, not the
log, says what to serve.
"""

from __future__ import annotations

import asyncio
import logging

from agent.bundles.activation import BundleActivator
from agent.bundles.lifecycle import EventLog, LifecycleEvent, VersionState, make_event
from agent.bundles.state import InstalledVersion, ModelRecord
from shared.errors import EdgeFleetError

log = logging.getLogger(__name__)
S = VersionState


async def recover(activator: BundleActivator) -> None:
    """Serve every model's last good version and account for interrupted activations."""
    state = activator.keeper.state
    logged = await asyncio.get_running_loop().run_in_executor(
        activator.executor, _last_logged_states, activator.events
    )
    for name, record in sorted(state.models.items()):
        await _announce_commit(activator, name, record, logged)
        activation = record.activation
        if activation is not None:
            phase = S(activation.phase)
            outcome = S.REVERTED if phase is S.PROBATION else S.FAILED
            event = make_event(
                name,
                activation.version,
                activation.digest,
                phase,
                outcome,
                f"the agent restarted during {phase.value}",
                {"attempt": activation.attempts},
            )
            if await _record(activator, event):
                activator.last_state[activation.digest] = outcome
        for installed in (record.active, *record.history):
            if installed is not None and await _restore(activator, name, installed):
                break
        else:
            if record.active is not None:
                log.error("%s: no installed version verifies; waiting for an assignment", name)


def _last_logged_states(events: EventLog) -> dict[str, str]:
    """The state each bundle digest was last logged in (blocking: reads the whole log)."""
    return {event.digest: event.state for event in events.read()}


async def _announce_commit(
    activator: BundleActivator, name: str, record: ModelRecord, logged: dict[str, str]
) -> None:
    """Log the `active` (and `retired`) events of a commit the crash kept out of the log.

    The commit is saved before its event is appended, so an agent killed between the two serves
    the new version after the restart while the log still says it is on probation.
    """
    active = record.active
    if active is None or logged.get(active.digest) != S.PROBATION.value:
        return
    committed = make_event(
        name,
        active.version,
        active.digest,
        S.PROBATION,
        S.ACTIVE,
        "committed just before the agent restarted",
    )
    if not await _record(activator, committed):
        return
    activator.last_state[active.digest] = S.ACTIVE
    replaced = record.history[0] if record.history else None
    if replaced is not None and logged.get(replaced.digest) == S.ACTIVE.value:
        retired = make_event(
            name,
            replaced.version,
            replaced.digest,
            S.ACTIVE,
            S.RETIRED,
            f"replaced by v{active.version}",
        )
        if await _record(activator, retired):
            activator.last_state[replaced.digest] = S.RETIRED


async def _record(activator: BundleActivator, event: LifecycleEvent) -> bool:
    """Log an event; on a full or failing disk say so and go on: serving comes first."""
    try:
        await activator.record(event)
    except OSError as error:
        log.error(
            "%s v%d: cannot log '%s' in the event log (%s); serving anyway",
            event.model,
            event.version,
            event.state,
            error,
        )
        return False
    return True


async def _restore(activator: BundleActivator, name: str, installed: InstalledVersion) -> bool:
    try:
        await activator.restore(name, installed)
    except (EdgeFleetError, OSError) as error:
        log.error(
            "%s v%d (%s) cannot be served again: %s",
            name,
            installed.version,
            installed.digest[:12],
            error,
        )
        return False
    log.info("%s v%d restored from %s", name, installed.version, installed.digest[:12])
    return True
