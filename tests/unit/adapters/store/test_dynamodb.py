"""What only the DynamoDB store does: requests DynamoDB accepts for every shape of item, retries under
contention (injected at the client: neither emulator produces it), reports in a bounded number of queries."""

from __future__ import annotations

import asyncio
import base64
import calendar
import functools
import re
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from adapters.sigv4 import Credentials
from adapters.store import open_store
from adapters.store.dynamo_client import ConditionFailed, DynamoDBClient
from adapters.store.dynamo_keys import stamped
from adapters.store.dynamodb import LEDGER_SHARDS, SWEEP_SECONDS, DynamoDBStore
from adapters.store.dynamodb_url import dynamodb_client
from adapters.store.expressions import Expression, Item, num, read_num, text
from adapters.store.records import EXPIRED_KEY_GRACE_SECONDS, LEDGER_TTL_SECONDS, key_purge_after
from adapters.store.responses import pack
from handler.api.key_routes import MAX_MODEL_LIMITS, KeySpec
from handler.dashboard.reports import ReportBuilder, parse_report, parse_views
from handler.pipeline import budgets
from handler.pipeline.budgets import SETTLE_BY, Meter, period_of
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.pipeline.spool import SettlementSpool
from handler.ports import (
    LEDGER_BATCH,
    Admission,
    BudgetCharge,
    BudgetRefused,
    ChildLimitReached,
    ConflictError,
    KeyPlace,
    KeyRecord,
    LedgerItem,
    RateCharge,
    Settlement,
    StoredResponse,
    StoreError,
    UsageQuery,
)
from tests.support.contention import FlakyClient
from tests.support.dynamo import DynamoServer
from tests.unit.adapters.store.test_contract import PERIOD, admission, line, record, settlement, this_minute


@pytest.fixture
async def flaky(dynamo: DynamoServer) -> AsyncIterator[tuple[FlakyClient, DynamoDBStore]]:
    client = FlakyClient(dynamo)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    yield client, store
    await store.close()


def test_an_update_declares_only_the_placeholders_it_uses() -> None:
    """DynamoDB refuses a request that declares a name or value no expression uses (ValidationException)."""
    e = Expression()
    unused_name, unused_value = e.name("r:abc"), e.value(num(1))
    e.clauses["ADD"].append(f"{e.name('w:tpm')} {e.value(num(5))}")
    e.conditions.append(f"attribute_exists({e.name('n:tpm')})")
    request = e.update({"pk": text("METER#k"), "sk": text("METER")}, "t")
    assert unused_name not in request["ExpressionAttributeNames"]
    assert unused_value not in request["ExpressionAttributeValues"]
    assert set(request["ExpressionAttributeNames"].values()) == {"w:tpm", "n:tpm"}
    assert "ExpressionAttributeValues" not in Expression().update({}, "t")


# --- contention -------------------------------------------------------------------------------------

CONTENTION = [
    ("UpdateItem", "TransactionConflictException"),
    ("UpdateItem", "ThrottlingException"),
    ("UpdateItem", "ProvisionedThroughputExceededException"),
    ("UpdateItem", "RequestLimitExceeded"),
    ("TransactWriteItems", "TransactionCanceledException"),
    ("TransactWriteItems", "TransactionConflictException"),
]


ANY_CALL = "*"


def patterns_matching(model: str, count: int) -> list[str]:
    """`count` distinct glob patterns that each match `model`: its prefixes and suffixes around a `*`, and each of its
    characters between two."""
    found = [model[:n] + "*" for n in range(len(model) + 1)] + ["*" + model[n:] for n in range(1, len(model))]
    found += ["*" + model[n] + "*" for n in range(len(model))]
    return list(dict.fromkeys(found))[:count]


def operators(expression: str) -> int:
    """Comparators, logical operators and functions in an expression (DynamoDB's "operators or functions")."""
    return len(re.findall(r"<=|>=|<>|=|<|>|\bAND\b|\bOR\b|\bNOT\b|\b[a-z_]+\(", expression))


def test_an_admission_of_a_key_at_its_bounds_fits_dynamodbs_expression_limits() -> None:
    """DynamoDB refuses an expression over 4 KB or of more than 300 operators and functions (moto checks neither).
    Every `model_limits` entry matching the model is a clause of the admission's update of the key's item: 30 of them
    (the spec allowed 100) made a condition of 4.7 KB and 383 operators, and every request of the key to that model was
    a 503 (review dynrev, D2). At the spec's bound, with the key's own rpm, tpm and budget, it fits."""
    patterns = patterns_matching("gpt-4o-mini", MAX_MODEL_LIMITS)
    assert len(patterns) == MAX_MODEL_LIMITS
    limits = {p: {"rpm": 1_000, "tpm": 1_000_000} for p in patterns}
    key = record(model_limits=limits, budget_usd=10.0, rpm=5, tpm=5)
    rates = Meter._rates(key, key, "gpt-4o-mini", int(time.time() // 60), 1_000)
    assert len(rates) == 2 + 2 * MAX_MODEL_LIMITS  # every entry binds, rpm and tpm each on a counter of its own
    admission = Admission("r" * 32, key.id, [BudgetCharge(key.id, PERIOD, 10.0, 0.01)], rates, time.time() + 960)
    store = DynamoDBStore(None, "gateway")
    (meter,) = store._admission_write(admission, set()).meters
    update = store._admit_update(admission, meter)
    for expression in (update["ConditionExpression"], update["UpdateExpression"]):
        assert len(expression.encode()) <= 4096 and operators(expression) <= 300, (len(expression), expression)
    with pytest.raises(ValidationError):
        KeySpec(name="k", model_limits={**limits, "one-more*": {"rpm": 1}})


class AnswerLost(httpx.AsyncBaseTransport):
    """Forwards every request to moto; the next one of `lose` (an operation, or `ANY_CALL`) lands but its answer
    is lost, as a read timeout loses it, so the client sends it again."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.lose: str | None = None
        self.times = 1  # how many answers of `lose` in a row are lost

    def losing(self, request: httpx.Request) -> bool:
        return self.lose is not None and self.lose in (ANY_CALL, request.headers["x-amz-target"].rpartition(".")[2])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if self.losing(request):
            self.times -= 1
            if self.times <= 0:
                self.lose, self.times = None, 1
            raise httpx.ReadTimeout("applied, answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("operation", ["UpdateItem", "TransactWriteItems"])
async def test_an_admission_sent_again_after_its_answer_was_lost_counts_once(
    dynamo: DynamoServer, operation: str
) -> None:
    """The client sends a request again when its answer does not come (a timeout); an admission that had landed
    must not reserve twice (the extra reservation was never settled nor released: committed for good)."""
    transport = AnswerLost()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    charges = [BudgetCharge(key, PERIOD, 1.0, 0.4)]
    if operation == "TransactWriteItems":  # a child and its budgeted parent: one transaction over both
        charges.append(BudgetCharge(parent, PERIOD, 1.0, 0.4))
    adm = Admission(uuid.uuid4().hex, key, charges, [], time.time() + 60)
    transport.lose = operation
    snapshot = await store.admit(adm)
    assert transport.lose is None  # the answer was lost once, and the request sent again
    assert snapshot.committed_usd.get(PERIOD, snapshot.committed_usd.get(key)) == pytest.approx(0.4)
    await store.settle(settlement(adm, 0.2, line(key, 0.2)))
    for key_id in {charge.key_id for charge in charges}:
        meter = await store.meter(key_id, PERIOD)
        assert meter.committed_usd[PERIOD] == pytest.approx(0.2) and meter.spent_usd[PERIOD] == pytest.approx(0.2)
    await store.close()


@pytest.mark.parametrize("operation", ["UpdateItem", "TransactWriteItems"])
async def test_a_rate_only_admission_sent_again_after_its_answer_was_lost_counts_once(
    dynamo: DynamoServer, operation: str
) -> None:
    """Without a budget there is no reservation for the write sent again to find: it counted the request twice
    in its minute's rate (a key at 2 rpm was refused after one request)."""
    transport = AnswerLost()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    window = this_minute()  # (the counts are read back in the same minute)
    rates = [RateCharge("rpm", window, 2, 1)]
    if operation == "TransactWriteItems":  # the parent's limit too: one transaction over both meters
        rates.append(RateCharge("rpm", window, 2, 1, key_id=parent))
    transport.lose = operation
    snapshot = await store.admit(Admission(uuid.uuid4().hex, key, [], rates, time.time() + 60))
    assert transport.lose is None  # the answer was lost once, and the request sent again
    counted = {rate.counter: 1 for rate in rates}  # (the parent's shared counter reported as `rpm@<parent>`)
    assert snapshot.rates == counted
    for key_id in {rate.key_id or key for rate in rates}:
        assert (await store.meter(key_id, PERIOD)).rates == {"rpm": 1}
    again = await store.admit(Admission(uuid.uuid4().hex, key, [], rates, time.time() + 60))
    assert again.rates == {name: 2 for name in counted}
    await store.close()


class LandsThenFails(httpx.AsyncBaseTransport):
    """Forwards every request to moto, but `operation`'s next `left` calls: the first lands and its answer is lost (a
    read timeout); the client's attempts after it are lost too (`then == "lost"`: each sent, refused by its own
    condition, its answer lost) or answered 500 without reaching the table (`"500"`). `landing = False`: none of them
    reaches the table, each answered 500."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.operation, self.then, self.left, self.landing = "", "lost", 0, True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.left and request.headers["x-amz-target"].endswith(f".{self.operation}"):
            self.left -= 1
            if not self.landing or (self.then == "500" and self.left < 2):
                body = {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "injected"}
                return httpx.Response(500, content=orjson.dumps(body), request=request)
            await (await self.inner.handle_async_request(request)).aread()
            raise httpx.ReadTimeout("applied, answer lost", request=request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("then", ["lost", "500"])
@pytest.mark.parametrize("operation", ["UpdateItem", "TransactWriteItems"])
async def test_an_admission_that_landed_though_every_answer_was_lost_is_admitted_once(
    dynamo: DynamoServer, operation: str, then: str
) -> None:
    """Every attempt of the client failed after the first landed: the admission failed as the store's error (a 503,
    the request sent nowhere), and its reservation and rate count stayed on the meter, known to nobody, until they
    expired (the client's retry refused: 402 on the budget, 429 at rpm 1). Its items, read once more, name it: it
    is the request's, admitted once."""
    transport = LandsThenFails()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    charges = [BudgetCharge(key, PERIOD, 1.0, 0.4)]
    if operation == "TransactWriteItems":  # a child and its budgeted parent: one transaction over both meters
        charges.append(BudgetCharge(parent, PERIOD, 1.0, 0.4))
    adm = Admission(uuid.uuid4().hex, key, charges, [RateCharge("rpm", this_minute(), 2, 1)], time.time() + 960)
    transport.operation, transport.then, transport.left = operation, then, 3  # (the client's three attempts)
    snapshot = await store.admit(adm)
    assert transport.left == 0 and snapshot.rates == {"rpm": 1}
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.4) and meter.rates == {"rpm": 1}
    await store.settle(settlement(adm, 0.2, line(key, 0.2)))
    for key_id in {charge.key_id for charge in charges}:
        meter = await store.meter(key_id, PERIOD)
        assert meter.committed_usd[PERIOD] == pytest.approx(0.2) and meter.spent_usd[PERIOD] == pytest.approx(0.2)
    await store.close()


async def test_an_admission_that_never_landed_fails_and_holds_nothing(dynamo: DynamoServer) -> None:
    transport = LandsThenFails()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key = uuid.uuid4().hex[:12]
    adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.4)], [], time.time() + 960)
    transport.operation, transport.left, transport.landing = "UpdateItem", 3, False
    with pytest.raises(StoreError):
        await store.admit(adm)
    assert (await store.meter(key, PERIOD)).committed_usd.get(PERIOD, 0.0) == 0.0
    await store.close()


