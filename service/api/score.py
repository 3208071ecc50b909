"""Scoring routes: thin, one scorer call each."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ScorerDep
from service.api.responses import ERROR_RESPONSES
from service.schemas import ReferencesRequest, ReferencesResponse, ScoreRequest, ScoreResponse

router = APIRouter(prefix="/v1", tags=["scoring"], responses=ERROR_RESPONSES)


@router.post("/score", response_model=ScoreResponse)
async def score(request: ScoreRequest, scorer: ScorerDep) -> ScoreResponse:
    """Score a batch: raw, reference and shaped rewards per pair, in order."""
    return await scorer.score(request)


@router.post("/references", response_model=ReferencesResponse)
async def register_references(request: ReferencesRequest, scorer: ScorerDep) -> ReferencesResponse:
    """Register reference responses per prompt; they are scored now and kept for later."""
    return await scorer.register_references(request)
