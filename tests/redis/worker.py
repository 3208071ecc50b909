"""A separate OS process hitting the same Redis as the test (a second replica).

    python -m tests.redis.worker URL PREFIX stats|register SEED TAG

Waits for the start signal (key `{PREFIX}:test:go`) so that processes overlap, then prints one
JSON line with its result."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

import redis.asyncio as aioredis

from service.scoring.running_stats import RunningStats
from service.store.redis import RedisStore
from tests.unit.test_memory_store import batches, make_prompt

STATS_BATCHES = 150
PROMPTS = 20
REFS_PER_PROMPT = 50


def register_workload(seed: int) -> list[list]:
    """The same prompts and references for every worker, in a worker-specific order, cut into
    calls of a few prompts each."""
    rng = random.Random(seed)
    calls = []
    for i in range(PROMPTS):
        refs = [f"reference {j} of prompt {i}" for j in range(REFS_PER_PROMPT)]
        rng.shuffle(refs)
        for k in range(0, REFS_PER_PROMPT, 5):
            calls.append(make_prompt(f"prompt {i}", refs[k : k + 5]))
    rng.shuffle(calls)
    return [calls[k : k + 3] for k in range(0, len(calls), 3)]


async def wait_for_go(url: str, prefix: str, tag: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await client.incr(f"{prefix}:test:ready")
        deadline = time.monotonic() + 30
        while not await client.exists(f"{prefix}:test:go"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{tag}: no start signal")
            await asyncio.sleep(0.001)
    finally:
        await client.aclose()


async def main(url: str, prefix: str, mode: str, seed: int, tag: str) -> None:
    store = RedisStore(url, prefix=prefix, timeout_s=5.0)
    try:
        await store.ping()
        await wait_for_go(url, prefix, tag)
        if mode == "stats":
            parts = batches(seed=seed, n=STATS_BATCHES)

            async def task(chunk: list) -> None:
                for part in chunk:
                    await store.update_run_stats(
                        "shared-run", "meanstd", RunningStats.from_values(part)
                    )

            await asyncio.gather(*(task(parts[t::4]) for t in range(4)))
            print(json.dumps({"tag": tag, "updates": len(parts)}))
        elif mode == "register":
            new = 0
            for call in register_workload(seed):
                new += await store.register(call)
            print(json.dumps({"tag": tag, "new": new}))
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        await store.close()


if __name__ == "__main__":
    url, prefix, mode, seed, tag = sys.argv[1:6]
    asyncio.run(main(url, prefix, mode, int(seed), tag))
