"""Domain errors of SpecGrove, each carrying the gRPC status code it maps to.

The gRPC layer maps these in one place (by ``code``); library users catch them as ordinary
exceptions. ``code`` is the name of a ``grpc.StatusCode`` member, kept as a string so this
module imports no gRPC.
"""


class SpecGroveError(Exception):
    """Base class: a failure a caller can act on, with a precise message."""

    code = "INTERNAL"


class InvalidArgument(SpecGroveError, ValueError):
    """A request parameter is malformed (wrong type, NaN, empty where a value is required)."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class OutOfRange(InvalidArgument):
    """A request parameter is well-formed but outside its allowed range."""

    code = "OUT_OF_RANGE"


class VocabularyMismatch(SpecGroveError):
    """Draft and target do not share a tokenizer, so draft probabilities mean nothing to the target."""

    code = "FAILED_PRECONDITION"


class ModelLoadError(SpecGroveError):
    """A model path does not hold a loadable causal LM."""

    code = "FAILED_PRECONDITION"


class NotFound(SpecGroveError):
    """A session id (or other named resource) does not exist or has expired."""

    code = "NOT_FOUND"


class PermissionDenied(SpecGroveError):
    """The caller is known but may not do this (e.g. a drafter asked to stream to a verifier it
    was not configured with)."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(SpecGroveError):
    """A server limit is reached (sessions, queue); retry later."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(SpecGroveError):
    """A dependency (Redis, a worker) cannot be reached; retry later."""

    code = "UNAVAILABLE"


class StaleRound(SpecGroveError):
    """A worker got a round older than one it already ran for the session (an abandoned call)."""

    code = "ABORTED"
