"""A settlement the store refuses is spooled, said in the log, /health and a metric, and lands exactly once."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from adapters.store import open_store
from adapters.store.dynamodb import DynamoDBStore
from handler.pipeline import budgets
from handler.pipeline.budgets import SETTLE_ATTEMPTS, Meter
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.pipeline.spool import SettlementSpool, settlement_from_dict, settlement_to_dict
from handler.ports import BudgetCharge, KeyRecord, Settlement, Store, StoreError, UsageQuery
from handler.telemetry import observability
from tests.support.contention import FlakyClient
from tests.support.dynamo import DynamoServer
from tests.unit.adapters.store.test_contract import PERIOD, line, record, this_minute


@pytest.fixture(params=["sqlite", "dynamodb"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        server: DynamoServer = request.getfixturevalue("dynamo")
        opened = open_store(server.store_url(server.create_table()))
    yield opened
    await opened.close()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "SETTLE_FIRST_DELAY_S", 0.001)


def refuse_settlements(monkeypatch: pytest.MonkeyPatch, store: Store, times: int) -> None:
    """The store refuses its next `times` settlements (down, throttled, whatever: the meter cannot tell)."""
    real = store.settle
    left = [times]

    async def settle(settlement: Settlement) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise StoreError("injected: the store is unavailable")
        await real(settlement)

    monkeypatch.setattr(store, "settle", settle)


async def admitted(meter: Meter, key: KeyRecord, cost: float = 0.2) -> Settlement:
    """A request admitted on `key` (a budget and a tpm limit) and answered: its settlement (early enough in
    a minute that its token count is read back in the same one)."""
    this_minute()
    reservation = await meter.admit([key], "m", 0.5, 100, uuid.uuid4().hex)
    return meter.settlement(reservation, cost, 150, line(key.id, cost))


async def spent(store: Store, key: KeyRecord) -> tuple[float, float, int]:
    meter = await store.meter(key.id, PERIOD)
    return meter.committed_usd.get(PERIOD, 0.0), meter.spent_usd.get(PERIOD, 0.0), meter.rates.get("tpm", 0)


async def test_a_refused_settlement_is_spooled_then_lands_exactly_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spool.jsonl"
    spool = SettlementSpool(path)
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    settlement = await admitted(meter, key)
    assert settlement.item is not None
    refuse_settlements(monkeypatch, store, SETTLE_ATTEMPTS)
    await meter.settle(settlement)  # never raises: the cost goes to the spool
    await spool.close()  # (the retry task would land it; here the test re-drives by hand)
    assert spool.pending == 1
    [entry] = [orjson.loads(raw) for raw in path.read_bytes().splitlines()]
    assert entry["add"]["reservation_id"] == settlement.reservation_id
    assert entry["add"]["item"]["request_id"] == settlement.item.request_id
    logged = [vars(r) for r in caplog.records if r.getMessage().startswith("settlement spooled")]
    assert [entry["settlement"]["item"]["cost_usd"] for entry in logged] == [0.2]  # the whole settlement
    assert await store.usage(UsageQuery([key.id], 0, time.time() + 1)) == []
    # A restart finds it in the file; the re-drive lands it, and a second one (or another process's) is a no-op.
    restarted = SettlementSpool(path)
    assert restarted.pending == 1
    assert await restarted.redrive(store) == 1
    assert await restarted.redrive(store) == 0
    await store.settle(settlement)  # as a process holding an older copy of the spool would
    assert restarted.pending == 0 and SettlementSpool(path).pending == 0 and path.read_bytes() == b""
    assert await store.usage(UsageQuery([key.id], 0, time.time() + 1)) == [settlement.item]
    committed, paid, tokens = await spent(store, key)
    assert committed == pytest.approx(0.2) and paid == pytest.approx(0.2) and tokens == 150


async def test_the_retry_task_lands_spooled_settlements_by_itself(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    spool.retry_first_s = 0.02
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    first, second = await admitted(meter, key, 0.1), await admitted(meter, key, 0.3)
    refuse_settlements(monkeypatch, store, 2 * SETTLE_ATTEMPTS + 2)  # both spooled, then two re-drives refused
    await asyncio.gather(meter.settle(first), meter.settle(second))
    assert spool.pending == 2
    for _ in range(200):
        if not spool.pending:
            break
        await asyncio.sleep(0.02)
    assert spool.pending == 0
    lines = await store.usage(UsageQuery([key.id], 0, time.time() + 1))
    assert sorted(i.cost_usd or 0 for i in lines) == [0.1, 0.3]
    committed, paid, _ = await spent(store, key)
    assert committed == pytest.approx(0.4) and paid == pytest.approx(0.4)
    await spool.close()


async def test_a_settlement_the_store_cannot_write_holds_none_of_the_others_back(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One spooled settlement the store refuses every time (one it can never write) is passed over: the ones
    after it land, and it stays spooled, alone."""
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=5.0, tpm=10_000)
    poisoned, *others = [await admitted(meter, key, 0.1) for _ in range(3)]
    refuse_settlements(monkeypatch, store, 3 * SETTLE_ATTEMPTS)
    for settlement in (poisoned, *others):
        await meter.settle(settlement)
    await spool.close()
    assert spool.pending == 3
    real = store.settle

    async def settle(settlement: Settlement) -> None:
        if settlement.reservation_id == poisoned.reservation_id:
            raise StoreError("injected: ValidationException, too many items in the transaction")
        await real(settlement)

    monkeypatch.setattr(store, "settle", settle)
    assert await spool.redrive(store) == 2
    assert spool.pending == 1
    lines = await store.usage(UsageQuery([key.id], 0, time.time() + 1))
    assert sorted(i.request_id for i in lines) == sorted(s.item.request_id for s in others if s.item)


