"""The documented error responses, shared by the routers (OpenAPI)."""

from typing import Any

from service.schemas import ErrorBody

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Body is not JSON, not UTF-8, holds a lone surrogate or is nested too deeply",
        401: "Missing or wrong bearer token: an API key (PAR_API_KEYS), or the admin token "
        "for /v1/admin",
        404: "Unknown model",
        409: "Model version mismatch",
        413: "Body too large",
        422: "Invalid input (which item, which field)",
        429: "Overloaded; retry after Retry-After",
        503: "Not ready, or the store is unavailable; retryable",
        504: "Deadline passed",
    }.items()
}
