"""Slices of the embedded store's counters (adapters/store/slices.py): admissions in memory, exact
counts, slices that go back, and what several processes on one file see. Two `SQLiteStore`s on one file
stand for two processes: they share nothing but the file."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.store import sqlite_slices as slices
from adapters.store.metered import usd_sum
from adapters.store.slices import RENEW_S, slice_size
from adapters.store.sqlite import SQLiteStore
from handler.ports import Admission, BudgetCharge, BudgetRefused, RateCharge, RateRefused, Settlement, StoreError
from tests.support.serve import ROOT
from tests.unit.adapters.store.test_contract import PERIOD, admission, line, settlement, this_minute
from tests.unit.adapters.store.test_sqlite import traced


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
async def store(path: str) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(path)
    yield opened
    await opened.close()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweeps every 20 ms, slices idle after 100 ms, a refusal waits 60 ms for others' slices."""
    monkeypatch.setattr(slices, "SWEEP_S", 0.02)
    monkeypatch.setattr(slices, "IDLE_S", 0.1)
    monkeypatch.setattr(slices, "RECALL_WAIT_S", 0.06)


def test_a_slice_is_what_the_request_needs_at_first_then_follows_the_traffic() -> None:
    assert slice_size(0.01, 10.0, used=0.0, since_s=0.0, exact=False) == 0.01  # no traffic seen yet
    assert slice_size(0.01, 10.0, used=0.5, since_s=1.0, exact=False) == pytest.approx(1.0)  # two seconds' worth
    assert slice_size(0.01, 1.0, used=5.0, since_s=1.0, exact=False) == pytest.approx(0.25)  # a quarter of the room
    assert slice_size(0.01, 0.02, used=5.0, since_s=1.0, exact=False) == 0.01  # near the limit: the need
    assert slice_size(0.01, 10.0, used=5.0, since_s=1.0, exact=True) == 0.01  # another process active
    assert slice_size(0.01, 100.0, used=0.5, since_s=0.3, exact=False) == 3.333333  # whole micro-dollars beyond


def test_usd_figures_add_as_the_decimals_they_print_as() -> None:
    """As integers of 1e-12 USD where every figure has at most 12 decimals and is under $4,096; else as decimals: the
    same sums either way, none with a float's noise."""
    assert usd_sum(0.1, -0.3) == -0.2  # floats: -0.19999999999999998
    assert usd_sum(0.7, 0.1, -0.3) == 0.5  # floats: 0.49999999999999994
    assert usd_sum(5000.1, 0.1) == 5000.2  # (past $4,096) floats: 5000.200000000001
    assert usd_sum(1e-13, 2e-13) == 3e-13  # (13 decimals) floats: 3.0000000000000003e-13
    assert usd_sum(0.0, 0.25) == 0.25 and usd_sum() == 0.0


def test_usd_sums_are_the_decimal_sums_of_the_figures_whichever_way_they_are_added() -> None:
    """Up to four figures under $2,048 add as floats of whole pico-dollars, others as integers or decimals: each sum
    is the float nearest the sum of the figures' decimals, at the bounds too (a half pico-dollar, $2,048 and $4,096,
    four figures and five, large sums, 13 decimals)."""
    draw = random.Random(7)
    edges = [0.0, -0.0, 2048.0, -2048.0, 2047.999999999999, 2047.123456789013, 4095.999999999999, 4096.0, 5e-13, 1e-13]
    for _ in range(20_000):
        figures = []
        for _ in range(draw.randint(1, 6)):
            kind = draw.random()
            if kind < 0.5:  # at most 12 decimals
                figure = draw.randint(-(10**16), 10**16) / 10 ** draw.randint(0, 12)
            elif kind < 0.8:
                figure = draw.uniform(-3000, 3000)
            else:
                figure = draw.choice(edges)
            figures.append(figure)
        assert usd_sum(*figures) == float(sum(map(Decimal, map(repr, figures)))), figures
    # (five figures whose pico-dollars pass 2**53: added as floats, the sum would lose its last one)
    five = [1971.794944361681, 2039.449504623497, 2026.520119947076, 1926.419245586733, 1907.977849597058]
    assert usd_sum(*five) == float(sum(map(Decimal, map(repr, five))))


