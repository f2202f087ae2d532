"""How long the event loop was held: the longest gap between ticks of a task that asks to run every 10 ms (any
other request of the process, a `/health` or another client's stream, waits as long)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def longest_hold(work: Awaitable[T]) -> tuple[T, float, float]:
    """`work`'s result, the longest time the loop went without running the ticker meanwhile, and `work`'s time."""
    longest = 0.0
    done = False

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            longest = max(longest, now - last - 0.01)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker runs
    started = time.perf_counter()
    result = await work
    took = time.perf_counter() - started
    done = True
    await task
    return result, longest, took
