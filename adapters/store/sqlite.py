"""The embedded store: one SQLite file, for local serving, tests and single-host deployments.

Calls run inline on the event loop: each is a few indexed statements on a local file in WAL mode,
cheaper than a hop to a thread. A usage report is the exception: it reads every line of its window (seconds, for
hundreds of thousands), so it reads on a worker thread, on a connection of its own (`scan_usage`). Writes take the
database's write lock first (`BEGIN IMMEDIATE`), so several processes (the server, its workers, the CLI) share one
file safely and a grant's checks and increments are atomic.

The budget and rate semantics are `MeteredStore`'s (adapters/store/metered.py); this module implements its
primitives. Admissions come from slices of the counters held in memory, a cache in front of the admission
primitive (adapters/store/sqlite_slices.py, slices.py): most requests write nothing before the
upstream call; a grant, every few seconds of traffic (or every request for a while after another process
recalled the key's slices), is one transaction.

A commit costs more than the statements it commits (the WAL frames it writes), so
grants and settlements that arrive in the same event-loop turn share one transaction: each runs
in its own savepoint (a failing one rolls back only itself), the batch commits once, and every
caller resumes only after that commit. Under load this turns N commits into one; alone, a call pays
what it would anyway (a batch of one needs no savepoint). Local changes an operation makes (a slice
topped up) are undone if the commit fails. Settlements run after the answer has gone,
so they wait up to `SETTLE_LINGER_S` for company: the next grant's batch, or other settlements (but those of a
buffered Lambda invocation, which nothing is coming to join: written at once, `WRITE_AT_ONCE`).
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
bound). It never waits for a writer or a reader in its way (it would hold every write up meanwhile): it tries
again next round. Of the processes sharing a file, one checkpoints it (`Checkpointer`). While it copies, a batch
finds the write lock busy and tries again shortly, as with another process's lock: the loop never waits. At
SQLite's default of 1,000 pages a loaded server (about ten pages a request) would restart the log once every
hundred requests; at 10,000 pages ten times less often, and the log stays small (docs/performance.md has the
figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import heapq
import itertools
import logging
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from adapters.store.metered import (
    Counters,
    Reservation,
    SettleUpdate,
    usd_sum,
)
from adapters.store.records import (
    SETTLED_TTL_SECONDS,
    key_from_json,
    key_purge_after,
    key_to_json,
    ledger_from_json,
    settlement_line,
)
from adapters.store.signins import SQLiteSignIns
from adapters.store.slices import (
    Slices,
)
from adapters.store.sqlite_slices import LOWER_COMMITTED, SPEND, Liveness, SliceCache
from handler.ports import (
    LEDGER_BATCH,
    STORE_DEADLINE,
    ChildLimitReached,
    ConflictError,
    KeyPlace,
    KeyRecord,
    LedgerItem,
    MeterSnapshot,
    Settlement,
    StoreDeadlineError,
    StoredResponse,
    StoreError,
    ThreadAnswer,
    UsageQuery,
    family_root,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from adapters.store.responses import SQLiteResponses
    from adapters.store.threads import SQLiteThreads

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY, parent_id TEXT, version INTEGER NOT NULL, purge_after REAL, data TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_parent ON keys (parent_id);
-- Who minted whom, by id, kept as long as the ledger (for good): `keys` forgets a key a day after it ends, but its
-- lines stay, and its parent's reports must still find them (`child_ids`).
CREATE TABLE IF NOT EXISTS family (
    parent_id TEXT NOT NULL, child_id TEXT NOT NULL, PRIMARY KEY (parent_id, child_id)
) WITHOUT ROWID;
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
-- `leasing`: 1 while the holder keeps unused slices (the name is older than "slices"; kept for existing files).
-- `recall_at`: when the holder was last refused on the key while another held unused slices of it.
CREATE TABLE IF NOT EXISTS holders (
    key_id TEXT NOT NULL, holder TEXT NOT NULL, active_at REAL NOT NULL, leasing INTEGER NOT NULL,
    recall_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, holder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS holders_active ON holders (active_at);
"""
# A key and its descendants at every depth, by the links `child_ids` reads (the `family` table and the keys naming
# a parent); UNION drops a key found twice.
FAMILY_OF = """
WITH RECURSIVE family_of(id) AS (
    SELECT ?
    UNION SELECT family.child_id FROM family JOIN family_of ON family.parent_id = family_of.id
    UNION SELECT keys.id FROM keys JOIN family_of ON keys.parent_id = family_of.id
)
SELECT id FROM family_of
"""
# The live keys under a root key, at every depth, through live keys only (one under a purged key is not live either):
# `create_child`'s count, bounded by the limit it checks (the index on `parent_id` finds each level).
LIVE_FAMILY = """
WITH RECURSIVE under(id) AS (
    SELECT id FROM keys WHERE parent_id = :root AND (purge_after IS NULL OR purge_after >= :now)
    UNION ALL SELECT keys.id FROM keys JOIN under ON keys.parent_id = under.id
    WHERE keys.purge_after IS NULL OR keys.purge_after >= :now
)
SELECT count(*) FROM under
"""
T = TypeVar("T")
logger = logging.getLogger("gateway")
SETTLE_LINGER_S = 0.01
# How long a write waits for another process's lock before it fails, and how often a batch tries again.
BUSY_TIMEOUT_MS = 5000
BUSY_RETRY_S = 0.0005
UNBOUNDED_WAIT = contextlib.nullcontext()  # (`_lock_wait` with no deadline: SQLite's own `BUSY_TIMEOUT_MS`)
CHECKPOINT_EVERY_S = 0.1
AUTOCHECKPOINT_PAGES = 10_000
# How long a closing store waits for its checkpoint thread's last checkpoint (it waits for no one: this bounds the
# copy of what is left of the log) before it truncates the log itself (`_truncated_log`).
CLOSE_CHECKPOINT_WAIT_S = 2.0
CACHE_KIB = 64 * 1024
MMAP_BYTES = 256 * 1024 * 1024


