"""What the agent does at start: serve the last committed versions, whatever happened before.

A `kill -9` or a power cut may have interrupted an activation at any step. The state file (written
atomically) says which version was committed and which activation was under way: the interrupted
one is logged as failed (or reverted, if it was on probation), keeps its attempt count so a bundle
that keeps crashing the agent is given up, and the committed version is verified and served again.
If the committed version no longer verifies (a damaged disk), the previous committed ones are tried.
"""

from __future__ import annotations

import logging

from agent.bundles.activation import BundleActivator
from agent.bundles.lifecycle import VersionState, make_event
from agent.bundles.state import InstalledVersion
from shared.errors import EdgeFleetError

log = logging.getLogger(__name__)
S = VersionState


async def recover(activator: BundleActivator) -> None:
    """Serve every model's last good version and account for interrupted activations."""
    state = activator.keeper.state
    for name, record in sorted(state.models.items()):
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
            await activator.record(event)
            activator.last_state[activation.digest] = outcome
        for installed in (record.active, *record.history):
            if installed is not None and await _restore(activator, name, installed):
                break
        else:
            if record.active is not None:
                log.error("%s: no installed version verifies; waiting for an assignment", name)


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
