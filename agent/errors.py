"""Errors raised by the agent.

    EdgeFleetError
    └── AgentError
        ├── InvalidRequest            the caller sent something malformed            -> 400
        │   ├── PayloadTooLarge       body or tensor over a configured limit          -> 413
        │   └── RequestTimeout        the body did not arrive within its time limit    -> 408
        ├── ModelNotFound             no such model or version                         -> 404
        ├── Unavailable               try again later (carries retry_after seconds)    -> 503
        │   ├── ModelNotReady         the model is loading or failed to load
        │   ├── QueueFull             the model's batching queue is at its bound
        │   └── DeadlineExceeded      the request's timeout passed while it was queued
        ├── Unsupported               a protocol feature the agent does not implement  -> 501
        ├── RuntimeUnavailable        a runtime package is not installed (not an HTTP error)
        ├── ModelLoadError            a runtime could not load a model file
        ├── BackendError              a runtime failed while running a model           -> 500
        └── BundleError               a bundle could not be installed (never an HTTP error)
            ├── DownloadFailed        fetching failed, or the bytes did not match the assignment
            └── ActivationFailed      loading, golden vectors or warm-up failed

HTTP status codes are assigned in exactly one place, `agent.server.middleware`.
Runtime adapters translate vendor exceptions (onnxruntime, OpenVINO, LiteRT) into
`ModelLoadError` and `BackendError`; nothing vendor-specific leaks past them.
"""

from shared.errors import EdgeFleetError


class AgentError(EdgeFleetError):
    """Base class of the agent's errors."""


class InvalidRequest(AgentError):
    """The request is malformed; the message names the field at fault."""


class PayloadTooLarge(InvalidRequest):
    """The request body or a tensor is larger than the configured limit."""


class RequestTimeout(InvalidRequest):
    """The request body did not arrive in time; the connection is closed after the answer."""


class ModelNotFound(AgentError):
    """The requested model or model version does not exist on this agent."""


class Unavailable(AgentError):
    """The request may succeed later; `retry_after` is a hint in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotReady(Unavailable):
    """The model exists but is not loaded (loading, or its load failed)."""


class QueueFull(Unavailable):
    """The model's queue is at its bound; the request was rejected at once."""


class DeadlineExceeded(Unavailable):
    """The request's timeout expired before it could run."""


class Unsupported(AgentError):
    """The request uses a protocol feature this agent does not implement."""


class RuntimeUnavailable(AgentError):
    """A runtime package (onnxruntime, openvino, ai-edge-litert) is not installed or unusable."""


class ModelLoadError(AgentError):
    """A runtime could not load a model file on a device."""


class BackendError(AgentError):
    """A runtime raised while running a model."""


class BundleError(AgentError):
    """A bundle could not be fetched, verified or activated; the previous version keeps serving."""


class DownloadFailed(BundleError):
    """A bundle download failed (after retries) or its bytes did not match the assignment.

    `retryable` is True for network trouble (try again at the next sync) and False when the
    source serves the wrong thing (a 4xx, too many bytes, another digest): retrying would only
    download the same wrong bytes again.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class ActivationFailed(BundleError):
    """A verified bundle failed to load, to match its golden vectors, or to warm up."""
