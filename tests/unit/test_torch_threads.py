"""Torch work off the model thread runs on a thread that ends, so OpenMP keeps no worker pool
for it (service/models/torch_threads.py explains the slowdown a kept pool causes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# In a fresh interpreter: pools made by earlier tests would blur the thread counts.
SCRIPT = textwrap.dedent(
    """
    import asyncio, os, threading, time
    import torch
    from service.models.torch_threads import run_on_own_thread

    torch.set_num_threads(2)

    def parallel_work() -> float:
        x = torch.randn(512, 512)
        return float((x @ x + x).sum())  # big enough for OpenMP to start workers

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    def settle(expected: int) -> int:
        deadline = time.monotonic() + 10
        while os_threads() != expected and time.monotonic() < deadline:
            time.sleep(0.01)
        return os_threads()

    async def main() -> None:
        base = os_threads()
        value = await run_on_own_thread(parallel_work)
        assert isinstance(value, float)
        own = settle(base)
        await asyncio.to_thread(parallel_work)
        pooled = os_threads()
        print(base, own, pooled)

    asyncio.run(main())
    """
)


def test_own_thread_leaves_no_openmp_pool_behind_where_a_pooled_thread_does() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    base, own, pooled = map(int, out.stdout.split())
    assert own == base, "the loading thread or its OpenMP workers outlived the work"
    # The premise, on this machine: a pooled thread that ran torch keeps itself and at least
    # one OpenMP worker alive.
    assert pooled >= base + 2


async def test_errors_reach_the_awaiting_task() -> None:
    from service.models.torch_threads import run_on_own_thread

    def broken() -> None:
        raise OSError("corrupt weights")

    with pytest.raises(OSError, match="corrupt weights"):
        await run_on_own_thread(broken)
