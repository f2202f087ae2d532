"""`Settling`, the buffered Lambda invocation's app: the settlements a request leaves are written before it returns,
in its own task, and none is lost when the app raises. A server's shutdown writes those still waiting too, and
spools those the store does not take in time."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from typing import Any

import pytest

from adapters.sigv4 import Credentials
from adapters.store import sqlite as sqlite_store
from adapters.store.dynamo_client import DynamoDBClient
from adapters.store.dynamodb import DynamoDBStore
from handler.api.app import SETTLE_MARGIN_MS, Settling
from handler.pipeline import gateway as gateway_module
from handler.pipeline.budgets import SPOOL_ENV as ENV
from handler.pipeline.budgets import Meter
from handler.pipeline.gateway import build_gateway
from handler.ports import Admission, BudgetCharge, BudgetRefused, Settlement
from tests.support.dynamo import DynamoServer
from tests.unit.adapters.store.test_contract import PERIOD, admission, line, settlement
from tests.unit.adapters.store.test_dynamodb import two_regions


async def run(app: Any, **scope: Any) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app({"type": "http", "method": "POST", "path": "/", **scope}, receive, send)


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.mark.usefixtures("no_gc_pauses")
async def test_settlements_are_written_before_the_invocation_returns_without_a_task_or_the_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 2.0)  # the store would wait this long for company
    gateway = build_gateway(store_url="sqlite://", environ={})
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await gateway.store.admit(adm)
    tasks_during: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        gateway.spawn(gateway.store.settle(settlement(adm, 0.2, line(key, 0.2))))
        tasks_during.append(len(gateway.background))

    started = time.perf_counter()
    await run(Settling(app, gateway))  # type: ignore[arg-type]
    assert time.perf_counter() - started < 0.25  # written at once: not after the linger, nor the slices' sweep
    assert tasks_during == [0] and not gateway.background and gateway.deferred is None
    assert (await gateway.store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.2)
    await gateway.store.close()


async def test_when_the_app_raises_its_settlements_become_tasks_that_the_handler_drains() -> None:
    gateway = build_gateway(store_url="sqlite://", environ={})
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await gateway.store.admit(adm)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        gateway.spawn(gateway.store.settle(settlement(adm, 0.3, line(key, 0.3))))
        raise RuntimeError("after the answer")

    with pytest.raises(RuntimeError):
        await run(Settling(app, gateway))  # type: ignore[arg-type]
    assert len(gateway.background) == 1 and gateway.deferred is None
    await gateway.drain()  # as handler.entry.lambda_handler does when the app raised
    assert (await gateway.store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.3)
    await gateway.store.close()


async def test_a_failed_settlement_is_logged_and_the_next_still_written(caplog: pytest.LogCaptureFixture) -> None:
    gateway = build_gateway(store_url="sqlite://", environ={})
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await gateway.store.admit(adm)

    async def fails() -> None:
        raise RuntimeError("boom")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        gateway.spawn(fails())
        gateway.spawn(gateway.store.settle(settlement(adm, 0.1, line(key, 0.1))))

    with caplog.at_level(logging.ERROR, logger="gateway"):
        await run(Settling(app, gateway))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == ["a background task failed"]
    assert (await gateway.store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.1)
    await gateway.store.close()


async def test_a_server_shutting_down_writes_the_settlements_still_lingering(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from handler.api.app import create_app

    monkeypatch.setattr(sqlite_store, "SETTLE_LINGER_S", 2.0)  # longer than the shutdown takes
    gateway = build_gateway(store_url=f"sqlite:///{tmp_path / 'store.db'}", environ={})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    item = line(key, 0.25)
    async with app.starlette.router.lifespan_context(app.starlette):  # as uvicorn runs it
        await gateway.store.admit(adm)
        gateway.spawn(gateway.store.settle(settlement(adm, 0.25, item)))  # waits for company...
    # ...and the shutdown wrote it, before the process exits (and the loop with it), and closed the store
    db = sqlite3.connect(tmp_path / "store.db")
    assert db.execute("SELECT request_id FROM ledger WHERE key_id = ?", (key,)).fetchall() == [(item.request_id,)]
    db.close()
    await gateway.aclose()


async def test_a_server_shutting_down_spools_a_settlement_the_store_never_takes_and_exits_in_time(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that never answers a settlement (stalled, or throttling it on every retry): the shutdown waited for it
    without end (on DynamoDB, for every retry of every layer: 77 s, past any service manager's grace). Now it waits
    `SHUTDOWN_SETTLE_S`, spools the settlement and returns; the spool, re-driven at the next start, lands it once."""
    from handler.api.app import create_app

    monkeypatch.delenv(ENV, raising=False)  # the spool beside the store's file, where the next start finds it
    monkeypatch.setattr(gateway_module, "SHUTDOWN_SETTLE_S", 0.3)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    gateway = build_gateway(store_url=store_url, environ={})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    item = line(key, 0.25)
    meter = Meter(gateway.store, gateway.keys, 60)
    answers = gateway.store.settle

    async def never_answers(settlement: Settlement) -> None:
        await asyncio.Event().wait()

    async with asyncio.timeout(5):  # (before the fix: the shutdown never ended)
        async with app.starlette.router.lifespan_context(app.starlette):  # as uvicorn runs it
            await gateway.store.admit(adm)
            monkeypatch.setattr(gateway.store, "settle", never_answers)
            gateway.spawn(meter.settle(settlement(adm, 0.25, item)))
            await asyncio.sleep(0.05)  # its first attempt is waiting on the store
            started = time.perf_counter()
        stopped = time.perf_counter() - started
    assert stopped < 0.3 + 0.5, stopped
    assert not gateway.unsettled and gateway.spool.count() == 1
    assert "did not take within 0.3 s are spooled" in caplog.text
    monkeypatch.setattr(gateway.store, "settle", answers)
    await gateway.aclose()

    restarted = build_gateway(store_url=store_url, environ={})  # the next start re-drives the spool
    assert await restarted.spool.redrive(restarted.store) == 1
    store = restarted.store
    assert isinstance(store, sqlite_store.SQLiteStore)
    assert store.db.execute("SELECT request_id FROM ledger WHERE key_id = ?", (key,)).fetchall() == [(item.request_id,)]
    assert (await store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.25)
    assert restarted.spool.count() == 0
    await restarted.aclose()


