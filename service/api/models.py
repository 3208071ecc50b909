"""Model listing (read-only here; loading and swapping live in the admin routes)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import ServicesDep
from service.schemas import ModelInfo, ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelsResponse)
async def list_models(services: ServicesDep) -> ModelsResponse:
    """Loaded models and the active version."""
    models, active = services.registry.list()
    active_version = next((m.version for m in models if m.name == active), None)
    return ModelsResponse(
        active=active,
        active_version=active_version,
        swap=services.manager.status(),
        models=[
            ModelInfo(name=m.name, version=m.version, active=m.name == active, info=m.info)
            for m in models
        ],
    )
