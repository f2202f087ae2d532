"""How store records turn into bytes and back, shared by every backend."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from handler.ports import KeyRecord, LedgerItem, Settlement, period_end

KEY_FIELDS = {f.name for f in dataclasses.fields(KeyRecord)}
LEDGER_FIELDS = {f.name for f in dataclasses.fields(LedgerItem)}

# How long line items and settlement markers live before the store's TTL removes them.
LEDGER_TTL_SECONDS = 400 * 86400
SETTLED_TTL_SECONDS = 7 * 86400
# An expired key stays visible this long (so `keys show` can say it expired) before the TTL removes it.
EXPIRED_KEY_GRACE_SECONDS = 86400
# A budget period's counters are kept this long after it ends (a gateway whose clock is behind may still admit into
# it); then it is closed: no budget goes back to it, and a store may drop its counters (the ledger keeps its spend).
PERIOD_GRACE_SECONDS = 3600.0


def period_closed(period: str, now: float) -> bool:
    """Whether `period` ended `PERIOD_GRACE_SECONDS` before `now` (`total` never does)."""
    end = period_end(period)
    return end is not None and end + PERIOD_GRACE_SECONDS <= now


def key_to_json(record: KeyRecord) -> str:
    return orjson.dumps(record).decode()


def key_from_json(raw: bytes | str) -> KeyRecord:
    data = orjson.loads(raw)
    return KeyRecord(**{k: v for k, v in data.items() if k in KEY_FIELDS})


def ledger_to_json(item: LedgerItem) -> str:
    return orjson.dumps(item).decode()


def settlement_line(settlement: Settlement) -> str | None:
    """A settlement's ledger line as stored (None for a bare release): the embedded store serializes it when it
    queues the settlement, so that a batch's transaction, which every request of the process waits behind, runs
    statements only."""
    return None if settlement.item is None else ledger_to_json(settlement.item)


def ledger_from_json(raw: bytes | str) -> LedgerItem:
    data: dict[str, Any] = orjson.loads(raw)
    return LedgerItem(**{k: v for k, v in data.items() if k in LEDGER_FIELDS})


def key_purge_after(record: KeyRecord) -> float | None:
    """When the store may forget the key: a day after it expired, or after it was revoked."""
    ends = [t for t in (record.expires_at, record.revoked_at) if t is not None]
    return min(ends) + EXPIRED_KEY_GRACE_SECONDS if ends else None


def ledger_sort_key(item: LedgerItem) -> str:
    """Sorts line items by time as a string; the request id makes it unique."""
    return f"{item.ts:017.6f}#{item.request_id}"


# The times `ledger_sort_key` sorts as strings: ten digits before the point, from 1970 into 2286. Every line's time
# falls here; a report's bound outside did not sort as the time it is (`until=2400-01-01`, 1e10 seconds, wrote
# `10000000000.000000`, below every line's key: no line at all).
SORTABLE_TIMES = (0.0, 9_999_999_999.999999)


def ledger_sort_bounds(since: float, until: float) -> tuple[str, str] | None:
    """The sort keys a report of `[since, until)` reads between (`BETWEEN`, both ends in), the bounds clamped to
    `SORTABLE_TIMES`; None when no line can fall in the window. A key's time is rounded to the microsecond, so the
    read takes in every key of `until`'s own microsecond (a line in its last half microsecond before `until`
    sorted as `until` and its request id, above a bound of `until` alone: left out of the report that holds it),
    and the caller keeps the lines of `[since, until)` by their times."""
    low, high = max(since, SORTABLE_TIMES[0]), min(until, SORTABLE_TIMES[1])
    if low > high:
        return None
    return f"{low:017.6f}", f"{high:017.6f}\uffff"
