"""OpenRLHF's remote reward-model protocol against the live service: the exact JSON its
`remote_rm_fn` posts to `--remote_rm_url` gets the rewards `/v1/score` gives the same pairs."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.service_process import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROMPTS = ["What is 17 + 25?", "What is 17 + 25?", "Name a red fruit.", "Reply politely to: hi"]
RESPONSES = [
    " 17 + 25 = 42.",
    " I think it is 51.",
    " A strawberry is red.",
    " Hello, glad to help.",
]


def openrlhf_post(url: str) -> httpx.Response:
    """As OpenRLHF's `request_api_wrapper` does: `{"query", "prompts", "labels"}`, JSON."""
    data = {
        "query": [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)],
        "prompts": PROMPTS,
        "labels": ["42", "42", "", ""],
    }
    return httpx.post(url, json=data, headers={"Content-Type": "application/json"}, timeout=180)


def score(service: ServiceProcess, **options: object) -> list[dict]:
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    r = httpx.post(f"{service.url}/v1/score", json={"items": items, **options}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_get_reward_equals_v1_score_raw(service: ServiceProcess) -> None:
    r = openrlhf_post(f"{service.url}/get_reward?method=vanilla")
    assert r.status_code == 200, r.text
    data = r.json()
    expected = [x["reward"] for x in score(service, shaping={"method": "vanilla"})]
    assert data["rewards"] == pytest.approx(expected, abs=1e-5)
    assert data["scores"] == data["rewards"]
    assert data["extra_logs"]["raw_reward"] == data["rewards"]


def test_get_reward_defaults_to_par_on_registered_references(service: ServiceProcess) -> None:
    refs = {"What is 17 + 25?": ["The answer is 42."], "Name a red fruit.": ["A cherry."]}
    refs["Reply politely to: hi"] = ["Hi! How can I help?"]
    reg = httpx.post(
        f"{service.url}/v1/references",
        json={"items": [{"prompt": p, "references": r} for p, r in refs.items()]},
        timeout=60,
    )
    assert reg.status_code == 200, reg.text
    r = openrlhf_post(f"{service.url}/get_reward")
    assert r.status_code == 200, r.text
    expected = score(service)
    assert r.json()["rewards"] == pytest.approx([x["shaped_reward"] for x in expected], abs=1e-5)
    assert r.json()["extra_logs"]["raw_reward"] == pytest.approx(
        [x["reward"] for x in expected], abs=1e-5
    )
    assert all(0 < x < 1 for x in r.json()["rewards"])
