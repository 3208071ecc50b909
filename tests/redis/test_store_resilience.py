"""RedisStore on a misbehaving real `redis-server`: the circuit breaker, the in-process copy a
failed lookup hands back, merges of run statistics that run late or are retried, and the state
it reports for metrics."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import redis

from service.errors import StoreUnavailable
from service.scoring.running_stats import RunningStats
from service.store import redis as redis_store_module
from service.store.base import LookupUnavailable, PromptReferences
from service.store.keys import ref_id
from service.store.redis import RedisStore
from tests.redis.server import RedisServer
from tests.unit.test_memory_store import S, make_prompt

pytestmark = pytest.mark.redis

ONE = RunningStats.from_values(np.array([1.0, 2.0]))


async def test_the_breaker_opens_fails_fast_and_recovers_without_a_restart(
    own_server: RedisServer,
) -> None:
    store = RedisStore(own_server.url, timeout_s=0.3, breaker_failures=3, breaker_cooldown_s=0.5)
    try:
        await store.ping()
        own_server.pause()  # every call now waits out its timeout
        for _ in range(3):
            with pytest.raises(StoreUnavailable, match="timed out"):
                await store.ping()
        assert store.state()["breaker"] == "open"
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="not trying again") as info:
            await store.ping()
        # No round trip at all: one to the paused server would wait out the 0.3 s timeout.
        assert time.monotonic() - started < 0.25
        assert 1 <= int(info.value.headers()["Retry-After"]) <= 1
        await asyncio.sleep(0.5)
        assert store.state()["breaker"] == "half_open"
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.ping()  # the trial, still paused: open again
        assert store.state()["breaker"] == "open"
        own_server.resume()
        await asyncio.sleep(0.5)
        await store.ping()  # the trial succeeds: closed
        state = store.state()
        assert state["breaker"] == "closed" and state["consecutive_failures"] == 0
        assert state["opened"] == 2 and state["rejected"] >= 1
    finally:
        own_server.resume()
        await store.close()


async def test_a_failed_lookup_hands_back_the_in_process_copy(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url, timeout_s=0.5, breaker_failures=100)
    try:
        known = make_prompt("known", ["a", "b"])
        never_seen = make_prompt("never seen", ["c"])
        await store.register([known])
        await store.save_scores("v1", {known.prompt_key: {ref_id("a"): S(0.25)}})
        own_server.kill()
        with pytest.raises(LookupUnavailable) as info:
            await store.lookup("v1", [known.prompt_key, never_seen.prompt_key])
        assert info.value.known == {
            known.prompt_key: PromptReferences((ref_id("a"), ref_id("b")), {ref_id("a"): S(0.25)})
        }
        assert isinstance(info.value.__cause__, redis.RedisError)
        assert store.state()["copy_served"] == 1
        # Scores computed while Redis is down are kept here, best effort.
        with pytest.raises(StoreUnavailable):
            await store.save_scores("v1", {known.prompt_key: {ref_id("b"): S(0.5)}})
        with pytest.raises(LookupUnavailable) as info:
            await store.lookup("v1", [known.prompt_key])
        assert info.value.known[known.prompt_key].scores == {
            ref_id("a"): S(0.25),
            ref_id("b"): S(0.5),
        }
    finally:
        await store.close()


async def test_a_merge_run_late_by_a_stopped_server_is_not_applied(
    own_server: RedisServer,
) -> None:
    """A stopped server (SIGSTOP: a stall, a swapped-out VM) keeps the merge in its socket
    buffer; the store gives up (503) and closes the connection; when the server runs again it
    reads the buffered command before the close, and runs it: the script finds its deadline
    passed and does nothing. (CLIENT PAUSE is different: a paused command of a client that
    went away is dropped, never run.)"""
    store = RedisStore(own_server.url, timeout_s=0.3, breaker_failures=100)
    try:
        await store.update_run_stats("run", "meanstd", ONE)
        own_server.pause()
        with pytest.raises(StoreUnavailable, match="timed out"):
            await store.update_run_stats("run", "meanstd", ONE)
        await asyncio.sleep(0.3)  # well past the deadline
        own_server.resume()  # the held command runs now
        await asyncio.sleep(0.2)
        stats = await store.get_run_stats("run")
        assert stats["meanstd"].count == 2  # only the first merge
    finally:
        own_server.resume()
        await store.close()


async def test_a_merge_retried_with_its_token_is_applied_once(
    own_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a retry after a dropped connection does when the first attempt did run."""
    store = RedisStore(own_server.url, timeout_s=1.0)
    monkeypatch.setattr(redis_store_module.secrets, "token_hex", lambda n: "same-token")
    try:
        first = await store.update_run_stats("run", "meanstd", ONE)
        again = await store.update_run_stats("run", "meanstd", ONE)
        assert first.count == again.count == 2
        assert (await store.get_run_stats("run"))["meanstd"].count == 2
    finally:
        await store.close()


async def test_a_reset_run_late_is_not_applied(own_server: RedisServer) -> None:
    """A reset answered 503 must not wipe, later, the merges that came after it."""
    store = RedisStore(own_server.url, timeout_s=0.3, breaker_failures=100)
    other = RedisStore(own_server.url, timeout_s=1.0)  # another replica, merging meanwhile
    try:
        await store.update_run_stats("run", "meanstd", ONE)
        await store.reset_run_stats("another-run")  # the script is loaded: EVALSHA would run
        own_server.pause()
        with pytest.raises(StoreUnavailable):
            await store.reset_run_stats("run")
        await asyncio.sleep(0.3)
        own_server.resume()
        await other.update_run_stats("run", "meanstd", ONE)
        await asyncio.sleep(0.2)
        assert (await other.get_run_stats("run"))["meanstd"].count == 4
    finally:
        own_server.resume()
        await store.close()
        await other.close()


async def test_state_for_metrics(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url)
    try:
        await store.ping()
        assert store.state() == {
            "backend": "redis",
            "breaker": "closed",
            "consecutive_failures": 0,
            "failures": 0,
            "rejected": 0,
            "opened": 0,
            "copy_prompts": 0,
            "copy_served": 0,
        }
    finally:
        await store.close()
