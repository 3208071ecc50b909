"""Cancel a request's work when its client disconnects, as raw ASGI middleware.

A trainer that times out and retries must not leave its pairs in the queue: they would take
forward passes from every other client for an answer nobody reads. While the app handles a
request, this middleware waits on the ASGI receive channel for `http.disconnect`; when it comes
before the response, the app's task is cancelled, so `MicroBatcher.submit` cancels the
request's futures and drops its items before the model thread takes them.

The model is vLLM's `with_cancellation`: two tasks, the work and a listener, and the first to
finish ends the other. Like it, this does not poll `Request.is_disconnected()` (that needs the
request object in every route, and a poll between steps is too late for work already queued).
Being middleware, it covers every route without touching them. The listener starts only once
the app has received the whole body: until then the body's messages are the app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

logger = logging.getLogger(__name__)

# nginx's "client closed request": what the metrics and logs record for a request whose client
# left; the client itself never sees it.
CLIENT_CLOSED_REQUEST = 499


class CancelOnDisconnect:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        listener: asyncio.Task[dict[str, Any]] | None = None
        work: asyncio.Task[None] | None = None
        client_gone = False
        started = False

        async def listen() -> dict[str, Any]:
            nonlocal client_gone
            while True:
                message: dict[str, Any] = await receive()
                if message["type"] == "http.disconnect":
                    break
            client_gone = True
            if work is not None and not started:
                work.cancel()
            return message

        async def receive_and_listen() -> Any:
            nonlocal listener
            if listener is not None:
                # The app asks again after its body: the listener owns the channel now.
                return await asyncio.shield(listener)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                listener = asyncio.create_task(listen())
            return message

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True  # too late to cancel: the answer is on its way
            await send(message)

        work = asyncio.create_task(self.app(scope, receive_and_listen, watched_send))
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not client_gone or (current is not None and current.cancelling()):
                raise  # cancelled from outside (server shutdown), not by the listener
            logger.info("client disconnected; cancelled %s %s", scope["method"], scope["path"])
            if not started:
                # Nobody receives this; outer middleware (metrics, logs) counts it.
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST})
                    await send({"type": "http.response.body", "body": b""})
        finally:
            if listener is not None and not listener.done():
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
