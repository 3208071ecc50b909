"""Redis faults under load, against a real `redis-server` this test starts: killed, stopped
(SIGSTOP: connections accepted, nothing answered; commands buffered meanwhile run when it
resumes), paused by the server itself (CLIENT PAUSE) and slowed (busy scripts hogging its one
thread).

The service is in-process on the fake runner (deterministic rewards, so every reward is
checked exactly), with `redis_url` pointing at that server. Load runs in phases with the fault
held steady, so each kind of request has one right outcome per phase:

| kind              | Redis up        | Redis down                                              |
|-------------------|-----------------|---------------------------------------------------------|
| vanilla           | 200, exact      | 200, exact (no store needed)                            |
| inline references | 200, exact      | 200, exact (scored here; caching them is best effort)   |
| registered, seen  | 200, exact      | 200, exact (from the in-process copy)                   |
| registered, unseen| 200, exact      | 503 store_unavailable (registered on another replica,   |
|                   |                 | never served here: not in the in-process copy)          |
| stateful (meanstd)| 200, exact      | 503 store_unavailable (run statistics live in Redis)    |
| registration      | 200             | 503 store_unavailable                                   |
| /readyz           | 200             | 200 (readiness does not depend on Redis)                |

Every response comes within the budget; afterwards the service recovers without a restart.
Stateful rewards are checked against statistics the test keeps itself from the batches that
got a 200, so a merge applied late (after its request was answered 503) would show.

Timing is chosen so that a slow CI machine cannot change the right answer: the in-process
service shares one GIL with seven load threads, so its event loop may run hundreds of ms late.
Hence: the default store timeout (1 s) against a 100 ms slowdown (a wide margin for a late loop); load
threads that are all running before a phase's clock starts; and faults that end by themselves
(CLIENT PAUSE, a stalling script) held for the phase plus the whole budget, so that every
request sent during the phase is answered while the fault still holds.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.models.encoding import PairEncoder
from service.models.fake import checksum_reward
from tests.conftest import fake_model
from tests.redis.server import RedisServer

pytestmark = pytest.mark.redis

TIMEOUT_S = 1.0
BUDGET_S = 8 * TIMEOUT_S  # a few store calls per request, each at most ~2 x TIMEOUT_S
PHASE_S = 1.2
FAULT_HELD_S = PHASE_S + BUDGET_S  # for faults that end by themselves, see the docstring
SETTINGS = {
    "redis_prefix": "faults",
    "redis_timeout_s": TIMEOUT_S,
    "redis_breaker_failures": 3,
    "redis_breaker_cooldown_s": 0.5,
    "request_timeout_s": 10.0,
    "reconcile_interval_s": 0.5,
}
SEEN = ("seen prompt", ["seen ref one", "seen ref two", "seen ref three"])
# Registered on replica B. A serves the first while Redis is up (so its copy learns it) and
# asks for the second only while Redis is down: a prompt it has never seen.
OTHER = ("other prompt", ["other ref one", "other ref two"])
UNSEEN = ("unseen prompt", ["unseen ref one", "unseen ref two"])
INLINE_REFS = ["inline ref one", "inline ref two"]
RUN = "fault-run"


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class Expected:
    """What the fake runner gives, computed here independently of the service."""

    def __init__(self, tokenizer: Any) -> None:
        self.encoder = PairEncoder(tokenizer, max_tokens=512)

    def raw(self, prompt: str, response: str) -> float:
        return checksum_reward(self.encoder.encode(prompt=prompt, response=response).input_ids)

    def par(self, prompt: str, response: str, references: list[str]) -> float:
        r = self.raw(prompt, response)
        refs = [self.raw(prompt, t) for t in references]
        return sum(sigmoid(r - x) for x in refs) / len(refs)


@dataclass
class Outcome:
    kind: str
    status: int
    seconds: float
    problem: str | None  # why the answer is wrong, or None


class Load:
    """One thread per kind of request, each sequential, for the length of a phase."""

    def __init__(self, client: TestClient, expected: Expected) -> None:
        self.client = client
        self.expected = expected
        self.stateful_rewards: list[float] = []  # every stateful batch that got a 200
        self.counter = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self.counter += 1
            return self.counter

    # -- the kinds ----------------------------------------------------------------------------
    def vanilla(self, up: bool) -> tuple[Any, str | None]:
        n = self.next()
        r = self.post({"items": [{"prompt": "v", "response": f"vanilla {n}"}],
                       "shaping": {"method": "vanilla"}})  # fmt: skip
        return r, self.rewards_match(r, [self.expected.raw("v", f"vanilla {n}")], raw=True)

    def inline(self, up: bool) -> tuple[Any, str | None]:
        n = self.next()
        item = {"prompt": "i", "response": f"inline {n}", "references": INLINE_REFS}
        r = self.post({"items": [item]})
        return r, self.rewards_match(r, [self.expected.par("i", f"inline {n}", INLINE_REFS)])

    def seen(self, up: bool) -> tuple[Any, str | None]:
        return self.registered(SEEN)

    def unseen(self, up: bool) -> tuple[Any, str | None]:
        return self.registered(OTHER) if up else self.registered(UNSEEN, may_fail=True)

    def registered(self, which: tuple[str, list[str]], *, may_fail: bool = False) -> Any:
        prompt, refs = which
        n = self.next()
        r = self.post({"items": [{"prompt": prompt, "response": f"answer {n}"}]})
        if may_fail:
            return r, self.unavailable(r)
        return r, self.rewards_match(r, [self.expected.par(prompt, f"answer {n}", refs)])

    def stateful(self, up: bool) -> tuple[Any, str | None]:
        n = self.next()
        responses = [f"stateful {n}.{j}" for j in range(3)]
        r = self.post({"items": [{"prompt": "s", "responses": responses}],
                       "shaping": {"method": "meanstd"}, "run_id": RUN})  # fmt: skip
        if not up:
            return r, self.unavailable(r)
        if r.status_code != 200:
            return r, f"status {r.status_code}: {r.text[:200]}"
        raw = [self.expected.raw("s", t) for t in responses]
        self.stateful_rewards += raw
        values = np.array(self.stateful_rewards)
        sigma = math.sqrt(max(float(values.var()), 1e-8))
        shaped = [(x - float(values.mean())) / sigma for x in raw]
        return r, self.rewards_match(r, shaped)

    def registration(self, up: bool) -> tuple[Any, str | None]:
        n = self.next()
        r = self.client.post("/v1/references", json={"items": [
            {"prompt": f"new prompt {n}", "references": [f"new ref {n}"]}]})  # fmt: skip
        if not up:
            return r, self.unavailable(r)
        expected = self.expected.raw(f"new prompt {n}", f"new ref {n}")
        got = r.json()["results"][0]["reference_rewards"] if r.status_code == 200 else None
        return r, None if got == [expected] else f"registration: {r.status_code} {r.text[:200]}"

    def readyz(self, up: bool) -> tuple[Any, str | None]:
        r = self.client.get("/readyz")
        return r, None if r.status_code == 200 else f"readyz {r.status_code}"

    # -- checks -------------------------------------------------------------------------------
    def post(self, body: dict[str, Any]) -> Any:
        return self.client.post("/v1/score", json=body)

    @staticmethod
    def rewards_match(r: Any, expected: list[float], *, raw: bool = False) -> str | None:
        if r.status_code != 200:
            return f"status {r.status_code}: {r.text[:200]}"
        got = [x["reward" if raw else "shaped_reward"] for x in r.json()["results"]]
        if not np.allclose(got, expected, rtol=0, atol=1e-9):
            return f"wrong rewards {got} != {expected}"
        return None

    @staticmethod
    def unavailable(r: Any) -> str | None:
        if r.status_code != 503:
            return f"expected 503 while Redis is down, got {r.status_code}: {r.text[:200]}"
        if r.json()["error"]["type"] != "store_unavailable" or "retry-after" not in r.headers:
            return f"not a typed, retryable 503: {r.headers} {r.text[:200]}"
        return None

    KINDS = ("vanilla", "inline", "seen", "unseen", "stateful", "registration", "readyz")

    def phase(
        self, *, up: bool, seconds: float = PHASE_S, until: float | None = None
    ) -> list[Outcome]:
        """Every kind in a loop of its own for `seconds` (ending no later than `until`, a
        monotonic time), counted from when all threads are running: a thread that starts
        late on a busy machine still gets its turn."""
        outcomes: list[Outcome] = []
        stop = 0.0

        def start_clock() -> None:
            nonlocal stop
            stop = time.monotonic() + seconds
            if until is not None:
                stop = min(stop, until)

        ready = threading.Barrier(len(self.KINDS), action=start_clock)

        def loop(kind: str) -> None:
            call: Callable[[bool], tuple[Any, str | None]] = getattr(self, kind)
            ready.wait()
            while True:
                started = time.monotonic()
                r, problem = call(up)
                outcomes.append(Outcome(kind, r.status_code, time.monotonic() - started, problem))
                if time.monotonic() >= stop:
                    break

        threads = [threading.Thread(target=loop, args=(kind,)) for kind in self.KINDS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 30)
        return outcomes


def assert_phase(outcomes: list[Outcome], what: str) -> None:
    kinds = {o.kind for o in outcomes}
    assert kinds == set(Load.KINDS), f"{what}: some kinds never ran: {kinds}"
    wrong = [o for o in outcomes if o.problem is not None]
    assert not wrong, f"{what}: {len(wrong)} wrong answers, first: {wrong[:3]}"
    slowest = max(outcomes, key=lambda o: o.seconds)
    assert slowest.seconds < BUDGET_S, f"{what}: {slowest} over the budget"
    statuses = Counter(f"{o.kind} {o.status}" for o in outcomes)
    print(f"{what}: {len(outcomes)} requests, slowest {slowest.seconds:.3f}s, {dict(statuses)}")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def replicas(server: RedisServer, tokenizer: Any) -> Iterator[tuple[TestClient, TestClient]]:
    """Replica A (under load) and replica B (registers what A has never seen)."""
    settings = Settings(redis_url=server.url, **SETTINGS)
    with (
        TestClient(create_app(settings, models=[fake_model(tokenizer)])) as a,
        TestClient(create_app(settings, models=[fake_model(tokenizer)])) as b,
    ):
        register(a, b)
        yield a, b
        server.resume()  # whatever the test did, let the replicas close cleanly


def register(a: TestClient, b: TestClient) -> None:
    for client, (prompt, refs) in ((a, SEEN), (b, OTHER), (b, UNSEEN)):
        r = client.post("/v1/references", json={"items": [{"prompt": prompt, "references": refs}]})
        assert r.status_code == 200, r.text


def store_state(client: TestClient) -> dict[str, Any]:
    state: dict[str, Any] = client.get("/readyz").json()["store"]
    return state


def wait_recovered(client: TestClient, timeout_s: float = 10.0) -> float:
    """Until the breaker has closed again (a trial call went through); returns the time."""
    started = time.monotonic()
    body = {"items": [{"prompt": "probe", "response": "p"}], "shaping": {"method": "meanstd"},
            "run_id": "probe-run"}  # fmt: skip
    while True:
        r = client.post("/v1/score", json=body)
        if r.status_code == 200 and store_state(client)["breaker"] == "closed":
            return time.monotonic() - started
        assert r.status_code in (200, 503), r.text
        assert time.monotonic() - started < timeout_s, f"not recovered: {store_state(client)}"
        time.sleep(0.05)


def test_redis_killed_under_load_then_restarted(replicas, server, tokenizer) -> None:
    a, b = replicas
    load = Load(a, Expected(tokenizer))
    assert_phase(load.phase(up=True), "before")
    server.kill()
    down = load.phase(up=False)
    assert_phase(down, "killed")
    state = store_state(a)
    assert state["breaker"] in ("open", "half_open") and state["opened"] >= 1
    assert state["copy_served"] >= 1
    # The same state, for Prometheus. Read a moment later, so open may have turned half-open
    # (its cool-down ran out) or back: both are "not closed", and exactly one state is set.
    metrics = a.get("/metrics").text
    assert 'par_store_breaker_state{state="closed"} 0.0' in metrics
    not_closed = [f'par_store_breaker_state{{state="{s}"}} 1.0' in metrics
                  for s in ("open", "half_open")]  # fmt: skip
    assert sum(not_closed) == 1, metrics
    assert "par_store_breaker_opens_total" in metrics
    # Fail fast while open: most refusals took far less than one socket timeout.
    refused = sorted(o.seconds for o in down if o.status == 503)
    assert refused and refused[len(refused) // 2] < TIMEOUT_S

    server.restart()  # the same port; no persistence, so its data is gone
    wait_recovered(a)
    # Redis says nothing is registered now: a typed 422, never a reward from old references.
    r = a.post("/v1/score", json={"items": [{"prompt": SEEN[0], "response": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["type"] == "missing_references"
    register(a, b)
    load.stateful_rewards.clear()  # the run's statistics went with the data
    assert_phase(load.phase(up=True), "after restart")


def test_redis_paused_by_sigstop_under_load(replicas, server, tokenizer) -> None:
    """Connections are accepted and never answered: every call waits out its timeout until
    the breaker opens; then calls fail at once, and one trial per cool-down probes. On resume
    the server runs what it had buffered, late: merges of run statistics that were answered
    503 must not count (the statistics are checked against the 200s)."""
    a, _ = replicas
    load = Load(a, Expected(tokenizer))
    assert_phase(load.phase(up=True), "before")
    server.pause()
    try:
        assert_phase(load.phase(up=False), "paused")
        assert store_state(a)["opened"] >= 1
    finally:
        server.resume()
    wait_recovered(a)
    assert_phase(load.phase(up=True), "after resume")  # statistics carry on, data intact
    assert_stats_consistent(a, load)


def test_redis_client_pause_under_load(replicas, server, tokenizer) -> None:
    """CLIENT PAUSE holds every client's commands; the service times out, answers as if Redis
    were down, and carries on exactly where it was once the pause ends."""
    a, _ = replicas
    load = Load(a, Expected(tokenizer))
    assert_phase(load.phase(up=True), "before")
    # It cannot be lifted early (CLIENT UNPAUSE would be held too), so it is held long enough
    # for every request of the phase to be answered while it holds.
    with redis.Redis.from_url(server.url) as admin:
        paused_at = time.monotonic()
        admin.execute_command("CLIENT", "PAUSE", int(FAULT_HELD_S * 1000), "ALL")
    paused_until = paused_at + FAULT_HELD_S
    assert_phase(load.phase(up=False, until=paused_at + PHASE_S), "client pause")
    time.sleep(max(0.0, paused_until - time.monotonic()))
    wait_recovered(a)
    assert_phase(load.phase(up=True), "after unpause")
    assert_stats_consistent(a, load)


def test_redis_slowed_by_busy_scripts(replicas, server, tokenizer) -> None:
    """Redis runs one command at a time: scripts that spin hold everyone else up. Slower than
    usual but under the timeout, everything is served; past it, the down-behaviour applies
    and recovery follows."""
    a, _ = replicas
    load = Load(a, Expected(tokenizer))
    spin = ("local t = redis.call('TIME'); local s = t[1] * 1e6 + t[2]; "
            "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > tonumber(ARGV[1])")  # fmt: skip

    def hog(spin_s: float, until: float) -> None:
        with redis.Redis.from_url(server.url, socket_timeout=FAULT_HELD_S + 10) as client:
            while True:
                client.eval(spin, 0, int(spin_s * 1e6))
                if time.monotonic() >= until:
                    break
                time.sleep(0.002)

    slow = threading.Thread(target=hog, args=(TIMEOUT_S / 10, time.monotonic() + PHASE_S))
    slow.start()
    outcomes = load.phase(up=True)
    slow.join()
    assert_phase(outcomes, "slowed under the timeout")

    # One script holds Redis for the phase and the whole budget (see the module docstring).
    # Redis answers BUSY to everyone once a script runs past lua-time-limit: raise it, so that
    # the others wait, as they do behind a slow command.
    with redis.Redis.from_url(server.url) as admin:
        admin.config_set("lua-time-limit", int((FAULT_HELD_S + 10) * 1000))
    stalled = threading.Thread(target=hog, args=(FAULT_HELD_S, 0.0))
    stalled.start()
    stalled_at = wait_stalled(server.url)
    try:
        assert_phase(load.phase(up=False, until=stalled_at + PHASE_S), "stalled past the timeout")
    finally:
        stalled.join()
    wait_recovered(a)
    assert_phase(load.phase(up=True), "after")
    assert_stats_consistent(a, load)


def wait_stalled(url: str) -> float:
    """Until Redis stops answering (a script has begun); returns the time it was seen."""
    deadline = time.monotonic() + 10
    with redis.Redis.from_url(url, socket_timeout=0.2) as probe:
        while True:
            try:
                probe.ping()
            except redis.TimeoutError:
                return time.monotonic() - 0.2
            assert time.monotonic() < deadline, "the stalling script never started"
            time.sleep(0.01)


def assert_stats_consistent(client: TestClient, load: Load) -> None:
    """The run's statistics in Redis hold exactly the batches that were answered 200."""
    stats = client.get(f"/v1/runs/{RUN}/stats").json()["stats"]["meanstd"]
    assert stats["count"] == len(load.stateful_rewards)
    assert stats["mean"] == pytest.approx(float(np.mean(load.stateful_rewards)), abs=1e-9)
