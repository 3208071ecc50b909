"""Typed errors. Domain code raises these; one handler in `service.app` turns them into the
single error body `{"error": {"type", "message", "param"}}`. Nothing here imports FastAPI."""

from __future__ import annotations

import math


class ServiceError(Exception):
    """Base of every error a client can see. `message` says what to change; `param` names
    the offending field as a path (`items[3].response`) when there is one."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        return {}


class InvalidInput(ServiceError):
    status = 422
    type = "invalid_request"


class MissingReferences(InvalidInput):
    """A reference-based shaping was asked for items whose prompt has no references."""

    type = "missing_references"


class TokenizerFailed(InvalidInput):
    """The tokenizer crashed on a pair (a Rust panic); the service itself is fine."""

    type = "tokenizer_failed"


class BadRequest(ServiceError):
    """The body is not valid JSON / UTF-8 at all."""

    status = 400
    type = "bad_request"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "payload_too_large"


class Unauthorized(ServiceError):
    status = 401
    type = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status = 403
    type = "forbidden"


class NotFound(ServiceError):
    status = 404
    type = "not_found"


class ModelNotFound(NotFound):
    type = "model_not_found"


class Conflict(ServiceError):
    status = 409
    type = "conflict"


class ModelVersionMismatch(Conflict):
    type = "model_version_mismatch"


class Overloaded(ServiceError):
    """Admission refused: the queue is full. Retryable after `retry_after` seconds."""

    status = 429
    type = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class NotReady(ServiceError):
    status = 503
    type = "not_ready"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class StoreUnavailable(ServiceError):
    """The reference store cannot answer and no correct result can be computed without it.
    Retryable after `retry_after` seconds (the breaker's cool-down left, when it is open)."""

    status = 503
    type = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0, param: str | None = None):
        super().__init__(message, param=param)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class DeadlineExceeded(ServiceError):
    status = 504
    type = "deadline_exceeded"


class ModelOutputError(ServiceError):
    """The model produced a non-finite reward; refusing to return a made-up number."""

    status = 500
    type = "model_output_error"
