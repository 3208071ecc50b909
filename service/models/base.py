"""The runner interface: all torch code lives behind it (see `runner.py`), and `fake.py` is the
stand-in used by batching/API unit tests and docs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Runner(Protocol):
    """Scores already-tokenized sequences. Called only from the model thread, one batch at a
    time; implementations need not be thread-safe."""

    @property
    def device(self) -> str: ...

    def forward(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Raw reward (the head's logit, no activation) for each token-id sequence, in order.
        Sequences have different lengths; the runner pads them itself."""
        ...

    def close(self) -> None:
        """Release weights (and CUDA memory)."""
        ...
