"""Shared fixtures: a locally trained tokenizer and an in-process app on the fake runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from service.app import create_app
from service.config import Settings
from service.models.encoding import PairEncoder
from service.models.fake import FakeRunner
from service.models.registry import ServedModel


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.demo.factory import synthetic_corpus, train_tokenizer

    return train_tokenizer(
        tmp_path_factory.mktemp("tokenizer"), synthetic_corpus(3000, seed=1), vocab_size=1024
    )


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def fake_model(tokenizer: Any, *, name: str = "default", max_tokens: int = 512, **kw: Any):
    runner = FakeRunner(**kw)
    return ServedModel(
        name=name,
        version=f"fake-{name}",
        runner=runner,
        encoder=PairEncoder(tokenizer, max_tokens=max_tokens),
        info={"kind": "fake"},
    )


@pytest.fixture
def make_client(tokenizer: Any) -> Iterator[Any]:
    """Build an app on fake models with settings overrides; the lifespan runs."""
    clients: list[TestClient] = []

    def make(models: list[ServedModel] | None = None, **settings: Any) -> TestClient:
        served = models or [fake_model(tokenizer)]
        client = TestClient(create_app(Settings(**settings), models=served))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def demo_cache_dir() -> Path:
    """Where the demo RM is built: `PAR_CACHE_DIR` if set, else the service's default, so the
    tests reuse what `make serve` built (and the other way round)."""
    import os

    from service.config import DEFAULT_CACHE_DIR

    return Path(os.environ.get("PAR_CACHE_DIR", DEFAULT_CACHE_DIR))


@pytest.fixture(scope="session")
def demo_dir(demo_cache_dir: Path) -> Path:
    from service.demo.build import ensure_demo_model

    return ensure_demo_model(demo_cache_dir)


async def status_before_body(app: Any, method: str, path: str) -> int:
    """Call the ASGI app with headers that announce a large body, and a receive channel that
    fails if read: the status it answers with, decided before any body byte is read."""
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read before authentication")

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"999999999")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return int(sent[0]["status"])