async def test_admissions_from_a_lease_write_nothing_and_count_exactly(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    await store.admit(admission(key, 0.01))
    await store.admit(admission(key, 0.01))  # the second grant takes a slice for the traffic seen
    statements = traced(store)
    committed = [(await store.admit(admission(key, 0.01))).committed_usd[PERIOD] for _ in range(20)]
    assert statements == []
    assert committed == pytest.approx([0.01 * n for n in range(3, 23)])
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.22)


async def test_rate_counts_come_from_a_lease_and_token_settlements_stay_in_it(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    window = this_minute()

    def tokens(estimate: int) -> Admission:
        rates = [RateCharge("rpm", window, 100, 1), RateCharge("tpm", window, 10_000, estimate)]
        return Admission(uuid.uuid4().hex, key, [], rates, time.time() + 60)

    first = tokens(100)
    assert (await store.admit(first)).rates == {"rpm": 1, "tpm": 100}
    second = tokens(100)
    assert (await store.admit(second)).rates == {"rpm": 2, "tpm": 200}
    statements = traced(store)
    # 40 tokens used of the 100 estimated: the difference goes back to the slice, not to the file.
    adjust = [RateCharge("tpm", window, 10_000, -60)]
    await store.settle(Settlement(second.reservation_id, [], 0.0, adjust, line(key, 0.0)))
    assert not any("UPDATE rates" in s for s in statements)
    assert (await store.meter(key, PERIOD)).rates == {"rpm": 2, "tpm": 140}
    # A settlement for a minute the slice no longer covers is written to the file, as before slices.
    stale = Settlement(first.reservation_id, [], 0.0, [RateCharge("tpm", window - 1, 10_000, 5)], line(key, 0.0))
    await store.settle(stale)
    assert any("UPDATE rates" in s for s in statements)


async def test_idle_slices_go_back_so_other_processes_read_exact_counters(path: str, quick: None) -> None:
    holder, reader = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    window = this_minute()
    for _ in range(5):
        rpm = [RateCharge("rpm", window, 1000, 1)]
        await holder.admit(
            Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.01)], rpm, time.time() + 60)
        )
    seen = await reader.meter(key, PERIOD)
    assert seen.committed_usd[PERIOD] > 0.05 and seen.rates["rpm"] > 5  # the holder's unused slices count
    assert (await holder.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.05)  # not to the holder
    await asyncio.sleep(0.3)
    seen = await reader.meter(key, PERIOD)
    assert seen.committed_usd[PERIOD] == pytest.approx(0.05) and seen.rates["rpm"] == 5
    await holder.close()
    await reader.close()


async def test_slices_given_back_leave_committed_exactly_at_spent(path: str, quick: None) -> None:
    """What a slice holds moved by float arithmetic with each request admitted from it and settled, and the file's
    committed by what the slice gave back: on a $100 budget, three requests that reserved $0.70 and spent $0.10
    each, and one that reserved $0.10 and spent $0.30, left committed at 0.5999999999999943 beside a spent of
    0.6000000000000001 for every process, with nothing in flight (committed below spent, for good). Slices are whole
    micro-dollars beyond a request's need, and every figure of theirs and of the file moves by decimals (`usd_sum`)."""
    holder, reader = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    for reserved, actual in [(0.7, 0.1), (0.7, 0.1), (0.7, 0.1), (0.1, 0.3)]:
        adm = admission(key, reserved, limit=100.0)
        await holder.admit(adm)
        await holder.settle(settlement(adm, actual, line(key, actual)))
    assert holder.db.execute("SELECT count(*) FROM reservations").fetchone() == (1,)  # a slice held, unused
    await asyncio.sleep(0.4)  # idle: it goes back
    assert reader.db.execute("SELECT committed, spent FROM meters WHERE key_id = ?", (key,)).fetchone() == (0.6, 0.6)
    assert reader.db.execute("SELECT count(*) FROM reservations").fetchone() == (0,)
    for store in (holder, reader):
        await store.close()


