"""Session-wide test set-up: fake AWS credentials (no test may reach AWS), hypothesis's profile (the same examples
every run), the DynamoDB server, and the SQLite stores a test leaves open closed after it."""

from __future__ import annotations

import calendar
import gc
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

from adapters.store.sqlite import SQLiteStore
from handler.pipeline.budgets import period_of
from tests.support.dynamo import CREDENTIALS, DynamoServer

os.environ.update(CREDENTIALS)
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
    os.environ.pop(name, None)

# Hypothesis draws the same examples every run (each test's from a hash of the test), with no example database and
# no deadline: `make test` and CI never fail on an example no earlier run tried, nor pass on the rerun, nor fail on a
# shared machine's pause. `HYPOTHESIS_PROFILE=explore` draws them at random, to look for what those examples miss.
settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "repeatable")


@pytest.fixture(scope="session")
def dynamo() -> Iterator[DynamoServer]:
    """moto's DynamoDB server, shared by the session; each user creates its own table."""
    server = DynamoServer().start()
    yield server
    server.stop()


@pytest.fixture
def no_gc_pauses() -> Iterator[None]:
    """For a test that bounds the time of its own work: the heap collected first, the collector off while it
    runs. Late in a run, a full collection of the suite's heap stops the process for as long as such a bound
    (0.35 s measured after tests/unit alone, over a second late in the whole suite), and the test cannot tell
    that from the wait it is about."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def clear_of_period_end(kind: str, needed: float) -> None:
    """Budgets count in UTC calendar periods (`period_of`: a day, a month): a test that reads back what its requests
    spent in one starts at least `needed` seconds before the `kind` period ends, or once it has turned (what an
    ended period spent reads as nothing in the next)."""
    now = time.time()
    if period_of(kind, now + needed) != period_of(kind, now):
        turned = time.gmtime(now + needed)
        begun = calendar.timegm((turned.tm_year, turned.tm_mon, turned.tm_mday if kind == "day" else 1, 0, 0, 0))
        time.sleep(begun - now + 0.05)


# The stores each running test has opened (`close_sqlite_stores`), for `outlives_the_test`.
OPENED_IN_TEST: list[list[SQLiteStore]] = []


def outlives_the_test(store: object) -> None:
    """`store` belongs to a module's or session's fixture, which closes it: a test that set the fixture up (through
    `request.getfixturevalue`, as `on_each_store` does) leaves it open. Closed with that first test, the session's
    gateway answered every later test 500 ("Cannot operate on a closed database"): a file of tests run alone
    (`pytest tests/functional/test_key_shapes.py`) failed eight of them."""
    for opened in OPENED_IN_TEST:
        if store in opened:
            opened.remove(store)


@pytest.fixture(autouse=True)
def close_sqlite_stores(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A gateway built for one test lives as long as the test needs it, as on Lambda, where nothing closes it before
    the process ends. Python 3.13 (Lambda's runtime) warns of each SQLite connection the garbage collector closes, in
    whichever later test the collector happens to run, and `filterwarnings = error` failed that one: the stores a
    test opened and left open are closed after it. (A module's or session's fixture closes its own.)"""
    opened: list[SQLiteStore] = []
    open_store = SQLiteStore.__init__

    def recorded(store: SQLiteStore, *args: Any, **kwargs: Any) -> None:
        open_store(store, *args, **kwargs)
        opened.append(store)

    monkeypatch.setattr(SQLiteStore, "__init__", recorded)
    OPENED_IN_TEST.append(opened)
    try:
        yield
    finally:
        OPENED_IN_TEST.remove(opened)
    for store in opened:
        if not store._closed:
            store._stop.set()  # (the checkpoint thread of a file's store closes its own connection)
            store.db.close()
