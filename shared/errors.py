"""The root of every EdgeFleet error.

Each package derives its own tree from `EdgeFleetError` (the agent's lives in `agent.errors`),
so callers can catch "anything EdgeFleet raised on purpose" in one clause while vendor
exceptions are translated at the seam where they occur.
"""


class EdgeFleetError(Exception):
    """Base class of every error EdgeFleet raises on purpose."""