async def test_a_token_correction_lands_only_in_the_minute_it_corrects(dynamo: DynamoServer) -> None:
    """A settlement checks its correction's minute against the clock, then writes: a request in the next minute
    (or a gateway whose clock is ahead) can restart the counter between the two. The correction, 900 tokens
    fewer than estimated, then came off the new minute's count: -890 tokens, the next minute's limit freed."""
    minute = int(time.time() // 60)
    store = DynamoDBStore(dynamo.client(), dynamo.create_table(), clock=lambda: minute * 60 + 59.9)
    key = uuid.uuid4().hex[:12]
    first = Admission(
        uuid.uuid4().hex,
        key,
        [BudgetCharge(key, PERIOD, 1.0, 0.4)],
        [RateCharge("tpm", minute, 2000, 1000), RateCharge("tpm:m", minute, 2000, 1000)],
        time.time() + 60,
    )
    await store.admit(first)
    await store.admit(Admission(uuid.uuid4().hex, key, [], [RateCharge("tpm", minute + 1, 2000, 10)], time.time() + 60))
    corrections = [RateCharge("tpm", minute, 2000, -900), RateCharge("tpm:m", minute, 2000, -900)]
    await store.settle(
        Settlement(
            first.reservation_id,
            [BudgetCharge(key, PERIOD, 1.0, 0.1)],
            0.4,
            corrections,
            line(key, 0.1),
            expires_at=first.expires_at,
        )
    )
    (item,) = await store._meter_items(key)
    assert store._rate_counts(item)["tpm:m"] == (minute, 100)  # its counter still counts that minute: corrected
    store.clock = lambda: (minute + 1) * 60
    meter = await store.meter(key, PERIOD)
    assert meter.rates == {"tpm": 10}
    assert meter.committed_usd[PERIOD] == pytest.approx(0.1) and meter.spent_usd[PERIOD] == pytest.approx(0.1)
    same = Admission(uuid.uuid4().hex, key, [], [RateCharge("tpm", minute + 1, 2000, 500)], time.time() + 60)
    await store.admit(same)  # in its own minute, a correction still lands
    await store.settle(
        Settlement(same.reservation_id, [], 0.0, [RateCharge("tpm", minute + 1, 2000, -200)], line(key, 0.0))
    )
    assert (await store.meter(key, PERIOD)).rates == {"tpm": 310}
    await store.close()


class AnswerLostAfter(AnswerLost):
    """`AnswerLost`, with `between` (another gateway's admission) run after the lost call landed."""

    between: Callable[[], Awaitable[Any]] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        losing = self.losing(request)
        try:
            return await super().handle_async_request(request)
        finally:
            if losing and self.between is not None:
                await self.between()


@pytest.mark.parametrize("shared", ["budget", "rate"])
async def test_an_admission_sent_again_after_a_siblings_on_their_parent_counts_once(
    dynamo: DynamoServer, shared: str
) -> None:
    """A child's admission is one transaction over its item and its parent's. It landed, its answer was lost, and
    a sibling's admission wrote the parent's item before it was sent again: that item no longer named it, so it
    was taken for unmet, tried three times, and answered 503 (its reservation held until it expired)."""
    table = dynamo.create_table()
    transport = AnswerLostAfter()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store, other = DynamoDBStore(client, table, owned=[client]), DynamoDBStore(dynamo.client(), table)
    key, sibling, parent = (uuid.uuid4().hex[:12] for _ in range(3))
    window = this_minute()  # (the counts are read back in the same minute)
    charges, rates, theirs = [BudgetCharge(key, PERIOD, 1.0, 0.4)], [], []
    if shared == "budget":
        charges.append(BudgetCharge(parent, PERIOD, 10.0, 0.4))
        theirs = [BudgetCharge(parent, PERIOD, 10.0, 0.1)]
    else:
        rates = [RateCharge("rpm", window, 100, 1, key_id=parent)]
    sibling_admission = Admission(uuid.uuid4().hex, sibling, theirs, rates, time.time() + 900)
    transport.between = functools.partial(other.admit, sibling_admission)
    transport.lose = "TransactWriteItems"
    adm = Admission(uuid.uuid4().hex, key, charges, rates, time.time() + 900)
    assert (await store.admit(adm)).committed_usd[PERIOD] == pytest.approx(0.4)
    assert transport.lose is None
    await store.settle(settlement(adm, 0.2, line(key, 0.2)))
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.2)
    if shared == "budget":
        assert (await store.meter(parent, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.3)
    else:
        assert (await store.meter(parent, PERIOD)).rates == {"rpm": 2}
    await store.close()
    await other.close()


async def test_a_release_sent_again_after_its_answer_was_lost_still_frees_the_budget(dynamo: DynamoServer) -> None:
    """A refusal releases expired reservations and admits again if that freed anything. A release that landed but
    whose answer was lost is sent again and finds them gone: it said nothing was freed, and the request was
    refused (402) though the budget was free."""
    transport = AnswerLost()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key = uuid.uuid4().hex[:12]
    await store.admit(Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.8)], [], time.time() - 61))
    fresh = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.5)], [], time.time() + 60)
    with pytest.raises(BudgetRefused):
        await store.admit(fresh)
    transport.lose = "UpdateItem"
    assert await store.release_expired(key, time.time()) == pytest.approx(0.8)
    assert transport.lose is None  # the release's answer was lost once, and the request sent again
    assert (await store.admit(fresh)).committed_usd[PERIOD] == pytest.approx(0.5)
    await store.close()


def losing_store(dynamo: DynamoServer) -> tuple[AnswerLost, DynamoDBStore]:
    """A store whose client loses the answer of the next call of `transport.lose`, and sends it again."""
    transport = AnswerLost()
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=transport)
    return transport, DynamoDBStore(client, dynamo.create_table(), owned=[client])


async def test_a_settlement_sent_again_after_its_answer_was_lost_counts_once(dynamo: DynamoServer) -> None:
    """Its transaction (marker, meter, line item) sent again is refused by its own marker, which says it landed:
    one line, the spend once (as a spooled settlement re-driven is)."""
    transport, store = losing_store(dynamo)
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.4)
    await store.admit(adm)
    item = line(key, 0.25)
    transport.lose = "TransactWriteItems"
    await store.settle(settlement(adm, 0.25, item))
    assert transport.lose is None  # the answer was lost once, and the transaction sent again
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.25) and meter.spent_usd[PERIOD] == pytest.approx(0.25)
    assert [i.request_id for i in await store.usage(UsageQuery([key], 0, time.time() + 60))] == [item.request_id]
    await store.close()


async def test_a_settlement_writes_its_marker_its_meter_and_its_line_only(dynamo: DynamoServer) -> None:
    """Each settlement's transaction also added to a daily aggregate (`AGG#<day>`, one per key, model, day and
    region, no TTL) that nothing read (reports read the line items): a fourth item, two write units more a request,
    and items kept for good."""
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.4)
    await store.admit(adm)
    await store.settle(settlement(adm, 0.25, line(key, 0.25)))
    items = dynamo.client().scan(TableName=store.table)["Items"]
    assert sorted(i["pk"]["S"].partition("#")[0] for i in items) == ["LEDGER", "METER", "SETTLED"]
    assert all("ttl" in i for i in items if i["sk"]["S"] != "METER")
    await store.close()


async def test_a_rotation_sent_again_after_its_answer_was_lost_stands(dynamo: DynamoServer) -> None:
    """A rotation writes the key if its version is still the one read. One that landed, its answer lost, was sent
    again and refused by its own condition: the admin got 400 "the key changed while rotating; retry", the new
    secret was never shown, and retrying as told moved that unknown secret into the grace slot, so the original
    secret stopped at once despite its grace."""
    transport, store = losing_store(dynamo)
    keys = KeyService(store, 0)
    admin = KeyAdmin(keys)
    original = await admin.mint(record())
    transport.lose = "PutItem"
    rotated = await admin.rotate(original.record, 3600)
    assert transport.lose is None  # the answer was lost once, and the write sent again
    assert (await keys.authenticate(rotated.key, None)).version == 2
    assert (await keys.authenticate(original.key, None)).id == original.record.id  # in its grace
    with pytest.raises(ConflictError):  # a rotation from the same version, by another call, is a conflict
        await admin.rotate(original.record, 3600)
    await store.close()


async def test_a_key_created_again_after_its_answer_was_lost_is_created(dynamo: DynamoServer) -> None:
    """Its put, conditional on the id being free, was refused by itself when sent again: 503 for a key that
    existed, its secret never shown."""
    transport, store = losing_store(dynamo)
    key = record(admin=True)
    transport.lose = "PutItem"
    await store.create_key(key)
    assert transport.lose is None
    assert await store.get_key(key.id) == key
    with pytest.raises(ConflictError):  # the same record, created again by another call
        await store.create_key(key)
    await store.close()


async def test_a_child_minted_again_after_its_answer_was_lost_is_minted_once(dynamo: DynamoServer) -> None:
    """The child's put, its parent's count and its link are one transaction, refused by itself when sent again:
    503, the child created anyway with its secret never shown, holding one of its parent's `max_children` for as
    long as it lived; each retry by the client added another."""
    transport, store = losing_store(dynamo)
    parent = record()
    await store.create_key(parent)
    first = record(parent_id=parent.id, ancestors=[parent.id])
    await store.create_child(first, 3)  # (the parent's count exists from here: the next mint passes at once)
    child = record(parent_id=parent.id, ancestors=[parent.id])
    transport.lose = "TransactWriteItems"
    await store.create_child(child, 3)
    assert transport.lose is None
    assert await store.get_key(child.id) == child
    assert await store.child_ids(parent.id) == sorted([first.id, child.id])
    await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 3)  # counted once: one slot left
    with pytest.raises(ChildLimitReached):
        await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 3)
    with pytest.raises(ConflictError):  # the same record, minted again by another call
        await store.create_child(child, 5)
    await store.close()


async def test_a_sign_in_taken_again_after_its_answer_was_lost_signs_in(dynamo: DynamoServer) -> None:
    """Taking a token deleted it: the call sent again found nothing, and a good link answered "used already or
    expired" to its own user. Taken by one call, it is still taken for any other, as on the embedded store."""
    transport, store = losing_store(dynamo)
    token, stale = uuid.uuid4().hex, uuid.uuid4().hex
    await store.put_sign_in(token, "admin-1", time.time() + 60)
    await store.put_sign_in(stale, "admin-1", time.time() - 1)
    transport.lose = ANY_CALL
    assert await store.take_sign_in(token) == "admin-1"
    assert transport.lose is None  # the answer was lost once, and the call sent again
    assert await store.take_sign_in(token) is None
    for unusable in (stale, uuid.uuid4().hex):
        transport.lose = ANY_CALL
        assert await store.take_sign_in(unusable) is None
        assert transport.lose is None
    await store.close()


async def test_a_response_deleted_again_after_its_answer_was_lost_existed(dynamo: DynamoServer) -> None:
    """Deleting a response deleted its item: the call sent again found nothing and said the response had not
    existed. Deleted by one call, it is gone for any other, as on the embedded store."""
    transport, store = losing_store(dynamo)
    now = time.time()
    for response_id, expires_at in (("resp_live", now + 60), ("resp_old", now - 1)):
        await store.put_response(StoredResponse(response_id, "key1", [], now, expires_at, b'{"items": []}'))
    transport.lose = ANY_CALL
    assert await store.delete_response("resp_live") is True
    assert transport.lose is None  # the answer was lost once, and the call sent again
    assert await store.get_response("resp_live") is None
    assert await store.delete_response("resp_live") is False
    for unknown in ("resp_old", "resp_never"):
        transport.lose = ANY_CALL
        assert await store.delete_response(unknown) is False
        assert transport.lose is None
    raw = await store.client.get_item(TableName=store.table, Key={"pk": text("RESP#resp_live"), "sk": text("RESP")})
    assert "data" not in raw["Item"]  # the record itself is gone, not only hidden
    # Kept before items had `expires_at`: the call sent again answers by its `ttl`.
    legacy = StoredResponse("resp_legacy", "key1", [], now, now + 60, b'{"items": []}')
    item = {"pk": text("RESP#resp_legacy"), "sk": text("RESP"), "ttl": num(int(legacy.expires_at))}
    item["data"] = text(base64.b64encode(pack(legacy)).decode())
    await store.client.put_item(TableName=store.table, Item=item)
    transport.lose = ANY_CALL
    assert await store.delete_response("resp_legacy") is True
    assert transport.lose is None
    await store.close()


class ReleaseSpy(DynamoDBClient):
    """The client, noting each release's condition (moto does not enforce DynamoDB's expression limits)."""

    conditions: list[str]

    async def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "UpdateItem" and "REMOVE" in request.get("UpdateExpression", ""):
            self.conditions.append(request["ConditionExpression"])
        return await super().call(operation, request)


async def test_a_meter_item_does_not_grow_with_the_requests_in_flight(dynamo: DynamoServer) -> None:
    """Each live reservation was an attribute of its key's meter item (about 90 bytes): some 4,400 requests in
    flight under one key (a tenant's parent key holds all of its children's) passed DynamoDB's 400 KB an item,
    and every request of the key failed (503); before that, every write of the item cost a write unit per KB of
    it. Reservations are summed by their minute of expiry: one attribute a minute, whatever the traffic."""
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    key = uuid.uuid4().hex[:12]
    expires_at = (int(time.time() // 60) + 15) * 60 - 1  # every admission in the same minute of expiry
    admitted = [
        Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1000.0, 0.5)], [], expires_at) for _ in range(300)
    ]
    for adm in admitted:
        await store.admit(adm)
    (item,) = [i for i in await store._meter_items(key) if i["sk"]["S"] == "METER"]
    assert len(orjson.dumps(item)) < 400  # it was 300 attributes, some 21 KB by DynamoDB's count
    for adm in admitted[:100]:
        await store.settle(settlement(adm, 0.25, line(key, 0.25)))
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(200 * 0.5 + 100 * 0.25)
    assert meter.spent_usd[PERIOD] == pytest.approx(100 * 0.25)
    await store.close()


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> float:
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def periods_held(item: dict[str, Any]) -> set[str]:
    """The day and month periods an item has attributes of (`c:day:2027-01-01`, `x:day:2027-01-01@…`, `g:…#R`)."""
    return {found.group(0) for name in item if (found := re.search(r"(day|month):[0-9-]+", name))}


