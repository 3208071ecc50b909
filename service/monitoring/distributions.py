"""Windowed reward distributions per (model version, run): what the dashboard draws and what
the reward-hacking signals are computed from.

Per key, in bounded memory:
- a ring of the latest `capacity` pairs: raw reward, mean of the pair's references (NaN
  without), shaped reward, response length, time, shaping method;
- a ring of the latest `2 * capacity` reference rewards (each pair's references, once per
  pair, so raw and reference distributions are weighted alike);
- means over fixed time buckets (`bucket_s`; the latest `max_buckets` kept), which outlive
  the rings;
- totals since start.
Swap markers (the active model version changed) are kept across keys.

Recording is one vectorised append per score request (`record`); histograms (bins fixed on
the server), signals and series are computed only when read. Keys are label values already
bounded by the caller (`RunLabels`), so the number of windows is bounded too.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.scoring.shaping import METHODS

SATURATION_THRESHOLD = 0.95
SATURATING_METHOD = "par"  # the saturation signal is about PAR values, in (0, 1)
_METHOD_CODE = {m: i for i, m in enumerate(METHODS)}
_PAR_CODE = _METHOD_CODE[SATURATING_METHOD]
# Pair ring columns.
_RAW, _REF, _SHAPED, _LENGTH, _TIME, _METHOD = range(6)

REWARD_BINS = 30
SHAPED_UNIT_BINS = 20  # shaped values all in [0, 1]: bins of 0.05, the last one is saturation
LENGTH_BINS = 24
SCATTER_POINTS = 500


# -- what a reader gets (also the JSON of GET /v1/dashboard/data) -----------------------------
@dataclass(frozen=True)
class Histogram:
    """Counts over bins fixed by the server: `edges` has one more entry than `counts`; every
    bin is [left, right) except the last, which includes its right edge."""

    edges: list[float]
    counts: list[int]


@dataclass(frozen=True)
class Histograms:
    """Raw and reference rewards share their bins, so they can be overlaid."""

    raw: Histogram
    reference: Histogram
    shaped: dict[str, Histogram]  # by shaping method
    length: Histogram


@dataclass(frozen=True)
class Signals:
    """Reward-hacking signals over the window; None where not defined (too few samples, no
    references, no PAR values, zero variance)."""

    samples: int
    par_samples: int
    saturation_share: float | None  # share of PAR values > 0.95
    raw_mean: float | None
    reference_mean: float | None
    reference_std: float | None  # population std of the reference rewards
    drift_reference_std: float | None  # (raw_mean - reference_mean) / reference_std
    length_correlation: float | None  # Pearson(response length, raw reward)


@dataclass(frozen=True)
class TimeSeries:
    """Means per time bucket (`time` = bucket start, unix seconds); None = nothing to average."""

    bucket_seconds: float
    time: list[float]
    pairs: list[int]
    raw_mean: list[float | None]
    reference_mean: list[float | None]
    shaped_mean: list[float | None]
    length_mean: list[float | None]
    saturation_share: list[float | None]


@dataclass(frozen=True)
class Scatter:
    """The latest pairs (at most 500): response length against raw reward."""

    length: list[int]
    reward: list[float]


@dataclass(frozen=True)
class SwapMarker:
    """The active model version became `model_version` at `time` (unix seconds)."""

    time: float
    model_version: str
    previous_version: str | None


@dataclass(frozen=True)
class WindowKey:
    model_version: str
    run: str
    samples: int
    total_pairs: int
    last_update: float


@dataclass(frozen=True)
class Counts:
    samples: int  # pairs in the window
    total_pairs: int  # pairs recorded since start
    reference_samples: int  # reference rewards in the window
    total_references: int
    by_method: dict[str, int]  # pairs in the window per shaping method


@dataclass(frozen=True)
class DashboardData:
    """Windowed distributions of one (model version, run), with every key known for
    selectors. Without a `model_version`/`run` asked, the active version (or the latest
    recorded) and its latest run are shown."""

    model_version: str | None
    run: str | None
    active_version: str | None
    window_capacity: int
    keys: list[WindowKey]
    counts: Counts
    histograms: Histograms
    series: TimeSeries
    signals: Signals
    scatter: Scatter
    markers: list[SwapMarker]
    generated_at: float


# -- storage ----------------------------------------------------------------------------------
class _Ring:
    """The latest `capacity` rows of a fixed-width float table."""

    def __init__(self, capacity: int, columns: int) -> None:
        self._data = np.zeros((capacity, columns))
        self._next = 0
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        capacity = len(self._data)
        n = len(rows)
        if n >= capacity:
            self._data[:] = rows[-capacity:]
            self._next, self.size = 0, capacity
            return
        end = self._next + n
        if end <= capacity:
            self._data[self._next : end] = rows
        else:
            first = capacity - self._next
            self._data[self._next :] = rows[:first]
            self._data[: n - first] = rows[first:]
        self._next = end % capacity
        self.size = min(capacity, self.size + n)

    def rows(self) -> np.ndarray:
        """A copy, oldest first."""
        if self.size < len(self._data):
            return self._data[: self.size].copy()
        return np.concatenate((self._data[self._next :], self._data[: self._next]))


@dataclass(slots=True)
class _Bucket:
    start: float
    pairs: int = 0
    raw_sum: float = 0.0
    shaped_sum: float = 0.0
    length_sum: float = 0.0
    references: int = 0
    reference_sum: float = 0.0
    par: int = 0
    saturated: int = 0


@dataclass
class _Window:
    pairs: _Ring
    references: _Ring
    buckets: deque[_Bucket]
    total_pairs: int = 0
    total_references: int = 0
    last_update: float = 0.0


class RewardWindows:
    """Bounded windows of recent rewards per (model version, run label), and swap markers."""

    def __init__(
        self,
        *,
        capacity: int = 2048,
        bucket_s: float = 10.0,
        max_buckets: int = 360,
        max_markers: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.capacity = capacity
        self.bucket_s = bucket_s
        self.max_buckets = max_buckets
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        self._markers: deque[SwapMarker] = deque(maxlen=max_markers)
        self._active: str | None = None
        # Recording runs on the event loop; reads may come from request threads (sync routes,
        # the Prometheus scrape). The lock is held only to append or to copy.
        self._lock = threading.Lock()

    def record(
        self,
        *,
        model_version: str,
        run: str,
        method: str,
        raw: np.ndarray,
        reference_mean: np.ndarray,
        references: np.ndarray,
        shaped: np.ndarray,
        lengths: np.ndarray,
    ) -> None:
        """One score request: per pair `raw`, `reference_mean` (NaN without references),
        `shaped`, `lengths`; `references` = every pair's reference rewards, flattened."""
        n = len(raw)
        if n == 0:
            return
        now = self._clock()
        rows = np.empty((n, 6))
        rows[:, _RAW] = raw
        rows[:, _REF] = reference_mean
        rows[:, _SHAPED] = shaped
        rows[:, _LENGTH] = lengths
        rows[:, _TIME] = now
        rows[:, _METHOD] = _METHOD_CODE[method]
        saturated = (
            int(np.count_nonzero(shaped > SATURATION_THRESHOLD))
            if method == SATURATING_METHOD
            else 0
        )
        start = math.floor(now / self.bucket_s) * self.bucket_s
        with self._lock:
            window = self._windows.get((model_version, run))
            if window is None:
                window = self._windows[(model_version, run)] = _Window(
                    pairs=_Ring(self.capacity, 6),
                    references=_Ring(2 * self.capacity, 1),
                    buckets=deque(maxlen=self.max_buckets),
                )
            window.pairs.extend(rows)
            if len(references):
                window.references.extend(references[:, None])
            if not window.buckets or window.buckets[-1].start < start:
                window.buckets.append(_Bucket(start))
            bucket = window.buckets[-1]
            bucket.pairs += n
            bucket.raw_sum += float(raw.sum())
            bucket.shaped_sum += float(shaped.sum())
            bucket.length_sum += float(lengths.sum())
            bucket.references += len(references)
            bucket.reference_sum += float(references.sum())
            if method == SATURATING_METHOD:
                bucket.par += n
                bucket.saturated += saturated
            window.total_pairs += n
            window.total_references += len(references)
            window.last_update = now

    def note_active_version(self, version: str) -> SwapMarker | None:
        """Record a marker when the active model version changes; the new marker or None."""
        with self._lock:
            if version == self._active:
                return None
            marker = SwapMarker(
                time=self._clock(), model_version=version, previous_version=self._active
            )
            self._active = version
            self._markers.append(marker)
            return marker

    def forget_model_version(self, version: str) -> None:
        with self._lock:
            for key in [k for k in self._windows if k[0] == version]:
                del self._windows[key]

    # -- reading --------------------------------------------------------------------------------
    def signals(self) -> list[tuple[str, str, Signals]]:
        """(model version, run, signals) for every window (the Prometheus gauges)."""
        with self._lock:
            copies = [
                (version, run, w.pairs.rows(), w.references.rows()[:, 0])
                for (version, run), w in self._windows.items()
            ]
        return [(v, r, _signals(pairs, refs)) for v, r, pairs, refs in copies]

    def snapshot(
        self, *, model_version: str | None = None, run: str | None = None
    ) -> DashboardData:
        with self._lock:
            keys = [
                WindowKey(v, r, w.pairs.size, w.total_pairs, w.last_update)
                for (v, r), w in self._windows.items()
            ]
            active = self._active
            markers = list(self._markers)
            version = model_version or _default_version(keys, active)
            run = run or _default_run(keys, version)
            window = self._windows.get((version, run)) if version and run else None
            if window is not None:
                pairs = window.pairs.rows()
                refs = window.references.rows()[:, 0]
                buckets = [dataclasses.replace(b) for b in window.buckets]
                totals = (window.total_pairs, window.total_references)
            else:
                pairs, refs, buckets, totals = np.zeros((0, 6)), np.zeros(0), [], (0, 0)
        methods = pairs[:, _METHOD].astype(int)
        by_method = {METHODS[c]: int(n) for c, n in enumerate(np.bincount(methods)) if n}
        latest = pairs[-SCATTER_POINTS:]
        return DashboardData(
            model_version=version,
            run=run,
            active_version=active,
            window_capacity=self.capacity,
            keys=sorted(keys, key=lambda k: (k.model_version, k.run)),
            counts=Counts(
                samples=len(pairs),
                total_pairs=totals[0],
                reference_samples=len(refs),
                total_references=totals[1],
                by_method=by_method,
            ),
            histograms=_histograms(pairs, refs),
            series=self._series(buckets),
            signals=_signals(pairs, refs),
            scatter=Scatter(
                length=[int(x) for x in latest[:, _LENGTH]], reward=latest[:, _RAW].tolist()
            ),
            markers=markers,
            generated_at=self._clock(),
        )

    def _series(self, buckets: list[_Bucket]) -> TimeSeries:
        return TimeSeries(
            bucket_seconds=self.bucket_s,
            time=[b.start for b in buckets],
            pairs=[b.pairs for b in buckets],
            raw_mean=[_ratio(b.raw_sum, b.pairs) for b in buckets],
            reference_mean=[_ratio(b.reference_sum, b.references) for b in buckets],
            shaped_mean=[_ratio(b.shaped_sum, b.pairs) for b in buckets],
            length_mean=[_ratio(b.length_sum, b.pairs) for b in buckets],
            saturation_share=[_ratio(b.saturated, b.par) for b in buckets],
        )


