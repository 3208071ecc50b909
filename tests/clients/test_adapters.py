"""The TRL and verl adapters called the way those trainers call them, against the live
service: their rewards equal `/v1/score`'s for the same pairs. (GRPOTrainer itself runs in
test_trl_grpo.py, which needs trl installed.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from par_client import AsyncRewardClient, RewardClient
from par_client import verl as par_verl
from par_client.trl import AsyncRewardFunction, RewardFunction, trl_items

from tests.e2e.service_process import ServiceProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]


def direct(service: ServiceProcess, items: list[dict[str, Any]], **options: Any) -> list[dict]:
    r = httpx.post(f"{service.url}/v1/score", json={"items": items, **options}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_trl_items_group_repeated_prompts_and_send_chats_as_messages() -> None:
    prompts = [CHAT, CHAT, "Plain.", "Plain."]
    completions = [
        [{"role": "assistant", "content": "Hi!"}],
        [{"role": "assistant", "content": "Go away."}],
        "a",
        "b",
    ]
    assert trl_items(prompts, completions) == [
        {"messages": CHAT, "responses": ["Hi!", "Go away."]},
        {"prompt": "Plain.", "responses": ["a", "b"]},
    ]
    with pytest.raises(ValueError, match="one assistant message"):
        trl_items(
            ["p"], [[{"role": "assistant", "content": "a"}, {"role": "tool", "content": "b"}]]
        )


def test_trl_reward_functions_return_the_service_rewards(service: ServiceProcess) -> None:
    prompts = [CHAT, CHAT, CHAT]
    completions = [[{"role": "assistant", "content": c}] for c in ("Hi!", "Hello.", "No.")]
    expected = direct(
        service,
        [{"messages": CHAT, "responses": ["Hi!", "Hello.", "No."], "references": ["Hello!"]}],
    )
    logged: dict[str, float] = {}

    with RewardClient(service.url) as client:
        reward = RewardFunction(client, name="rm")
        assert reward.__name__ == "rm"
        got = reward(
            prompts=prompts,
            completions=completions,
            completion_ids=[[1], [2], [3]],
            references=[["Hello!"]] * 3,  # a dataset column, repeated per completion by TRL
            log_metric=logged.__setitem__,
        )
    assert got == pytest.approx([x["shaped_reward"] for x in expected], abs=1e-5)
    mean_raw = sum(x["reward"] for x in expected) / 3
    assert logged == {"rm/raw_reward": pytest.approx(mean_raw, abs=1e-5)}

    async def run() -> list[float]:
        async with AsyncRewardClient(service.url) as client:
            reward = AsyncRewardFunction(client, shaping={"method": "vanilla"}, reward="reward")
            assert asyncio.iscoroutinefunction(reward.__call__)
            return await reward(prompts=prompts, completions=completions)

    assert asyncio.run(run()) == pytest.approx([x["reward"] for x in expected], abs=1e-5)


@pytest.fixture
def verl_env(service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(par_verl.URL_ENV, service.url)
    yield
    par_verl.close()


def test_verl_compute_score_single_and_batched(service: ServiceProcess, verl_env: None) -> None:
    infos = [
        {"prompt": "What is 17 + 25?", "index": 0},
        {"prompt": [{"role": "user", "content": "Name a red fruit."}]},
        {"question": "What is 2 + 2?"},
    ]
    responses = ["17 + 25 = 42.", "A cherry.", "4."]
    expected = direct(
        service,
        [
            {"prompt": "What is 17 + 25?", "response": responses[0]},
            {"messages": infos[1]["prompt"], "response": responses[1]},
            {"prompt": "What is 2 + 2?", "response": responses[2]},
        ],
        shaping={"method": "vanilla"},
    )
    batched = par_verl.compute_score_batch(
        data_sources=["gsm8k"] * 3,
        solution_strs=responses,
        ground_truths=["42", "", "4"],
        extra_infos=infos,
        method="vanilla",
    )
    assert batched == pytest.approx([x["reward"] for x in expected], abs=1e-5)
    single = par_verl.compute_score(
        data_source="gsm8k",
        solution_str=responses[0],
        ground_truth="42",
        extra_info=infos[0],
        method="vanilla",
    )
    assert single == pytest.approx(expected[0]["reward"], abs=1e-5)
    with pytest.raises(ValueError, match="extra_info"):
        par_verl.compute_score("gsm8k", "42", "42", {"index": 3}, method="vanilla")


def test_verl_needs_the_service_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(par_verl.URL_ENV, raising=False)
    with pytest.raises(RuntimeError, match=par_verl.URL_ENV):
        par_verl.compute_score("d", "r", None, {"prompt": "p"})