@pytest.mark.parametrize(("kind", "step", "requests"), [("day", 86400, 30), ("month", 31 * 86400, 8)])
async def test_a_meter_item_keeps_only_its_open_periods(
    dynamo: DynamoServer, kind: str, step: int, requests: int
) -> None:
    """Every past period kept its `c:`/`s:` attributes on the key's meter item, for good: after a year of one
    request a day 735 attributes and 13 KB, each write of it (two a request, twice the units in a settlement's
    transaction) 13 write units. A closed period's go once an admission has seen them; the ledger keeps its spend."""
    now = [at(2027, 1, 1)]
    store = DynamoDBStore(dynamo.client(), dynamo.create_table(), clock=lambda: now[0])
    key = uuid.uuid4().hex[:12]
    for _ in range(requests):
        charge = BudgetCharge(key, period_of(kind, now[0]), 1.0, 0.5)
        adm = Admission(uuid.uuid4().hex, key, [charge], [RateCharge("rpm", int(now[0] // 60), 100, 1)], now[0] + 900)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.25, line(key, 0.25, now[0])))
        await store.settled_chores()  # (what it left to do: `_after_settling`)
        last = charge.period
        now[0] += step
    (item,) = await store._meter_items(key)
    assert periods_held(item) == {last}
    assert len(orjson.dumps(item)) < 400
    meter = await store.meter(key, last)
    assert meter.committed_usd[last] == pytest.approx(0.25) and meter.spent_usd[last] == pytest.approx(0.25)
    lines = await store.usage(UsageQuery([key], 0, now[0]))
    assert len(lines) == requests and sum(i.cost_usd or 0 for i in lines) == pytest.approx(requests * 0.25)
    await store.close()


async def test_a_meter_item_a_year_old_sheds_its_past_days_at_its_next_request(dynamo: DynamoServer) -> None:
    """An item an older gateway grew over a year (730 past-day attributes) is trimmed by its next request, in
    updates within DynamoDB's expression limits (moto does not enforce them)."""
    client = ReleaseSpy("us-east-1", Credentials("testing", "testing"), dynamo.url)
    client.conditions = []
    now = [at(2028, 1, 1)]
    store = DynamoDBStore(client, dynamo.create_table(), clock=lambda: now[0], owned=[client])
    key = uuid.uuid4().hex[:12]
    old = {}
    for n in range(365):
        period = period_of("day", at(2027, 1, 1) + n * 86400)
        old[f"c:{period}"] = old[f"s:{period}"] = num(0.0000054)
    await store._call("put_item", TableName=store.table, Item={**store._meter_key(key), **old})
    adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, "day:2028-01-01", 1.0, 0.5)], [], now[0] + 900)
    await store.admit(adm)
    await store.settle(settlement(adm, 0.25, line(key, 0.25, now[0])))
    await store.settled_chores()  # (what it left to do: `_after_settling`)
    (item,) = await store._meter_items(key)
    assert periods_held(item) == {"day:2028-01-01"}
    assert len(client.conditions) >= 730 // 50
    assert all(len(c) <= 4096 and c.count(" AND ") < 300 for c in client.conditions)
    await store.close()


async def test_a_request_admitted_before_midnight_and_settled_after_is_charged_to_its_day(
    dynamo: DynamoServer,
) -> None:
    """Removing a closed day must not lose what settles into it late: a request admitted at 23:59:59 and settled
    after midnight is charged to the day it was admitted in, whether it settles while its reservation is live
    (the day is kept) or after it expired, between the next day's admission and that request's settlement (the
    removal, sent with the day as the admission read it, fails, and is sent again with the day as it is then)."""
    now = [at(2027, 1, 1, 23, 59, 59)]
    store = DynamoDBStore(dynamo.client(), dynamo.create_table(), clock=lambda: now[0])
    key = uuid.uuid4().hex[:12]
    day = "day:2027-01-01"

    def admitted(period: str, ttl: float) -> Admission:
        return Admission(uuid.uuid4().hex, key, [BudgetCharge(key, period, 1.0, 0.5)], [], now[0] + ttl)

    long_running, late = admitted(day, 3 * 3600), admitted(day, 900)
    await store.admit(long_running)
    await store.admit(late)
    now[0] = at(2027, 1, 2, 1, 30)  # the first day closed (an hour past its end), `late`'s reservation expired
    today = admitted("day:2027-01-02", 900)
    await store.admit(today)  # it sees the closed day
    await store.settle(settlement(late, 0.25, line(key, 0.25, at(2027, 1, 1, 23, 59, 59))))
    await store.settled_chores()  # (what it left to do: `_after_settling`)
    meter = await store.meter(key, day)
    assert meter.committed_usd[day] == pytest.approx(0.25 + 0.5) and meter.spent_usd[day] == pytest.approx(0.25)
    await store.settle(settlement(today, 0.1, line(key, 0.1, now[0])))
    await store.settled_chores()  # (what it left to do: `_after_settling`)
    (item,) = await store._meter_items(key)
    assert day in periods_held(item)  # `long_running` still holds its reservation in it
    now[0] = at(2027, 1, 2, 1, 45)
    await store.settle(settlement(long_running, 0.3, line(key, 0.3, at(2027, 1, 1, 23, 59, 59))))
    await store.settled_chores()  # (what it left to do: `_after_settling`)
    meter = await store.meter(key, day)
    assert meter.committed_usd[day] == pytest.approx(0.55) and meter.spent_usd[day] == pytest.approx(0.55)
    now[0] = at(2027, 1, 2, 3, 30)  # its reservation's minute has ended too
    tomorrow = admitted("day:2027-01-02", 900)
    await store.admit(tomorrow)
    await store.settle(settlement(tomorrow, 0.1, line(key, 0.1, now[0])))
    await store.settled_chores()  # (what it left to do: `_after_settling`)
    (item,) = await store._meter_items(key)
    assert periods_held(item) == {"day:2027-01-02"}
    lines = await store.usage(UsageQuery([key], at(2027, 1, 1, 0), at(2027, 1, 2, 0)))
    assert sorted(i.cost_usd or 0 for i in lines) == [0.25, 0.3]
    await store.close()


async def test_a_minute_whose_reservations_all_settled_takes_more(dynamo: DynamoServer) -> None:
    """A minute's bucket goes back to exactly zero whenever its requests have all settled; for tiny amounts moto
    wrote that zero as `0E-9` and failed the next addition to it (tests/support/dynamo.py `normalize_sums`)."""
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    key = uuid.uuid4().hex[:12]
    expires_at = time.time() + 900
    for _ in range(3):
        adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.000001234)], [], expires_at)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.000000617, line(key, 0.000000617)))
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(3 * 0.000000617)
    await store.close()


async def test_expired_minutes_are_released_exactly_though_settlements_change_them_meanwhile(
    dynamo: DynamoServer,
) -> None:
    """Dead reservations (timeouts, crashes) stay committed until a release: one update per item, whatever their
    number. A request of a minute being released that settles between the release's read and its write must
    neither be released twice nor hold back the rest: the minute is read again and released as it is then."""
    client = ReleaseSpy("us-east-1", Credentials("testing", "testing"), dynamo.url)
    client.conditions = []
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key = uuid.uuid4().hex[:12]
    dead = [
        Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1000.0, 0.5)], [], time.time() - 61 - 60 * (n % 3))
        for n in range(160)
    ]
    for adm in dead:
        await store.admit(adm)
    expired = await store._expired_reservations(key, time.time())
    assert len(expired) <= 4 and sum(r.amount_usd for r in expired) == pytest.approx(160 * 0.5)  # three minutes
    store._swept[key] = time.time()  # (swept just now: the settlement below leaves the release to this test)
    await store.settle(settlement(dead[70], 0.5, line(key, 0.5)))  # its process lived after all, just now
    assert await store._release(key, expired) == pytest.approx(159 * 0.5)  # none holds budget now
    assert all(len(c) <= 4096 and c.count(" AND ") < 300 for c in client.conditions)
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.5)  # the settled one's
    assert await store._expired_reservations(key, time.time()) == []
    await store.close()


async def test_reservations_written_before_buckets_still_settle_and_release(dynamo: DynamoServer) -> None:
    """A gateway deployed over a table with requests in flight: their reservations are `r:<id>` attributes, and
    their settlements (spooled ones too) carry no expiry."""
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    key = uuid.uuid4().hex[:12]
    old = {"p": text(PERIOD), "a": num(0.4), "e": num(time.time() + 600)}
    dead = {"p": text(PERIOD), "a": num(0.3), "e": num(time.time() - 1)}
    await store._call(
        "put_item",
        TableName=store.table,
        Item={
            "pk": text(f"METER#{key}"),
            "sk": text("METER"),
            f"c:{PERIOD}": num(0.7),
            "r:old": {"M": old},
            "r:dead": {"M": dead},
        },
    )
    assert await store.release_expired(key, time.time()) == pytest.approx(0.3)
    await store.settle(Settlement("old", [BudgetCharge(key, PERIOD, 1.0, 0.1)], 0.4, [], line(key, 0.1)))
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.1) and meter.spent_usd[PERIOD] == pytest.approx(0.1)
    (item,) = await store._meter_items(key)
    assert not [name for name in item if name.startswith("r:")]
    await store.close()


async def test_a_settlement_releases_its_keys_expired_minutes_now_and_then(dynamo: DynamoServer) -> None:
    """A minute whose requests all settled holds nothing but stays in the item: a key never refused (so never
    released) gained one attribute a minute for good. A settlement releases its keys' ended minutes, at most
    once per `SWEEP_SECONDS` per key in a process."""
    now = [time.time()]
    store = DynamoDBStore(dynamo.client(), dynamo.create_table(), clock=lambda: now[0])
    key = uuid.uuid4().hex[:12]

    async def one_request(expires_at: float) -> None:
        adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1000.0, 0.5)], [], expires_at)
        await store.admit(adm)
        await store.settle(settlement(adm, 0.25, line(key, 0.25)))
        await store.settled_chores()  # (what it left to do: `_after_settling`)

    def minutes(items: list[Any]) -> list[str]:
        return [name for item in items for name in item if name.startswith("x:")]

    for n in range(5):  # five minutes of traffic, each request's reservation expiring in a minute of its own
        await one_request(now[0] + 60 * n)
    assert len(minutes(await store._meter_items(key))) == 5  # none had ended
    now[0] += SWEEP_SECONDS + 6 * 60
    await one_request(now[0] + 900)
    assert len(minutes(await store._meter_items(key))) == 1  # the ended ones released, the live one kept
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(6 * 0.25) and meter.spent_usd[PERIOD] == pytest.approx(6 * 0.25)
    await store.close()


