"""What only the SQLite store does: shared transactions, lingering settlements, checkpoints off the loop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.store import records
from adapters.store import sqlite as sqlite_store
from adapters.store.sqlite import CHECKPOINT_EVERY_S, SQLiteStore
from handler.ports import (
    WRITE_AT_ONCE,
    BudgetRefused,
    ChildLimitReached,
    KeyPlace,
    Settlement,
    StoreError,
    UsageQuery,
)
from tests.unit.adapters.store.test_contract import PERIOD, admission, line, record, settlement


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "store.db"))
    yield opened
    await opened.close()


def traced(store: SQLiteStore) -> list[str]:
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    return statements


async def test_a_page_of_keys_reads_its_keys_not_the_whole_table(store: SQLiteStore) -> None:
    """A page of `GET /admin/keys` is read from the place it starts at (the primary key's range, or a parent's in
    `keys_parent`) and ends with the page, where every key was read for each call (`list_keys`): among 2,000 keys, a
    page of 11 keys or of a parent's children costs SQLite a small share of the work of reading them all, counted in
    its virtual machine's steps, wherever the page starts."""
    parent = record()
    await store.create_key(parent)
    for number in range(1999):
        await store.create_key(record(parent_id=parent.id, ancestors=[parent.id]) if number < 500 else record())
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # (go on)

    async def cost(read: Callable[[], Any]) -> int:
        steps[0] = 0
        store.db.set_progress_handler(step, 100)
        try:
            await read()
        finally:
            store.db.set_progress_handler(None, 0)
        return steps[0]

    whole, theirs = await cost(store.list_keys), await cost(lambda: store.list_keys(parent.id))
    middle = sorted(await store.list_keys(), key=lambda r: r.id)[1000]
    child = sorted(await store.list_keys(parent.id), key=lambda r: r.id)[250]
    for listing, after, of in (
        (None, None, whole),
        (None, KeyPlace.of(middle), whole),
        (parent.id, None, theirs),
        (parent.id, KeyPlace.of(child), theirs),
    ):
        page = await store.list_keys_page(listing, 11, after)
        assert len(page) == 11 and (after is None or page[0].id > after.key_id)
        assert await cost(lambda listing=listing, after=after: store.list_keys_page(listing, 11, after)) * 20 < of


async def test_a_lone_call_commits_once_without_savepoints(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    statements = traced(store)
    await store.admit(admission(key, 0.6))
    changes = store.db.total_changes
    with pytest.raises(BudgetRefused):
        await store.admit(admission(key, 0.6))  # alone and refused: its transaction writes nothing
    assert store.db.total_changes == changes
    assert not any(s.startswith("SAVEPOINT") for s in statements)
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 2
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.6)


async def test_a_settlement_rides_along_with_the_next_grant(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    first = admission(key, 0.5)
    await store.admit(first)
    statements = traced(store)
    settling = asyncio.create_task(store.settle(settlement(first, 0.125, line(key, 0.125))))
    await asyncio.sleep(0)  # the settlement is queued and lingers
    assert "COMMIT" not in statements
    await store.admit(admission(key, 0.45))  # more than the lease's 0.375 left: a grant
    await settling
    assert statements.count("COMMIT") == 1  # one transaction for both
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.575)
    assert meter.spent_usd[PERIOD] == pytest.approx(0.125)


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_lone_settlement_waits_only_its_linger(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 0.3)  # long beside a commit on a slow machine
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    started = time.perf_counter()
    await store.settle(settlement(adm, 0.1, line(key, 0.1)))
    assert 0.3 <= time.perf_counter() - started < 0.3 + 0.5
    assert (await store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.1)


