"""The store contract (every `ReferenceStore` behaves the same), run here on `MemoryStore`.

`StoreContract` is written once; `tests/redis/test_redis_store.py` runs the same class on a
real Redis. A subclass only provides the `store` fixture.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from service.config import Settings
from service.scoring.running_stats import RunningStats
from service.store import MemoryStore, create_store
from service.store.base import PromptReferences, ReferenceScore, ReferenceStore, RegisteredPrompt
from service.store.keys import canonical_prompt, prompt_key, ref_id


# Floats whose text form is easy to get wrong (14-digit formatting, subnormals, extremes).
def S(reward: float, tokens: int = 7) -> ReferenceScore:
    return ReferenceScore(reward, tokens)


AWKWARD_FLOATS = [
    0.1 + 0.2,
    1e-300,
    -3.5e17,
    5e-324,
    1.7976931348623157e308,
    -0.0,
    1 / 3,
    -2.718281828459045,
    123456789.12345679,
]


def make_prompt(text: str, refs: list[str]) -> RegisteredPrompt:
    pj = canonical_prompt(text, None)
    return RegisteredPrompt(
        prompt_key=prompt_key(pj), prompt_json=pj, references={ref_id(r): r for r in refs}
    )


def batches(seed: int, n: int, size: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(3.0, 2.5, size=int(rng.integers(1, size + 1))) for _ in range(n)]


def assert_stats_close(got: RunningStats, want: RunningStats) -> None:
    assert got.count == want.count
    assert got.min == want.min
    assert got.max == want.max
    assert got.mean == pytest.approx(want.mean, rel=1e-12, abs=1e-12)
    assert got.m2 == pytest.approx(want.m2, rel=1e-10, abs=1e-9)


class StoreContract:
    """Behaviour every ReferenceStore must have. Subclasses provide a fresh, empty `store`."""

    # --- lookup --------------------------------------------------------------------------
    async def test_unknown_prompts_are_empty_for_every_key(self, store: ReferenceStore) -> None:
        got = await store.lookup("v1", ["a" * 32, "b" * 32])
        assert got == {"a" * 32: PromptReferences(), "b" * 32: PromptReferences()}
        assert got["a" * 32].registered == ()
        assert dict(got["a" * 32].scores) == {}
        assert await store.lookup("v1", []) == {}
        assert await store.reference_texts({"a" * 32: ["x" * 32]}) == {"a" * 32: {}}

    async def test_register_save_and_lookup(self, store: ReferenceStore) -> None:
        p = make_prompt("What is 2+2?", ["4", "four", "2+2=4"])
        q = make_prompt("Name a colour.", ["red"])
        assert await store.register([p, q]) == 4
        ids = list(p.references)

        got = await store.lookup("v1", [p.prompt_key, q.prompt_key])
        assert got[p.prompt_key].registered == tuple(ids)
        assert dict(got[p.prompt_key].scores) == {}

        await store.save_scores("v1", {p.prompt_key: {ids[0]: S(1.5), ids[2]: S(-0.25)}})
        got = await store.lookup("v1", [p.prompt_key, q.prompt_key, "f" * 32])
        assert got[p.prompt_key].registered == tuple(ids)
        assert dict(got[p.prompt_key].scores) == {ids[0]: S(1.5), ids[2]: S(-0.25)}
        assert got[q.prompt_key].registered == (ref_id("red"),)
        assert dict(got[q.prompt_key].scores) == {}
        assert got["f" * 32] == PromptReferences()

        # a later score for the same (version, prompt, ref) replaces the earlier one
        await store.save_scores("v1", {p.prompt_key: {ids[0]: S(2.0), ids[1]: S(0.5)}})
        got = await store.lookup("v1", [p.prompt_key])
        assert dict(got[p.prompt_key].scores) == {ids[0]: S(2.0), ids[1]: S(0.5), ids[2]: S(-0.25)}

    async def test_scores_are_per_model_version(self, store: ReferenceStore) -> None:
        p = make_prompt("hello", ["hi", "hey"])
        await store.register([p])
        a, b = list(p.references)
        await store.save_scores("model-A", {p.prompt_key: {a: S(1.0), b: S(2.0)}})

        under_b = (await store.lookup("model-B", [p.prompt_key]))[p.prompt_key]
        assert under_b.registered == (a, b)  # texts survive a model swap
        assert dict(under_b.scores) == {}

        await store.save_scores("model-B", {p.prompt_key: {a: S(-1.0)}})
        assert dict((await store.lookup("model-A", [p.prompt_key]))[p.prompt_key].scores) == {
            a: S(1.0),
            b: S(2.0),
        }
        assert dict((await store.lookup("model-B", [p.prompt_key]))[p.prompt_key].scores) == {
            a: S(-1.0)
        }

    async def test_save_scores_for_unregistered_prompt_is_cached(
        self, store: ReferenceStore
    ) -> None:
        # inline references are scored and cached without being registered
        await store.save_scores("v1", {"c" * 32: {"d" * 32: S(0.75)}, "e" * 32: {}})
        got = await store.lookup("v1", ["c" * 32, "e" * 32])
        assert got["c" * 32].registered == ()
        assert dict(got["c" * 32].scores) == {"d" * 32: S(0.75)}
        assert got["e" * 32] == PromptReferences()

    async def test_exact_float_round_trip(self, store: ReferenceStore) -> None:
        scores = {f"{i:032x}": S(v, i) for i, v in enumerate(AWKWARD_FLOATS)}
        await store.save_scores("v1", {"a" * 32: scores})
        got = dict((await store.lookup("v1", ["a" * 32]))["a" * 32].scores)
        assert got == scores
        for rid, v in scores.items():
            assert repr(got[rid].reward) == repr(v.reward)  # -0.0 stays -0.0
            assert isinstance(got[rid].reward, float)

    # --- registration --------------------------------------------------------------------
    async def test_registration_order_kept_and_duplicates_ignored(
        self, store: ReferenceStore
    ) -> None:
        first = make_prompt("p", ["r1", "r2"])
        assert await store.register([first]) == 2
        again = make_prompt("p", ["r2", "r3", "r1", "r4"])
        assert await store.register([again]) == 2
        assert await store.register([again]) == 0
        # the same prompt twice in one call counts each new text once
        twice = make_prompt("p", ["r5"])
        assert await store.register([twice, twice]) == 1
        got = (await store.lookup("v", [first.prompt_key]))[first.prompt_key]
        assert got.registered == tuple(ref_id(r) for r in ["r1", "r2", "r3", "r4", "r5"])
        assert await store.register([]) == 0

    async def test_plain_and_chat_prompt_share_references(self, store: ReferenceStore) -> None:
        plain = canonical_prompt("hi", None)
        chat = canonical_prompt(None, [{"role": "user", "content": "hi"}])
        assert prompt_key(plain) == prompt_key(chat)
        await store.register([RegisteredPrompt(prompt_key(plain), plain, {ref_id("a"): "a"})])
        await store.register([RegisteredPrompt(prompt_key(chat), chat, {ref_id("b"): "b"})])
        got = await store.lookup("v", [prompt_key(chat)])
        assert got[prompt_key(chat)].registered == (ref_id("a"), ref_id("b"))

    async def test_reference_texts(self, store: ReferenceStore) -> None:
        texts = ["first answer", "second answer", "unicode: é ✓ 漢字 \U0001f600", "x" * 5000]
        p = make_prompt("question", texts)
        await store.register([p])
        ids = list(p.references)
        got = await store.reference_texts({p.prompt_key: [ids[2], ids[0], ids[3], "0" * 32]})
        assert got == {p.prompt_key: {ids[2]: texts[2], ids[0]: texts[0], ids[3]: texts[3]}}
        assert await store.reference_texts({p.prompt_key: []}) == {p.prompt_key: {}}
        assert await store.reference_texts({}) == {}

    async def test_prompt_keys_and_prompt_json(self, store: ReferenceStore) -> None:
        assert await store.all_prompt_keys() == []  # type: ignore[attr-defined]
        p = make_prompt("one", ["a"])
        q = make_prompt("two", [])  # a prompt with no references yet is still kept
        await store.register([p, q, p])
        keys = await store.all_prompt_keys()  # type: ignore[attr-defined]
        assert sorted(keys) == sorted([p.prompt_key, q.prompt_key])
        iterated = [pk async for pk in store.iter_prompt_keys()]  # type: ignore[attr-defined]
        assert sorted(iterated) == sorted(keys)
        assert await store.prompt_json(p.prompt_key) == p.prompt_json  # type: ignore[attr-defined]
        assert await store.prompt_json("0" * 32) is None  # type: ignore[attr-defined]

    async def test_many_prompt_keys(self, store: ReferenceStore) -> None:
        prompts = [make_prompt(f"prompt {i}", [f"ref {i}"]) for i in range(2500)]
        assert await store.register(prompts) == 2500
        keys = [pk async for pk in store.iter_prompt_keys()]  # type: ignore[attr-defined]
        assert len(keys) == 2500
        assert set(keys) == {p.prompt_key for p in prompts}
        got = await store.lookup("v", [p.prompt_key for p in prompts])
        assert all(got[p.prompt_key].registered == tuple(p.references) for p in prompts)

    # --- run statistics ------------------------------------------------------------------
    async def test_run_stats_merge_equals_one_pass(self, store: ReferenceStore) -> None:
        parts = batches(seed=1, n=20)
        running = RunningStats()
        for part in parts:
            batch = RunningStats.from_values(part)
            got = await store.update_run_stats("run-1", "meanstd", batch)
            want = running.merge(batch)
            # same formula, same order, same doubles: bit-identical to the local merge
            assert got == want
            running = want
        assert_stats_close(running, RunningStats.from_values(np.concatenate(parts)))
        assert (await store.get_run_stats("run-1")) == {"meanstd": running}

    async def test_run_stats_exact_for_awkward_values(self, store: ReferenceStore) -> None:
        a = RunningStats.from_values(np.array([0.1, 0.2, 1e-300]))
        b = RunningStats.from_values(np.array([-3.5e17, 1 / 3]))
        assert await store.update_run_stats("r", "clip", a) == a
        assert await store.update_run_stats("r", "clip", b) == a.merge(b)
        assert (await store.get_run_stats("r"))["clip"] == a.merge(b)

    async def test_run_stats_methods_and_runs_are_separate(self, store: ReferenceStore) -> None:
        one = RunningStats.from_values(np.array([1.0, 2.0]))
        two = RunningStats.from_values(np.array([10.0]))
        await store.update_run_stats("run-a", "meanstd", one)
        await store.update_run_stats("run-a", "clip", two)
        await store.update_run_stats("run-b", "minmax", two)
        assert await store.get_run_stats("run-a") == {"meanstd": one, "clip": two}
        assert await store.get_run_stats("run-b") == {"minmax": two}
        assert await store.get_run_stats("nope") == {}

    async def test_empty_batch_changes_nothing(self, store: ReferenceStore) -> None:
        assert await store.update_run_stats("r", "minmax", RunningStats()) == RunningStats()
        assert await store.get_run_stats("r") == {}
        assert await store.reset_run_stats("r") is False
        one = RunningStats.from_values(np.array([4.0]))
        await store.update_run_stats("r", "minmax", one)
        assert await store.update_run_stats("r", "minmax", RunningStats()) == one

    async def test_reset_run_stats(self, store: ReferenceStore) -> None:
        assert await store.reset_run_stats("r") is False
        await store.update_run_stats("r", "meanstd", RunningStats.from_values(np.array([1.0])))
        await store.update_run_stats("r", "clip", RunningStats.from_values(np.array([1.0])))
        assert await store.reset_run_stats("r") is True
        assert await store.get_run_stats("r") == {}
        assert await store.reset_run_stats("r") is False
        got = await store.update_run_stats(
            "r", "meanstd", RunningStats.from_values(np.array([5.0, 7.0]))
        )
        assert got == RunningStats.from_values(np.array([5.0, 7.0]))  # starts over

    async def test_concurrent_run_stats_updates_lose_nothing(self, store: ReferenceStore) -> None:
        per_task = [batches(seed=100 + t, n=25) for t in range(8)]

        async def worker(parts: list[np.ndarray]) -> None:
            for part in parts:
                await store.update_run_stats("busy", "meanstd", RunningStats.from_values(part))
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(parts) for parts in per_task))
        everything = np.concatenate([p for parts in per_task for p in parts])
        got = (await store.get_run_stats("busy"))["meanstd"]
        assert_stats_close(got, RunningStats.from_values(everything))
        assert math.isfinite(got.std)

    async def test_ping(self, store: ReferenceStore) -> None:
        await store.ping()


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self):  # type: ignore[no-untyped-def]
        s = MemoryStore()
        yield s
        await s.close()

    async def test_results_are_copies(self, store: MemoryStore) -> None:
        p = make_prompt("p", ["a"])
        await store.register([p])
        await store.save_scores("v", {p.prompt_key: {ref_id("a"): S(1.0)}})
        got = await store.lookup("v", [p.prompt_key])
        got[p.prompt_key].scores[ref_id("a")] = 99.0  # type: ignore[index]
        again = await store.lookup("v", [p.prompt_key])
        assert dict(again[p.prompt_key].scores) == {ref_id("a"): S(1.0)}


def test_create_store_without_redis_is_memory() -> None:
    assert isinstance(create_store(Settings(redis_url=None)), MemoryStore)