async def test_a_settlement_that_landed_ends_without_the_housekeeping_after_it(
    dynamo: DynamoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once its transaction landed, a settlement charged a lease's debt, swept the key's expired minutes and pruned
    closed periods inside its bounded wait (`SETTLE_BY`): a slow sweep ran the bound out, and the settlement, written
    already, was spooled as one the store did not take (an ERROR line, `SpooledSettlementsAlarm`), the buffered
    function's answer or a stream's last byte held for it meanwhile (review dynrev, D3)."""
    monkeypatch.setattr(budgets, "SETTLE_FIRST_DELAY_S", 0.001)
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(store, KeyService(store, 0), 960, spool=spool)
    key = record(budget_usd=1.0)
    reservation = await meter.admit([key], "m", 0.5, 100, uuid.uuid4().hex)
    done = meter.settlement(reservation, 0.2, 150, line(key.id, 0.2))
    store._swept[key.id] = time.time() - SWEEP_SECONDS - 1  # this key's sweep falls due with this settlement
    real = store.release_expired

    async def slow_release(key_id: str, now: float, region: str | None = None) -> float:
        await asyncio.sleep(1.5)  # DynamoDB slow to answer the sweep's query (throttled, say)
        return await real(key_id, now, region)

    monkeypatch.setattr(store, "release_expired", slow_release)
    loop = asyncio.get_running_loop()
    bound = SETTLE_BY.set(loop.time() + 0.5)  # half a second left for it
    started = loop.time()
    try:
        await meter.settle(done)
    finally:
        SETTLE_BY.reset(bound)
    waited = loop.time() - started
    lines = await store.usage(UsageQuery([key.id], 0, time.time() + 1))
    pending = spool.pending
    await spool.close()
    await store.close()
    assert [item.request_id for item in lines] == [done.item.request_id]  # type: ignore[union-attr]
    assert pending == 0 and waited < 0.5, (pending, waited)


async def test_processes_started_together_do_not_all_sweep_a_key_at_once(dynamo: DynamoServer) -> None:
    """Each process swept a key at its first settlement on it: a burst that starts a hundred Lambda environments
    had a hundred query the key's items, and race to release its ended minutes, in the same second. A key first
    seen is swept at a random point of its first period instead (the default phase is below 1: never at once)."""
    table = dynamo.create_table()
    key = uuid.uuid4().hex[:12]
    calls = []
    for phase in (None, 0.0, 0.5):
        store = DynamoDBStore(dynamo.client(), table)
        if phase is not None:
            store.sweep_phase = functools.partial(float, phase)
        adm = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1000.0, 0.5)], [], time.time() + 900)
        await store.admit(adm)
        before = dynamo.calls()
        await store.settle(settlement(adm, 0.25, line(key, 0.25)))
        await store.settled_chores()  # (what it left to do: `_after_settling`)
        calls.append(dynamo.calls() - before)
        later = time.time() + SWEEP_SECONDS + 1  # its first period has passed, whatever its phase
        store.clock = lambda later=later: later
        again = Admission(uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1000.0, 0.5)], [], time.time() + 900)
        await store.admit(again)
        before = dynamo.calls()
        await store.settle(settlement(again, 0.25, line(key, 0.25)))
        await store.settled_chores()  # (what it left to do: `_after_settling`)
        assert dynamo.calls() - before >= 2  # swept then: the key's items were queried after the transaction
        await store.close()
    assert calls == [1, 1, 1]  # the settlement's transaction alone


@pytest.mark.parametrize(("operation", "code"), CONTENTION)
async def test_an_admission_refused_for_contention_is_retried(
    flaky: tuple[FlakyClient, DynamoDBStore], operation: str, code: str
) -> None:
    client, store = flaky
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    charges = [BudgetCharge(key, PERIOD, 1.0, 0.4)]
    if operation == "TransactWriteItems":  # a child under a budgeted parent: one transaction over both meters
        charges.append(BudgetCharge(parent, PERIOD, 1.0, 0.4))
    adm = Admission(uuid.uuid4().hex, key, charges, [], time.time() + 60)
    client.fail(operation, code, 3)
    snapshot = await store.admit(adm)
    assert snapshot.committed_usd[PERIOD] == pytest.approx(0.4)
    assert client.refused[operation] == 3 and client.sent[operation] == 1
    assert (await store.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.4)


async def test_a_settlement_refused_for_contention_lands_once(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    client, store = flaky
    key = uuid.uuid4().hex[:12]
    adm = admission(key, 0.5)
    await store.admit(adm)
    item = line(key, 0.2)
    client.fail("TransactWriteItems", "TransactionCanceledException", 2)
    client.fail("TransactWriteItems", "ThrottlingException", 2)
    await store.settle(settlement(adm, 0.2, item))
    assert client.refused["TransactWriteItems"] == 4 and client.sent["TransactWriteItems"] == 1
    meter = await store.meter(key, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.2) and meter.spent_usd[PERIOD] == pytest.approx(0.2)
    assert await store.usage(UsageQuery([key], 0, time.time() + 1)) == [item]


async def test_contention_that_does_not_end_fails_closed_and_other_errors_are_not_retried(
    flaky: tuple[FlakyClient, DynamoDBStore],
) -> None:
    client, store = flaky
    client.fail("UpdateItem", "TransactionConflictException", 100)
    with pytest.raises(StoreError):
        await store.admit(admission(uuid.uuid4().hex[:12], 0.1))
    assert client.refused["UpdateItem"] == 8  # CONTENTION_ATTEMPTS, then the request answers 503
    client.scripted.clear()
    client.fail("UpdateItem", "ValidationException", 1)
    with pytest.raises(StoreError):
        await store.admit(admission(uuid.uuid4().hex[:12], 0.1))
    assert client.refused["UpdateItem"] == 9  # refused once, not sent again


@pytest.mark.parametrize("code", ["TransactionCanceledException", "ThrottlingException"])
async def test_concurrent_admissions_under_contention_never_overspend(
    flaky: tuple[FlakyClient, DynamoDBStore], code: str
) -> None:
    """Children of one budgeted parent race on the parent's meter while a quarter of the writes are refused:
    none answers 503, the parent admits exactly what fits, and every settlement lands once."""
    client, store = flaky
    parent = uuid.uuid4().hex[:12]
    client.fail_randomly(0.25, code)

    async def one() -> tuple[Admission, bool]:
        child = uuid.uuid4().hex[:12]
        charges = [BudgetCharge(child, PERIOD, 1.0, 0.1), BudgetCharge(parent, PERIOD, 1.0, 0.1)]
        adm = Admission(uuid.uuid4().hex, child, charges, [RateCharge("rpm", int(time.time() // 60), 5, 1)], 0)
        adm = adm._replace(expires_at=time.time() + 60)
        try:
            await store.admit(adm)
        except BudgetRefused:
            return adm, False
        return adm, True

    outcomes = await asyncio.gather(*(one() for _ in range(16)))
    admitted = [adm for adm, ok in outcomes if ok]
    assert len(admitted) == 10
    assert client.refused["TransactWriteItems"] > 0
    items = [line(adm.key_id, 0.05) for adm in admitted]
    await asyncio.gather(*(store.settle(settlement(a, 0.05, i)) for a, i in zip(admitted, items, strict=True)))
    meter = await store.meter(parent, PERIOD)
    assert meter.committed_usd[PERIOD] == pytest.approx(0.5) and meter.spent_usd[PERIOD] == pytest.approx(0.5)
    lines = await store.usage(UsageQuery([a.key_id for a in admitted], 0, time.time() + 1))
    assert sorted(i.request_id for i in lines) == sorted(i.request_id for i in items)


# --- key listings -----------------------------------------------------------------------------------


async def test_a_page_of_keys_reads_its_keys_from_the_index_not_the_whole_index(
    flaky: tuple[FlakyClient, DynamoDBStore],
) -> None:
    """`GET /admin/keys` read every key item of the index, its every page, for each call (and answered them all): a
    page of 11 among 120 keys read all 120 items. Now a page reads its keys and the one after (which says there are
    more) from the place it starts at, in one query, whatever the index holds: every key's, a parent's children, and
    past a cursor; items past their TTL that DynamoDB has yet to delete are read past, and the page still holds its
    keys."""
    client, store = flaky
    parent = record()
    await store.create_key(parent)
    children = [record(parent_id=parent.id, ancestors=[parent.id]) for _ in range(60)]
    for key in [*(record() for _ in range(59)), *children]:
        await store.create_key(key)
    read: list[int] = []
    sent = client.call

    async def counting(operation: str, request: dict[str, Any]) -> dict[str, Any]:
        answer = await sent(operation, request)
        if operation == "Query":
            read.append(len(answer.get("Items", [])))
        return answer

    client.call = counting  # type: ignore[method-assign]
    first = await store.list_keys_page(None, 11)
    assert len(first) == 11 and read == [11], read
    read.clear()
    second = await store.list_keys_page(None, 11, KeyPlace.of(first[-1]))
    assert len(second) == 11 and not {r.id for r in first} & {r.id for r in second}
    assert read == [11], read
    read.clear()
    theirs = await store.list_keys_page(parent.id, 11)
    assert {r.id for r in theirs} <= {c.id for c in children} and len(theirs) == 11 and read == [11], read
    read.clear()
    ordered = sorted(children, key=lambda c: c.id)
    assert [r.id for r in await store.list_keys_page(parent.id, 11, KeyPlace.of(ordered[-3]))] == [
        c.id for c in ordered[-2:]
    ]
    assert read == [3], read  # the parent's last two, and the one it starts past: nothing of another parent's
    read.clear()
    for child in ordered[10:15]:  # purged, their items still in the table (DynamoDB deletes within days)
        await store.update_key(replace(child, revoked_at=time.time() - 86400 - 60, version=2))
    page = await store.list_keys_page(parent.id, 11, KeyPlace.of(ordered[4]))
    assert [r.id for r in page] == [c.id for c in ordered[5:10] + ordered[15:21]]
    assert read == [12, 5], read  # the 11, the one it starts past, and the 5 past their TTL, read past


# --- reports ----------------------------------------------------------------------------------------


async def test_a_report_over_25_years_costs_a_handful_of_queries_and_pages_through_everything(
    flaky: tuple[FlakyClient, DynamoDBStore],
) -> None:
    """`gateway usage --since 2000-01-01` once sent a query per day (9,832 of them); now one per index shard
    for all keys, one per key for a key's own report, each followed through every page."""
    client, store = flaky
    keys = [uuid.uuid4().hex[:12] for _ in range(3)]
    now = time.time()
    items = [line(keys[i % 3], 0.001 * i, now - i * 86400 * 365) for i in range(25)]  # one a year, 25 years
    for item in items:
        await store.settle(Settlement(item.request_id, [], 0.0, [], item))
    store.page_size = 2  # far fewer than a shard or a key holds: the report must follow LastEvaluatedKey
    client.sent.clear()
    since = now - 25.5 * 86400 * 365
    everything = await store.usage(UsageQuery(None, since, now + 1))
    assert sorted(i.request_id for i in everything) == sorted(i.request_id for i in items)
    assert [i.ts for i in everything] == sorted(i.ts for i in items)
    pages = client.sent["Query"]
    assert LEDGER_SHARDS < pages <= LEDGER_SHARDS + len(items) // 2 + 1  # pages followed, no more
    store.page_size = None
    client.sent.clear()
    assert len(await store.usage(UsageQuery(None, since, now + 1))) == len(items)
    assert client.sent["Query"] == LEDGER_SHARDS
    client.sent.clear()
    mine = await store.usage(UsageQuery(keys[:2], since, now + 1))
    assert sorted(i.request_id for i in mine) == sorted(i.request_id for i in items if i.key_id in keys[:2])
    assert client.sent["Query"] == 2


def seed_lines(dynamo: DynamoServer, store: DynamoDBStore, lines: int, now: float) -> None:
    """`lines` ledger lines of seven keys over the last hour, written as the store writes them (`_ledger_write`'s
    items), in batches (settling each would take minutes on the emulator)."""
    items = []
    for i in range(lines):
        item = replace(line(f"k{i % 7}", 0.001, ts=now - 3600 + i * 0.5), tags={"team": f"t{i % 5}"})
        items.append(store._ledger_write(item)["Put"]["Item"])
    client = dynamo.client()
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        client.batch_write_item(RequestItems={store.table: batch})


async def test_a_report_is_handed_its_lines_a_page_at_a_time_not_held_whole(dynamo: DynamoServer) -> None:
    """The store had no `scan_usage` of its own: the port's called `usage`, which held every item of every page, then
    every line parsed and sorted, and handed the report all 1,500 lines in one list; its peak memory grew with the
    lines (1.15 MB for 300, 5.12 MB for 1,500: a month of 300,000 about 1 GB, a whole 1024 MB Lambda). Now each page
    is handed on as it comes, in batches of at most `LEDGER_BATCH`, and five times the lines peak at much the same."""
    peaks = {}
    for lines in (300, 1500):
        store = open_store(dynamo.store_url(dynamo.create_table()))
        assert isinstance(store, DynamoDBStore)
        try:
            store.page_size = 20  # (DynamoDB's 1 MB pages hold ~1,000 such lines: the queries hold 8 at most)
            now = time.time()
            seed_lines(dynamo, store, lines, now)
            spec = parse_report(str(now - 7200), str(now + 1), "key")
            report = ReportBuilder(spec, parse_views(["", "day,key"]))
            sizes: list[int] = []

            def consume(batch: list[LedgerItem], report: ReportBuilder = report, sizes: list[int] = sizes) -> None:
                sizes.append(len(batch))
                report.add(batch)

            tracemalloc.start()
            try:
                await store.scan_usage(UsageQuery(None, spec.since, spec.until), consume)
                peaks[lines] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        finally:
            await store.close()
        assert sum(sizes) == report.read == lines
        assert max(sizes) <= LEDGER_BATCH, f"{max(sizes)} lines handed over at once (batches {sizes})"
        (total,) = report.answer(None, "json")["views"][0]["data"]
        assert total["requests"] == lines
    assert peaks[1500] < 2 * peaks[300], f"peak {peaks[300]:,} B for 300 lines, {peaks[1500]:,} B for 1,500"


async def test_a_report_whose_query_fails_fails_as_a_store_call_does(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    """The shards' queries run together: one refused ends the report with the store's error (a 503 to its caller),
    not a group of errors the app knows nothing of (a 500)."""
    client, store = flaky
    items = [line(f"k{i}", 0.001) for i in range(3)]
    for item in items:
        await store.settle(Settlement(item.request_id, [], 0.0, [], item))
    everything = UsageQuery(None, 0, time.time() + 1)
    client.fail("Query", "ValidationException", 1)
    with pytest.raises(StoreError):
        await store.scan_usage(everything, lambda batch: None)
    handed: list[LedgerItem] = []
    await store.scan_usage(everything, handed.extend)
    assert sorted(i.request_id for i in handed) == sorted(i.request_id for i in items)


async def test_migrate_moves_lines_written_before_shards_into_reports(
    flaky: tuple[FlakyClient, DynamoDBStore], dynamo: DynamoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line item an older gateway wrote (`gsi1pk = LEDGER#<day>`) is found by all-keys reports once
    `gateway store migrate` has run; a second run moves nothing."""
    from handler.entry.cli import main

    client, store = flaky
    old, new = line("oldkey", 0.1, time.time() - 86400), line("newkey", 0.2)
    for item in (old, new):
        await store.settle(Settlement(item.request_id, [], 0.0, [], item))
    raw = dynamo.client()
    sk = {"S": f"{old.ts:017.6f}#{old.request_id}"}
    raw.update_item(
        TableName=store.table,
        Key={"pk": {"S": "LEDGER#oldkey"}, "sk": sk},
        UpdateExpression="SET gsi1pk = :day",
        ExpressionAttributeValues={":day": {"S": f"LEDGER#{time.strftime('%Y-%m-%d', time.gmtime(old.ts))}"}},
    )
    everything = UsageQuery(None, 0, time.time() + 1)
    assert [i.request_id for i in await store.usage(everything)] == [new.request_id]
    url = dynamo.store_url(store.table)
    assert await asyncio.to_thread(main, ["store", "migrate", "--store", url]) == 0
    assert capsys.readouterr().out == "ok: 1 items moved, 0 keys revoked with a revoked or purged ancestor\n"
    assert [i.request_id for i in await store.usage(everything)] == [old.request_id, new.request_id]
    assert await store.migrate() == 0


async def test_migrate_drops_the_daily_aggregates_older_gateways_wrote(dynamo: DynamoServer) -> None:
    """Settlements wrote them, with no TTL, until nothing did: they would have stayed in the table for good."""
    store = DynamoDBStore(dynamo.client(), dynamo.create_table())
    store.page_size = 2
    for n in range(5):
        aggregate = {"pk": text(f"AGG#2026-11-0{n + 1}"), "sk": text("k#gpt-4o@-"), "requests": num(3)}
        await store._call("put_item", TableName=store.table, Item=aggregate)
    now = time.time()
    assert await store.migrate() == 5
    # Each given a TTL of now (DynamoDB deletes it within days; moto never does): the functions' policy grants no
    # DeleteItem, which tests/unit/test_template.py's check of the store's calls caught.
    items = dynamo.client().scan(TableName=store.table)["Items"]
    assert len(items) == 5 and all(now - 5 <= int(item["ttl"]["N"]) <= time.time() + 5 for item in items)
    assert await store.migrate() == 0
    await store.close()


async def test_a_lease_return_whose_home_write_failed_is_counted_at_home_by_the_next_sweep(
    dynamo: DynamoServer,
) -> None:
    """Returning a lease is two writes: the lease gives up what it holds, then the home meter counts it. When the
    second fails, the next sweep must still write it (it took the lease's zero as counted, and the home kept
    the returned USD committed for good). One moto table stands for both regions' replicas."""
    table = dynamo.create_table()
    home_client = FlakyClient(dynamo)  # the home region's endpoint, as seen from the other region
    here = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
        table,
        region="eu-west-1",
        client_for=lambda region: home_client,
    )
    home = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url), table, region="us-east-1"
    )
    key = uuid.uuid4().hex[:12]
    adm = Admission(
        uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")], [], time.time() + 60, "us-east-1"
    )
    await here.admit(adm)  # a grant from the home region, $0.10 of it reserved
    charge = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    await here.settle(Settlement(adm.reservation_id, [charge], 0.1, [], line(key, 0.1), "us-east-1", adm.expires_at))
    home_client.fail("UpdateItem", "InternalServerError", 1)
    with pytest.raises(StoreError):
        await here.return_idle_leases(force=True)
    await here.return_idle_leases(force=True)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.1)
    await home.admit(
        Admission(
            uuid.uuid4().hex, key, [BudgetCharge(key, PERIOD, 1.0, 0.8, "us-east-1")], [], time.time() + 60, "us-east-1"
        )
    )
    await here.close()
    await home.close()
    await home_client.close()


