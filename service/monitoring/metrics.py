"""Prometheus metrics of one app, on the app's own `CollectorRegistry`.

Every app built by `create_app` gets a fresh registry (no process-global state), so tests can
run several apps in one process. What is exported:

- serving: HTTP requests and latency by route template and status, queue depth, capacity and
  wait, batch size and padded tokens, forward time and tokens per second, reference-cache hits
  and misses, store errors and latency, model info and swaps;
- rewards: histograms of raw, reference and shaped (per method) rewards and of response
  lengths, labelled by model version and run;
- reward-hacking signals per (model version, run), computed at scrape time from the windows in
  `distributions.py`.

Cardinality is bounded: run labels go through `RunLabels` (the first `metrics_max_runs` runs
keep their id, later ones share `run="other"`; requests without a run are `run="none"`), and
only the latest `MAX_MODEL_VERSIONS` model versions keep reward series. No label ever holds
prompt or response text: labels are route templates, methods, model versions and run ids
(which the request schema restricts to `[A-Za-z0-9._:-]`).

Reward histograms are `BulkHistogram`s: prometheus-client's `Histogram` takes one value per
`observe` call, while a score request brings ~64 at once; `np.searchsorted` + `np.bincount`
bin them in one vectorised step.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service.batching.batcher import BatchReport
from service.monitoring.distributions import Signals

NO_RUN = "none"
OTHER_RUN = "other"
MAX_MODEL_VERSIONS = 4

# Raw logits and shaped values share one bucket layout: coarse for logits, fine on [0, 1]
# where PAR and the sigmoid family live (0.95 and 0.99 show saturation).
REWARD_BUCKETS = (
    *(-10.0, -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.75, -0.5, -0.25),
    *(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
    *(1.5, 2.0, 3.0, 4.0, 6.0, 10.0),
)
LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PADDED_TOKEN_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STORE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
STORE_OPERATIONS = (
    "lookup",
    "reference_texts",
    "register",
    "save_scores",
    "update_run_stats",
    "get_run_stats",
    "reset_run_stats",
    "all_prompt_keys",
    "prompt_json",
    "ping",
)


class RunLabels:
    """Run id -> label value, bounded: the first `max_runs` distinct runs keep their id, later
    ones share `OTHER_RUN`. Requests without a run are `NO_RUN` (it counts as a run)."""

    def __init__(self, max_runs: int) -> None:
        self.max_runs = max_runs
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def label(self, run_id: str | None) -> str:
        run = NO_RUN if run_id is None else run_id
        if run in self._known:  # the hot path: a set lookup, no lock
            return run
        with self._lock:
            if run in self._known:
                return run
            if len(self._known) < self.max_runs:
                self._known.add(run)
                return run
        return OTHER_RUN


@dataclass
class _Series:
    counts: np.ndarray  # per bucket (not cumulative), last one is +Inf
    total: float


class BulkHistogram(Collector):
    """A Prometheus histogram fed whole arrays: one `np.searchsorted` per call instead of one
    `observe` per value. Exposes the usual `_bucket{le}`, `_sum` and `_count` series."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._les = [floatToGoString(b) for b in buckets]
        self._with_sum = float(self._bounds[0]) >= 0
        self._series: dict[tuple[str, ...], _Series] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        if values.size == 0:
            return
        # side="left": a value equal to a bound falls in that bound's bucket (le = "<=").
        index = np.searchsorted(self._bounds, values, side="left")
        counts = np.bincount(index, minlength=len(self._bounds) + 1)
        total = float(values.sum())
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                self._series[labels] = _Series(counts.astype(np.int64), total)
            else:
                series.counts += counts
                series.total += total

    def forget(self, label: str, value: str) -> None:
        """Drop every series whose `label` equals `value` (an evicted model version)."""
        position = self.labelnames.index(label)
        with self._lock:
            for key in [k for k in self._series if k[position] == value]:
                del self._series[key]

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            snapshot = [(k, s.counts.copy(), s.total) for k, s in self._series.items()]
        # The same series as prometheus-client's Histogram: _count always, _sum only when no
        # bucket bound is negative (a sum of values that can be negative may go down, so it
        # is no counter; the window means are exported as gauges instead).
        # HistogramMetricFamily would drop _count too, so the samples are added here.
        family = Metric(self.name, self.documentation, "histogram")
        for values, counts, total in snapshot:
            labels = dict(zip(self.labelnames, values, strict=True))
            cumulative = np.cumsum(counts).tolist()
            for le, count in zip([*self._les, "+Inf"], cumulative, strict=True):
                family.add_sample(f"{self.name}_bucket", {**labels, "le": le}, count)
            family.add_sample(f"{self.name}_count", labels, cumulative[-1])
            if self._with_sum:
                family.add_sample(f"{self.name}_sum", labels, total)
        return [family]


