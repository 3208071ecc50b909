"""The service as users run it: a real process, real HTTP, the demo RM, and (for the shared
reference store) a real Redis server with two service processes on it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from service.models.encoding import PairEncoder
from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PAIRS = [
    ("What is 17 + 25?", "17 + 25 = 42."),
    ("What is 17 + 25?", "I think it is 51."),
    ("Name a red fruit.", "A strawberry is red."),
    ("Reply politely to: can you help me?", "Of course, I would be glad to help."),
]


@pytest.fixture(scope="module")
def service(demo_dir: Path, demo_cache_dir: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(env={"PAR_CACHE_DIR": str(demo_cache_dir)}).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def plain_forward(model_dir: Path, pairs: list[tuple[str, str]]) -> list[float]:
    """The reference: a plain transformers forward, one pair at a time, no padding."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    encoder = PairEncoder(tokenizer, max_tokens=2048)
    out = []
    with torch.inference_mode():
        for prompt, response in pairs:
            ids = encoder.encode(prompt=prompt, response=response).input_ids
            out.append(float(model(torch.tensor([ids])).logits[0, 0]))
    return out


def test_raw_reward_matches_a_plain_transformers_forward(
    service: ServiceProcess, demo_dir: Path
) -> None:
    body = {
        "items": [{"prompt": p, "response": r} for p, r in PAIRS],
        "shaping": {"method": "vanilla"},
    }
    r = httpx.post(f"{service.url}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = [x["reward"] for x in r.json()["results"]]
    expected = plain_forward(demo_dir, PAIRS)
    assert got == pytest.approx(expected, abs=1e-4)
    # The demo RM means something: the correct sum beats the wrong one.
    assert got[0] > got[1]


def test_par_over_http_with_registered_references(service: ServiceProcess) -> None:
    prompt = "What is 12 + 30?"
    refs = ["12 + 30 = 42.", "The answer is 42."]
    reg = httpx.post(
        f"{service.url}/v1/references",
        json={"items": [{"prompt": prompt, "references": refs}]},
        timeout=60,
    )
    assert reg.status_code == 200, reg.text
    ref_rewards = reg.json()["results"][0]["reference_rewards"]
    body = {
        "items": [{"prompt": prompt, "responses": ["12 + 30 = 42.", "It is 7."]}],
        "run_id": "e2e",
    }
    r = httpx.post(f"{service.url}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["usage"]["reference_hits"] == 2 and data["usage"]["reference_misses"] == 0
    for result in data["results"]:
        expected = sum(1 / (1 + math.exp(-(result["reward"] - x))) for x in ref_rewards) / 2
        assert result["shaped_reward"] == pytest.approx(expected, abs=1e-12)
        assert 0 < result["shaped_reward"] < 1
    # A response equal to a reference is near 0.5; the wrong answer is below it.
    assert data["results"][0]["shaped_reward"] > data["results"][1]["shaped_reward"]
    models = httpx.get(f"{service.url}/v1/models").json()
    assert models["active_version"] == data["model_version"]
    assert models["models"][0]["info"]["kind"] == "sequence_classification"


def test_two_processes_on_one_redis_share_references(demo_dir: Path, demo_cache_dir: Path) -> None:
    redis_server = RedisServer().start()
    env = {"PAR_CACHE_DIR": str(demo_cache_dir), "PAR_REDIS_URL": redis_server.url}
    first = ServiceProcess(env=env)
    second = ServiceProcess(env=env)
    try:
        first.start()
        second.start()
        prompt = "Name a yellow fruit."
        reg = httpx.post(
            f"{first.url}/v1/references",
            json={"items": [{"prompt": prompt, "references": ["A banana is yellow."]}]},
            timeout=60,
        )
        assert reg.status_code == 200, reg.text
        body = {"items": [{"prompt": prompt, "response": "A lemon."}]}
        r = httpx.post(f"{second.url}/v1/score", json=body, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["usage"]["reference_hits"] == 1 and data["usage"]["reference_misses"] == 0
        assert (
            data["results"][0]["reference_rewards"] == reg.json()["results"][0]["reference_rewards"]
        )
        # Stateful shaping: one run's statistics whichever process served the batch.
        for proc, response in ((first, "A banana."), (second, "A lemon.")):
            r = httpx.post(
                f"{proc.url}/v1/score",
                json={
                    "items": [{"prompt": prompt, "response": response}],
                    "shaping": {"method": "meanstd"},
                    "run_id": "shared-run",
                },
                timeout=60,
            )
            assert r.status_code == 200, r.text
        stats = httpx.get(f"{first.url}/v1/runs/shared-run/stats").json()["stats"]
        assert stats["meanstd"]["count"] == 2
    finally:
        codes = [first.stop(), second.stop()]  # stop everything before asserting
        redis_server.cleanup()
        assert codes == [0, 0]
