"""The embedded store's cache of counter slices, in front of `MeteredStore`'s admission primitive.

A process admits most requests from slices of the shared counters it holds in memory
(adapters/store/slices.py has the policy and the arithmetic); `SliceCache` is the store's side of it:
`_cached` admits from the slices, a miss is `_write_admission`, one batched transaction that checks
`MeteredStore`'s conditions on the counters less this process's unused slices and tops the slices up; a
settlement of a request admitted from slices moves its spend out of the slice's row with the rest of its
batch's; a sweeper returns idle slices, and `holders` tells other processes on the same file who is active
on a key and whether it holds unused slices of it. Every change to the slices in memory is undone if its
batch's commit fails.

Measured against admitting every request with a transaction of its own (docs/store.md): the slices keep a
commit off most requests' path, with one worker or several on one key. After a refusal recalled a process's
slices (adapters/store/slices.py), where a slice would be one request's worth, a process holding no unused
slice admits the request as it is (`_admit_exactly`), which is what the slices' bookkeeping would otherwise
cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import math
import os
import sqlite3
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from adapters.store.metered import (
    EPSILON,
    AdmissionWrite,
    Applied,
    Counters,
    MeteredStore,
    MeterUpdate,
    Unmet,
    rate_owner,
    usd_sum,
)
from adapters.store.records import settlement_line
from adapters.store.slices import (
    CONTEND_S,
    IDLE_S,
    RENEW_S,
    SWEEP_S,
    BudgetSlice,
    RateSlice,
    Slices,
    slice_size,
)
from handler.ports import (
    STORE_DEADLINE,
    WRITE_AT_ONCE,
    Admission,
    BudgetRefused,
    MeterSnapshot,
    RateRefused,
    Settlement,
    StoreError,
)

# A key's counters for a period move by (committed, spent); and committed down by what goes back. Every USD figure
# the file keeps moves by `usd_sum` (the store's SQL function of it), as what a slice holds does here: moved by float
# arithmetic, committed drifted from spent for good (on a $100 budget, three requests that reserved $0.70 and spent
# $0.10 each and one that reserved $0.10 and spent $0.30 left committed at 0.5999999999999943 beside a spent of
# 0.6000000000000001, nothing in flight).
# (Committed stays as it is, with no call of `usd_sum`, where it moves by nothing: a request that spent what its slice
# held, the usual settlement.)
SPEND = (
    "INSERT INTO meters (key_id, period, committed, spent) VALUES (?, ?, ?, ?) ON CONFLICT (key_id, period) "
    "DO UPDATE SET committed = max(0, CASE excluded.committed WHEN 0 THEN committed "
    "ELSE usd_sum(committed, excluded.committed) END), spent = usd_sum(spent, excluded.spent)"
)
LOWER_COMMITTED = "UPDATE meters SET committed = max(0, usd_sum(committed, -?)) WHERE key_id = ? AND period = ?"
# A settlement's spend leaves the slice row its request was reserved in (`_write_spend`).
MOVE_SPEND = "UPDATE reservations SET amount = usd_sum(amount, -?) WHERE key_id = ? AND id = ? AND period = ?"
# A refusal while another process may hold unused slices of the key waits this long for them, once.
RECALL_WAIT_S = 1.5 * SWEEP_S
HOLDER_DIGITS = "0123456789abcdef"  # (`Slices.holder`, twelve of them; a lock file's name: no pattern at a cold start)
T = TypeVar("T")
logger = logging.getLogger("gateway")


def add_committed(db: sqlite3.Connection, key_id: str, period: str, amount: float) -> float:
    """Raise a budget counter's committed by `amount`; the new committed."""
    (committed,) = db.execute(
        "INSERT INTO meters (key_id, period, committed) VALUES (?, ?, ?) "
        "ON CONFLICT (key_id, period) DO UPDATE SET committed = usd_sum(committed, excluded.committed) "
        "RETURNING committed",
        (key_id, period, amount),
    ).fetchone()
    return float(committed)


