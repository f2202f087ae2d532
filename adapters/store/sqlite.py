"""The embedded store: one SQLite file, for local serving, tests and single-host deployments.

Calls run inline on the event loop: each is a few indexed statements on a local file (tens of
microseconds in WAL mode), cheaper than a hop to a thread. Writes take the database's write lock
first (`BEGIN IMMEDIATE`), so several processes (the server, its workers, the CLI) share one file
safely and an admission's checks and increments are atomic.

A commit costs more than the statements it commits (the WAL frames it writes, ~0.15 ms here), so
admissions and settlements that arrive in the same event-loop turn share one transaction: each runs
in its own savepoint (a refused admission rolls back only itself), the batch commits once, and every
caller resumes only after that commit. Under load this turns N commits into one; alone, a call pays
what it would anyway (a batch of one needs no savepoint). Settlements run after the answer has gone,
so they wait up to `SETTLE_LINGER_S` for company: the next admission's batch, or other settlements.
Tables are `WITHOUT ROWID`, clustered by key, so a write touches few pages.

Checkpoints copy the write-ahead log into the database file (and fsync it); SQLite runs one inside
whichever commit finds the log past `AUTOCHECKPOINT_PAGES`, stalling the event loop while it copies
what is left and fsyncs. A thread with its own connection runs a passive checkpoint every
`CHECKPOINT_EVERY_S`, off the loop (SQLite releases the GIL while it does I/O), so the one in the loop
finds most pages copied already. The loop's own checkpoint cannot go: passive checkpoints never start
the log over while writes keep coming (without it the log grew by 460 MB in 20 s). At SQLite's default
of 1,000 pages a loaded server (about ten pages a request) stalls once every hundred requests, which is
its p99 at 1 connection: 11-13 ms, against 2.5-4.4 ms with no fsync at all. At 10,000 pages it stalls
ten times less often (p99 3.4-4.5 ms), and the log stays under 40 MB.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from adapters.store.records import (
    SETTLED_TTL_SECONDS,
    key_from_json,
    key_purge_after,
    key_to_json,
    ledger_from_json,
    ledger_to_json,
)
from handler.ports import (
    Admission,
    BudgetRefused,
    ConflictError,
    KeyRecord,
    LedgerItem,
    MeterSnapshot,
    RateRefused,
    Settlement,
    Store,
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
    PRIMARY KEY (key_id, ts, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
"""
T = TypeVar("T")
SETTLE_LINGER_S = 0.002
CHECKPOINT_EVERY_S = 0.1
AUTOCHECKPOINT_PAGES = 10_000
CACHE_KIB = 64 * 1024
MMAP_BYTES = 256 * 1024 * 1024
# Tolerance for float sums when comparing spend with a limit: far below a thousandth of a cent.
EPSILON = 1e-12


