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

from service.demo.build import preference_pairs
from service.models.encoding import PairEncoder
from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Held-out pairs of the demo RM's own task (a seed training never used).
DEMO_PAIRS = preference_pairs(10, seed=12345)
PAIRS = [(p.prompt, text) for p in DEMO_PAIRS for text in (p.chosen, p.rejected)]


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
    # The demo RM means something: it prefers the chosen response of held-out pairs (its
    # measured held-out accuracy is ~0.98; 10 pairs leave room for one miss or two).
    right = sum(got[2 * i] > got[2 * i + 1] for i in range(len(DEMO_PAIRS)))
    assert right >= 8, right


def test_par_over_http_with_registered_references(service: ServiceProcess) -> None:
    """Register each pair's chosen response as the reference, then score both responses:
    PAR of the reference itself is exactly 0.5, and the rejected one falls below it."""
    reg = httpx.post(
        f"{service.url}/v1/references",
        json={"items": [{"prompt": p.prompt, "references": [p.chosen]} for p in DEMO_PAIRS]},
        timeout=60,
    )
    assert reg.status_code == 200, reg.text
    ref_rewards = [x["reference_rewards"] for x in reg.json()["results"]]
    body = {
        "items": [{"prompt": p.prompt, "responses": [p.chosen, p.rejected]} for p in DEMO_PAIRS],
        "run_id": "e2e",
    }
    r = httpx.post(f"{service.url}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["usage"]["reference_hits"] == len(DEMO_PAIRS)  # one per item (group)
    assert data["usage"]["reference_misses"] == 0
    results = data["results"]
    for i, refs in enumerate(ref_rewards):
        for result in results[2 * i : 2 * i + 2]:
            assert result["reference_rewards"] == refs
            expected = sum(1 / (1 + math.exp(-(result["reward"] - x))) for x in refs) / len(refs)
            assert result["shaped_reward"] == pytest.approx(expected, abs=1e-12)
            assert 0 < result["shaped_reward"] < 1
        assert results[2 * i]["shaped_reward"] == pytest.approx(0.5, abs=1e-5)
    below = sum(results[2 * i + 1]["shaped_reward"] < 0.5 for i in range(len(DEMO_PAIRS)))
    assert below >= 8, below
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
