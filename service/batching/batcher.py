"""The micro-batcher: one model thread, fed by every request.

Requests from different clients share forwards. The model thread takes everything queued (after
a short wait for company when the queue holds less than one budget's worth), drops items whose
request was cancelled or whose deadline passed, groups by runner (a batch never mixes model
versions), sorts by length and cuts batches under a padded-token budget and a size cap. Sorting
by length matters: padding is wasted compute, and on CPU small length-homogeneous batches were
2-6x faster than arrival-order batches (DESIGN.md).

Threading invariants: the event loop only enqueues and awaits futures; the model thread only
runs `runner.forward` and hands results back with `call_soon_threadsafe`. Futures are touched
on their own loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from service.errors import DeadlineExceeded, ModelOutputError, NotReady, Overloaded
from service.models.base import Runner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchReport:
    """What one forward did; handed to `on_batch` (metrics) from the model thread."""

    size: int
    padded_tokens: int
    real_tokens: int
    seconds: float
    queue_wait_s: float


@dataclass(eq=False)
class _Request:
    """One `submit` call. Its rewards fill in on its event loop as batches finish, and one
    future answers the whole call (not one per item: a 64-pair request would cost the loop 64
    futures and a gather). Touched on its loop only."""

    future: asyncio.Future[list[float]]
    rewards: list[float]
    remaining: int


@dataclass(eq=False)
class _Item:
    runner: Runner
    input_ids: Sequence[int]
    request: _Request
    index: int  # position in the request's sequences
    deadline: float
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def length(self) -> int:
        return len(self.input_ids)

    def abandoned(self) -> bool:
        """The request was cancelled, timed out or already failed. Reading done() from
        another thread is a benign race: at worst one batch runs an item whose request ended
        a moment ago, and its result is dropped on the loop."""
        return self.request.future.done()


def plan_batches(
    items: Sequence[_Item], *, token_budget: int, max_batch_size: int
) -> list[list[_Item]]:
    """Length-sorted batches with (longest x count) <= token_budget and count <= max size.
    An item longer than the budget runs alone. Items of different runners never share a batch.
    """
    by_runner: dict[int, list[_Item]] = {}
    for item in items:
        by_runner.setdefault(id(item.runner), []).append(item)
    batches: list[list[_Item]] = []
    for group in by_runner.values():
        group.sort(key=lambda it: it.length)
        current: list[_Item] = []
        for item in group:
            # Sorted ascending, so the newcomer is the longest: padded size = its length x n.
            if current and (
                len(current) >= max_batch_size or item.length * (len(current) + 1) > token_budget
            ):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
    return batches


class MicroBatcher:
    """Bounded queue + one model thread; `submit` returns one reward per sequence."""

    def __init__(
        self,
        *,
        token_budget: int,
        max_batch_size: int,
        max_wait_s: float,
        max_queue_items: int,
        thread_init: Callable[[], None] | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self._thread_init = thread_init
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._pending: list[_Item] = []
        self._pending_tokens = 0
        self._in_flight = 0  # items taken by the model thread and not yet answered
        self._stopping = False
        self._calls: list[tuple[Callable[[], None], threading.Event]] = []
        self._thread: threading.Thread | None = None
        self._items_per_s = 0.0  # moving average, for Retry-After

    # -- event-loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-thread", daemon=True)
        self._thread.start()

    @property
    def queued_items(self) -> int:
        return len(self._pending) + self._in_flight

    async def submit(
        self, runner: Runner, sequences: Sequence[Sequence[int]], *, deadline: float
    ) -> list[float]:
        """Queue sequences for `runner`; wait for all rewards. Cancelling the awaiting task (a
        client gone, a deadline) cancels the items, and the model thread skips them."""
        if not sequences:
            return []
        future = asyncio.get_running_loop().create_future()
        request = _Request(future, [0.0] * len(sequences), len(sequences))
        items = [
            _Item(runner, ids, request, index, deadline) for index, ids in enumerate(sequences)
        ]
        with self._cond:
            if self._stopping:
                raise NotReady("the service is shutting down; retry on another replica")
            queued = len(self._pending) + self._in_flight
            if queued + len(items) > self.max_queue_items:
                raise Overloaded(
                    f"the scoring queue is full ({queued} pairs queued, limit "
                    f"{self.max_queue_items}); retry after the Retry-After delay or send "
                    "smaller batches",
                    retry_after=self._retry_after(queued),
                )
            self._pending.extend(items)
            self._pending_tokens += sum(it.length for it in items)
            self._cond.notify()
        try:
            return await request.future
        finally:
            request.future.cancel()  # a no-op when answered
            # Cancelled, timed out or failed on one item: the rest need not run.
            if request.future.cancelled() or request.future.exception() is not None:
                self._drop_pending(items)

    def _drop_pending(self, items: list[_Item]) -> None:
        """Take a gone request's items out of the queue now (a client left, a deadline passed),
        so they stop counting against admission; the model thread would only skip them."""
        gone = set(items)
        with self._cond:
            kept = [it for it in self._pending if it not in gone]
            if len(kept) != len(self._pending):
                self._pending_tokens -= sum(it.length for it in self._pending if it in gone)
                self._pending = kept

    async def run_on_model_thread(self, fn: Callable[[], None], *, timeout_s: float = 60) -> None:
        """Run `fn` on the model thread between batches (e.g. closing a retired runner, which
        must never happen under a forward in flight)."""
        done = threading.Event()
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                fn()
                return
            self._calls.append((fn, done))
            self._cond.notify()
        if not await asyncio.to_thread(done.wait, timeout_s):
            raise TimeoutError("the model thread did not run the call in time")

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then end the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _retry_after(self, queued: int) -> float:
        rate = self._items_per_s
        return min(30.0, max(1.0, queued / rate)) if rate > 0 else 1.0

    # -- model thread -------------------------------------------------------------------------

    def _run(self) -> None:
        if self._thread_init is not None:
            self._thread_init()
        while True:
            self._run_calls()
            taken = self._take()
            if taken is None:
                self._run_calls()
                return
            for batch in plan_batches(
                taken, token_budget=self.token_budget, max_batch_size=self.max_batch_size
            ):
                self._run_batch(batch)
            with self._cond:
                self._in_flight -= len(taken)

    def _run_calls(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for fn, done in calls:
            try:
                fn()
            except Exception:
                logger.exception("model-thread call failed")
            finally:
                done.set()

    def _take(self) -> list[_Item] | None:
        """Block until work arrives; give stragglers up to max_wait_s to join when the queue
        holds less than one budget's worth; take everything queued."""
        with self._cond:
            while not self._pending and not self._stopping and not self._calls:
                self._cond.wait()
            if not self._pending:
                return [] if self._calls and not self._stopping else None
            wait_until = self._pending[0].enqueued + self.max_wait_s
            while (
                not self._stopping
                and self._pending_tokens < self.token_budget
                and (remaining := wait_until - time.monotonic()) > 0
            ):
                self._cond.wait(remaining)
            taken, self._pending, self._pending_tokens = self._pending, [], 0
            self._in_flight += len(taken)
            return taken

    def _run_batch(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live: list[_Item] = []
        for item in batch:
            if item.abandoned():
                continue
            if now > item.deadline:
                _answer(
                    item,
                    exc=DeadlineExceeded(
                        "the request's deadline passed while queued; retry with a smaller batch "
                        "or a longer timeout"
                    ),
                )
                continue
            live.append(item)
        if not live:
            return
        runner = live[0].runner
        started = time.perf_counter()
        try:
            rewards = runner.forward([it.input_ids for it in live])
            if len(rewards) != len(live):
                raise RuntimeError(f"runner returned {len(rewards)} rewards for {len(live)}")
        except Exception as exc:  # a broken batch fails its items, never the thread
            logger.exception("forward failed for a batch of %d", len(live))
            error = ModelOutputError(f"the reward model failed on this batch: {type(exc).__name__}")
            _settle_all([(item, None, error) for item in live])
            return
        seconds = time.perf_counter() - started
        self._items_per_s = 0.8 * self._items_per_s + 0.2 * (len(live) / max(seconds, 1e-9))
        non_finite = ModelOutputError(
            "the reward model produced a non-finite reward for this pair; check the model's "
            "dtype and weights"
        )
        _settle_all(
            [
                (item, float(reward), None) if math.isfinite(reward) else (item, None, non_finite)
                for item, reward in zip(live, rewards, strict=True)
            ]
        )
        if self._on_batch is not None:
            longest = max(it.length for it in live)
            self._on_batch(
                BatchReport(
                    size=len(live),
                    padded_tokens=longest * len(live),
                    real_tokens=sum(it.length for it in live),
                    seconds=seconds,
                    queue_wait_s=started - min(it.enqueued for it in live),
                )
            )


def _answer(item: _Item, *, value: float | None = None, exc: BaseException | None = None) -> None:
    _settle_all([(item, value, exc)])


def _settle_all(outcomes: list[tuple[_Item, float | None, BaseException | None]]) -> None:
    """Hand results to their event loops: one wake-up per loop, not one per item."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Item, float | None, BaseException | None]]]
    by_loop = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].request.future.get_loop(), []).append(outcome)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_on_loop, group)


def _settle_on_loop(group: list[tuple[_Item, float | None, BaseException | None]]) -> None:
    for item, value, exc in group:
        request = item.request
        if request.future.done():  # cancelled meanwhile, or failed on another item
            continue
        if exc is not None:
            request.future.set_exception(exc)
            continue
        request.rewards[item.index] = value  # type: ignore[assignment]
        request.remaining -= 1
        if request.remaining == 0:
            request.future.set_result(request.rewards)
