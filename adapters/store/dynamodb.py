"""The DynamoDB store: one table (its schema lives in `template.yaml`), an injected boto3 client.

Items (`pk`, `sk`; `gsi1pk`/`gsi1sk` feed the one index; `ttl` is the table's TTL attribute):

| item | pk | sk | holds |
|---|---|---|---|
| key | `KEY#<id>` | `KEY` | the record as JSON, `version`, `w`; `gsi1pk=KEYS`, `gsi1sk=<parent or ~>#<id>` |
| meter | `METER#<id>` | `METER`| `c:`/`s:<period>` committed/spent USD, `x:<period>@<minute>` reservations, rates |
| settled marker | `SETTLED#<reservation>` | `SETTLED` | makes settlement idempotent |
| line item | `LEDGER#<key id>` | `<ts>#<request id>` | the item as JSON; `gsi1pk=LEDGERS#<n>` for all-keys reports |

| lease | `METER#<id>` | `LEASE#<region>` | a region's lease of a key homed elsewhere (`region_leases.py`) |
| family count | `FAMILY#<root>` | `COUNT` | `d`: its keys minted less those purged; `v`: its version (`create_child`) |
| child count | `FAMILY#<id>` | `COUNT` | `n`: its children, as older releases count; `m`: the `n` in its root's `d` |
| child link | `FAMILY#<id>` | `CHILD#<child id>` | `child`, `purge` (when its record may go); a TTL past its lines' |
| deeper link | `FAMILY#<root>` | `DESC#<key id>` | a key below its children: `child`, `purge`, its TTL (for recounts) |

A meter item's rates are `w:<name>` (the count) and `n:<name>` (its minute): one pair per limit, restarted each
minute. Its `q` names the last admission written to it (`_admit_update`).
A key item's `w` is a token of the write that put it, so that a write sent again knows its own (`already_written`).

A key's budget counters, its reservations and its rate counters sit in one item, so an admission for a
key without budgeted parents is one conditional `UpdateItem` whose new values come back in the same
call; with budgeted ancestors it is one `TransactWriteItems` over their meter items, plus a consistent
`GetItem` of each of those items, sent together, for the answer's headers (what every key of the chain has
left). A settlement is one `TransactWriteItems`: the marker
(so a retry is a no-op), the meter updates and the line item; one that took more from a lease than it reserved
there reads the lease after it, and charges the home what the lease owes (`RegionLeases.cover_debt`).

A meter item (and a lease) holds only the periods still open: once a period is closed (`period_closed`: an hour
past its end), the first request of the key to settle after an admission saw its attributes removes them, unless
one of its reservations is still live (`_prune`). What was spent in it stays in the line items, which reports read.

Reports read line items by key range, never by day: one key's lines are `pk = LEDGER#<key>` between two
times; all keys' are spread over `LEDGER_SHARDS` index partitions (`gsi1pk = LEDGERS#<n>`, n from the request
id, so no partition takes every write), `gsi1sk` between two times. A report is one query per key (or one
per shard, sent together), each followed through its pages, whatever the period. A listing's page reads the same
queries backwards, a few lines a page, merged newest first, and stops with the page (`scan_usage_newest`).

Across regions (the table as a global table) a key's meter item is written only in the key's home region;
another region spends from its own lease item, topped up from the home meter (see `region_leases.py`), so no item
with counters is ever written in two regions. A store without a region treats every key as local.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import time
import zlib
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TypeVar

from adapters.store.dynamo_client import CONDITION_FAILED, ConditionFailed, DynamoDBClient, call, past, scanned
from adapters.store.dynamo_keys import DynamoDBKeys
from adapters.store.dynamo_responses import DynamoDBResponses
from adapters.store.dynamo_signins import DynamoDBSignIns
from adapters.store.dynamo_threads import DynamoDBThreads
from adapters.store.expressions import (
    TOLERANCE,
    Expression,
    Item,
    committed_change,
    dec,
    exact,
    num,
    number,
    parse_bucket,
    read_num,
    reservation_bucket,
    text,
)
from adapters.store.metered import (
    AdmissionWrite,
    Applied,
    Counters,
    MeteredStore,
    MeterUpdate,
    Refill,
    Reservation,
    SettleUpdate,
    Unmet,
)
from adapters.store.records import (
    LEDGER_TTL_SECONDS,
    SETTLED_TTL_SECONDS,
    key_from_json,
    key_purge_after,
    ledger_from_json,
    ledger_sort_bounds,
    ledger_sort_key,
    ledger_to_json,
    period_closed,
)
from adapters.store.region_leases import IDLE_SECONDS, LEASE_PREFIX, MAX_TRACKED, LeaseShort, RegionLeases
from handler.ports import (
    LEDGER_BATCH,
    STORE_DEADLINE,
    Admission,
    BudgetCharge,
    KeyRecord,
    LedgerItem,
    MeterSnapshot,
    Settlement,
    StoreDeadlineError,
    StoreError,
    UsageQuery,
)
from handler.redaction import redact_message

T = TypeVar("T")
logger = logging.getLogger("gateway")
METER_SK = "METER"
LAST_ADMISSION = "q"  # on a meter item: the last admission written to it (`_admit_update`)
SWEEP_SECONDS = 120.0  # a process releases a key's expired reservations this often, after settling on it
# All-keys reports read this many index partitions (the module docstring): each takes about 1,000 writes a
# second before DynamoDB throttles it, so eight carry a ledger of 8,000 requests a second.
LEDGER_SHARDS = 8
LEDGER_SHARD_KEYS = [f"LEDGERS#{n}" for n in range(LEDGER_SHARDS)]
REPORT_CONCURRENCY = 8
# The fewest lines a query of a listing's page asks for at once (`scan_usage_newest`).
NEWEST_FIRST_PAGE = 4
RELEASE_TRIES = 3  # a minute's bucket changed by a late settlement is read and released again
DEBT_MARGIN_S = 0.1  # a lease's debt charged at home ends this long before its settlement's deadline
RELEASE_CHUNK = 50  # expired reservations released by one update (DynamoDB: 300 operators, 4 KB an expression)
FAILED = CONDITION_FAILED
# The first letters of the attributes a budget period scopes, on a home meter and on a lease (`period_attribute`).
PERIOD_KINDS = frozenset("abcgqstx")


def period_attribute(name: str) -> str | None:
    """The budget period a meter item's (or a lease's) attribute belongs to: `c:P`, `s:P`, `x:P@<minute>[#R]`,
    `g:P#R`, `b:P#R`, `q:P#R` on the home meter, `a:P`, `t:P` and the like on a lease (region_leases.py); None for
    the others (rates, `q`, `r:<id>`, the keys)."""
    if len(name) < 3 or name[1] != ":" or name[0] not in PERIOD_KINDS:
        return None
    return name[2:].partition("@")[0].partition("#")[0]


def retrieved(done: asyncio.Future[Any]) -> None:
    """`done`'s outcome taken, so that an error no one else asks for is not logged as never retrieved."""
    if not done.cancelled():
        done.exception()


