"""The one line an agent shows in `systemctl status`: what it serves, or what it waits for."""

from __future__ import annotations

from agent.dataplane import DataPlane
from agent.model import ModelState


def status_line(dataplane: DataPlane) -> str:
    """E.g. "ready: serving 2 models", "waiting for an assignment", "loading: 1 of 2 serving"."""
    repository = dataplane.repository
    names = repository.names()
    serving = sum(
        any(m.state is ModelState.READY for m in repository.versions_or_none(name))
        for name in names
    )
    if dataplane.ready():
        return f"ready: serving {serving} model{'' if serving == 1 else 's'}"
    if not names:
        return "waiting for an assignment"
    return f"loading: {serving} of {len(names)} models serving"