async def test_a_second_process_gets_what_the_first_holds_unused(path: str, quick: None) -> None:
    first, second = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    for _ in range(10):
        await first.admit(admission(key, 0.01))
    # The first process holds a slice beyond its 0.10: without it back, 0.90 would not fit.
    row = first.db.execute("SELECT committed FROM meters WHERE key_id = ?", (key,)).fetchone()
    assert row[0] > 0.1 + 1e-9
    snapshot = await second.admit(admission(key, 0.9))
    assert snapshot.committed_usd[PERIOD] == pytest.approx(1.0)
    with pytest.raises(BudgetRefused):  # full: and the first process now grants one request at a time
        await first.admit(admission(key, 0.01))
    reader = SQLiteStore(path)
    assert (await reader.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(1.0)
    for store in (first, second, reader):
        await store.close()


@contextmanager
def failing_commits(store: SQLiteStore) -> Iterator[None]:
    """Every commit of `store` fails while inside."""
    real = store._write

    @contextmanager
    def failing(begun: bool = False) -> Iterator[sqlite3.Connection]:
        with real(begun) as db:
            yield db
            raise StoreError("SQLite commit failed: disk I/O error")

    store._write = failing  # type: ignore[method-assign]
    try:
        yield
    finally:
        store._write = real  # type: ignore[method-assign]


async def test_a_failed_commit_forgets_the_grant_and_counts_nothing(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    with failing_commits(store), pytest.raises(StoreError):
        await store.admit(admission(key, 0.3))
    assert store.slices.budgets == {} and store.slices.held == {}
    assert await store.meter(key, PERIOD) == type(await store.meter(key, PERIOD))()  # nothing written
    for _ in range(3):
        await store.admit(admission(key, 0.3))
    with pytest.raises(BudgetRefused):
        await store.admit(admission(key, 0.3))
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.9)


async def test_a_crashed_holders_slices_come_back_when_its_lease_expires(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slices, "RENEW_S", 0.0)  # the slice lives exactly as long as its requests
    crashed, survivor = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]

    def short(amount: float) -> Admission:
        return Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, amount)], [], time.time() + 0.2)

    await crashed.admit(short(0.4))
    await crashed.admit(short(0.4))  # never settled: the process is gone
    crashed.slices = type(crashed.slices)()  # and so is what it knew
    with pytest.raises(BudgetRefused):
        await survivor.admit(admission(key, 0.5))
    await asyncio.sleep(0.3)
    assert await survivor.release_expired(key, time.time()) == pytest.approx(0.8)
    await survivor.admit(admission(key, 0.5))
    assert (await survivor.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.5)
    await crashed.close()
    await survivor.close()


async def test_the_slices_of_a_killed_process_come_back_at_the_next_refusal_they_would_cover(path: str) -> None:
    """A process killed (SIGKILL: the OOM killer, a crash) holding a slice of a key's budget: the file counted the slice
    as committed until its row expired, its last request's reservation TTL and `RENEW_S` after its last grant (17
    minutes by default), and every other process was refused the budget nobody could spend. The kernel tells: the
    dead process's lock on its holder file is gone, so a refusal the slice would cover releases it. While the process
    runs, its slice (and the request still in flight from it) stays reserved."""
    key = uuid.uuid4().hex[:12]
    survivor = SQLiteStore(path)
    rest = admission(key, 0.9)  # all but what the other process spent
    command = [sys.executable, "-m", "tests.support.holder", path, key, PERIOD]
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
            held = await survivor.meter(key, PERIOD)
            assert held.spent_usd[PERIOD] == pytest.approx(0.1) and held.committed_usd[PERIOD] > 0.2  # its slices
            with pytest.raises(BudgetRefused):
                await survivor.admit(rest)
            assert await survivor.release_held(rest.budgets[0], time.time()) == 0.0  # it runs
        finally:
            holder.kill()  # (SIGKILL: nothing of it runs after this)
    # (The refusal recalled its unused slice, which it gave back: what it holds now is its request in flight.)
    dead = (await survivor.meter(key, PERIOD)).committed_usd[PERIOD]
    assert dead == pytest.approx(0.2)
    with pytest.raises(BudgetRefused):
        await survivor.admit(rest)
    assert await survivor.release_held(rest.budgets[0], time.time()) == pytest.approx(0.1)
    await survivor.admit(rest)
    after = await survivor.meter(key, PERIOD)
    assert (after.committed_usd[PERIOD], after.spent_usd[PERIOD]) == (pytest.approx(1.0), pytest.approx(0.1))
    assert os.listdir(f"{path}-holders") == [f"{survivor.slices.holder}.lock"]  # (the dead one's went with its slice)
    await survivor.settle(settlement(rest, 0.9))
    await survivor.close()
    assert os.listdir(f"{path}-holders") == []  # (its own too, closed with its slices given back)


