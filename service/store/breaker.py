"""A circuit breaker for calls to a shared dependency (Redis).

    closed --N consecutive failures--> open --cool-down--> half-open --trial ok--> closed
                                         ^                      |
                                         +----trial failed------+

While open, calls fail at once instead of each waiting out a timeout: a request that needs the
store gets its 503 in microseconds, and a struggling Redis is not hammered. After the
cool-down one trial call goes through (the others still fail at once); its outcome closes or
re-opens the circuit. Recovery needs no restart.

One event loop uses it, so plain attributes suffice (no awaits inside). Time is monotonic.
The libraries that fit were not used: pybreaker's async support is Tornado's, aiobreaker and
purgatory let every concurrent call through while half-open (a paused Redis would then cost
each of them a full timeout), and the whole of what is needed is the class below.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """Raised by `acquire` while the circuit is open; `retry_after` is the cool-down left."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open for another {retry_after:.1f}s")
        self.retry_after = retry_after


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._opened_at = 0.0
        self._trial_running = False
        self.consecutive_failures = 0
        self.failures = 0  # totals since start, for metrics
        self.rejected = 0
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        """The state a call made now would meet (an open circuit past its cool-down reads
        as half-open)."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return self._state

    def acquire(self) -> None:
        """Before a call: returns if it may go ahead, else raises `CircuitOpen`. Every call
        that goes ahead must end in exactly one of `success`, `failure` or `abandon`."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._trial_running:
            self._state = "half_open"
            self._trial_running = True
            return
        self.rejected += 1
        left = self.cooldown_s - (self._clock() - self._opened_at)
        raise CircuitOpen(max(left, 0.0))

    def success(self) -> None:
        self._state = "closed"
        self._trial_running = False
        self.consecutive_failures = 0

    def failure(self) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        if self._state == "half_open" or self.consecutive_failures >= self.failure_threshold:
            if self._state != "open":
                self.opened += 1
            self._state = "open"
            self._opened_at = self._clock()
        self._trial_running = False

    def abandon(self) -> None:
        """The call ended without a verdict (cancelled): a trial slot is freed for the next."""
        self._trial_running = False
