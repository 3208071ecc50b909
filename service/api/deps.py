"""Route dependencies: the resources the lifespan created, typed for injection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.errors import NotFound
from service.models.coordination import ReplicaCoordinator
from service.models.manager import ModelManager
from service.models.registry import ModelRegistry
from service.monitoring.recorder import Recorder
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
    manager: ModelManager
    coordinator: ReplicaCoordinator | None = None  # with Redis: replicas follow admin changes
    load_error: str | None = None
    draining: bool = False  # shutdown has begun: /readyz answers 503 from then on
    recorder: Recorder | None = None  # None when metrics are disabled


# The dependencies are `async def` although they only read attributes: FastAPI runs a plain
# `def` dependency on its thread pool, a thread hop (and a GIL hand-off the model thread
# waits on) for every request.
def _services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def get_services(request: Request) -> Services:
    return _services(request)


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_scorer(request: Request) -> Scorer:
    return _services(request).scorer


ScorerDep = Annotated[Scorer, Depends(get_scorer)]


async def get_recorder(request: Request) -> Recorder:
    recorder = _services(request).recorder
    if recorder is None:
        raise NotFound("metrics and dashboards are disabled; set PAR_METRICS_ENABLED=1")
    return recorder


RecorderDep = Annotated[Recorder, Depends(get_recorder)]