def two_regions(dynamo: DynamoServer, clock: Callable[[], float] = time.time) -> tuple[DynamoDBStore, DynamoDBStore]:
    """A key's gateway in eu-west-1 (spending from a lease) and in its home, us-east-1: one moto table stands for
    both regions' replicas."""
    table = dynamo.create_table()
    here = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
        table,
        clock,
        region="eu-west-1",
        client_for=lambda region: DynamoDBClient(region, Credentials("testing", "testing"), dynamo.url),
    )
    home = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url), table, clock, region="us-east-1"
    )
    return here, home


async def test_what_a_settlement_frees_in_a_returned_lease_goes_home_too(dynamo: DynamoServer) -> None:
    """A request that outlives its lease's idle time settles after the sweeper returned the lease: what it did
    not spend is available in the lease again, and must go home once idle (it stayed there, unusable
    anywhere else, until this region admitted for the key again)."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.5, "us-east-1")
    adm = Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")
    await here.admit(adm)
    await here.return_idle_leases(force=True)  # idle meanwhile (the request still running): returned
    spent = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    await here.settle(Settlement(adm.reservation_id, [spent], 0.5, [], line(key, 0.1), "us-east-1", adm.expires_at))
    assert here.leases._held  # watched again
    await here.return_idle_leases(force=True)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.1)
    await here.close()
    await home.close()


async def test_a_key_spent_only_in_another_region_keeps_neither_its_lease_nor_its_home_growing(
    dynamo: DynamoServer,
) -> None:
    """Each day a key homed elsewhere is used here adds the day's lease counters (`a:`, `c:`, `s:`, `g:`, `t:`,
    minutes) to its lease and the day's grant (`c:`, `g:`, `q:`) to its home meter, which only grants write. A
    closed day's go from both, each written in its own region; a lease of a closed day is not given back (the
    home drops that day: a return would write it again)."""
    now = [at(2027, 1, 1)]
    here, home = two_regions(dynamo, lambda: now[0])
    key = uuid.uuid4().hex[:12]
    for _ in range(3):
        charge = BudgetCharge(key, period_of("day", now[0]), 1.0, 0.5, "us-east-1")
        adm = Admission(uuid.uuid4().hex, key, [charge], [], now[0] + 900, "us-east-1")
        await here.admit(adm)
        spent = BudgetCharge(key, charge.period, 1.0, 0.25, "us-east-1")
        await here.settle(
            Settlement(adm.reservation_id, [spent], 0.5, [], line(key, 0.25, now[0]), "us-east-1", adm.expires_at)
        )
        now[0] += 86400
    now[0] = at(2027, 1, 4, 2)  # the last day closed too, its lease never given back
    assert await here.return_idle_leases(force=True) == 0.0
    items = {i["sk"]["S"]: i for i in await here._meter_items(key)}
    assert set(items) == {"METER", "LEASE#eu-west-1"}
    assert periods_held(items["METER"]) == periods_held(items["LEASE#eu-west-1"]) == {"day:2027-01-03"}
    assert (await home.meter(key, "day:2027-01-03")).spent_usd["day:2027-01-03"] == pytest.approx(0.25)
    await here.close()
    await home.close()


def sibling_of(store: DynamoDBStore, dynamo: DynamoServer) -> DynamoDBStore:
    """Another process of `store`'s region (eu-west-1) on its table: a worker beside it."""
    return DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
        store.table,
        region="eu-west-1",
        client_for=lambda region: DynamoDBClient(region, Credentials("testing", "testing"), dynamo.url),
    )


async def test_a_worker_that_stops_leaves_the_lease_its_sibling_draws_on(dynamo: DynamoServer) -> None:
    """Two workers of one `gateway serve` in the lease's region draw on one lease (a region's, as every process
    there does). One stopping (a worker restart) gave back all the lease held while its sibling kept drawing on it:
    no more than the region held was spent (the return is conditional on what the lease holds), but the sibling's
    next request needed a grant from the home region again (a write there and one here, across regions), and every
    restart did it again. A stopping process leaves a lease another process used since it last did (that one is
    running, and its sweeper gives the lease back once idle); the last one out gives it back."""
    stopping, home = two_regions(dynamo)
    sibling = sibling_of(stopping, dynamo)
    key = uuid.uuid4().hex[:12]

    def here(amount: float) -> Admission:
        charge = BudgetCharge(key, PERIOD, 1.0, amount, "us-east-1")
        return Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")

    def spent(adm: Admission, amount: float) -> Settlement:
        charge = replace(adm.budgets[0], amount_usd=amount)
        reserved = adm.budgets[0].amount_usd
        return Settlement(adm.reservation_id, [charge], reserved, [], None, "us-east-1", adm.expires_at)

    first, drawn, last = here(0.1), here(0.1), here(0.05)
    await stopping.admit(first)  # a grant of $0.25 (a quarter of what is unleased), $0.10 of it reserved
    await sibling.admit(drawn)  # from the lease: $0.05 left in it
    await stopping.settle(spent(first, 0.1))
    assert await stopping.return_leases() == 0.0  # the sibling drew on it since
    await sibling.admit(last)
    assert (sibling.leases.stats.grants, stopping.leases.stats.grants) == (0, 1)  # no grant more
    await sibling.settle(spent(drawn, 0.1))
    await sibling.settle(spent(last, 0.02))
    assert await sibling.return_leases() == pytest.approx(0.03)  # the last one out gives back what is left
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.22)  # what was spent
    for store in (stopping, sibling, home):
        await store.close()


async def test_the_last_process_out_gives_back_what_it_settled_into_a_lease_its_stopped_sibling_drew_on_last(
    dynamo: DynamoServer,
) -> None:
    """Two workers of one region draw on one lease; the sibling drew last, and stopped first, giving back what the
    lease held (it was the last to draw). The other's long request then settled, putting its unspent $0.08 back in
    the lease, and that process stopped too: it took the sibling's mark of its last use for a running process's and
    left the lease, so the $0.08 stayed out of the home's reach until the home reclaimed it for a request it was
    about to refuse (the home counted $0.20 committed for $0.12 spent). A process giving a lease back (the last to
    draw on it, or idle) takes its mark off, so the last one out gives back what it put back since."""
    last, home = two_regions(dynamo)
    sibling = sibling_of(last, dynamo)
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    long, drawn = (Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 900, "us-east-1") for _ in range(2))

    def spent(adm: Admission, amount: float) -> Settlement:
        return Settlement(
            adm.reservation_id, [replace(charge, amount_usd=amount)], 0.1, [], None, "us-east-1", adm.expires_at
        )

    await last.admit(long)  # a grant of $0.25, $0.10 of it reserved by a long request
    await sibling.admit(drawn)  # from the lease: $0.05 left in it
    await sibling.settle(spent(drawn, 0.1))
    assert await sibling.return_leases() == pytest.approx(0.05)  # the sibling stops first, the last to draw
    await last.settle(spent(long, 0.02))  # $0.08 reserved and unspent back in the lease
    returned = await last.return_leases()  # the last process out
    items = {item["sk"]["S"]: item for item in await home._meter_items(key)}
    for store in (last, sibling, home):
        await store.close()
    assert returned == pytest.approx(0.08), f"given back at shutdown: ${returned}"
    # The home's own committed counts what is leased out: only what was spent is out of its reach now.
    assert read_num(items["METER"], f"c:{PERIOD}") == pytest.approx(0.12)
    assert read_num(items["LEASE#eu-west-1"], f"a:{PERIOD}") == 0


async def test_a_process_that_stops_gives_back_what_a_request_settled_after_its_sweep(dynamo: DynamoServer) -> None:
    """A request outlasting `IDLE_SECONDS` (a long stream): the sweeper gave the lease's available USD back and
    forgot the lease; the request's settlement put its unspent reservation back in and watched it again, as never
    drawn on here (its mark of this process's use was the forgotten entry's), so the stopping process took its own
    last use for another's and kept the $0.08 (review): the home counted $0.10 committed for $0.02 spent."""
    now = [time.time()]
    here, home = two_regions(dynamo, clock=lambda: now[0])
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    adm = Admission(uuid.uuid4().hex, key, [charge], [], now[0] + 900, "us-east-1")
    await here.admit(adm)  # a grant of $0.25 to eu-west-1's lease, $0.10 of it reserved by this long request
    now[0] += 40  # the request still runs; the lease is idle past IDLE_SECONDS
    await here.leases.return_idle()  # the $0.15 available goes home, the lease is no longer watched
    spent = Settlement(
        adm.reservation_id, [replace(charge, amount_usd=0.02)], 0.1, [], None, "us-east-1", adm.expires_at
    )
    await here.settle(spent)  # $0.08 reserved and unspent back in the lease, watched again
    returned = await here.return_leases()  # the server stops: no other process of eu-west-1 drew on the lease
    committed = (await home.meter(key, PERIOD)).committed_usd[PERIOD]
    await here.close()
    await home.close()
    assert returned == pytest.approx(0.08), f"given back at shutdown: ${returned}"
    assert committed == pytest.approx(0.02)


def two_regions_losing(dynamo: DynamoServer) -> tuple[AnswerLost, AnswerLost, DynamoDBStore, DynamoDBStore]:
    """`two_regions`, the lease region's calls (to its own replica, and to the home's) through `AnswerLost`."""
    table = dynamo.create_table()
    local, remote = AnswerLost(), AnswerLost()
    credentials = Credentials("testing", "testing")
    home_client = DynamoDBClient("us-east-1", credentials, dynamo.url, transport=remote)
    here = DynamoDBStore(
        DynamoDBClient("us-east-1", credentials, dynamo.url, transport=local),
        table,
        region="eu-west-1",
        client_for=lambda region: home_client,
        owned=[home_client],
    )
    home = DynamoDBStore(DynamoDBClient("us-east-1", credentials, dynamo.url), table, region="us-east-1")
    here.owned.append(here.client)
    return local, remote, here, home


async def test_a_lease_grant_sent_again_after_its_answer_was_lost_is_granted_once(dynamo: DynamoServer) -> None:
    """A grant is a conditional ADD on the home meter. One that landed, its answer lost, was sent again: where the
    budget had room for a second chunk it was granted twice; where it had not (here: $0.70 of $1 committed at
    home, $0.30 asked for), its own condition refused it, the request was refused (402) with the budget free,
    and the $0.30, granted at home and never credited to the lease, was lost to both regions for good."""
    local, remote, here, home = two_regions_losing(dynamo)
    key = uuid.uuid4().hex[:12]

    def homed(amount: float) -> Admission:
        charge = BudgetCharge(key, PERIOD, 1.0, amount, "us-east-1")
        return Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")

    await home.admit(homed(0.7))
    remote.lose = "UpdateItem"
    adm = homed(0.3)
    assert (await here.admit(adm)).committed_usd[PERIOD] == pytest.approx(1.0)
    assert remote.lose is None  # the answer was lost once, and the grant sent again
    spent = BudgetCharge(key, PERIOD, 1.0, 0.2, "us-east-1")
    await here.settle(Settlement(adm.reservation_id, [spent], 0.3, [], line(key, 0.2), "us-east-1", adm.expires_at))
    await here.return_idle_leases(force=True)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.9)
    await home.admit(homed(0.1))  # the last cent is the home's again
    with pytest.raises(BudgetRefused):
        await home.admit(homed(0.01))
    await here.close()
    await home.close()


