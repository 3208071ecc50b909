"""TRL reward functions: pass one to `GRPOTrainer(reward_funcs=[...])`.

    from par_client.trl import RewardFunction
    reward = RewardFunction("http://rm:8000", shaping={"method": "par"})
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], ...)

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=..., **columns)`
and wants one float per completion. Conversational prompts (lists of messages) are sent as
`messages`, so the reward model's own chat template applies; a conversational completion is
its single assistant message. Consecutive completions of the same prompt (TRL repeats each
prompt `num_generations` times) go out as one group. TRL names its logged metrics after the
function's `__name__` (`rewards/<name>/mean`).

This module does not import TRL: it only has to be called the way TRL calls it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from par_client._core import DEFAULT_URL, prompt_fields
from par_client.client import AsyncRewardClient, RewardClient
from par_client.types import Prompt, ScoreResponse

RewardField = Literal["shaped_reward", "reward"]
Completion = str | Sequence[Mapping[str, Any]]


def trl_items(
    prompts: Sequence[Prompt],
    completions: Sequence[Completion],
    references: Sequence[Sequence[str] | None] | None = None,
) -> list[dict[str, Any]]:
    """TRL's parallel lists as score items; consecutive completions of one prompt (with the
    same references) form one group. `references`, one entry per completion, are sent inline."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"{len(references)} reference lists for {len(prompts)} completions")
    items: list[dict[str, Any]] = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        fields = prompt_fields(prompt)
        refs = references[i] if references is not None else None
        if refs is not None:
            fields["references"] = list(refs)
        response = completion_text(completion)
        last = items[-1] if items else None
        if last is not None and {k: v for k, v in last.items() if k != "responses"} == fields:
            last["responses"].append(response)
        else:
            items.append({**fields, "responses": [response]})
    return items


def completion_text(completion: Completion) -> str:
    if isinstance(completion, str):
        return completion
    if len(completion) != 1:
        raise ValueError(
            f"a conversational completion must be one assistant message, got {len(completion)} "
            "messages (tool calls?); score the final answer as text instead"
        )
    content = completion[0]["content"]
    if not isinstance(content, str):
        raise ValueError("a completion's content must be text")
    return content


def _log(response: ScoreResponse, name: str, kwargs: Mapping[str, Any]) -> None:
    # Recent TRL hands reward functions `log_metric`; the raw RM reward is worth watching
    # beside the shaped one (reward hacking shows as raw rising while PAR saturates).
    log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
    if callable(log_metric) and response.results:
        raw = response.rewards
        log_metric(f"{name}/raw_reward", sum(raw) / len(raw))


class RewardFunction:
    """Synchronous TRL reward function calling the service.

    `reward` picks what TRL optimises: `shaped_reward` (the shaping method's value; PAR by
    default) or `reward` (the raw RM logit). PAR needs references: registered for the prompts
    beforehand (`par-client refs import`), or a dataset column named `references_column`
    (TRL passes dataset columns to reward functions), sent inline."""

    def __init__(
        self,
        client: RewardClient | str | Sequence[str] = DEFAULT_URL,
        *,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        reward: RewardField = "shaped_reward",
        references_column: str = "references",
        name: str = "par_reward",
    ) -> None:
        self.client = client if isinstance(client, RewardClient) else RewardClient(client)
        self.shaping = dict(shaping) if shaping is not None else None
        self.run_id = run_id
        self.model = model
        self.reward = reward
        self.references_column = references_column
        self.__name__ = name

    def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **kwargs: Any
    ) -> list[float]:
        response = self.client.score(
            trl_items(prompts, completions, kwargs.get(self.references_column)),
            shaping=self.shaping,
            run_id=self.run_id,
            model=self.model,
        )
        _log(response, self.__name__, kwargs)
        return [getattr(r, self.reward) for r in response.results]

    def close(self) -> None:
        self.client.close()


class AsyncRewardFunction:
    """Asynchronous TRL reward function (TRL runs async reward functions concurrently on its
    own event loop, so the RM call overlaps with the other reward functions)."""

    def __init__(
        self,
        client: AsyncRewardClient | str | Sequence[str] = DEFAULT_URL,
        *,
        shaping: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        model: str | None = None,
        reward: RewardField = "shaped_reward",
        references_column: str = "references",
        name: str = "par_reward",
    ) -> None:
        self.client = client if isinstance(client, AsyncRewardClient) else AsyncRewardClient(client)
        self.shaping = dict(shaping) if shaping is not None else None
        self.run_id = run_id
        self.model = model
        self.reward = reward
        self.references_column = references_column
        self.__name__ = name

    async def __call__(
        self, prompts: Sequence[Prompt], completions: Sequence[Completion], **kwargs: Any
    ) -> list[float]:
        response = await self.client.score(
            trl_items(prompts, completions, kwargs.get(self.references_column)),
            shaping=self.shaping,
            run_id=self.run_id,
            model=self.model,
        )
        _log(response, self.__name__, kwargs)
        return [getattr(r, self.reward) for r in response.results]

    async def aclose(self) -> None:
        await self.client.aclose()
