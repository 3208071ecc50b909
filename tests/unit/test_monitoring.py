"""The monitoring parts on their own: bulk histograms, distribution windows, run labels, the
instrumented store and the recorder's bounds."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.errors import StoreUnavailable
from service.monitoring.distributions import RewardWindows
from service.monitoring.metrics import (
    MAX_MODEL_VERSIONS,
    OTHER_RUN,
    REWARD_BUCKETS,
    BulkHistogram,
    RunLabels,
    ServiceMetrics,
)
from service.monitoring.recorder import Recorder
from service.monitoring.store import InstrumentedStore
from service.store.base import ReferenceScore
from service.store.memory import MemoryStore


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_bulk_histogram_matches_prometheus_client_histogram() -> None:
    rng = np.random.default_rng(0)
    # Random values, and values exactly on bucket bounds (le means "<=").
    values = np.concatenate((rng.normal(0, 3, 500), np.array(REWARD_BUCKETS), [-50.0, 50.0]))
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram(
        "h", "d", labelnames=("run",), buckets=REWARD_BUCKETS, registry=bulk_registry
    )
    reference = Histogram("h", "d", ["run"], buckets=REWARD_BUCKETS, registry=reference_registry)
    for chunk in np.array_split(values, 7):  # several bulk calls accumulate
        bulk.observe_many(("a",), chunk)
    for v in values:
        reference.labels("a").observe(float(v))
    got, expected = samples(bulk_registry), samples(reference_registry)
    assert got.keys() == expected.keys()
    for key, v in expected.items():
        assert got[key] == pytest.approx(v, abs=1e-9), key
    bulk.forget("run", "a")
    assert samples(bulk_registry) == {}


def test_window_ring_keeps_the_latest_pairs_and_totals() -> None:
    windows = RewardWindows(capacity=8, bucket_s=10.0, clock=lambda: 3.0)

    def record(raw: list[float], refs: list[float]) -> None:
        n = len(raw)
        windows.record(
            model_version="v",
            run="r",
            method="par",
            raw=np.array(raw),
            reference_mean=np.full(n, np.mean(refs) if refs else np.nan),
            references=np.array(refs, dtype=float),
            shaped=np.full(n, 0.97),
            lengths=np.arange(n, dtype=float),
        )

    record([1.0] * 5, [0.0] * 5)
    record([2.0] * 6, [1.0] * 12)  # wraps both rings
    d = windows.snapshot()
    assert d.counts.samples == 8 and d.counts.total_pairs == 11
    assert d.counts.reference_samples == 16 and d.counts.total_references == 17
    # The newest 8 pairs: 2 of the first request, 6 of the second.
    assert sorted(d.scatter.reward) == [1.0] * 2 + [2.0] * 6
    assert d.signals.saturation_share == 1.0
    assert d.signals.reference_mean == pytest.approx(12 / 16)  # the newest 16: 4 zeros, 12 ones
    # Buckets outlive the ring: both requests fell in the same 10 s bucket.
    assert d.series.pairs == [11]
    assert d.series.raw_mean == [pytest.approx((5 + 12) / 11)]
    assert d.series.reference_mean == [pytest.approx(12 / 17)]


def test_window_buckets_roll_over_time() -> None:
    now = [0.0]
    windows = RewardWindows(capacity=16, bucket_s=10.0, max_buckets=3, clock=lambda: now[0])
    for t, raw in ((0.0, 1.0), (5.0, 3.0), (12.0, 10.0), (31.0, 20.0)):
        now[0] = t
        windows.record(
            model_version="v",
            run="r",
            method="vanilla",
            raw=np.array([raw]),
            reference_mean=np.array([np.nan]),
            references=np.zeros(0),
            shaped=np.array([raw]),
            lengths=np.array([4.0]),
        )
    s = windows.snapshot().series
    assert s.time == [0.0, 10.0, 30.0]
    assert s.raw_mean == [2.0, 10.0, 20.0]
    assert s.reference_mean == [None, None, None]
    assert s.saturation_share == [None, None, None]  # no PAR values
    now[0] = 40.0
    windows.record(
        model_version="v",
        run="r",
        method="vanilla",
        raw=np.array([5.0]),
        reference_mean=np.array([np.nan]),
        references=np.zeros(0),
        shaped=np.array([5.0]),
        lengths=np.array([4.0]),
    )
    assert windows.snapshot().series.time == [10.0, 30.0, 40.0]  # the oldest bucket dropped


def test_signals_are_none_where_undefined() -> None:
    windows = RewardWindows(capacity=8, clock=lambda: 0.0)
    windows.record(
        model_version="v",
        run="r",
        method="vanilla",
        raw=np.array([1.0, 1.0]),
        reference_mean=np.full(2, np.nan),
        references=np.zeros(0),
        shaped=np.array([1.0, 1.0]),
        lengths=np.array([3.0, 3.0]),
    )
    s = windows.snapshot().signals
    assert (s.samples, s.par_samples) == (2, 0)
    assert s.saturation_share is None
    assert s.drift_reference_std is None and s.reference_mean is None
    assert s.length_correlation is None  # two samples, no variance


def test_run_labels_are_bounded() -> None:
    runs = RunLabels(2)
    assert [runs.label(r) for r in ("a", None, "b", "a", "c")] == [
        "a",
        "none",
        OTHER_RUN,
        "a",
        OTHER_RUN,
    ]


class _BrokenStore(MemoryStore):
    async def lookup(self, model_version, prompt_keys):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("down")


def op(name: str) -> frozenset:
    return frozenset({("operation", name)})


async def test_instrumented_store_times_and_counts_failures() -> None:
    metrics = ServiceMetrics(max_queue_items=10, queue_depth=lambda: 0)
    store = InstrumentedStore(_BrokenStore(), metrics)
    assert await store.get_run_stats("r") == {}
    with pytest.raises(StoreUnavailable):
        await store.lookup("v", ["k"])
    m = samples(metrics.registry)
    assert m[("par_store_errors_total", op("lookup"))] == 1
    assert m[("par_store_operation_seconds_count", op("lookup"))] == 1
    assert m[("par_store_operation_seconds_count", op("get_run_stats"))] == 1
    assert m[("par_store_up", frozenset())] == 0
    await store.get_run_stats("r")
    assert samples(metrics.registry)[("par_store_up", frozenset())] == 1
    # Backend extras pass through untimed.
    assert [k async for k in store.iter_prompt_keys()] == []


def test_recorder_keeps_the_latest_model_versions_only() -> None:
    recorder = Recorder(Settings())
    for i in range(MAX_MODEL_VERSIONS + 1):
        recorder.record_score(
            model_version=f"v{i}",
            run_id="r",
            method="par",
            raw=np.array([1.0, 2.0]),
            references=[[ReferenceScore(0.5)], [ReferenceScore(0.0), ReferenceScore(1.0)]],
            shaped=np.array([0.6, 0.8]),
            lengths=np.array([3, 4]),
            reference_hits=1,
            reference_misses=0,
        )
    m = samples(recorder.metrics.registry)
    versions = {dict(k)["model_version"] for name, k in m if name == "par_reward_raw_count"}
    assert versions == {f"v{i}" for i in range(1, MAX_MODEL_VERSIONS + 1)}
    assert {k.model_version for k in recorder.windows.snapshot().keys} == versions
    # Each pair's references, once per pair: 1 + 2 per request.
    v1 = frozenset({("model_version", "v1"), ("run", "r")})
    assert m[("par_reward_reference_count", v1)] == 3
    assert m[("par_store_reference_hits_total", frozenset())] == MAX_MODEL_VERSIONS + 1
