"""A stand-in runner for batching and API unit tests (and docs): no torch, deterministic
rewards, and a record of every batch it saw so tests can check how batches were formed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence


def checksum_reward(ids: Sequence[int]) -> float:
    """A deterministic, content-dependent reward in [-5, 5)."""
    acc = 0
    for position, token in enumerate(ids):
        acc = (acc * 31 + token * (position + 7)) % 1_000_003
    return acc / 100_000.3 - 5.0


class FakeRunner:
    device = "cpu"

    def __init__(
        self,
        *,
        seconds_per_token: float = 0.0,
        reward_fn: Callable[[Sequence[int]], float] = checksum_reward,
        block: threading.Event | None = None,
    ) -> None:
        self.seconds_per_token = seconds_per_token
        self.reward_fn = reward_fn
        self.block = block  # when set, forward waits for it (tests that fill the queue)
        self.batches: list[list[list[int]]] = []
        self.closed = False

    def forward(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        if self.block is not None:
            self.block.wait()
        self.batches.append([list(s) for s in sequences])
        if self.seconds_per_token:
            longest = max(len(s) for s in sequences)
            time.sleep(self.seconds_per_token * longest * len(sequences))
        return [self.reward_fn(s) for s in sequences]

    def warmup(self) -> None:
        self.forward([[1, 2, 3]])
        self.batches.clear()

    def close(self) -> None:
        self.closed = True
