"""Reference-score store and run statistics: Redis when configured, else in-process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.store.base import PromptReferences, ReferenceStore, RegisteredPrompt
from service.store.memory import MemoryStore

if TYPE_CHECKING:
    from service.config import Settings

__all__ = [
    "MemoryStore",
    "PromptReferences",
    "ReferenceStore",
    "RegisteredPrompt",
    "create_store",
]


def create_store(settings: Settings) -> ReferenceStore:
    """`RedisStore` when `settings.redis_url` is set (shared by replicas), else the embedded
    `MemoryStore`. Creating a RedisStore does not connect: the first call does."""
    if settings.redis_url:
        from service.store.redis import RedisStore

        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            breaker_failures=settings.redis_breaker_failures,
            breaker_cooldown_s=settings.redis_breaker_cooldown_s,
            copy_size=settings.redis_copy_size,
        )
    return MemoryStore()