TORN = b'{"add": {"reservation_id": "r-0f3a", "budgets": ['  # a line whose write was cut off: no end, no newline


async def test_a_torn_last_line_costs_only_itself(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed while it appended (or a full disk) leaves the file's last line without its end: the next
    settlement was appended onto it, the merged line could not be read, and the settlement was lost (0 pending,
    never re-driven; the next re-drive emptied the file). Each entry now starts on a line of its own, and a line
    that cannot be read is kept aside, never emptied away."""
    path = tmp_path / "spool.jsonl"
    path.write_bytes(TORN)
    spool = SettlementSpool(path)
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    settlement = await admitted(meter, key, 0.2)
    refuse_settlements(monkeypatch, store, SETTLE_ATTEMPTS)
    await meter.settle(settlement)
    await spool.close()
    assert spool.pending == 1
    restarted = SettlementSpool(path)  # (or another process sharing the file)
    assert restarted.pending == 1
    assert await restarted.redrive(store) == 1
    assert path.read_bytes() == b"" and restarted.pending == 0
    assert (tmp_path / "spool.jsonl.unreadable").read_bytes() == TORN + b"\n"
    [kept] = [r for r in caplog.records if r.getMessage().startswith("unreadable lines of the settlement spool")]
    assert vars(kept)["lines"] == 1 and "r-0f3a" not in str(vars(kept))  # said once, without the line
    assert [i.request_id for i in await store.usage(UsageQuery([key.id], 0, time.time() + 1))] == [
        settlement.item.request_id if settlement.item else None
    ]
    committed, paid, tokens = await spent(store, key)
    assert committed == pytest.approx(0.2) and paid == pytest.approx(0.2) and tokens == 150


async def test_an_unreadable_line_is_kept_aside_not_emptied_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the line (torn, or written over), it stays while anything in the file is pending; once nothing is,
    it goes beside the file, after any kept there before, and the file is emptied."""
    store = open_store("sqlite://")
    path = tmp_path / "spool.jsonl"
    aside = tmp_path / "spool.jsonl.unreadable"
    aside.write_bytes(b"kept before\n")
    path.write_bytes(b"garbage\n")
    spool = SettlementSpool(path)
    item = line("k", 0.1)
    spool.add(Settlement(item.request_id, [], 0.0, [], item), "injected")
    refuse_settlements(monkeypatch, store, 1)
    assert await spool.redrive(store) == 0
    assert path.read_bytes().startswith(b"garbage\n") and aside.read_bytes() == b"kept before\n"
    with path.open("ab") as file:
        file.write(TORN)
    assert await spool.redrive(store) == 1
    assert path.read_bytes() == b"" and aside.read_bytes() == b"kept before\ngarbage\n" + TORN + b"\n"
    await store.close()


SPOOLING = """
import sys
from handler.pipeline.spool import SettlementSpool
from handler.ports import Settlement
spool = SettlementSpool(sys.argv[1])
for n in range(20):
    spool.add(Settlement(f"{sys.argv[2]}-{n}", [], 0.0, [], None), "injected")
"""


def test_processes_sharing_a_spool_a_killed_one_tore_keep_every_settlement(tmp_path: Path) -> None:
    """Two processes spooling at once onto a last line a killed one tore: the check for its end and the append are
    under the file's lock, so one newline goes before the first entry and none is written onto another's."""
    path = tmp_path / "spool.jsonl"
    path.write_bytes(TORN)
    spooling = [
        subprocess.Popen([sys.executable, "-c", SPOOLING, str(path), name], stdout=subprocess.DEVNULL)
        for name in ("a", "b")
    ]
    assert [process.wait(timeout=60) for process in spooling] == [0, 0]
    assert SettlementSpool(path).pending == 40
    assert path.read_bytes().startswith(TORN + b"\n") and path.read_bytes().count(b"\n") == 41


async def test_a_settlement_applied_but_unanswered_is_spooled_and_still_counts_once(
    dynamo: DynamoServer, tmp_path: Path
) -> None:
    """DynamoDB applied the write, the answer was lost, later attempts were refused: the re-drive finds the
    settlement marker and changes nothing."""
    client = FlakyClient(dynamo)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    settlement = await admitted(meter, key)
    client.lose("TransactWriteItems", 1)
    client.fail("TransactWriteItems", "InternalServerError", SETTLE_ATTEMPTS - 1)
    await meter.settle(settlement)
    await spool.close()
    assert spool.pending == 1 and client.sent["TransactWriteItems"] == 1
    assert await spool.redrive(store) == 1
    committed, paid, tokens = await spent(store, key)
    assert committed == pytest.approx(0.2) and paid == pytest.approx(0.2) and tokens == 150
    assert len(await store.usage(UsageQuery([key.id], 0, time.time() + 1))) == 1
    await store.close()


class Stdout:
    """sys.stdout as a pipe has it (block-buffered): what was flushed, and what is still in the buffer."""

    def __init__(self) -> None:
        self.flushed = ""
        self.buffered = ""

    def write(self, text: str) -> int:
        self.buffered += text
        return len(text)

    def flush(self) -> None:
        self.flushed += self.buffered
        self.buffered = ""


async def test_each_spooled_and_landed_settlement_is_a_metric_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only metric was `pending_settlements`, written when the spool changed and at re-drives, which run only
    while the process does: on Lambda an environment frozen (or recycled) after spooling wrote one datapoint, and the
    alarm, which needed three periods of them, never fired. Now the spooling itself counts `settlements_spooled`
    (the alarm's input) and a re-drive `settlements_landed`, each line out of the process's buffer at once (a
    freeze, then a recycle, would lose what it holds)."""
    monkeypatch.setattr(observability, "METRICS_ON", True)
    stdout = Stdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    store = open_store("sqlite://")
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    for name in ("first", "second"):
        item = line("k", 0.1)
        spool.add(Settlement(item.request_id, [], 0.0, [], item), name)
        assert stdout.buffered == ""
    await spool.redrive(store)
    await spool.redrive(store)  # nothing left to land
    assert stdout.buffered == ""
    emitted = [orjson.loads(raw) for raw in stdout.flushed.splitlines() if '"_aws"' in raw]
    names = ("settlements_spooled", "settlements_landed", "pending_settlements")
    assert [{name: e[name] for name in names if name in e} for e in emitted] == [
        {"settlements_spooled": [1.0], "pending_settlements": [1.0]},
        {"settlements_spooled": [1.0], "pending_settlements": [2.0]},
        {"settlements_landed": [2.0], "pending_settlements": [0.0]},
        {"pending_settlements": [0.0]},
    ]  # (each value a list, as Powertools writes it)
    for e in emitted:
        [directive] = e["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == observability.NAMESPACE and directive["Dimensions"] == [["service"]]
        assert [m["Name"] for m in directive["Metrics"]] == [name for name in reversed(names) if name in e]
        assert {m["Unit"] for m in directive["Metrics"]} == {"Count"}
        assert e["service"] == observability.SERVICE
    await store.close()


def test_health_tells_admins_how_many_settlements_wait() -> None:
    from starlette.testclient import TestClient

    from handler.api.app import create_app
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    with TestClient(create_app(gateway)) as client:
        admin = client.portal.call(KeyAdmin(KeyService(gateway.store, 0)).mint, record(admin=True))  # type: ignore[union-attr]
        user = client.portal.call(KeyAdmin(KeyService(gateway.store, 0)).mint, record())  # type: ignore[union-attr]
        item = line(user.record.id, 0.1)
        gateway.spool.add(Settlement(item.request_id, [], 0.0, [], item), "injected")
        assert client.get("/health").json() == {"status": "ok", "region": gateway.shown_region}
        as_user = client.get("/health", headers={"authorization": f"Bearer {user.key}"})
        assert "pending_settlements" not in as_user.json()
        as_admin = client.get("/health", headers={"authorization": f"Bearer {admin.key}"})
        assert as_admin.json()["pending_settlements"] == 1
        # Liveness, whatever the header holds: no valid key (a revoked one, a proxy's Basic credentials) is a 200
        # with no count, never the 401 a probe would read as the gateway down.
        revoked = client.portal.call(KeyAdmin(KeyService(gateway.store, 0)).mint, record(admin=True))  # type: ignore[union-attr]
        client.portal.call(KeyAdmin(KeyService(gateway.store, 0)).revoke, revoked.record)  # type: ignore[union-attr]
        for header in ("Bearer gwk_nope", "Basic dXNlcjpwYXNz", f"Bearer {revoked.key}", "Bearer"):
            answer = client.get("/health", headers={"authorization": header})
            assert answer.status_code == 200 and answer.json() == {"status": "ok", "region": gateway.shown_region}


async def test_a_failed_background_task_is_logged_never_left_unretrieved(caplog: pytest.LogCaptureFixture) -> None:
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})

    async def fails() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gateway.spawn(fails())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not gateway.background
        gc.collect()
    assert "never retrieved" not in caplog.text
    failures = [r for r in caplog.records if r.getMessage() == "a background task failed"]
    assert len(failures) == 1 and failures[0].exc_info and "boom" in str(failures[0].exc_info[1])
    await gateway.aclose()


async def test_drain_waits_out_failed_and_cancelled_tasks_and_stops_when_itself_cancelled() -> None:
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    finished: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    async def lands() -> None:
        await asyncio.sleep(0.02)
        finished.append("landed")

    gateway.spawn(fails())
    gateway.spawn(lands())
    cancelled = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    gateway.background.add(cancelled)
    cancelled.add_done_callback(gateway.background.discard)
    cancelled.cancel()
    await gateway.drain()  # neither the failure nor the cancelled task ends the drain early or raises
    assert finished == ["landed"] and not gateway.background

    gateway.spawn(asyncio.sleep(10))
    drain = asyncio.get_running_loop().create_task(gateway.drain())
    await asyncio.sleep(0.01)
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
    await gateway.aclose()


async def test_a_spool_whose_file_fails_keeps_the_settlement_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store("sqlite://")
    (tmp_path / "spool.jsonl").mkdir()  # a folder where the file should be: every write fails
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    item = line("k", 0.1)
    spool.add(Settlement(item.request_id, [], 0.0, [], item), "injected")
    assert spool.pending == 1
    [logged] = [r for r in caplog.records if r.getMessage().startswith("settlement spooled")]
    assert vars(logged)["spool"].startswith("memory (the spool file failed")
    assert vars(logged)["settlement"]["item"]["request_id"] == item.request_id
    assert await spool.redrive(store) == 1 and spool.pending == 0
    assert await store.usage(UsageQuery(["k"], 0, time.time() + 1)) == [item]
    await store.close()


def test_the_server_re_drives_the_spool_at_start_up(tmp_path: Path) -> None:
    """Settlements an earlier run left in the spool beside the SQLite file land when the app starts."""
    from starlette.testclient import TestClient

    from handler.api.app import create_app
    from handler.pipeline.gateway import build_gateway

    database = tmp_path / "gateway.db"
    item = line("k", 0.1)
    SettlementSpool(f"{database}-settlements.jsonl").add(Settlement(item.request_id, [], 0.0, [], item), "injected")
    gateway = build_gateway(store_url=f"sqlite:///{database}", environ={})
    assert gateway.spool.pending == 1
    with TestClient(create_app(gateway)) as client:  # (runs the app's lifespan, as uvicorn does)
        for _ in range(100):
            if not gateway.spool.pending:
                break
            client.portal.call(asyncio.sleep, 0.02)  # type: ignore[union-attr]
        assert gateway.spool.pending == 0
        assert client.portal.call(gateway.store.usage, UsageQuery(["k"], 0, time.time() + 1)) == [item]  # type: ignore[union-attr]


async def test_a_spool_found_at_start_up_is_read_and_re_driven_and_an_empty_one_is_never_read(tmp_path: Path) -> None:
    """The gateway reads its spool only if its file holds anything (a stat at start-up, as a Lambda's import and a
    server's lifespan start it): settlements an earlier environment left there still land, and once they have, the
    next start reads nothing."""
    from handler.pipeline.gateway import build_gateway

    database = tmp_path / "gateway.db"
    item = line("k", 0.1)
    SettlementSpool(f"{database}-settlements.jsonl").add(Settlement(item.request_id, [], 0.0, [], item), "injected")
    gateway = build_gateway(store_url=f"sqlite:///{database}", environ={})
    assert gateway.spooled.spool is None  # (nothing read before the start)
    gateway.start()
    spool = gateway.spooled.spool
    assert spool is not None and spool.pending == 1
    for _ in range(100):
        if not spool.pending:
            break
        await asyncio.sleep(0.02)
    assert spool.pending == 0
    assert await gateway.store.usage(UsageQuery(["k"], 0, time.time() + 1)) == [item]
    await gateway.aclose()
    restarted = build_gateway(store_url=f"sqlite:///{database}", environ={})
    restarted.start()
    assert restarted.spooled.spool is None and restarted.spooled.count() == 0  # the file emptied once all landed
    await restarted.aclose()


async def test_a_settlement_cancelled_between_attempts_is_spooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budgets, "SETTLE_FIRST_DELAY_S", 10.0)  # it will be waiting to retry when cancelled
    store = open_store("sqlite://")
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(store, KeyService(store, 0), 60, spool=spool)
    key = record(budget_usd=1.0)
    settlement = await admitted(meter, key)
    refuse_settlements(monkeypatch, store, 1)
    task = asyncio.get_running_loop().create_task(meter.settle(settlement))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert spool.pending == 1
    assert await spool.redrive(store) == 1
    assert [i.request_id for i in await store.usage(UsageQuery([key.id], 0, time.time() + 1))] == [
        settlement.item.request_id  # type: ignore[union-attr]
    ]
    await store.close()


async def test_a_background_settlement_joins_the_batch_without_a_task_and_drain_waits_for_it() -> None:
    """A request's settlement reaches the embedded store's batch from a loop callback, after the request's own
    step: no task per settlement, and `drain` (shutdown, the end of an invocation) still waits for it."""
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    meter = Meter(gateway.store, gateway.keys, 60)
    key = record(budget_usd=2.0, tpm=10_000)
    settlements = [await admitted(meter, key, 0.1) for _ in range(3)]
    tasks = len(asyncio.all_tasks())
    for settlement in settlements:
        gateway.settle_soon(meter, settlement)
    assert gateway.queued == 3 and not gateway.landing  # not yet: after this step
    await asyncio.sleep(0)
    assert gateway.queued == 0 and len(gateway.landing) == 3
    assert len(asyncio.all_tasks()) == tasks and not gateway.background
    await gateway.drain()
    assert not gateway.landing and not gateway.background
    lines = await gateway.store.usage(UsageQuery([key.id], 0, time.time() + 1))
    assert sorted(i.request_id for i in lines) == sorted(s.item.request_id for s in settlements if s.item)
    committed, paid, tokens = await spent(gateway.store, key)
    assert committed == pytest.approx(0.3) and paid == pytest.approx(0.3) and tokens == 450
    await gateway.aclose()


@pytest.mark.parametrize("failures", [1, SETTLE_ATTEMPTS + 1])
async def test_a_batched_settlement_that_fails_is_retried_in_a_task_then_spooled(
    failures: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first attempt failing (the batch's operation raising), the settlement takes the retrying path: it
    lands once, or after every attempt failed it waits in the spool; never lost, never counted twice."""
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(gateway.store, gateway.keys, 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    settlement = await admitted(meter, key, 0.2)
    store = gateway.store
    real = store._settle_sliced  # type: ignore[attr-defined]
    left = [failures]

    def failing(*args: object) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise StoreError("injected: the write failed")
        real(*args)

    monkeypatch.setattr(store, "_settle_sliced", failing)
    refuse_settlements(monkeypatch, store, max(0, failures - 1))  # the retries' attempts, refused before the batch
    gateway.settle_soon(meter, settlement)
    await gateway.drain()
    lines = await store.usage(UsageQuery([key.id], 0, time.time() + 1))
    if failures == 1:
        assert spool.pending == 0 and len(lines) == 1
    else:
        assert spool.pending == 1 and lines == []
        monkeypatch.undo()
        assert await spool.redrive(store) == 1
    committed, paid, tokens = await spent(store, key)
    assert committed == pytest.approx(0.2) and paid == pytest.approx(0.2) and tokens == 150
    await spool.close()
    await gateway.aclose()


async def test_a_batched_settlement_cancelled_under_it_is_spooled(tmp_path: Path) -> None:
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(gateway.store, gateway.keys, 60, spool=spool)
    key = record(budget_usd=1.0, tpm=10_000)
    settlement = await admitted(meter, key, 0.2)
    gateway.settle_soon(meter, settlement)
    await asyncio.sleep(0)
    [done] = gateway.landing
    done.cancel()
    await asyncio.sleep(0)
    assert spool.pending == 1 and not gateway.landing
    await gateway.drain()
    assert await spool.redrive(gateway.store) == 1
    assert await spool.redrive(gateway.store) == 0
    committed, paid, _ = await spent(gateway.store, key)
    assert committed == pytest.approx(0.2) and paid == pytest.approx(0.2)
    await spool.close()
    await gateway.aclose()


def test_a_spooled_settlement_keeps_its_reservations_expiry() -> None:
    """DynamoDB finds a reservation by its minute of expiry: a spooled settlement that lost it would take its
    reservation for released, and the budget would hold it until that minute ended."""
    settlement = Settlement("r", [BudgetCharge("k", "total", 1.0, 0.25)], 0.5, [], None, "us-east-1", 1_800_000_000.5)
    assert settlement_from_dict(orjson.loads(orjson.dumps(settlement_to_dict(settlement)))) == settlement
    old = settlement_to_dict(settlement)
    del old["expires_at"]  # spooled by a gateway before the field
    assert settlement_from_dict(old).expires_at is None


@pytest.mark.parametrize("kind", ["sqlite", "dynamodb"])
def test_settlements_whose_spool_is_gone_land_once_from_their_log_lines(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Lambda environment recycled with its `/tmp` spool leaves only the `settlement spooled` log lines:
    `gateway store replay-logs` lands them from the logs as CloudWatch keeps them, each once, however often run
    (it was a manual edit of a spool file, docs/store.md)."""
    import io
    import logging

    from handler.entry.cli import main

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        server: DynamoServer = request.getfixturevalue("dynamo")
        url = server.store_url(server.create_table())
    key = record(budget_usd=1.0, tpm=10_000)
    written = io.StringIO()
    to_the_log = logging.StreamHandler(written)
    to_the_log.setFormatter(observability.logger.registered_handler.formatter)

    async def spooled() -> list[Settlement]:
        store = open_store(url)
        meter = Meter(store, KeyService(store, 0), 60, spool=SettlementSpool(tmp_path / "lost-with-tmp.jsonl"))
        settlements = [await admitted(meter, key, cost) for cost in (0.2, 0.3)]
        observability.logger.addHandler(to_the_log)
        try:
            for settlement in settlements:
                meter.spool.add(settlement, "the invocation's time ran out before the store took it")
        finally:
            observability.logger.removeHandler(to_the_log)
            await meter.spool.close()
            await store.close()
        return settlements

    settlements = asyncio.run(spooled())
    (tmp_path / "lost-with-tmp.jsonl").unlink()  # the environment is gone
    lines = written.getvalue().splitlines()
    assert len(lines) == 2 and all('"settlement spooled' in line for line in lines)
    exported = tmp_path / "exported.log"  # a CloudWatch export: a timestamp before each line, other lines between
    exported.write_text(
        "2026-12-05T00:00:00.000Z START RequestId: 1\n"
        + "".join(f"2026-12-05T00:00:0{n}.000Z {line}\n" for n, line in enumerate([*lines, lines[0]]))
        + '{"level":"INFO","message":"request","settlement":{"not":"one"}}\n'
    )
    cut_short = tmp_path / "cut-short.log"
    cut_short.write_text(lines[0][:-40] + "\n")
    filtered = tmp_path / "filtered.json"  # `aws logs filter-log-events --output json`
    filtered.write_text(orjson.dumps({"events": [{"message": line, "timestamp": 1} for line in lines]}).decode())

    async def ledger() -> tuple[list[str], tuple[float, float, int]]:
        store = open_store(url)
        try:
            items = await store.usage(UsageQuery([key.id], 0, time.time() + 1))
            return sorted(item.request_id for item in items), await spent(store, key)
        finally:
            await store.close()

    expected = sorted(s.item.request_id for s in settlements if s.item is not None)
    assert main(["store", "replay-logs", str(cut_short), "--store", url]) == 1  # said, never passed over in silence
    assert "1 'settlement spooled' log lines could not be read" in capsys.readouterr().err
    for logs in (exported, exported, filtered):  # again, and from the other format: nothing changes
        assert main(["store", "replay-logs", str(logs), "--store", url]) == 0
        assert capsys.readouterr().out == "ok: 2 of 2 spooled settlements landed (each at most once)\n"
        requests, (committed, paid, tokens) = asyncio.run(ledger())
        assert requests == expected
        assert paid == pytest.approx(0.5) and tokens == 300
        # (On the embedded store the two requests were admitted from a slice of the budget, which the process
        # that is gone held: committed until it expires, as a crashed process's slices are.)
        assert committed == pytest.approx(0.5 if kind == "dynamodb" else 1.5)
