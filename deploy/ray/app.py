"""Ray Serve application: the same FastAPI app as `python -m service`, as N Ray replicas that
share one Redis (reference scores, run statistics, the desired model).

For RLHF clusters that already run Ray (OpenRLHF, verl): the reward service lives beside the
trainer's actors, one GPU per replica, behind Ray Serve's HTTP proxy.

    # from the repository root, with Redis reachable from every Ray node
    serve run --working-dir . deploy/ray/serve_config.yaml
    # or, without a config file (arguments are `RayAppArgs` fields):
    PAR_REDIS_URL=redis://:secret@redis:6379/0 PAR_MODEL=/models/rm \
        serve run deploy.ray.app:build num_replicas=4 num_gpus=1

Every replica builds its own app with `create_app(Settings())`, so every setting is the usual
`PAR_*` environment variable (set them in the config's `runtime_env.env_vars`). Each replica
loads its own model; Redis makes them interchangeable: references registered through one are
cache hits on the others, a run's statistics merge atomically whichever replica scores a
batch, and an admin model swap on one reaches the rest. Behind Ray's proxy, `/metrics`
and `/dashboard` answer for whichever replica takes the request; scrape the replicas
themselves (or use Ray's metrics) for the whole picture.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from service.app import create_app
from service.config import Settings


class RayAppArgs(BaseModel):
    """Arguments of the application builder (`serve run ... key=value` or the config's
    `args`)."""

    num_replicas: int = Field(2, ge=1, description="Ray replicas, each a full service.")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per replica; 0 for CPU replicas.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica.")
    max_ongoing_requests: int = Field(
        32,
        ge=1,
        description="Requests Ray lets into one replica at once. Well above Ray's default (5): "
        "the service batches pairs across concurrent requests, so it wants them in together.",
    )
    startup_timeout_s: float = Field(
        900.0, gt=0, description="How long a replica may take to load and warm its model."
    )


def build(args: RayAppArgs) -> Application:
    """The application builder `serve run` and `serve_config.yaml` point at."""
    settings = Settings()  # the builder runs with the app's runtime_env: same PAR_* as replicas
    if args.num_replicas > 1 and not settings.redis_url:
        raise ValueError(
            "set PAR_REDIS_URL (runtime_env.env_vars): without a shared Redis each replica "
            "keeps its own references and run statistics, and they disagree"
        )
    timeout_s = args.startup_timeout_s

    def build_asgi_app() -> FastAPI:  # runs in each replica, at its start
        settings = Settings()
        if settings.replica_id is None:
            # Named as Ray names it, so /v1/admin/replicas lines up with `serve status`.
            replica = serve.get_replica_context()
            name = f"{replica.deployment}#{replica.replica_id.unique_id}"
            settings = settings.model_copy(update={"replica_id": name})
        return create_app_ready_at_startup(settings, timeout_s=timeout_s)

    deployment = serve.deployment(
        serve.ingress(build_asgi_app)(),
        name="par-reward",
        num_replicas=args.num_replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options={"num_gpus": args.num_gpus, "num_cpus": args.num_cpus},
        # As long as the service's own drain after SIGTERM (service/__main__.py).
        graceful_shutdown_timeout_s=30,
    )
    return deployment.bind()


def create_app_ready_at_startup(settings: Settings, *, timeout_s: float) -> FastAPI:
    """`create_app`, whose lifespan startup also waits for the model to be loaded and warm.

    Standalone, the service answers /healthz at once and flips /readyz when the model is in;
    a load balancer reads /readyz. Ray Serve routes to a replica as soon as its ASGI lifespan
    startup has completed and has no readiness probe, so here the startup itself waits: Ray
    then sends nothing to a replica that would answer 503, and a failed load fails the
    replica (Ray retries it) instead of leaving a replica that can never serve.
    """
    app = create_app(settings)
    service_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with service_lifespan(app) as state:
            await wait_until_ready(app, timeout_s=timeout_s)
            yield state

    app.router.lifespan_context = lifespan
    return app


async def wait_until_ready(app: FastAPI, *, timeout_s: float) -> None:
    services = app.state.services
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    # The start-up load runs as a task of the service's lifespan and sets no event; checking
    # ten times a second costs nothing next to a model load.
    while not services.registry.ready:
        if services.load_error is not None:
            raise RuntimeError(services.load_error)
        if loop.time() > deadline:
            raise TimeoutError(f"the model was not ready within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)