async def test_a_lease_return_sent_again_after_its_answer_was_lost_is_counted_at_home(dynamo: DynamoServer) -> None:
    """A return gives up the lease's USD (conditional on the lease still holding it), then the home counts it.
    One that landed, its answer lost, was sent again and refused by its own condition, taken for a lease used
    meanwhile: the home was not told, and kept the USD committed until this region returned that key again (never,
    if its traffic moved away or its process ended)."""
    local, remote, here, home = two_regions_losing(dynamo)
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    adm = Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")
    await here.admit(adm)  # a grant of $0.25 from the home, $0.10 of it reserved
    await here.settle(Settlement(adm.reservation_id, [charge], 0.1, [], line(key, 0.1), "us-east-1", adm.expires_at))
    local.lose = "UpdateItem"
    await here.return_idle_leases(force=True)
    assert local.lose is None  # the answer was lost once, and the return sent again
    await here.close()
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.1)

    def at_home(amount: float) -> Admission:
        home_charge = BudgetCharge(key, PERIOD, 1.0, amount, "us-east-1")
        return Admission(uuid.uuid4().hex, key, [home_charge], [], time.time() + 60, "us-east-1")

    await home.admit(at_home(0.85))  # the home has the returned $0.15 again
    with pytest.raises(BudgetRefused):
        await home.admit(at_home(0.1))
    await home.close()


async def test_a_leases_dead_reservations_go_home_when_it_is_returned(dynamo: DynamoServer) -> None:
    """A request that died in a region (a crash, a timeout) holds its reservation in that region's lease until it
    expires and is released: only a refusal there released it, and a region whose traffic for the key moved
    away may never refuse again, so the USD stayed out of the home meter for good. The sweeper that returns an
    idle lease releases its expired reservations first."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    charge = BudgetCharge(key, PERIOD, 1.0, 0.6, "us-east-1")
    await here.admit(Admission(uuid.uuid4().hex, key, [charge], [], time.time() - 61, "us-east-1"))  # it died
    await here.return_idle_leases(force=True)
    assert (await home.meter(key, PERIOD)).committed_usd.get(PERIOD, 0.0) == pytest.approx(0.0)
    whole = BudgetCharge(key, PERIOD, 1.0, 0.9, "us-east-1")  # the home region may spend the whole budget again
    await home.admit(Admission(uuid.uuid4().hex, key, [whole], [], time.time() + 60, "us-east-1"))
    await here.close()
    await home.close()


class ReadsFail(AnswerLost):
    """Forwards every request to moto, but every read of items by key fails (a 500, as DynamoDB's own failure)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers["x-amz-target"].endswith((".GetItem", ".TransactGetItems")):
            return httpx.Response(500, json={"__type": "InternalServerError", "message": "down"}, request=request)
        return await super().handle_async_request(request)


async def test_an_admission_whose_read_back_fails_stands_and_reports_nothing(dynamo: DynamoServer) -> None:
    """A chain's admission is one transaction, then a read of the counters the answer's headers report (every
    key's). That read failing must not fail an admission already written (the client would get a 503 while its
    reservation held budget until it expired): it stands, with those counters left unreported."""
    client = DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url, transport=ReadsFail())
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    key, parent = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    charges = [BudgetCharge(key, PERIOD, 1.0, 0.4), BudgetCharge(parent, PERIOD, 1.0, 0.4)]
    admission = Admission(uuid.uuid4().hex, key, charges, [], time.time() + 60)
    snapshot = await store.admit(admission)
    assert snapshot.committed_usd == {} and snapshot.rates == {}
    await store.settle(settlement(admission, 0.1, line(key, 0.1)))
    for key_id in (key, parent):
        meter = await store.meter(key_id, PERIOD)
        assert meter.committed_usd[PERIOD] == pytest.approx(0.1)
    await store.close()


async def put_legacy_key(store: DynamoDBStore, record: KeyRecord) -> None:
    """A key item as a gateway from before family links wrote it: no link, no child count."""
    await store._call("put_item", TableName=store.table, Item=store._key_item(record))


async def test_children_from_before_counts_are_counted(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    """A parent whose children were all minted before child counts existed has none: its first mint counts
    them (from the key listing) before it passes."""
    _, store = flaky
    parent = record()
    await store.create_key(parent)
    for _ in range(3):
        await put_legacy_key(store, record(parent_id=parent.id, ancestors=[parent.id]))
    with pytest.raises(ChildLimitReached):
        await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 3)
    await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 4)
    with pytest.raises(ChildLimitReached):
        await store.create_child(record(parent_id=parent.id, ancestors=[parent.id]), 4)


