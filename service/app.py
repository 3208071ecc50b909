"""The app factory. The lifespan owns every resource (tokenizer pool, store, model thread,
models) and closes them in reverse order; routes get them through `api.deps`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from service import __version__
from service.api import admin, compat, health, runs, score
from service.api import models as models_api
from service.api import monitoring as monitoring_api
from service.api.auth import ADMIN_PREFIX, AdminAuth, ApiKeyAuth
from service.api.cancellation import CancelOnDisconnect
from service.api.deps import Services
from service.api.errors import install_error_handlers
from service.api.limits import BodySizeLimit, JsonTextCheck
from service.batching.batcher import MicroBatcher
from service.config import Settings
from service.models.coordination import ReplicaCoordinator
from service.models.encoding import set_tokenizer_parallelism
from service.models.manager import Loader, ModelManager, load_served_model
from service.models.registry import ModelRegistry, ServedModel
from service.models.torch_threads import run_on_own_thread, set_torch_threads
from service.monitoring.metrics import HttpMetrics
from service.monitoring.recorder import Recorder
from service.scoring.scorer import Scorer
from service.store import create_store

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    models: Sequence[ServedModel] | None = None,
    loader: Loader | None = None,
) -> FastAPI:
    """Build the service. `models` replaces loading `settings.model` and `loader` replaces
    loading from disk in the admin API (tests pass fakes)."""
    # Built here, not in the lifespan: the HTTP middleware needs it before the app starts.
    recorder = Recorder(settings) if settings.metrics_enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = models[0].runner.device if models else resolve_device(settings.device)
        set_tokenizer_parallelism(settings.tokenizer_parallelism)
        tokenizer_pool = ThreadPoolExecutor(
            settings.tokenizer_threads, thread_name_prefix="tokenizer"
        )
        store = create_store(settings)
        if recorder is not None:
            store = recorder.watch_store(store)
        batcher = MicroBatcher(
            token_budget=settings.effective_token_budget(device),
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queue_items=settings.max_queue_items,
            on_batch=recorder.on_batch if recorder is not None else None,
            thread_init=_thread_init(settings),
        )
        batcher.start()
        registry = ModelRegistry()
        if recorder is not None:
            recorder.attach(registry=registry, batcher=batcher)
        scorer = Scorer(
            settings=settings,
            registry=registry,
            store=store,
            batcher=batcher,
            tokenizer_pool=tokenizer_pool,
            recorder=recorder,
        )
        manager = ModelManager(
            settings=settings,
            registry=registry,
            batcher=batcher,
            scorer=scorer,
            store=store,
            loader=loader,
        )
        services = Services(
            settings=settings,
            registry=registry,
            store=store,
            batcher=batcher,
            scorer=scorer,
            manager=manager,
            recorder=recorder,
        )
        if settings.redis_url:
            services.coordinator = ReplicaCoordinator(
                redis_url=settings.redis_url,
                prefix=settings.redis_prefix,
                manager=manager,
                registry=registry,
                interval_s=settings.reconcile_interval_s,
                replica_id=settings.replica_id,
            )
            await services.coordinator.start()
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
            health.begin_draining(app)  # uvicorn has drained; readiness fails from here on
            if loading is not None:
                loading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loading
            if services.coordinator is not None:
                await services.coordinator.close()
            await manager.close()
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
    for router in (score.router, models_api.router, admin.router, runs.router, health.router):
        app.include_router(router)
    app.include_router(monitoring_api.router)
    app.include_router(compat.router)
    # Each middleware added wraps the ones before it; cheapest refusals outermost.
    app.add_middleware(CancelOnDisconnect)  # a client that leaves cancels its queued work
    app.add_middleware(JsonTextCheck)  # 400: not UTF-8, NUL, lone surrogate escapes
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Auth is decided from the headers, before any body byte is read.
    app.add_middleware(AdminAuth, token=settings.admin_token, prefix=ADMIN_PREFIX)
    if settings.api_keys:
        keys = [key.get_secret_value() for key in settings.api_keys]
        app.add_middleware(ApiKeyAuth, keys=keys, admin_prefix=ADMIN_PREFIX)
    if settings.cors_origins:
        # Outside auth: a browser's preflight carries no credentials, and a 401 needs the
        # CORS headers for the page to read it.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
        )
    if recorder is not None:
        # Around everything (it reads no body), so 401s and 413s are counted too.
        app.add_middleware(HttpMetrics, metrics=recorder.metrics, openapi=app.openapi)
    return app


async def _load_startup_model(settings: Settings, services: Services) -> None:
    try:
        model = await run_on_own_thread(
            load_served_model, settings, settings.model_name, settings.model
        )
    except Exception as exc:
        services.load_error = f"model load failed: {exc}"
        logger.exception("could not load the start-up model %r", settings.model)
        return
    services.registry.add(model)
    logger.info("serving %s (version %s)", model.name, model.version)


def _thread_init(settings: Settings) -> Callable[[], None] | None:
    threads = settings.torch_threads
    return None if threads is None else (lambda: set_torch_threads(threads))


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch  # only to ask whether CUDA is there; no torch work on the event loop

    return "cuda" if torch.cuda.is_available() else "cpu"
