"""Reward shaping: turn raw reward-model scores into the rewards an RL trainer sees.

Pure, vectorised float64 numpy functions. Three families, one entry point each:

- reference methods (``par``, ``centered``, ``lsc``, and centred ``sigmoid``/``tanh``/
  ``fittedpoly``) compare each reward with that prompt's reference rewards:
  :func:`shape_with_references`;
- stateless methods (``vanilla`` and uncentred ``sigmoid``/``tanh``/``fittedpoly``):
  :func:`shape_stateless`;
- stateful methods (``meanstd``, ``clip``, ``minmax``) normalise with a run's running
  statistics: :func:`shape_with_stats`.

:func:`shape` dispatches to the right one. :func:`adjust_rewards` (length penalty and ceiling)
is applied by the caller first, to policy and reference rewards alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from service.scoring.running_stats import RunningStats

# The one list of shaping methods; the HTTP schema uses this Literal directly.
ShapingMethod = Literal[
    "vanilla",
    "par",
    "sigmoid",
    "tanh",
    "fittedpoly",
    "centered",
    "lsc",
    "meanstd",
    "clip",
    "minmax",
]
METHODS: tuple[str, ...] = get_args(ShapingMethod)

_ALWAYS_REFERENCE = frozenset({"par", "centered", "lsc"})
_CENTERABLE = frozenset({"sigmoid", "tanh", "fittedpoly"})
_STATEFUL = frozenset({"meanstd", "clip", "minmax"})

LSC_Z85 = 1.0364333894937898  # standard-normal 85th percentile: ref85 = mean + z * std
MINMAX_FLOOR = 1e-8

# fittedpoly: odd polynomial fitted to sigmoid on [-4, 4] (plus 0.5); sigmoid outside.
_POLY_C5 = 0.000376132953
_POLY_C3 = -0.0132916611
_POLY_C1 = 0.239537005
_POLY_RANGE = 4.0


@dataclass(frozen=True)
class ShapingSpec:
    """How to shape rewards: the method and its parameters (validated on construction).

    ``centered`` only affects ``sigmoid``, ``tanh`` and ``fittedpoly``; other methods ignore it.
    """

    method: str = "par"
    max_references: int = 10
    sigmoid_k: float = 1.0
    centered: bool = False
    length_penalty: float = 0.0
    free_tokens: int = 0
    ceiling: float | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown shaping method {self.method!r}; use one of: {', '.join(METHODS)}"
            )
        if not _is_int(self.max_references) or self.max_references < 1:
            raise ValueError(f"max_references must be an integer >= 1, got {self.max_references!r}")
        if not _is_real(self.sigmoid_k) or not math.isfinite(self.sigmoid_k) or self.sigmoid_k <= 0:
            raise ValueError(f"sigmoid_k must be a finite number > 0, got {self.sigmoid_k!r}")
        if not isinstance(self.centered, bool | np.bool_):
            raise ValueError(f"centered must be true or false, got {self.centered!r}")
        if (
            not _is_real(self.length_penalty)
            or not math.isfinite(self.length_penalty)
            or self.length_penalty < 0
        ):
            raise ValueError(
                f"length_penalty must be a finite number >= 0 (per token), "
                f"got {self.length_penalty!r}"
            )
        if not _is_int(self.free_tokens) or self.free_tokens < 0:
            raise ValueError(f"free_tokens must be an integer >= 0, got {self.free_tokens!r}")
        if self.ceiling is not None and (
            not _is_real(self.ceiling) or not math.isfinite(self.ceiling)
        ):
            raise ValueError(
                f"ceiling must be a finite number or null (no ceiling), got {self.ceiling!r}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def needs_references(spec: ShapingSpec) -> bool:
    """Whether the method compares against reference rewards (an error without them)."""
    return spec.method in _ALWAYS_REFERENCE or (spec.method in _CENTERABLE and spec.centered)


def is_stateful(spec: ShapingSpec) -> bool:
    """Whether the method normalises with a run's running statistics."""
    return spec.method in _STATEFUL