# -- computations -----------------------------------------------------------------------------
def _signals(pairs: np.ndarray, refs: np.ndarray) -> Signals:
    raw = pairs[:, _RAW]
    lengths = pairs[:, _LENGTH]
    par = pairs[pairs[:, _METHOD] == _PAR_CODE, _SHAPED]
    raw_mean = float(raw.mean()) if raw.size else None
    ref_mean = float(refs.mean()) if refs.size else None
    ref_std = float(refs.std()) if refs.size else None
    drift = None
    if raw_mean is not None and ref_mean is not None and ref_std is not None and ref_std > 1e-12:
        drift = (raw_mean - ref_mean) / ref_std
    correlation = None
    if raw.size >= 3 and raw.std() > 1e-12 and lengths.std() > 1e-12:
        correlation = float(np.corrcoef(lengths, raw)[0, 1])
    return Signals(
        samples=int(raw.size),
        par_samples=int(par.size),
        saturation_share=float(np.mean(par > SATURATION_THRESHOLD)) if par.size else None,
        raw_mean=raw_mean,
        reference_mean=ref_mean,
        reference_std=ref_std,
        drift_reference_std=drift,
        length_correlation=correlation,
    )


def _histograms(pairs: np.ndarray, refs: np.ndarray) -> Histograms:
    raw = pairs[:, _RAW]
    reward_edges = _edges(np.concatenate((raw, refs)), REWARD_BINS)
    shaped: dict[str, Histogram] = {}
    methods = pairs[:, _METHOD].astype(int)
    for code in np.unique(methods):
        values = pairs[methods == code, _SHAPED]
        if values.min() >= 0.0 and values.max() <= 1.0:
            edges = np.linspace(0.0, 1.0, SHAPED_UNIT_BINS + 1)
        else:
            edges = _edges(values, REWARD_BINS)
        shaped[METHODS[code]] = _histogram(values, edges)
    lengths = pairs[:, _LENGTH]
    length_top = float(lengths.max()) if lengths.size else 1.0
    return Histograms(
        raw=_histogram(raw, reward_edges),
        reference=_histogram(refs, reward_edges),
        shaped=shaped,
        length=_histogram(lengths, np.linspace(0.0, max(length_top, 1.0), LENGTH_BINS + 1)),
    )


def _edges(values: np.ndarray, bins: int) -> np.ndarray:
    if values.size == 0:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def _histogram(values: np.ndarray, edges: np.ndarray) -> Histogram:
    counts, _ = np.histogram(values, bins=edges)
    return Histogram(edges=edges.tolist(), counts=counts.tolist())


def _ratio(total: float, n: int) -> float | None:
    return total / n if n else None


def _default_version(keys: list[WindowKey], active: str | None) -> str | None:
    if active is not None and any(k.model_version == active for k in keys):
        return active
    latest = max(keys, key=lambda k: k.last_update, default=None)
    return latest.model_version if latest else active


def _default_run(keys: list[WindowKey], version: str | None) -> str | None:
    latest = max(
        (k for k in keys if k.model_version == version), key=lambda k: k.last_update, default=None
    )
    return latest.run if latest else None
