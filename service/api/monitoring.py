"""Monitoring routes: the Prometheus exposition, the built-in dashboard page and its JSON.
Sync handlers: they run on the thread pool, so building a scrape or a snapshot never holds
up the event loop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import RecorderDep
from service.api.responses import ERROR_RESPONSES
from service.monitoring.dashboard import dashboard_page
from service.monitoring.distributions import DashboardData
from service.schemas import RUN_ID_PATTERN

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(recorder: RecorderDep) -> Response:
    """Prometheus metrics of this process (serving, rewards, reward-hacking signals)."""
    return Response(recorder.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(_: RecorderDep) -> HTMLResponse:
    """The built-in reward-distribution dashboard: one self-contained page (no CDN)."""
    return HTMLResponse(dashboard_page())


@router.get(
    "/v1/dashboard/data",
    response_model=DashboardData,
    responses={k: v for k, v in ERROR_RESPONSES.items() if k in (404, 422)},
)
def dashboard_data(
    recorder: RecorderDep,
    run: Annotated[
        str | None,
        Query(
            pattern=RUN_ID_PATTERN,
            description="Run label: a run id, 'none' (requests without one) or 'other' "
            "(runs past the label limit). Default: the latest run of the model version.",
        ),
    ] = None,
    model_version: Annotated[
        str | None,
        Query(max_length=128, description="Default: the active version, else the latest."),
    ] = None,
) -> DashboardData:
    """Windowed reward distributions of one (model version, run): histograms with bins fixed
    on the server, means over time buckets, reward-hacking signals, a length/reward sample,
    swap markers, and every (model version, run) known, for selectors."""
    return recorder.dashboard(model_version=model_version, run=run)
