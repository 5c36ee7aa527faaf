"""Errors raised by batch scoring (`edgefleet batch`).

    AgentError
    └── BatchError        the dataset, the output or the options cannot be used as given

Every `BatchError` is permanent for the command at hand: running it again fails the same way
until the file or option its message names is changed. An interruption is not an error: the
chunks already written stay in `OUTPUT.partial/` and the same command resumes from them.
Runtime failures keep their own classes (`ModelLoadError`, `BackendError`) and trust failures
theirs (`TrustError`); the command line reports each with its message.
"""

from agent.errors import AgentError


class BatchError(AgentError):
    """A dataset, output or option that batch scoring cannot use; the message names it."""
