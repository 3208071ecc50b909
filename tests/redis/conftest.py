"""Redis fixtures: the tests start their own `redis-server` on a free port (never the shared
one on 6379) and stop it by PID."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from service.store.redis import RedisStore
from tests.redis.server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()  # fails loudly (no skip) when redis-server is missing
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[str]:
    """The session server, emptied before the test. Yields its URL."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
        client.script_flush()
    finally:
        client.close()
    yield redis_url


@pytest.fixture
async def redis_store(clean_redis: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(clean_redis, prefix="test", timeout_s=2.0)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server for tests that crash, pause or restart it."""
    server = RedisServer(password="s3cret-pw")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