class SQLiteStore(Store):
    """`Store` on one SQLite file; see the module docstring."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            # The ledger grows by a line per request: a page cache that holds the hot pages of every table
            # (and reads through mmap, not a syscall per page) keeps writes from slowing as the file grows.
            self.db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self.db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            self.db.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            self.db.executescript(SCHEMA)
            self.db.execute("PRAGMA user_version = 1")
            # Settlement markers only need to outlive retries.
            self.db.execute("DELETE FROM settled WHERE at < ?", (time.time() - SETTLED_TTL_SECONDS,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
        self.path = path
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        if path != ":memory:":
            threading.Thread(target=self._checkpoints, name="sqlite-checkpoint", daemon=True).start()

    def _checkpoints(self) -> None:
        """The checkpoint thread (see the module docstring)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        except sqlite3.Error:
            return
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error:
                    pass  # busy or failing: the next round tries again
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        finally:
            db.close()

    async def _batched(self, operation: Callable[[sqlite3.Connection], T], *, linger: bool = False) -> T:
        """Run `operation` in the transaction shared by this event-loop turn (see the module docstring);
        with `linger`, the batch may wait up to `SETTLE_LINGER_S` for more operations."""
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
        if not linger and self._flush_soon is None:
            self._flush_next_turn(loop)
        elif self._flush_soon is None and self._flush_later is None:
            self._flush_later = loop.call_later(SETTLE_LINGER_S, self._flush)
        done: asyncio.Future[T] = loop.create_future()
        self._batch.append((operation, done))
        return await done

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
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            if len(batch) == 1:  # alone: the transaction itself undoes a failed operation
                operation, done = batch[0]
                try:
                    with self._write() as db:
                        outcomes.append((done, True, operation(db)))
                except StoreError:
                    raise
                except Exception as exc:
                    outcomes.append((done, False, exc))
            else:
                with self._write() as db:
                    for operation, done in batch:
                        db.execute("SAVEPOINT op")
                        try:
                            outcomes.append((done, True, operation(db)))
                            db.execute("RELEASE op")
                        except Exception as exc:  # the caller gets its own exception; the batch goes on
                            db.execute("ROLLBACK TO op")
                            db.execute("RELEASE op")
                            outcomes.append((done, False, exc))
        except Exception as exc:  # the commit itself failed: nothing of the batch happened
            failure = exc if isinstance(exc, StoreError) else StoreError(f"SQLite write failed: {exc}")
            outcomes = [(done, False, failure) for _, done in batch]
        for done, ok, value in outcomes:
            if done.cancelled():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction; any exception rolls it back."""
        try:
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

    # --- meters -------------------------------------------------------------------------------

    async def admit(self, admission: Admission) -> MeterSnapshot:
        return await self._batched(lambda db: self._admit(db, admission))

    @staticmethod
    def _admit(db: sqlite3.Connection, admission: Admission) -> MeterSnapshot:
        """Count first, check the new value, and raise if it is over: the caller's savepoint then undoes
        every count of this admission. One statement per counter instead of a read and a write."""
        snapshot = MeterSnapshot()
        for charge in admission.budgets:
            (committed,) = db.execute(
                "INSERT INTO meters (key_id, period, committed) VALUES (?, ?, ?) "
                "ON CONFLICT (key_id, period) DO UPDATE SET committed = committed + excluded.committed "
                "RETURNING committed",
                (charge.key_id, charge.period, charge.amount_usd),
            ).fetchone()
            if committed > charge.limit_usd + EPSILON:
                raise BudgetRefused(charge.key_id, charge.limit_usd - (committed - charge.amount_usd))
            snapshot.committed_usd.setdefault(charge.period, committed)
            db.execute(
                "INSERT OR IGNORE INTO reservations (key_id, id, period, amount, expires_at) VALUES (?, ?, ?, ?, ?)",
                (charge.key_id, admission.reservation_id, charge.period, charge.amount_usd, admission.expires_at),
            )
        if admission.rates:
            # Every rate counter of the admission in one statement (rpm and tpm, per key and per model).
            values: list[Any] = []
            for rate in admission.rates:
                values += (admission.key_id, rate.name, rate.window, rate.amount)
            counts = dict(
                db.execute(
                    "INSERT INTO rates (key_id, name, window, count) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(admission.rates))
                    + " ON CONFLICT (key_id, name) DO UPDATE SET "
                    "count = CASE WHEN window = excluded.window THEN count + excluded.count ELSE excluded.count END, "
                    "window = excluded.window RETURNING name, count",
                    values,
                ).fetchall()
            )
            for rate in admission.rates:
                count = counts[rate.name]
                if count > rate.limit:
                    raise RateRefused(rate.name, rate.limit, (rate.window + 1) * 60 - time.time())
                snapshot.rates[rate.name] = count
        return snapshot

    async def settle(self, settlement: Settlement) -> None:
        await self._batched(lambda db: self._settle(db, settlement), linger=True)

    @staticmethod
    def _settle(db: sqlite3.Connection, settlement: Settlement) -> None:
        item = settlement.item
        # Settled before, a retry changes nothing. The ledger line, unique by request, is the marker when
        # there is one (a random id in `settled` costs a page write per request); a bare release uses `settled`.
        if item is not None:
            written = db.execute(
                "INSERT OR IGNORE INTO ledger (key_id, ts, request_id, data) VALUES (?, ?, ?, ?)",
                (item.key_id, item.ts, item.request_id, ledger_to_json(item)),
            )
            if written.rowcount == 0:
                return
        else:
            try:
                db.execute("INSERT INTO settled (id, at) VALUES (?, ?)", (settlement.reservation_id, time.time()))
            except sqlite3.IntegrityError:
                return
        for charge in settlement.budgets:
            row = db.execute(
                "DELETE FROM reservations WHERE key_id = ? AND id = ? AND period = ? RETURNING amount",
                (charge.key_id, settlement.reservation_id, charge.period),
            ).fetchone()
            released = row[0] if row else 0.0  # an expired reservation was released already
            db.execute(
                "INSERT INTO meters (key_id, period, committed, spent) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key_id, period) DO UPDATE SET "
                "committed = max(0, committed + excluded.committed), spent = spent + excluded.spent",
                (charge.key_id, charge.period, charge.amount_usd - released, charge.amount_usd),
            )
        for rate in settlement.rates:
            if item is not None:
                db.execute(
                    "UPDATE rates SET count = max(0, count + ?) WHERE key_id = ? AND name = ? AND window = ?",
                    (rate.amount, item.key_id, rate.name, rate.window),
                )

    async def release_expired(self, key_id: str, now: float) -> float:
        released = 0.0
        with self._write() as db:
            rows = db.execute(
                "DELETE FROM reservations WHERE key_id = ? AND expires_at < ? RETURNING period, amount", (key_id, now)
            ).fetchall()
            for period, amount in rows:
                db.execute(
                    "UPDATE meters SET committed = max(0, committed - ?) WHERE key_id = ? AND period = ?",
                    (amount, key_id, period),
                )
                released += amount
        return released

    async def meter(self, key_id: str, period: str) -> MeterSnapshot:
        row = self.db.execute(
            "SELECT committed, spent FROM meters WHERE key_id = ? AND period = ?", (key_id, period)
        ).fetchone()
        snapshot = MeterSnapshot()
        if row:
            snapshot.committed_usd[period], snapshot.spent_usd[period] = row
        window = int(time.time() // 60)
        for name, count in self.db.execute(
            "SELECT name, count FROM rates WHERE key_id = ? AND window = ?", (key_id, window)
        ):
            snapshot.rates[name] = count
        return snapshot

    # --- ledger -------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
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
        if self._batch:
            self._flush()
        self._stop.set()
        self.db.close()
