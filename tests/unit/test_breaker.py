"""The circuit breaker and the in-process copy of the Redis store, as plain objects (the Redis
side is in tests/redis/test_faults.py and test_store_resilience.py)."""

from __future__ import annotations

import pytest

from service.store.base import PromptReferences, ReferenceScore
from service.store.breaker import CircuitBreaker, CircuitOpen
from service.store.local_copy import MAX_VERSIONS, LocalCopy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, threshold: int = 3, cooldown: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown, clock=clock)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.acquire()
        b.failure()


def test_opens_after_consecutive_failures_only() -> None:
    b = breaker(Clock())
    fail(b, 2)
    b.acquire()
    b.success()  # a success in between resets the count
    fail(b, 2)
    assert b.state == "closed"
    fail(b, 1)
    assert b.state == "open" and b.opened == 1


def test_open_refuses_at_once_with_the_cool_down_left() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 2.0
    with pytest.raises(CircuitOpen) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(3.0)
    assert b.rejected == 1


def test_half_open_lets_one_trial_through_and_its_success_closes() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5.0
    assert b.state == "half_open"
    b.acquire()  # the trial
    with pytest.raises(CircuitOpen):
        b.acquire()  # everyone else still fails fast while it runs
    b.success()
    assert b.state == "closed"
    b.acquire()
    b.success()


def test_a_failed_trial_opens_again_for_a_full_cool_down() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5.0
    b.acquire()
    b.failure()
    assert b.state == "open" and b.opened == 2
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        b.acquire()
    clock.now += 0.1
    b.acquire()


def test_an_abandoned_trial_frees_the_slot() -> None:
    """A trial call that is cancelled (client gone) must not leave the breaker stuck."""
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5.0
    b.acquire()
    b.abandon()
    b.acquire()  # a new trial may go
    b.success()
    assert b.state == "closed"


# --- the in-process copy --------------------------------------------------------------------
S = ReferenceScore


def test_copy_keeps_only_prompts_with_registered_references() -> None:
    copy = LocalCopy(10)
    copy.saw_lookup(
        "v1", {"a": PromptReferences(("r1", "r2"), {"r1": S(0.5, 3)}), "b": PromptReferences()}
    )
    assert copy.lookup("v1", ["a", "b", "c"]) == {
        "a": PromptReferences(("r1", "r2"), {"r1": S(0.5, 3)})
    }
    assert copy.lookup("v2", ["a"])["a"].scores == {}  # scores are per model version


def test_copy_appends_registrations_and_scores() -> None:
    copy = LocalCopy(10)
    copy.saw_registration("a", ["r1", "r2"])
    copy.saw_registration("a", ["r2", "r3"])
    copy.saw_scores("v1", {"a": {"r3": S(1.0)}, "unknown": {"x": S(2.0)}})
    assert copy.lookup("v1", ["a", "unknown"]) == {
        "a": PromptReferences(("r1", "r2", "r3"), {"r3": S(1.0)})
    }


def test_copy_is_bounded_least_recently_used_first() -> None:
    copy = LocalCopy(2)
    copy.saw_registration("a", ["r"])
    copy.saw_registration("b", ["r"])
    copy.lookup("v", ["a"])  # a is used: b is now the oldest
    copy.saw_registration("c", ["r"])
    assert set(copy.lookup("v", ["a", "b", "c"])) == {"a", "c"}
    assert len(copy) == 2


def test_copy_keeps_the_latest_model_versions_only() -> None:
    copy = LocalCopy(10)
    copy.saw_registration("a", ["r"])
    for v in range(MAX_VERSIONS + 2):
        copy.saw_scores(f"v{v}", {"a": {"r": S(float(v))}})
    assert copy.lookup("v0", ["a"])["a"].scores == {}
    assert copy.lookup(f"v{MAX_VERSIONS + 1}", ["a"])["a"].scores == {"r": S(MAX_VERSIONS + 1.0)}


def test_a_zero_size_copy_keeps_nothing() -> None:
    copy = LocalCopy(0)
    copy.saw_registration("a", ["r"])
    assert copy.lookup("v", ["a"]) == {}
