"""The one object the serving path reports to: it feeds the Prometheus metrics
(`metrics.py`) and the distribution windows (`distributions.py`).

- the scorer calls `record_score` once at the end of each score request, with numpy arrays:
  a handful of vectorised operations (~tens of microseconds for 64 pairs), nothing per pair
  in Python beyond flattening the reference lists;
- the batcher calls `on_batch` from the model thread once per forward;
- the store is wrapped by `watch_store` (latency, errors, up/down).

The app builds one per app in `create_app` (so the HTTP middleware and routes can use it) and
attaches the lifespan's registry and batcher to it when they exist.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from prometheus_client import generate_latest

from service.batching.batcher import BatchReport, MicroBatcher
from service.config import Settings
from service.models.registry import ModelRegistry
from service.monitoring.distributions import DashboardData, RewardWindows
from service.monitoring.metrics import (
    MAX_MODEL_VERSIONS,
    ModelInfoRow,
    RunLabels,
    ServiceMetrics,
)
from service.monitoring.store import InstrumentedStore
from service.store.base import ReferenceScore, ReferenceStore


class Recorder:
    def __init__(self, settings: Settings, *, windows: RewardWindows | None = None) -> None:
        self.metrics = ServiceMetrics(
            max_queue_items=settings.max_queue_items, queue_depth=self._queue_depth
        )
        self.windows = windows or RewardWindows()
        self.runs = RunLabels(settings.metrics_max_runs)
        self._registry: ModelRegistry | None = None
        self._batcher: MicroBatcher | None = None
        # Model versions with reward series, least recently recorded first.
        self._versions: OrderedDict[str, None] = OrderedDict()
        self.metrics.add_signal_source(self.windows.signals)
        self.metrics.add_model_source(self._model_rows)

    def attach(self, *, registry: ModelRegistry, batcher: MicroBatcher) -> None:
        """Called by the lifespan once the registry and the batcher exist."""
        self._registry = registry
        self._batcher = batcher

    def watch_store(self, store: ReferenceStore) -> ReferenceStore:
        self.metrics.add_store_state_source(store.state)
        return InstrumentedStore(store, self.metrics)

    # -- hooks --------------------------------------------------------------------------------
    def record_score(
        self,
        *,
        model_version: str,
        run_id: str | None,
        method: str,
        raw: np.ndarray,
        references: Sequence[Sequence[ReferenceScore]],
        shaped: np.ndarray,
        lengths: np.ndarray,
        reference_hits: int,
        reference_misses: int,
    ) -> None:
        """One scored request: per pair its raw reward, the references it was shaped against,
        its shaped reward and response length."""
        run = self.runs.label(run_id)
        self._use_version(model_version)
        n = len(raw)
        per_pair = np.fromiter(map(len, references), dtype=np.int64, count=n)
        flat = np.fromiter(
            (r.reward for refs in references for r in refs),
            dtype=np.float64,
            count=int(per_pair.sum()),
        )
        if flat.size:
            sums = np.bincount(np.repeat(np.arange(n), per_pair), weights=flat, minlength=n)
            reference_mean = np.divide(sums, per_pair, out=np.full(n, np.nan), where=per_pair > 0)
        else:
            reference_mean = np.full(n, np.nan)
        lengths = lengths.astype(np.float64)
        self.metrics.observe_rewards(
            model_version=model_version,
            run=run,
            method=method,
            raw=raw,
            references=flat,
            shaped=shaped,
            lengths=lengths,
            reference_hits=reference_hits,
            reference_misses=reference_misses,
        )
        self.windows.record(
            model_version=model_version,
            run=run,
            method=method,
            raw=raw,
            reference_mean=reference_mean,
            references=flat,
            shaped=shaped,
            lengths=lengths,
        )
        self.check_active_model()

    def on_batch(self, report: BatchReport) -> None:
        self.metrics.observe_batch(report)

    def check_active_model(self) -> None:
        """Notice a change of the active model version: a swap marker and the swap counter.
        Called on every record, scrape and dashboard read; a hot swap may also call it
        right after swapping for an exact marker time."""
        if self._registry is None:
            return
        models, active = self._registry.list()
        version = next((m.version for m in models if m.name == active), None)
        if version is None:
            return
        marker = self.windows.note_active_version(version)
        if marker is not None and marker.previous_version is not None:
            self.metrics.observe_swap(marker.time)

    # -- reading ------------------------------------------------------------------------------
    def dashboard(self, *, model_version: str | None, run: str | None) -> DashboardData:
        self.check_active_model()
        return self.windows.snapshot(model_version=model_version, run=run)

    def exposition(self) -> bytes:
        self.check_active_model()
        return generate_latest(self.metrics.registry)

    # -- internals ----------------------------------------------------------------------------
    def _use_version(self, version: str) -> None:
        """Keep reward series for the latest MAX_MODEL_VERSIONS versions only."""
        if version in self._versions:
            self._versions.move_to_end(version)
            return
        self._versions[version] = None
        while len(self._versions) > MAX_MODEL_VERSIONS:
            old, _ = self._versions.popitem(last=False)
            self.metrics.forget_model_version(old)
            self.windows.forget_model_version(old)

    def _queue_depth(self) -> int:
        return self._batcher.queued_items if self._batcher is not None else 0

    def _model_rows(self) -> list[ModelInfoRow]:
        if self._registry is None:
            return []
        models, active = self._registry.list()
        return [
            ModelInfoRow(
                name=m.name,
                version=m.version,
                kind=str(m.info.get("kind", "unknown")),
                active=m.name == active,
            )
            for m in models
        ]