def reserve(db: sqlite3.Connection, key_id: str, row: str, period: str, amount: float, expires_at: float) -> None:
    """Add `amount` to the reservation row `row` (a request's, or a slice's), expiring no earlier than `expires_at`."""
    db.execute(
        "INSERT INTO reservations (key_id, id, period, amount, expires_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (key_id, id, period) DO UPDATE SET "
        "amount = usd_sum(amount, excluded.amount), expires_at = max(expires_at, excluded.expires_at)",
        (key_id, row, period, amount, expires_at),
    )


def set_rate(db: sqlite3.Connection, key_id: str, name: str, window: int, count: int) -> None:
    db.execute(
        "INSERT INTO rates (key_id, name, window, count) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key_id, name) DO UPDATE SET window = excluded.window, count = excluded.count",
        (key_id, name, window, count),
    )


class Liveness:
    """Whether the process that holds a budget slice still runs. Before its first slice row is written, a process
    takes an exclusive lock (`flock`) on a file of its own, `<holder>.lock` in the store's holders folder, and keeps
    it while its store is open; the kernel drops it when the process ends, however it ends (SIGKILL included).
    Another process that can take that lock knows the holder has ended, and its slice rows hold budget that nobody
    can spend: a refusal they would cover releases them (`SQLiteStore._expired_reservations`). Without it they held
    the budget until they expired, the last request's reservation TTL and `RENEW_S` after the last grant (17 minutes
    by default), which must stay long: the file cannot tell a request that runs long from one that died with its
    process, and a row released under a live request lets its budget be spent twice. The processes sharing a file
    run on one host (SQLite's write-ahead log needs shared memory), so the lock says what it seems to. A holder
    without a lock file (one that could not make it, a gateway from before these locks) is never taken for ended:
    its rows expire, as before."""

    def __init__(self, folder: str | None) -> None:
        self.folder = folder  # None: an in-memory store, which no other process shares
        self.holder: str | None = None  # the holder whose lock this process holds
        self.fd: int | None = None
        self.tried = False

    def hold(self, holder: str) -> None:
        """Take `holder`'s lock, before its first slice row is written; tried once (a lock file made after some
        rows were written could be taken by another process before this one locks it, and those rows released)."""
        if self.tried or self.folder is None:
            return
        self.tried = True
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(os.path.join(self.folder, f"{holder}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return  # (a folder this process cannot write: its slices expire, as before)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return
        self.fd, self.holder = fd, holder

    def gone(self, holder: str) -> bool:
        """Whether `holder`'s process has ended: its lock file is there and nobody holds it. Its file goes then (its
        rows are being released)."""
        if self.folder is None or holder == self.holder or len(holder) != 12 or holder.strip(HOLDER_DIGITS):
            return False
        path = os.path.join(self.folder, f"{holder}.lock")
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            return False  # no lock file: not known to have ended
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: the holder runs (another store of this process on the file included)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return True
        finally:
            os.close(fd)

    def release(self, returned: bool) -> None:
        """At the store's close: the lock let go, and its file removed where every slice went back (`returned`);
        else the file stays, unlocked, and another process releases what this one still holds at its next refusal."""
        if self.fd is None:
            return
        if returned and self.folder is not None and self.holder is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.folder, f"{self.holder}.lock"))
        os.close(self.fd)
        self.fd = None


