"""RedisStore on a real redis-server (started by the tests, see conftest.py): the shared store
contract, plus what only Redis has: one round trip per lookup, atomicity across processes,
replicas sharing data, the key layout, and failures turned into StoreUnavailable."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.asyncio.connection import AbstractConnection

from service.config import Settings
from service.errors import StoreUnavailable
from service.scoring.running_stats import RunningStats
from service.store import create_store
from service.store.keys import ref_id
from service.store.redis import RedisStore
from tests.redis import worker
from tests.redis.server import RedisServer
from tests.unit.test_memory_store import (
    S,
    StoreContract,
    assert_stats_close,
    batches,
    make_prompt,
)

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[2]


class TestRedisStoreContract(StoreContract):
    @pytest.fixture
    async def store(self, redis_store: RedisStore) -> AsyncIterator[RedisStore]:
        yield redis_store


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


# --- one round trip ----------------------------------------------------------------------
async def test_lookup_is_one_round_trip(
    redis_store: RedisStore, clean_redis: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = [make_prompt(f"p{i}", [f"a{i}", f"b{i}"]) for i in range(50)]
    await redis_store.register(prompts)
    await redis_store.save_scores(
        "v1", {p.prompt_key: {rid: S(0.5) for rid in p.references} for p in prompts}
    )
    await redis_store.ping()  # a warm pooled connection: no connect handshake below

    writes: list[int] = []
    original = AbstractConnection.send_packed_command

    async def spy(self, command, check_health=True):  # type: ignore[no-untyped-def]
        writes.append(id(self))
        return await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", spy)
    client = sync_client(clean_redis)
    try:
        client.config_resetstat()
        got = await redis_store.lookup("v1", [p.prompt_key for p in prompts])
        stats = client.info("commandstats")
    finally:
        client.close()

    assert len(writes) == 1, f"lookup wrote to the socket {len(writes)} times"
    # ...and that single write carried every command (server-side count)
    assert stats["cmdstat_lrange"]["calls"] == 50
    assert stats["cmdstat_hgetall"]["calls"] == 50
    assert all(len(got[p.prompt_key].registered) == 2 for p in prompts)
    assert all(set(got[p.prompt_key].scores.values()) == {S(0.5)} for p in prompts)


# --- replicas ----------------------------------------------------------------------------
async def test_two_stores_share_references_and_run_stats(clean_redis: str) -> None:
    a = RedisStore(clean_redis, prefix="shared")
    b = RedisStore(clean_redis, prefix="shared")
    try:
        p = make_prompt("shared prompt", ["x", "y"])
        assert await a.register([p]) == 2
        assert await b.register([p]) == 0
        await a.save_scores("v", {p.prompt_key: {ref_id("x"): S(0.25)}})
        got = (await b.lookup("v", [p.prompt_key]))[p.prompt_key]
        assert got.registered == (ref_id("x"), ref_id("y"))
        assert dict(got.scores) == {ref_id("x"): S(0.25)}
        assert await b.reference_texts({p.prompt_key: [ref_id("y")]}) == {
            p.prompt_key: {ref_id("y"): "y"}
        }
        s1 = RunningStats.from_values(np.array([1.0, 2.0]))
        s2 = RunningStats.from_values(np.array([3.0]))
        await a.update_run_stats("r", "meanstd", s1)
        assert await b.update_run_stats("r", "meanstd", s2) == s1.merge(s2)
        assert await a.get_run_stats("r") == {"meanstd": s1.merge(s2)}
        assert await b.all_prompt_keys() == [p.prompt_key]
    finally:
        await a.close()
        await b.close()


async def test_prefixes_isolate(clean_redis: str) -> None:
    a = RedisStore(clean_redis, prefix="one")
    b = RedisStore(clean_redis, prefix="two")
    try:
        p = make_prompt("p", ["x"])
        await a.register([p])
        await a.save_scores("v", {p.prompt_key: {ref_id("x"): S(1.0)}})
        await a.update_run_stats("r", "clip", RunningStats.from_values(np.array([1.0])))
        assert (await b.lookup("v", [p.prompt_key]))[p.prompt_key].registered == ()
        assert await b.get_run_stats("r") == {}
        assert await b.all_prompt_keys() == []
    finally:
        await a.close()
        await b.close()


async def test_key_layout(redis_store: RedisStore, clean_redis: str) -> None:
    p = make_prompt("layout", ["first", "second"])
    await redis_store.register([p])
    await redis_store.save_scores("ver1", {p.prompt_key: {ref_id("first"): S(0.1 + 0.2)}})
    await redis_store.update_run_stats(
        "run9", "meanstd", RunningStats.from_values(np.array([1.0, 3.0]))
    )
    pk = p.prompt_key
    client = sync_client(clean_redis)
    try:
        tokens = list(client.keys("test:merged:*"))  # one per merge, short-lived
        assert len(tokens) == 1 and 0 < client.pttl(tokens[0]) <= 30_000
        assert set(client.keys("*")) - set(tokens) == {
            "test:prompts",
            f"test:prompt:{pk}",
            f"test:refs:{pk}",
            f"test:refs_order:{pk}",
            f"test:scores:ver1:{pk}",
            "test:run:run9",
        }
        assert client.smembers("test:prompts") == {pk}
        assert client.hgetall(f"test:prompt:{pk}") == {"json": p.prompt_json}
        assert client.hgetall(f"test:refs:{pk}") == {
            ref_id("first"): "first",
            ref_id("second"): "second",
        }
        assert client.lrange(f"test:refs_order:{pk}", 0, -1) == [ref_id("first"), ref_id("second")]
        assert client.hgetall(f"test:scores:ver1:{pk}") == {ref_id("first"): f"{0.1 + 0.2!r} 7"}
        run = client.hgetall("test:run:run9")
        assert {k: float(v) for k, v in run.items()} == {
            "meanstd:count": 2.0,
            "meanstd:mean": 2.0,
            "meanstd:m2": 2.0,
            "meanstd:min": 1.0,
            "meanstd:max": 3.0,
        }
    finally:
        client.close()


async def test_scripts_reload_after_script_flush(redis_store: RedisStore, clean_redis: str) -> None:
    one = RunningStats.from_values(np.array([1.0]))
    await redis_store.register([make_prompt("p", ["a"])])
    await redis_store.update_run_stats("r", "m", one)
    client = sync_client(clean_redis)
    try:
        client.script_flush()  # e.g. a Redis restart or failover
    finally:
        client.close()
    assert await redis_store.register([make_prompt("p", ["b"])]) == 1
    assert (await redis_store.update_run_stats("r", "m", one)).count == 2


async def test_concurrent_updates_from_many_store_instances(clean_redis: str) -> None:
    stores = [RedisStore(clean_redis, prefix="many") for _ in range(8)]
    per_task = [batches(seed=200 + t, n=30) for t in range(8)]

    async def run(store: RedisStore, parts: list[np.ndarray]) -> None:
        for part in parts:
            await store.update_run_stats("r", "meanstd", RunningStats.from_values(part))

    try:
        await asyncio.gather(*(run(s, parts) for s, parts in zip(stores, per_task, strict=True)))
        got = (await stores[0].get_run_stats("r"))["meanstd"]
    finally:
        for s in stores:
            await s.close()
    everything = np.concatenate([p for parts in per_task for p in parts])
    assert_stats_close(got, RunningStats.from_values(everything))


# --- separate OS processes ---------------------------------------------------------------
def run_workers(url: str, prefix: str, mode: str, seeds: list[int]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.redis.worker", url, prefix, mode, str(seed), f"w{seed}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in seeds
    ]
    client = sync_client(url)
    try:
        deadline = time.monotonic() + 60
        while int(client.get(f"{prefix}:test:ready") or 0) < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                for p in procs:
                    p.kill()
                outs = [p.communicate() for p in procs]
                pytest.fail(f"workers did not get ready: {outs}")
            time.sleep(0.01)
        client.set(f"{prefix}:test:go", "1")
    finally:
        client.close()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def test_run_stats_from_two_processes_equal_sequential(clean_redis: str) -> None:
    seeds = [11, 12]
    results = await asyncio.to_thread(run_workers, clean_redis, "mp", "stats", seeds)
    assert [r["updates"] for r in results] == [worker.STATS_BATCHES] * 2

    store = RedisStore(clean_redis, prefix="mp")
    try:
        got = (await store.get_run_stats("shared-run"))["meanstd"]
    finally:
        await store.close()
    sequential = RunningStats()
    for seed in seeds:
        for part in batches(seed=seed, n=worker.STATS_BATCHES):
            sequential = sequential.merge(RunningStats.from_values(part))
    assert_stats_close(got, sequential)
    everything = np.concatenate([p for s in seeds for p in batches(seed=s, n=worker.STATS_BATCHES)])
    assert_stats_close(got, RunningStats.from_values(everything))


async def test_registration_from_two_processes_keeps_each_once(clean_redis: str) -> None:
    results = await asyncio.to_thread(run_workers, clean_redis, "mpreg", "register", [1, 2])
    total = worker.PROMPTS * worker.REFS_PER_PROMPT
    # every text was new for exactly one of the two processes
    assert sum(r["new"] for r in results) == total

    store = RedisStore(clean_redis, prefix="mpreg")
    try:
        for i in range(worker.PROMPTS):
            expected = [f"reference {j} of prompt {i}" for j in range(worker.REFS_PER_PROMPT)]
            pk = make_prompt(f"prompt {i}", []).prompt_key
            got = (await store.lookup("v", [pk]))[pk]
            assert len(got.registered) == worker.REFS_PER_PROMPT
            assert set(got.registered) == {ref_id(t) for t in expected}
            texts = await store.reference_texts({pk: list(got.registered)})
            assert sorted(texts[pk].values()) == sorted(expected)
        assert len(await store.all_prompt_keys()) == worker.PROMPTS
    finally:
        await store.close()


# --- failures ----------------------------------------------------------------------------
def assert_clean_message(err: StoreUnavailable, server: RedisServer) -> None:
    text = str(err)
    assert server.password and server.password not in text
    assert str(server.port) not in text
    assert "127.0.0.1" not in text and "redis://" not in text
    assert err.status == 503


async def every_operation(store: RedisStore) -> list:
    p = make_prompt("p", ["a"])
    one = RunningStats.from_values(np.array([1.0]))
    return [
        lambda: store.lookup("v", [p.prompt_key]),
        lambda: store.reference_texts({p.prompt_key: [ref_id("a")]}),
        lambda: store.register([p]),
        lambda: store.save_scores("v", {p.prompt_key: {ref_id("a"): S(1.0)}}),
        lambda: store.update_run_stats("r", "meanstd", one),
        lambda: store.get_run_stats("r"),
        lambda: store.reset_run_stats("r"),
        lambda: store.all_prompt_keys(),
        lambda: store.prompt_json(p.prompt_key),
        store.ping,
    ]


async def test_store_unavailable_fast_when_server_dies(own_server: RedisServer) -> None:
    # Each operation's own failure is under test here, not the breaker (test_faults.py).
    store = RedisStore(own_server.url, prefix="t", timeout_s=1.0, breaker_failures=100)
    try:
        p = make_prompt("p", ["a"])
        await store.register([p])
        await store.ping()
        own_server.kill()
        for op in await every_operation(store):
            start = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await op()
            assert time.monotonic() - start < 3.0
            assert isinstance(info.value.__cause__, redis.RedisError)
            assert_clean_message(info.value, own_server)

        # the same store recovers once Redis is back (empty: no persistence)
        own_server.restart()
        await store.ping()
        assert await store.register([p]) == 1
    finally:
        await store.close()


async def test_store_unavailable_when_server_hangs(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, prefix="t", timeout_s=0.3)
    try:
        p = make_prompt("p", ["a"])
        await store.register([p])
        own_server.pause()
        try:
            for op in (await every_operation(store))[:3]:
                start = time.monotonic()
                with pytest.raises(StoreUnavailable, match="timed out") as info:
                    await op()
                # Bounded by the timeout, not hanging: a call that waited for an answer would
                # wait until the resume below. Loose, for a busy CI machine.
                assert time.monotonic() - start < 5.0
                assert_clean_message(info.value, own_server)
        finally:
            own_server.resume()
        got = (await store.lookup("v", [p.prompt_key]))[p.prompt_key]
        assert got.registered == (ref_id("a"),)
    finally:
        await store.close()


async def test_store_unavailable_when_never_reachable(own_server: RedisServer) -> None:
    url = own_server.url
    own_server.stop()
    store = RedisStore(url, timeout_s=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable") as info:
            await store.lookup("v", ["a" * 32])
        assert time.monotonic() - start < 3.0
        assert_clean_message(info.value, own_server)
    finally:
        await store.close()


async def test_wrong_password_is_store_unavailable(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url.replace("s3cret-pw", "wrong-pw"), timeout_s=0.5)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.ping()
        assert "wrong-pw" not in str(info.value)
        assert_clean_message(info.value, own_server)
    finally:
        await store.close()


async def test_create_store_with_redis_url(clean_redis: str) -> None:
    store = create_store(Settings(redis_url=clean_redis, redis_prefix="cfg", redis_timeout_s=0.5))
    try:
        assert isinstance(store, RedisStore)
        await store.ping()
        await store.register([make_prompt("p", ["a"])])
        client = sync_client(clean_redis)
        try:
            assert client.exists("cfg:prompts")
        finally:
            client.close()
    finally:
        await store.close()
