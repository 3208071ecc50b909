"""Running statistics of a run (the stateful shapings meanstd, clip and minmax)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from service.api.deps import ServicesDep
from service.api.responses import ERROR_RESPONSES
from service.schemas import RUN_ID_PATTERN, RunStatsResponse

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=ERROR_RESPONSES)

RunId = Annotated[str, Path(pattern=RUN_ID_PATTERN)]


@router.get("/{run_id}/stats", response_model=RunStatsResponse)
async def get_run_stats(run_id: RunId, services: ServicesDep) -> RunStatsResponse:
    """Running statistics per stateful method; empty for an unknown run."""
    stats = await services.store.get_run_stats(run_id)
    return RunStatsResponse(run_id=run_id, stats={m: s.to_dict() for m, s in stats.items()})


@router.delete("/{run_id}/stats", response_model=RunStatsResponse)
async def reset_run_stats(run_id: RunId, services: ServicesDep) -> RunStatsResponse:
    """Forget a run's statistics (e.g. after a model swap); returns what was dropped."""
    stats = await services.store.get_run_stats(run_id)
    await services.store.reset_run_stats(run_id)
    return RunStatsResponse(run_id=run_id, stats={m: s.to_dict() for m, s in stats.items()})
