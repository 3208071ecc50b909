"""`par_client` against a live service process over real HTTP: results equal the service's
own answers and keep their order across split batches; 429/503 are retried (honouring
Retry-After), 4xx are not; several base URLs are balanced and a dead one is failed over."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest
from par_client import (
    AsyncRewardClient,
    ConnectionFailed,
    InvalidRequest,
    MissingReferences,
    Overloaded,
    RetryPolicy,
    RewardClient,
    Unavailable,
    VersionMismatch,
)

from tests.clients.stub import StubServer
from tests.e2e.service_process import ServiceProcess
from tests.redis.server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Retries in tests: Retry-After decides the waits, the jittered backoff is kept tiny.
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02)

ITEMS: list[dict[str, Any]] = [
    {"prompt": "What is 17 + 25?", "response": "17 + 25 = 42."},
    {"prompt": "Say hi.", "responses": ["Hi!", "Hello there.", "Go away.", "Hey.", "Yo."]},
    {"messages": [{"role": "user", "content": "Name a red fruit."}], "response": "A cherry."},
    {"prompt": "What is 2 + 2?", "responses": ["4.", "5."]},
]


def direct(service: ServiceProcess, items: list[dict[str, Any]], **options: Any) -> dict:
    """The service's own answer for one request, without the client."""
    r = httpx.post(f"{service.url}/v1/score", json={"items": items, **options}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_results_keep_their_order_across_split_batches(service: ServiceProcess) -> None:
    expected = direct(service, ITEMS, shaping={"method": "vanilla"})["results"]
    with StubServer(service.url) as stub, RewardClient(stub.url, max_pairs_per_request=3) as c:
        got = c.score(ITEMS, shaping={"method": "vanilla"})
    # 9 pairs, at most 3 per request: [1 + 2 of the group], [3 of the group], [1 + 2].
    assert len(stub.requests) == 3
    assert [r.reward for r in got.results] == pytest.approx(
        [r["reward"] for r in expected], abs=1e-5
    )
    assert [r.tokens for r in got.results] == [r["tokens"] for r in expected]
    assert got.usage.pairs == 9
    assert got.model_version == httpx.get(f"{service.url}/v1/models").json()["active_version"]


def test_async_client_splits_concurrently_and_keeps_order(service: ServiceProcess) -> None:
    expected = direct(service, ITEMS, shaping={"method": "vanilla"})["results"]

    async def run() -> list[float]:
        async with AsyncRewardClient(
            service.url, max_pairs_per_request=2, max_concurrency=4
        ) as client:
            response = await client.score(ITEMS, shaping={"method": "vanilla"})
            return [r.reward for r in response.results]

    assert asyncio.run(run()) == pytest.approx([r["reward"] for r in expected], abs=1e-5)


def test_groups_references_and_models(service: ServiceProcess) -> None:
    prompt = "Client test: what is 12 + 30?"
    with RewardClient(service.url) as client:
        reg = client.register_references(
            [{"prompt": prompt, "references": ["12 + 30 = 42.", "The answer is 42."]}]
        )
        assert reg.stored == 2
        again = client.register_references([{"prompt": prompt, "references": ["12 + 30 = 42."]}])
        assert again.stored == 0
        scores = client.score_groups([prompt, prompt], [["42.", "It is 7."], ["41."]])
        models = client.models()
    assert [len(g) for g in scores.groups] == [2, 1]
    assert scores.model_version == models.active_version == reg.model_version
    refs = reg.results[0].reference_rewards
    for result in (r for g in scores.groups for r in g):
        par = sum(1 / (1 + math.exp(-(result.reward - x))) for x in refs) / len(refs)
        assert result.shaped_reward == pytest.approx(par, abs=1e-12)
        assert result.reference_rewards == refs


@pytest.mark.parametrize("statuses", [[429, 429], [503, 429]])
def test_429_and_503_are_retried_after_retry_after(
    service: ServiceProcess, statuses: list[int]
) -> None:
    with (
        StubServer(service.url, errors=[(s, "0.4") for s in statuses]) as stub,
        RewardClient(stub.url, retry=FAST) as client,
    ):
        started = time.monotonic()
        got = client.score(ITEMS[:1], shaping={"method": "vanilla"})
        elapsed = time.monotonic() - started
    assert [status for _, status in stub.requests] == [*statuses, 200]
    assert elapsed >= 0.8  # two waits of at least Retry-After
    assert got.results[0].reward == pytest.approx(
        direct(service, ITEMS[:1], shaping={"method": "vanilla"})["results"][0]["reward"],
        abs=1e-5,
    )


def test_retries_stop_after_max_attempts_with_the_typed_error(service: ServiceProcess) -> None:
    with (
        StubServer(service.url, errors=[(503, "0")] * 10) as stub,
        RewardClient(stub.url, retry=FAST) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.score(ITEMS[:1])
    assert len(stub.requests) == FAST.max_attempts
    assert info.value.status == 503 and info.value.type == "not_ready"

    async def run() -> None:
        async with AsyncRewardClient(stub2.url, retry=FAST) as client:
            await client.score(ITEMS[:1])

    with StubServer(service.url, errors=[(429, "0")] * 10) as stub2, pytest.raises(Overloaded):
        asyncio.run(run())
    assert len(stub2.requests) == FAST.max_attempts


def test_invalid_requests_are_not_retried(service: ServiceProcess) -> None:
    bad = [{"prompt": "p", "messages": [{"role": "user", "content": "p"}], "response": "r"}]
    with StubServer(service.url) as stub, RewardClient(stub.url, retry=FAST) as client:
        with pytest.raises(InvalidRequest) as info:
            client.score(bad)
        assert info.value.status == 422
        assert info.value.param == "items[0]"
        with pytest.raises(MissingReferences) as missing:
            client.score([{"prompt": "Client test: never registered.", "response": "r"}])
        assert missing.value.param == "items[0]"
        with pytest.raises(VersionMismatch):
            client.score(ITEMS[:1], shaping={"method": "vanilla"}, expected_model_version="x")
    assert [status for _, status in stub.requests] == [422, 422, 409]


def test_round_robin_over_replicas_and_failover_past_a_dead_one(
    service: ServiceProcess,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with StubServer(service.url) as a, StubServer(service.url) as b:
        with RewardClient([a.url, b.url]) as client:
            for _ in range(4):
                client.score(ITEMS[:1], shaping={"method": "vanilla"})
        assert (len(a.requests), len(b.requests)) == (2, 2)

        with RewardClient([dead, a.url, b.url], retry=FAST) as client:
            started = time.monotonic()
            for _ in range(6):
                client.score(ITEMS[:1], shaping={"method": "vanilla"})
            assert time.monotonic() - started < 20
        # The dead URL's turns went to the live ones; nothing failed.
        assert len(a.requests) + len(b.requests) == 4 + 6

    with (
        RewardClient([dead, f"http://127.0.0.1:{free_port()}"], retry=FAST) as client,
        pytest.raises(ConnectionFailed),
    ):
        client.models()
