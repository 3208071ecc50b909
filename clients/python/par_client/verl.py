"""verl custom reward functions that call the service (base URL from `PAR_REWARD_URL`; several
replicas comma-separated).

    custom_reward_function.path=<site-packages>/par_client/verl.py
    custom_reward_function.name=compute_score             # NaiveRewardManager: one call per sample
    # or, one request per batch (much faster):
    reward_model.reward_manager=batch  custom_reward_function.name=compute_score_batch

verl hands a reward function the decoded response (`solution_str`) but not the prompt, so the
prompt must travel in each sample's `extra_info` (set it in the data preprocessing):
`extra_info["prompt"]` (text, or a list of chat messages, sent as `messages` so the RM's chat
template applies), or `extra_info["messages"]`, or `extra_info["question"]`. `ground_truth` and
`data_source` are not used by a reward model. Options from `custom_reward_function.
reward_kwargs` arrive as keyword arguments: `method`, `run_id`, `model`, `reward`.

verl loads this file by path (as a module of its own), so it imports only absolute names."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from par_client.client import RewardClient
from par_client.types import Prompt

URL_ENV = "PAR_REWARD_URL"

_clients: dict[tuple[int, str], RewardClient] = {}


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    *,
    method: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    reward: str = "shaped_reward",
) -> float:
    """verl's per-sample signature: the reward of one response."""
    return compute_score_batch(
        [data_source],
        [solution_str],
        [ground_truth],
        [extra_info],
        method=method,
        run_id=run_id,
        model=model,
        reward=reward,
    )[0]


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    method: str | None = None,
    run_id: str | None = None,
    model: str | None = None,
    reward: str = "shaped_reward",
) -> list[float]:
    """verl's batched signature (`BatchRewardManager`): one request for the whole batch."""
    if reward not in ("shaped_reward", "reward"):
        raise ValueError(f"reward must be 'shaped_reward' or 'reward', not {reward!r}")
    infos = list(extra_infos) if extra_infos is not None else [None] * len(solution_strs)
    if len(infos) != len(solution_strs):
        raise ValueError(f"{len(infos)} extra_infos for {len(solution_strs)} responses")
    items = []
    for i, (response, info) in enumerate(zip(solution_strs, infos, strict=True)):
        prompt = _prompt(info, i)
        fields = {"prompt": prompt} if isinstance(prompt, str) else {"messages": list(prompt)}
        items.append({**fields, "response": response})
    result = client().score(
        items,
        shaping={"method": method} if method is not None else None,
        run_id=run_id,
        model=model,
    )
    return [float(getattr(r, reward)) for r in result.results]


def _prompt(info: Mapping[str, Any] | None, index: int) -> Prompt:
    for key in ("prompt", "messages", "question"):
        value = info.get(key) if info is not None else None
        if isinstance(value, str):
            return value
        if value is not None:  # verl may hand lists as numpy arrays: take them element-wise
            return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise ValueError(
        f"sample {index}: the reward model needs the prompt; put it in the sample's "
        "extra_info as 'prompt' (text or chat messages) when preparing the data"
    )


def client() -> RewardClient:
    """One client per process and URL (verl forks Ray workers: a client is never shared
    across a fork)."""
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(
            f"set {URL_ENV} to the reward service's base URL, e.g. http://rm:8000 "
            "(several replicas: comma-separated)"
        )
    key = (os.getpid(), url)
    if key not in _clients:
        _clients[key] = RewardClient(url.split(","))
    return _clients[key]


def close() -> None:
    """Close this process's clients (tests; a trainer can leave it to process exit)."""
    for key in [k for k in _clients if k[0] == os.getpid()]:
        _clients.pop(key).close()
