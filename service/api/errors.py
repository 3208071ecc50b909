"""The one error handler: every failure leaves as `{"error": {"type", "message", "param"}}`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError

logger = logging.getLogger(__name__)


def error_response(
    status: int, type_: str, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


MAX_FIELD_NAME = 64


def loc_to_param(loc: Sequence[Any]) -> str | None:
    """('body', 'items', 3, 'response') -> 'items[3].response'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not str(part).isidentifier():
            continue  # pydantic's validator tags such as 'function-after[...]', not a field
        elif len(str(part)) > MAX_FIELD_NAME:
            continue  # an unknown key that long is input, not a typo worth naming back
        else:
            out += f".{part}" if out else str(part)
    return out or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.type, exc.message)
        return error_response(exc.status, exc.type, exc.message, exc.param, exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return error_response(
                400, "bad_request", "the body is not valid JSON; send a JSON object"
            )
        param = loc_to_param(first.get("loc", ()))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        # The input itself is never echoed back: it may be large or sensitive.
        return error_response(422, "invalid_request", f"{param or 'body'}: {message}{more}", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.__cause__ is not None:
            # FastAPI's JSON parsing failed on something other than a syntax error.
            return error_response(400, "bad_request", _unparsable(exc.__cause__))
        kinds = {404: "not_found", 405: "method_not_allowed"}
        return error_response(
            exc.status_code,
            kinds.get(exc.status_code, "http_error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; it has been logged")


def _unparsable(cause: BaseException) -> str:
    """Why FastAPI could not parse a body, in words (never the body itself)."""
    if isinstance(cause, RecursionError):
        # The C parser stops at the interpreter's recursion limit (about a thousand levels),
        # in microseconds; no request of this API is more than a few levels deep.
        return "the body is nested too deeply to parse; send the request's own JSON shape"
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not valid UTF-8; send JSON encoded as UTF-8"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the body holds a number with too many digits; send ordinary JSON numbers"
    return f"the body could not be parsed as JSON ({type(cause).__name__}); send a JSON object"
