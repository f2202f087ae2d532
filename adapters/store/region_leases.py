"""Budgets across regions: every region spends from its own lease of a key's budget.

DynamoDB global tables settle concurrent writes to one item in two regions by last writer wins, so a
budget counter written in two regions loses increments and overspends. Here every item with counters is
written in exactly one region, so replication never has to merge concurrent writes.

Items (per budget period `P`; both under `pk = METER#<key id>`, so one query reads a key's whole budget):

- home meter, `sk = METER`, written only in the key's home region: `c:P` committed, the home region's own
  spend and reservations **plus every lease granted out**; `g:P#<R>` / `b:P#<R>` USD granted to /
  returned by region R (cumulative); `q:P#<R>` a token of the last grant to R.
- lease, `sk = LEASE#<R>`, written only in region R: `a:P` available, `c:P` committed, `s:P` spent,
  `g:P` / `b:P` granted / returned (cumulative, as credited here), `t:P` last use, `x:P@<minute>` reservations
  summed by their minute of expiry, `q:P` a token of its last return, and R's rate counters (rate limits hold
  per region).

The home meter is the item a single-region gateway has always used, so the home region's hot path is
unchanged: one conditional `ADD c:P amount IF c:P <= limit - amount`. A grant to another region is the same
write with the chunk as amount, so `limit - c:P` is what is still unleased, and a budget edit needs no
migration (the next condition is checked against the new limit).

In region R (not home) an admission is one conditional write on R's lease: `ADD a:P -amount, c:P amount IF
a:P >= amount`. When the lease cannot cover it, one process-wide single-flight grant: one conditional write
on the home meter through the home region's endpoint (chunk = max(need, unleased / 4), so one region cannot
take everything at once), then one write crediting R's lease up to the home's cumulative grant `g:P#R`
(idempotent: a grant whose credit was lost is credited by the next one), then the admission again. A lease
no request in R used for `idle_seconds` (`t:P`) is returned by a sweeper task in every process that drew on
it: the lease gives up its `a:P` (`b:P += a`) and its mark of its last use (`t:P`), then the home's `c:P` drops by
what R has returned and the home has not yet counted (again cumulative, so a lost second write heals on the next
return). A return first
credits the lease up to the home's `g:P#R` (a grant whose every answer was lost landed at home only) and releases
its expired reservations (requests that died in R). A region about to refuse a request for want of budget first
does the same for every other region's lease idle for `idle_seconds` (`reclaim_idle`), through that region's
endpoint: on Lambda no sweeper runs between invocations; it also takes a lease whose return the home never
counted (its `b:P` above the home's `b:P#R`: a return cut between its two writes, by a process that then ended).
A grant the home refuses while its meter holds expired reservations (requests that died in the home region)
releases them through the home's endpoint, then asks again.

A settlement takes from the lease what its request spent beyond its reservation (the whole cost where expiry
released the reservation). Into a lease that went home meanwhile, that leaves `a:P` below zero: the lease owes
it, and the settlement (else the lease's return, or a reclaim) charges it to the home as a grant (`g:P#R` and
`c:P` raised by it, with no limit: the money is spent), then credits the lease up to that grant (`cover_debt`).

A grant and a return each write a token drawn for that one write (`q:`), under a condition it does not hold
yet: the client sends a call again when its answer does not come, and the write sent again after landing is
refused by its own token and recognised (`ReturnValuesOnConditionCheckFailure`) rather than applied twice or
taken for a refusal: a grant landed but refused when sent again had refused the request with the budget free,
and left its chunk granted at home and never credited to the lease, for good.

Invariant, each inequality kept by a conditional write in one region: sum over regions of committed <= sum
of leases (per lease, `a:P >= 0`) and home committed (own + leases) <= limit. Overspend is zero, except for
what a request spends beyond its reservation, or after its reservation expired (as in one region: counted at
home as the settlement lands, `cover_debt`). Home unreachable: leases keep serving; a
request needing a grant fails closed (`StoreError`, 503). Region R unreachable: what R holds stays leased
to R (at most R's lease) until R returns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from adapters.store.dynamo_client import ConditionFailed, call
from adapters.store.expressions import (
    TOLERANCE,
    Expression,
    Item,
    committed_change,
    dec,
    exact,
    holds_expired,
    num,
    number,
    read_num,
    text,
)
from adapters.store.records import period_closed
from handler.ports import STORE_DEADLINE, BudgetCharge, BudgetRefused, Settlement, StoreError

HOME_SK = "METER"
LEASE_PREFIX = "LEASE#"
GRANT_FRACTION = Decimal("0.25")
IDLE_SECONDS = 30.0
# Grants beyond what a request needs are whole micro-dollars: lease counters stay short decimals.
MICRO = Decimal("0.000001")
MAX_TRACKED = 10_000


def meter_pk(key_id: str) -> dict[str, str]:
    return text(f"METER#{key_id}")


def is_lease(item: Item) -> bool:
    return str(item.get("sk", {}).get("S", "")).startswith(LEASE_PREFIX)


class LeaseShort(Exception):
    """An admission failed on a lease that cannot cover `charge`; `lease` is the lease item as it was."""

    def __init__(self, charge: BudgetCharge, lease: Item) -> None:
        super().__init__(charge.key_id)
        self.charge = charge
        self.lease = lease


@dataclass(slots=True)
class HeldLease:
    """A lease this process has drawn on, watched so it can be returned when idle."""

    key_id: str
    period: str
    home: str
    last_used: float
    # The last use this process's own admissions marked on the lease (`t:P`): a later mark is another process's, in
    # this region, that draws on it too (`return_idle`, `leaving`).
    drew_at: float = 0.0


@dataclass(slots=True)
class LeaseStats:
    """What this process's lease traffic did: the multi-region test reports it."""

    grants: int = 0
    granted_usd: float = 0.0
    returns: int = 0
    returned_usd: float = 0.0
    refusals: int = 0