# ---------------------------------------------------------------------------- elementwise maps


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function; exp only ever sees -|x|, so it cannot overflow."""
    x = np.asarray(x, dtype=np.float64)
    z = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(sigmoid(x)) without overflow or log(0) for large |x|."""
    x = np.asarray(x, dtype=np.float64)
    return -np.logaddexp(0.0, -x)


def fitted_poly(x: np.ndarray) -> np.ndarray:
    """The paper's polynomial sigmoid approximation on [-4, 4], sigmoid outside."""
    x = np.asarray(x, dtype=np.float64)
    # Evaluate the polynomial on clipped input so huge |x| never overflows x**5.
    c = np.clip(x, -_POLY_RANGE, _POLY_RANGE)
    c2 = c * c
    poly = c * (_POLY_C1 + c2 * (_POLY_C3 + c2 * _POLY_C5)) + 0.5
    return np.where(np.abs(x) <= _POLY_RANGE, poly, sigmoid(x))


def _scaled_sigmoid(k: float, x: np.ndarray) -> np.ndarray:
    # k*x may exceed the float range; +-inf is the right saturating input for sigmoid.
    with np.errstate(over="ignore"):
        return sigmoid(k * x)


# ---------------------------------------------------------------------------- adjustments


def adjust_rewards(rewards: np.ndarray, lengths: np.ndarray, spec: ShapingSpec) -> np.ndarray:
    """Length penalty then ceiling: ``min(r - penalty * max(0, L - free_tokens), ceiling)``.

    ``lengths`` (response tokens) must broadcast to ``rewards``' shape; apply this to policy
    and reference rewards alike.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if spec.length_penalty > 0:
        lengths = np.asarray(lengths, dtype=np.float64)
        try:
            shape = np.broadcast_shapes(r.shape, lengths.shape)
        except ValueError:
            shape = None
        if shape != r.shape:
            raise ValueError(
                f"lengths shape {lengths.shape} does not match rewards shape {r.shape}"
            )
        over = np.maximum(lengths - spec.free_tokens, 0.0)
        r = r - spec.length_penalty * over
    if spec.ceiling is not None:
        r = np.minimum(r, spec.ceiling)
    return r.copy() if r is rewards else r


# ---------------------------------------------------------------------------- the three families


def shape_with_references(
    spec: ShapingSpec, rewards: np.ndarray, references: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Shape each reward against its row of reference rewards.

    ``rewards`` (N,), ``references`` (N, K) padded, ``mask`` (N, K) bool with True for a real
    reference; every row needs at least one real reference and at most ``max_references``.
    Averages are over each row's real references only.
    """
    if not needs_references(spec):
        raise ValueError(f"method {_describe(spec)} does not use references")
    r = np.asarray(rewards, dtype=np.float64)
    refs = np.asarray(references, dtype=np.float64)
    mask = np.asarray(mask)
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {r.shape}")
    if refs.ndim != 2 or refs.shape[0] != r.shape[0]:
        raise ValueError(f"references must have shape (N={r.shape[0]}, K), got {refs.shape}")
    if mask.shape != refs.shape:
        raise ValueError(f"mask shape {mask.shape} must equal references shape {refs.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean (True = real reference), got dtype {mask.dtype}")
    count = mask.sum(axis=1)
    if r.size and count.min() < 1:
        rows = np.flatnonzero(count < 1)[:5].tolist()
        raise ValueError(
            f"method {_describe(spec)} needs at least one reference per item; rows {rows} have none"
        )
    if r.size and count.max() > spec.max_references:
        raise ValueError(
            f"a row has {int(count.max())} references, more than max_references="
            f"{spec.max_references}; cut each row to at most max_references first"
        )
    if r.size == 0:
        return np.zeros(0, dtype=np.float64)

    # Padding is replaced by the row's own reward so that garbage (NaN, inf) in padded slots
    # can neither warn nor leak; those slots are then dropped from every average.
    refs = np.where(mask, refs, r[:, None])
    n = count.astype(np.float64)

    if spec.method == "lsc":
        ref85 = _masked_mean(refs, mask, n) + LSC_Z85 * _masked_pop_std(refs, mask, n)
        return log_sigmoid(r - ref85)

    diff = r[:, None] - refs
    if spec.method == "par":
        values = sigmoid(diff)
    elif spec.method == "centered":
        values = diff
    elif spec.method == "sigmoid":
        values = _scaled_sigmoid(spec.sigmoid_k, diff)
    elif spec.method == "tanh":
        values = np.tanh(diff)
    elif spec.method == "fittedpoly":
        values = fitted_poly(diff)
    else:  # pragma: no cover - needs_references() admits only the methods above
        raise AssertionError(spec.method)
    return _masked_mean(values, mask, n)


