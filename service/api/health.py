"""Liveness and readiness. Readiness means a model is loaded and warmed up; it deliberately
does not depend on Redis (one shared outage must not empty the load balancer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    if services.registry.ready:
        return JSONResponse({"status": "ready"})
    reason = services.load_error or "loading the model"
    return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