async def test_a_server_shutting_down_gives_back_the_leases_it_drew_on(dynamo: DynamoServer) -> None:
    """A server in eu-west-1 spent $0.05 of a key homed in us-east-1 from a $0.25 lease: stopped, it gave nothing
    back, and its home kept the $0.20 left counted as leased (out of its own requests' reach) until the lease had sat
    idle and the home was about to refuse one. Its shutdown now gives back what the lease holds unspent."""
    from handler.api.app import create_app

    here, home = two_regions(dynamo)
    gateway = build_gateway(store=here, environ={"GATEWAY_REGION": "eu-west-1"})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    adm = Admission(
        uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")], [], time.time() + 60, "us-east-1"
    )
    charge = BudgetCharge(key, PERIOD, 1.0, 0.05, "us-east-1")
    spent = Settlement(adm.reservation_id, [charge], 0.1, [], line(key, 0.05), "us-east-1", adm.expires_at)
    async with app.starlette.router.lifespan_context(app.starlette):  # as uvicorn runs it
        await here.admit(adm)  # a grant from the home: a quarter of the budget
        await here.settle(spent)
        assert await home_committed(home, key) == pytest.approx(0.25)  # the lease, all of it counted at home
    assert await home_committed(home, key) == pytest.approx(0.05)  # given back: what was spent stays
    assert (await home.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.05)
    await gateway.aclose()
    await home.close()


