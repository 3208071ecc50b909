"""Limits on the request body as raw ASGI middleware, cheapest first, before any JSON is parsed:

- `BodySizeLimit` answers 413 from the Content-Length header before reading anything, and stops
  a chunked or lying body as soon as it passes the limit, before the JSON parser sees it.
- `JsonTextCheck` answers 400 for a JSON body that is not text a tokenizer can take: not
  UTF-8, a NUL byte, or a lone UTF-16 surrogate escape.

What comes after, in the app: not JSON at all, or nested past the parser's recursion limit
(400, `api/errors.py`); NaN/Infinity and schema violations (422, pydantic); item counts and
characters per item (422, before tokenizing); tokens per pair (422 or left truncation).
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from service.api.cancellation import CLIENT_CLOSED_REQUEST

Scope = dict[str, Any]


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Any) -> None:
        body = json.dumps(
            {
                "error": {
                    "type": "payload_too_large",
                    "message": f"the body is over the limit of {self.max_bytes} bytes; "
                    "send smaller "
                    "batches",
                    "param": None,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


# A \uD800-\uDFFF escape: half of a surrogate pair, or a lone one. Rare in real bodies except
# as escaped astral characters (emoji: json.dumps' ensure_ascii writes them as pairs).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class JsonTextCheck:
    """Rejects JSON bodies whose text is not valid Unicode, with 400 `bad_request`.

    Python's `json.loads` takes more than RFC 8259 allows, and what it lets through breaks
    later steps with a 500: it sniffs UTF-16/32, decodes UTF-8-encoded surrogates
    ('surrogatepass'), and turns an unpaired escape like "\\ud800" into a lone surrogate that
    pydantic accepts as `str` but the Rust tokenizer, the hashing of reference texts and the
    Redis encoder all refuse. Checked here, on the raw bytes, for every route at once:

    - not UTF-8 (strict: an encoded surrogate fails too); ASCII bodies skip the decode;
    - a NUL byte (never in JSON text; a UTF-16 body is full of them);
    - a surrogate escape without its pair. A quick byte search finds no escape at all in
      almost every body; only when it finds one is the body parsed to tell pairs (fine, they
      decode to one character) from lone halves.

    The body is read in full (`BodySizeLimit`, outside, bounds it) and handed on unchanged.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or not _json_content(scope)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # The client left before sending the whole body: nobody to answer; outer
                # middleware (metrics) records it as such, not as a server error.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST})
                    await send({"type": "http.response.body", "body": b""})
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = json_text_problem(body)
        if problem is not None:
            await _send_error(send, 400, "bad_request", problem)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def json_text_problem(body: bytes) -> str | None:
    """What makes this JSON body unusable as text, or None."""
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"the body is not valid UTF-8 (at byte {exc.start}); send JSON encoded as UTF-8"
    if b"\x00" in body:
        return "the body holds a NUL byte, which JSON text never does; send JSON as UTF-8"
    if _SURROGATE_ESCAPE.search(body) and _has_lone_surrogate(body):
        return (
            "the body holds a lone UTF-16 surrogate: a \\u escape in D800-DFFF without its "
            "pair, which is not a character; send valid Unicode text"
        )
    return None


def _has_lone_surrogate(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
        # Pairs were joined into one character by the parser; a surrogate left is lone, and
        # strict UTF-8 encoding refuses exactly those.
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False  # not JSON at all: the app answers that, with its own message
    return False


def _json_content(scope: Scope) -> bool:
    """A body FastAPI will parse as JSON (or an older FastAPI might: no content type)."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return True


async def _send_error(send: Any, status: int, type_: str, message: str) -> None:
    body = json.dumps({"error": {"type": type_, "message": message, "param": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
