"""The embedded store: one SQLite file, for local serving, tests and single-host deployments.

Calls run inline on the event loop: each is a few indexed statements on a local file in WAL mode,
cheaper than a hop to a thread. Writes take the database's write lock
first (`BEGIN IMMEDIATE`), so several processes (the server, its workers, the CLI) share one file
safely and a grant's checks and increments are atomic.

Admissions come from leases of the counters held in memory (adapters/store/local_leases.py): most
requests write nothing before the upstream call; a grant, every few seconds of traffic (or every
request while another process is active on the key), is one transaction.

A commit costs more than the statements it commits (the WAL frames it writes), so
grants and settlements that arrive in the same event-loop turn share one transaction: each runs
in its own savepoint (a failing one rolls back only itself), the batch commits once, and every
caller resumes only after that commit. Under load this turns N commits into one; alone, a call pays
what it would anyway (a batch of one needs no savepoint). Local changes an operation makes (a lease
topped up) are undone if the commit fails. Settlements run after the answer has gone,
so they wait up to `SETTLE_LINGER_S` for company: the next grant's batch, or other settlements.
Tables are `WITHOUT ROWID`, clustered by key, so a write touches few pages. A batch never waits for
another process's write lock inside SQLite (whose busy handler sleeps in the event loop's thread, so
every request of the process stood still, for a millisecond or more per conflict, whenever two
workers wrote at once): it goes back and tries again `BUSY_RETRY_S` later, up to `BUSY_TIMEOUT_MS`.

Checkpoints copy the write-ahead log into the database file (and fsync it). SQLite's own runs inside
whichever commit finds the log past a threshold, and on the event loop that stalled every request for
the copy and the fsync (a commit of up to 9 ms instead of 0.15), so the serving connection has it off.
A thread with its own connection checkpoints instead (SQLite lets go of the GIL while it copies, and one
call is one hand-over of the GIL): a passive checkpoint every `CHECKPOINT_EVERY_S`, and, once the log is
past `AUTOCHECKPOINT_PAGES`, a restarting one, which copies what is left and has the next writer start
the log over (passive checkpoints alone never do while writes keep coming, and the log would grow without
bound). It never waits for a writer or a reader in its way (it would hold every write up meanwhile): it
tries again next round. While it copies, a batch finds the write lock busy and tries again shortly, as
with another process's lock: the loop never waits. At SQLite's default of 1,000 pages a loaded server
(about ten pages a request) would restart the log once every hundred requests; at 10,000 pages ten times
less often, and the log stays small (docs/performance.md has the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from adapters.store.local_leases import (
    CONTEND_S,
    IDLE_S,
    RENEW_S,
    SWEEP_S,
    BudgetLease,
    LocalLeases,
    RateLease,
    slice_size,
)
from adapters.store.metered import (
    EPSILON,
    AdmissionWrite,
    Applied,
    Counters,
    MeteredStore,
    Reservation,
    SettleUpdate,
    Unmet,
    rate_owner,
)
from adapters.store.records import (
    SETTLED_TTL_SECONDS,
    key_from_json,
    key_purge_after,
    key_to_json,
    ledger_from_json,
    ledger_to_json,
)
from adapters.store.responses import SQLiteResponses
from adapters.store.signins import SQLiteSignIns
from handler.ports import (
    Admission,
    BudgetRefused,
    ConflictError,
    KeyRecord,
    LedgerItem,
    MeterSnapshot,
    RateRefused,
    Settlement,
    StoreError,
    UsageQuery,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, parent_id TEXT, version INTEGER NOT NULL, purge_after REAL, data TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_parent ON keys (parent_id);
CREATE TABLE IF NOT EXISTS meters (
    key_id TEXT NOT NULL, period TEXT NOT NULL, committed REAL NOT NULL DEFAULT 0, spent REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
    key_id TEXT NOT NULL, id TEXT NOT NULL, period TEXT NOT NULL, amount REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key_id, id, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rates (
    key_id TEXT NOT NULL, name TEXT NOT NULL, window INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (key_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled (id TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
    key_id TEXT NOT NULL, ts REAL NOT NULL, request_id TEXT NOT NULL, data TEXT NOT NULL,
    cost_source TEXT NOT NULL DEFAULT 'provider',
    PRIMARY KEY (key_id, ts, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE TABLE IF NOT EXISTS holders (
    key_id TEXT NOT NULL, holder TEXT NOT NULL, active_at REAL NOT NULL, leasing INTEGER NOT NULL,
    PRIMARY KEY (key_id, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holders_active ON holders (active_at);
"""
# A key's counters for a period move by (committed, spent); and committed down by what goes back.
SPEND = (
    "INSERT INTO meters (key_id, period, committed, spent) VALUES (?, ?, ?, ?) ON CONFLICT (key_id, period) "
    "DO UPDATE SET committed = max(0, committed + excluded.committed), spent = spent + excluded.spent"
)
LOWER_COMMITTED = "UPDATE meters SET committed = max(0, committed - ?) WHERE key_id = ? AND period = ?"
T = TypeVar("T")
logger = logging.getLogger("gateway")
SETTLE_LINGER_S = 0.01
# How long a write waits for another process's lock before it fails, and how often a batch tries again.
BUSY_TIMEOUT_MS = 5000
BUSY_RETRY_S = 0.0005
CHECKPOINT_EVERY_S = 0.1
AUTOCHECKPOINT_PAGES = 10_000
CACHE_KIB = 64 * 1024
MMAP_BYTES = 256 * 1024 * 1024
# A refusal while another process may hold unused slices of the key waits this long for them, once.
RECALL_WAIT_S = 1.5 * SWEEP_S


