"""The micro-batcher, driven directly with the fake runner."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest

from service.batching.batcher import MicroBatcher, plan_batches
from service.errors import DeadlineExceeded, ModelOutputError, Overloaded
from service.models.fake import FakeRunner, checksum_reward


def make_batcher(**overrides: object) -> MicroBatcher:
    options: dict = dict(token_budget=64, max_batch_size=8, max_wait_s=0.005, max_queue_items=100)
    options.update(overrides)
    batcher = MicroBatcher(**options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def seqs(tag: int, lengths: list[int]) -> list[list[int]]:
    """Sequences whose first token tags the request they belong to."""
    return [[tag] + [tag + 1 + i] * (n - 1) for i, n in enumerate(lengths)]


def far() -> float:
    return time.monotonic() + 60


async def wait_until(predicate, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.001)


async def test_rewards_come_back_in_order() -> None:
    runner = FakeRunner()
    batcher = make_batcher()
    try:
        sequences = seqs(100, [5, 1, 9, 3, 7, 2])
        rewards = await batcher.submit(runner, sequences, deadline=far())
        assert rewards == [checksum_reward(s) for s in sequences]
    finally:
        batcher.stop()


async def test_requests_from_different_clients_share_a_forward() -> None:
    gate = threading.Event()
    runner = FakeRunner(block=gate)
    batcher = make_batcher(token_budget=1000, max_batch_size=64)
    try:
        first = asyncio.create_task(batcher.submit(runner, seqs(100, [4]), deadline=far()))
        await wait_until(lambda: batcher.queued_items == 1 and not batcher._pending)
        # The model thread is busy with `first`; two other clients queue up meanwhile.
        second = asyncio.create_task(batcher.submit(runner, seqs(200, [4, 5]), deadline=far()))
        third = asyncio.create_task(batcher.submit(runner, seqs(300, [6]), deadline=far()))
        await wait_until(lambda: len(batcher._pending) == 3)
        gate.set()
        await asyncio.gather(first, second, third)
        tags = [{s[0] for s in batch} for batch in runner.batches]
        assert tags[0] == {100}
        assert {200, 300} <= tags[1], f"second and third request were not batched: {tags}"
    finally:
        gate.set()
        batcher.stop()


async def test_batches_respect_token_budget_size_cap_and_length_order() -> None:
    gate = threading.Event()
    runner = FakeRunner(block=gate)
    batcher = make_batcher(token_budget=64, max_batch_size=5)
    lengths = [31, 3, 17, 8, 8, 1, 64, 2, 12, 5, 9, 30, 4, 4, 70]  # 70 > budget: runs alone
    try:
        blocker = asyncio.create_task(batcher.submit(runner, seqs(1, [2]), deadline=far()))
        await wait_until(lambda: batcher.queued_items == 1 and not batcher._pending)
        task = asyncio.create_task(batcher.submit(runner, seqs(500, lengths), deadline=far()))
        await wait_until(lambda: len(batcher._pending) == len(lengths))
        gate.set()
        await asyncio.gather(blocker, task)
        batches = [[len(s) for s in b] for b in runner.batches[1:]]
        assert sorted(x for b in batches for x in b) == sorted(lengths)
        for b in batches:
            assert len(b) <= 5
            assert len(b) == 1 or max(b) * len(b) <= 64, b
            assert b == sorted(b), "a batch is not length-sorted"
        flat = [x for b in batches for x in b]
        assert flat == sorted(flat), "batches are not formed from the length-sorted queue"
    finally:
        gate.set()
        batcher.stop()


async def test_cancelled_request_items_never_reach_the_model() -> None:
    gate = threading.Event()
    runner = FakeRunner(block=gate)
    batcher = make_batcher()
    try:
        blocker = asyncio.create_task(batcher.submit(runner, seqs(1, [3]), deadline=far()))
        await wait_until(lambda: batcher.queued_items == 1 and not batcher._pending)
        doomed = asyncio.create_task(batcher.submit(runner, seqs(700, [4, 4, 4]), deadline=far()))
        kept = asyncio.create_task(batcher.submit(runner, seqs(800, [4]), deadline=far()))
        await wait_until(lambda: len(batcher._pending) == 4)
        doomed.cancel()  # e.g. the client disconnected
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(blocker, kept)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        seen = {s[0] for batch in runner.batches for s in batch}
        assert 700 not in seen
        assert 800 in seen
    finally:
        gate.set()
        batcher.stop()


async def test_full_queue_refuses_with_overloaded_and_retry_after() -> None:
    gate = threading.Event()
    runner = FakeRunner(block=gate)
    batcher = make_batcher(max_queue_items=4)
    try:
        held = asyncio.create_task(batcher.submit(runner, seqs(1, [3, 3, 3]), deadline=far()))
        await wait_until(lambda: batcher.queued_items == 3)
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(runner, seqs(2, [3, 3]), deadline=far())
        assert refused.value.status == 429
        assert int(refused.value.headers()["Retry-After"]) >= 1
        # One more item still fits: admission counts items, not requests.
        fits = asyncio.create_task(batcher.submit(runner, seqs(3, [3]), deadline=far()))
        gate.set()
        await asyncio.gather(held, fits)
    finally:
        gate.set()
        batcher.stop()


async def test_items_past_their_deadline_are_answered_and_not_run() -> None:
    gate = threading.Event()
    runner = FakeRunner(block=gate)
    batcher = make_batcher()
    try:
        blocker = asyncio.create_task(batcher.submit(runner, seqs(1, [3]), deadline=far()))
        await wait_until(lambda: batcher.queued_items == 1 and not batcher._pending)
        late = asyncio.create_task(
            batcher.submit(runner, seqs(900, [3]), deadline=time.monotonic() + 0.01)
        )
        await wait_until(lambda: len(batcher._pending) == 1)
        await asyncio.sleep(0.05)
        gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late
        assert 900 not in {s[0] for batch in runner.batches for s in batch}
    finally:
        gate.set()
        batcher.stop()


async def test_non_finite_reward_fails_only_its_item() -> None:
    runner = FakeRunner(reward_fn=lambda s: math.nan if s[0] == 13 else 1.0)
    batcher = make_batcher()
    try:
        with pytest.raises(ModelOutputError):
            await batcher.submit(runner, [[13, 1], [14, 1]], deadline=far())
        assert await batcher.submit(runner, [[14, 2]], deadline=far()) == [1.0]
    finally:
        batcher.stop()


async def test_a_failing_forward_fails_its_batch_and_the_thread_lives_on() -> None:
    def explode(s):
        if s[0] == 66:
            raise ValueError("boom")
        return 2.0

    runner = FakeRunner(reward_fn=explode)
    batcher = make_batcher()
    try:
        with pytest.raises(ModelOutputError):
            await batcher.submit(runner, [[66, 1]], deadline=far())
        assert await batcher.submit(runner, [[1, 1]], deadline=far()) == [2.0]
    finally:
        batcher.stop()


def test_plan_never_mixes_runners() -> None:
    from service.batching.batcher import _Item, _Request

    loop = asyncio.new_event_loop()
    try:
        a, b = FakeRunner(), FakeRunner()
        request = _Request(loop.create_future(), [0.0] * 5, 5)
        items = [
            _Item(runner, [1] * n, request, index, far())
            for index, (runner, n) in enumerate([(a, 3), (b, 3), (a, 4), (b, 2), (a, 1)])
        ]
        batches = plan_batches(items, token_budget=1000, max_batch_size=10)
        assert len(batches) == 2
        for batch in batches:
            assert len({id(it.runner) for it in batch}) == 1
    finally:
        loop.close()
