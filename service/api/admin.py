"""Admin routes: load, activate, roll back and unload models; see replicas. Every route here
lives under /v1/admin, which `api.auth.AdminAuth` guards before the body is read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from service.api.deps import Services, ServicesDep
from service.api.models import list_models
from service.api.responses import ERROR_RESPONSES
from service.errors import StoreUnavailable
from service.schemas import ModelsResponse

router = APIRouter(
    prefix="/v1/admin",
    tags=["admin"],
    responses={
        **ERROR_RESPONSES,
        403: {"description": "The admin API is off (no PAR_ADMIN_TOKEN)"},
    },
)

ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9._\-]{1,64}$")]


class LoadModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9._\-]{1,64}$", description="Name to serve it under.")
    path: str = Field(
        min_length=1,
        max_length=1024,
        description="A directory under the allowed model roots, or a hub id if allowed.",
    )
    activate: bool = Field(True, description="Make it the active model once it passes checks.")


@router.post("/models", response_model=ModelsResponse)
async def load_model(body: LoadModelRequest, services: ServicesDep) -> ModelsResponse:
    """Load, warm up, check and (by default) activate a model. The old one keeps serving if
    any step fails; a no-op if that version is already served under the name."""
    await services.manager.load(body.name, body.path, activate=body.activate)
    return await _publish(services)


@router.post("/models/{name}/activate", response_model=ModelsResponse)
async def activate_model(name: ModelName, services: ServicesDep) -> ModelsResponse:
    """Make an already loaded model the active one."""
    await services.manager.activate(name)
    return await _publish(services)


@router.post("/models/rollback", response_model=ModelsResponse)
async def rollback(services: ServicesDep) -> ModelsResponse:
    """Back to the model that was active before the last change."""
    await services.manager.rollback()
    return await _publish(services)


@router.delete("/models/{name}", response_model=ModelsResponse)
async def unload_model(name: ModelName, services: ServicesDep) -> ModelsResponse:
    """Drain and free a loaded model that is not the active one."""
    await services.manager.unload(name)
    return await list_models(services)


class ReplicasResponse(BaseModel):
    desired_by_redis: bool = Field(description="False without Redis: a single replica.")
    replicas: list[dict[str, object]] = Field(
        description="Each replica's name, active version, state (serving, swapping, "
        "diverged...), last error, heartbeat age flag 'stale' and 'converged'."
    )


@router.get("/replicas", response_model=ReplicasResponse)
async def list_replicas(services: ServicesDep) -> ReplicasResponse:
    """Every replica sharing this Redis, with its version and state."""
    if services.coordinator is None:
        active = services.registry.active()
        me: dict[str, object] = {
            "replica_id": "local",
            "version": active.version if active else None,
            "state": "serving" if active else "loading",
            "stale": False,
            "converged": True,
        }
        return ReplicasResponse(desired_by_redis=False, replicas=[me])
    return ReplicasResponse(desired_by_redis=True, replicas=await services.coordinator.replicas())


async def _publish(services: Services) -> ModelsResponse:
    """With Redis, make this replica's active model the one every replica serves."""
    if services.coordinator is not None and services.registry.ready:
        try:
            await services.coordinator.publish_active()
        except (RedisError, OSError):
            raise StoreUnavailable(
                "the change is active on this replica but could not be published to the "
                "others (Redis unavailable); repeat the call when Redis is back (a no-op here)"
            ) from None
    return await list_models(services)