class RegionLeases:
    """The lease side of `DynamoDBStore` for one region; `client_for(region)` is a client for that region's
    replica of the same table (its endpoint; in AWS the region's standard one)."""

    def __init__(
        self,
        table: str,
        region: str | None,
        local: Any,
        client_for: Callable[[str], Any],
        clock: Callable[[], float],
        idle_seconds: float = IDLE_SECONDS,
        fraction: Decimal = GRANT_FRACTION,
    ) -> None:
        self.table = table
        self.region = region
        self.local = local
        self.client_for = client_for
        self.clock = clock
        self.idle_seconds = idle_seconds
        self.fraction = fraction
        self.stats = LeaseStats()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._generation: dict[tuple[str, str], int] = {}
        self._unleased: dict[tuple[str, str], Decimal] = {}
        self._held: dict[tuple[str, str], HeldLease] = {}
        # The last use this process's admissions marked on each lease (`HeldLease.drew_at`), kept apart from `_held`,
        # which forgets a lease the sweeper gave back: watched again by a settlement alone, such a lease read as
        # never drawn on here, so a process that stopped kept in it what that settlement put back.
        self._drew: dict[tuple[str, str], float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Releases the expired reservations a region wrote on a key, through its replica (the store's
        # `release_expired`): a lease's dead reservations hold its USD, and only its region may write it.
        self.release_expired: Callable[[str, str], Awaitable[float]] | None = None
        # Shown the home meter as a grant left it, with the client of the home's replica (the store's
        # `_note_closed`): a key spent only here writes its home meter only through grants.
        self.granted_from: Callable[[Item, Any], None] | None = None

    # --- where a key's counters live ------------------------------------------------------------

    def remote(self, home: str | None) -> bool:
        """Whether a key homed in `home` spends from a lease here (else from its home meter, as ever)."""
        return self.region is not None and home is not None and home != self.region

    def item_key(self, key_id: str, home: str | None) -> Item:
        sk = f"{LEASE_PREFIX}{self.region}" if self.remote(home) else HOME_SK
        return {"pk": meter_pk(key_id), "sk": text(sk)}

    def generation(self, key_id: str, period: str) -> int:
        """Bumped by every grant this process lands: a request that saw an older one retries, not re-grants."""
        return self._generation.get((key_id, period), 0)

    # --- admission and settlement on a lease ------------------------------------------------------

    def admit_clause(self, e: Expression, charge: BudgetCharge, bucket: str) -> None:
        """Spend `charge` from this region's lease, reserved in `bucket` (the placeholder of its minute of
        expiry): the condition is a plain comparison, no arithmetic."""
        avail = e.name(f"a:{charge.period}")
        amount = e.value(num(charge.amount_usd))
        e.clauses["ADD"] += [
            f"{avail} {e.value(num(-charge.amount_usd))}",
            f"{e.name(f'c:{charge.period}')} {amount}",
            f"{bucket} {amount}",
        ]
        now = self.clock()
        e.clauses["SET"].append(f"{e.name(f't:{charge.period}')} = {e.value(num(now))}")
        e.conditions.append(f"{avail} >= {amount}")
        self._hold(charge, now)

    def _hold(self, charge: BudgetCharge, drew_at: float | None = None) -> None:
        """Watch the lease this process draws on, so that it goes home once idle even if the process that
        took the grant is gone; `drew_at`: the last use an admission of this process marks on it."""
        key = (charge.key_id, charge.period)
        if len(self._held) > MAX_TRACKED and key not in self._held:
            return  # the others' sweeps, and the next grant of this key, still return it
        if drew_at is not None:
            if len(self._drew) > MAX_TRACKED and key not in self._drew:
                self._drew.clear()  # (a long-lived process: leases of long-gone keys)
            self._drew[key] = drew_at
        held = self._held.get(key)
        if held is None:
            home = charge.home_region or ""
            held = self._held[key] = HeldLease(charge.key_id, charge.period, home, 0.0, self._drew.get(key, 0.0))
        held.last_used = self.clock()
        if drew_at is not None:
            held.drew_at = drew_at
        self._watch()

    @staticmethod
    def diagnose(charge: BudgetCharge, lease: Item) -> None:
        """Raise `LeaseShort` if the lease as it was cannot cover `charge`."""
        if dec(lease, f"a:{charge.period}") < exact(charge.amount_usd):
            raise LeaseShort(charge, lease)

    def settle_clause(self, e: Expression, settlement: Settlement, charge: BudgetCharge, released: bool) -> None:
        """Turn the reservation into spend; what was reserved and not spent is available again, so the lease is
        watched again: returned once idle, even if the sweeper had returned it before this request ended."""
        # In decimals: float differences would leave counters like 0.00019999999999999987 that never reach zero.
        unused = -committed_change(charge.amount_usd, settlement.reserved_usd, released)
        p = charge.period
        e.clauses["ADD"] += [
            f"{e.name(f'a:{p}')} {e.value(number(unused))}",
            f"{e.name(f'c:{p}')} {e.value(number(-unused))}",
            f"{e.name(f's:{p}')} {e.value(num(charge.amount_usd))}",
        ]
        self._hold(charge)

    # --- grants -----------------------------------------------------------------------------------

    async def grant(self, charge: BudgetCharge, lease: Item, seen_generation: int) -> None:
        """Top this region's lease up from the home meter so `charge` fits, or raise `BudgetRefused`.

        Single-flight per key and period: requests queued behind a grant retry their admission first."""
        key = (charge.key_id, charge.period)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if self.generation(*key) != seen_generation:
                return
            # Watched before the home write: a grant whose answers are all lost (a 503 here) landed or not, and
            # the sweep settles the home's cumulative grant against the lease's (`_give_back`) either way.
            self._hold(charge)
            home = charge.home_region or ""
            avail = dec(lease, f"a:{charge.period}")
            credited = dec(lease, f"g:{charge.period}")
            need = exact(charge.amount_usd) - avail
            total = await self._take_from_home(charge, home, need, avail, credited)
            await self._credit(charge, total, credited)
            if len(self._generation) > MAX_TRACKED:  # a long-lived process: forget hints of long-gone keys
                self._generation.clear()
                self._unleased.clear()
                self._locks = {k: lock for k, lock in self._locks.items() if lock.locked()}
            self._generation[key] = self.generation(*key) + 1
            self._hold(charge)

    def _chunk(self, unleased: Decimal, need: Decimal) -> Decimal:
        """What to ask the home for: this request's shortfall, or a fraction of what is unleased if more."""
        share = (unleased * self.fraction).quantize(MICRO, rounding=ROUND_FLOOR)
        return max(need, share) if unleased >= need else need

    async def _take_from_home(
        self, charge: BudgetCharge, home: str, need: Decimal, avail: Decimal, credited: Decimal
    ) -> Decimal:
        """One conditional write on the home meter; returns the cumulative USD granted to this region (`credited`:
        the lease's, as read)."""
        key = (charge.key_id, charge.period)
        limit = exact(charge.limit_usd)
        unleased = self._unleased.get(key, limit)
        client = self.replica(home)
        token_name = f"q:{charge.period}#{self.region}"
        for _ in range(3):
            chunk = self._chunk(unleased, need)
            e = Expression()
            committed = e.name(f"c:{charge.period}")
            granted = e.name(f"g:{charge.period}#{self.region}")
            e.clauses["ADD"] += [f"{committed} {e.value(number(chunk))}", f"{granted} {e.value(number(chunk))}"]
            token = text(uuid.uuid4().hex)
            e.write_once(token_name, token)
            # With the home admission's tolerance: without it a lease region refused what the home admits, a $0.90
            # request with $0.90 left ("$0.900000 left") where a float's noise held the home's committed 2e-17 high.
            e.at_most(committed, limit - chunk + TOLERANCE)
            update = e.update({"pk": meter_pk(charge.key_id), "sk": text(HOME_SK)}, self.table)
            try:
                answer = await call(
                    client,
                    "update_item",
                    **update,
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                item = answer.get("Attributes", {})
            except ConditionFailed as failed:
                if failed.item.get(token_name) != token:
                    unleased = limit - dec(failed.item, f"c:{charge.period}")
                    self._unleased[key] = unleased
                    if unleased + TOLERANCE < need:
                        owed = dec(failed.item, f"g:{charge.period}#{self.region}")
                        if owed > credited:  # granted before, its answers lost: credit it, then admit again
                            return owed
                        if await self._freed_at_home(charge, home, failed.item):
                            continue
                        self.stats.refusals += 1
                        raise BudgetRefused(charge.key_id, float(avail + max(unleased, Decimal(0)))) from None
                    continue
                item = failed.item  # it landed, its answer was lost, and it was sent again: the item after it
            self._unleased[key] = limit - dec(item, f"c:{charge.period}")
            if self.granted_from is not None:
                self.granted_from(item, client)
            self.stats.grants += 1
            self.stats.granted_usd += float(chunk)
            return dec(item, f"g:{charge.period}#{self.region}")
        raise StoreError("the home meter kept changing during a lease grant; retry")

    async def _freed_at_home(self, charge: BudgetCharge, home: str, meter: Item) -> bool:
        """Whether the home meter as a refused grant found it (`meter`) held reservations of requests that died in
        the home region, now released through its endpoint, as the home's own refusal would: a home that gets no
        further request for the key never releases them (a $1 budget refused $0.80 here, "$0.500000 left", with
        nothing spent or in flight)."""
        if self.release_expired is None or not holds_expired(meter, self.clock(), home):
            return False
        with contextlib.suppress(StoreError):
            return await self.release_expired(charge.key_id, home) > 0
        return False

    async def _credit(self, charge: BudgetCharge, total: Decimal, credited: Decimal) -> None:
        """Raise this region's lease to the home's cumulative grant `total`, from `credited` as last seen."""
        key = self.item_key(charge.key_id, charge.home_region)
        mark, counter = f"g:{charge.period}", f"a:{charge.period}"
        # In use from now: a region about to refuse takes home only leases idle for `idle_seconds` (`reclaim_idle`).
        used = f"t:{charge.period}"
        if not await self._raise_mark(self.local, key, mark, counter, total, credited, sign=1, touch=used):
            raise StoreError("could not credit a lease grant; retry")

    async def _raise_mark(
        self,
        client: Any,
        key: Item,
        mark: str,
        counter: str,
        total: Decimal,
        seen: Decimal,
        sign: int,
        touch: str | None = None,
    ) -> bool:
        """Raise the cumulative watermark `mark` to `total` and move `counter` by the difference (times
        `sign`), once: the write holds only if the mark is still `seen`, and a lost race re-reads it. Being
        cumulative, a move interrupted by a crash is completed by the next one. False if it kept losing.
        `touch` names an attribute set to now with it (a lease's last use)."""
        for _ in range(5):
            if seen >= total:
                return True
            e = Expression()
            placeholder = e.name(mark)
            e.clauses["SET"].append(f"{placeholder} = {e.value(number(total))}")
            e.clauses["ADD"].append(f"{e.name(counter)} {e.value(number(sign * (total - seen)))}")
            if touch is not None:
                e.clauses["SET"].append(f"{e.name(touch)} = {e.value(num(self.clock()))}")
            absent = f"attribute_not_exists({placeholder})"
            e.conditions.append(f"{placeholder} = {e.value(number(seen))}" if seen else absent)
            try:
                await call(
                    client, "update_item", **e.update(key, self.table), ReturnValuesOnConditionCheckFailure="ALL_OLD"
                )
                return True
            except ConditionFailed as failed:
                seen = dec(failed.item, mark)
        return False

    # --- returns ------------------------------------------------------------------------------------

    def _watch(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        STORE_DEADLINE.set(None)  # (this task's own: it outlives the request it was started in, and its deadline)
        while self._held:
            await asyncio.sleep(max(self.idle_seconds / 2, 0.05))
            with contextlib.suppress(StoreError):
                await self.return_idle()

    async def return_idle(self, force: bool = False, leaving: bool = False) -> float:
        """Return every lease this process holds that no request in this region used for `idle_seconds`
        (all of them if `force`); returns the USD given back. `leaving`: the process stops, so every lease it holds
        that no other process used since its own last use, idle or not: one that another did is that process's to
        draw on still (a sibling worker of a server, another server in the region), and its sweeper gives it back
        once idle. Given back whole, it had that process's next request wait for a grant from the home region."""
        returned = 0.0
        for key, held in list(self._held.items()):
            if period_closed(held.period, self.clock()):
                # Budget given back to a closed period could not be spent, and the home drops its counters.
                self._held.pop(key, None)
                continue
            if not force and not leaving and self.clock() - held.last_used < self.idle_seconds:
                continue
            try:
                amount = await self._give_back(held, force, leaving=leaving)
            except ConditionFailed:
                continue  # used meanwhile: try again when idle
            if amount >= 0:  # (-1: in use)
                returned += amount
                self._held.pop(key, None)
        return returned

    async def _give_back(self, held: HeldLease, force: bool, region: str | None = None, leaving: bool = False) -> float:
        """Give up the lease's available USD, then tell the home meter; the USD that came home (with what an earlier
        return gave up and the home never counted), or -1 if the lease is in use (`leaving`: if another process
        used it since this one last did). `region` is the lease's (this region's if None): another region reclaims
        a lease idle where no process sweeps it (`reclaim_idle`), through that region's endpoint, so the lease is
        still written only in its region.

        The reservations of requests that died there are released first, and the lease squared with the home
        (`_square`): what it owes charged there, what the home granted it and it never credited (a grant whose
        answers were lost) credited, so all of it comes home with the rest."""
        region = region or self.region or ""
        client = self.replica(region)
        p = held.period
        lease_key = {"pk": meter_pk(held.key_id), "sk": text(f"{LEASE_PREFIX}{region}")}

        async def read() -> Item:
            answer = await call(client, "get_item", TableName=self.table, Key=lease_key, ConsistentRead=True)
            found: Item = answer.get("Item", {})
            return found

        lease = await read()
        cutoff = held.drew_at if leaving else self.clock() - self.idle_seconds
        if not force and read_num(lease, f"t:{p}") > cutoff:
            held.last_used = read_num(lease, f"t:{p}")
            return -1.0
        if self.release_expired is not None:
            # What requests that died in the region still hold goes home with the rest: else only a refusal
            # there would free it, and a region whose traffic moved away may never refuse again.
            with contextlib.suppress(StoreError):
                if await self.release_expired(held.key_id, region) > 0:
                    lease = await read()
        granted, counted = await self._home_marks(held, region)
        if await self._square(held, region, lease_key, lease, granted):
            lease = await read()
        avail = dec(lease, f"a:{p}")
        returned_total = dec(lease, f"b:{p}")
        token_name, token = f"q:{p}", text(uuid.uuid4().hex)
        if avail > 0 or f"t:{p}" in lease:
            e = Expression()
            last_use = e.name(f"t:{p}")
            # The mark of its last use goes with it (with nothing else, if it holds nothing): a process that drew
            # on it before that use, and whose request settled into it since, is then the last one out and gives
            # back what it put back (`leaving`). Kept, it would be taken for a running process's, and stay out
            # until another region about to refuse reclaims it.
            e.clauses["REMOVE"].append(last_use)
            if avail > 0:
                available = e.name(f"a:{p}")
                e.clauses["ADD"] += [
                    f"{available} {e.value(number(-avail))}",
                    f"{e.name(f'b:{p}')} {e.value(number(avail))}",
                ]
                e.write_once(token_name, token)
                e.conditions.append(f"{available} >= {e.value(number(avail))}")
            if not force:  # an admission since the read makes it busy again
                e.conditions.append(f"attribute_not_exists({last_use}) OR {last_use} <= {e.value(num(cutoff))}")
            try:
                answer = await call(
                    client,
                    "update_item",
                    **e.update(lease_key, self.table),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                returned = answer.get("Attributes", {})
            except ConditionFailed as failed:
                if failed.item.get(token_name) != token:
                    raise  # used meanwhile
                returned = failed.item  # it landed, its answer was lost, and it was sent again: the item after it
            returned_total = dec(returned, f"b:{p}")
        await self._sync_returned(held, region, returned_total, counted)
        if avail > 0:
            self.stats.returns += 1
            self.stats.returned_usd += float(avail)
        # What came home: this return's, and a return before it whose home write never came (the lease gave up its
        # `a` and the home was not told: a shutdown's bound, a home that failed, a process reaped between the two).
        came_home = max(returned_total - counted, Decimal(0))
        if came_home > 0:
            self._unleased.pop((held.key_id, p), None)
        return float(came_home)

    async def _square(self, held: HeldLease, region: str, lease_key: Item, lease: Item, granted: Decimal) -> bool:
        """Bring the lease (as read) level with the home's cumulative grant to its region (`granted`, as read): what
        it owes charged to the home first (`_charge_debt`), then the lease credited up to that grant, which also
        credits a grant whose answers were all lost (the client had a 503, the home counts it leased). Whether the
        lease was written. Each write raises a cumulative mark from the value read, so a write sent again, a
        second process squaring the same lease, or a crash between the two writes charges nothing twice: what the
        home charged and the lease never credited is a grant like any other, credited by the next."""
        p = held.period
        granted = await self._charge_debt(held, region, lease, granted)
        credited = dec(lease, f"g:{p}")
        if granted <= credited:
            return False
        if not await self._raise_mark(self.replica(region), lease_key, f"g:{p}", f"a:{p}", granted, credited, 1):
            raise StoreError("could not credit a lease grant; it is retried when next idle")
        return True

    async def _charge_debt(self, held: HeldLease, region: str, lease: Item, granted: Decimal) -> Decimal:
        """Charge the home what the lease owes, as a grant to its region (`ADD c:P d` with `g:P#R`, on condition of
        the grant mark as read, and no limit: the money is spent); returns the home's cumulative grant after it.

        A settlement takes from the lease what its request spent beyond its reservation, the whole cost where the
        reservation expired and was released meanwhile; into a lease that went home before (its sweeper returns
        it within 45 s, a reservation lives 16 min), that drove `a` below zero and no more: a return gives back
        only what is there, and only this region's next grant of the key and period covered it. The home admitted
        the whole budget again: $1.40 spent of $1 where one region refuses (a late $0.50 settlement, then $0.90 at
        home). What the home granted and the lease never credited pays the debt first."""
        p = held.period
        debt = dec(lease, f"g:{p}") - granted - dec(lease, f"a:{p}")
        if debt <= 0:
            return granted
        home = {"pk": meter_pk(held.key_id), "sk": text(HOME_SK)}
        total = granted + debt
        if not await self._raise_mark(self.replica(held.home), home, f"g:{p}#{region}", f"c:{p}", total, granted, 1):
            raise StoreError("could not charge a lease's debt to its home; it is retried when next idle")
        self._unleased.pop((held.key_id, p), None)
        return total

    async def cover_debt(self, settlement: Settlement, charge: BudgetCharge, released: bool) -> None:
        """After a settlement into this region's lease landed (or had before: a settlement sent again, re-driven
        from the spool): one that took more from the lease than it had reserved there (`settle_clause`) may have
        left it owing, and what it owes is charged to the home at once (`_square`), as in one region a late
        settlement's cost is on the meter the next admission checks. Waiting for the lease's return left the home
        admitting the budget again meanwhile (up to 45 s; on Lambda, until the region's next invocation). No call
        for a settlement that took no more than its reservation; one read of the lease for one that did, two
        writes more where it owes. A home that cannot be reached leaves it to the lease's return or a reclaim."""
        period = charge.period
        if committed_change(charge.amount_usd, settlement.reserved_usd, released) <= 0:
            return
        if self.region is None or period_closed(period, self.clock()):
            return  # (a closed period's budget can no longer be spent, and the home drops its counters)
        key = self.item_key(charge.key_id, charge.home_region)
        answer = await call(self.local, "get_item", TableName=self.table, Key=key, ConsistentRead=True)
        lease: Item = answer.get("Item", {})
        if dec(lease, f"a:{period}") >= 0:
            return
        held = HeldLease(charge.key_id, period, charge.home_region or "", 0.0)
        granted, _ = await self._home_marks(held, self.region)
        await self._square(held, self.region, key, lease, granted)

    async def _home_marks(self, held: HeldLease, region: str) -> tuple[Decimal, Decimal]:
        """What the home meter has granted `region` and counted back from it, cumulative: read, not guessed (a
        return whose home write failed left the lease at zero, and a guess from the lease would take it as
        counted and never write it; a grant whose answer was lost is on the home meter only)."""
        answer = await call(
            self.replica(held.home),
            "get_item",
            TableName=self.table,
            Key={"pk": meter_pk(held.key_id), "sk": text(HOME_SK)},
            ConsistentRead=True,
            ProjectionExpression="#g, #b",
            ExpressionAttributeNames={"#g": f"g:{held.period}#{region}", "#b": f"b:{held.period}#{region}"},
        )
        item = answer.get("Item", {})
        return dec(item, f"g:{held.period}#{region}"), dec(item, f"b:{held.period}#{region}")

    async def _sync_returned(self, held: HeldLease, region: str, total: Decimal, counted: Decimal) -> None:
        """Lower the home meter by what `region` returned (`total`) beyond what the home has counted (`counted`,
        its own mark as read; a lost race reads it again)."""
        client = self.replica(held.home)
        key = {"pk": meter_pk(held.key_id), "sk": text(HOME_SK)}
        mark, counter = f"b:{held.period}#{region}", f"c:{held.period}"
        if not await self._raise_mark(client, key, mark, counter, total, counted, sign=-1):
            raise StoreError("could not return a lease to its home; it is retried when next idle")

    async def reclaim_idle(self, charge: BudgetCharge, items: list[Item]) -> float:
        """Before refusing `charge` for want of budget: take home every other region's lease of the key that sat
        idle for `idle_seconds`, and what the home granted a region that never credited it, with what requests
        that died there reserved; returns the USD that came home. `items` are the key's meter items as this
        replica has them (a lease looks idle here no later than it is: the conditional writes in its region
        decide).

        Also a lease that holds nothing but whose return the home never counted (its `b:P` above the home's
        `b:P#R`): a return is two writes, and one cut between them (the shutdown's `SHUTDOWN_LEASES_S`, a home
        that failed, a Lambda environment reaped) by a process that then ended is never written again, since
        nothing holds the lease any more; a $1 budget, $0.10 spent, would be refused $0.85 for good, `GET /v1/key`
        saying $0.90 left. And one that owes (`a:P < 0`, `_charge_debt`), charged at home though nothing comes.

        A lease goes home from its own region's sweeper, a task of a running process: on Lambda it runs only
        during an invocation, so a lease of a region that gets none stayed out for good (20 s after its last
        use, $0.25 of $1 still leased and a $0.90 request refused elsewhere). The region about to refuse
        returns it instead, through the lease region's endpoint, exactly as that region would: its expired
        reservations released first (else a lease all reserved by a request that died there would be passed over,
        and the $1 budget's home refuse $0.80, "$0.500000 left", with nothing spent or in flight)."""
        home = charge.home_region or self.region
        if home is None or self.region is None:
            return 0.0
        p = charge.period
        leases = {item["sk"]["S"].removeprefix(LEASE_PREFIX): item for item in items if is_lease(item)}
        meter = next((item for item in items if item["sk"]["S"] == HOME_SK), {})
        regions = {name.rpartition("#")[2] for name in meter if name.startswith(f"g:{p}#")} | set(leases)
        now = self.clock()
        returned = 0.0
        for region in sorted(regions - {self.region}):
            lease = leases.get(region, {})
            lost = dec(meter, f"g:{p}#{region}") > dec(lease, f"g:{p}")
            dead = holds_expired(lease, now)  # all it holds may be reserved by requests that died there
            # A return whose home write never came: the lease holds nothing, and the home still counts it leased.
            uncounted = dec(lease, f"b:{p}") > dec(meter, f"b:{p}#{region}")
            owes = dec(lease, f"a:{p}") < 0  # a late settlement took from it after it went home (`_charge_debt`)
            held_back = lost or dead or uncounted or owes or dec(lease, f"a:{p}") > 0
            if read_num(lease, f"t:{p}") > now - self.idle_seconds or not held_back:
                continue
            held = HeldLease(charge.key_id, p, home, 0.0)
            with contextlib.suppress(ConditionFailed, StoreError):  # used meanwhile, or unreachable: refused
                returned += max(await self._give_back(held, False, region), 0.0)
        if returned:
            self._unleased.pop((charge.key_id, p), None)
        return returned

    async def give_back_all(self, lease: Item, home: str, region: str) -> float:
        """Bring home every open period of `lease`, `region`'s lease of a key homed in `home`, whatever its last use,
        through `region`'s endpoint, as `reclaim_idle` brings home an idle one (its expired reservations released, its
        debts charged, its lost grants credited first); returns the USD that came home. For a region being retired
        (`DynamoDBStore.retire_region`): nothing draws on its leases any more, and no sweeper there will return
        them."""
        key_id = lease["pk"]["S"].removeprefix("METER#")
        periods = {name[2:] for name in lease if name[:2] in ("a:", "g:")}  # (a lease ever granted has its `g:P`)
        returned = 0.0
        for period in sorted(periods):
            if period_closed(period, self.clock()):
                continue  # (the home drops a closed period: a return would write it again)
            returned += max(await self._give_back(HeldLease(key_id, period, home, 0.0), True, region), 0.0)
            self._unleased.pop((key_id, period), None)
        return returned

    def replica(self, region: str | None) -> Any:
        """The client of `region`'s replica: this region's own (None: this region), else `client_for`'s."""
        return self.local if region is None or region == self.region else self.client_for(region)

    # --- reads ------------------------------------------------------------------------------------

    @staticmethod
    def totals(items: Iterable[Item], period: str) -> tuple[float, float]:
        """(committed, spent) summed over the home meter and every region's lease, as replicated here: the
        home's committed counts leases granted out, which the leases' own committed replaces."""
        committed = spent = 0.0
        for item in items:
            sk = item.get("sk", {}).get("S", "")
            if sk not in (HOME_SK,) and not sk.startswith(LEASE_PREFIX):
                continue
            committed += read_num(item, f"c:{period}")
            spent += read_num(item, f"s:{period}")
            if sk == HOME_SK:
                for name in item:
                    if name.startswith(f"g:{period}#"):
                        committed -= read_num(item, name)
                    elif name.startswith(f"b:{period}#"):
                        committed += read_num(item, name)
        return committed, spent

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._sweeper
