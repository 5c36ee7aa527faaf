"""The error raised when sample models cannot be generated."""

from agent.errors import AgentError


class SampleModelsError(AgentError):
    """Generating the sample models failed; the message says why and what to do."""
