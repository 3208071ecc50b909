"""Typed errors, built from the service's one error body
`{"error": {"type", "message", "param"}}`: one class per family of HTTP status, so callers catch
what they can act on (`Overloaded`: wait; `InvalidRequest`: fix item `param`)."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
from collections.abc import Mapping

import httpx


class RewardServiceError(Exception):
    """Base of every client error. `status` is the HTTP status (None when no response came
    back), `type` the service's error type (`invalid_request`, `overloaded`...), `param` the
    offending field (`items[3].response`) when the service named one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        kind = f"{self.status} {self.type}: " if self.status is not None else ""
        return f"{kind}{self.message}{where}"


class InvalidRequest(RewardServiceError):
    """400 or 422: the request is wrong; retrying it unchanged cannot help."""


class MissingReferences(InvalidRequest):
    """422 `missing_references`: a reference-based shaping for prompts without references."""


class AuthenticationError(RewardServiceError):
    """401 or 403."""


class NotFound(RewardServiceError):
    """404: unknown model (or route)."""


class PayloadTooLarge(RewardServiceError):
    """413: the body is over the service's limit; lower `max_pairs_per_request`."""


class VersionMismatch(RewardServiceError):
    """409: the served model version is not the expected one (a hot swap happened)."""


class Overloaded(RewardServiceError):
    """429: the service's queue is full; retried after `retry_after` seconds."""


class Unavailable(RewardServiceError):
    """503: not ready, draining, or its store is down; retried (on the next replica)."""


class DeadlineExceeded(RewardServiceError):
    """504: the service gave up on the request's deadline."""


class ServerError(RewardServiceError):
    """Any other 5xx."""


class ConnectionFailed(RewardServiceError):
    """No base URL accepted a connection, or one dropped it mid-request; retried."""


class RequestTimeout(RewardServiceError):
    """The client's own timeout passed while waiting for an answer. Not retried: the service
    may still be working on it, and a retry would double the load that caused it."""


# What the retry loop retries. Everything else is raised at once.
RETRYABLE: tuple[type[RewardServiceError], ...] = (Overloaded, Unavailable, ConnectionFailed)

_BY_STATUS: dict[int, type[RewardServiceError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFound,
    409: VersionMismatch,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: Overloaded,
    503: Unavailable,
    504: DeadlineExceeded,
}


def error_from_response(response: httpx.Response) -> RewardServiceError:
    """The typed error for a non-2xx response; tolerates bodies that are not the service's
    (a proxy's HTML page), keeping the status."""
    detail: Mapping[str, object] = {}
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"]
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    status = response.status_code
    type_ = str(detail.get("type") or f"http_{status}")
    message = str(detail.get("message") or response.text[:500] or response.reason_phrase)
    param = detail.get("param")
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else RewardServiceError)
    if cls is InvalidRequest and type_ == "missing_references":
        cls = MissingReferences
    return cls(
        message,
        status=status,
        type=type_,
        param=str(param) if param is not None else None,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in either form: delta-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())
