"""The embedded, in-process store: the default when no Redis is configured.

Plain dicts on one event loop. No method awaits between reading and writing its state, so every
method is atomic with respect to every other coroutine on the loop (the same guarantee the Redis
store gets from Lua scripts). Results are copies: callers never hold a view of the store's own
dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from service.scoring.running_stats import RunningStats
from service.store.base import PromptReferences, ReferenceScore, RegisteredPrompt


class MemoryStore:
    """`ReferenceStore` in process memory (lost at exit, not shared between replicas)."""

    def __init__(self) -> None:
        self._prompts: dict[str, str] = {}  # prompt_key -> canonical prompt JSON
        # prompt_key -> {ref_id: text}; dict insertion order is the registration order
        self._refs: dict[str, dict[str, str]] = {}
        self._scores: dict[
            tuple[str, str], dict[str, ReferenceScore]
        ] = {}  # (version, pk) -> scores
        self._runs: dict[str, dict[str, RunningStats]] = {}  # run_id -> method -> stats

    # --- references ----------------------------------------------------------------------
    async def lookup(
        self, model_version: str, prompt_keys: Sequence[str]
    ) -> dict[str, PromptReferences]:
        out: dict[str, PromptReferences] = {}
        for pk in prompt_keys:
            refs = self._refs.get(pk)
            scores = self._scores.get((model_version, pk))
            out[pk] = PromptReferences(
                registered=tuple(refs) if refs else (),
                scores=dict(scores) if scores else {},
            )
        return out

    async def reference_texts(
        self, wanted: Mapping[str, Sequence[str]]
    ) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for pk, ids in wanted.items():
            refs = self._refs.get(pk, {})
            out[pk] = {rid: refs[rid] for rid in ids if rid in refs}
        return out

    async def register(self, prompts: Sequence[RegisteredPrompt]) -> int:
        new = 0
        for p in prompts:
            self._prompts.setdefault(p.prompt_key, p.prompt_json)
            refs = self._refs.setdefault(p.prompt_key, {})
            for rid, text in p.references.items():
                if rid not in refs:
                    refs[rid] = text
                    new += 1
        return new

    async def save_scores(
        self, model_version: str, scores: Mapping[str, Mapping[str, ReferenceScore]]
    ) -> None:
        for pk, by_ref in scores.items():
            if by_ref:
                cached = self._scores.setdefault((model_version, pk), {})
                cached.update(by_ref)

    # --- prompts (re-scoring after a model swap) -----------------------------------------
    async def iter_prompt_keys(self) -> AsyncIterator[str]:
        """Every registered prompt key (a snapshot taken at the first step)."""
        for pk in list(self._prompts):
            yield pk

    async def all_prompt_keys(self) -> list[str]:
        return list(self._prompts)

    async def prompt_json(self, prompt_key: str) -> str | None:
        return self._prompts.get(prompt_key)

    # --- run statistics ------------------------------------------------------------------
    async def update_run_stats(self, run_id: str, method: str, batch: RunningStats) -> RunningStats:
        if batch.count == 0:
            return self._runs.get(run_id, {}).get(method, RunningStats())
        run = self._runs.setdefault(run_id, {})
        merged = run.get(method, RunningStats()).merge(batch)
        run[method] = merged
        return merged

    async def get_run_stats(self, run_id: str) -> dict[str, RunningStats]:
        return dict(self._runs.get(run_id, {}))

    async def reset_run_stats(self, run_id: str) -> bool:
        return self._runs.pop(run_id, None) is not None

    # --- lifecycle -----------------------------------------------------------------------
    async def ping(self) -> None:
        return None

    def state(self) -> dict[str, str | int | float]:
        return {"backend": "memory"}

    async def close(self) -> None:
        return None
