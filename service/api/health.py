"""Liveness and readiness. Readiness means a model is loaded and warmed up and the process is
not shutting down; it deliberately does not depend on Redis (one shared outage must not empty
the load balancer), though it shows the store's state."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse

from service.api.deps import Services, ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"description": "Ready; `store` is the reference store's state"},
        503: {"description": "Loading the model, its load failed, or shutting down"},
    },
)
async def readyz(services: ServicesDep) -> JSONResponse:
    store = services.store.state()
    if services.draining:
        return JSONResponse(
            {"status": "not_ready", "reason": "shutting down", "store": store}, status_code=503
        )
    if services.registry.ready:
        return JSONResponse({"status": "ready", "store": store})
    reason = services.load_error or "loading the model"
    return JSONResponse({"status": "not_ready", "reason": reason, "store": store}, status_code=503)


def begin_draining(app: FastAPI) -> None:
    """Shutdown has begun: readiness fails from now on, so load balancers route elsewhere.
    Called from the signal handler (`service.__main__`) and the lifespan's shutdown."""
    services: Services | None = getattr(app.state, "services", None)
    if services is not None:
        services.draining = True
