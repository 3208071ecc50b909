"""OpenRLHF's remote reward-model protocol, so `--remote_rm_url http://host:port/get_reward`
works unchanged.

OpenRLHF posts `{"query": [...], "prompts": [...], "labels": [...]}`: each query is the full
prompt + response text, `prompts` the prompts it starts with. The response is what follows
the prompt in its query. It answers `{"rewards": [...], "scores": [...], "extra_logs": {...}}`
(one value per query; extra_logs are lists it averages into its logs). Labels are accepted
and ignored: a reward model does not read them.

The request becomes an ordinary `ScoreRequest` and goes through `Scorer.score`, so these
calls share the micro-batcher with every other client. Shaping comes from the URL's query
string (`/get_reward?method=vanilla&run_id=ppo-1`), since OpenRLHF sends nothing but the
URL; the default is the service's (PAR, which needs references registered for the prompts).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.deps import ServicesDep
from service.api.responses import ERROR_RESPONSES
from service.errors import InvalidInput
from service.schemas import (
    MODEL_NAME_PATTERN,
    RUN_ID_PATTERN,
    ScoreItem,
    ScoreRequest,
    ShapingMethod,
    ShapingRequest,
)
from service.scoring.scorer import Scorer

router = APIRouter(tags=["compat"], responses=ERROR_RESPONSES)


class OpenRLHFRequest(BaseModel):
    # Unknown fields are ignored, not refused: OpenRLHF versions and forks add fields
    # (`metas`, ...) that a reward model has no use for.
    model_config = ConfigDict(extra="ignore")

    query: list[str] = Field(
        min_length=1, description="Full texts, prompt followed by the response."
    )
    prompts: list[str] | None = Field(
        None,
        description="The prompt each query starts with; the response is the rest. Without "
        "them, the whole query is scored as the response to an empty prompt.",
    )
    labels: list[Any] | None = Field(None, description="Accepted and ignored.")


class OpenRLHFParams(BaseModel):
    """Query-string options (OpenRLHF only sends the URL)."""

    model_config = ConfigDict(extra="forbid")

    method: ShapingMethod = Field("par", description="Shaping method.")
    max_references: int = Field(10, ge=1, le=1024, description="K: references per prompt.")
    run_id: str | None = Field(
        None, pattern=RUN_ID_PATTERN, description="Run of stateful shapings and dashboards."
    )
    model: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Served model name; default the active one."
    )


class OpenRLHFResponse(BaseModel):
    rewards: list[float] = Field(description="Shaped rewards, one per query.")
    scores: list[float] = Field(description="The same values (OpenRLHF filters on them).")
    extra_logs: dict[str, list[float]] = Field(
        description="Per query: `raw_reward` (the RM's logit), `truncated` (0 or 1)."
    )


def split_queries(request: OpenRLHFRequest) -> list[ScoreItem]:
    """(prompt, response) items: the response is the query after its prompt. The prompt is
    searched for, not only matched at the start, because decoded queries may begin with
    special tokens (a BOS) the prompt strings lack."""
    if request.prompts is None:
        return [ScoreItem.model_validate({"prompt": "", "response": q}) for q in request.query]
    if len(request.prompts) != len(request.query):
        raise InvalidInput(
            f"{len(request.prompts)} prompts for {len(request.query)} queries; send one "
            "prompt per query",
            param="prompts",
        )
    items = []
    for i, (query, prompt) in enumerate(zip(request.query, request.prompts, strict=True)):
        at = query.find(prompt)
        if at < 0:
            raise InvalidInput(
                f"query[{i}] does not contain prompts[{i}], so the response cannot be split "
                "off; send the prompt text exactly as it appears in the query",
                param=f"query[{i}]",
            )
        items.append(
            ScoreItem.model_validate({"prompt": prompt, "response": query[at + len(prompt) :]})
        )
    return items


async def score_openrlhf(
    scorer: Scorer, request: OpenRLHFRequest, params: OpenRLHFParams, max_items: int
) -> OpenRLHFResponse:
    """OpenRLHF sends a whole rollout batch at once, often more pairs than one score request
    may hold: it is scored in chunks, the first one first so that the others can pin its
    model version (one reward model for the whole batch)."""
    items = split_queries(request)
    chunks = [items[i : i + max_items] for i in range(0, len(items), max_items)]
    shaping = ShapingRequest.model_validate(
        {"method": params.method, "max_references": params.max_references}
    )

    def score_request(chunk: list[ScoreItem], version: str | None) -> ScoreRequest:
        try:
            return ScoreRequest.model_validate(
                {
                    "items": chunk,
                    "shaping": shaping,
                    "run_id": params.run_id,
                    "model": params.model,
                    "expected_model_version": version,
                }
            )
        except ValidationError as exc:
            # The query parameters mirror ScoreRequest's limits; should they ever drift
            # apart, the caller still gets a 422 naming the field, never a 500.
            error = exc.errors()[0]
            param = ".".join(str(part) for part in error["loc"])
            raise InvalidInput(str(error["msg"]), param=param) from None

    first = await scorer.score(score_request(chunks[0], None))
    rest = await asyncio.gather(
        *(scorer.score(score_request(c, first.model_version)) for c in chunks[1:])
    )
    results = [r for part in (first, *rest) for r in part.results]
    shaped = [r.shaped_reward for r in results]
    return OpenRLHFResponse(
        rewards=shaped,
        scores=shaped,
        extra_logs={
            "raw_reward": [r.reward for r in results],
            "truncated": [float(r.truncated) for r in results],
        },
    )


@router.post("/get_reward", response_model=OpenRLHFResponse)
async def get_reward(
    request: OpenRLHFRequest,
    params: Annotated[OpenRLHFParams, Query()],
    services: ServicesDep,
) -> OpenRLHFResponse:
    """OpenRLHF remote reward model: rewards (shaped) for full prompt + response texts."""
    return await score_openrlhf(
        services.scorer, request, params, services.settings.max_items_per_request
    )