async def test_close_writes_a_lingering_settlement(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    store = SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    settling = asyncio.create_task(store.settle(settlement(adm, 0.2, line(key, 0.2))))
    await asyncio.sleep(0)
    await store.close()
    await settling
    reopened = SQLiteStore(path)
    assert (await reopened.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.2)
    await reopened.close()


def test_a_file_that_is_no_database_is_refused_and_its_connection_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection to a file that is no database was left open, to the garbage collector: Python 3.13 (Lambda's
    runtime) warns of each connection it closes so, and under `filterwarnings = error` a later test failed."""
    path = tmp_path / "store.db"
    path.write_text("a text file, not a database: " + "x" * 200)
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recorded(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(sqlite_store.sqlite3, "connect", recorded)
    with pytest.raises(StoreError, match="file is not a database"):
        SQLiteStore(str(path))
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


async def test_checkpoints_run_off_the_serving_connection(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    key = uuid.uuid4().hex[:12]
    for _ in range(20):
        adm = admission(key, 0.01)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.01, line(key, 0.01)))
    await asyncio.sleep(CHECKPOINT_EVERY_S * 1.5)
    # `immutable=1` reads the database file alone, without its write-ahead log: the rows are there only
    # if the checkpoint thread copied them in.
    snapshot = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        assert snapshot.execute("SELECT count(*) FROM ledger").fetchone() == (20,)
    finally:
        snapshot.close()
    await store.close()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_hurry_writes_a_lingering_settlement_at_once(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 2.0)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    settling = asyncio.create_task(store.settle(settlement(adm, 0.1, line(key, 0.1))))
    await asyncio.sleep(0)
    started = time.perf_counter()
    statements = traced(store)
    store.hurry()
    assert "COMMIT" in statements  # written by the call itself, not on a later turn of the loop (a Lambda
    # invocation's end waited a turn more for it)
    await settling
    assert time.perf_counter() - started < 0.25  # not its two seconds' linger, nor the slices' sweep (0.5 s)
    assert (await store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.1)


async def test_a_buffered_invocations_settlements_are_written_without_a_turn_of_the_loop(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `WRITE_AT_ONCE` (a buffered Lambda invocation's settlements, `Gateway.settle_now`), a settlement is written
    as it is made, from a slice or on a row of its own: no linger for company (here two seconds), no turn of the
    event loop (the coroutine ends at its first step)."""
    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 2.0)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    statements = traced(store)
    at_once = WRITE_AT_ONCE.set(True)
    try:
        settling = store.settle(settlement(adm, 0.1, line(key, 0.1)))
        with pytest.raises(StopIteration):
            settling.send(None)
        assert statements.count("COMMIT") == 1
        never = admission(key, 0.2)  # (never admitted: its spend is committed anew, on the second try)
        settling = store.settle(settlement(never, 0.2, line(key, 0.2)))
        with pytest.raises(StopIteration):
            settling.send(None)
        assert statements.count("COMMIT") == 2  # (its first try, which found no reservation, rolled back)
    finally:
        WRITE_AT_ONCE.reset(at_once)
    assert not store._unsettled
    assert (await store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.3)


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_reader_sees_the_settlements_of_its_process_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settlements run after the answer, in the background, and linger for company: a usage report or meter
    read right after an answer waits for them (without their linger, here two seconds), so it shows the
    request just answered."""
    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 2.0)
    store = SQLiteStore(str(tmp_path / "store.db"))
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    item = line(key, 0.2)
    settling = asyncio.create_task(store.settle(settlement(adm, 0.2, item)))
    await asyncio.sleep(0)  # queued, lingering
    started = time.perf_counter()
    found = await store.usage(UsageQuery([key], 0, time.time() + 1))
    assert [i.request_id for i in found] == [item.request_id]
    assert time.perf_counter() - started < 1.0
    await settling
    second = admission(key, 0.1)
    await store.admit(second)
    settling = asyncio.create_task(store.settle(settlement(second, 0.1, line(key, 0.1))))
    await asyncio.sleep(0)
    assert (await store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.3)
    await settling
    await store.close()


async def test_the_log_stays_bounded_under_steady_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Passive checkpoints alone never start the log over while writes keep coming; the checkpoint thread's
    restarting one, once the log is past the threshold (here 1,000 pages, so two seconds of writes cross it
    many times), does."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 0.05)
    monkeypatch.setattr(sqlite_store, "AUTOCHECKPOINT_PAGES", 1000)
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    wal = Path(f"{path}-wal")
    key = uuid.uuid4().hex[:12]
    largest = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.0:  # writes all the while, as a loaded server does
        adm = admission(key, 0.0001, limit=1e9)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.0001, line(key, 0.0001)))
        largest = max(largest, wal.stat().st_size)
    assert 0 < largest < 3 * 1000 * (4096 + 24)  # frames of a page and a 24-byte header
    await store.close()


async def test_the_serving_connection_never_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint copies the log into the database file and fsyncs it, milliseconds that stalled every
    request when a commit on the event loop ran one: here the log grows past the threshold while the
    checkpoint thread sleeps, and nothing reaches the database file until it wakes."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 3600.0)
    monkeypatch.setattr(sqlite_store, "AUTOCHECKPOINT_PAGES", 10)
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    assert store.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    key = uuid.uuid4().hex[:12]
    for _ in range(40):
        adm = admission(key, 0.001, limit=1e9)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.001, line(key, 0.001)))
    assert Path(f"{path}-wal").stat().st_size > 20 * 4096  # well past the threshold
    # `immutable=1` reads the database file alone, without its write-ahead log.
    snapshot = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        assert snapshot.execute("SELECT count(*) FROM sqlite_master WHERE name = 'ledger'").fetchone() == (0,)
    finally:
        snapshot.close()
    assert len(await store.usage(UsageQuery([key], 0, time.time() + 1))) == 40
    await store.close()


@pytest.fixture
def memory_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder in memory (tmpfs) where the machine has one, else `tmp_path`: there a sync costs nothing, so a
    test timing writes times what the store waits for, not the disk."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(dir=shm))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_long_reader_elsewhere_never_holds_writes_up_through_a_checkpoint(
    memory_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarting checkpoint holds the write lock while it waits for readers: it must not wait for one (here
    another process reading for two seconds), or every write would wait with it. (A checkpoint also holds writes
    while it copies the log and syncs the file, hence the file in memory; and the slowest write in CI, 1.03 to
    1.12 s, was a full garbage collection of the suite's heap, hence `no_gc_pauses`: the bound is what waiting
    for the reader would cost, nothing else.)"""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 0.02)
    monkeypatch.setattr(sqlite_store, "AUTOCHECKPOINT_PAGES", 10)
    path = str(memory_dir / "store.db")
    store = SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    for _ in range(20):  # the log past the threshold
        adm = admission(key, 0.001, limit=1e9)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.001, line(key, 0.001)))
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM ledger").fetchone()  # a read transaction on the log, held
    try:
        slowest, started = 0.0, time.monotonic()
        while time.monotonic() - started < 2.0:
            began = time.perf_counter()
            await store.admit(admission(uuid.uuid4().hex[:12], 0.001))  # a new key: a grant, one commit
            slowest = max(slowest, time.perf_counter() - began)
        assert slowest < 1.0  # waiting for the reader: up to the rest of its two seconds
    finally:
        reader.execute("COMMIT")
        reader.close()
        await store.close()


