"""Two service processes on one real Redis follow one admin call, including a replica that
never got the pub/sub message (the periodic reconcile catches it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import redis

from service.demo.factory import build_seqcls_rm
from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

pytestmark = [pytest.mark.e2e]

TOKEN = "replica-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def served_version(proc: ServiceProcess) -> str:
    return str(httpx.get(f"{proc.url}/v1/models", timeout=10).json()["active_version"])


def wait_for(predicate, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def test_replicas_converge_on_one_admin_call(tmp_path: Path, tokenizer_dir: Path) -> None:
    root = tmp_path / "models"
    for name, seed in (("a", 1), ("b", 2)):
        build_seqcls_rm(root / name, tokenizer_dir, seed=seed)
    server = RedisServer().start()
    env = {
        "PAR_REDIS_URL": server.url,
        "PAR_ADMIN_TOKEN": TOKEN,
        "PAR_MODEL_ROOTS": json.dumps([str(root)]),
        "PAR_RECONCILE_INTERVAL_S": "1.0",
        "PAR_CACHE_DIR": str(tmp_path / "cache"),
    }
    first = ServiceProcess(model=str(root / "a"), env={**env, "PAR_REPLICA_ID": "r1"})
    second = ServiceProcess(model=str(root / "a"), env={**env, "PAR_REPLICA_ID": "r2"})
    try:
        first.start()
        second.start()
        version_a = served_version(first)
        assert served_version(second) == version_a

        # One admin call on the first replica; the second follows through pub/sub.
        r = httpx.post(f"{first.url}/v1/admin/models", json={"name": "default", "path": "b"},
                       headers=AUTH, timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
        version_b = r.json()["active_version"]
        assert version_b != version_a
        wait_for(lambda: served_version(second) == version_b, 15, "the second replica")

        # A lost message: the desired state changes in Redis with no publish at all. Only the
        # periodic reconcile can see it, within the interval (plus a load).
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            desired = json.loads(client.get("par:models:desired"))
            desired.update(path=str(root / "a"), version=version_a, seq=desired["seq"] + 1)
            client.set("par:models:desired", json.dumps(desired))
        finally:
            client.close()
        took = wait_for(
            lambda: served_version(first) == version_a and served_version(second) == version_a,
            15, "both replicas to reconcile",
        )  # fmt: skip
        assert took < 15

        listing = httpx.get(f"{first.url}/v1/admin/replicas", headers=AUTH, timeout=10).json()
        assert listing["desired_by_redis"] is True
        by_id = {r["replica_id"]: r for r in listing["replicas"]}
        wait_for(
            lambda: all(
                r["version"] == version_a and r["converged"]
                for r in httpx.get(f"{first.url}/v1/admin/replicas", headers=AUTH,
                                   timeout=10).json()["replicas"]
            ),
            5, "heartbeats to show convergence",
        )  # fmt: skip
        assert set(by_id) == {"r1", "r2"}
    finally:
        codes = [first.stop(), second.stop()]  # stop everything before asserting
        server.cleanup()
        assert codes == [0, 0]
