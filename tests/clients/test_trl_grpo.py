"""TRL's GRPOTrainer trains a tiny policy on CPU for two optimisation steps with the
`par_client.trl` reward functions calling the live service; the rewards it logs are the
service's. `trl` is a test dependency, so this runs in `make test`."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from par_client import AsyncRewardClient, RewardClient
from par_client.trl import AsyncRewardFunction, RewardFunction

from tests.e2e.service_process import ServiceProcess

pytestmark = [
    pytest.mark.trl,
    pytest.mark.e2e,
    pytest.mark.slow,
    # transformers' own deprecations, raised when TRL calls it; nothing of ours.
    pytest.mark.filterwarnings("ignore:.*deprecated and will be removed in v6:FutureWarning"),
]

CHATS = [
    [{"role": "user", "content": "Say hi."}],
    [{"role": "user", "content": "Name a red fruit."}],
]
REFERENCES = [["Hi! How can I help?"], ["A strawberry is red."]]


class Recorder:
    """A third reward function (always 0) that keeps what TRL passed at each step, so the
    test can ask the service for the same pairs afterwards."""

    __name__ = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], list[Any]]] = []

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        self.calls.append((list(prompts), list(completions)))
        return [0.0] * len(prompts)


def service_scores(
    service: ServiceProcess, prompts: list[Any], completions: list[Any], **options: Any
) -> list[dict]:
    items = [
        {"messages": p, "response": c[0]["content"]}
        for p, c in zip(prompts, completions, strict=True)
    ]
    r = httpx.post(f"{service.url}/v1/score", json={"items": items, **options}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_grpo_trainer_trains_on_service_rewards(
    service: ServiceProcess, tokenizer_dir: Path, tmp_path: Path
) -> None:
    trl = pytest.importorskip("trl")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    client = RewardClient(service.url)
    reg = client.register_references(
        [{"messages": c, "references": r} for c, r in zip(CHATS, REFERENCES, strict=True)]
    )
    assert len(reg.results) == 2

    par = RewardFunction(client, name="par_reward")  # PAR on the registered references
    raw = AsyncRewardFunction(
        AsyncRewardClient(service.url), shaping={"method": "vanilla"}, name="raw_reward"
    )
    recorder = Recorder()
    trainer = trl.GRPOTrainer(
        model=policy,
        processing_class=tokenizer,
        reward_funcs=[par, raw, recorder],
        args=trl.GRPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            learning_rate=1e-3,
            logging_steps=1,
            report_to="none",
            use_cpu=True,
            save_strategy="no",
            seed=0,
        ),
        train_dataset=Dataset.from_dict({"prompt": CHATS * 2}),
    )
    try:
        trainer.train()
    finally:
        client.close()
        if getattr(trainer, "async_loop", None) is not None:
            asyncio.run_coroutine_threadsafe(raw.aclose(), trainer.async_loop).result()

    assert trainer.state.global_step == 2
    steps = [h for h in trainer.state.log_history if "rewards/par_reward/mean" in h]
    assert len(steps) == 2 == len(recorder.calls)
    for logged, (prompts, completions) in zip(steps, recorder.calls, strict=True):
        scored = service_scores(service, prompts, completions)
        shaped = [x["shaped_reward"] for x in scored]
        raw_rewards = [x["reward"] for x in scored]
        assert logged["rewards/par_reward/mean"] == pytest.approx(sum(shaped) / 4, abs=1e-5)
        assert logged["rewards/raw_reward/mean"] == pytest.approx(sum(raw_rewards) / 4, abs=1e-5)
        assert all(0 < x < 1 for x in shaped) and all(math.isfinite(x) for x in raw_rewards)

    # The completion table of the last step, value by value.
    last = service_scores(service, list(trainer._logs["prompt"]), list(trainer._logs["completion"]))
    assert list(trainer._logs["rewards"]["par_reward"]) == pytest.approx(
        [x["shaped_reward"] for x in last], abs=1e-5
    )
    assert list(trainer._logs["rewards"]["raw_reward"]) == pytest.approx(
        [x["reward"] for x in last], abs=1e-5
    )