def shape_stateless(spec: ShapingSpec, rewards: np.ndarray) -> np.ndarray:
    """Shape rewards on their own: vanilla r, sigmoid(k*r), tanh(r) or fittedpoly p(r)."""
    if needs_references(spec) or is_stateful(spec):
        raise ValueError(f"method {_describe(spec)} is not stateless")
    r = np.asarray(rewards, dtype=np.float64)
    if spec.method == "vanilla":
        return r.copy() if r is rewards else r
    if spec.method == "sigmoid":
        return _scaled_sigmoid(spec.sigmoid_k, r)
    if spec.method == "tanh":
        return np.tanh(r)
    if spec.method == "fittedpoly":
        return fitted_poly(r)
    raise AssertionError(spec.method)  # pragma: no cover


def shape_with_stats(spec: ShapingSpec, rewards: np.ndarray, stats: RunningStats) -> np.ndarray:
    """Normalise rewards with a run's running statistics, which already include this batch.

    meanstd: (r - mu) / sigma; clip: clamp(r, mu - sigma, mu + sigma);
    minmax: (r - min) / max(max - min, 1e-8), all zeros while ``stats`` is empty.
    """
    if not is_stateful(spec):
        raise ValueError(f"method {_describe(spec)} does not use running statistics")
    r = np.asarray(rewards, dtype=np.float64)
    if spec.method == "minmax":
        if stats.count == 0:
            return np.zeros_like(r)
        return (r - stats.min) / max(stats.max - stats.min, MINMAX_FLOOR)
    mu, sigma = stats.mean, stats.std
    if spec.method == "meanstd":
        return (r - mu) / sigma
    if spec.method == "clip":
        return np.clip(r, mu - sigma, mu + sigma)
    raise AssertionError(spec.method)  # pragma: no cover


def shape(
    spec: ShapingSpec,
    rewards: np.ndarray,
    *,
    references: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    stats: RunningStats | None = None,
) -> np.ndarray:
    """Shape rewards with whichever inputs the method needs.

    ``mask`` may be omitted when ``references`` has no padding (every slot is real).
    """
    if needs_references(spec):
        if references is None:
            raise ValueError(f"method {_describe(spec)} needs reference rewards; none were given")
        if mask is None:
            mask = np.ones(np.shape(references), dtype=bool)
        return shape_with_references(spec, rewards, references, mask)
    if is_stateful(spec):
        if stats is None:
            raise ValueError(f"method {_describe(spec)} needs the run's running statistics")
        return shape_with_stats(spec, rewards, stats)
    return shape_stateless(spec, rewards)


# ---------------------------------------------------------------------------- helpers


def _describe(spec: ShapingSpec) -> str:
    if spec.method in _CENTERABLE:
        return f"{spec.method!r} (centered={spec.centered})"
    return repr(spec.method)


def _masked_mean(values: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    return np.where(mask, values, 0.0).sum(axis=1) / n


def _masked_pop_std(refs: np.ndarray, mask: np.ndarray, n: np.ndarray) -> np.ndarray:
    dev = np.where(mask, refs - _masked_mean(refs, mask, n)[:, None], 0.0)
    # Scale by the largest deviation so squaring cannot overflow for huge rewards.
    scale = np.abs(dev).max(axis=1)
    safe = np.where(scale > 0, scale, 1.0)
    unit = dev / safe[:, None]
    return scale * np.sqrt((unit * unit).sum(axis=1) / n)