async def test_a_shutdown_whose_home_region_does_not_answer_gives_up_on_its_leases_in_time(
    dynamo: DynamoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The home region unreachable: the lease's return waits no longer than `SHUTDOWN_LEASES_S`, and says so."""
    from handler.api.app import create_app

    monkeypatch.setattr(gateway_module, "SHUTDOWN_LEASES_S", 0.2)
    here, home = two_regions(dynamo)
    gateway = build_gateway(store=here, environ={"GATEWAY_REGION": "eu-west-1"})
    app = create_app(gateway)

    async def unreachable() -> float:
        await asyncio.Event().wait()
        return 0.0

    monkeypatch.setattr(here, "return_leases", unreachable)
    async with asyncio.timeout(5):
        async with app.starlette.router.lifespan_context(app.starlette):
            started = time.perf_counter()
        stopped = time.perf_counter() - started
    assert stopped < 0.2 + 0.5, stopped
    assert "budget leases not given back to their home regions within 0.2 s" in caplog.text
    await gateway.aclose()
    await home.close()


class SlowWrites(DynamoDBClient):
    """The home region's endpoint as the lease region reaches it, each `UpdateItem` `delay` s on its way (a slow link
    between regions): a bounded wait that ends first sends nothing."""

    delay = 0.0

    async def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "UpdateItem" and self.delay:
            await asyncio.sleep(self.delay)
        return await super().call(operation, request)


async def test_a_shutdown_cut_between_a_leases_return_and_its_homes_count_leaves_nothing_held(
    dynamo: DynamoServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The shutdown's bound (`SHUTDOWN_LEASES_S`) ending after the lease gave up its `a` and before the home lowered
    its `c`: it logs that the lease "comes home once idle, when its home needs it", and it never did. The lease held
    nothing, so the home's reclaim passed it over, and no process held it any more: a $1 budget, $0.10 spent, had
    $0.85 refused at home for good. The home's next refusal now takes home what the home has not counted."""
    from handler.api.app import create_app

    monkeypatch.setattr(gateway_module, "SHUTDOWN_LEASES_S", 0.3)
    table = dynamo.create_table()
    credentials = Credentials("testing", "testing")
    home_endpoint = SlowWrites("us-east-1", credentials, dynamo.url)
    here = DynamoDBStore(
        DynamoDBClient("us-east-1", credentials, dynamo.url),
        table,
        region="eu-west-1",
        client_for=lambda region: home_endpoint,
        owned=[home_endpoint],
    )
    home = DynamoDBStore(
        DynamoDBClient("us-east-1", credentials, dynamo.url),
        table,
        region="us-east-1",
        client_for=lambda region: here.client,  # (the lease region's endpoint, for its reclaim)
    )
    gateway = build_gateway(store=here, environ={"GATEWAY_REGION": "eu-west-1"})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    adm = Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")
    spent = Settlement(adm.reservation_id, [charge], 0.1, [], line(key, 0.1), "us-east-1", adm.expires_at)
    async with asyncio.timeout(10):
        async with app.starlette.router.lifespan_context(app.starlette):  # as uvicorn runs it
            await here.admit(adm)  # a grant of $0.25 from the home
            await here.settle(spent)
            home_endpoint.delay = 1.0  # the shutdown's bound ends before the home's write goes out
    assert "budget leases not given back to their home regions within 0.3 s" in caplog.text
    await gateway.aclose()
    assert await home_committed(home, key) == pytest.approx(0.25)  # the lease's $0.15 returned, counted leased
    big = BudgetCharge(key, PERIOD, 1.0, 0.85, "us-east-1")
    with pytest.raises(BudgetRefused):
        await home.admit(Admission(uuid.uuid4().hex, key, [big], [], time.time() + 60, "us-east-1"))
    assert await home.release_held(big, time.time()) == pytest.approx(0.15)
    await home.admit(Admission(uuid.uuid4().hex, key, [big], [], time.time() + 60, "us-east-1"))
    assert await home_committed(home, key) == pytest.approx(0.95)
    await home.close()


async def test_a_server_shutting_down_gives_back_its_unused_slices(tmp_path: Any) -> None:
    """A request admitted from a slice of its key's budget (counted as committed in the file the moment it is
    granted), settled for less than it reserved: the shutdown never closed the store, and the slice stayed committed
    until its row expired, some 17 minutes, the key's requests refused that much early by every other process on the
    file and the next start."""
    from handler.api.app import create_app

    gateway = build_gateway(store_url=f"sqlite:///{tmp_path / 'store.db'}", environ={})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.01, limit=1.0)
    async with app.starlette.router.lifespan_context(app.starlette):  # as uvicorn runs it
        await gateway.store.admit(adm)
        await gateway.store.settle(settlement(adm, 0.004, line(key, 0.004)))
        assert file_counters(tmp_path, key)[:2] == (pytest.approx(0.01), pytest.approx(0.004))  # $0.006 unused
    assert file_counters(tmp_path, key) == (pytest.approx(0.004), pytest.approx(0.004), [])


async def test_a_shutdown_whose_store_file_another_process_holds_gives_up_on_its_slices_in_time(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holding the file's write lock: the slices' return waits no longer than `SHUTDOWN_CLOSE_S`
    (SQLite's own wait for the lock is 5 s), says so, and leaves them to their rows' expiry."""
    from handler.api.app import create_app

    monkeypatch.setattr(gateway_module, "SHUTDOWN_CLOSE_S", 0.3)
    gateway = build_gateway(store_url=f"sqlite:///{tmp_path / 'store.db'}", environ={})
    app = create_app(gateway)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.01, limit=1.0)
    other = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    async with asyncio.timeout(10):
        async with app.starlette.router.lifespan_context(app.starlette):
            await gateway.store.admit(adm)
            await gateway.store.settle(settlement(adm, 0.004, line(key, 0.004)))
            other.execute("BEGIN IMMEDIATE")  # (another process's write, under way)
            started = time.perf_counter()
        stopped = time.perf_counter() - started
    other.execute("ROLLBACK")
    other.close()
    assert stopped < 0.3 + 0.5, stopped
    assert "the unused slices of the budgets and rate limits this process holds were not given back" in caplog.text
    committed, spent, reserved = file_counters(tmp_path, key)
    assert spent == pytest.approx(0.004) and committed > spent and len(reserved) == 1  # the slice, to its expiry


def file_counters(folder: Any, key: str) -> tuple[float, float, list[tuple[str, float]]]:
    """The key's committed and spent in the file, and its reservation rows, as another process reads them."""
    db = sqlite3.connect(folder / "store.db")
    try:
        [(committed, spent)] = db.execute("SELECT committed, spent FROM meters WHERE key_id = ?", (key,)).fetchall()
        reserved = db.execute("SELECT id, amount FROM reservations WHERE key_id = ?", (key,)).fetchall()
    finally:
        db.close()
    return committed, spent, reserved


async def home_committed(home: Any, key: str) -> float:
    """The home meter's own count: its region's spend and reservations, and every lease granted out and not given
    back."""
    [meter] = [item for item in await home._meter_items(key) if item["sk"]["S"] == "METER"]
    return float(meter[f"c:{PERIOD}"]["N"])


async def test_a_settlement_whose_time_has_run_out_is_spooled_without_a_store_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An invocation with less time left than the margin spooling needs (`SETTLE_MARGIN_MS`): its settlement goes to
    the spool at once, no store call begun that Lambda could kill half-way; the spool lands it later."""
    monkeypatch.delenv(ENV, raising=False)
    gateway = build_gateway(store_url="sqlite://", environ={})
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await gateway.store.admit(adm)
    called: list[Settlement] = []
    monkeypatch.setattr(gateway.store, "settle", called.append)  # (a store call would fail the test: not awaitable)
    meter = Meter(gateway.store, gateway.keys, 60)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        gateway.settle_soon(meter, settlement(adm, 0.2, line(key, 0.2)))

    await run(Settling(app, gateway), **{"aws.context": LambdaContext(SETTLE_MARGIN_MS - 100)})  # type: ignore[arg-type]
    assert called == [] and gateway.spool.count() == 1
    monkeypatch.undo()
    assert await gateway.spool.redrive(gateway.store) == 1
    assert (await gateway.store.meter(key, PERIOD)).spent_usd[PERIOD] == pytest.approx(0.2)
    await gateway.store.close()
