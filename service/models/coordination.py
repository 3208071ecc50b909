"""Replicas on one Redis converge on the same active model after one admin call.

The desired model (name, path, version) lives in Redis. An admin change on any replica writes
it and publishes a nudge; every replica's reconcile loop wakes on the nudge, or at the latest
after `reconcile_interval_s` (which catches a replica that missed the message, or was
restarted), and loads the desired model if it serves something else. Each replica writes a
heartbeat (version, state, last error) that `GET /v1/admin/replicas` shows.

Redis trouble here never affects scoring or readiness: the loop logs, waits and tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.errors import ServiceError
from service.models.manager import ModelManager
from service.models.registry import ModelRegistry

logger = logging.getLogger(__name__)


class ReplicaCoordinator:
    def __init__(
        self,
        *,
        redis_url: str,
        prefix: str,
        manager: ModelManager,
        registry: ModelRegistry,
        interval_s: float,
        replica_id: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.interval_s = interval_s
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self._redis = aioredis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )  # fmt: skip
        self._desired_key = f"{prefix}:models:desired"
        self._seq_key = f"{prefix}:models:seq"
        self._replicas_key = f"{prefix}:replicas"
        self._channel = f"{prefix}:models:events"
        self._nudge = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.state = "starting"
        self.error: str | None = None

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="replica-listen"),
            asyncio.create_task(self._loop(), name="replica-reconcile"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.hdel(self._replicas_key, self.replica_id)
        await self._redis.aclose()

    # -- admin side ---------------------------------------------------------------------------
    async def publish_active(self) -> None:
        """Make this replica's active model the desired one for all replicas."""
        model = self.registry.active()
        if model is None:
            return
        seq = await self._redis.incr(self._seq_key)
        desired = {"name": model.name, "path": model.location, "version": model.version,
                   "seq": seq, "by": self.replica_id}  # fmt: skip
        await self._redis.set(self._desired_key, json.dumps(desired))
        await self._redis.publish(self._channel, str(seq))
        await self._heartbeat()

    async def replicas(self) -> list[dict[str, Any]]:
        raw = await self._redis.hgetall(self._replicas_key)
        desired = await self._desired()
        now = time.time()
        out = []
        for replica_id, payload in sorted(raw.items()):
            entry = json.loads(payload)
            entry["replica_id"] = replica_id
            entry["stale"] = now - float(entry.get("updated", 0)) > 3 * self.interval_s
            entry["converged"] = desired is None or entry.get("version") == desired["version"]
            out.append(entry)
        return out

    # -- loops --------------------------------------------------------------------------------
    async def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._nudge.set()
            except (RedisError, OSError) as exc:
                logger.warning("replica pub/sub lost (%s); the reconcile loop still runs", exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(self.interval_s)

    async def _loop(self) -> None:
        while True:
            try:
                await self.reconcile()
                await self._heartbeat()
            except (RedisError, OSError) as exc:
                self.error = f"redis: {type(exc).__name__}"
                logger.warning("reconcile skipped: Redis unavailable (%s)", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), timeout=self.interval_s)
            self._nudge.clear()

    async def reconcile(self) -> None:
        """Load the desired model if this replica serves another version."""
        desired = await self._desired()
        active = self.registry.active()
        if desired is None or active is None:
            self.state = "serving" if active is not None else "loading"
            return
        if active.version == desired["version"]:
            self.state, self.error = "serving", None
            return
        if self.manager.swap_lock.locked():
            return  # a change is under way here; look again next round
        self.state = "swapping"
        try:
            model = await self.manager.load(desired["name"], desired["path"])
        except ServiceError as exc:
            self.state, self.error = "diverged", exc.message
            logger.warning("could not load the desired model %s: %s", desired, exc.message)
            return
        if model.version != desired["version"]:
            # Same path, other files (e.g. a replica with a different mount): say so loudly.
            self.state = "diverged"
            self.error = f"loaded version {model.version}, desired {desired['version']}"
            return
        self.state, self.error = "serving", None

    async def _desired(self) -> dict[str, Any] | None:
        raw = await self._redis.get(self._desired_key)
        return json.loads(raw) if raw else None

    async def _heartbeat(self) -> None:
        active = self.registry.active()
        entry = {
            "name": active.name if active else None,
            "version": active.version if active else None,
            "state": self.state,
            "error": self.error,
            "updated": time.time(),
        }
        await self._redis.hset(self._replicas_key, self.replica_id, json.dumps(entry))