async def test_a_lowered_limit_holds_against_a_lease_granted_under_the_old_one(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    await store.admit(admission(key, 0.01))
    await store.admit(admission(key, 0.01))
    assert store.slices.budgets[(key, PERIOD)].avail > 0.01  # a slice covers the next request
    with pytest.raises(BudgetRefused) as refused:
        await store.admit(admission(key, 0.01, limit=0.025))
    assert refused.value.remaining_usd == pytest.approx(0.005)
    await store.admit(admission(key, 0.005, limit=0.025))  # exactly what the new limit leaves


async def test_a_request_outliving_its_lease_renews_it_without_a_new_slice(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    await store.admit(admission(key, 0.01))
    await store.admit(admission(key, 0.01))
    slice_ = store.slices.budgets[(key, PERIOD)]
    avail, expires = slice_.avail, slice_.expires_at
    long = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.01)], [], expires + 30)
    await store.admit(long)
    assert slice_.avail == pytest.approx(avail - 0.01) and slice_.expires_at == expires + 30 + RENEW_S
    (row_expiry,) = store.db.execute("SELECT expires_at FROM reservations WHERE id = ?", (slice_.row,)).fetchone()
    assert row_expiry == slice_.expires_at
    await store.settle(settlement(long, 0.004, line(key, 0.004)))
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.024) and meter.spent_usd[PERIOD] == pytest.approx(0.004)


async def test_a_lease_done_with_leaves_no_row_behind(store: SQLiteStore, quick: None) -> None:
    key = uuid.uuid4().hex[:12]
    admitted = [admission(key, 0.01) for _ in range(4)]
    for adm in admitted:
        await store.admit(adm)
    for adm in admitted:
        await store.settle(settlement(adm, 0.005, line(key, 0.005)))
    await asyncio.sleep(0.4)
    assert store.db.execute("SELECT count(*) FROM reservations").fetchone() == (0,)
    (committed, spent) = store.db.execute("SELECT committed, spent FROM meters WHERE key_id = ?", (key,)).fetchone()
    assert committed == pytest.approx(0.02) and spent == pytest.approx(0.02)


async def test_a_process_forgets_the_keys_whose_slices_are_gone(
    store: SQLiteStore, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a process last said of each key's slices was kept for every budgeted key it ever admitted: 3,000
    entries after 3,000 keys, each key's slices long gone (review: about 100-150 bytes a key, for good)."""
    monkeypatch.setattr(slices, "CONTEND_S", 0.2)
    keys = [uuid.uuid4().hex[:12] for _ in range(30)]
    for key in keys:
        adm = admission(key, 0.01)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.005, line(key, 0.005)))
    assert len(set(keys) & set(store._announced)) >= 10
    await asyncio.sleep(0.6)
    assert not set(keys) & set(store._announced)


