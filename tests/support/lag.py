"""How long the event loop was held: the longest gap between ticks of a task that asks to run every 10 ms (any
other request of the process, a `/health` or another client's stream, waits as long), counted in the loop thread's
CPU time: the work the gateway did in the gap, which the machine's other load does not stretch (counted by the wall
clock, a bounded mint measured 0.58 s against its 0.5 s bound while two cores ran the whole suite and three other
sessions' tests, and 0.02 s alone)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def longest_hold(work: Awaitable[T]) -> tuple[T, float, float]:
    """`work`'s result, the most CPU time the loop's thread spent between two runs of the ticker meanwhile, and
    `work`'s time (by the wall clock)."""
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.thread_time()
        while not done:
            await asyncio.sleep(0.01)
            now = time.thread_time()
            longest = max(longest, now - last)
            last = now

    # A full collection of the test process's own heap, tens of thousands of tests' objects in a whole run, took
    # 0.6 s of the loop's CPU in a bounded mint's window (0.02 s alone): what the process held before `work` is
    # collected first, so the window counts what `work` does.
    gc.collect()
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker runs
    started = time.perf_counter()
    result = await work
    took = time.perf_counter() - started
    done = True
    await task
    return result, longest, took
