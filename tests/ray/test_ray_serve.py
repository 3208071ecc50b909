"""The Ray Serve application (`deploy/ray/app.py`) on a local Ray cluster: two CPU replicas of
the real app on the demo RM, sharing a real Redis, score exactly what a plain service process
scores. Needs `ray[serve]` (`make test-ray` installs it) and runs only under `-m ray`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.service_process import ServiceProcess
from tests.redis.server import RedisServer, free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

pytestmark = [pytest.mark.ray, pytest.mark.e2e]

RAY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "ray"
TOKEN = "ray-admin-token"
PROMPTS = {
    "What is 17 + 25?": ["17 + 25 = 42.", "I think it is 51.", "42"],
    "Name a red fruit.": ["A strawberry is red.", "A banana.", "Bananas are yellow."],
}
REFERENCES = {"What is 17 + 25?": ["The answer is 42."], "Name a red fruit.": ["A cherry."]}


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="module")
def ray_app(redis_url: str, demo_dir: Path, demo_cache_dir: Path) -> Iterator[str]:
    """A local Ray cluster (its own ports: never the shared Redis's 6379) with the app on it;
    yields the Serve proxy's base URL."""
    from deploy.ray.app import RayAppArgs, build

    env = {
        "PAR_MODEL": "demo",
        "PAR_CACHE_DIR": str(demo_cache_dir),
        "PAR_REDIS_URL": redis_url,
        "PAR_ADMIN_TOKEN": TOKEN,
        "PAR_RECONCILE_INTERVAL_S": "1",
    }
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=200 * 1024**2,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)  # the builder runs here, in the driver
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build(RayAppArgs(num_replicas=2, num_gpus=0, num_cpus=0.5))
        serve.run(app, name="par-reward", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def direct(demo_dir: Path, demo_cache_dir: Path) -> Iterator[ServiceProcess]:
    """The same model served by `python -m service`, no Ray, no Redis."""
    proc = ServiceProcess(env={"PAR_CACHE_DIR": str(demo_cache_dir)}).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_ray_replicas_score_like_a_direct_service(ray_app: str, direct: ServiceProcess) -> None:
    assert httpx.get(f"{ray_app}/readyz", timeout=10).status_code == 200
    refs = {"items": [{"prompt": p, "references": r} for p, r in REFERENCES.items()]}
    ray_refs = post(ray_app, "/v1/references", refs)
    direct_refs = post(direct.url, "/v1/references", refs)
    assert ray_refs["model_version"] == direct_refs["model_version"]
    for got, expected in zip(ray_refs["results"], direct_refs["results"], strict=True):
        assert got["reference_rewards"] == pytest.approx(expected["reference_rewards"], abs=1e-5)

    body = {"items": [{"prompt": p, "responses": r} for p, r in PROMPTS.items()]}
    # Several requests, so both replicas serve some; every one is a cache hit on the
    # references registered above through whichever replica took that call.
    direct_out = post(direct.url, "/v1/score", body)
    for _ in range(6):
        ray_out = post(ray_app, "/v1/score", body)
        # Hits count reference scores per item: every registered one, none computed.
        assert ray_out["usage"]["reference_hits"] == sum(len(r) for r in REFERENCES.values())
        assert ray_out["usage"]["reference_misses"] == 0
        assert ray_out["model_version"] == direct_out["model_version"]
        for got, expected in zip(ray_out["results"], direct_out["results"], strict=True):
            assert got["reward"] == pytest.approx(expected["reward"], abs=1e-5)
            assert got["shaped_reward"] == pytest.approx(expected["shaped_reward"], abs=1e-5)
            assert got["reference_rewards"] == pytest.approx(
                expected["reference_rewards"], abs=1e-5
            )


def test_two_replicas_heartbeat_into_one_redis(ray_app: str) -> None:
    """Both Ray replicas are full services on the one Redis: each reports itself there
    (under its Ray replica name) serving the same model version."""

    def ray_replicas() -> list[dict[str, Any]]:
        r = httpx.get(
            f"{ray_app}/v1/admin/replicas",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return [x for x in r.json()["replicas"] if x["replica_id"].startswith("par-reward#")]

    # A heartbeat says "serving" from the first reconcile round after the model is in.
    deadline = time.monotonic() + 30
    replicas = ray_replicas()
    while not replicas or any(x["state"] != "serving" for x in replicas):
        assert time.monotonic() < deadline, json.dumps(replicas)
        time.sleep(0.5)
        replicas = ray_replicas()
    assert len(replicas) == 2, json.dumps(replicas)
    assert all(x["converged"] and not x["stale"] for x in replicas)
    assert len({x["version"] for x in replicas}) == 1


def test_serve_configs_validate_against_rays_schema() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from deploy.ray.app import RayAppArgs

    for name in ("serve_config.yaml", "serve_config.cpu.yaml"):
        raw = yaml.safe_load((RAY_DIR / name).read_text())
        config = ServeDeploySchema.model_validate(raw)
        for app in config.applications:
            assert app.import_path == "deploy.ray.app:build"
            RayAppArgs.model_validate(app.args)