async def test_settlements_of_one_batch_move_their_spend_out_of_the_lease_at_once(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    admitted = [admission(key, 0.01) for _ in range(5)]
    for adm in admitted:
        await store.admit(adm)
    statements = traced(store)
    await asyncio.gather(*(store.settle(settlement(adm, 0.002, line(key, 0.002))) for adm in admitted))
    assert sum(s.startswith("INSERT OR IGNORE INTO ledger") for s in statements) == 5
    assert sum(s.startswith("UPDATE reservations") for s in statements) == 1
    assert sum(s.startswith("INSERT INTO meters") for s in statements) == 1
    assert not any(s.startswith("SAVEPOINT") for s in statements)  # a ledger line is one statement
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.01) and meter.spent_usd[PERIOD] == pytest.approx(0.01)


async def test_a_batch_transaction_runs_statements_only_its_ledger_lines_serialized_when_queued(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every request of the process waits behind a batch's transaction: what can be done before it is.
    key = uuid.uuid4().hex[:12]
    admitted = [admission(key, 0.01) for _ in range(3)]
    for adm in admitted:
        await store.admit(adm)
    serialize = records.ledger_to_json
    in_transaction: list[bool] = []

    def recording(item: Any) -> str:
        in_transaction.append(store.db.in_transaction)
        return serialize(item)

    monkeypatch.setattr(records, "ledger_to_json", recording)
    items = [line(key, 0.002) for _ in admitted]
    await asyncio.gather(
        *(store.settle(settlement(adm, 0.002, item)) for adm, item in zip(admitted, items, strict=True))
    )
    assert in_transaction == [False, False, False]
    assert sorted(await store.usage(UsageQuery([key], 0, time.time() + 1)), key=lambda i: i.request_id) == sorted(
        items, key=lambda i: i.request_id
    )


async def test_a_file_from_before_cost_sources_is_migrated(tmp_path: Path) -> None:
    """A ledger written before `cost_source` existed gains the column; its lines read as provider-billed."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE ledger (key_id TEXT NOT NULL, ts REAL NOT NULL, request_id TEXT NOT NULL, data TEXT NOT NULL,"
        " PRIMARY KEY (key_id, ts, request_id)) WITHOUT ROWID"
    )
    item = line("oldkey", 0.5)
    legacy = {k: v for k, v in dataclasses.asdict(item).items() if k != "cost_source"}
    old.execute("INSERT INTO ledger VALUES (?, ?, ?, ?)", (item.key_id, item.ts, item.request_id, json.dumps(legacy)))
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    store = SQLiteStore(str(path))
    (found,) = await store.usage(UsageQuery(["oldkey"], 0, time.time() + 1))
    assert found.cost_source == "provider" and found.request_id == item.request_id
    estimated = replace(line("oldkey", 0.25), cost_source="estimate")
    await store.settle(Settlement(estimated.request_id, [], 0.0, [], estimated))
    await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
    assert sorted(db.execute("SELECT cost_source FROM ledger")) == [("estimate",), ("provider",)]
    db.close()


async def test_a_file_from_before_recalls_is_migrated_and_recalls_work_on_it(tmp_path: Path) -> None:
    """A version-2 file's holders gain `recall_at`; a refusal there recalls another process's slices."""
    path = tmp_path / "v2.db"
    SQLiteStore(str(path)).db.close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE holders")
    old.execute(
        "CREATE TABLE holders (key_id TEXT NOT NULL, holder TEXT NOT NULL, active_at REAL NOT NULL,"
        " leasing INTEGER NOT NULL, PRIMARY KEY (key_id, holder)) WITHOUT ROWID"
    )
    old.execute("INSERT INTO holders VALUES ('oldkey', 'oldholder', ?, 0)", (time.time(),))
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    first, second = SQLiteStore(str(path)), SQLiteStore(str(path))
    key = uuid.uuid4().hex[:12]
    for _ in range(10):
        await first.admit(admission(key, 0.01))  # a slice beyond its 0.10
    assert (await second.admit(admission(key, 0.85))).committed_usd[PERIOD] <= 1.0 + 1e-9  # recalled, then fits
    for store in (first, second):
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (sqlite_store.SCHEMA_VERSION,)
    assert db.execute("SELECT recall_at FROM holders WHERE key_id = 'oldkey'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM holders WHERE key_id = ? AND recall_at > 0", (key,)).fetchone() == (1,)
    db.close()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_write_waiting_for_another_process_keeps_the_event_loop_serving(tmp_path: Path) -> None:
    """Another process holds the write lock for 300 ms: this one's admission waits for it, and lands, but
    the event loop goes on serving meanwhile (SQLite's own wait for a lock sleeps in the loop's thread)."""
    path = str(tmp_path / "store.db")
    opened = SQLiteStore(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        key = uuid.uuid4().hex[:12]
        other.execute("BEGIN IMMEDIATE")
        releasing = asyncio.get_running_loop().run_in_executor(None, lambda: (time.sleep(0.3), other.execute("COMMIT")))
        admitting = asyncio.create_task(opened.admit(admission(key, 0.6)))
        gaps, last = [], time.perf_counter()
        while not admitting.done():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        snapshot = await admitting
        await releasing
        assert snapshot.committed_usd[PERIOD] == pytest.approx(0.6)
        assert sum(gaps) >= 0.25  # it did wait for the lock
        assert max(gaps) < 0.1  # and the loop kept turning while it did
    finally:
        other.close()
        await opened.close()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_write_that_waits_too_long_for_another_process_fails_as_the_store_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 200)
    path = str(tmp_path / "store.db")
    opened = SQLiteStore(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # held throughout
        started = time.perf_counter()
        with pytest.raises(StoreError, match="busy"):
            await opened.admit(admission(uuid.uuid4().hex[:12], 0.6))
        assert 0.2 <= time.perf_counter() - started < 2
        other.execute("COMMIT")
        key = uuid.uuid4().hex[:12]
        assert (await opened.admit(admission(key, 0.6))).committed_usd[PERIOD] == pytest.approx(0.6)  # and on
    finally:
        other.close()
        await opened.close()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_after_a_batch_statements_outside_a_transaction_wait_for_another_process_again(tmp_path: Path) -> None:
    """A batch takes the write lock without waiting and leaves SQLite's wait off (`Connection.begin_at_once`): the
    next statement outside a transaction sets it back first. Left off, a key written while another process holds
    the lock for 300 ms would fail at once as the store busy, where it waits for the lock and lands."""
    path = str(tmp_path / "store.db")
    opened = SQLiteStore(path)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        key = uuid.uuid4().hex[:12]
        adm = admission(key, 0.01)
        await opened.admit(adm)
        await opened.settle(settlement(adm, 0.01, line(key, 0.01)))  # (batches, each its `BEGIN IMMEDIATE` at once)
        assert opened.db.no_wait
        other.execute("BEGIN IMMEDIATE")
        releasing = asyncio.get_running_loop().run_in_executor(None, lambda: (time.sleep(0.3), other.execute("COMMIT")))
        started = time.perf_counter()
        await opened.create_key(record())
        await releasing
        assert time.perf_counter() - started >= 0.25  # it waited for the lock
        assert opened.db.execute("PRAGMA busy_timeout").fetchone() == (sqlite_store.BUSY_TIMEOUT_MS,)
        await opened.admit(admission(key, 0.02))  # and a batch after it takes the lock at once again
        assert opened.db.no_wait
    finally:
        other.close()
        await opened.close()


async def test_of_processes_sharing_a_file_one_checkpoints_and_another_takes_over_when_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checkpointers would each copy and sync the same log. (Two stores in one process stand for two
    processes: each opens the lock file anew, and `flock` locks of two opens exclude each other.)"""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 0.02)
    path = str(tmp_path / "store.db")
    first, second = SQLiteStore(path), SQLiteStore(path)

    async def until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10  # the threads' rounds, however busy the machine
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    await until(lambda: first.checkpointing or second.checkpointing)
    await asyncio.sleep(0.2)  # ten more rounds of each thread
    assert [first.checkpointing, second.checkpointing].count(True) == 1
    holder, other = (first, second) if first.checkpointing else (second, first)
    await holder.close()
    await until(lambda: other.checkpointing)
    assert other.checkpointing  # the lock went with the holder
    await other.close()


