"""A small real HTTP server standing in front of the live service: it answers the first
requests with scripted errors (429/503 with Retry-After, in the service's error body) and
forwards every later one to the service. It records what it was asked, so tests can count
attempts and see how a client spread its requests."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

ERROR_TYPES = {
    429: "overloaded",
    503: "not_ready",
    422: "invalid_request",
    504: "deadline_exceeded",
}


class StubServer:
    def __init__(
        self,
        upstream: str | None = None,
        *,
        errors: Sequence[tuple[int, str | None]] = (),
    ) -> None:
        """`errors`: (status, Retry-After header or None) for the first requests, in order."""
        self.upstream = upstream
        self.errors = list(errors)
        self.requests: list[tuple[str, int]] = []  # (path, status answered)
        self._lock = threading.Lock()
        self._forward = httpx.Client(timeout=120)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._forward.close()

    def _next_error(self) -> tuple[int, str | None] | None:
        with self._lock:
            return self.errors.pop(0) if self.errors else None

    def _record(self, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((path, status))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet tests

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("content-length", 0))))

            def _answer(self, body: bytes) -> None:
                error = stub._next_error()
                if error is not None:
                    status, retry_after = error
                    payload = {
                        "error": {
                            "type": ERROR_TYPES.get(status, "error"),
                            "message": f"scripted {status}",
                            "param": None,
                        }
                    }
                    self._send(status, json.dumps(payload).encode(), retry_after)
                    return
                assert stub.upstream is not None, "no scripted answer left and no upstream"
                upstream = stub._forward.request(
                    self.command,
                    stub.upstream + self.path,
                    content=body,
                    headers={"content-type": "application/json"},
                )
                self._send(
                    upstream.status_code, upstream.content, upstream.headers.get("retry-after")
                )

            def _send(self, status: int, body: bytes, retry_after: str | None) -> None:
                stub._record(self.path, status)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if retry_after is not None:
                    self.send_header("retry-after", retry_after)
                self.end_headers()
                self.wfile.write(body)

        return Handler
