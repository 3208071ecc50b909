"""A `ReferenceStore` wrapper that times every operation and counts failures, whatever the
backend (in-process or Redis): `par_store_operation_seconds`, `par_store_errors_total` and
`par_store_up`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from service.monitoring.metrics import ServiceMetrics
from service.scoring.running_stats import RunningStats
from service.store.base import (
    PromptReferences,
    ReferenceScore,
    ReferenceStore,
    RegisteredPrompt,
)

T = TypeVar("T")


class InstrumentedStore:
    """Implements the `ReferenceStore` protocol by delegating to `inner`. Backend-specific
    extras (e.g. the prompt iteration a model swap uses to re-score references) are forwarded
    untimed by `__getattr__`; `inner` is the wrapped store itself."""

    def __init__(self, inner: ReferenceStore, metrics: ServiceMetrics) -> None:
        self.inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except Exception:  # a cancelled call (BaseException) is not a store failure
            self._metrics.observe_store(
                operation=operation, seconds=time.perf_counter() - started, ok=False
            )
            raise
        self._metrics.observe_store(
            operation=operation, seconds=time.perf_counter() - started, ok=True
        )
        return result

    async def lookup(
        self, model_version: str, prompt_keys: Sequence[str]
    ) -> dict[str, PromptReferences]:
        return await self._timed("lookup", self.inner.lookup(model_version, prompt_keys))

    async def reference_texts(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, str]]:
        return await self._timed("reference_texts", self.inner.reference_texts(wanted))

    async def register(self, prompts: Sequence[RegisteredPrompt]) -> int:
        return await self._timed("register", self.inner.register(prompts))

    async def save_scores(
        self, model_version: str, scores: Mapping[str, Mapping[str, ReferenceScore]]
    ) -> None:
        await self._timed("save_scores", self.inner.save_scores(model_version, scores))

    async def update_run_stats(self, run_id: str, method: str, batch: RunningStats) -> RunningStats:
        return await self._timed(
            "update_run_stats", self.inner.update_run_stats(run_id, method, batch)
        )

    async def get_run_stats(self, run_id: str) -> dict[str, RunningStats]:
        return await self._timed("get_run_stats", self.inner.get_run_stats(run_id))

    async def reset_run_stats(self, run_id: str) -> bool:
        return await self._timed("reset_run_stats", self.inner.reset_run_stats(run_id))

    async def all_prompt_keys(self) -> list[str]:
        return await self._timed("all_prompt_keys", self.inner.all_prompt_keys())

    async def prompt_json(self, prompt_key: str) -> str | None:
        return await self._timed("prompt_json", self.inner.prompt_json(prompt_key))

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    def state(self) -> dict[str, str | int | float]:
        return self.inner.state()

    async def close(self) -> None:
        await self.inner.close()
