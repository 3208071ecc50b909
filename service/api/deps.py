"""Route dependencies: the resources the lifespan created, typed for injection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.models.registry import ModelRegistry
from service.scoring.scorer import Scorer
from service.store.base import ReferenceStore


@dataclass
class Services:
    """Everything the lifespan owns, in one place."""

    settings: Settings
    registry: ModelRegistry
    store: ReferenceStore
    batcher: MicroBatcher
    scorer: Scorer
    load_error: str | None = None


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated[Services, Depends(get_services)]


def get_scorer(request: Request) -> Scorer:
    return get_services(request).scorer


ScorerDep = Annotated[Scorer, Depends(get_scorer)]
