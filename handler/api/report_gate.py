"""How many usage reports a process makes at once (`ReportGate`).

A report reads and sums every ledger line of its window: hundreds of thousands for a month of a busy gateway, seconds
of work and hundreds of megabytes of parsed lines. It runs off the event loop (the store reads on a worker thread, and
the sums are made on one), so other requests go on meanwhile; what is left to bound is how many run together. They
share one interpreter lock, so five reports at once take as long as five one after the other, each holding its lines
the while, and one key sending many at once would have everyone else's reports wait behind all of them.

So a process makes `REPORTS_AT_ONCE` at a time (two: a small report need not wait for a long one to end), the
others waiting their turn in arrival order (their lines are not read yet: a waiting report holds no memory), and a
key family (a key and its children, counted under their root key) has at most `REPORTS_PER_FAMILY` made or waiting at
once: one more is a 429 `rate_limit_exceeded` with a `retry-after`, and the client tries again once one of its own is
done. The family's admin keys (an admin key and its dashboard sessions) count apart from the client keys it minted
under it: counted with them, a client key holding two reports of its own had the operator's dashboard refused. A
dashboard asks for one report per load (its views in one, `view=`), so it never meets that bound alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from handler.errors import RateLimitError
from handler.ports import KeyRecord

REPORTS_AT_ONCE = 2
REPORTS_PER_FAMILY = 2
RETRY_AFTER_SECONDS = 2


class LoopSemaphore:
    """A semaphore of `at_once` places, made on the event loop that first asks and again on another (an app may
    outlive its loop: one per test). The reports' turns (`ReportGate`) and the key spends' (`KeySpends`)."""

    __slots__ = ("at_once", "_made")

    def __init__(self, at_once: int) -> None:
        self.at_once = at_once
        self._made: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._made is None or self._made[0] is not loop:
            self._made = (loop, asyncio.Semaphore(self.at_once))
        return self._made[1]


class ReportGate:
    """See the module docstring; one per app."""

    def __init__(self, at_once: int = REPORTS_AT_ONCE, per_family: int = REPORTS_PER_FAMILY) -> None:
        self.turns = LoopSemaphore(at_once)
        self.per_family = per_family
        self._held: dict[str, int] = {}  # root key id (`#admin`: its admin keys') -> its reports made or waiting

    @asynccontextmanager
    async def turn(self, caller: KeyRecord) -> AsyncIterator[None]:
        """Wait for this report's turn; a 429 if `caller`'s family has `per_family` reports in hand already."""
        family = caller.ancestors[0] if caller.ancestors else caller.id
        if caller.admin:
            family += "#admin"  # (its dashboard sessions', apart from the client keys under it)
        held = self._held.get(family, 0)
        if held >= self.per_family:
            raise RateLimitError(
                f"this key's family has {held} usage reports in progress already (at most {self.per_family} at "
                f"once); retry once one of them is done",
                headers={"retry-after": str(RETRY_AFTER_SECONDS)},
            )
        self._held[family] = held + 1
        try:
            async with self.turns.get():
                yield
        finally:
            left = self._held[family] - 1
            if left:
                self._held[family] = left
            else:
                del self._held[family]
