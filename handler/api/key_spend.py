"""What a key without a budget of its own spent this month (`GET /v1/key`, `GET /admin/keys/{id}`: `KeySpends`).

No meter counts such a key's spend, so it is its and its descendants' ledger lines of the current UTC month, summed
(`handler.dashboard.line_items.Spend`): on DynamoDB every line of the family's month read, whose time and read units
grow with the month's traffic. Taking a usage report's turn of the caller's family (`ReportGate`), these reads
would make a third at once a 429 "this key's family has 2 usage reports in progress", though no report is asked
for, an admin script showing three keys would meet the same, and each read would wait behind other tenants' reports.

So a key's figure is read as a figure, not as a report. Reads of one key at once share one sum (the ones after the
first wait for it), and a sum made is the key's figure for `FRESH_SECONDS` in this process: a client polling its
spend from several workers, or a dashboard's script showing keys, reads a key's month once every few seconds, not
once a call. Sums have a gate of their own, apart from the reports': `SUMS_AT_ONCE` at a time per process, the
others waiting their turn in order, each at most `WAIT_SECONDS` (and never past the request's deadline), then a 503
`server_busy` to retry; never a refusal for reports in progress. Figures are kept for at most `KEPT` keys, the
oldest going first. Nothing is written: the request path gains no store write.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from handler.api.report_gate import LoopSemaphore
from handler.dashboard.line_items import Spend, this_month
from handler.errors import OverloadedError
from handler.pipeline.key_admin import with_descendants
from handler.ports import STORE_DEADLINE, KeyRecord, Store, UsageQuery

SUMS_AT_ONCE = 2
FRESH_SECONDS = 5.0
WAIT_SECONDS = 10.0
KEPT = 10_000

Figure = tuple[str, str]  # (key id, period)


class KeySpends:
    """See the module docstring; one per app."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.turns = LoopSemaphore(SUMS_AT_ONCE)
        self.fresh_s = FRESH_SECONDS
        self.wait_s = WAIT_SECONDS
        self.kept = KEPT
        self.sums = 0  # the sums made: each a read of a family's month
        # (key id, period) -> (`time.monotonic()` as its sum began, what it spent); oldest first.
        self._figures: dict[Figure, tuple[float, Decimal]] = {}
        self._summing: dict[Figure, asyncio.Task[Decimal]] = {}

    async def spent(self, lineage: list[KeyRecord], now: float) -> tuple[str, Decimal]:
        """The current UTC month (`month:YYYY-MM`, at `now`) and what the key `lineage[0]` (`lineage`: it and its
        ancestors, nearest first) and its descendants spent in it: its figure, or the sum being made of it, or a sum
        made now."""
        period, since, until = this_month(now)
        figure = (lineage[0].id, period)
        held = self._figures.get(figure)
        if held is not None and time.monotonic() - held[0] < self.fresh_s:
            return period, held[1]
        summing = self._summing.get(figure)
        if summing is None or summing.get_loop() is not asyncio.get_running_loop():
            summing = asyncio.ensure_future(self._sum(figure, lineage, since, until))
            summing.add_done_callback(_retrieved)
            self._summing[figure] = summing
        # (Shielded: a read that ends, its client gone, leaves the sum to the reads waiting for it.)
        return period, await asyncio.shield(summing)

    async def _sum(self, figure: Figure, lineage: list[KeyRecord], since: float, until: float) -> Decimal:
        try:
            turns = await self._turn()
            try:
                began = time.monotonic()
                family = await with_descendants(self.store, lineage[0].id, lineage[-1].home_region)
                spend = Spend()
                await self.store.scan_usage(UsageQuery(family, since, until), spend.add)
            finally:
                turns.release()
            self.sums += 1
            self._keep(figure, began, spend.total)
            return spend.total
        finally:
            if self._summing.get(figure) is asyncio.current_task():
                del self._summing[figure]

    async def _turn(self) -> asyncio.Semaphore:
        """This sum's turn, waited for in order, at most `wait_s` and not past the request's deadline
        (`STORE_DEADLINE`); a 503 `server_busy` once that is over."""
        turns = self.turns.get()
        wait = self.wait_s
        by = STORE_DEADLINE.get()
        if by is not None:
            wait = min(wait, by - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(max(0.0, wait)):
                await turns.acquire()
        except TimeoutError:
            raise OverloadedError(
                f"the gateway is summing other keys' spend ({self.turns.at_once} at once a process) and did not get to "
                f"this key's within {wait:.1f} s; retry",
                code="server_busy",
            ) from None
        return turns

    def _keep(self, figure: Figure, began: float, spent: Decimal) -> None:
        """`spent` as `figure`'s, the oldest figures going first: those past `fresh_s`, and as many as keep
        `kept`."""
        figures = self._figures
        figures.pop(figure, None)
        now = time.monotonic()
        while figures:
            oldest = next(iter(figures))
            if len(figures) < self.kept and now - figures[oldest][0] < self.fresh_s:
                break
            del figures[oldest]
        figures[figure] = (began, spent)


def _retrieved(task: asyncio.Task[Decimal]) -> None:
    """A sum's failure, retrieved: every read waiting for it has it, and when none was left (each ended, its client
    gone) asyncio would log it as never retrieved."""
    if not task.cancelled():
        task.exception()