async def test_migrate_counts_families_from_before_family_counts(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    """A family an older gateway minted (each key linked to its parent only, each parent counting its own children
    as `n`) had no `DESC#` links and no family count: the recount found the root's 1 child, not its 2 grandchildren,
    and a root allowed 3 minted a fourth key and a fifth. Even once a recount had set the count (to 1), it stayed
    low. `migrate` links the grandchildren on the root's partition and sets the count to the live family; a second
    run writes nothing."""
    _, store = flaky
    counted, uncounted = record(), record()
    for root in (counted, uncounted):
        await store.create_key(root)
        kid = record(parent_id=root.id, ancestors=[root.id])
        await put_legacy_key(store, kid)
        for _ in range(2):
            await put_legacy_key(store, record(parent_id=kid.id, ancestors=[root.id, kid.id]))
    await store.create_child(record(parent_id=counted.id, ancestors=[counted.id]), 3)  # (recounted: 1 live)
    # 6 `CHILD#` links (`put_legacy_key` writes none), 4 `DESC#` links, 2 family counts (`d` 4 and 3)
    assert await store.migrate() == 6 + 4 + 2
    for root in (counted, uncounted):
        with pytest.raises(ChildLimitReached):
            await store.create_child(record(parent_id=root.id, ancestors=[root.id]), 3)
    await store.create_child(record(parent_id=uncounted.id, ancestors=[uncounted.id]), 4)
    assert await store.migrate() == 0


async def mint_as_before_family_counts(store: DynamoDBStore, child: KeyRecord, max_children: int) -> None:
    """A child minted as the release before family counts mints it, beside this one (a rollout, a rollback): its
    key, `ADD n 1` on its parent's count item while `n < max_children` (its limit is per parent), its link to its
    parent, in one transaction; refused, it counts its parent's live children (links, then records, and the key
    listing), sets `n` to them (unless `n` moved) and tries once more. Nothing on the root's partition."""
    parent_id = child.parent_id
    assert parent_id is not None
    purge = key_purge_after(child)
    count_key: Item = {"pk": text(f"FAMILY#{parent_id}"), "sk": text("COUNT")}
    link = store._link_item(parent_id, child.id, purge, None if purge is None else purge + LEDGER_TTL_SECONDS)
    writes: list[Item] = [
        {
            "Put": {
                "TableName": store.table,
                "Item": stamped(store._key_item(child)),
                "ConditionExpression": "attribute_not_exists(pk)",
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        },
        {
            "Update": {
                "TableName": store.table,
                "Key": count_key,
                "UpdateExpression": "ADD #n :one",
                "ConditionExpression": "#n < :max",
                "ExpressionAttributeNames": {"#n": "n"},
                "ExpressionAttributeValues": {":one": num(1), ":max": num(max_children)},
            }
        },
        {"Put": {"TableName": store.table, "Item": link}},
    ]
    for attempt in (1, 2):
        try:
            await store._call("transact_write_items", TransactItems=writes)
            return
        except ConditionFailed as exc:
            if attempt == 2:
                raise ChildLimitReached(parent_id, max_children) from exc
        answer = await store._call("get_item", TableName=store.table, Key=count_key, ConsistentRead=True)
        seen = answer.get("Item", {}).get("n")
        linked = [item["child"]["S"] for item in await store._links(parent_id)]
        live = {r.id for r in await store._get_keys(linked)} | {r.id for r in await store.list_keys(parent_id)}
        if len(live) >= max_children:
            raise ChildLimitReached(parent_id, max_children)
        e = Expression()
        count = e.name("n")
        e.clauses["SET"].append(f"{count} = {e.value(num(len(live)))}")
        e.conditions.append(f"attribute_not_exists({count})" if seen is None else f"{count} = {e.value(seen)}")
        try:
            await store._call("update_item", **e.update(count_key, store.table))
        except ConditionFailed:
            pass


async def family_of(store: DynamoDBStore, root_id: str) -> list[str]:
    """The keys under a root, walked parent by parent (as reports walk them)."""
    found: list[str] = []
    parents = [root_id]
    while parents:
        children = [c for parent in parents for c in await store.child_ids(parent)]
        found += children
        parents = children
    return found


def child_of(parent: KeyRecord) -> KeyRecord:
    return record(parent_id=parent.id, ancestors=[*parent.ancestors, parent.id])


async def test_an_older_release_minting_beside_this_one_is_counted(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    """During a rollout (or after a rollback) the release before family counts mints beside this one, counting
    each parent's children (`n`) where this one counts the root's family (`d`). Minted new, old, old, new, new
    under a limit of 3, the root had 5 live children (`d` 3, `n` 3): `d` missed the older release's mints, and `n`
    this one's. Now this release keeps `n` too (the older one's limit per parent counts its children) and with it
    `m`, the `n` its `d` holds: an `n` the older release moved refuses the count, and the family is recounted."""
    _, store = flaky
    root = record()
    await store.create_key(root)
    first = child_of(root)
    await store.create_child(first, 3)
    for _ in range(2):
        await mint_as_before_family_counts(store, child_of(root), 3)
    for mint in (store.create_child, functools.partial(mint_as_before_family_counts, store)):
        with pytest.raises(ChildLimitReached):
            await mint(child_of(root), 3)
    assert len(await family_of(store, root.id)) == 3

    # Below the root's children the older release counts per parent (it mints a grandchild here: its own limit);
    # this one, minting there next, counts it.
    await mint_as_before_family_counts(store, child_of(first), 3)
    with pytest.raises(ChildLimitReached):
        await store.create_child(child_of(first), 3)
    assert len(await family_of(store, root.id)) == 4


class CorrectionHeld(DynamoDBClient):
    """The gateway's client on the test server, holding the first family count correction (`SET d`) it is sent once
    `armed` until `release` is set: its recount has read the count, and other mints run before it writes."""

    def __init__(self, server: DynamoServer) -> None:
        super().__init__("us-east-1", Credentials("testing", "testing"), server.url, read_timeout=15)
        self.armed, self.held, self.release = False, asyncio.Event(), asyncio.Event()

    async def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        correction = operation == "UpdateItem" and request.get("UpdateExpression", "").startswith("SET")
        if correction and "d" in request.get("ExpressionAttributeNames", {}).values() and self.armed:
            self.armed = False
            self.held.set()
            await self.release.wait()
        return await super().call(operation, request)


async def test_two_mints_after_a_purge_correct_the_count_once(dynamo: DynamoServer) -> None:
    """A root at its limit of 3 with one child purged (a day after it ended), then two mints at once: both were
    refused by the count, both recounted 2 live and read the count at 3; the first set it to 2 and minted (3
    again), and the second's correction, conditional on the 3 it read, passed as well (the same value, another
    state) and minted a fourth key. A correction now applies only to the count as it read it: every mint moves
    it."""
    client = CorrectionHeld(dynamo)
    store = DynamoDBStore(client, dynamo.create_table(), owned=[client])
    root = record()
    await store.create_key(root)
    await store.create_child(child_of(root), 3)
    await store.create_child(replace(child_of(root), expires_at=time.time() - 86400 - 60), 3)  # (purged)
    await store.create_child(child_of(root), 3)
    client.armed = True
    held = asyncio.create_task(store.create_child(child_of(root), 3))
    await asyncio.wait_for(client.held.wait(), 10)
    await store.create_child(child_of(root), 3)  # (recounted, corrected, minted while the other waits)
    client.release.set()
    with pytest.raises(ChildLimitReached):
        await held
    assert len(await store._live_family(root.id, store.client)) == 3
    await store.close()


async def test_a_recount_finds_what_an_older_release_minted_at_any_depth(
    flaky: tuple[FlakyClient, DynamoDBStore],
) -> None:
    """The older release links a key to its parent only: a recount found the keys on the root's partition, not a
    grandchild that release minted, nor anything below it. Its parents' `n` say where it minted: the recount follows
    their links, links what it finds on the root's partition, and the family count holds them."""
    _, store = flaky
    root = record()
    await store.create_key(root)
    first, second = child_of(root), child_of(root)
    for kid in (first, second):
        await store.create_child(kid, 5)
    grandchild = child_of(first)
    await mint_as_before_family_counts(store, grandchild, 5)
    await mint_as_before_family_counts(store, child_of(grandchild), 5)
    await store.create_child(child_of(first), 5)  # (`first`'s `n` moved: the family is recounted, 4, then minted)
    with pytest.raises(ChildLimitReached):
        await store.create_child(child_of(second), 5)  # was a sixth key, the family counted as 3
    assert len(await family_of(store, root.id)) == len(await store._live_family(root.id, store.client)) == 5
    assert await store.migrate() == 0  # (nothing left to link or count)


async def test_migrate_links_children_from_before_links(flaky: tuple[FlakyClient, DynamoDBStore]) -> None:
    """`migrate` links the children an older gateway minted: those whose records remain, and those purged
    already that a line item names; a second run links nothing."""
    _, store = flaky
    parent = record()
    live = record(parent_id=parent.id, ancestors=[parent.id])
    await put_legacy_key(store, live)
    purged = replace(line("purgedchild1", 0.5), ancestors=[parent.id])
    await store.settle(Settlement(purged.request_id, [], 0.0, [], purged))
    assert await store.child_ids(parent.id) == [live.id]  # (from the key listing)
    assert await store.migrate() == 2
    assert await store.child_ids(parent.id) == sorted([live.id, "purgedchild1"])
    assert await store.migrate() == 0


async def test_a_revoked_childs_links_go_with_their_ttl_after_its_record(dynamo: DynamoServer) -> None:
    """docs/store.md (A parent's children): a child's link to its parent goes 400 days after the child's record, and
    its link on its root's partition (`DESC#`, read by every recount of the family) with the record. Both were given
    their end at the mint only: a child minted without an expiry and then revoked (an agent's key, a signed-out
    session) had its record purged a day later and kept both links for good, as did the keys revoked with it. A
    revocation gives them its end; a sibling still live keeps its links as they were."""
    store = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
        dynamo.create_table(),
        region="us-east-1",
    )
    admin = KeyAdmin(KeyService(store, 0))
    root = (await admin.mint(record())).record
    child, sibling = [
        (await admin.mint_child(record(parent_id=root.id, ancestors=[root.id]), 100)).record for _ in range(2)
    ]
    grandchild = (await admin.mint_child(record(parent_id=child.id, ancestors=[root.id, child.id]), 100)).record
    revoked = await admin.revoke(child)  # and the grandchild with it
    assert revoked.revoked_at is not None
    goes = revoked.revoked_at + EXPIRED_KEY_GRACE_SECONDS  # when their records go
    links = {
        item["sk"]["S"]: item
        for parent_id in (root.id, child.id)
        for item in await store._query(
            KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": text(f"FAMILY#{parent_id}")}
        )
    }
    await store.close()
    ends = {sk: (link.get("purge", {}).get("N"), link.get("ttl", {}).get("N")) for sk, link in links.items()}
    with_lines = (num(goes)["N"], str(int(goes + LEDGER_TTL_SECONDS)))
    assert ends[f"CHILD#{child.id}"] == ends[f"CHILD#{grandchild.id}"] == with_lines
    assert ends[f"DESC#{grandchild.id}"] == (num(goes)["N"], str(int(goes)))
    assert ends[f"CHILD#{sibling.id}"] == (None, None)


async def test_a_store_url_without_a_region_homes_its_keys_in_the_clients_region(
    dynamo: DynamoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dynamodb://TABLE` with `AWS_REGION` set, as the DynamoDB client accepts it: the store had no region, its
    keys no home, and every region wrote their one meter item (two regions spent 1.83x a budget). The store takes
    the region the client signs for; a URL whose region cannot be known is refused."""
    table = dynamo.create_table()  # (moto keeps tables per region: this one is us-east-1's)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = open_store(f"dynamodb://{table}?endpoint_url={dynamo.url}")
    assert isinstance(store, DynamoDBStore) and store.region == "us-east-1"
    minted = await KeyAdmin(KeyService(store, 0)).mint(record(budget_usd=1.0))
    found = await store.get_key(minted.record.id)
    assert found is not None and found.home_region == "us-east-1"
    assert store.spool_path is not None and store.spool_path.endswith(f"settlements-{table}.jsonl")  # as before
    await store.close()
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(
        StoreError, match=r"no AWS region for DynamoDB: set AWS_REGION \(or GATEWAY_REGION\), or add \?region=R"
    ):
        open_store(f"dynamodb://{table}?endpoint_url={dynamo.url}")


async def test_migrate_homes_keys_made_without_a_home_region(dynamo: DynamoServer) -> None:
    """A key made before home regions (or by a store without a region) is homed in the region `gateway store
    migrate` runs in, so that it stops sharing one meter item across regions; a second run homes nothing."""
    table = dynamo.create_table()
    legacy = DynamoDBStore(DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url), table)
    old = record(budget_usd=1.0)
    await legacy.create_key(old)
    assert (await legacy.get_key(old.id)).home_region is None  # type: ignore[union-attr]
    store = open_store(dynamo.store_url(table, "us-east-1"))
    assert isinstance(store, DynamoDBStore)
    assert await store.migrate() == 1
    homed = await store.get_key(old.id)
    assert homed is not None and homed.home_region == "us-east-1" and homed.version == old.version + 1
    assert await store.migrate() == 0
    await store.close()
    await legacy.close()


async def lost_grant(dynamo: DynamoServer) -> tuple[DynamoDBStore, DynamoDBStore, str]:
    """`two_regions_losing`, with a grant to the lease region that landed at home and whose every answer was lost
    (the request had a 503): the home counts $0.25 leased out, the lease holds nothing."""
    _, remote, here, home = two_regions_losing(dynamo)
    key = uuid.uuid4().hex[:12]
    remote.lose, remote.times = "UpdateItem", 10
    with pytest.raises(StoreError):
        await here.admit(homed(key, 0.1))
    remote.lose = None
    meter = (await home._meter_items(key))[0]
    assert (meter["c:" + PERIOD]["N"], meter["g:" + PERIOD + "#eu-west-1"]["N"]) == ("0.250000", "0.250000")
    return here, home, key


def homed(key: str, amount: float) -> Admission:
    """An admission of `amount` on a $1 budget of `key`, homed in us-east-1."""
    charge = BudgetCharge(key, PERIOD, 1.0, amount, "us-east-1")
    return Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")


async def test_a_grant_whose_answers_were_all_lost_comes_home_with_the_idle_lease(dynamo: DynamoServer) -> None:
    """A grant landed at home, its answers lost on every try: the request had a 503, the home counted the chunk
    leased and the lease never had it, and its return gave back only what the lease held. A quarter of the budget
    stayed locked until the region's next grant (for a key that never came back there, for the period), while
    `GET /v1/key` said all of it remained. The lease is watched from the grant on, and its return credits what
    the home granted and it never had, then gives it back."""
    here, home, key = await lost_grant(dynamo)
    assert await here.return_idle_leases(force=True) == pytest.approx(0.25)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.0)
    await home.admit(homed(key, 1.0))  # the whole budget is the home's again
    await here.close()
    await home.close()


async def test_a_region_about_to_refuse_takes_home_the_leases_idle_elsewhere(dynamo: DynamoServer) -> None:
    """No process in the lease region returns its lease (on Lambda nothing runs between invocations; here the
    grant's answers were lost too): the home, about to refuse a request for want of budget, takes home every
    lease idle for `lease_idle_seconds`, through the lease region's endpoint, and admits it."""
    here, home, key = await lost_grant(dynamo)
    home.leases.client_for = lambda region: here.client  # the lease region's endpoint, as the home reaches it
    big = homed(key, 0.9)
    with pytest.raises(BudgetRefused):
        await home.admit(big)
    charge = big.budgets[0]
    assert await home.release_held(charge, time.time()) == pytest.approx(0.25)
    await home.admit(big)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.9)
    await here.close()
    await home.close()


async def test_what_a_lease_region_reports_left_is_no_more_than_it_would_admit(dynamo: DynamoServer) -> None:
    """An admission's counters give the budget's remaining header. In a lease region they added to the lease what
    the home had unleased when this process last asked, which other regions spend meanwhile and no process
    refreshes: the header said $0.0456 left where $0.0104 was (4.4x). They give what the lease holds."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    await here.admit(homed(key, 0.1))  # a grant of $0.25, $0.10 of it reserved
    await home.admit(homed(key, 0.75))  # the home spends what it had unleased
    snapshot = await here.admit(homed(key, 0.05))  # from the lease: $0.10 left in it, none at home
    assert 1.0 - snapshot.committed_usd[PERIOD] == pytest.approx(0.10)
    with pytest.raises(BudgetRefused):
        await here.admit(homed(key, 0.11))
    await here.close()
    await home.close()


def settled_at(adm: Admission, actual: float) -> Settlement:
    """`adm` (`homed`'s) settled at `actual`, with its line."""
    charge = adm.budgets[0]
    spent = replace(charge, amount_usd=actual)
    return Settlement(
        adm.reservation_id, [spent], charge.amount_usd, [], line(charge.key_id, actual), "us-east-1", adm.expires_at
    )


def died(key: str, amount: float) -> Admission:
    """`homed`, but its reservation's TTL has passed: a request that settles after its reservation was released."""
    charge = BudgetCharge(key, PERIOD, 1.0, amount, "us-east-1")
    return Admission(uuid.uuid4().hex, key, [charge], [], time.time() - 61, "us-east-1")


def home_failing(dynamo: DynamoServer) -> tuple[FlakyClient, DynamoDBStore, DynamoDBStore]:
    """`two_regions`, the lease region reaching its home through a `FlakyClient`, and the home reaching the lease
    region's replica (for its reclaims)."""
    table = dynamo.create_table()
    home_endpoint = FlakyClient(dynamo)
    credentials = Credentials("testing", "testing")
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
        client_for=lambda region: here.client,
    )
    return home_endpoint, here, home


async def lease_and_meter(home: DynamoDBStore, key: str) -> tuple[Item, Item]:
    items = {item["sk"]["S"]: item for item in await home._meter_items(key)}
    return items["LEASE#eu-west-1"], items["METER"]


async def test_a_return_whose_home_write_failed_comes_home_at_the_homes_next_refusal_once_its_process_is_gone(
    dynamo: DynamoServer,
) -> None:
    """A return is two writes: the lease gives up its `a` (its `b` grows), then the home lowers its `c`. The second
    failing and the process then ending (a server stopping while its home is briefly unreachable, a Lambda
    environment reaped between the two), nothing wrote it again: a reclaim passed over a lease holding nothing, and
    the home counted the $0.15 returned as leased for good ($0.10 spent of $1: $0.85 refused, while `GET /v1/key`
    said $0.90 left). A reclaim takes home a lease whose `b` the home has not counted, and says what that freed
    (the refusal is tried again only if something was)."""
    home_endpoint, here, home = home_failing(dynamo)
    key = uuid.uuid4().hex[:12]
    adm = homed(key, 0.1)
    await here.admit(adm)  # a grant of $0.25 from the home, $0.10 of it reserved
    await here.settle(settled_at(adm, 0.1))
    home_endpoint.fail("UpdateItem", "InternalServerError", 20)  # the home takes no write
    with pytest.raises(StoreError):
        await here.return_leases()  # the server stops: the lease gave up its $0.15, the home was not told
    await here.close()  # and its process is gone
    lease, meter = await lease_and_meter(home, key)
    assert (read_num(lease, f"a:{PERIOD}"), read_num(lease, f"b:{PERIOD}")) == (0, pytest.approx(0.15))
    assert read_num(meter, f"c:{PERIOD}") == pytest.approx(0.25)
    big = homed(key, 0.85)
    with pytest.raises(BudgetRefused):
        await home.admit(big)
    assert await home.release_held(big.budgets[0], time.time()) == pytest.approx(0.15)
    await home.admit(big)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.95)
    await home.close()


async def test_a_late_settlement_into_a_returned_lease_is_charged_at_home_once_as_it_lands(
    dynamo: DynamoServer,
) -> None:
    """docs/keys-and-budgets.md (Guarantee): a request whose reservation expired and was released, settling later,
    counts its actual cost, as in one region, where it is on the meter the next admission checks. Settled into a
    lease that went home meanwhile (its sweeper returns it within 45 s, a reservation lives 16 min: a spooled
    settlement re-driven), it drove the lease's `a` below zero and no more: the home never counted it, and admitted
    the whole budget again, $1.40 spent of $1 ($0.50 late, then $0.90). The settlement charges the home what the
    lease owes, once: its home write's answer lost and the write sent again, the settlement itself sent again."""
    local, remote, here, home = two_regions_losing(dynamo)
    key = uuid.uuid4().hex[:12]
    late = died(key, 0.5)
    await here.admit(late)  # a grant of $0.50 to eu-west-1's lease, all of it reserved
    await here.return_idle_leases(force=True)  # idle: its expired reservation released, the $0.50 goes home
    remote.lose = "UpdateItem"  # the home's answer to the charge is lost, and the charge sent again
    await here.settle(settled_at(late, 0.5))  # $0.50 spent, its line written
    await here.settle(settled_at(late, 0.5))  # sent again (re-driven from the spool): nothing more
    lease, meter = await lease_and_meter(home, key)
    left = 1.0 - (await home.meter(key, PERIOD)).committed_usd[PERIOD]  # what `GET /v1/key` says
    assert left == pytest.approx(0.5)
    with pytest.raises(BudgetRefused):
        await home.admit(homed(key, 0.9))
    assert remote.lose is None
    assert read_num(lease, f"a:{PERIOD}") == 0
    assert read_num(meter, f"c:{PERIOD}") == pytest.approx(0.5)  # the late $0.50, counted once
    assert read_num(meter, f"g:{PERIOD}#eu-west-1") == read_num(lease, f"g:{PERIOD}") == pytest.approx(1.0)
    await home.admit(homed(key, 0.5))  # the rest of the budget, to the cent
    await here.close()
    await home.close()


@pytest.mark.parametrize("gone", [False, True], ids=["sweep", "reclaim"])
async def test_a_debt_the_home_did_not_take_as_it_settled_is_charged_by_the_leases_return_or_a_reclaim(
    dynamo: DynamoServer, gone: bool
) -> None:
    """The home unreachable as a late settlement lands in a returned lease: what the lease owes is charged by its
    return (the settlement watches it again: its sweeper, or its server's shutdown) or, its process gone, by a
    reclaim, the home's next refusal. A return gave back nothing of a lease in debt and a reclaim passed over it,
    so only this region's next grant of the key and period covered it."""
    home_endpoint, here, home = home_failing(dynamo)
    key = uuid.uuid4().hex[:12]
    late = died(key, 0.5)
    await here.admit(late)
    await here.return_idle_leases(force=True)
    home_endpoint.fail("GetItem", "InternalServerError", 20)  # the home unreachable as it settles
    await here.settle(settled_at(late, 0.5))  # it lands: the lease owes $0.50, the home does not know it yet
    home_endpoint.scripted.clear()
    lease, meter = await lease_and_meter(home, key)
    assert (read_num(lease, f"a:{PERIOD}"), read_num(meter, f"c:{PERIOD}")) == (-0.5, 0)
    if gone:
        await here.close()
        await home.admit(homed(key, 0.3))  # spent at home meanwhile
        big = homed(key, 0.8)
        with pytest.raises(BudgetRefused):
            await home.admit(big)
        assert await home.release_held(big.budgets[0], time.time()) == 0.0  # nothing came home: a debt went
    else:
        assert await here.return_idle_leases(force=True) == 0.0
        await here.close()
    lease, meter = await lease_and_meter(home, key)
    committed = 0.8 if gone else 0.5
    assert read_num(lease, f"a:{PERIOD}") == 0
    assert read_num(meter, f"c:{PERIOD}") == pytest.approx(committed)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(committed)
    await home.admit(homed(key, round(1.0 - committed, 2)))  # the rest of the budget, to the cent
    with pytest.raises(BudgetRefused):
        await home.admit(homed(key, 0.01))
    await home.close()


async def spent_at_home(home: DynamoDBStore, key: str, reserved: float, actual: float) -> None:
    """A request of `key` admitted in its home region with `reserved` held, and settled there at `actual`."""
    adm = homed(key, reserved)
    await home.admit(adm)
    spent = replace(adm.budgets[0], amount_usd=actual)
    await home.settle(Settlement(adm.reservation_id, [spent], reserved, [], None, expires_at=adm.expires_at))


async def noise_at_home(home: DynamoDBStore, key: str) -> None:
    """The noise a settlement by an earlier release left on the key's home meter, which keeps it: committed moved by a
    float difference as Python prints it, 2e-17 more than spent."""
    await home._call(
        "update_item",
        TableName=home.table,
        Key=home._meter_key(key),
        UpdateExpression="ADD #c :noise",
        ExpressionAttributeNames={"#c": f"c:{PERIOD}"},
        ExpressionAttributeValues={":noise": {"N": "0.00000000000000002"}},
    )


async def test_a_settlement_in_the_home_region_moves_committed_by_the_exact_difference(dynamo: DynamoServer) -> None:
    """A settlement on the home meter moved committed by the float difference of the actual and the reserved, written
    as Python prints it (0.1 - 0.3 = -0.19999999999999998): $0.30 reserved and $0.10 spent left committed at
    0.10000000000000002 beside a spent of 0.1, nothing in flight, for good, and each such difference added its noise's
    digits to the counter, towards the 38 significant digits a DynamoDB number holds (review). A lease's settlement
    was in decimals already."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    await spent_at_home(home, key, 0.3, 0.1)
    meter = (await home._meter_items(key))[0]
    assert (meter[f"c:{PERIOD}"]["N"], meter[f"s:{PERIOD}"]["N"]) == ("0.1", "0.1")  # committed: 0.10000000000000002
    for reserved, actual in [(0.7, 0.1), (0.3, 0.2), (0.05, 0.07)]:  # (the last spends beyond what it reserved)
        await spent_at_home(home, key, reserved, actual)
    meter = (await home._meter_items(key))[0]
    assert (meter[f"c:{PERIOD}"]["N"], meter[f"s:{PERIOD}"]["N"]) == ("0.47", "0.47")
    await here.close()
    await home.close()


@pytest.mark.parametrize("noise", [False, True], ids=["settled-by-this-release", "noise-an-earlier-release-left"])
async def test_a_lease_region_admits_what_the_home_region_admits_to_the_cent(dynamo: DynamoServer, noise: bool) -> None:
    """A $1 budget homed in us-east-1, $0.10 spent there ($0.30 reserved): $0.90 is left, and the home admits $0.90.
    eu-west-1 refused it, 402 "$0.900000 left": committed stood 2e-17 above spent at home, and the grant, the home
    admission's write with the chunk as its amount, lacked that write's tolerance (`TOLERANCE`). Committed now moves
    by decimals; and a meter an earlier release left that noise on (it stays there) grants what the home admits."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    await spent_at_home(home, key, 0.3, 0.1)
    if noise:
        await noise_at_home(home, key)
    snapshot = await here.admit(homed(key, 0.9))  # a grant of $0.90 from the home region
    assert 1.0 - snapshot.committed_usd[PERIOD] == pytest.approx(0.0)
    with pytest.raises(BudgetRefused):
        await here.admit(homed(key, 0.01))
    with pytest.raises(BudgetRefused):
        await home.admit(homed(key, 0.01))
    await here.close()
    await home.close()


async def test_a_lease_region_that_asked_for_more_than_is_left_still_gets_what_fits_to_the_cent(
    dynamo: DynamoServer,
) -> None:
    """A grant asks for a quarter of what the home had unleased when this process last asked, if more than the request
    lacks; refused, it asks again for what the request lacks, unless the home has less than that left. That test had
    no tolerance either: with 2e-17 of noise at home a lease region refused a request the home admits (review)."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    await here.admit(homed(key, 0.05))  # a grant of $0.25: $0.75 unleased, as this process last saw
    await spent_at_home(home, key, 0.6, 0.6)
    await noise_at_home(home, key)  # $0.15 left unleased, less 2e-17
    await here.admit(homed(key, 0.35))  # $0.20 in the lease: a quarter of $0.75 asked for, refused; then $0.15
    with pytest.raises(BudgetRefused):
        await here.admit(homed(key, 0.01))
    await here.close()
    await home.close()


def test_a_store_url_without_a_region_takes_the_aws_variables_then_the_gateways_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only `GATEWAY_REGION` set, a store URL without `?region=` was refused ("set AWS_REGION"); the AWS
    variables still come first, so a table found through `AWS_DEFAULT_REGION` is found after an upgrade (taking
    `GATEWAY_REGION` first lost it: review). The store's region is the one its client signs for: with only
    `GATEWAY_REGION` it was None, its keys homed nowhere (review)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "GATEWAY_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_REGION", "eu-central-1")
    assert dynamodb_client(None, "http://127.0.0.1:9").region == "eu-central-1"
    store = open_store("dynamodb://tbl?endpoint_url=http://127.0.0.1:9")
    assert isinstance(store, DynamoDBStore) and store.region == "eu-central-1"
    assert store.spool_path is not None and store.spool_path.endswith("settlements-tbl.jsonl")  # (as before)
    asyncio.run(store.close())
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert dynamodb_client(None, "http://127.0.0.1:9").region == "us-east-1"
    store = open_store("dynamodb://tbl?endpoint_url=http://127.0.0.1:9")
    assert isinstance(store, DynamoDBStore) and store.region == "us-east-1"
    asyncio.run(store.close())


async def test_a_late_settlement_whose_home_hangs_is_not_spooled_for_the_debts_charge(
    dynamo: DynamoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a lease owes is charged at home before the settlement ends, within the settlement's bound: a home that
    hung to the bound itself raced it, and where the bound won, the landed settlement was spooled and alarmed as one
    the store did not take (review mergerev34b). The charge now ends before it, left to the lease's return."""
    monkeypatch.setattr(budgets, "SETTLE_FIRST_DELAY_S", 0.001)
    _, _, here, _ = two_regions_losing(dynamo)
    key = uuid.uuid4().hex[:12]
    late = died(key, 0.5)
    await here.admit(late)
    await here.return_idle_leases(force=True)  # the late settlement will leave the lease owing

    async def hangs(*_: object) -> None:
        await asyncio.sleep(3)  # (the home region, slow to answer)

    monkeypatch.setattr(here.leases, "cover_debt", hangs)
    spool = SettlementSpool(tmp_path / "spool.jsonl")
    meter = Meter(here, KeyService(here, 0), 960, spool=spool)
    loop = asyncio.get_running_loop()
    bound = SETTLE_BY.set(loop.time() + 0.5)
    started = loop.time()
    try:
        await meter.settle(settled_at(late, 0.5))
    finally:
        SETTLE_BY.reset(bound)
    waited, pending = loop.time() - started, spool.pending
    await spool.close()
    await here.close()
    assert pending == 0 and waited < 0.5, (pending, waited)


async def test_a_retired_region_s_leases_come_home_and_the_keys_homed_there_are_named(dynamo: DynamoServer) -> None:
    """Retiring a region as docs/deploying.md said (its stack, then its replica) stranded what its replica alone
    writes: the budget it held leased of keys homed elsewhere (granted at home for good: no sweeper of its runs
    again, and another region's reclaim goes through its endpoint), and the keys homed in it, which no region could
    revoke nor grant their budget once it was gone. `retire_region` brings the leases home and names those keys.
    Found by review."""
    here, home = two_regions(dynamo)
    key = uuid.uuid4().hex[:12]
    await home.create_key(record(key, budget_usd=1.0, home_region="us-east-1"))
    homed = record(home_region="eu-west-1")
    gone = [
        record(home_region="eu-west-1", revoked_at=time.time()),
        record(home_region="eu-west-1", expires_at=time.time() - 1),
    ]
    for made in (homed, *gone, record(home_region="us-east-1")):
        await home.create_key(made)
    charge = BudgetCharge(key, PERIOD, 1.0, 0.5, "us-east-1")
    adm = Admission(uuid.uuid4().hex, key, [charge], [], time.time() + 60, "us-east-1")
    await here.admit(adm)
    spent = BudgetCharge(key, PERIOD, 1.0, 0.1, "us-east-1")
    await here.settle(Settlement(adm.reservation_id, [spent], 0.5, [], line(key, 0.1), "us-east-1", adm.expires_at))

    async def home_committed() -> float:
        items = {i["sk"]["S"]: i for i in await home._meter_items(key)}
        return read_num(items["METER"], f"c:{PERIOD}")  # (the home's own spend and every lease granted out)

    leased = await home_committed()
    assert leased > 0.1  # (eu-west-1's grant, more than it spent)
    here.leases._held.clear()  # its functions are gone: nothing of it will ever give the lease back
    here.leases._drew.clear()
    await here.close()

    retiring = DynamoDBStore(
        DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
        home.table,
        time.time,
        region="us-east-1",
        client_for=lambda region: DynamoDBClient("us-east-1", Credentials("testing", "testing"), dynamo.url),
    )
    leases, returned, keys = await retiring.retire_region("eu-west-1")
    assert leases == 1 and returned == pytest.approx(leased - 0.1)
    assert await home_committed() == pytest.approx(0.1)
    assert (await home.meter(key, PERIOD)).committed_usd[PERIOD] == pytest.approx(0.1)
    assert [k.id for k in keys] == [homed.id]
    assert await retiring.retire_region("eu-west-1") == (1, 0.0, keys)  # (again: nothing more came free)
    with pytest.raises(StoreError, match="this store's own region"):
        await retiring.retire_region("us-east-1")
    await retiring.close()
    await home.close()


def test_retire_region_says_whether_the_replica_may_go(
    dynamo: DynamoServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`gateway store retire-region R`: exit 0 and the command that deletes R's replica where no live key is homed in
    R; else exit 1, the keys named (by id and name), and the replica kept."""
    from handler.entry.cli import main

    table = dynamo.create_table()
    url = dynamo.store_url(table)
    assert main(["store", "retire-region", "eu-west-1", "--store", url]) == 0
    said = capsys.readouterr().out
    assert said.startswith("eu-west-1: 0 budget leases brought home ($0.000000 of budget back at their homes)\n")
    assert "no live key is homed in eu-west-1" in said and "'Delete={RegionName=eu-west-1}'" in said

    async def home_one() -> KeyRecord:
        store = open_store(url)
        made = replace(record(home_region="eu-west-1"), name="team-eu")
        await store.create_key(made)
        await store.close()
        return made

    homed = asyncio.run(home_one())
    assert main(["store", "retire-region", "eu-west-1", "--store", url]) == 1
    said = capsys.readouterr().out
    assert "1 live keys are homed in eu-west-1" in said and f"    {homed.id}  team-eu\n" in said
    assert "Delete=" not in said
    assert main(["store", "retire-region", "us-east-1", "--store", url]) == 2
    assert "us-east-1 is this store's own region" in capsys.readouterr().err
    embedded = f"sqlite:///{tmp_path / 'gateway.db'}"
    assert main(["keys", "create", "--name", "k", "--store", embedded]) == 0
    capsys.readouterr()
    assert main(["store", "retire-region", "eu-west-1", "--store", embedded]) == 2
    assert "regions are a DynamoDB store's" in capsys.readouterr().err