async def test_the_log_stays_bounded_with_two_processes_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `test_the_log_stays_bounded_under_steady_writes`, with two stores (processes) writing one file: the one
    that checkpoints keeps the log bounded for both."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 0.05)
    monkeypatch.setattr(sqlite_store, "AUTOCHECKPOINT_PAGES", 1000)
    path = tmp_path / "store.db"
    stores = [SQLiteStore(str(path)), SQLiteStore(str(path))]
    wal = Path(f"{path}-wal")
    keys = [uuid.uuid4().hex[:12] for _ in stores]
    largest = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.0:
        for store, key in zip(stores, keys, strict=True):
            adm = admission(key, 0.0001, limit=1e9)
            await store.admit(adm)
            await store.settle(settlement(adm, 0.0001, line(key, 0.0001)))
        largest = max(largest, wal.stat().st_size)
    assert [s.checkpointing for s in stores].count(True) == 1
    assert 0 < largest < 3 * 1000 * (4096 + 24)
    for store in stores:
        await store.close()


async def written(store: SQLiteStore, rounds: int) -> None:
    key = uuid.uuid4().hex[:12]
    for _ in range(rounds):
        adm = admission(key, 0.0001, limit=1e9)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.0001, line(key, 0.0001)))


async def test_a_closed_store_leaves_the_log_empty_where_another_process_holds_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log keeps the size it grew to, and is deleted only by the file's last close: with another process holding
    the file (here a connection of its own, idle), or a process that ended before its checkpoint thread closed, a
    log of hundreds of kilobytes (65 MB on a loaded server) was left with its frames, and the next open read it
    whole (3.3 million instructions at `gateway serve`'s start). A closing store truncates it."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 3600.0)  # (the log holds every frame until the close)
    path = tmp_path / "store.db"
    wal = Path(f"{path}-wal")
    store = SQLiteStore(str(path))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("SELECT count(*) FROM ledger").fetchone()  # (it has the log open, as another process would)
        await written(store, 300)
        assert wal.stat().st_size > 100 * 4096
        await store.close()
        assert wal.stat().st_size == 0
        assert other.execute("SELECT count(*) FROM ledger").fetchone() == (300,)
    finally:
        other.close()


async def test_a_closing_store_waits_for_no_other_process_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process may still be writing when a store closes (a worker of several stopping first): the log is
    then left as it is, at once, rather than the close waiting for that process's write lock (a truncating
    checkpoint waits for it, as long as the connection's busy timeout, 5 s), and that write commits."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY_S", 3600.0)
    path = tmp_path / "store.db"
    store = SQLiteStore(str(path))
    for _ in range(100):
        await store.create_key(record())  # (no slices held: the close itself writes nothing)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM settled")
        started = time.monotonic()
        await store.close()
        assert time.monotonic() - started < 0.5
        assert Path(f"{path}-wal").stat().st_size > 0
        other.execute("COMMIT")
    finally:
        other.close()
    assert not Path(f"{path}-wal").exists()  # (the file's last close, which SQLite's own checkpoint empties)


async def test_a_file_from_before_family_links_is_migrated(tmp_path: Path) -> None:
    """A version-3 file's children are linked to their parents when it is opened: those it holds, and those
    purged already that its ledger lines name, so that the parents' reports keep every child's spend."""
    path = tmp_path / "v3.db"
    store = SQLiteStore(str(path))
    live = record(parent_id="parentkey123", ancestors=["parentkey123"])
    await store.create_key(live)
    purged = replace(line("purgedchild1", 0.5), ancestors=["rootkey12345", "parentkey123"])
    await store.settle(Settlement(purged.request_id, [], 0.0, [], purged))
    await store.close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE family")
    old.execute("PRAGMA user_version = 3")
    old.commit()
    old.close()
    store = SQLiteStore(str(path))
    assert await store.child_ids("parentkey123") == sorted([live.id, "purgedchild1"])
    assert await store.child_ids("rootkey12345") == []  # (the parent's own link, from its own record or lines)
    await store.close()


def test_two_connections_on_one_file_stop_at_max_children(tmp_path: Path) -> None:
    """Two stores on one file (as two worker processes hold), each minting from its own thread and event loop:
    the count and the insert share one write transaction, so together they create no more than the limit."""
    path = str(tmp_path / "shared.db")
    parent = record()

    async def setup() -> None:
        store = SQLiteStore(path)
        await store.create_key(parent)
        await store.close()

    asyncio.run(setup())
    created: list[int] = []
    start = threading.Barrier(2)

    def worker() -> None:
        async def go() -> int:
            store = SQLiteStore(path)
            start.wait()
            made = 0
            for _ in range(20):
                try:
                    await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 5)
                    made += 1
                except ChildLimitReached:
                    pass
                await asyncio.sleep(0)
            await store.close()
            return made

        created.append(asyncio.run(go()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(created) == 5