class SliceCache(MeteredStore):
    """The slices side of `SQLiteStore` (see the module docstring); the store owns the state declared here."""

    slices: Slices
    _undo: list[Callable[[], None]]  # local changes to undo if the batch's commit fails
    _after: list[Callable[[], None]]  # and to make once it succeeds
    # Spend settled from slices in this batch, per slice row (spent, and what of it went beyond what the
    # slice held): written once, before the commit.
    _spend: dict[tuple[str, str, str], tuple[float, float]]
    _announced: dict[str, tuple[float, int]]  # key id -> (active_at, holds unused slices) last written
    _sweeper: asyncio.Task[None] | None
    _closed: bool
    _recall: set[str]  # admissions refused while another process may hold unused slices of their keys
    _liveness: Liveness  # this process's lock as a holder of slices, and whether another's holder has ended

    # The store's own (adapters/store/sqlite.py): its batching of one event-loop turn into one transaction,
    # and the marker that makes a settlement count once.

    @abstractmethod
    def _batched(
        self, operation: Callable[[sqlite3.Connection], T], *, linger: bool = False, single: bool = False
    ) -> Awaitable[T]: ...

    @abstractmethod
    def _enqueue(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        linger: bool = False,
        single: bool = False,
        now: bool = False,
    ) -> asyncio.Future[T]: ...

    @abstractmethod
    def _write_now(self) -> None: ...

    _unsettled: set[asyncio.Future[Any]]  # settlements queued and not yet committed (the flush takes them out)

    @abstractmethod
    def _mark_settled(self, db: sqlite3.Connection, settlement: Settlement, line: str | None) -> bool: ...

    def _cached(self, admission: Admission) -> MeterSnapshot | None:
        """From the slices held, in memory (see adapters/store/slices.py)."""
        return self.slices.take(admission, time.time())

    async def admit(self, admission: Admission) -> MeterSnapshot:
        """As `MeteredStore.admit`; a refusal while another process may hold unused slices of the key waits
        once for its sweeper to return them, then tries again."""
        try:
            return await super().admit(admission)
        except (BudgetRefused, RateRefused):
            if admission.reservation_id not in self._recall:
                raise
            self._recall.discard(admission.reservation_id)
            await asyncio.sleep(RECALL_WAIT_S)
            return await super().admit(admission)
        finally:
            self._recall.discard(admission.reservation_id)

    async def _write_admission(self, write: AdmissionWrite) -> Applied | Unmet:
        return await self._batched(lambda db: self._grant(db, write))

    def _grant(self, db: sqlite3.Connection, write: AdmissionWrite) -> Applied | Unmet:
        """One transaction: check `write`'s conditions on the counters less the unused slices this process
        holds (they are its own to draw), and, if all hold, top up every slice that cannot cover its charge
        from the counters, then admit from the slices; else change no counter and return the counters as
        they were. A refusal writes nothing but, when due, this process's presence on the key."""
        admission = write.admission
        now = time.time()
        slices = self.slices
        others_hold = False
        for meter in write.meters:
            unused, recalled = db.execute(
                "SELECT max(leasing), max(recall_at) FROM holders WHERE key_id = ? AND holder <> ? AND active_at > ?",
                (meter.key_id, slices.holder, now - CONTEND_S),
            ).fetchone()
            others_hold = others_hold or bool(unused)
            slices.recall(meter.key_id, recalled)
        if all(slices.exact(m.key_id, now) for m in write.meters) and not self._holds_slices(write, now):
            return self._admit_exactly(db, write, others_hold, now)
        budget_plans: list[tuple[BudgetSlice, bool, float, float, float]] = []
        rate_plans: list[tuple[RateSlice, bool, int, int]] = []
        unmet: dict[str, Counters] = {}
        for meter in write.meters:
            held = Counters()
            stored = self._stored(db, meter)
            for charge in meter.budgets:
                slice_ = slices.budgets.get((charge.key_id, charge.period))
                unwritten = slices.unwritten_usd(charge.key_id, charge.period)  # (in `stored` already)
                fresh = slice_ is None or slice_.expires_at <= now  # an expired slice's row may be released already
                if slice_ is None or fresh:
                    slice_ = slices.new_budget_slice()
                committed = stored.committed.get(charge.period, 0.0)
                held.committed[charge.period] = committed - slice_.avail
                room = charge.limit_usd - committed
                need = usd_sum(charge.amount_usd, -slice_.avail)
                since = now - slice_.granted_at
                exact = slices.exact(charge.key_id, now)
                size = slice_size(need, room, slice_.drawn, since, exact) if 0 < need <= room + EPSILON else 0.0
                expires_at = max(slice_.expires_at, admission.expires_at + RENEW_S)
                budget_plans.append((slice_, fresh, size, expires_at, unwritten))
            for step in meter.rates:
                rate = step.charge
                rate_slice = slices.rates.get((meter.key_id, rate.name))
                new_window = rate_slice is None or rate_slice.window != rate.window
                if rate_slice is None or new_window:
                    rate_slice = RateSlice(rate.window)
                row = stored.rates.get(rate.name)
                if row is not None:
                    held.rates[rate.name] = (row[0], row[1] - (rate_slice.avail if row[0] == rate.window else 0))
                count = row[1] if row and row[0] == rate.window else 0
                need = rate.amount - rate_slice.avail
                since = now - rate_slice.granted_at
                wanted = math.floor(
                    slice_size(need, rate.limit - count, rate_slice.drawn, since, slices.exact(meter.key_id, now))
                )
                rate_plans.append((rate_slice, new_window, count, max(need, wanted) if need > 0 else 0))
            if self._check(meter, held) is None:
                unmet[meter.key_id] = held
        if unmet:
            return self._refuse(db, admission, unmet, others_hold, now)
        # Every check passed: write the grants, then change the slices held here.
        budgets = [(m.key_id, charge) for m in write.meters for charge in m.budgets]
        rates = [(m.key_id, step.charge) for m in write.meters for step in m.rates]
        if budgets:
            self._liveness.hold(slices.holder)  # (before its first slice row: see `Liveness`)
        committed_now = []
        for (_, charge), (slice_, _, size, expires_at, _) in zip(budgets, budget_plans, strict=True):
            committed_now.append(add_committed(db, charge.key_id, charge.period, size))
            reserve(db, charge.key_id, slice_.row, charge.period, size, expires_at)
        for (owner, rate), (_, _, count, size) in zip(rates, rate_plans, strict=True):
            if size:
                set_rate(db, owner, rate.name, rate.window, count + size)
        # If the commit fails, the slices go back to what they were (the admission with them).
        for _, charge in budgets:
            self._keep(slices.budgets, (charge.key_id, charge.period))
        for owner, rate in rates:
            self._keep(slices.rates, (owner, rate.name))
        self._undo.append(functools.partial(slices.held.pop, admission.reservation_id, None))  # type: ignore[arg-type]
        for (_, charge), (slice_, fresh, size, expires_at, unwritten), committed in zip(
            budgets, budget_plans, committed_now, strict=True
        ):
            if fresh:
                slices.budgets[(charge.key_id, charge.period)] = slice_
            slice_.avail = usd_sum(slice_.avail, size)
            slice_.expires_at = expires_at
            slice_.committed_seen = committed + unwritten
            slice_.limit = charge.limit_usd
            if size:
                slice_.drawn, slice_.granted_at = 0.0, now
        for (owner, rate), (rate_slice, new_window, count, size) in zip(rates, rate_plans, strict=True):
            if new_window:
                slices.rates[(owner, rate.name)] = rate_slice
            rate_slice.avail += size
            rate_slice.count_seen = count + size
            rate_slice.limit = rate.limit
            if size:
                rate_slice.drawn, rate_slice.granted_at = 0, now
        snapshot = slices.take(admission, now)
        if snapshot is None:  # cannot happen: every slice now covers its charge
            raise StoreError("a slice grant did not cover its admission")
        self._announce(db, self._unused_slices(admission), now)
        self._watch()
        counters: dict[str, Counters] = {}
        for charge in admission.budgets:
            counters.setdefault(charge.key_id, Counters()).committed[charge.period] = snapshot.committed_usd[
                charge.key_id
            ]
        for rate in admission.rates:
            counted = (rate.window, snapshot.rates[rate.counter])
            counters.setdefault(rate_owner(rate, admission.key_id), Counters()).rates[rate.name] = counted
        return Applied(counters)

    def _holds_slices(self, write: AdmissionWrite, now: float) -> bool:
        """Whether this process holds unused slices of a counter `write` draws on (once contention began, its
        sweeper gives them back; requests admitted from them before still settle through them)."""
        for meter in write.meters:
            for charge in meter.budgets:
                slice_ = self.slices.budgets.get((charge.key_id, charge.period))
                if slice_ is not None and slice_.avail > EPSILON and slice_.expires_at > now:
                    return True
            for step in meter.rates:
                rate_slice = self.slices.rates.get((meter.key_id, step.charge.name))
                if rate_slice is not None and rate_slice.avail > 0 and rate_slice.window == step.charge.window:
                    return True
        return False

    def _admit_exactly(
        self, db: sqlite3.Connection, write: AdmissionWrite, others_hold: bool, now: float
    ) -> Applied | Unmet:
        """While every key the admission draws on was recalled by another process (slices would be one
        request's worth) and this one holds none of their slices: the admission as it is, its own reservation
        row, with none of the slices' bookkeeping (which costs more than it saves there)."""
        admission = write.admission
        stored = {meter.key_id: self._stored(db, meter) for meter in write.meters}
        restarts = {meter.key_id: self._check(meter, stored[meter.key_id]) for meter in write.meters}
        unmet = {key_id: stored[key_id] for key_id, restart in restarts.items() if restart is None}
        if unmet:
            return self._refuse(db, admission, unmet, others_hold, now)
        after = {}
        for meter in write.meters:
            counters = Counters()
            for charge in meter.budgets:
                counters.committed[charge.period] = add_committed(db, charge.key_id, charge.period, charge.amount_usd)
                reserve(
                    db, charge.key_id, admission.reservation_id, charge.period, charge.amount_usd, admission.expires_at
                )
            for step in meter.rates:
                rate = step.charge
                restart = step.restart or rate.name in (restarts[meter.key_id] or ())
                count = rate.amount + (0 if restart else stored[meter.key_id].rates.get(rate.name, (0, 0))[1])
                set_rate(db, meter.key_id, rate.name, rate.window, count)
                counters.rates[rate.name] = (rate.window, count)
            after[meter.key_id] = counters
        self._announce(db, self._unused_slices(admission), now)
        return Applied(after)

    def _stored(self, db: sqlite3.Connection, meter: MeterUpdate) -> Counters:
        """The counters `meter` draws on, as the file has them, each budget's with what settlements here spent
        beyond this process's slices of it and the file does not have yet (`Slices.unwritten`: their writes
        wait for the end of the batch, or for a retry, which may outlast the slice). A grant that read the file
        alone, in the batch of a settlement that overspent, would grant from room already spent, and set the slice's
        `committed_seen` below it: later requests admitted from memory on a budget spent several times over."""
        counters = Counters()
        for charge in meter.budgets:
            row = db.execute(
                "SELECT committed FROM meters WHERE key_id = ? AND period = ?", (charge.key_id, charge.period)
            ).fetchone()
            unwritten = self.slices.unwritten_usd(charge.key_id, charge.period)
            if row or unwritten:
                counters.committed[charge.period] = (row[0] if row else 0.0) + unwritten
        for step in meter.rates:
            row = db.execute(
                "SELECT window, count FROM rates WHERE key_id = ? AND name = ?", (meter.key_id, step.charge.name)
            ).fetchone()
            if row:
                counters.rates[step.charge.name] = (row[0], row[1])
        return counters

    def _refuse(
        self, db: sqlite3.Connection, admission: Admission, unmet: dict[str, Counters], others_hold: bool, now: float
    ) -> Unmet:
        """Change no counter; tell other processes this one is here (and whether it holds unused slices of
        the admission's counters), so that one holding slices gives them back; if another may hold some, the
        refusal waits for them once (`admit`)."""
        self._announce(db, self._unused_slices(admission), now)
        if others_hold:
            self._recall.add(admission.reservation_id)
            for key_id in unmet:  # the others see it at their next grant or sweep: they give back, grant exactly
                db.execute(
                    "INSERT INTO holders (key_id, holder, active_at, leasing, recall_at) VALUES (?, ?, ?, 0, ?) "
                    "ON CONFLICT (key_id, holder) DO UPDATE SET active_at = excluded.active_at, "
                    "recall_at = excluded.recall_at",
                    (key_id, self.slices.holder, now, now),
                )
        return Unmet(unmet)

    def _keep(self, table: dict[tuple[str, str], Any], key: tuple[str, str]) -> None:
        """Register an undo that puts `table[key]` back as it is now: the same slice with the same fields, or
        none."""
        slice_ = table.get(key)
        if slice_ is None:
            self._undo.append(functools.partial(table.pop, key, None))
            return
        self._keep_fields(slice_)
        self._undo.append(functools.partial(table.__setitem__, key, slice_))

    def _keep_fields(self, slice_: BudgetSlice | RateSlice) -> None:
        """Register an undo that puts `slice`'s fields back as they are now."""
        saved = [(name, getattr(slice_, name)) for name in type(slice_).__slots__]

        def restore() -> None:
            for name, value in saved:
                setattr(slice_, name, value)

        self._undo.append(restore)

    def _unused_slices(self, admission: Admission) -> dict[str, int]:
        """Per key whose counters `admission` draws on: 1 if this process holds unused slices of them."""
        unused = {charge.key_id: 0 for charge in admission.budgets}
        for charge in admission.budgets:
            slice_ = self.slices.budgets.get((charge.key_id, charge.period))
            if slice_ is not None and slice_.avail > EPSILON:
                unused[charge.key_id] = 1
        for rate in admission.rates:
            owner = rate_owner(rate, admission.key_id)
            held = self.slices.rates.get((owner, rate.name))
            unused[owner] = max(unused.get(owner, 0), int(held is not None and held.avail > 0))
        return unused

    def _announce(self, db: sqlite3.Connection, unused: dict[str, int], now: float) -> None:
        """Tell other processes this one is active on these keys, and whether it holds unused slices: written
        only when that changed or the last word is getting old."""
        for key_id, holds in unused.items():
            said = self._announced.get(key_id)
            if said is not None and said[1] == holds and now - said[0] < CONTEND_S / 2:
                continue
            db.execute(
                "INSERT INTO holders (key_id, holder, active_at, leasing) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key_id, holder) DO UPDATE SET active_at = excluded.active_at, leasing = excluded.leasing",
                (key_id, self.slices.holder, now, holds),
            )
            self._announced[key_id] = (now, holds)
            self._undo.append(functools.partial(self._announced.pop, key_id, None))  # type: ignore[arg-type]

    async def settle(self, settlement: Settlement) -> None:
        """As `MeteredStore.settle`, unless the request was admitted from this process's slices: then its
        spend leaves the slice's row with the rest of the batch's (`_write_spend`)."""
        done = self.settle_soon(settlement)
        if done is None:
            return await super().settle(settlement)
        await done

    def settle_soon(self, settlement: Settlement) -> asyncio.Future[None] | None:
        """A request admitted from this process's slices settles in the batch being gathered (None for any
        other: its reservation is a row of its own, settled by `settle`), written after `SETTLE_LINGER_S` for
        company, or at once with what the batch holds where nothing is coming to join it (`WRITE_AT_ONCE`: left to
        linger, a buffered Lambda invocation's settlement cost a timer made and cancelled and two turns of the loop,
        about 50,000 instructions of a warm invocation's store work)."""
        rows, rates = self.slices.adjust(settlement)
        if rows is None:
            return None
        single = settlement.item is None or not rates
        line = settlement_line(settlement)
        return self._settling(lambda db: self._settle_sliced(db, settlement, rows, rates, line), single=single)

    def _settling(self, operation: Callable[[sqlite3.Connection], None], single: bool = False) -> asyncio.Future[None]:
        """A settlement's write (`operation`) queued: lingering for company, or written at once with what the batch
        holds where nothing is coming to join it (`WRITE_AT_ONCE`). Readers here wait for it (`_unsettled`: a usage
        report or meter read right after an answer shows that request); the flush takes it out."""
        now = WRITE_AT_ONCE.get()
        done = self._enqueue(operation, linger=True, single=single, now=now)
        self._unsettled.add(done)
        if now:
            self._write_now()
        return done

    def _settle_sliced(
        self,
        db: sqlite3.Connection,
        settlement: Settlement,
        rows: list[tuple[str, float]],
        rates: list[int],
        line: str | None,
    ) -> None:
        """Record the line item of a request admitted from slices. `rows`: per budget charge, the slice row
        the request was reserved in and what it spent beyond what the slice held; `rates`: the token
        adjustments no slice absorbed; `line`: the ledger line as stored."""
        item = settlement.item
        if not self._mark_settled(db, settlement, line):
            return
        owner = item.key_id if item is not None else ""
        for i in rates:
            rate = settlement.rates[i]
            if rate_owner(rate, owner):
                db.execute(
                    "UPDATE rates SET count = max(0, count + ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (rate.amount, rate_owner(rate, owner), rate.name, rate.window),
                )
        # The spend leaves each slice row with the rest of the batch's (last: nothing after this can fail and
        # leave it counted).
        for (row_id, beyond), charge in zip(rows, settlement.budgets, strict=True):
            key = (charge.key_id, charge.period, row_id)
            added = self._spend.get(key)
            if added is None:  # (the batch's first on the row: `usd_sum(0.0, x)` is `x + 0.0`, the figure as a float)
                self._spend[key] = (charge.amount_usd + 0.0, beyond + 0.0)
            else:
                self._spend[key] = (usd_sum(added[0], charge.amount_usd), usd_sum(added[1], beyond))

    def _write_spend(self, db: sqlite3.Connection) -> None:
        """Move the batch's settled spend out of the slice rows it was reserved in, one row at a time: the
        counter's committed stays (reserved becomes spent) but for spend beyond what the slice held, unless
        the slice is gone (expired and released), whose spend is then committed anew, as a late
        settlement's is."""
        spend, self._spend = self._spend, {}
        try:
            for (key_id, period, row), (amount, beyond) in spend.items():
                reserved = usd_sum(amount, -beyond) if beyond else amount
                slice_ = self.slices.budgets.get((key_id, period))
                left = None
                if slice_ is not None and slice_.row == row:  # its slice goes on: whether the row is there will do
                    held = db.execute(MOVE_SPEND, (reserved, key_id, row, period)).rowcount > 0
                else:  # and what is left of it, the slice gone (reading it back doubles the statement's cost)
                    left = db.execute(f"{MOVE_SPEND} RETURNING amount", (reserved, key_id, row, period)).fetchone()
                    held = left is not None
                db.execute(SPEND, (key_id, period, beyond if held else amount, amount))
                if left is not None and abs(left[0]) < 1e-9:  # its slice is done
                    db.execute(
                        "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ?", (key_id, row, period)
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def _settled(self, reservation_id: str) -> None:
        self.slices.forget(reservation_id)

    async def release_expired(self, key_id: str, now: float) -> float:
        """As `MeteredStore.release_expired`, and the requests admitted from slices here whose reservations
        expired give their part back to the slice."""
        return self.slices.release_expired(key_id, now) + await super().release_expired(key_id, now)

    def _watch(self) -> None:
        """Run the sweeper on the current event loop while this process holds slices."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        STORE_DEADLINE.set(None)  # (this task's own: it outlives the request it was started in, and its deadline)
        # (It runs on while a word on a key is left to forget, `_tidy`: stopped with the last slice, it left the words
        # of the keys whose slices went in its last round, fresher than `CONTEND_S / 2`, until a slice came again.)
        while not self._closed and (self.slices.budgets or self.slices.rates or self.slices.held or self._announced):
            await asyncio.sleep(SWEEP_S)
            try:
                await self._batched(self._tidy)
            except Exception as exc:  # noqa: BLE001 - the next round tries again; close() returns what is left
                logger.warning("returning idle slice slices failed: %s", exc)

    def _tidy(self, db: sqlite3.Connection, everything: bool = False) -> None:
        """Return the slices nobody here used for `IDLE_S` (or all, or those of keys another process is now
        active on), forget finished slices, and requests whose reservations expired unsettled; keep this
        process's presence fresh on keys it holds slices of, and clear it where it holds none. Every change
        to the slices is undone if the commit fails."""
        now = time.time()
        slices = self.slices
        for reservation_id, held in list(slices.held.items()):
            if held.expires_at < now:  # forgotten below; what it reserved goes back to its slices
                self._undo.append(functools.partial(slices.held.__setitem__, reservation_id, held))
                for slice_ in held.budgets:
                    self._keep_fields(slice_)
        slices.release_expired(None, now)
        for key_id, recalled in db.execute(
            "SELECT key_id, max(recall_at) FROM holders WHERE holder <> ? AND active_at > ? AND recall_at > ? "
            "GROUP BY key_id",
            (slices.holder, now - CONTEND_S, now - CONTEND_S),
        ):
            slices.recall(key_id, recalled)
        recalled_keys = {key_id for key_id in slices.recalled if slices.exact(key_id, now)}
        returned: set[str] = set()
        holding: set[str] = set()
        for (key_id, period), slice_ in list(slices.budgets.items()):
            idle = now - slice_.used_at > IDLE_S
            expired = slice_.expires_at <= now
            returning = not expired and abs(slice_.avail) > EPSILON and (idle or everything or key_id in recalled_keys)
            done = expired or ((idle or everything) and slice_.holds <= 0)
            if returning or done:
                self._keep(slices.budgets, (key_id, period))
            if expired:  # its row goes with what it held when any process releases expired reservations
                del slices.budgets[(key_id, period)]
                continue
            if returning:
                unused, slice_.avail = slice_.avail, 0.0
                slice_.committed_seen -= unused
                db.execute(
                    "UPDATE reservations SET amount = usd_sum(amount, -?) WHERE key_id = ? AND id = ? AND period = ?",
                    (unused, key_id, slice_.row, period),
                )
                db.execute(
                    LOWER_COMMITTED,
                    (unused, key_id, period),
                )
                returned.add(key_id)
            if done and abs(slice_.avail) <= EPSILON:
                del slices.budgets[(key_id, period)]
                db.execute(
                    "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ? AND abs(amount) < 1e-9",
                    (key_id, slice_.row, period),
                )
            elif slice_.avail > EPSILON:
                holding.add(key_id)
        window = int(now // 60)
        for (key_id, name), rate_slice in list(slices.rates.items()):
            idle = now - rate_slice.used_at > IDLE_S
            if rate_slice.window < window or idle or everything or (rate_slice.avail and key_id in recalled_keys):
                self._keep(slices.rates, (key_id, name))
            if rate_slice.window < window:
                del slices.rates[(key_id, name)]  # its minute is over, and what it held with it
                continue
            if rate_slice.avail and (idle or everything or key_id in recalled_keys):
                unused, rate_slice.avail = rate_slice.avail, 0
                rate_slice.count_seen -= unused
                db.execute(
                    "UPDATE rates SET count = max(0, count - ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (unused, key_id, name, rate_slice.window),
                )
                returned.add(key_id)
            if idle or everything:
                del slices.rates[(key_id, name)]
            elif rate_slice.avail > 0:
                holding.add(key_id)
        # Other processes wait for a holder's slices only while it says it holds some, and see it only while
        # its word is fresh: a process drawing on one slice for long makes no grant to refresh it.
        stale = {k for k, (_, says) in self._announced.items() if says and k not in holding}
        for key_id in (stale | returned) - holding:
            said = self._announced.get(key_id)
            db.execute("UPDATE holders SET leasing = 0 WHERE key_id = ? AND holder = ?", (key_id, slices.holder))
            if said is not None:
                self._undo.append(functools.partial(self._announced.__setitem__, key_id, said))
                self._announced[key_id] = (said[0], 0)
        # A word that holds nothing and is too old to spare a write (`_announce`) is forgotten: kept, there would be
        # one entry for every budgeted key the process ever admitted (3,000 after 3,000 keys, its slices all gone).
        for key_id in [k for k, (at, says) in self._announced.items() if not says and now - at >= CONTEND_S / 2]:
            del self._announced[key_id]
        self._announce(db, dict.fromkeys(holding, 1), now)
