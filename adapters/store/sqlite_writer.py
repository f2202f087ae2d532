"""The embedded store's settlement writer: a thread with its own SQLite connection.

A settlement runs after the answer has gone, and nothing in the request path waits for it; yet while its
batch ran on the event loop (a millisecond of statements, and a commit that now and then carries a
checkpoint's copy and fsync, several milliseconds more), every request of the process stood still. Here
the batch runs in a thread: `sqlite3` lets go of the GIL while SQLite works, so the loop goes on serving,
and SQLite's own wait for another writer's lock sleeps in this thread, not the loop's. The connection
keeps SQLite's automatic checkpoint, so the copy into the database file runs here too.

Jobs queue in the order they came; the first of a batch waits up to the linger for company (or until
`hurry()`), then the batch commits once and every waiter resumes on its own event loop, in order, after
the changes the batch makes in memory (`Changes.after`) are applied there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from handler.ports import StoreError


@dataclass(slots=True)
class Changes:
    """What one transaction changes besides the file: `undo`, run if its commit fails; `after`, run once it
    succeeds; `spend`, spend settled from leases, per lease row (spent, and what of it went beyond what the
    lease held), written once before the commit."""

    undo: list[Callable[[], None]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)
    spend: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)


Operation = Callable[[sqlite3.Connection, Changes], Any]


@dataclass(slots=True)
class Job:
    """One operation of a batch and its caller's future; `single`: it writes with one statement at most,
    which SQLite undoes by itself if it fails, so it needs no savepoint."""

    operation: Operation
    done: asyncio.Future[Any]
    single: bool


# The outcome of one job: its future, whether it succeeded, and its result or exception.
Outcome = tuple[asyncio.Future[Any], bool, Any]
# Runs a batch in one transaction on the connection given (the store's `_run_batch`).
BatchRunner = Callable[[sqlite3.Connection, list[Job], Changes], list[Outcome]]


def open_connection(path: str, timeout_s: float) -> sqlite3.Connection:
    """The writer's connection (its own: SQLite transactions are per connection). A seam for tests."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout_s)


class SettlementWriter:
    """A thread that runs queued jobs in batches, one transaction each (see the module docstring).
    `configure` sets up its connection once opened; `run_batch` runs one batch on it."""

    def __init__(
        self,
        path: str,
        run_batch: BatchRunner,
        configure: Callable[[sqlite3.Connection], None],
        *,
        linger_s: float,
        timeout_s: float,
    ) -> None:
        self.path = path
        self._run_batch = run_batch
        self._configure = configure
        self._linger_s = linger_s
        self._timeout_s = timeout_s
        self._queue: list[Job] = []
        self._first_at = 0.0  # when the oldest queued job came
        self._wake = threading.Condition()
        self._hurry = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stopped: concurrent.futures.Future[None] = concurrent.futures.Future()

    def submit(self, operation: Operation, *, single: bool) -> asyncio.Future[Any]:
        """Queue `operation`; the future resolves on the caller's loop once its batch has committed."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._wake:
            if self._stopping:
                raise StoreError("the SQLite store is closed")
            first = not self._queue
            self._queue.append(Job(operation, done, single))
            if self._thread is None:  # started on first use: a process that never settles needs no thread
                self._thread = threading.Thread(target=self._serve, name="sqlite-settlements", daemon=True)
                self._thread.start()
            if first:  # (a batch already lingering takes this job along: waking the thread costs the GIL twice)
                self._first_at = time.monotonic()
                self._wake.notify()
        return done

    def hurry(self) -> None:
        """Commit what is queued without waiting for company."""
        with self._wake:
            if self._queue:
                self._hurry = True
                self._wake.notify()

    async def stop(self) -> None:
        """Commit everything queued, then end the thread and close its connection."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            started = self._thread is not None
        if started:
            await asyncio.wrap_future(self.stopped)

    def _take(self) -> list[Job] | None:
        """The next batch, once its first job has lingered (None: stopping, and nothing is left)."""
        with self._wake:
            while not self._queue and not self._stopping:
                self._wake.wait()
            while self._queue and not (self._hurry or self._stopping):
                left = self._first_at + self._linger_s - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            batch, self._queue, self._hurry = self._queue, [], False
            return batch or None

    def _serve(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while (batch := self._take()) is not None:
                if db is None:
                    try:
                        db = open_connection(self.path, self._timeout_s)
                        self._configure(db)
                    except sqlite3.Error as exc:  # this batch fails (and is spooled); the next one tries again
                        if db is not None:
                            db.close()
                        db = None
                        failure = StoreError(f"cannot open the SQLite store at {self.path}: {exc}")
                        self._deliver([(job.done, False, failure) for job in batch], [])
                        continue
                changes = Changes()
                outcomes = self._run_batch(db, batch, changes)
                self._deliver(outcomes, changes.after)
        finally:
            if db is not None:
                db.close()
            self.stopped.set_result(None)

    @staticmethod
    def _deliver(outcomes: list[Outcome], after: list[Callable[[], None]]) -> None:
        """Apply `after` and resolve each future, on the loop it belongs to (the leases are the loop's)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
        for loop, mine in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(resolve, mine, after)
            after = []


def resolve(outcomes: list[Outcome], after: list[Callable[[], None]]) -> None:
    """Apply a committed batch's `after` changes, then hand each waiter its outcome (on its event loop)."""
    for change in after:
        change()
    for done, ok, value in outcomes:
        if done.cancelled():
            continue
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)