def closed_attributes(item: Item, now: float) -> list[str]:
    """The attributes of a meter item (or lease) that belong to closed periods (`period_closed`), but for a period
    still holding a live reservation: a minute not yet ended (a request admitted late, by a clock behind, still
    settles into it) or one written before minutes (`r:<id>`: its release lowers the period's committed)."""
    closed: dict[str, list[str]] = {}
    for name in item:
        period = period_attribute(name)
        if period is not None and period_closed(period, now):
            closed.setdefault(period, []).append(name)
    for name, value in item.items():
        if name.startswith("x:") and parse_bucket(name)[1] >= now:
            closed.pop(parse_bucket(name)[0], None)
        elif name.startswith("r:") and "M" in value:
            closed.pop(value["M"].get("p", {}).get("S", ""), None)
    return [name for names in closed.values() for name in names]


class DynamoDBStore(DynamoDBKeys, DynamoDBResponses, DynamoDBThreads, DynamoDBSignIns, MeteredStore):
    """`Store` on one DynamoDB table; `client` is a boto3 DynamoDB client (injected, so tests and
    Lambda's init choose endpoint, retries and timeouts)."""

    def __init__(
        self,
        client: Any,
        table: str,
        clock: Callable[[], float] = time.time,
        *,
        region: str | None = None,
        client_for: Callable[[str], Any] | None = None,
        lease_idle_seconds: float = IDLE_SECONDS,
        owned: list[Any] | None = None,
    ) -> None:
        """`region` is this replica's region; `client_for(region)` gives a client for another region's
        replica (the home meters of keys homed there); `owned` lists the clients `close` closes (those
        `open_store` built; it adds other regions' as it builds them)."""
        self.client = client
        self.owned = owned if owned is not None else []
        self.table = table
        self.clock = clock
        self.region = region
        self.leases = RegionLeases(
            table, region, client, client_for or self._no_other_region, clock, lease_idle_seconds
        )
        self.leases.release_expired = lambda key_id, region: self.release_expired(key_id, self.clock(), region)
        self.leases.granted_from = self._note_closed
        self._swept: dict[str, float] = {}  # key id: when this process last released its expired minutes
        # Items an admission (or a grant) saw holding closed periods, with the client of their region (`_prune`).
        self._closed: dict[tuple[str, str], tuple[Item, Any]] = {}
        self.sweep_phase: Callable[[], float] = random.random  # where in its first period a key's sweep falls
        self.chores: set[asyncio.Task[None]] = set()  # what landed settlements left to do (`_after_settling`)
        self.page_size: int | None = None  # a query's `Limit` (None: DynamoDB's 1 MB pages)
        # Where settlements the table refused wait (handler/pipeline/spool.py): Lambda can write only under /tmp.
        folder = "/tmp" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else ".gateway"  # noqa: S108
        self.spool_path = f"{folder}/settlements-{table}{f'-{region}' if region else ''}.jsonl"
        self._replicas: dict[str, DynamoDBStore] = {}  # other regions' replicas, as `admit_at` counts in them

    def _no_other_region(self, region: str) -> Any:
        raise StoreError(f"no endpoint configured for region {region}, the home of a key used here")

    async def admit(self, admission: Admission) -> MeterSnapshot:
        """`MeteredStore.admit`; under a deadline (`STORE_DEADLINE`) its calls run on past it in a task of their own,
        bounded by the client's timeouts alone, and the deadline ends only the wait for them: a `StoreDeadlineError`
        whose `landing` is that task. Cut at the deadline, a call DynamoDB had applied (or, on boto3's client, its
        thread left to run on, its answer dropped) left a reservation no one knew of, which held the key's budget
        and its minute's counts until it expired; its outcome is now known once it comes, for the caller to release
        it. (A task a write, about 15 µs of CPU: on this store alone, whose write is a round trip.)"""
        by = STORE_DEADLINE.get()
        if by is None or past(by):
            return await super().admit(admission)
        writing = asyncio.ensure_future(self._admit_past_deadline(admission))
        try:
            async with asyncio.timeout_at(by):
                return await asyncio.shield(writing)
        except TimeoutError:
            writing.add_done_callback(retrieved)  # (a caller that does not wait for it leaves no error unretrieved)
            raise StoreDeadlineError("DynamoDB admission did not end by the deadline", writing) from None
        except asyncio.CancelledError:
            writing.cancel()  # (as the call was before: its caller, cancelled, learns nothing of it either way)
            raise

    async def _admit_past_deadline(self, admission: Admission) -> MeterSnapshot:
        STORE_DEADLINE.set(None)  # (this task's own context)
        return await super().admit(admission)

    async def admit_at(self, admission: Admission, region: str | None) -> MeterSnapshot:
        """`Store.admit_at`: in another region, by a store of that region's replica (kept for the next), as a
        process there counts it: counted here, a key homed there was counted on this region's lease, a count of
        this region's alone (a family minted its limit a minute in each region)."""
        if region is None or not self.leases.remote(region):
            return await self.admit(admission)
        return await self._replica(region).admit(admission)

    async def settle_at(self, settlement: Settlement, region: str | None) -> None:
        """`Store.settle_at`: in another region, by the store of that region's replica that `admit_at` counted in."""
        if region is None or not self.leases.remote(region):
            return await self.settle(settlement)
        return await self._replica(region).settle(settlement)

    def _replica(self, region: str) -> DynamoDBStore:
        """A store of `region`'s replica, as a process there has it (made once, kept for the next call)."""
        if region not in self._replicas:
            self._replicas[region] = DynamoDBStore(
                self.leases.client_for(region), self.table, self.clock, region=region, client_for=self.leases.client_for
            )
        return self._replicas[region]

    @staticmethod
    def _meter_key(key_id: str) -> Item:
        return {"pk": text(f"METER#{key_id}"), "sk": text(METER_SK)}

    async def _meter_items(self, key_id: str, region: str | None = None) -> list[Item]:
        """The key's home meter and every region's lease, as this replica (or `region`'s) has them: one query."""
        return await self._query(
            client=self.leases.replica(region),
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": text(f"METER#{key_id}")},
            ConsistentRead=True,
        )

    # --- admission (the primitives of `MeteredStore`) ---------------------------------------------

    def _bucket(self, period: str, expires_at: float, home_region: str | None) -> str:
        """The bucket a reservation of `period` expiring at `expires_at` is summed in, on the item a key homed in
        `home_region` is counted on here: a home meter's are tagged with the region that wrote them (only that
        region may release them), a lease's need no tag (only its region writes it)."""
        return reservation_bucket(period, expires_at, None if self.leases.remote(home_region) else self.region)

    def _admit_update(self, admission: Admission, meter: MeterUpdate) -> Item:
        """`meter` as the conditional update of one key's meter item (or, for a key homed elsewhere, this
        region's lease of it)."""
        e = Expression()
        # The item names the last admission written to it: the same write sent again after its answer was lost
        # (a timeout) fails here instead of counting twice, and `_write_admission` finds itself named.
        e.write_once(LAST_ADMISSION, text(admission.reservation_id))
        for charge in meter.budgets:
            bucket = e.name(self._bucket(charge.period, admission.expires_at, meter.home_region))
            if self.leases.remote(meter.home_region):
                self.leases.admit_clause(e, charge, bucket)
                continue
            committed = e.name(f"c:{charge.period}")
            e.clauses["ADD"].append(f"{committed} {e.value(num(charge.amount_usd))}")
            # In decimals, with `fits`' tolerance: the float difference (1.0 - 0.9 = 0.09999999999999998) refused
            # a request filling the budget to the cent, which `fits` then found fitting, three times: a 503.
            e.at_most(committed, exact(charge.limit_usd) - exact(charge.amount_usd) + TOLERANCE)
            e.clauses["ADD"].append(f"{bucket} {e.value(num(charge.amount_usd))}")
        for step in meter.rates:
            rate = step.charge
            count, window = e.name(f"w:{rate.name}"), e.name(f"n:{rate.name}")
            current = e.value(num(rate.window))
            if step.restart:
                e.clauses["SET"] += [f"{count} = {e.value(num(rate.amount))}", f"{window} = {current}"]
                e.conditions.append(f"attribute_not_exists({window}) OR {window} < {current}")
            else:
                ceiling = e.value(num(rate.limit - rate.amount))
                e.clauses["ADD"].append(f"{count} {e.value(num(rate.amount))}")
                e.clauses["SET"].append(f"{window} = {current}")
                same_window = f"{window} = {current} AND {count} <= {ceiling}"
                e.conditions.append(f"attribute_not_exists({window}) OR ({same_window})")
        return e.update(self.leases.item_key(meter.key_id, meter.home_region), self.table)

    async def _write_admission(self, write: AdmissionWrite) -> Applied | Unmet:
        """One conditional `UpdateItem` (its new values come back with it), or a `TransactWriteItems` over
        several keys' items and the reads of the reported ones (`_read_reported`). A lease too short for its charge is a
        `Refill`: a grant from the home region, then the admission again."""
        admission = write.admission
        seen = {(b.key_id, b.period): self.leases.generation(b.key_id, b.period) for b in admission.budgets}
        updates = {meter.key_id: self._admit_update(admission, meter) for meter in write.meters}
        try:
            if len(updates) == 1:
                ((key_id, update),) = updates.items()
                answer = await self._call(
                    "update_item", **update, ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD"
                )
                item = answer.get("Attributes", {})
                self._note_closed(item)
                return Applied({key_id: self._counters(admission, key_id, item)})
            if updates:
                await self._call(
                    "transact_write_items",
                    TransactItems=[
                        {"Update": {**u, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}} for u in updates.values()
                    ],
                )
            items = await self._read_reported(write)
            for item in items.values():
                self._note_closed(item)
            return Applied({key_id: self._counters(admission, key_id, item) for key_id, item in items.items()})
        except StoreDeadlineError:
            raise
        except StoreError:
            landed = await self._landed(write, single=len(updates) == 1)
            if landed is None:
                raise
            return landed
        except ConditionFailed as exc:
            if exc.reasons:  # the transaction's, in the order of its updates
                reasons = zip(updates, exc.reasons, strict=False)
                failed = {k: r.get("Item", {}) for k, r in reasons if r.get("Code") == FAILED}
            else:  # the single update's
                failed = {key_id: exc.item}
            if self._already_admitted(write, failed):
                if not exc.reasons:
                    return Applied({key_id: self._counters(admission, key_id, exc.item)})
                items = await self._read_reported(write)
                return Applied({key_id: self._counters(admission, key_id, item) for key_id, item in items.items()})
        for key_id, item in failed.items():
            for charge in admission.budgets:
                if charge.key_id == key_id and self.leases.remote(charge.home_region):
                    try:
                        self.leases.diagnose(charge, item)
                    except LeaseShort as short:
                        generation = seen[(charge.key_id, charge.period)]
                        raise Refill(functools.partial(self.leases.grant, charge, short.lease, generation)) from None
        return Unmet({key_id: self._counters(admission, key_id, item) for key_id, item in failed.items()})

    def _note_closed(self, item: Item, client: Any = None) -> None:
        """Remember a meter item (or lease) an admission got back that still holds a closed period's attributes:
        `_prune` removes them once the request has settled, off the answer's path, through `client` (the replica
        of the region that wrote it; this region's if None)."""
        now = self.clock()
        if "sk" in item and any(period_closed(p, now) for p in {period_attribute(n) for n in item} if p):
            if len(self._closed) >= MAX_TRACKED:
                self._closed.clear()
            self._closed[(item["pk"]["S"], item["sk"]["S"])] = (item, client or self.client)

    @staticmethod
    def _already_admitted(write: AdmissionWrite, failed: dict[str, Item]) -> bool:
        """Whether the write failed because it had landed already (a write whose answer was lost, sent again): an
        item it failed on names this admission as the last written to it. One is enough: a transaction lands
        whole, and a sibling's admission may have written a shared parent's item since. Another admission on
        every item in between hides it, and the request counts twice: its second reservation holds budget until
        its minute of expiry is released, its rates count it twice in its minute (never an overspend)."""
        reservation = write.admission.reservation_id
        return any(item.get(LAST_ADMISSION, {}).get("S") == reservation for item in failed.values())

    async def _landed(self, write: AdmissionWrite, single: bool) -> Applied | None:
        """The admission `write` as applied, if it landed though every answer to it was lost (the client's attempts
        timed out or were answered 5xx after the first was sent): its items, read once more, name it (`_already_
        admitted`). Failed as the store's error instead, the request was answered 503 and sent nowhere, and its
        reservation and its minute's rate counts stayed on the meter, known to nobody, until they expired (16
        minutes: the client's retry refused 402, or 429 at rpm 1). None where no item names it (it did not land, or
        another admission landed on each item since: then it counts as docs/store.md says) or none can be read."""
        read = await self._read_items(write, [meter.key_id for meter in write.meters])
        items = {key_id: item for key_id, item in read.items() if not isinstance(item, StoreError)}
        if len(items) < len(read) or not self._already_admitted(write, items):
            return None
        for item in items.values():
            self._note_closed(item)
        told = items if single else {k: item for k, item in items.items() if k in write.reported}
        return Applied({key_id: self._counters(write.admission, key_id, item) for key_id, item in told.items()})

    async def _read_reported(self, write: AdmissionWrite) -> dict[str, Item]:
        """After a transaction (which returns no values): the items the snapshot reports, each in a consistent
        `GetItem`, sent together. Not a `TransactGetItems`: a transactional read is cancelled by any write in flight
        on its items (a sibling's admission on a shared parent's meter, say) and costs twice the read units; the
        snapshot only tells the answer's headers what is left, item by item. A read that fails leaves its key
        unreported (those headers are then left out) rather than fail an admission already written."""
        read = await self._read_items(write, write.reported)
        return {key_id: item for key_id, item in read.items() if not isinstance(item, StoreError)}

    async def _read_items(self, write: AdmissionWrite, key_ids: Iterable[str]) -> dict[str, Item | StoreError]:
        """The items of `key_ids` on the meters `write` counts on (a key homed elsewhere: this region's lease), each in
        a consistent `GetItem`, sent together; a read the store failed is its `StoreError`."""
        homes = {meter.key_id: meter.home_region for meter in write.meters}
        keys = {k: self.leases.item_key(k, homes.get(k)) for k in key_ids}
        answers = await asyncio.gather(
            *(self._call("get_item", TableName=self.table, Key=key, ConsistentRead=True) for key in keys.values()),
            return_exceptions=True,
        )
        found: dict[str, Item | StoreError] = {}
        for key_id, answer in zip(keys, answers, strict=True):
            if isinstance(answer, BaseException) and not isinstance(answer, StoreError):
                raise answer
            found[key_id] = answer if isinstance(answer, StoreError) else answer.get("Item", {})
        return found

    def _counters(self, admission: Admission, key_id: str, item: Item) -> Counters:
        """One key's meter item (or this region's lease of it) as `Counters`. Of a lease, committed is the limit
        less what the lease holds: what this region can spend without asking the home, never more than an
        admission here allows. (With what the home had unleased when this process last asked, a figure no
        process refreshes while other regions spend, the budget's remaining header said $0.0456 where $0.0104
        was left.) Of a home meter it counts every lease granted out, spent or not, as docs/costs.md says: the
        leases' own committed, which `GET /v1/key` counts instead, are other items, a read more per request."""
        counters = Counters()
        for charge in admission.budgets:
            if charge.key_id != key_id:
                continue
            period = charge.period
            counters.committed[period] = read_num(item, f"c:{period}")
            counters.spent[period] = read_num(item, f"s:{period}")
            if self.leases.remote(charge.home_region):
                counters.committed[period] = charge.limit_usd - read_num(item, f"a:{period}")
        counters.rates = self._rate_counts(item)
        return counters

    @staticmethod
    def _rate_counts(item: Item) -> dict[str, tuple[int, int]]:
        return {
            name[2:]: (int(read_num(item, name)), int(read_num(item, f"w:{name[2:]}")))
            for name in item
            if name.startswith("n:")
        }

    # --- settlement ---------------------------------------------------------------------------

    def _settle_update(self, settlement: Settlement, update: SettleUpdate) -> Item:
        """`update` as an update of one key's meter item (or this region's lease of it). Every number it adds is the
        figures' decimal arithmetic (`committed_change`), not the float delta `MeteredStore.settle` hands a backend
        keeping floats: so committed comes back to spent exactly once nothing is in flight."""
        e = Expression()
        remote = self.leases.remote(update.home_region)
        exists = "attribute_not_exists" if update.released else "attribute_exists"
        expires_at = settlement.expires_at
        for charge, _ in update.budgets:
            if remote:
                self.leases.settle_clause(e, settlement, charge, update.released)
            else:
                delta = committed_change(charge.amount_usd, settlement.reserved_usd, update.released)
                e.clauses["ADD"] += [
                    f"{e.name(f'c:{charge.period}')} {e.value(number(delta))}",
                    f"{e.name(f's:{charge.period}')} {e.value(num(charge.amount_usd))}",
                ]
            if expires_at is not None:  # its minute's bucket holds it, unless that minute was released
                bucket = e.name(self._bucket(charge.period, expires_at, update.home_region))
                if not update.released:
                    e.clauses["ADD"].append(f"{bucket} {e.value(num(-settlement.reserved_usd))}")
                e.conditions.append(f"{exists}({bucket})")
        if update.budgets and expires_at is None:  # admitted as one `r:<id>` each (before buckets)
            reservation = e.name(f"r:{settlement.reservation_id}")
            e.clauses["REMOVE"].append(reservation)
            e.conditions.append(f"{exists}({reservation})")
        for rate in update.tokens:  # only while the counter still counts the admission's minute
            window = e.name(f"n:{rate.name}")
            e.clauses["ADD"].append(f"{e.name(f'w:{rate.name}')} {e.value(num(rate.amount))}")
            e.conditions.append(f"{window} = {e.value(num(rate.window))}")
        return e.update(self.leases.item_key(update.key_id, update.home_region), self.table)

    def _ledger_write(self, item: LedgerItem) -> Item:
        """The line item's `Put`, refused if the line exists (settled before under another marker)."""
        line = {
            "pk": text(f"LEDGER#{item.key_id}"),
            "sk": text(ledger_sort_key(item)),
            "gsi1pk": text(ledger_shard(item.request_id)),
            "gsi1sk": text(ledger_sort_key(item)),
            "data": text(ledger_to_json(item)),
            "ttl": num(int(item.ts + LEDGER_TTL_SECONDS)),
        }
        return {"Put": {"TableName": self.table, "Item": line, "ConditionExpression": "attribute_not_exists(pk)"}}

    async def _write_settlement(self, settlement: Settlement, updates: list[SettleUpdate]) -> frozenset[str]:
        """One `TransactWriteItems`: the marker (so a retry is a no-op), the meter updates and the line item.
        A token correction holds only while its counter still counts the admission's
        minute: one whose counter restarted for the next minute meanwhile is dropped (that count is not the
        admission's to correct: a lower estimate would have freed the new minute's rate), and the rest written
        again."""
        while True:
            outcome = await self._transact_settlement(settlement, updates)
            if isinstance(outcome, frozenset):
                if not outcome:
                    # What a lease owes for it is charged at home now, before the settlement ends (an invocation
                    # that ended with it pending froze it with the environment, and the home admitted meanwhile
                    # what the lease had spent): a call only where the lease took more than its reservation.
                    await self._cover_debts(settlement, updates)
                    self._after_settling(updates)
                return outcome
            updates = [
                SettleUpdate(
                    u.key_id, u.home_region, u.budgets, u.released, [r for r in u.tokens if r.name not in rolled]
                )
                if (rolled := outcome.get(u.key_id))
                else u
                for u in updates
            ]

    async def _transact_settlement(
        self, settlement: Settlement, updates: list[SettleUpdate]
    ) -> frozenset[str] | dict[str, set[str]]:
        """The settlement's transaction: the keys whose reservation was not where assumed (a frozenset, empty
        when it landed or had before), or, nothing written, the rate counters whose window rolled over since
        the admission, by key."""
        marker = {
            "Put": {
                "TableName": self.table,
                "Item": {
                    "pk": text(f"SETTLED#{settlement.reservation_id}"),
                    "sk": text("SETTLED"),
                    "ttl": num(int(self.clock() + SETTLED_TTL_SECONDS)),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        item = settlement.item
        written = [(u, w) for u in updates if (w := self._settle_update(settlement, u))["UpdateExpression"]]
        meter_writes = [{"Update": {**w, "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}} for _, w in written]
        writes = [marker, *meter_writes, *([self._ledger_write(item)] if item is not None else [])]
        try:
            await self._call("transact_write_items", TransactItems=writes)
            return frozenset()
        except ConditionFailed as exc:
            reasons = exc.reasons
            if reasons and reasons[0].get("Code") == FAILED:
                return frozenset()  # settled before: a retry changes nothing
            line = len(meter_writes) + 1
            if len(reasons) > line and reasons[line].get("Code") == FAILED:
                return frozenset()  # the line item exists: settled before under another marker
            failed = [
                (u, r.get("Item", {}))
                for (u, _), r in zip(written, reasons[1:], strict=False)
                if r.get("Code") == FAILED
            ]
            rolled = {
                u.key_id: {rate.name for rate in u.tokens if read_num(old, f"n:{rate.name}") != rate.window}
                for u, old in failed
            }
            rolled = {key_id: names for key_id, names in rolled.items() if names}
            if rolled:
                return rolled
            if not failed:
                raise StoreError("DynamoDB transaction conflict; retry") from exc
            return frozenset(u.key_id for u, _ in failed)

    def _after_settling(self, updates: list[SettleUpdate]) -> None:
        """The housekeeping a landed settlement leaves, in a task of its own (`chores`), each part of it best effort
        and done again later where it is not: the key's expired minutes released (`_sweep`, and by the next refusal),
        closed periods pruned (`_prune`, noted again by the next admission). Done inside the settlement, they held
        its end (the buffered function's answer, a stream's last byte) past the one write it needs, and a slow one
        ran the settlement's bound out: written already, it was spooled as one the store did not take, an ERROR line
        and `SpooledSettlementsAlarm` for nothing. Its store calls end by the settlement's own deadline
        (`STORE_DEADLINE`, the task's context): on Lambda, a chore the environment's freeze catches is cut at its
        thaw; `settled_chores` waits for them."""
        chore = asyncio.ensure_future(self._chores(updates))
        self.chores.add(chore)
        chore.add_done_callback(self._chore_done)

    async def _chores(self, updates: list[SettleUpdate]) -> None:
        await self._sweep([u.key_id for u in updates if u.budgets])
        await self._prune()

    def _chore_done(self, chore: asyncio.Task[None]) -> None:
        self.chores.discard(chore)
        if not chore.cancelled() and (failure := chore.exception()) is not None:
            said = redact_message(f"{type(failure).__name__}: {failure}")
            logger.warning("a settlement's housekeeping failed: %s", said)

    async def settled_chores(self) -> None:
        """Wait for what the landed settlements left to do (`_after_settling`)."""
        while self.chores:
            await asyncio.wait(list(self.chores))

    async def _cover_debts(self, settlement: Settlement, updates: list[SettleUpdate]) -> None:
        """What the settlement left a lease of this region owing charged to the key's home (`RegionLeases.cover_debt`:
        no call unless it took more from the lease than its reservation). The settlement landed: a home that cannot
        be reached leaves it to the lease's return, which the settlement watches it for, or a reclaim. Under the
        settlement's deadline (`STORE_DEADLINE`) it ends `DEBT_MARGIN_S` before it: a home that hung to the deadline
        itself raced the settlement's own bound, and where that won, the landed settlement was spooled and alarmed."""
        owing = [(update, charge) for update in updates if self.leases.remote(update.home_region)
                 for charge, _ in update.budgets]  # fmt: skip
        if not owing:
            return
        by = STORE_DEADLINE.get()
        bound = None if by is None else STORE_DEADLINE.set(by - DEBT_MARGIN_S)
        try:
            async with asyncio.timeout_at(None if by is None else by - DEBT_MARGIN_S):
                for update, charge in owing:
                    with contextlib.suppress(StoreError):
                        await self.leases.cover_debt(settlement, charge, update.released)
        except TimeoutError:
            pass  # (left to the lease's return, or a reclaim, as a home that cannot be reached)
        finally:
            if bound is not None:
                STORE_DEADLINE.reset(bound)

    # --- expiry and reads ---------------------------------------------------------------------

    async def _sweep(self, key_ids: list[str]) -> None:
        """Release the keys' expired minutes, at most once per `SWEEP_SECONDS` per key in this process. A
        minute whose reservations all settled holds nothing but stays in the item, one a minute of traffic,
        until a release removes it; a refusal releases too, but a key that is never refused would only grow.
        A key first seen here is swept at a random point of its first `SWEEP_SECONDS`: Lambda environments
        started together by a burst do not all query the key, and race to release its minutes, at once."""
        now = self.clock()
        for key_id in key_ids:
            last = self._swept.get(key_id)
            if last is None:
                if len(self._swept) >= MAX_TRACKED:  # a long-lived process: forget long-gone keys
                    self._swept.clear()
                self._swept[key_id] = now - SWEEP_SECONDS * self.sweep_phase()
                continue
            if now - last < SWEEP_SECONDS:
                continue
            self._swept[key_id] = now
            with contextlib.suppress(StoreError):  # the settlement landed; the next sweep tries again
                await self.release_expired(key_id, now)

    async def _prune(self) -> None:
        """Remove the closed periods' attributes (`closed_attributes`) from the items admissions noted: else a
        day budget's item kept every past day's counters, 735 attributes and 13 KB after a year, and each of its
        writes cost 13 write units. Conditional on each attribute being as the admission read it: a write to one
        since (a late settlement, a release) fails it, and it is sent again with the item as that failure
        returned it (at most `RELEASE_TRIES` times; the next admission to see them notes them again). Written in
        this region, where the admission wrote the item (a home meter in its home region, a lease in its own)."""
        noted, self._closed = self._closed, {}
        now = self.clock()
        for item, client in noted.values():
            key = {"pk": item["pk"], "sk": item["sk"]}
            for _ in range(RELEASE_TRIES):
                try:
                    await self._remove_as_read(client, key, item, closed_attributes(item, now))
                    break
                except ConditionFailed as failed:
                    item = failed.item  # (none: the item is gone, and there is nothing to remove)
                except StoreError:
                    break

    async def _remove_as_read(self, client: Any, key: Item, item: Item, names: list[str]) -> None:
        """Remove `names` from the item at `key` (through `client`), each on condition that it still holds its
        value in `item`, in updates of `RELEASE_CHUNK` (an expression's limits, as for a release)."""
        for start in range(0, len(names), RELEASE_CHUNK):
            e = Expression()
            for name in names[start : start + RELEASE_CHUNK]:
                placeholder = e.name(name)
                e.clauses["REMOVE"].append(placeholder)
                e.conditions.append(f"{placeholder} = {e.value(item[name])}")
            await call(
                client, "update_item", **e.update(key, self.table), ReturnValuesOnConditionCheckFailure="ALL_OLD"
            )

    async def release_expired(self, key_id: str, now: float, region: str | None = None) -> float:
        """`MeteredStore.release_expired`, of the reservations `region` wrote (this region's if None), read and
        released through its replica: a region about to refuse frees what requests that died in another hold there
        (that region may get no further request to release them, and only it writes its items)."""
        expired = await self._expired_reservations(key_id, now, region)
        return await self._release(key_id, expired, region) if expired else 0.0

    async def _expired_reservations(self, key_id: str, now: float, region: str | None = None) -> list[Reservation]:
        """On the home meter and the lease of `region` (this region if None), as its replica has them: those it
        wrote, as the minutes they expire in (`x:`, with what each still holds, down to none) and as written before
        buckets (`r:<id>`). One on the home meter that names no region (written before regions) is this region's,
        as before; another region's release takes only what names that region, and that region's lease's."""
        region = region or self.region
        expired = []
        for item in await self._meter_items(key_id, region):
            sk = item["sk"]["S"]
            if sk != METER_SK and sk != f"{LEASE_PREFIX}{region}":
                continue
            leased = sk != METER_SK
            taken = {region, None} if leased or region == self.region else {region}  # the regions they name
            for name, value in item.items():
                if name.startswith("x:"):
                    period, ends, tag = parse_bucket(name)
                    if ends < now and tag in taken:
                        stored = value["N"]
                        expired.append(Reservation(key_id, name, period, float(stored), ends, leased, stored))
                    continue
                reservation = value.get("M") if name.startswith("r:") else None
                if (
                    reservation is not None
                    and read_num(reservation, "e") < now
                    and reservation.get("w", {}).get("S") in taken
                ):
                    period, amount = reservation["p"]["S"], float(dec(reservation, "a"))
                    expired.append(Reservation(key_id, name, period, amount, read_num(reservation, "e"), leased))
        return expired

    async def _release(self, key_id: str, reservations: list[Reservation], region: str | None = None) -> float:
        """Conditional updates per item (the home meter, the lease of `region`: this region's if None), through
        that region's replica, `RELEASE_CHUNK` reservations each (an expression holds at most 300 operators and
        4 KB): all of a chunk's or none; a chunk one of whose reservations is gone or changed is released one
        reservation at a time, so that it holds back none of the others. A minute's bucket a late settlement
        changed since it was read is read again and released as it is now (at most `RELEASE_TRIES` times).

        Returns the USD these reservations no longer hold. One found gone holds nothing either: it was settled
        meanwhile, or released by this very update, sent again by the client after its answer was lost (then
        nothing else would say the budget is free, and the refusal that asked for the release would stand)."""
        released = 0.0
        for _ in range(RELEASE_TRIES):
            changed: dict[str, float] = {}  # bucket name: the USD it held when read
            for leased in (False, True):
                group = [r for r in reservations if r.leased == leased]
                released += await self._release_group(key_id, leased, group, changed, region)
            if not changed:
                break
            again = await self._expired_reservations(key_id, self.clock(), region)
            reservations = [r for r in again if r.reservation_id in changed]
            read_again = {r.reservation_id for r in reservations}
            released += sum(amount for name, amount in changed.items() if name not in read_again)
        return released

    async def _release_group(
        self, key_id: str, leased: bool, group: list[Reservation], changed: dict[str, float], region: str | None
    ) -> float:
        """`_release` on one item, chunk by chunk: the USD released; the buckets changed since they were read
        go into `changed`."""
        released = 0.0
        for start in range(0, len(group), RELEASE_CHUNK):
            chunk = group[start : start + RELEASE_CHUNK]
            freed = await self._release_chunk(key_id, leased, chunk, region)
            if freed is not None:
                released += freed
                continue
            for one in chunk:
                alone = await self._release_chunk(key_id, leased, [one], region) if len(chunk) > 1 else None
                if alone is None and one.stored is not None:
                    changed[one.reservation_id] = one.amount_usd
                else:
                    released += one.amount_usd if alone is None else alone
        return released

    async def _release_chunk(
        self, key_id: str, leased: bool, chunk: list[Reservation], region: str | None
    ) -> float | None:
        """Release `chunk` in one conditional update through `region`'s replica (this region's if None): the USD
        released, or None if one of them was gone."""
        e = Expression()
        amounts: dict[str, Decimal] = {}
        for reservation in chunk:
            placeholder = e.name(reservation.reservation_id)  # the attribute's name (`_expired_reservations`)
            e.clauses["REMOVE"].append(placeholder)
            if reservation.stored is None:
                amount = exact(reservation.amount_usd)
                e.conditions.append(f"attribute_exists({placeholder})")
            else:  # a minute's bucket, as read: a settlement that changed it since must land first
                amount = Decimal(reservation.stored)
                e.conditions.append(f"{placeholder} = {e.value(number(amount))}")
            period = reservation.period
            amounts[period] = amounts.get(period, Decimal(0)) + amount
        e.clauses["ADD"] += [f"{e.name(f'c:{p}')} {e.value(number(-amount))}" for p, amount in amounts.items()]
        if leased:
            e.clauses["ADD"] += [f"{e.name(f'a:{p}')} {e.value(number(amount))}" for p, amount in amounts.items()]
        client, region = self.leases.replica(region), region or self.region
        key = {"pk": text(f"METER#{key_id}"), "sk": text(f"{LEASE_PREFIX}{region}" if leased else METER_SK)}
        try:
            await call(client, "update_item", **e.update(key, self.table))
        except ConditionFailed:
            return None
        return float(sum(amounts.values()))

    async def _read_counters(self, key_id: str, period: str) -> Counters:
        """Committed and spent summed over the home meter and every region's lease; rates as counted here
        (this region's lease before the home meter)."""
        items = await self._meter_items(key_id)
        committed, spent = self.leases.totals(items, period)
        counters = Counters({period: committed}, {period: spent})
        local = {f"{LEASE_PREFIX}{self.region}", METER_SK}
        for item in sorted(items, key=lambda i: i["sk"]["S"] == METER_SK):
            if item["sk"]["S"] in local:
                for name, stored in self._rate_counts(item).items():
                    if name not in counters.rates or counters.rates[name][0] < stored[0]:
                        counters.rates[name] = stored
        return counters

    async def release_held(self, charge: BudgetCharge, now: float) -> float:
        """`release_expired`, then the leases of other regions idle for `lease_idle_seconds` taken home, with what
        requests that died there reserved (`RegionLeases.reclaim_idle`): on Lambda no sweeper returns a lease
        between invocations."""
        released = await self.release_expired(charge.key_id, now)
        if self.region is None:
            return released
        return released + await self.leases.reclaim_idle(charge, await self._meter_items(charge.key_id))

    async def return_idle_leases(self, force: bool = False) -> float:
        """Give back to their home regions the leases this process holds that sat idle (all, if `force`)."""
        return await self.leases.return_idle(force)

    async def return_leases(self) -> float:
        """Every lease this process holds, idle or not, but those another process of this region drew on since
        (`RegionLeases.return_idle`, `leaving`): what its requests reserved stays in it until they settle."""
        return await self.leases.return_idle(leaving=True)

    # --- ledger -------------------------------------------------------------------------------

    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
        """Per key, one query over its lines' time range; for all keys, one per index shard, sent together
        (see the module docstring); each followed through its pages."""
        requests = ledger_queries(query)
        if not requests:
            return []
        answers = await self._queries(requests)
        # Parsed and sorted in a worker thread: for hundreds of thousands of lines that is seconds of CPU, which on
        # the event loop would hold up every other request of the process.
        return await asyncio.to_thread(lines_of, answers, query)

    async def scan_usage(self, query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
        """`usage`'s queries, each page handed on as it comes: parsed and consumed on a worker thread, `LEDGER_BATCH`
        lines at a time, one page after another (never two at once), before its query asks for the next. A report
        then holds its rows and the pages in flight (one a query, `REPORT_CONCURRENCY` queries at a time), not its
        lines: every item of every page held, then every line parsed and sorted (1,500 lines handed over in one
        list), would take 3.3 KB a line at the report's peak: a month of 300,000 about 1 GB, a 1024 MB Lambda's
        whole memory. A report's sums need no time order."""
        requests = ledger_queries(query)
        gate = asyncio.Semaphore(REPORT_CONCURRENCY)
        turn = asyncio.Lock()  # (one page consumed at a time: a report's sums are not summed on two threads at once)

        async def pages(request: dict[str, Any]) -> None:
            async with gate:
                request = {"TableName": self.table, **request}
                if self.page_size is not None:
                    request["Limit"] = self.page_size
                while True:
                    answer = await call(self.client, "query", **request)
                    items = answer.get("Items", [])
                    if items:
                        async with turn:
                            await asyncio.to_thread(consume_page, items, query, consume)
                    if "LastEvaluatedKey" not in answer:
                        return
                    request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

        # One query failing ends the others (no page of a report that failed is read on, or handed to it), and the
        # report fails with its error, as with any store call's.
        try:
            async with asyncio.TaskGroup() as queries:
                for request in requests:
                    queries.create_task(pages(request))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def scan_usage_newest(
        self, query: UsageQuery, consume: Callable[[list[LedgerItem]], bool], batch: int = LEDGER_BATCH
    ) -> None:
        """`usage`'s queries read backwards on their sort keys (`ScanIndexForward` false), a few lines a page, their
        pages merged newest first (`NewestPages`) and handed on until `consume` has what it needs: a listing's page
        reads its lines and few more, where `scan_usage` read every line older than its cursor. A query's first page
        holds its share of `batch` (at least `NEWEST_FIRST_PAGE` lines), each next one twice the last (at most
        `batch`, or `LEDGER_BATCH` where that is more), so a key holding every line of a family's page is read in few
        pages, and one holding none costs one short page."""
        requests = ledger_queries(query)
        if not requests:
            return
        first = min(batch, max(NEWEST_FIRST_PAGE, -(-batch // len(requests))))
        most = max(batch, LEDGER_BATCH)
        if self.page_size is not None:
            first, most = min(first, self.page_size), min(most, self.page_size)
        streams = [
            NewestPages({"TableName": self.table, **request, "ScanIndexForward": False}, first) for request in requests
        ]
        gate = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def page(stream: NewestPages) -> None:
            async with gate:
                answer = await call(self.client, "query", **stream.request, Limit=stream.limit)
            stream.took(answer, most)

        while True:
            # (Every query that may hold more has a line in hand: its last one bounds what it has not read yet.)
            while waiting := [stream for stream in streams if not stream.items and not stream.done]:
                try:
                    async with asyncio.TaskGroup() as pages:
                        for stream in waiting:
                            pages.create_task(page(stream))
                except ExceptionGroup as failed:  # (the listing fails with the store's error, as a report does)
                    raise failed.exceptions[0] from None
            ready = merged_newest(streams)
            if not ready:
                return
            if await asyncio.to_thread(consume_newest, ready, query, consume, batch):
                return

    async def _queries(self, requests: list[dict[str, Any]]) -> list[list[Item]]:
        """`_query` for each request, `REPORT_CONCURRENCY` at a time (a parent with many children, the shards)."""
        gate = asyncio.Semaphore(REPORT_CONCURRENCY)

        async def one(request: dict[str, Any]) -> list[Item]:
            async with gate:
                return await self._query(**request)

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def retire_region(self, region: str) -> tuple[int, float, list[KeyRecord]]:
        """For a region whose functions are gone (`gateway store retire-region`): bring home every lease it holds
        of a key homed elsewhere (`RegionLeases.give_back_all`, through its endpoint: its replica is still there, and
        no sweeper of it will ever run again), and find the live keys homed in it, whose records and budgets are
        written through its replica alone (`dynamo_keys`, `region_leases`): deleted with them there, no region could
        revoke such a key or grant another region its budget. Returns the leases brought home, the USD that came
        with them, and those keys. Run again, it brings home what came free since (reservations that expired)."""
        if region == self.region:
            raise StoreError(f"{region} is this store's own region: open the store in a region that stays (?region=)")
        leases = 0
        returned = 0.0
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :meter) AND sk = :lease",
            "ExpressionAttributeValues": {":meter": text("METER#"), ":lease": text(f"{LEASE_PREFIX}{region}")},
        }
        async for lease in scanned(self.client, **request):
            record = await self.get_key(lease["pk"]["S"].removeprefix("METER#"))
            home = record.home_region if record is not None else None
            if home is None or home == region:
                continue  # (no lease of a key homed there, nor of an unhomed key: its meter is the home's)
            returned += await self.leases.give_back_all(lease, home, region)
            leases += 1
        homed: list[KeyRecord] = []
        now = self.clock()
        async for item in self._key_items():
            record = self._live(item)
            if record is None or record.home_region != region or record.revoked_at is not None:
                continue
            if record.expires_at is not None and record.expires_at <= now:
                continue
            homed.append(record)
        return leases, returned, sorted(homed, key=lambda r: r.id)

    async def migrate(self) -> int:
        """Bring items written by an older gateway to this layout; returns how many items it wrote. Run it once
        after upgrading (`gateway store migrate`); a second run writes nothing.

        Line items written before reports read index shards (`gsi1pk = LEDGER#<day>`) move onto their shard,
        so all-keys reports find them (`_move_lines`); children minted before family links existed are linked
        to their parents, so their parents' reports keep their lines after their records go (`_link_children`).
        Keys created before home regions existed are homed in this store's region (`_home_keys`). Keys minted
        before family counts, below a root's children, are linked on their root's partition and each root's count
        set to its live family (`_link_families`). The daily aggregates older gateways wrote go (`_drop_aggregates`).
        Each is one paginated scan of the table."""
        moved = await self._move_lines() + await self._link_children() + await self._home_keys()
        return moved + await self._link_families() + await self._drop_aggregates()

    async def _drop_aggregates(self) -> int:
        """Give the daily aggregates (`pk = AGG#<day>`) that settlements wrote until this version a TTL of now, for
        DynamoDB to delete them: nothing read them (reports read the line items), and they carried none. (A TTL
        rather than a `DeleteItem`, which neither the functions' policy nor the store's other calls need.) Returns
        how many were given one."""
        dropped = 0
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :aggregate) AND attribute_not_exists(#ttl)",
            "ProjectionExpression": "pk, sk",
            "ExpressionAttributeNames": {"#ttl": "ttl"},
            "ExpressionAttributeValues": {":aggregate": text("AGG#")},
        }
        async for item in scanned(self.client, **request):
            await self._call(
                "update_item",
                TableName=self.table,
                Key={"pk": item["pk"], "sk": item["sk"]},
                UpdateExpression="SET #ttl = :now",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":now": num(int(self.clock()))},
            )
            dropped += 1
        return dropped

    async def _link_children(self) -> int:
        """Write the missing child links: from every key record with a parent, and from every line item whose
        `ancestors` name a parent (which finds the children whose records were purged already). Each link's TTL
        outlives the child's record and the last line the scan found of it."""
        links: dict[tuple[str, str], float | None] = {}  # (parent, child): the link's TTL, None for none

        def keep(parent_id: str, child_id: str, ttl: float | None) -> None:
            held = links.get((parent_id, child_id), 0.0)
            links[(parent_id, child_id)] = None if held is None or ttl is None else max(held, ttl)

        purges: dict[tuple[str, str], float | None] = {}
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "(begins_with(pk, :key) AND sk = :keysk) OR begins_with(pk, :line)",
            "ProjectionExpression": "pk, #data",
            "ExpressionAttributeNames": {"#data": "data"},
            "ExpressionAttributeValues": {":key": text("KEY#"), ":keysk": text("KEY"), ":line": text("LEDGER#")},
        }
        async for item in scanned(self.client, **request):
            if item["pk"]["S"].startswith("KEY#"):
                record = key_from_json(item["data"]["S"])
                if record.parent_id is not None:
                    purge = key_purge_after(record)
                    purges[(record.parent_id, record.id)] = purge
                    keep(record.parent_id, record.id, None if purge is None else purge + LEDGER_TTL_SECONDS)
            else:
                line = ledger_from_json(item["data"]["S"])
                if line.ancestors:
                    keep(line.ancestors[-1], line.key_id, line.ts + LEDGER_TTL_SECONDS)
        linked = 0
        for (parent_id, child_id), ttl in sorted(links.items()):
            purge = purges.get((parent_id, child_id), 0.0)  # 0: a child known only from its lines, purged already
            link = self._link_item(parent_id, child_id, purge, ttl)
            try:
                await self._call(
                    "put_item", TableName=self.table, Item=link, ConditionExpression="attribute_not_exists(pk)"
                )
            except ConditionFailed:
                continue  # linked when minted, or by another run
            linked += 1
        return linked

    async def _move_lines(self) -> int:
        """Move line items indexed by day onto their shard (see `migrate`); returns how many moved."""
        moved = 0
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :line) AND begins_with(gsi1pk, :line)",
            "ProjectionExpression": "pk, sk, gsi1pk",
            "ExpressionAttributeValues": {":line": text("LEDGER#")},
        }
        async for item in scanned(self.client, **request):
            request_id = item["sk"]["S"].partition("#")[2]
            try:
                await self._call(
                    "update_item",
                    TableName=self.table,
                    Key={"pk": item["pk"], "sk": item["sk"]},
                    UpdateExpression="SET gsi1pk = :shard",
                    ConditionExpression="gsi1pk = :old",
                    ExpressionAttributeValues={":shard": text(ledger_shard(request_id)), ":old": item["gsi1pk"]},
                )
            except ConditionFailed:
                continue  # moved meanwhile by another run
            moved += 1
        return moved

    async def reconnect(self) -> None:
        for client in self.owned:
            if isinstance(client, DynamoDBClient):
                await client.close()  # its pools are dropped; the next call opens a connection

    async def close(self) -> None:
        await self.settled_chores()  # (each bounded by its settlement's deadline, or by the client's timeouts)
        await self.leases.close()
        await self.reconnect()


def ledger_shard(request_id: str) -> str:
    """The index partition of a line item for all-keys reports: a stable spread of request ids."""
    return LEDGER_SHARD_KEYS[zlib.crc32(request_id.encode()) % LEDGER_SHARDS]


def ledger_queries(query: UsageQuery) -> list[dict[str, Any]]:
    """The queries of `query`'s lines (none for a window no line can be in): per key, one over its lines' time range;
    for all keys, one per index shard."""
    bounds = ledger_sort_bounds(query.since, query.until)
    if bounds is None:
        return []
    between = {":low": text(bounds[0]), ":high": text(bounds[1])}
    if query.key_ids is not None:
        return [
            {
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
                "ExpressionAttributeValues": {":pk": text(f"LEDGER#{key_id}"), **between},
            }
            for key_id in dict.fromkeys(query.key_ids)
        ]
    return [
        {
            "IndexName": "gsi1",
            "KeyConditionExpression": "gsi1pk = :pk AND gsi1sk BETWEEN :low AND :high",
            "ExpressionAttributeValues": {":pk": text(shard), **between},
        }
        for shard in LEDGER_SHARD_KEYS
    ]


def consume_page(items: list[Item], query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
    """A page of a report's query: its lines in `[since, until)`, parsed and handed to `consume` `LEDGER_BATCH` at a
    time (for a worker thread)."""
    for start in range(0, len(items), LEDGER_BATCH):
        lines = (ledger_from_json(item["data"]["S"]) for item in items[start : start + LEDGER_BATCH])
        batch = [line for line in lines if query.since <= line.ts < query.until]
        if batch:
            consume(batch)


class NewestPages:
    """One of `scan_usage_newest`'s queries: its request (with where its next page starts), the items of its pages
    not yet handed on (newest first, by sort key), whether it has more, and its next page's `Limit`."""

    __slots__ = ("request", "items", "done", "limit", "sort")

    def __init__(self, request: dict[str, Any], limit: int) -> None:
        self.request = request
        self.items: list[Item] = []
        self.done = False
        self.limit = limit
        self.sort = "gsi1sk" if "IndexName" in request else "sk"  # (a line's `ledger_sort_key`, in either)

    def took(self, answer: dict[str, Any], most: int) -> None:
        self.items.extend(answer.get("Items", []))
        after = answer.get("LastEvaluatedKey")
        if after is None:
            self.done = True
        else:
            self.request["ExclusiveStartKey"] = after
        self.limit = min(most, self.limit * 2)

    def key(self, item: Item) -> str:
        return str(item[self.sort]["S"])


def merged_newest(streams: list[NewestPages]) -> list[Item]:
    """The items in hand that no query can have newer ones unread than, newest first by sort key, taken out of their
    queries' hands: those at or above the highest last item of the queries that have more (each query's unread items
    sort below its last), every item once none has."""
    bounds = [stream.key(stream.items[-1]) for stream in streams if not stream.done and stream.items]
    frontier = max(bounds) if bounds else None
    ready: list[tuple[str, Item]] = []
    for stream in streams:
        taken = 0
        for item in stream.items:
            key = stream.key(item)
            if frontier is not None and key < frontier:
                break
            ready.append((key, item))
            taken += 1
        del stream.items[:taken]
    ready.sort(key=lambda pair: pair[0], reverse=True)
    return [item for _, item in ready]


def consume_newest(
    items: list[Item], query: UsageQuery, consume: Callable[[list[LedgerItem]], bool], batch: int
) -> bool:
    """`consume_page` for `scan_usage_newest`: the lines handed on in order, `batch` at a time (parsed only then),
    until `consume` has what it needs (True)."""
    step = min(batch, LEDGER_BATCH)
    for start in range(0, len(items), step):
        lines = (ledger_from_json(item["data"]["S"]) for item in items[start : start + step])
        kept = [line for line in lines if query.since <= line.ts < query.until]
        if kept and consume(kept):
            return True
    return False


def lines_of(answers: list[list[Item]], query: UsageQuery) -> list[LedgerItem]:
    """The line items of a report's query answers, in `[since, until)`, in time order."""
    lines = [ledger_from_json(item["data"]["S"]) for answer in answers for item in answer]
    return sorted((i for i in lines if query.since <= i.ts < query.until), key=lambda i: i.ts)
