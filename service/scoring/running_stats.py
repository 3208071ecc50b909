"""Running reward statistics of a run, for the stateful shapings (meanstd, clip, minmax).

Batches merge exactly with Chan et al.'s parallel formula on (count, mean, M2), so merging
per-batch summaries in any grouping gives the same statistics as one pass over all values.
Variance is the population variance M2 / count."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

STD_FLOOR_VAR = 1e-8  # sigma = sqrt(max(var, 1e-8)): a constant reward never divides by zero


@dataclass(frozen=True)
class RunningStats:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def from_values(cls, values: np.ndarray) -> RunningStats:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return cls()
        mean = float(values.mean())
        return cls(
            count=int(values.size),
            mean=mean,
            m2=float(((values - mean) ** 2).sum()),
            min=float(values.min()),
            max=float(values.max()),
        )

    def merge(self, other: RunningStats) -> RunningStats:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        return RunningStats(
            count=n,
            mean=self.mean + delta * other.count / n,
            m2=self.m2 + other.m2 + delta * delta * self.count * other.count / n,
            min=min(self.min, other.min),
            max=max(self.max, other.max),
        )

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(max(self.variance, STD_FLOOR_VAR))

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe view (no infinities): min/max are None before any data."""
        out: dict[str, float | int | None] = asdict(self)
        if self.count == 0:
            out["min"] = out["max"] = None
        out["variance"] = self.variance
        out["std"] = self.std
        return out