SCHEMA_VERSION = 2


def migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older gateway to `SCHEMA_VERSION` (the tables `SCHEMA` creates are new).
    Version 2: the ledger's `cost_source` column; older lines had a provider's usage behind them."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # another process opening the same file migrates it once, not twice
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
        if "cost_source" not in columns:
            db.execute("ALTER TABLE ledger ADD COLUMN cost_source TEXT NOT NULL DEFAULT 'provider'")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SQLiteStore(SQLiteResponses, SQLiteSignIns, MeteredStore):
    """`Store` on one SQLite file; see the module docstring."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # The ledger grows by a line per request: a page cache that holds the hot pages of every table
            # (and reads through mmap, not a syscall per page) keeps writes from slowing as the file grows.
            self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self.db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            self.db.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpoint thread's work (see above)
            self.db.executescript(SCHEMA)
            migrate(self.db)
            # Settlement markers only need to outlive retries; holders, a day of quiet.
            self.db.execute("DELETE FROM settled WHERE at < ?", (time.time() - SETTLED_TTL_SECONDS,))
            self.db.execute("DELETE FROM holders WHERE active_at < ?", (time.time() - 86400,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
        self.path = path
        # Where settlements this file refused wait (handler/spool.py); in memory for an in-memory store.
        self.spool_path = None if path == ":memory:" else f"{path}-settlements.jsonl"
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool]] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._busy_since: float | None = None  # since when a batch has waited for another process's lock
        # Local changes to undo if the batch's commit fails, and to make once it succeeds.
        self._undo: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        # Spend settled from leases in this batch, per lease row (spent, and what of it went beyond what the
        # lease held): written once, before the commit.
        self._spend: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.leases = LocalLeases()
        self._announced: dict[str, tuple[float, int]] = {}  # key id -> (active_at, leasing) last written
        self._sweeper: asyncio.Task[None] | None = None
        self._unsettled: set[asyncio.Future[None]] = set()  # settlements queued and not yet committed
        # Admissions refused while another process may hold unused slices of their keys (see `admit`).
        self._recall: set[str] = set()
        self._closed = False
        self._stop = threading.Event()
        if path != ":memory:":
            threading.Thread(target=self._checkpoints, name="sqlite-checkpoint", daemon=True).start()

    def _checkpoints(self) -> None:
        """The checkpoint thread (see the module docstring)."""
        try:
            # No waiting: a restarting checkpoint holds the write lock while it waits for a writer or a reader
            # (another process's long read), and every write would wait with it; busy, it tries next round.
            db = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        except sqlite3.Error:
            return
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                try:
                    _, log_pages, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if log_pages >= AUTOCHECKPOINT_PAGES:
                        db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                except sqlite3.Error:
                    pass  # busy or failing: the next round tries again
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        finally:
            db.close()

    async def _batched(
        self, operation: Callable[[sqlite3.Connection], T], *, linger: bool = False, single: bool = False
    ) -> T:
        """Run `operation` in the transaction shared by this event-loop turn (see `_enqueue`)."""
        return await self._enqueue(operation, linger=linger, single=single)

    def _enqueue(
        self, operation: Callable[[sqlite3.Connection], T], *, linger: bool = False, single: bool = False
    ) -> asyncio.Future[T]:
        """Queue `operation` in the transaction shared by this event-loop turn (see the module docstring);
        with `linger`, the batch may wait up to `SETTLE_LINGER_S` for more operations. `single`: the
        operation writes with one statement at most, which SQLite undoes by itself if it fails, so it
        needs no savepoint. The future resolves once the batch has committed."""
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
        if not linger and self._flush_soon is None:
            self._flush_next_turn(loop)
        elif self._flush_soon is None and self._flush_later is None:
            self._flush_later = loop.call_later(SETTLE_LINGER_S, self._flush)
        done: asyncio.Future[T] = loop.create_future()
        self._batch.append((operation, done, single))
        return done

    def hurry(self) -> None:
        if self._flush_later is not None and self._flush_soon is None:
            self._flush_next_turn(asyncio.get_running_loop())

    def _flush_next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush on the loop's next turn, not after a lingering settlement's wait."""
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        self._flush_soon = loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._batch = self._batch or [], None
        self._flush_soon = None
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        self._undo, self._after, self._spend = [], [], {}
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            begun = self._begin_or_wait(batch)
            if begun is None:
                return  # put back: another process holds the lock
            if len(batch) == 1:  # alone: the transaction itself undoes a failed operation
                operation, done, _ = batch[0]
                try:
                    with self._write(begun) as db:
                        outcomes.append((done, True, self._run(operation, db)))
                        self._write_spend(db)
                except StoreError:
                    raise
                except Exception as exc:
                    outcomes.append((done, False, exc))
            else:
                with self._write(begun) as db:
                    for operation, done, single in batch:
                        if single:
                            try:
                                outcomes.append((done, True, self._run(operation, db)))
                            except Exception as exc:
                                if not db.in_transaction:  # SQLite gave up the whole transaction
                                    raise StoreError(f"SQLite write failed: {exc}") from exc
                                outcomes.append((done, False, exc))
                            continue
                        db.execute("SAVEPOINT op")
                        try:
                            outcomes.append((done, True, self._run(operation, db)))
                            db.execute("RELEASE op")
                        except Exception as exc:  # the caller gets its own exception; the batch goes on
                            db.execute("ROLLBACK TO op")
                            db.execute("RELEASE op")
                            outcomes.append((done, False, exc))
                    self._write_spend(db)
        except Exception as exc:  # the commit itself failed: nothing of the batch happened
            for undo in reversed(self._undo):
                undo()
            self._after, self._spend = [], {}
            failure = exc if isinstance(exc, StoreError) else StoreError(f"SQLite write failed: {exc}")
            outcomes = [(done, False, failure) for _, done, _ in batch]
        for after in self._after:
            after()
        self._undo, self._after = [], []
        for done, ok, value in outcomes:
            if done.cancelled():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    def _write_spend(self, db: sqlite3.Connection) -> None:
        """Move the batch's settled spend out of the lease rows it was reserved in, one row at a time: the
        counter's committed stays (reserved becomes spent) but for spend beyond what the lease held, unless
        the lease is gone (expired and released), whose spend is then committed anew, as a late
        settlement's is."""
        spend, self._spend = self._spend, {}
        try:
            for (key_id, period, row), (amount, beyond) in spend.items():
                held = db.execute(
                    "UPDATE reservations SET amount = amount - ? WHERE key_id = ? AND id = ? AND period = ? "
                    "RETURNING amount",
                    (amount - beyond, key_id, row, period),
                ).fetchone()
                db.execute(
                    SPEND,
                    (key_id, period, beyond if held else amount, amount),
                )
                lease = self.leases.budgets.get((key_id, period))
                if held and abs(held[0]) < 1e-9 and (lease is None or lease.row != row):  # its lease is done
                    db.execute(
                        "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ?", (key_id, row, period)
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write failed: {exc}") from exc

    def _run(self, operation: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
        """Run one operation of a batch; if it fails, undo the local changes it registered."""
        undo_mark, after_mark = len(self._undo), len(self._after)
        try:
            return operation(db)
        except BaseException:
            for undo in reversed(self._undo[undo_mark:]):
                undo()
            del self._undo[undo_mark:], self._after[after_mark:]
            raise

    def _begin_or_wait(self, batch: list[Any]) -> bool | None:
        """Take the write lock for `batch` without waiting for it: True once taken (False: left to `_write`,
        for an empty batch or the last one at close, which wait as before); None while another process
        holds it, the batch put back to be flushed again shortly; StoreError once it has waited
        `BUSY_TIMEOUT_MS` or on any other failure. SQLite's own wait for a lock sleeps in the calling thread,
        and here that is the event loop: every request of the process would stand still, not just this batch."""
        if not batch or self._closed:
            return False
        try:
            self.db.execute("PRAGMA busy_timeout = 0")
            try:
                self.db.execute("BEGIN IMMEDIATE")
            finally:
                self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            if self.db.in_transaction:  # begun, then the timeout's reset failed
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            now = time.monotonic()
            busy = isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY
            if not busy or now - (self._busy_since or now) > BUSY_TIMEOUT_MS / 1000:
                self._busy_since = None
                raise StoreError(f"SQLite store busy or failing: {exc}") from exc
            self._busy_since = self._busy_since or now
            self._batch = batch + (self._batch or [])
            if self._flush_soon is None and self._flush_later is None:
                self._flush_later = asyncio.get_running_loop().call_later(BUSY_RETRY_S, self._flush)
            return None
        self._busy_since = None
        return True

    @contextmanager
    def _write(self, begun: bool = False) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (`begun`: its BEGIN is done); any exception rolls it back."""
        try:
            if not begun:
                self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store busy or failing: {exc}") from exc
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite commit failed: {exc}") from exc

    # --- keys ---------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        with self._write() as db:
            db.execute("DELETE FROM keys WHERE purge_after IS NOT NULL AND purge_after < ?", (time.time(),))
            try:
                db.execute(
                    "INSERT INTO keys (id, parent_id, version, purge_after, data) VALUES (?, ?, ?, ?, ?)",
                    (record.id, record.parent_id, record.version, key_purge_after(record), key_to_json(record)),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(f"key {record.id} exists") from exc

    async def get_key(self, key_id: str) -> KeyRecord | None:
        row = self.db.execute(
            "SELECT data FROM keys WHERE id = ? AND (purge_after IS NULL OR purge_after >= ?)", (key_id, time.time())
        ).fetchone()
        return key_from_json(row[0]) if row else None

    async def update_key(self, record: KeyRecord) -> None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE keys SET version = ?, purge_after = ?, data = ? WHERE id = ? AND version = ?",
                (record.version, key_purge_after(record), key_to_json(record), record.id, record.version - 1),
            )
            if cursor.rowcount != 1:
                raise ConflictError(f"key {record.id} changed since it was read")

    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        now = time.time()
        if parent_id is None:
            rows = self.db.execute(
                "SELECT data FROM keys WHERE purge_after IS NULL OR purge_after >= ? ORDER BY id", (now,)
            )
        else:
            rows = self.db.execute(
                "SELECT data FROM keys WHERE parent_id = ? AND (purge_after IS NULL OR purge_after >= ?) ORDER BY id",
                (parent_id, now),
            )
        return [key_from_json(row[0]) for row in rows.fetchall()]

    # --- meters (the primitives of `MeteredStore`, behind the in-memory slices) ---------------------

    def _cached(self, admission: Admission) -> MeterSnapshot | None:
        """From the slices held, in memory (see adapters/store/local_leases.py)."""
        return self.leases.take(admission, time.time())

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
        leases = self.leases
        others_hold = False
        for meter in write.meters:
            (leasing,) = db.execute(
                "SELECT max(leasing) FROM holders WHERE key_id = ? AND holder <> ? AND active_at > ?",
                (meter.key_id, leases.holder, now - CONTEND_S),
            ).fetchone()
            if leasing is not None:
                leases.contended[meter.key_id] = now
                others_hold = others_hold or bool(leasing)
        budget_plans: list[tuple[BudgetLease, bool, float, float]] = []
        rate_plans: list[tuple[RateLease, bool, int, int]] = []
        unmet: dict[str, Counters] = {}
        for meter in write.meters:
            held = Counters()
            for charge in meter.budgets:
                lease = leases.budgets.get((charge.key_id, charge.period))
                fresh = lease is None or lease.expires_at <= now  # an expired lease's row may be released already
                if lease is None or fresh:
                    lease = leases.new_budget_lease()
                row = db.execute(
                    "SELECT committed FROM meters WHERE key_id = ? AND period = ?", (charge.key_id, charge.period)
                ).fetchone()
                committed = row[0] if row else 0.0
                held.committed[charge.period] = committed - lease.avail
                room = charge.limit_usd - committed
                need = charge.amount_usd - lease.avail
                since = now - lease.granted_at
                exact = leases.exact(charge.key_id, now)
                size = slice_size(need, room, lease.drawn, since, exact) if 0 < need <= room + EPSILON else 0.0
                budget_plans.append((lease, fresh, size, max(lease.expires_at, admission.expires_at + RENEW_S)))
            for step in meter.rates:
                rate = step.charge
                rate_lease = leases.rates.get((meter.key_id, rate.name))
                new_window = rate_lease is None or rate_lease.window != rate.window
                if rate_lease is None or new_window:
                    rate_lease = RateLease(rate.window)
                stored = db.execute(
                    "SELECT window, count FROM rates WHERE key_id = ? AND name = ?", (meter.key_id, rate.name)
                ).fetchone()
                if stored is not None:
                    held.rates[rate.name] = (
                        stored[0],
                        stored[1] - (rate_lease.avail if stored[0] == rate.window else 0),
                    )
                count = stored[1] if stored and stored[0] == rate.window else 0
                need = rate.amount - rate_lease.avail
                since = now - rate_lease.granted_at
                wanted = math.floor(
                    slice_size(need, rate.limit - count, rate_lease.drawn, since, leases.exact(meter.key_id, now))
                )
                rate_plans.append((rate_lease, new_window, count, max(need, wanted) if need > 0 else 0))
            if self._check(meter, held) is None:
                unmet[meter.key_id] = held
        if unmet:
            self._announce(db, self._leasing(admission), now)
            if others_hold:
                self._recall.add(admission.reservation_id)
            return Unmet(unmet)
        # Every check passed: write the grants, then change the leases held here.
        budgets = [(m.key_id, charge) for m in write.meters for charge in m.budgets]
        rates = [(m.key_id, step.charge) for m in write.meters for step in m.rates]
        committed_now = []
        for (_, charge), (lease, _, size, expires_at) in zip(budgets, budget_plans, strict=True):
            (committed,) = db.execute(
                "INSERT INTO meters (key_id, period, committed) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, period) DO UPDATE SET committed = committed + excluded.committed "
                "RETURNING committed",
                (charge.key_id, charge.period, size),
            ).fetchone()
            committed_now.append(committed)
            db.execute(
                "INSERT INTO reservations (key_id, id, period, amount, expires_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (key_id, id, period) DO UPDATE SET "
                "amount = amount + excluded.amount, expires_at = max(expires_at, excluded.expires_at)",
                (charge.key_id, lease.row, charge.period, size, expires_at),
            )
        for (owner, rate), (_, _, count, size) in zip(rates, rate_plans, strict=True):
            if size:
                db.execute(
                    "INSERT INTO rates (key_id, name, window, count) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (key_id, name) DO UPDATE SET window = excluded.window, count = excluded.count",
                    (owner, rate.name, rate.window, count + size),
                )
        # If the commit fails, the leases go back to what they were (the admission with them).
        for _, charge in budgets:
            self._keep(leases.budgets, (charge.key_id, charge.period))
        for owner, rate in rates:
            self._keep(leases.rates, (owner, rate.name))
        self._undo.append(functools.partial(leases.held.pop, admission.reservation_id, None))  # type: ignore[arg-type]
        for (_, charge), (lease, fresh, size, expires_at), committed in zip(
            budgets, budget_plans, committed_now, strict=True
        ):
            if fresh:
                leases.budgets[(charge.key_id, charge.period)] = lease
            lease.avail += size
            lease.expires_at = expires_at
            lease.committed_seen = committed
            lease.limit = charge.limit_usd
            if size:
                lease.drawn, lease.granted_at = 0.0, now
        for (owner, rate), (rate_lease, new_window, count, size) in zip(rates, rate_plans, strict=True):
            if new_window:
                leases.rates[(owner, rate.name)] = rate_lease
            rate_lease.avail += size
            rate_lease.count_seen = count + size
            rate_lease.limit = rate.limit
            if size:
                rate_lease.drawn, rate_lease.granted_at = 0, now
        snapshot = leases.take(admission, now)
        if snapshot is None:  # cannot happen: every lease now covers its charge
            raise StoreError("a lease grant did not cover its admission")
        self._announce(db, self._leasing(admission), now)
        self._watch()
        windows = {rate.name: rate.window for rate in admission.rates}
        own = Counters(rates={name: (windows[name], count) for name, count in snapshot.rates.items()})
        counters = {admission.key_id: own}
        if admission.budgets:
            counters.setdefault(admission.budgets[0].key_id, Counters()).committed.update(snapshot.committed_usd)
        return Applied(counters)

    def _keep(self, table: dict[tuple[str, str], Any], key: tuple[str, str]) -> None:
        """Register an undo that puts `table[key]` back as it is now: the same lease with the same fields, or
        none."""
        lease = table.get(key)
        if lease is None:
            self._undo.append(functools.partial(table.pop, key, None))
            return
        self._keep_fields(lease)
        self._undo.append(functools.partial(table.__setitem__, key, lease))

    def _keep_fields(self, lease: BudgetLease | RateLease) -> None:
        """Register an undo that puts `lease`'s fields back as they are now."""
        saved = [(f.name, getattr(lease, f.name)) for f in dataclasses.fields(lease)]

        def restore() -> None:
            for name, value in saved:
                setattr(lease, name, value)

        self._undo.append(restore)

    def _leasing(self, admission: Admission) -> dict[str, int]:
        """Per key whose counters `admission` draws on: 1 if this process holds unused slices of them."""
        leasing = {charge.key_id: 0 for charge in admission.budgets}
        for charge in admission.budgets:
            lease = self.leases.budgets.get((charge.key_id, charge.period))
            if lease is not None and lease.avail > EPSILON:
                leasing[charge.key_id] = 1
        for rate in admission.rates:
            owner = rate_owner(rate, admission.key_id)
            held = self.leases.rates.get((owner, rate.name))
            leasing[owner] = max(leasing.get(owner, 0), int(held is not None and held.avail > 0))
        return leasing

    def _announce(self, db: sqlite3.Connection, leasing: dict[str, int], now: float) -> None:
        """Tell other processes this one is active on these keys, and whether it holds unused slices: written
        only when that changed or the last word is getting old."""
        for key_id, holds in leasing.items():
            said = self._announced.get(key_id)
            if said is not None and said[1] == holds and now - said[0] < CONTEND_S / 2:
                continue
            db.execute(
                "INSERT INTO holders (key_id, holder, active_at, leasing) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key_id, holder) DO UPDATE SET active_at = excluded.active_at, leasing = excluded.leasing",
                (key_id, self.leases.holder, now, holds),
            )
            self._announced[key_id] = (now, holds)
            self._undo.append(functools.partial(self._announced.pop, key_id, None))  # type: ignore[arg-type]

    async def settle(self, settlement: Settlement) -> None:
        """As `MeteredStore.settle`, unless the request was admitted from this process's slices: then its
        spend leaves the slice's row with the rest of the batch's (`_write_spend`)."""
        rows, rates = self.leases.adjust(settlement)
        if rows is None:
            return await super().settle(settlement)
        single = settlement.item is None or not rates
        done = self._enqueue(lambda db: self._settle_leased(db, settlement, rows, rates), linger=True, single=single)
        await self._track(done)

    async def _write_settlement(self, settlement: Settlement, updates: list[SettleUpdate]) -> frozenset[str]:
        done = self._enqueue(lambda db: self._settle(db, settlement, updates), linger=True)
        try:
            await self._track(done)
        except _Mismatch as mismatch:
            return mismatch.keys
        return frozenset()

    async def _track(self, done: asyncio.Future[None]) -> None:
        """Wait for a queued settlement, which readers in this process wait for too (`_own_settlements`)."""
        self._unsettled.add(done)
        done.add_done_callback(self._unsettled.discard)
        await done

    async def _own_settlements(self) -> None:
        """Wait for this process's settlements still lingering for company, so that a reader here sees what
        it settled: a usage report or meter read right after an answer shows that request."""
        loop = asyncio.get_running_loop()
        pending = [done for done in self._unsettled if done.get_loop() is loop]
        if pending:
            self.hurry()
            await asyncio.wait(pending)  # (not gather: a reader cancelled must not cancel the settlements)

    def _mark_settled(self, db: sqlite3.Connection, settlement: Settlement) -> bool:
        """Record that the settlement is applied; False if it was before. The ledger line, unique by request,
        is the marker when there is one (a random id in `settled` costs a page write per request); a bare
        release uses `settled`."""
        self._after.append(lambda: self._settled(settlement.reservation_id))
        item = settlement.item
        if item is not None:
            written = db.execute(
                "INSERT OR IGNORE INTO ledger (key_id, ts, request_id, data, cost_source) VALUES (?, ?, ?, ?, ?)",
                (item.key_id, item.ts, item.request_id, ledger_to_json(item), item.cost_source),
            )
            return written.rowcount != 0
        try:
            db.execute("INSERT INTO settled (id, at) VALUES (?, ?)", (settlement.reservation_id, time.time()))
        except sqlite3.IntegrityError:
            return False
        return True

    def _settle(self, db: sqlite3.Connection, settlement: Settlement, updates: list[SettleUpdate]) -> None:
        """`_write_settlement` in the batch's transaction: a reservation not where its update assumes raises
        `_Mismatch`, which rolls the operation back."""
        if not self._mark_settled(db, settlement):
            return
        mismatched = set()
        for update in updates:
            for charge, _ in update.budgets:
                gone = db.execute(
                    "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ? RETURNING amount",
                    (charge.key_id, settlement.reservation_id, charge.period),
                ).fetchone()
                if (gone is None) != update.released:
                    mismatched.add(update.key_id)
        if mismatched:
            raise _Mismatch(frozenset(mismatched))
        for update in updates:
            for charge, delta in update.budgets:
                db.execute(SPEND, (charge.key_id, charge.period, delta, charge.amount_usd))
            for rate in update.tokens:
                db.execute(
                    "UPDATE rates SET count = max(0, count + ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (rate.amount, update.key_id, rate.name, rate.window),
                )

    def _settle_leased(
        self, db: sqlite3.Connection, settlement: Settlement, rows: list[tuple[str, float]], rates: list[int]
    ) -> None:
        """Record the line item of a request admitted from slices. `rows`: per budget charge, the lease row
        the request was reserved in and what it spent beyond what the lease held; `rates`: the token
        adjustments no lease absorbed."""
        item = settlement.item
        if not self._mark_settled(db, settlement):
            return
        if item is not None:
            for i in rates:
                rate = settlement.rates[i]
                db.execute(
                    "UPDATE rates SET count = max(0, count + ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (rate.amount, rate_owner(rate, item.key_id), rate.name, rate.window),
                )
        # The spend leaves each lease row with the rest of the batch's (last: nothing after this can fail and
        # leave it counted).
        for (row_id, beyond), charge in zip(rows, settlement.budgets, strict=True):
            key = (charge.key_id, charge.period, row_id)
            spent, over = self._spend.get(key, (0.0, 0.0))
            self._spend[key] = (spent + charge.amount_usd, over + beyond)

    def _settled(self, reservation_id: str) -> None:
        self.leases.held.pop(reservation_id, None)

    async def release_expired(self, key_id: str, now: float) -> float:
        """As `MeteredStore.release_expired`, and the requests admitted from slices here whose reservations
        expired give their part back to the slice."""
        return self.leases.release_expired(key_id, now) + await super().release_expired(key_id, now)

    async def _expired_reservations(self, key_id: str, now: float) -> list[Reservation]:
        rows = self.db.execute(
            "SELECT id, period, amount, expires_at FROM reservations WHERE key_id = ? AND expires_at < ?",
            (key_id, now),
        ).fetchall()
        return [Reservation(key_id, *row) for row in rows]

    async def _release(self, key_id: str, reservations: list[Reservation]) -> float:
        released = 0.0
        with self._write() as db:
            for reservation in reservations:
                row = db.execute(
                    "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ? RETURNING amount",
                    (key_id, reservation.reservation_id, reservation.period),
                ).fetchone()
                if row is not None:  # (settled meanwhile otherwise)
                    db.execute(LOWER_COMMITTED, (row[0], key_id, reservation.period))
                    released += row[0]
        return released

    async def meter(self, key_id: str, period: str) -> MeterSnapshot:
        await self._own_settlements()
        return await super().meter(key_id, period)

    async def _read_counters(self, key_id: str, period: str) -> Counters:
        """The counters as the file has them, less the unused slices this process holds."""
        now = time.time()
        counters = Counters()
        row = self.db.execute(
            "SELECT committed, spent FROM meters WHERE key_id = ? AND period = ?", (key_id, period)
        ).fetchone()
        if row:
            committed, counters.spent[period] = row
            lease = self.leases.budgets.get((key_id, period))
            if lease is not None and lease.expires_at > now:
                committed -= lease.avail
            counters.committed[period] = committed
        window = int(now // 60)
        for name, count in self.db.execute(
            "SELECT name, count FROM rates WHERE key_id = ? AND window = ?", (key_id, window)
        ):
            rate_lease = self.leases.rates.get((key_id, name))
            counters.rates[name] = (
                window,
                count - (rate_lease.avail if rate_lease and rate_lease.window == window else 0),
            )
        return counters

    # --- returning slices -------------------------------------------------------------------------

    def _watch(self) -> None:
        """Run the sweeper on the current event loop while this process holds leases."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while not self._closed and (self.leases.budgets or self.leases.rates or self.leases.held):
            await asyncio.sleep(SWEEP_S)
            try:
                await self._batched(self._tidy)
            except Exception as exc:  # noqa: BLE001 - the next round tries again; close() returns what is left
                logger.warning("returning idle lease slices failed: %s", exc)

    def _tidy(self, db: sqlite3.Connection, everything: bool = False) -> None:
        """Return the slices nobody here used for `IDLE_S` (or all, or those of keys another process is now
        active on), forget finished leases, and requests whose reservations expired unsettled; keep this
        process's presence fresh on keys it holds slices of, and clear it where it holds none. Every change
        to the leases is undone if the commit fails."""
        now = time.time()
        leases = self.leases
        for reservation_id, held in list(leases.held.items()):
            if held.expires_at < now:  # forgotten below; what it reserved goes back to its leases
                self._undo.append(functools.partial(leases.held.__setitem__, reservation_id, held))
                for lease in held.budgets:
                    self._keep_fields(lease)
        leases.release_expired(None, now)
        others = {
            key_id
            for (key_id,) in db.execute(
                "SELECT DISTINCT key_id FROM holders WHERE holder <> ? AND active_at > ?",
                (leases.holder, now - CONTEND_S),
            )
        }
        for key_id in others:
            leases.contended[key_id] = now
        returned: set[str] = set()
        holding: set[str] = set()
        for (key_id, period), lease in list(leases.budgets.items()):
            idle = now - lease.used_at > IDLE_S
            expired = lease.expires_at <= now
            returning = not expired and abs(lease.avail) > EPSILON and (idle or everything or key_id in others)
            done = expired or ((idle or everything) and lease.holds <= 0)
            if returning or done:
                self._keep(leases.budgets, (key_id, period))
            if expired:  # its row goes with what it held when any process releases expired reservations
                del leases.budgets[(key_id, period)]
                continue
            if returning:
                unused, lease.avail = lease.avail, 0.0
                lease.committed_seen -= unused
                db.execute(
                    "UPDATE reservations SET amount = amount - ? WHERE key_id = ? AND id = ? AND period = ?",
                    (unused, key_id, lease.row, period),
                )
                db.execute(
                    LOWER_COMMITTED,
                    (unused, key_id, period),
                )
                returned.add(key_id)
            if done and abs(lease.avail) <= EPSILON:
                del leases.budgets[(key_id, period)]
                db.execute(
                    "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ? AND abs(amount) < 1e-9",
                    (key_id, lease.row, period),
                )
            elif lease.avail > EPSILON:
                holding.add(key_id)
        window = int(now // 60)
        for (key_id, name), rate_lease in list(leases.rates.items()):
            idle = now - rate_lease.used_at > IDLE_S
            if rate_lease.window < window or idle or everything or (rate_lease.avail and key_id in others):
                self._keep(leases.rates, (key_id, name))
            if rate_lease.window < window:
                del leases.rates[(key_id, name)]  # its minute is over, and what it held with it
                continue
            if rate_lease.avail and (idle or everything or key_id in others):
                unused, rate_lease.avail = rate_lease.avail, 0
                rate_lease.count_seen -= unused
                db.execute(
                    "UPDATE rates SET count = max(0, count - ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (unused, key_id, name, rate_lease.window),
                )
                returned.add(key_id)
            if idle or everything:
                del leases.rates[(key_id, name)]
            elif rate_lease.avail > 0:
                holding.add(key_id)
        # Other processes wait for a holder's slices only while it says it holds some, and see it only while
        # its word is fresh: a process drawing on one slice for long makes no grant to refresh it.
        stale = {k for k, (_, says) in self._announced.items() if says and k not in holding}
        for key_id in (stale | returned) - holding:
            said = self._announced.get(key_id)
            db.execute("UPDATE holders SET leasing = 0 WHERE key_id = ? AND holder = ?", (key_id, leases.holder))
            if said is not None:
                self._undo.append(functools.partial(self._announced.__setitem__, key_id, said))
                self._announced[key_id] = (said[0], 0)
        self._announce(db, dict.fromkeys(holding, 1), now)

    # --- ledger -------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
        await self._own_settlements()
        if query.key_ids is None:
            rows = self.db.execute(
                "SELECT data FROM ledger WHERE ts >= ? AND ts < ? ORDER BY ts", (query.since, query.until)
            ).fetchall()
        else:
            rows = []
            for key_id in query.key_ids:
                rows += self.db.execute(
                    "SELECT data FROM ledger WHERE key_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
                    (key_id, query.since, query.until),
                ).fetchall()
        return [ledger_from_json(row[0]) for row in rows]

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(RuntimeError):  # (a sweeper of a loop already closed)
                await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._batch:
            self._flush()
        if self.leases.budgets or self.leases.rates:
            with contextlib.suppress(StoreError, sqlite3.Error), self._write() as db:
                self._tidy(db, everything=True)
        self._stop.set()
        self.db.close()


class _Mismatch(Exception):
    """A settlement's reservation was not where its update assumed: the operation rolls back."""

    def __init__(self, keys: frozenset[str]) -> None:
        super().__init__("reservation mismatch")
        self.keys = keys
