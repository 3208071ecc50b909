"""Authentication as raw ASGI middleware, so it is decided from the headers alone, before a
single body byte is read. Tokens are compared in constant time.

- `AdminAuth`: the admin API, deny by default: with no admin token configured it is off.
- `ApiKeyAuth`: every other route, when API keys are configured (`PAR_API_KEYS`), except the
  probes (/healthz, /readyz: kubelets and load balancers send no credentials) and /metrics
  (Prometheus scrapes it; it holds counts and distributions, never request text). Admin routes
  are left to `AdminAuth`: one Authorization header cannot carry two tokens.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

ADMIN_PREFIX = "/v1/admin"


class AdminAuth:
    def __init__(self, app: Any, *, token: str | None, prefix: str = ADMIN_PREFIX) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.prefix = prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        if self.token is None:
            await _reject(send, 403, "forbidden", "the admin API is off; set PAR_ADMIN_TOKEN")
            return
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = credentials.strip()
        if not given or not hmac.compare_digest(given, self.token):
            await _reject(
                send,
                401,
                "unauthorized",
                "admin routes need 'Authorization: Bearer <PAR_ADMIN_TOKEN>'",
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ApiKeyAuth:
    def __init__(self, app: Any, *, keys: list[str], admin_prefix: str = ADMIN_PREFIX) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.admin_prefix = admin_prefix

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] == "lifespan"
            or path in OPEN_PATHS
            or path == self.admin_prefix
            or path.startswith(self.admin_prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        # Compare against every key, without stopping at a match: the time taken does not
        # depend on which key (if any) matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        if not given or not matched:
            if scope["type"] == "websocket":  # none today; refused before the handshake
                await send({"type": "websocket.close", "code": 1008})
                return
            await _reject(
                send,
                401,
                "unauthorized",
                "this service needs 'Authorization: Bearer <API key>' (one of PAR_API_KEYS)",
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


def _bearer(scope: dict[str, Any]) -> bytes:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return bytes(credentials.strip())
    return b""


async def _reject(
    send: Any, status: int, type_: str, message: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": {"type": type_, "message": message, "param": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})
