"""The one exception tree of phage.

Every error phage raises on purpose derives from :class:`PhageError`, and each
subclass carries the HTTP status and gRPC code it maps to, so the edges (HTTP
routes, gRPC servicer, CLI) translate without knowing every case::

    PhageError
    ├── InvalidInput            a request field is malformed or over a limit (400/413)
    │   └── PayloadTooLarge     an upload or workspace exceeds its size limit (413)
    ├── Unauthenticated         no or unknown credentials: API key, certificate, token (401)
    ├── PermissionDenied        credentials are valid but may not do this (403)
    ├── NotFound                the task, node, output or key does not exist (404)
    ├── Conflict                the request is valid but the state forbids it (409)
    ├── PaymentRequired         the API key's credit limit is spent (402)
    ├── RateLimited             too many attempts from one source, or a key over its quota (429)
    ├── Unavailable             nothing can serve this now: no node has the model, a node died (503)
    │   └── StoreUnavailable    the database cannot be reached; retry after a moment (503 + Retry-After)
    ├── EngineError             an inference engine failed to start, load a model or generate
    ├── SandboxError            the node cannot isolate a task as it requires
    ├── ProtocolError           a peer broke the node protocol (bad result, replay)
    └── StoreError              the durable store failed or is inconsistent
"""

from __future__ import annotations

from typing import ClassVar


class PhageError(Exception):
    """Root of every deliberate phage error."""

    http_status: ClassVar[int] = 500
    grpc_code: ClassVar[str] = "INTERNAL"
    retry_after_s: float | None = None
    """When set, the HTTP edge sends ``Retry-After``: the same request may well succeed then."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, object]:
        """The JSON body the HTTP edge returns for this error."""
        body: dict[str, object] = {"error": type(self).__name__, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidInput(PhageError):
    """A request field is malformed, of the wrong type or over a limit."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class PayloadTooLarge(InvalidInput):
    """An upload, workspace or output exceeds its configured size limit."""

    http_status = 413


class Unauthenticated(PhageError):
    """No credentials, or credentials phage does not recognise."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PermissionDenied(PhageError):
    """Valid credentials that may not perform this action."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"


class NotFound(PhageError):
    """The named task, node, output or key does not exist."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Conflict(PhageError):
    """The request is well formed but the current state forbids it."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class PaymentRequired(PhageError):
    """The caller's API key has used up its credit limit."""

    http_status = 402
    grpc_code = "RESOURCE_EXHAUSTED"


class Unavailable(PhageError):
    """Nothing can serve the request now (no live node has the model, the node serving it died)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"


class StoreUnavailable(Unavailable):
    """The database cannot be reached (down, restarting, unreachable): the request was not carried out."""

    retry_after_s = 2


class InputMissing(Unavailable):
    """A chain node waited in vain for the node before it to hand over a step's input."""


class EngineError(PhageError):
    """An inference engine could not start, load a model, or generate."""

    http_status = 502
    grpc_code = "UNAVAILABLE"


class SandboxError(PhageError):
    """A node cannot provide the isolation a task requires, or the sandbox broke."""

    grpc_code = "FAILED_PRECONDITION"


class ProtocolError(PhageError):
    """A peer broke the node protocol: a result for a foreign or spent assignment."""

    http_status = 400
    grpc_code = "FAILED_PRECONDITION"


class StoreError(PhageError):
    """The durable store failed or returned something inconsistent."""


class RateLimited(PhageError):
    """A source or key sent more than its share: too many attempts, or over a quota (429)."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float = 1.0) -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s
