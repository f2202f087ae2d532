"""A process that holds a slice of a key's budget in the embedded store, for a test to kill: `python -m
tests.support.holder FILE KEY PERIOD` admits three requests of $0.10 from slices, settles two of them at $0.05, says
`holding` on stdout and waits (the third request still in flight) until it is killed."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

from adapters.store.sqlite import SQLiteStore
from handler.ports import Admission, BudgetCharge, Settlement


async def hold(path: str, key_id: str, period: str) -> None:
    store = SQLiteStore(path)
    admissions = [
        Admission(uuid.uuid4().hex, key_id, [BudgetCharge(key_id, period, 1.0, 0.1)], [], time.time() + 60)
        for _ in range(3)
    ]
    for admission in admissions:
        await store.admit(admission)
    for admission in admissions[:2]:
        spent = [BudgetCharge(key_id, period, 1.0, 0.05)]
        await store.settle(Settlement(admission.reservation_id, spent, 0.1, [], None, expires_at=admission.expires_at))
    print("holding", flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(hold(*sys.argv[1:4]))
