"""The app factory. The lifespan owns every resource (tokenizer pool, store, model thread,
models) and closes them in reverse order; routes get them through `api.deps`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI

from service import __version__
from service.api import health, runs, score
from service.api import models as models_api
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.limits import BodySizeLimit
from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.models.encoding import PairEncoder
from service.models.registry import ModelRegistry, ServedModel
from service.scoring.scorer import Scorer
from service.store import create_store

logger = logging.getLogger(__name__)


def create_app(settings: Settings, *, models: Sequence[ServedModel] | None = None) -> FastAPI:
    """Build the service. `models` replaces loading `settings.model` (tests pass a fake)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = models[0].runner.device if models else resolve_device(settings.device)
        tokenizer_pool = ThreadPoolExecutor(
            settings.tokenizer_threads, thread_name_prefix="tokenizer"
        )
        store = create_store(settings)
        batcher = MicroBatcher(
            token_budget=settings.effective_token_budget(device),
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queue_items=settings.max_queue_items,
        )
        batcher.start()
        registry = ModelRegistry()
        services = Services(
            settings=settings,
            registry=registry,
            store=store,
            batcher=batcher,
            scorer=Scorer(
                settings=settings,
                registry=registry,
                store=store,
                batcher=batcher,
                tokenizer_pool=tokenizer_pool,
            ),
        )
        app.state.services = services
        loading: asyncio.Task[None] | None = None
        if models:
            for model in models:
                registry.add(model)
        else:
            # Load in the background: /healthz answers at once, /readyz once it is warm.
            loading = asyncio.create_task(_load_startup_model(settings, services))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            await asyncio.to_thread(batcher.stop)
            await store.close()
            tokenizer_pool.shutdown(wait=True)
            registry.close()

    app = FastAPI(
        title="PAR reward service",
        version=__version__,
        description="Scores (prompt, response) pairs with a reward model and returns raw and "
        "shaped rewards (Preference As Reward by default).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    for router in (score.router, models_api.router, runs.router, health.router):
        app.include_router(router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


async def _load_startup_model(settings: Settings, services: Services) -> None:
    try:
        model = await asyncio.to_thread(load_served_model, settings, settings.model_name)
    except Exception as exc:
        services.load_error = f"model load failed: {exc}"
        logger.exception("could not load the start-up model %r", settings.model)
        return
    services.registry.add(model)
    logger.info("serving %s (version %s)", model.name, model.version)


def load_served_model(settings: Settings, name: str, location: str | None = None) -> ServedModel:
    """Load, warm up and wrap a model (blocking: run it off the event loop)."""
    from service.models.loaders import ModelSource, load_reward_model

    loaded = load_reward_model(
        ModelSource(
            location=location or settings.model,
            head_index=settings.head_index,
            device=settings.device,
            dtype=settings.dtype,
            allow_pickle=settings.allow_pickle,
            trust_remote_code=settings.trust_remote_code,
            cache_dir=settings.cache_dir,
        )
    )
    loaded.runner.warmup()
    # The version also covers encoding settings that change what the RM reads.
    version = hashlib.sha256(
        f"{loaded.fingerprint}|max_tokens={settings.max_tokens}".encode()
    ).hexdigest()[:16]
    return ServedModel(
        name=name,
        version=version,
        runner=loaded.runner,
        encoder=PairEncoder(loaded.tokenizer, max_tokens=settings.max_tokens),
        info={
            "location": loaded.location,
            "kind": loaded.kind,
            "device": loaded.device,
            "dtype": loaded.dtype,
            "parameters": loaded.num_parameters,
            "max_tokens": settings.max_tokens,
        },
    )


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch  # only to ask whether CUDA is there; no torch work on the event loop

    return "cuda" if torch.cuda.is_available() else "cpu"
