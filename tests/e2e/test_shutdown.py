"""SIGTERM under load, against a real process (`tests.e2e.fake_service`: `python -m service`'s
own `serve`, on the fake runner): every request accepted before the signal is answered 200
with its exact rewards, readiness fails from the signal on, and the process exits 0 in time."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.models.encoding import PairEncoder
from service.models.fake import checksum_reward
from tests.e2e.fake_service import MAX_TOKENS
from tests.e2e.service_process import ServiceProcess

pytestmark = pytest.mark.e2e

CLIENTS = 12
PAIRS = 4
SECONDS_PER_TOKEN = 0.002  # ~2 s of model time for the whole load


def start(tokenizer_dir: Path, **env: str) -> ServiceProcess:
    argv = ["-m", "tests.e2e.fake_service", "--tokenizer", str(tokenizer_dir),
            "--seconds-per-token", str(SECONDS_PER_TOKEN)]  # fmt: skip
    return ServiceProcess(argv=argv, env=env).start(ready_timeout_s=120)


def body(i: int) -> dict[str, Any]:
    responses = [f"response {i}.{j} " + "word " * (10 + j) for j in range(PAIRS)]
    return {"items": [{"prompt": f"prompt {i}", "responses": responses}],
            "shaping": {"method": "vanilla"}}  # fmt: skip


def expected(tokenizer: Any, i: int) -> list[float]:
    encoder = PairEncoder(tokenizer, max_tokens=MAX_TOKENS)
    item = body(i)["items"][0]
    return [
        checksum_reward(encoder.encode(prompt=item["prompt"], response=r).input_ids)
        for r in item["responses"]
    ]


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith("par_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no par_queue_depth in /metrics")


def load_then_sigterm(proc: ServiceProcess, during_delay: Any = None) -> tuple[list, int, float]:
    """CLIENTS requests in flight, then SIGTERM; returns the responses, the exit code and the
    seconds from the signal to the exit."""
    assert proc.proc is not None
    done_before_signal = 0
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [
            pool.submit(httpx.post, f"{proc.url}/v1/score", json=body(i), timeout=60)
            for i in range(CLIENTS)
        ]
        deadline = time.monotonic() + 10
        while queue_depth(proc.url) < CLIENTS * PAIRS * 3 // 4:  # most of it is queued
            assert time.monotonic() < deadline, "the load never queued up"
            time.sleep(0.02)
        done_before_signal = sum(f.done() for f in futures)
        proc.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        if during_delay is not None:
            during_delay()
        responses = [f.result() for f in futures]
        code = proc.proc.wait(60)
        took = time.monotonic() - signalled
    assert done_before_signal <= CLIENTS // 4, "the signal came after the work was done"
    return responses, code, took


def check_all_answered(responses: list, tokenizer: Any) -> None:
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert [x["reward"] for x in r.json()["results"]] == expected(tokenizer, i)


def test_sigterm_under_load_answers_every_accepted_request_and_exits_0(
    tokenizer_dir, tokenizer
) -> None:
    proc = start(tokenizer_dir)
    try:
        responses, code, took = load_then_sigterm(proc)
    finally:
        proc.stop()
    check_all_answered(responses, tokenizer)
    assert code == 0
    assert took < 30, f"shutdown took {took:.1f}s"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proc.url}/healthz", timeout=2)
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]


def test_readiness_fails_at_once_while_the_shutdown_delay_keeps_serving(
    tokenizer_dir, tokenizer
) -> None:
    """With PAR_SHUTDOWN_DELAY_S the port stays open after SIGTERM: /readyz answers 503 (so
    a load balancer stops routing here), requests still in flight or newly sent are served,
    and only then does the graceful shutdown begin."""
    delay = 2.0
    proc = start(tokenizer_dir, PAR_SHUTDOWN_DELAY_S=str(delay))
    seen: dict[str, Any] = {}

    def during_delay() -> None:
        seen["readyz"] = httpx.get(f"{proc.url}/readyz", timeout=5)
        seen["healthz"] = httpx.get(f"{proc.url}/healthz", timeout=5)
        seen["late"] = httpx.post(f"{proc.url}/v1/score", json=body(99), timeout=30)

    try:
        responses, code, took = load_then_sigterm(proc, during_delay)
    finally:
        proc.stop()
    assert seen["readyz"].status_code == 503
    assert seen["readyz"].json()["reason"] == "shutting down"
    assert seen["healthz"].status_code == 200
    assert seen["late"].status_code == 200
    assert [x["reward"] for x in seen["late"].json()["results"]] == expected(tokenizer, 99)
    check_all_answered(responses, tokenizer)
    assert code == 0
    assert delay <= took < delay + 30
