"""Hot swap with the real loader and real Hugging Face models built locally: failed swaps
leave the old model serving, and memory comes back after ten swap cycles."""

from __future__ import annotations

import ctypes
import gc
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.demo.factory import build_seqcls_rm
from tests.conftest import fake_model

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("roots")
    # ~10M parameters (40 MB fp32): a leaked copy per swap would be plain in RSS.
    for name, seed in (("a", 1), ("b", 2)):
        build_seqcls_rm(root / name, tokenizer_dir, hidden_size=256, layers=8, heads=4,
                        intermediate=688, seed=seed)  # fmt: skip
    # Corrupt weights: the safetensors file cut in half.
    shutil.copytree(root / "a", root / "corrupt")
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    # Wrong architecture: a config naming a class that does not exist.
    shutil.copytree(root / "a", root / "wrong-arch")
    config = json.loads((root / "wrong-arch" / "config.json").read_text())
    config["architectures"] = ["NotARealModelForSequenceClassification"]
    config["model_type"] = "not-a-real-model"
    (root / "wrong-arch" / "config.json").write_text(json.dumps(config))
    # Pickled weights beside the config.
    shutil.copytree(root / "a", root / "pickled")
    (root / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    return root


@pytest.fixture
def client(model_root: Path, tokenizer: Any, tmp_path: Path):
    settings = Settings(admin_token=TOKEN, model_roots=[model_root], cache_dir=tmp_path)
    with TestClient(create_app(settings, models=[fake_model(tokenizer)])) as c:
        r = c.post("/v1/admin/models", json={"name": "default", "path": "a"}, headers=AUTH)
        assert r.status_code == 200, r.text
        yield c


def version(client: TestClient) -> str:
    r = client.post("/v1/score", json={"items": [{"prompt": "p", "response": "r"}],
                                       "shaping": {"method": "vanilla"}})  # fmt: skip
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


@pytest.mark.parametrize("path", ["corrupt", "wrong-arch", "pickled", "../outside", "/etc"])
def test_failed_swap_leaves_the_old_model_serving(client: TestClient, path: str) -> None:
    before = version(client)
    r = client.post("/v1/admin/models", json={"name": "default", "path": path}, headers=AUTH)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    assert version(client) == before
    assert client.get("/readyz").status_code == 200
    assert client.get("/v1/models").json()["active_version"] == before


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def settle_memory() -> int:
    gc.collect()
    # Freed heap pages go back to the OS only when malloc is asked to; this is what a long
    # running server does implicitly over time, and what makes the measurement meaningful.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_bytes()


def test_memory_comes_back_after_ten_swap_cycles(client: TestClient) -> None:
    versions = set()
    after_first = None
    for cycle in range(10):
        for path in ("b", "a"):
            r = client.post("/v1/admin/models", json={"name": "default", "path": path},
                            headers=AUTH)  # fmt: skip
            assert r.status_code == 200, r.text
            versions.add(version(client))
        # the replaced model is freed in the background once drained; wait for it
        services = client.app.state.services
        assert len(services.registry.list()[0]) == 1
        client.portal.call(_background_done, services.manager)
        if cycle == 0:
            after_first = settle_memory()
    assert len(versions) == 2
    after_ten = settle_memory()
    assert after_first is not None
    growth = after_ten - after_first
    # One model is ~40 MB; ten leaked swaps would be ~800 MB.
    assert growth < 30 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB over ten cycles"


async def _background_done(manager: Any) -> None:
    import asyncio

    await asyncio.gather(*list(manager._background), return_exceptions=True)
