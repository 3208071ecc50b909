"""`python -m service` / `par-reward`: run the service with uvicorn."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from service.api.health import begin_draining
from service.app import create_app
from service.config import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="par-reward", description=__doc__)
    parser.add_argument("--host", help="bind address (PAR_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (PAR_PORT; default 8000)")
    parser.add_argument(
        "--model", help="'demo', a local directory or a hub id (PAR_MODEL; default demo)"
    )
    parser.add_argument("--redis-url", help="Redis URL (PAR_REDIS_URL; default in-process)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model": args.model,
            "redis_url": args.redis_url,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(create_app(settings), settings)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run `app` until SIGTERM or SIGINT, then shut down gracefully and return.

    On the first signal /readyz fails at once. The server keeps serving for
    `settings.shutdown_delay_s` (a load balancer takes a moment to notice a failing probe),
    then stops accepting connections, finishes the requests in flight (up to 30 s) and runs
    the lifespan's shutdown. A second signal skips what is left of the delay."""
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal with the handler that was
    # in place before it started. A no-op handler here turns a graceful drain into exit 0,
    # which is what process managers and Kubernetes expect of a clean stop.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
    server = _DrainingServer(
        config, on_signal=lambda: begin_draining(app), delay_s=settings.shutdown_delay_s
    )
    server.run()


class _DrainingServer(uvicorn.Server):
    """uvicorn's server with readiness turned off on the signal, and an optional delay before
    uvicorn's own graceful shutdown (which stops accepting connections at once, so without
    the delay a failing /readyz is seen by nobody: the port is already closed)."""

    def __init__(
        self, config: uvicorn.Config, *, on_signal: Callable[[], None], delay_s: float
    ) -> None:
        super().__init__(config)
        self._on_signal = on_signal
        self._delay_s = delay_s
        self._exit_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only sets flags, which the event loop reads.
        self._on_signal()
        if self._exit_at is None and self._delay_s > 0:
            self._exit_at = time.monotonic() + self._delay_s  # `on_tick` ends the delay
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        return await super().on_tick(counter)


if __name__ == "__main__":
    main()
