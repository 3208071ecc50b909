"""The reference-score store and run statistics: one interface, two implementations
(`memory.py`, the embedded default; `redis.py`, shared by replicas).

Data model (model-independent texts, model-dependent scores):
- a prompt is identified by `prompt_key` (sha256 of its canonical JSON, see `keys.py`);
- its registered references are kept as texts, in registration order, deduplicated by
  `ref_id` (sha256 of the text); they survive any model swap;
- scores are cached per (model_version, prompt_key, ref_id): a score from one model version
  is never visible under another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import StoreUnavailable
from service.scoring.running_stats import RunningStats


@dataclass(frozen=True)
class ReferenceScore:
    """A reference's score under one model version, with its response length in tokens (the
    length penalty applies to references too). `tokens` is -1 when unknown (precomputed)."""

    reward: float
    tokens: int = -1


@dataclass(frozen=True)
class PromptReferences:
    """What the store knows about one prompt under one model version."""

    registered: tuple[str, ...] = ()  # ref ids, registration order
    scores: Mapping[str, ReferenceScore] = field(default_factory=dict)  # by ref id


@dataclass(frozen=True)
class RegisteredPrompt:
    prompt_key: str
    prompt_json: str  # canonical prompt (text or messages), kept for re-scoring after a swap
    references: Mapping[str, str]  # ref id -> text, in the order given


class LookupUnavailable(StoreUnavailable):
    """The store could not answer a lookup. `known` is what its in-process copy holds for
    the keys asked (only prompts with registered references; maybe none): enough for the
    caller to go on where it can be right, e.g. items whose references came inline."""

    def __init__(
        self, message: str, *, known: dict[str, PromptReferences], retry_after: float = 1.0
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.known = known


class ReferenceStore(Protocol):
    async def lookup(
        self, model_version: str, prompt_keys: Sequence[str]
    ) -> dict[str, PromptReferences]:
        """Registered ref ids and cached scores for each prompt key, in ONE round trip.
        Every key asked for is in the result (empty PromptReferences if unknown)."""
        ...

    async def reference_texts(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, str]]:
        """Texts of registered references: prompt_key -> {ref_id: text} for the ids asked."""
        ...

    async def register(self, prompts: Sequence[RegisteredPrompt]) -> int:
        """Keep prompts and their reference texts (idempotent); returns how many reference
        texts were new."""
        ...

    async def save_scores(
        self, model_version: str, scores: Mapping[str, Mapping[str, ReferenceScore]]
    ) -> None:
        """Cache scores: prompt_key -> {ref_id: score} under `model_version`."""
        ...

    async def update_run_stats(self, run_id: str, method: str, batch: RunningStats) -> RunningStats:
        """Atomically merge `batch` into the run's statistics for `method`; returns the
        merged statistics (what the batch is normalised with)."""
        ...

    async def get_run_stats(self, run_id: str) -> dict[str, RunningStats]:
        """method -> statistics; empty if the run is unknown."""
        ...

    async def reset_run_stats(self, run_id: str) -> bool:
        """Forget a run's statistics; True if there was anything."""
        ...

    async def all_prompt_keys(self) -> list[str]:
        """Every prompt with registered references (re-scoring after a model swap)."""
        ...

    async def prompt_json(self, prompt_key: str) -> str | None:
        """The canonical prompt JSON kept at registration."""
        ...

    async def ping(self) -> None: ...

    def state(self) -> dict[str, str | int | float]:
        """Health of the backend for metrics and /readyz: 'backend', and for Redis the
        breaker's 'breaker' state and counts of failures, rejections and copy use."""
        ...

    async def close(self) -> None: ...