SCHEMA_VERSION = 4
# The links of `family` an older file already knows: every key it holds with a parent, and every parent a line of
# the ledger names (the last of its `ancestors`), which finds the children whose records were purged already.
BACKFILL_FAMILY = """
INSERT OR IGNORE INTO family (parent_id, child_id) SELECT parent_id, id FROM keys WHERE parent_id IS NOT NULL;
INSERT OR IGNORE INTO family (parent_id, child_id)
    SELECT DISTINCT json_extract(data, '$.ancestors[#-1]'), key_id FROM ledger
    WHERE json_array_length(data, '$.ancestors') > 0;
"""


def migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an older gateway to `SCHEMA_VERSION` (the tables `SCHEMA` creates are new).
    Version 2: the ledger's `cost_source` column; older lines had a provider's usage behind them. Version 3:
    the holders' `recall_at` (adapters/store/slices.py); no older holder was refused that way. Version 4: the
    `family` links, filled from the keys and the ledger the file holds (`BACKFILL_FAMILY`; one pass over the
    ledger, once)."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # another process opening the same file migrates it once, not twice
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
        if "cost_source" not in columns:
            db.execute("ALTER TABLE ledger ADD COLUMN cost_source TEXT NOT NULL DEFAULT 'provider'")
        if "recall_at" not in {row[1] for row in db.execute("PRAGMA table_info(holders)")}:
            db.execute("ALTER TABLE holders ADD COLUMN recall_at REAL NOT NULL DEFAULT 0")
        if version < 4:
            for statement in BACKFILL_FAMILY.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class Checkpointer:
    """Which of the processes sharing a file checkpoints it: the one holding an exclusive lock (`flock`) on the
    file at `path`. Every process's checkpoint thread asks each round, without waiting; the first to get the lock
    keeps it until its store closes or the process ends (the kernel then drops it), and another takes over at its
    next round. Two checkpointers would each copy and sync the same log: with two workers, the checkpoint
    threads' share of a worker's CPU doubled, from 3.6 % to 7.0 %."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def elected(self) -> bool:
        if self.fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return True  # no lock file where the database is (a read-only folder): checkpoint, as alone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another process checkpoints
        self.fd = fd
        return True

    def resign(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_execute = sqlite3.Connection.execute
_execute_many = sqlite3.Connection.executemany


class Connection(sqlite3.Connection):
    """The store's connection, which knows whether SQLite's wait for another process's lock on it (its busy timeout,
    `BUSY_TIMEOUT_MS`) is off. A batch takes the write lock without waiting (`begin_at_once`): the timeout is set to
    0 for its `BEGIN IMMEDIATE`, and stays so after it (`no_wait`), until a statement outside a transaction comes, which
    may wait for a lock (a read, another write's `BEGIN IMMEDIATE`): the timeout is set back first. A statement in a
    write transaction holds the lock it needs and waits for none. (Set back after every batch, the timeout took two
    PRAGMA statements a batch, each parsed anew, since SQLite applies a PRAGMA's setting as it compiles the statement:
    15,700 instructions each, where a SELECT 1 takes 7,400; a warm invocation's store work was 390,000.)"""

    no_wait = False  # the busy timeout is 0, as a batch's `begin_at_once` left it

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        if self.no_wait and not self.in_transaction:
            self.busy_timeout(BUSY_TIMEOUT_MS)
        return _execute(self, sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        if self.no_wait and not self.in_transaction:
            self.busy_timeout(BUSY_TIMEOUT_MS)
        return _execute_many(self, sql, parameters)

    def busy_timeout(self, ms: int) -> None:
        """How long the statements that follow wait for another process's lock."""
        _execute(self, f"PRAGMA busy_timeout = {ms}")
        self.no_wait = False

    def begin_at_once(self) -> None:
        """`BEGIN IMMEDIATE` with no wait: SQLITE_BUSY at once if another connection holds the write lock."""
        if not self.no_wait:
            _execute(self, "PRAGMA busy_timeout = 0")
            self.no_wait = True
        _execute(self, "BEGIN IMMEDIATE")


class SQLiteStore(SQLiteSignIns, SliceCache):
    """`Store` on one SQLite file; see the module docstring."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db: Connection = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000, factory=Connection
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
        self.db.create_function("usd_sum", 2, usd_sum, deterministic=True)  # (every USD counter moves by it)
        try:
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
            # A file that is no database opens and fails at its first statement: its connection is closed here, not
            # left to the garbage collector (Python 3.13, Lambda's, warns of each one it closes).
            self.db.close()
            raise StoreError(f"cannot open the SQLite store at {path}: {exc}") from exc
        self.path = path
        # Where settlements this file refused wait (handler/pipeline/spool.py); in memory for an in-memory store.
        self.spool_path = None if path == ":memory:" else f"{path}-settlements.jsonl"
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], bool]] | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        self._busy_since: float | None = None  # since when a batch has waited for another process's lock
        # Local changes to undo if the batch's commit fails, and to make once it succeeds.
        self._undo: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        # Spend settled from slices in this batch, per slice row (spent, and what of it went beyond what the
        # slice held): written once, before the commit.
        self._spend: dict[tuple[str, str, str], tuple[float, float]] = {}
        self.slices = Slices()
        self._announced: dict[str, tuple[float, int]] = {}  # key id -> (active_at, holds unused slices) last written
        self._sweeper: asyncio.Task[None] | None = None
        self._unsettled: set[asyncio.Future[None]] = set()  # settlements queued and not yet committed
        # Admissions refused while another process may hold unused slices of their keys (see `admit`).
        self._recall: set[str] = set()
        # This process's lock as a holder of slices, which tells other processes once it has ended (`Liveness`).
        self._liveness = Liveness(None if path == ":memory:" else f"{path}-holders")
        self._closed = False
        self._stop = threading.Event()
        self._checkpointer = Checkpointer(f"{path}-checkpointer.lock")
        self._checkpoint_thread: threading.Thread | None = None
        if path != ":memory:":
            self._checkpoint_thread = threading.Thread(target=self._checkpoints, name="sqlite-checkpoint", daemon=True)
            self._checkpoint_thread.start()

    @property
    def checkpointing(self) -> bool:
        """Whether this process is the one that checkpoints the file (see `Checkpointer`)."""
        return self._checkpointer.fd is not None

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
                if not self._checkpointer.elected():
                    continue
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
            self._checkpointer.resign()

    async def _batched(
        self, operation: Callable[[sqlite3.Connection], T], *, linger: bool = False, single: bool = False
    ) -> T:
        """Run `operation` in the transaction shared by this event-loop turn (see `_enqueue`). Under a deadline
        (`STORE_DEADLINE`, a request's) the wait ends there, and the operation, given up, is not run: another
        process holding the write lock held an admission for up to `BUSY_TIMEOUT_MS`, past the request's deadline."""
        done = self._enqueue(operation, linger=linger, single=single)
        by = STORE_DEADLINE.get()
        if by is None:
            return await done
        try:
            async with asyncio.timeout_at(by):
                return await done
        except TimeoutError:
            raise StoreDeadlineError("the SQLite store's write lock was not free by the deadline") from None

    def _enqueue(
        self,
        operation: Callable[[sqlite3.Connection], T],
        *,
        linger: bool = False,
        single: bool = False,
        now: bool = False,
    ) -> asyncio.Future[T]:
        """Queue `operation` in the transaction shared by this event-loop turn (see the module docstring);
        with `linger`, the batch may wait up to `SETTLE_LINGER_S` for more operations; with `now`, no write of
        the batch is scheduled: the caller writes it at once (`_write_now`). `single`: the operation writes with
        one statement at most, which SQLite undoes by itself if it fails, so it needs no savepoint. The future
        resolves once the batch has committed."""
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
        if not now:  # (with `now`, the caller writes the batch)
            if not linger and self._flush_soon is None:
                self._flush_next_turn(loop)
            elif self._flush_soon is None and self._flush_later is None:
                self._flush_later = loop.call_later(SETTLE_LINGER_S, self._flush)
        done: asyncio.Future[T] = loop.create_future()
        self._batch.append((operation, done, single))
        return done

    def _write_now(self) -> None:
        """Write the batch now, with what it holds (unless its write is due on this turn of the loop already): for
        an operation nothing else is coming to join (`WRITE_AT_ONCE`)."""
        if self._flush_soon is None:
            self._flush()

    def hurry(self) -> None:
        """Write the lingering batch now, not on the loop's next turn: whoever hurries it (the end of a Lambda
        invocation, `Gateway.drain`; a reader of this process's settlements) waits for
        nothing else to join it, and a turn of the loop costs a warm invocation more than the call itself."""
        if self._flush_later is not None and self._flush_soon is None:
            self._flush()

    def _flush_next_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush on the loop's next turn, not after a lingering settlement's wait."""
        if self._flush_later is not None:
            self._flush_later.cancel()
            self._flush_later = None
        self._flush_soon = loop.call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._batch = self._batch or [], None
        if any(done.cancelled() for _, done, _ in batch):  # given up (a deadline, a shutdown): not run
            self._unsettled.difference_update(done for _, done, _ in batch if done.cancelled())
            batch = [entry for entry in batch if not entry[1].cancelled()]
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
        unsettled = self._unsettled
        for done, ok, value in outcomes:
            unsettled.discard(done)
            if done.cancelled():
                continue
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

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
            self.db.begin_at_once()
        except sqlite3.Error as exc:
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

    def _lock_wait(self) -> contextlib.AbstractContextManager[None]:
        """SQLite's own wait for another process's write lock (`busy_timeout`, which sleeps in the event loop's
        thread), ended by the context's deadline (`STORE_DEADLINE`, a request's) where that is sooner than
        `BUSY_TIMEOUT_MS`; a `StoreDeadlineError` if the deadline has passed, or passes while it waits."""
        by = STORE_DEADLINE.get()
        return UNBOUNDED_WAIT if by is None else self._lock_wait_until(by)

    @contextmanager
    def _lock_wait_until(self, by: float) -> Iterator[None]:
        left_ms = int((by - asyncio.get_running_loop().time()) * 1000)
        if left_ms <= 0:
            raise StoreDeadlineError("the deadline had passed")
        if left_ms >= BUSY_TIMEOUT_MS:
            yield
            return
        self.db.busy_timeout(left_ms)
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise StoreDeadlineError(f"the SQLite store's write lock was not free by the deadline: {exc}") from exc
            raise
        finally:
            self.db.busy_timeout(BUSY_TIMEOUT_MS)

    @contextmanager
    def _write(self, begun: bool = False) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (`begun`: its BEGIN is done); any exception rolls it back."""
        try:
            if not begun:
                with self._lock_wait():
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

    # --- stored responses (adapters/store/responses.py) and thread answers (threads.py), with the first of each ---

    @functools.cached_property
    def _stored_responses(self) -> SQLiteResponses:
        from adapters.store.responses import SQLiteResponses

        return SQLiteResponses(self)

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False) -> None:
        await self._stored_responses.put_response(stored, held, newer_only=newer_only)

    async def responses_holding(self, item_id: str) -> list[str]:
        return await self._stored_responses.responses_holding(item_id)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        return await self._stored_responses.get_response(response_id)

    async def index_held(self, held_in: Callable[[StoredResponse], Sequence[str]]) -> int:
        return await self._stored_responses.index_held(held_in)

    async def delete_response(self, response_id: str) -> bool:
        return await self._stored_responses.delete_response(response_id)

    @functools.cached_property
    def _thread_answers(self) -> SQLiteThreads:
        from adapters.store.threads import SQLiteThreads

        return SQLiteThreads(self)

    async def put_thread_answer(self, answer: ThreadAnswer) -> None:
        await self._thread_answers.put_thread_answer(answer)

    async def get_thread_answer(self, message_id: str) -> ThreadAnswer | None:
        return await self._thread_answers.get_thread_answer(message_id)

    # --- keys ---------------------------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        with self._write() as db:
            self._insert_key(db, record)

    async def create_child(self, record: KeyRecord, max_children: int, root_home: str | None = None) -> None:
        """The count of the root's live family (`LIVE_FAMILY`) and the insert in one `BEGIN IMMEDIATE`
        transaction: it holds the file's write lock from before the count to the commit, so no other connection
        (another worker process, the CLI) inserts a child in between; a count read outside it let two workers
        mint four children of a parent allowed three."""
        root = family_root(record)
        if root is None:
            raise ValueError("create_child needs a record with a parent_id")
        with self._write() as db:
            (live,) = db.execute(LIVE_FAMILY, {"root": root, "now": time.time()}).fetchone()
            if live >= max_children:
                raise ChildLimitReached(root, max_children)
            self._insert_key(db, record)

    @staticmethod
    def _insert_key(db: sqlite3.Connection, record: KeyRecord) -> None:
        """Insert `record` (and its link to its parent) in the open transaction, forgetting purged keys."""
        db.execute("DELETE FROM keys WHERE purge_after IS NOT NULL AND purge_after < ?", (time.time(),))
        try:
            db.execute(
                "INSERT INTO keys (id, parent_id, version, purge_after, data) VALUES (?, ?, ?, ?, ?)",
                (record.id, record.parent_id, record.version, key_purge_after(record), key_to_json(record)),
            )
        except sqlite3.IntegrityError as exc:
            raise ConflictError(f"key {record.id} exists") from exc
        if record.parent_id is not None:
            db.execute(
                "INSERT OR IGNORE INTO family (parent_id, child_id) VALUES (?, ?)", (record.parent_id, record.id)
            )

    async def child_ids(self, parent_id: str, root_home: str | None = None) -> list[str]:
        """From `family`, and the live keys naming the parent (a key an older gateway sharing the file created
        after this one migrated it has no link). One file is one region: `root_home` changes nothing."""
        rows = self.db.execute(
            "SELECT child_id FROM family WHERE parent_id = ? UNION SELECT id FROM keys WHERE parent_id = ?",
            (parent_id, parent_id),
        )
        return sorted(row[0] for row in rows.fetchall())

    async def family_ids(self, key_id: str, root_home: str | None = None) -> list[str]:
        """One recursive query over what `child_ids` reads (`FAMILY_OF`): a family of 10,002 keys took 0.24 s walked
        parent by parent, with the event loop held, and takes 0.04 s."""
        return [row[0] for row in self.db.execute(FAMILY_OF, (key_id,)).fetchall()]

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
        return await self.list_keys_page(parent_id, -1)  # (every one: SQLite reads `LIMIT -1` as no bound)

    async def list_keys_page(self, parent_id: str | None, limit: int, after: KeyPlace | None = None) -> list[KeyRecord]:
        """`list_keys`'s order (by id), read from `after`'s id on and no further than the page: the primary key's
        range, or a parent's in `keys_parent` (which holds the id beside the parent's, as an index of a `WITHOUT
        ROWID` table does)."""
        clauses = ["(purge_after IS NULL OR purge_after >= ?)"]
        values: list[float | str] = [time.time()]
        if parent_id is not None:
            clauses.append("parent_id = ?")
            values.append(parent_id)
        if after is not None:
            clauses.append("id > ?")
            values.append(after.key_id)
        rows = self.db.execute(
            f"SELECT data FROM keys WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?", (*values, limit)
        )
        return [key_from_json(row[0]) for row in rows.fetchall()]

    # --- meters (the primitives of `MeteredStore`, behind the in-memory slices) ---------------------

    async def _write_settlement(self, settlement: Settlement, updates: list[SettleUpdate]) -> frozenset[str]:
        line = settlement_line(settlement)
        done = self._settling(lambda db: self._settle(db, settlement, updates, line))
        try:
            await done
        except _Mismatch as mismatch:
            return mismatch.keys
        return frozenset()

    async def _own_settlements(self) -> None:
        """Wait for this process's settlements still lingering for company, so that a reader here sees what
        it settled: a usage report or meter read right after an answer shows that request."""
        loop = asyncio.get_running_loop()
        pending = [done for done in self._unsettled if done.get_loop() is loop]
        if pending:
            self.hurry()
            await asyncio.wait(pending)  # (not gather: a reader cancelled must not cancel the settlements)

    def _mark_settled(self, db: sqlite3.Connection, settlement: Settlement, line: str | None) -> bool:
        """Record that the settlement is applied; False if it was before. The ledger line (`line`: its
        `settlement_line`), unique by request, is the marker when there is one (a random id in `settled` costs a
        page write per request); a bare release uses `settled`."""
        self._after.append(lambda: self._settled(settlement.reservation_id))
        item = settlement.item
        if item is not None:
            written = db.execute(
                "INSERT OR IGNORE INTO ledger (key_id, ts, request_id, data, cost_source) VALUES (?, ?, ?, ?, ?)",
                (item.key_id, item.ts, item.request_id, line, item.cost_source),
            )
            return written.rowcount != 0
        try:
            db.execute("INSERT INTO settled (id, at) VALUES (?, ?)", (settlement.reservation_id, time.time()))
        except sqlite3.IntegrityError:
            return False
        return True

    def _settle(
        self, db: sqlite3.Connection, settlement: Settlement, updates: list[SettleUpdate], line: str | None
    ) -> None:
        """`_write_settlement` in the batch's transaction: a reservation not where its update assumes raises
        `_Mismatch`, which rolls the operation back."""
        if not self._mark_settled(db, settlement, line):
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

    async def _expired_reservations(self, key_id: str, now: float) -> list[Reservation]:
        """Those whose expiry passed, and the slices of processes that have ended (`Liveness`), which held the
        budget until they expired though nobody could spend it any more."""
        rows = self.db.execute(
            "SELECT id, period, amount, expires_at FROM reservations WHERE key_id = ? "
            "AND (expires_at < ? OR id LIKE 'slice:%')",
            (key_id, now),
        ).fetchall()
        ended: dict[str, bool] = {}
        found = []
        for row in rows:
            if row[3] >= now:  # a live slice's row: released if its holder has ended
                holder = row[0].split(":")[1]
                if holder not in ended:
                    ended[holder] = self._liveness.gone(holder)
                if not ended[holder]:
                    continue
            found.append(Reservation(key_id, *row))
        return found

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
            slice_ = self.slices.budgets.get((key_id, period))
            if slice_ is not None and slice_.expires_at > now:
                committed = usd_sum(committed, -slice_.avail)
            counters.committed[period] = committed
        window = int(now // 60)
        for name, count in self.db.execute(
            "SELECT name, count FROM rates WHERE key_id = ? AND window = ?", (key_id, window)
        ):
            rate_slice = self.slices.rates.get((key_id, name))
            counters.rates[name] = (
                window,
                count - (rate_slice.avail if rate_slice and rate_slice.window == window else 0),
            )
        return counters

    # --- ledger -------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
        """`scan_usage`'s lines, all of them (`gateway usage`, tests)."""
        lines: list[LedgerItem] = []
        await self.scan_usage(query, lines.extend)
        return lines

    async def scan_usage(self, query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
        """Read, parsed and consumed in a worker thread, on a read-only connection of its own (`scan_ledger_apart`):
        a report over 300,000 lines took 5.7 s on the event loop, and every other request of the process waited as
        long. WAL lets that reader run beside this connection's writes, and SQLite lets go of the GIL while it reads.
        An in-memory store has no file another connection could open: it reads here."""
        await self._own_settlements()
        if self.path == ":memory:":
            scan_ledger(self.db, query, consume)
            return
        await asyncio.to_thread(
            scan_ledger_apart, self.path, functools.partial(scan_ledger, query=query, consume=consume)
        )

    async def scan_usage_newest(
        self, query: UsageQuery, consume: Callable[[list[LedgerItem]], bool], batch: int = LEDGER_BATCH
    ) -> None:
        """`scan_usage`'s lines newest first (`scan_ledger_newest`), until `consume` has what it needs: the read ends
        there, a listing's page reading its lines and few more."""
        await self._own_settlements()
        read = functools.partial(scan_ledger_newest, query=query, consume=consume, batch=batch)
        if self.path == ":memory:":
            read(self.db)
            return
        await asyncio.to_thread(scan_ledger_apart, self.path, read)

    async def close(self) -> None:
        """Write what is batched, give back the unused slices this process holds (`_tidy`: else the file counts
        them as committed until another process needs them and finds this one ended, `Liveness`), stop the
        checkpoint thread and cut the log (`_truncated_log`). Under a deadline (`STORE_DEADLINE`: a server's
        shutdown, `Gateway.close_store_before_exit`) every wait ends by it: for another process's write lock (slices
        not given back then are logged) and for the checkpoint thread. A second close does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(RuntimeError):  # (a sweeper of a loop already closed)
                await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._batch:
            self._flush()
        returned = True
        if self.slices.budgets or self.slices.rates:
            try:
                with self._write() as db:
                    self._tidy(db, everything=True)
            except (StoreError, sqlite3.Error) as exc:
                returned = False
                logger.warning(
                    "closing the SQLite store: the unused slices of the budgets and rate limits this process holds "
                    "were not given back (%s); another process refused for want of them releases them",
                    exc,
                )
        self._liveness.release(returned and not self.slices.budgets)
        self._stop.set()
        if self._checkpoint_thread is not None:
            by = STORE_DEADLINE.get()
            left = CLOSE_CHECKPOINT_WAIT_S if by is None else by - asyncio.get_running_loop().time()
            self._checkpoint_thread.join(max(0.0, min(CLOSE_CHECKPOINT_WAIT_S, left)))
            self._truncated_log()
        self.db.close()

    def _truncated_log(self) -> None:
        """The write-ahead log copied into the database file and cut to nothing, where no other process is in the
        way. The log keeps the size it grew to (a loaded server's reached 65 MB), and one left with frames in it
        (a process that ended before its checkpoint thread closed, or another process still holding the file, so
        that no close was the last) would be read whole by the next open: 3.3 million instructions at `gateway
        serve`'s start. Nothing waits (a busy timeout of 0): a passive checkpoint copies what no reader or writer
        of another process holds, and only a log copied whole is truncated (a truncating checkpoint holds the
        write lock; it then has nothing left to copy); busy, the log is left as it is, for the next checkpoint."""
        with contextlib.suppress(sqlite3.Error):
            self.db.busy_timeout(0)
            busy, log_pages, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and log_pages == copied:
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()


def scan_ledger(db: sqlite3.Connection, query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
    """The lines of `query` on `db`, each key's in time order, handed to `consume` `LEDGER_BATCH` at a time."""
    selections: list[tuple[str, tuple[Any, ...]]]
    if query.key_ids is None:
        selections = [("SELECT data FROM ledger WHERE ts >= ? AND ts < ? ORDER BY ts", (query.since, query.until))]
    else:
        selections = [
            (
                "SELECT data FROM ledger WHERE key_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
                (key_id, query.since, query.until),
            )
            for key_id in query.key_ids
        ]
    for statement, values in selections:
        cursor = db.execute(statement, values)
        while rows := cursor.fetchmany(LEDGER_BATCH):
            consume([ledger_from_json(row[0]) for row in rows])


def scan_ledger_newest(
    db: sqlite3.Connection, query: UsageQuery, consume: Callable[[list[LedgerItem]], bool], batch: int
) -> None:
    """The lines of `query` on `db` newest first, handed to `consume` `batch` at a time until it returns True. Each
    key's lines are read backwards on the primary key (all keys' on `ledger_ts`), a row a step, and the keys' merged
    by time: a row is read only once the merge needs it, and parsed only once it is handed on."""
    statement = "SELECT ts, data FROM ledger WHERE {} ts >= ? AND ts < ? ORDER BY ts DESC"
    if query.key_ids is None:
        cursors = [db.execute(statement.format(""), (query.since, query.until))]
    else:
        cursors = [
            db.execute(statement.format("key_id = ? AND"), (key_id, query.since, query.until))
            for key_id in dict.fromkeys(query.key_ids)
        ]
    rows = heapq.merge(*cursors, key=operator.itemgetter(0), reverse=True)
    while chunk := list(itertools.islice(rows, batch)):
        if consume([ledger_from_json(data) for _, data in chunk]):
            return


def scan_ledger_apart(path: str, read: Callable[[sqlite3.Connection], None]) -> None:
    """`read` (`scan_ledger`, `scan_ledger_newest`) on a read-only connection opened for it, in one read transaction
    (one snapshot of the file for every key's lines), for a worker thread: the store's own connection belongs to the
    event loop's thread."""
    try:
        db = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the SQLite store at {path} to read the ledger: {exc}") from exc
    try:
        db.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
        db.execute("BEGIN")
        read(db)
    except sqlite3.Error as exc:
        raise StoreError(f"reading the ledger failed: {exc}") from exc
    finally:
        db.close()


class _Mismatch(Exception):
    """A settlement's reservation was not where its update assumed: the operation rolls back."""

    def __init__(self, keys: frozenset[str]) -> None:
        super().__init__("reservation mismatch")
        self.keys = keys
