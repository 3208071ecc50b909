"""Which threads run torch, and with how many intra-op threads.

Scoring forwards run on the batcher's model thread only. Other torch work (loading a model,
its warm-up) runs on a thread of its own that ends when the work is done, never on a pooled
thread such as `asyncio.to_thread`'s.

Why: torch's CPU build uses libgomp, which gives every thread that enters a parallel region its
own OpenMP worker pool and keeps it for that thread's life. Once pooled threads outnumber the
cores, libgomp cuts every pool's spin-wait short, so the model thread's workers fall asleep
between ops and each op pays a wake-up. Measured on 2 cores with the demo RM: forwards on the
model thread ran at 0.65x the speed they reach when it is the only pool (bench/README.md). A
thread that ends takes its pool with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


async def run_on_own_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking torch work that is not scoring on a new thread that ends with it, and
    await its result. If the awaiting task is cancelled the thread still finishes (a load
    cannot be interrupted); it is a daemon, so it never holds up exit."""
    result: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        if not result.set_running_or_notify_cancel():
            return
        try:
            result.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting task, which re-raises it
            result.set_exception(exc)

    name = f"torch-{getattr(fn, '__name__', 'work')}"
    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wrap_future(result)


def set_torch_threads(num_threads: int) -> None:
    """Size torch's intra-op thread pool (process-wide in torch's own count). Called once, from
    the model thread, when `torch_threads` is set: torch's default is one thread per core of
    the host, which oversubscribes a container limited to fewer CPUs."""
    import torch

    torch.set_num_threads(num_threads)