class _SignalCollector(Collector):
    """Gauges computed at scrape time from the distribution windows (no hot-path cost)."""

    def __init__(self, source: Callable[[], Sequence[tuple[str, str, Signals]]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        samples, means, saturation, drift, correlation = families
        for version, run, s in self._source():
            labels = [version, run]
            samples.add_metric(labels, s.samples)
            if s.raw_mean is not None:
                means.add_metric([*labels, "raw"], s.raw_mean)
            if s.reference_mean is not None:
                means.add_metric([*labels, "reference"], s.reference_mean)
            if s.saturation_share is not None:
                saturation.add_metric(labels, s.saturation_share)
            if s.drift_reference_std is not None:
                drift.add_metric(labels, s.drift_reference_std)
            if s.length_correlation is not None:
                correlation.add_metric(labels, s.length_correlation)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        labels = ["model_version", "run"]
        return [
            GaugeMetricFamily(
                "par_reward_window_samples",
                "Pairs in the distribution window the signals are computed over.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "par_reward_window_mean",
                "Mean raw (kind='raw') and reference (kind='reference') reward in the window; "
                "use it rather than rate() of a reward histogram's _sum, which can go down.",
                labels=[*labels, "kind"],
            ),
            GaugeMetricFamily(
                "par_reward_saturation_share",
                "Share of PAR values above 0.95 in the window (saturation: the policy beats "
                "every reference by a wide margin).",
                labels=labels,
            ),
            GaugeMetricFamily(
                "par_reward_drift_reference_std",
                "(mean raw reward - mean reference reward) / reference std, in the window.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "par_reward_length_correlation",
                "Pearson correlation of response length and raw reward in the window.",
                labels=labels,
            ),
        ]


@dataclass(frozen=True)
class ModelInfoRow:
    name: str
    version: str
    kind: str
    active: bool


class _StoreStateCollector(Collector):
    """The store's own state at scrape time (`ReferenceStore.state()`): for Redis, the circuit
    breaker's state, how often it opened and refused calls, and the in-process copy's use."""

    BREAKER_STATES = ("closed", "half_open", "open")

    def __init__(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        state = self._source()
        if "breaker" not in state:
            return []  # the in-process store has no breaker
        breaker = GaugeMetricFamily(
            "par_store_breaker_state",
            "Circuit breaker in front of Redis: 1 for the current state (closed: calls go "
            "through; open: answered 503 at once; half_open: one trial call).",
            labels=["state"],
        )
        for name in self.BREAKER_STATES:
            breaker.add_metric([name], 1.0 if state["breaker"] == name else 0.0)
        copy_prompts = GaugeMetricFamily(
            "par_store_copy_prompts",
            "Prompts in the in-process copy that serves references while Redis is down.",
            value=state["copy_prompts"],
        )
        return [
            breaker,
            CounterMetricFamily(
                "par_store_breaker_opens", "Times the breaker opened.", value=state["opened"]
            ),
            CounterMetricFamily(
                "par_store_breaker_rejections",
                "Store calls answered at once because the breaker was open.",
                value=state["rejected"],
            ),
            copy_prompts,
            CounterMetricFamily(
                "par_store_copy_lookups",
                "Lookups answered from the in-process copy while Redis was down.",
                value=state["copy_served"],
            ),
        ]


class _ModelInfoCollector(Collector):
    """`par_model_info`: one series per loaded model, read from the registry at scrape time."""

    def __init__(self, source: Callable[[], Sequence[ModelInfoRow]]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for row in self._source():
            family.add_metric(
                [row.name, row.version, row.kind, "true" if row.active else "false"], 1
            )
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "par_model_info",
            "Loaded models (value 1); 'active' marks the one serving requests by default.",
            labels=["name", "version", "kind", "active"],
        )


class ServiceMetrics:
    """All metric objects of one app. Methods take plain values; callers never touch the
    prometheus-client objects directly."""

    def __init__(self, *, max_queue_items: int, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

        # --- HTTP ------------------------------------------------------------------------
        self.http_requests = Counter(
            "par_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "par_http_request_duration_seconds",
            "HTTP request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # --- queue and model thread ------------------------------------------------------
        depth = Gauge(
            "par_queue_depth", "Pairs queued or being scored by the model thread.", registry=r
        )
        depth.set_function(queue_depth)
        capacity = Gauge(
            "par_queue_capacity", "Admission limit: pairs queued beyond it get 429.", registry=r
        )
        capacity.set(max_queue_items)
        self.queue_wait = Histogram(
            "par_batch_queue_wait_seconds",
            "Per forward: how long its oldest pair waited in the queue.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "par_batch_size", "Pairs per forward.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_padded_tokens = Histogram(
            "par_batch_padded_tokens",
            "Padded tokens per forward (longest x size).",
            buckets=PADDED_TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Counter(
            "par_batch_tokens",
            "Tokens through the model: kind='real' (read) or 'padded' (computed).",
            ["kind"],
            registry=r,
        )
        self.forward_seconds = Histogram(
            "par_forward_seconds", "Time per forward.", buckets=FORWARD_BUCKETS, registry=r
        )
        self.tokens_per_second = Gauge(
            "par_forward_tokens_per_second",
            "Real tokens per second of the last forward.",
            registry=r,
        )

        # --- store -----------------------------------------------------------------------
        self.reference_hits = Counter(
            "par_store_reference_hits",
            "Reference scores served from the store's cache.",
            registry=r,
        )
        self.reference_misses = Counter(
            "par_store_reference_misses",
            "Reference scores computed because the store had none under this model version.",
            registry=r,
        )
        self.store_errors = Counter(
            "par_store_errors", "Failed store operations.", ["operation"], registry=r
        )
        self.store_latency = Histogram(
            "par_store_operation_seconds",
            "Store operation latency (one round trip for Redis).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        for operation in STORE_OPERATIONS:  # rate() needs the zero series to exist
            self.store_errors.labels(operation)
        self.store_up = Gauge(
            "par_store_up", "1 if the last store operation succeeded, else 0.", registry=r
        )
        self.store_up.set(1)

        # --- models ----------------------------------------------------------------------
        self.model_swaps = Counter(
            "par_model_swaps", "Changes of the active model version.", registry=r
        )
        self.last_swap = Gauge(
            "par_model_last_swap_timestamp_seconds",
            "Unix time of the last change of the active model version (0: none yet).",
            registry=r,
        )

        # --- rewards ---------------------------------------------------------------------
        self.reward_raw = BulkHistogram(
            "par_reward_raw",
            "Raw RM rewards (logits) of policy responses.",
            labelnames=("model_version", "run"),
            buckets=REWARD_BUCKETS,
            registry=r,
        )
        self.reward_reference = BulkHistogram(
            "par_reward_reference",
            "Raw RM rewards of the references each pair was shaped against (once per pair).",
            labelnames=("model_version", "run"),
            buckets=REWARD_BUCKETS,
            registry=r,
        )
        self.reward_shaped = BulkHistogram(
            "par_reward_shaped",
            "Shaped rewards, per shaping method.",
            labelnames=("model_version", "run", "method"),
            buckets=REWARD_BUCKETS,
            registry=r,
        )
        self.response_length = BulkHistogram(
            "par_response_length_tokens",
            "Response length in tokens of policy responses.",
            labelnames=("model_version", "run"),
            buckets=LENGTH_BUCKETS,
            registry=r,
        )
        self._reward_families = (
            self.reward_raw,
            self.reward_reference,
            self.reward_shaped,
            self.response_length,
        )

    def add_signal_source(self, source: Callable[[], Sequence[tuple[str, str, Signals]]]) -> None:
        self.registry.register(_SignalCollector(source))

    def add_model_source(self, source: Callable[[], Sequence[ModelInfoRow]]) -> None:
        self.registry.register(_ModelInfoCollector(source))

    def add_store_state_source(self, source: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(_StoreStateCollector(source))

    # -- observations -----------------------------------------------------------------------
    def observe_request(self, *, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.http_requests.labels(*labels).inc()
        self.http_latency.labels(*labels).observe(seconds)

    def observe_batch(self, report: BatchReport) -> None:
        """From the model thread, once per forward (prometheus-client is thread-safe)."""
        self.batch_size.observe(report.size)
        self.batch_padded_tokens.observe(report.padded_tokens)
        self.batch_tokens.labels("real").inc(report.real_tokens)
        self.batch_tokens.labels("padded").inc(report.padded_tokens)
        self.forward_seconds.observe(report.seconds)
        self.queue_wait.observe(report.queue_wait_s)
        if report.seconds > 0:
            self.tokens_per_second.set(report.real_tokens / report.seconds)

    def observe_rewards(
        self,
        *,
        model_version: str,
        run: str,
        method: str,
        raw: np.ndarray,
        references: np.ndarray,
        shaped: np.ndarray,
        lengths: np.ndarray,
        reference_hits: int,
        reference_misses: int,
    ) -> None:
        self.reward_raw.observe_many((model_version, run), raw)
        self.reward_reference.observe_many((model_version, run), references)
        self.reward_shaped.observe_many((model_version, run, method), shaped)
        self.response_length.observe_many((model_version, run), lengths)
        if reference_hits:
            self.reference_hits.inc(reference_hits)
        if reference_misses:
            self.reference_misses.inc(reference_misses)

    def observe_store(self, *, operation: str, seconds: float, ok: bool) -> None:
        self.store_latency.labels(operation).observe(seconds)
        if not ok:
            self.store_errors.labels(operation).inc()
        self.store_up.set(1 if ok else 0)

    def observe_swap(self, at: float) -> None:
        self.model_swaps.inc()
        self.last_swap.set(at)

    def forget_model_version(self, version: str) -> None:
        for family in self._reward_families:
            family.forget("model_version", version)


class HttpMetrics:
    """Pure ASGI middleware: requests and latency by route *template* (`/v1/runs/{run_id}/
    stats`, never the raw path, so ids do not explode the label set). Install it outermost so
    401s and 413s count too; a request answered before routing is matched against the app's
    OpenAPI paths, and one that matches no route is labelled `unmatched`."""

    def __init__(
        self, app: Any, *, metrics: ServiceMetrics, openapi: Callable[[], dict[str, Any]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self._openapi = openapi
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.metrics.observe_request(
                route=self._template(scope),
                method=scope["method"],
                status=status,
                seconds=time.perf_counter() - started,
            )

    def _template(self, scope: dict[str, Any]) -> str:
        # The router leaves the matched route in the (shared) scope.
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        if self._templates is None:
            self._templates = [(_path_pattern(t), t) for t in self._openapi().get("paths", {})]
        return next(
            (t for pattern, t in self._templates if pattern.match(scope["path"])), "unmatched"
        )


def _path_pattern(template: str) -> re.Pattern[str]:
    """`/v1/runs/{run_id}/stats` -> a regex matching `/v1/runs/<one segment>/stats`."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")