async def test_the_sweeper_runs_on_until_the_words_of_gone_slices_are_forgotten(
    store: SQLiteStore, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper stopped with the last slice, leaving the words on keys whose slices went in its last round (fresher
    than `CONTEND_S / 2`) until the process held a slice again: the test above failed 2 runs in 27 under load."""
    monkeypatch.setattr(slices, "CONTEND_S", 0.2)
    key = uuid.uuid4().hex[:12]
    store._announced[key] = (time.time(), 0)  # (the word of a key whose slices the last round returned)
    store._watch()
    await asyncio.sleep(0.3)
    assert key not in store._announced


async def slice_held(store: SQLiteStore, key: str) -> None:
    """Three requests admitted and settled at what they reserved: the slice holds a slice beyond them."""
    admitted = [admission(key, 0.01) for _ in range(3)]
    for adm in admitted:
        await store.admit(adm)
    for adm in admitted:
        await store.settle(settlement(adm, 0.01, line(key, 0.01)))
    assert store.slices.budgets[(key, PERIOD)].avail > 0.1


async def test_a_failed_return_keeps_the_slice_it_could_not_give_back(store: SQLiteStore, quick: None) -> None:
    key = uuid.uuid4().hex[:12]
    await slice_held(store, key)
    with failing_commits(store):
        await asyncio.sleep(0.3)  # idle: the sweeper returns the slice, and its commit fails, again and again
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.03)
    await store.admit(admission(key, 0.97))  # exactly what is left


async def test_a_failed_grant_leaves_the_lease_as_it_was(store: SQLiteStore) -> None:
    key = uuid.uuid4().hex[:12]
    await slice_held(store, key)
    with failing_commits(store), pytest.raises(StoreError):
        await store.admit(admission(key, 0.5))  # more than the slice: a grant, whose commit fails
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.03)
    await store.admit(admission(key, 0.97))


async def test_spend_beyond_the_lease_is_committed_at_once(path: str) -> None:
    holder, other = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.01)
    await holder.admit(adm)  # a first grant is exactly the request: nothing beyond it in the slice
    await holder.settle(settlement(adm, 0.03, line(key, 0.03)))  # it spent three times its reservation
    (committed,) = other.db.execute("SELECT committed FROM meters WHERE key_id = ?", (key,)).fetchone()
    assert committed == pytest.approx(0.03)
    with pytest.raises(BudgetRefused):
        await other.admit(admission(key, 0.98))
    for store in (holder, other):
        await store.close()


@pytest.mark.parametrize("settled_first", [True, False], ids=["settlement-then-grant", "grant-then-settlement"])
@pytest.mark.parametrize("budget_of", ["key", "parent"])
async def test_a_grant_in_the_batch_of_a_settlement_that_overspent_finds_the_budget_spent(
    store: SQLiteStore, settled_first: bool, budget_of: str
) -> None:
    """A request spent four times the budget; the next request's grant shared a transaction with its settlement,
    whose excess the file gets only at the batch's end. The grant read the budget as unspent, took a quarter of
    it, and set the slice's count of the budget below what was spent, so every later request was admitted from
    memory (found by review: six requests billed $0.04 each on a $0.01 budget, all answered)."""
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    limits = {key: 0.01, parent: 1.0} if budget_of == "key" else {key: 1.0, parent: 0.01}

    def chained(amount: float) -> Admission:
        budgets = [BudgetCharge(owner, PERIOD, limit, amount) for owner, limit in limits.items()]
        return Admission(uuid.uuid4().hex, key, budgets, [], time.time() + 60)

    first = chained(0.001)
    await store.admit(first)  # a first grant is exactly the request: nothing beyond it in the slice
    overspent = settlement(first, 0.04, line(key, 0.04))
    settling = store.settle_soon(overspent) if settled_first else None
    admitting = asyncio.ensure_future(store.admit(chained(0.001)))
    await asyncio.sleep(0)  # its grant is queued
    settling = settling or store.settle_soon(overspent)
    assert settling is not None and store._batch is not None and len(store._batch) == 2  # one transaction
    with pytest.raises(BudgetRefused):
        await admitting
    await settling
    for _ in range(3):
        with pytest.raises(BudgetRefused):
            await store.admit(chained(0.001))
    for owner in (key, parent):
        assert (await store.meter(owner, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.04)
    assert store.slices.unwritten == {}


@pytest.mark.parametrize("replaced", ["idle", "expired"])
async def test_an_overspend_waiting_for_its_retry_outlives_the_slice_it_was_counted_on(
    store: SQLiteStore, quick: None, monkeypatch: pytest.MonkeyPatch, replaced: str
) -> None:
    """A request spent $0.50 from a slice of $0.01; its batch failed to commit, so the file has $0.01 until the
    retry lands. The slice was replaced meanwhile (the sweeper drops an idle slice nobody holds, a grant replaces
    an expired one), and the overspend, kept on the old slice, went with it: the new slice counted from the file
    alone, and a $0.60 request, granted in the retry's own batch, was admitted on a $1 budget already half spent
    ($1.10 committed once the retry landed)."""
    if replaced == "expired":
        monkeypatch.setattr(slices, "RENEW_S", 0.05)  # the slice expires 0.05 s after its request's reservation
    key = uuid.uuid4().hex[:12]
    first = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.01)], [], time.time() + 0.1)
    await store.admit(first)  # a first grant is exactly the request
    overspent = settlement(first, 0.5, line(key, 0.5))
    with failing_commits(store), pytest.raises(StoreError):
        await store.settle(overspent)
    old = store.slices.budgets[(key, PERIOD)]
    await asyncio.sleep(0.3)  # idle past IDLE_S, and past its expiry
    while store._batch is not None:  # (a sweep's batch being written: the retry starts the next)
        await asyncio.sleep(0)
    retrying = store.settle_soon(overspent)  # the caller's retry (budgets.py), in one batch with the next grant
    admitting = asyncio.ensure_future(store.admit(admission(key, 0.6)))
    await asyncio.sleep(0)
    assert retrying is not None and not retrying.done() and store._batch is not None and len(store._batch) >= 2
    with pytest.raises(BudgetRefused):
        await admitting
    assert store.slices.budgets.get((key, PERIOD)) is not old  # replaced
    await retrying
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.5)
    assert store.slices.unwritten == {}  # the file has it: not counted twice
    assert (await store.admit(admission(key, 0.5))).committed_usd[PERIOD] == pytest.approx(1.0)
    with pytest.raises(BudgetRefused):
        await store.admit(admission(key, 0.001))


async def test_a_settlement_retried_after_its_reservation_expired_counts_once(store: SQLiteStore, quick: None) -> None:
    key = uuid.uuid4().hex[:12]
    adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.4)], [], time.time() + 0.15)
    await store.admit(adm)
    with failing_commits(store), pytest.raises(StoreError):
        await store.settle(settlement(adm, 0.1, line(key, 0.1)))
    await asyncio.sleep(0.4)  # the reservation expires unsettled, and the sweeper runs
    await store.settle(settlement(adm, 0.1, line(key, 0.1)))  # the caller's retry
    await asyncio.sleep(0.3)
    (committed, spent) = store.db.execute("SELECT committed, spent FROM meters WHERE key_id = ?", (key,)).fetchone()
    assert committed == pytest.approx(0.1) and spent == pytest.approx(0.1)


async def test_a_limit_lowered_while_another_process_spends_goes_back_to_the_file(path: str) -> None:
    first, second = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    await first.admit(admission(key, 0.01))
    await first.admit(admission(key, 0.01))  # a slice beyond the request
    assert first.slices.budgets[(key, PERIOD)].avail > 0.2
    await second.admit(admission(key, 0.5))
    with pytest.raises(BudgetRefused):  # 0.52 committed elsewhere: 0.2 more would pass a limit of 0.6
        await first.admit(admission(key, 0.2, limit=0.6))
    for store in (first, second):
        await store.close()


@pytest.mark.usefixtures("no_gc_pauses")
async def test_a_holder_drawing_on_its_slice_stays_visible_and_says_when_it_holds_none(
    path: str, quick: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slices, "CONTEND_S", 0.4)
    holder, other = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    await holder.admit(admission(key, 0.01))
    await holder.admit(admission(key, 0.01))
    for _ in range(10):  # 0.6 s of traffic from the slice: no grant, never idle
        await holder.admit(admission(key, 0.01))
        await asyncio.sleep(0.06)
    started = time.perf_counter()
    await other.admit(admission(key, 0.8))  # fits only once the holder gives its slice back
    assert time.perf_counter() - started >= slices.RECALL_WAIT_S
    # The holder now holds nothing: a refusal elsewhere no longer waits for it.
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    with pytest.raises(BudgetRefused):
        await other.admit(admission(key, 0.5))
    assert time.perf_counter() - started < slices.RECALL_WAIT_S
    for store in (holder, other):
        await store.close()


async def test_two_processes_on_one_key_each_slice_it_by_their_own_traffic(path: str) -> None:
    """Another process being active on a key recalls nothing: each process admits from slices of its own, and
    the file counts every slice as committed (two workers of one server, one key: docs/store.md)."""
    first, second = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    for store in (first, second, first, second):
        await store.admit(admission(key, 0.01))  # the second grant of each takes a slice for its traffic
    for store in (first, second):
        statements = traced(store)
        for _ in range(5):
            await store.admit(admission(key, 0.01))
        assert statements == []  # from its slice: no write
        assert store.slices.budgets[(key, PERIOD)].avail > 0
    reader = SQLiteStore(path)
    row = reader.db.execute("SELECT committed FROM meters WHERE key_id = ?", (key,)).fetchone()
    assert row[0] > 0.14 + 1e-9  # the 14 requests and both processes' unused slices
    for store in (first, second, reader):
        await store.close()


async def test_after_a_refusal_recalled_its_slices_a_process_admits_each_request_as_it_is(
    path: str, quick: None
) -> None:
    """A refusal while another process holds unused slices of the key recalls them: the holder gives them
    back at its next sweep, and for `CONTEND_S` admits each request as it is (its own reservation row, no
    slice), settled exactly, so the two share what is left to the last cent."""
    first, second = SQLiteStore(path), SQLiteStore(path)
    key = uuid.uuid4().hex[:12]
    for _ in range(10):
        await first.admit(admission(key, 0.01))  # a slice beyond its 0.10
    started = time.perf_counter()
    assert (await second.admit(admission(key, 0.85))).committed_usd[PERIOD] <= 1.0 + 1e-9  # fits once it is back
    assert time.perf_counter() - started >= slices.RECALL_WAIT_S  # refused, recalled, waited, admitted
    assert first.slices.budgets == {} or first.slices.budgets[(key, PERIOD)].avail == 0
    adm = admission(key, 0.02)
    assert (await first.admit(adm)).committed_usd[PERIOD] == pytest.approx(0.97)
    assert adm.reservation_id not in first.slices.held  # as it is: no slice
    rows = first.db.execute("SELECT amount FROM reservations WHERE id = ?", (adm.reservation_id,)).fetchall()
    assert rows == [(pytest.approx(0.02),)]
    await first.settle(settlement(adm, 0.015, line(key, 0.015)))
    meter = await first.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.965)
    with pytest.raises(BudgetRefused):  # 0.035 left, held by nobody: exact to the last cent
        await second.admit(admission(key, 0.04))
    assert (await second.admit(admission(key, 0.035))).committed_usd[PERIOD] == pytest.approx(1.0)
    for store in (first, second):
        await store.close()


async def test_the_sweeper_outlives_a_failed_round_and_not_its_store(store: SQLiteStore, quick: None) -> None:
    key = uuid.uuid4().hex[:12]
    await slice_held(store, key)
    real, rounds = store._tidy, []

    def flaky(db: sqlite3.Connection, everything: bool = False) -> None:
        rounds.append(everything)
        if len(rounds) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        real(db, everything)

    store._tidy = flaky  # type: ignore[method-assign]
    await asyncio.sleep(0.3)
    assert len(rounds) > 1 and store.slices.budgets == {}  # later rounds returned the idle slice
    granting = asyncio.create_task(store.admit(admission(key, 0.5)))
    await asyncio.sleep(0)  # the grant waits in the batch that close() writes
    await store.close()
    await granting
    assert store._sweeper is None or store._sweeper.done()


async def test_a_settlement_without_a_line_item_gives_back_the_tokens_of_the_key_it_names(store: SQLiteStore) -> None:
    """As the file does, with or without a slice: a request that reached no provider settles with no line item and
    gives back all it reserved on the counter its correction names (a correction naming no key, as an older gateway
    spooled it, has no key to correct and leaves the count alone)."""
    key = uuid.uuid4().hex[:12]
    window = this_minute()
    admitted = [Admission(uuid.uuid4().hex, key, [], [RateCharge("tpm", window, 10_000, 100)], time.time() + 60)]
    admitted.append(Admission(uuid.uuid4().hex, key, [], [RateCharge("tpm", window, 10_000, 100)], time.time() + 60))
    for adm in admitted:
        await store.admit(adm)
    unnamed = [RateCharge("tpm", window, 10_000, -100)]
    await store.settle(Settlement(admitted[0].reservation_id, [], 0.0, unnamed, None))
    assert (await store.meter(key, PERIOD)).rates == {"tpm": 200}
    named = [RateCharge("tpm", window, 10_000, -100, key)]
    await store.settle(Settlement(admitted[1].reservation_id, [], 0.0, named, None))
    assert (await store.meter(key, PERIOD)).rates == {"tpm": 100}


async def test_children_in_two_processes_share_their_parents_rate_slices(path: str, quick: None) -> None:
    """The parent's rpm counter is one, whichever process and child draw on it: a slice one process holds
    for it goes back when the other needs it, and the minute never admits more than the limit."""
    first, second = SQLiteStore(path), SQLiteStore(path)
    parent = uuid.uuid4().hex[:12]
    window = this_minute()

    def child_request(limit: int) -> Admission:
        charge = RateCharge("rpm", window, limit, 1, key_id=parent)
        return Admission(uuid.uuid4().hex, uuid.uuid4().hex[:12], [], [charge], time.time() + 60)

    for _ in range(3):
        await first.admit(child_request(10))  # the first process's slices follow its traffic
    admitted = 3
    for _ in range(10):
        try:
            await second.admit(child_request(10))
        except RateRefused:
            break
        admitted += 1
    assert admitted == 10
    with pytest.raises(RateRefused):
        await first.admit(child_request(10))
    reader = SQLiteStore(path)
    assert (await reader.meter(parent, PERIOD)).rates == {"rpm": 10}
    for store in (first, second, reader):
        await store.close()
