"""Backpressure: a full queue answers 429 with Retry-After, a request past its deadline answers
504 and its queued pairs never reach the model, and a client that disconnects has its queued
pairs dropped before the model. Disconnects and bursts go over real HTTP (uvicorn in a thread)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.models.encoding import PairEncoder
from service.models.fake import FakeRunner, checksum_reward
from service.models.registry import ServedModel
from tests.live_server import live_server

MAX_TOKENS = 512


class GateRunner(FakeRunner):
    """A fake runner that says when a forward has started, then waits for the gate."""

    def __init__(self, **kw: Any) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        super().__init__(block=self.gate, **kw)

    def forward(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        self.entered.set()
        return super().forward(sequences)


@contextlib.contextmanager
def released(runner: GateRunner) -> Iterator[None]:
    """Opens the gate on the way out, whatever happened, so the model thread can stop."""
    try:
        yield
    finally:
        runner.gate.set()


def served(tokenizer: Any, runner: FakeRunner) -> ServedModel:
    return ServedModel(
        name="default",
        version="fake-default",
        runner=runner,
        encoder=PairEncoder(tokenizer, max_tokens=MAX_TOKENS),
        info={"kind": "fake"},
    )


def group(prompt: str, responses: list[str]) -> dict[str, Any]:
    return {"items": [{"prompt": prompt, "responses": responses}], "shaping": {"method": "vanilla"}}


def ids(tokenizer: Any, prompt: str, response: str) -> list[int]:
    encoder = PairEncoder(tokenizer, max_tokens=MAX_TOKENS)
    return encoder.encode(prompt=prompt, response=response).input_ids


def seen(runner: FakeRunner) -> list[list[int]]:
    return [seq for batch in runner.batches for seq in batch]


def wait_for(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


def test_a_request_past_its_deadline_is_504_and_its_pairs_never_run(tokenizer) -> None:
    runner = GateRunner()
    app = create_app(Settings(request_timeout_s=0.5), models=[served(tokenizer, runner)])
    blocker = group("blocker", ["b1", "b2"])
    victim = group("victim", ["v1", "v2", "v3"])
    with (
        TestClient(app) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        released(runner),
    ):
        batcher = app.state.services.batcher
        held = pool.submit(client.post, "/v1/score", json=blocker)
        assert runner.entered.wait(5)  # the model thread is inside the blocker's forward
        started = time.monotonic()
        r = client.post("/v1/score", json=victim)
        elapsed = time.monotonic() - started
        assert r.status_code == 504, r.text
        assert r.json()["error"]["type"] == "deadline_exceeded"
        assert elapsed < 2.0
        assert batcher.queued_items == 2  # the victim's 3 pairs left the queue at once
        runner.gate.set()
        assert held.result().status_code == 504  # it was in the forward when time ran out
        wait_for(lambda: batcher.queued_items == 0)
        after = client.post("/v1/score", json=group("after", ["a"]))
        assert after.status_code == 200
    forwarded = seen(runner)
    for response in ("v1", "v2", "v3"):
        assert ids(tokenizer, "victim", response) not in forwarded
    assert ids(tokenizer, "blocker", "b1") in forwarded
    assert ids(tokenizer, "after", "a") in forwarded


def test_a_client_that_disconnects_has_its_pairs_dropped_before_the_model(tokenizer) -> None:
    runner = GateRunner()
    app = create_app(Settings(), models=[served(tokenizer, runner)])
    blocker = group("blocker", ["b1"])
    victim = group("victim", ["v1", "v2", "v3", "v4"])
    with (
        live_server(app) as url,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        released(runner),
    ):
        batcher = app.state.services.batcher
        held = pool.submit(httpx.post, f"{url}/v1/score", json=blocker, timeout=30)
        assert runner.entered.wait(5)
        # A trainer's client that gives up: it times out and closes the connection.
        with httpx.Client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post(f"{url}/v1/score", json=victim)
        wait_for(lambda: batcher.queued_items == 1)  # only the blocker's pair is left
        runner.gate.set()
        r = held.result()
        assert r.status_code == 200
        assert r.json()["results"][0]["reward"] == checksum_reward(ids(tokenizer, "blocker", "b1"))
        metrics = httpx.get(f"{url}/metrics").text
    forwarded = seen(runner)
    for response in ("v1", "v2", "v3", "v4"):
        assert ids(tokenizer, "victim", response) not in forwarded
    assert 'route="/v1/score",status="499"' in metrics


def test_a_request_that_is_answered_is_not_cancelled_by_its_disconnect(tokenizer) -> None:
    """The listener never cancels work whose response has started, nor a normal request."""
    runner = FakeRunner()
    app = create_app(Settings(), models=[served(tokenizer, runner)])
    with live_server(app) as url, httpx.Client(timeout=10) as client:
        for i in range(20):
            r = client.post(f"{url}/v1/score", json=group("p", [f"r{i}"]))
            assert r.status_code == 200
    assert len(seen(runner)) == 20


def test_a_burst_past_the_admission_limit(tokenizer) -> None:
    """48 clients at once, 4 pairs each, against a queue of 16 pairs: each gets its exact
    rewards or a 429 with Retry-After; nothing else; the queue drains and serving goes on."""
    runner = FakeRunner(seconds_per_token=0.00005)
    app = create_app(Settings(max_queue_items=16), models=[served(tokenizer, runner)])
    clients, pairs = 48, 4
    start = threading.Barrier(clients)

    def one(i: int) -> httpx.Response:
        body = group(f"prompt {i}", [f"response {i}.{j}" for j in range(pairs)])
        with httpx.Client(timeout=30) as client:
            start.wait(10)
            return client.post(f"{url}/v1/score", json=body)

    with live_server(app) as url:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            responses = list(pool.map(one, range(clients)))
        batcher = app.state.services.batcher
        wait_for(lambda: batcher.queued_items == 0)
        after = httpx.post(f"{url}/v1/score", json=group("after", ["a"]), timeout=10)
        assert after.status_code == 200
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 1, statuses
    for i, r in enumerate(responses):
        if r.status_code == 429:
            assert r.json()["error"]["type"] == "overloaded"
            assert int(r.headers["Retry-After"]) >= 1
            continue
        expected = [
            checksum_reward(ids(tokenizer, f"prompt {i}", f"response {i}.{j}"))
            for j in range(pairs)
        ]
        assert [x["reward"] for x in r.json()["results"]] == expected


async def test_a_client_that_leaves_mid_body_is_not_a_server_error(tokenizer) -> None:
    """The body never completes: nothing runs, and metrics see a 499, not a 500."""
    runner = FakeRunner()
    app = create_app(Settings(), models=[served(tokenizer, runner)])
    messages = iter(
        [
            {"type": "http.request", "body": b'{"items": [{"prompt": "p", ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/v1/score", "raw_path": b"/v1/score",
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 499
    assert runner.batches == []
