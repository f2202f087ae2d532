"""Budget, rate and reservation semantics, written once above the store backends.

`MeteredStore` decides what an admission, a settlement, a release of expired reservations and a meter read
mean; a backend only keeps counters and applies the changes it is handed, atomically, through a few
primitives (the model is Powertools' idempotency `BasePersistenceLayer`: the logic in the base class, four
storage calls in each backend). A new backend implements:

- `_write_admission(write)`: check every condition of an `AdmissionWrite` and, if all hold, apply all of its
  changes, in one atomic step; else change nothing and return the counters as they were (`Unmet`).
- `_write_settlement(settlement, updates)`: apply a settlement once (a marker or its ledger line says it was),
  its budget changes only if every reservation is where the update assumes (live or already released).
- `_expired_reservations(key_id, now)` and `_release(key_id, reservations)`: the reservations whose expiry
  passed, and their removal (committed lowered by each, once).
- `_read_counters(key_id, period)`: a key's counters for a meter read.

What the base class owns, once: which counters an admission touches (the key's own, each budgeted ancestor's,
and the owner of each rate limit: the key a `RateCharge` names, else the admission's own); the refusal rules
(a budget refuses when committed plus the amount passes the limit, `BudgetRefused(key, room left)`; a rate
refuses an amount beyond its limit outright, and a count that would pass the limit in the same window; a window
ahead of ours, another gateway's clock being ahead, is the window the request counts in (its minute has begun
there, as it will here within the clocks' difference); a window behind ours rolled over and restarts at this
request's amount); the retry loop (a rolled-over window is written again as a restart, one ahead as a count in
it, at most `ADMIT_TRIES` times; a backend topping up a counter it keeps in parts raises `Refill`, at
most `MAX_REFILLS` times); settlement arithmetic (committed moves by actual minus reserved, or by the whole
actual when the reservation was released by expiry meanwhile; spent by the actual; token corrections only
in the current window, on the counter the tokens were counted on); and the snapshots an admission and a meter
read return.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Final

from handler.ports import (
    Admission,
    BudgetCharge,
    BudgetRefused,
    MeterSnapshot,
    RateCharge,
    RateRefused,
    Settlement,
    Store,
    StoreError,
)
from handler.records import Value

# A retry rewrites rolled-over windows as restarts, and counts in windows ahead of ours; a third failure means a
# race with another clock.
ADMIT_TRIES = 3
# Each refill moves budget into a counter kept in parts or refuses, so refills end as concurrent requests
# drain it; this bounds a pathological race.
MAX_REFILLS = 100
# A settlement whose reservation expired (or came back) meanwhile is written again with the other variant.
SETTLE_TRIES = 3


# Tolerance for float sums when comparing with a limit: far below a thousandth of a cent.
EPSILON = 1e-12


# `usd_sum` adds figures of at most 12 decimals under $4,096 as whole pico-dollars: under 2**12 the spacing of floats
# is below 1e-12, so a float that is n pico-dollars is no other decimal of 12 places (the one it prints as).
PICOS = 10**12
PICO_BOUND_USD = 4096.0
# Up to four figures under $2,048 add as floats holding whole pico-dollars: each under 2**51 of them, where adding
# `ROUNDING` and taking it away again rounds to a whole number (half to even, as `round`), and their sum under 2**53,
# where every whole number is a float: the same sum as `usd_sum`'s integers, without making any.
FLOAT_BOUND_USD = 2048.0
FLOAT_FIGURES = 4
ROUNDING = 1.5 * 2.0**52


def usd_sum(*figures: float) -> float:
    """USD figures added as the decimals they print as, and the sum as the float nearest it: exact wherever the sum
    is a decimal a float holds (15 significant digits), where float arithmetic left noise in a counter for good
    (0.1 - 0.3 = -0.19999999999999998: $0.30 reserved and $0.10 spent left committed at 0.10000000000000002 beside
    a spent of 0.1); a sum no float holds is off by its rounding, as a float sum is. Figures of at most 12 decimals
    (a cost of tokens at prices per million of up to 6 decimals) add as whole pico-dollars: a few under $2,048 as
    floats (`FLOAT_BOUND_USD`: 3,400 instructions for two, where integers took 6,000), others as integers; the rest
    as `Decimal`s of their `repr`, 1.7 µs."""
    if len(figures) <= FLOAT_FIGURES:
        total = 0.0
        for figure in figures:
            if not -FLOAT_BOUND_USD < figure < FLOAT_BOUND_USD:
                break
            scaled = figure * 1e12 + ROUNDING - ROUNDING
            if scaled / 1e12 != figure:
                break
            total += scaled
        else:
            return total / 1e12
    picos = 0
    for figure in figures:
        if not -PICO_BOUND_USD < figure < PICO_BOUND_USD:
            return float(sum(map(Decimal, map(repr, figures))))
        scaled = round(figure * PICOS)
        if scaled / PICOS != figure:
            return float(sum(map(Decimal, map(repr, figures))))
        picos += scaled
    return picos / PICOS


def fits(charge: BudgetCharge, counters: Counters) -> bool:
    """The budget rule: committed (0 when missing) plus the amount stays within the limit."""
    return counters.committed.get(charge.period, 0.0) + charge.amount_usd <= charge.limit_usd + EPSILON


# How a rate charge meets its counter as stored (`rate_window`).
SAME, ROLLED, AHEAD = "same", "rolled", "ahead"


def rate_window(rate: RateCharge, counters: Counters) -> tuple[str, int, int]:
    """The stored window against the charge's: `SAME` (the count adds to it), `ROLLED` (none, or an older one:
    the count restarts at the charge's amount) or `AHEAD` (another gateway's clock is ahead: the count adds to
    its window, `MeteredStore._diagnose`); then the stored window and count."""
    window, count = counters.rates.get(rate.name, (0, 0))
    how = SAME if window == rate.window else ROLLED if window < rate.window else AHEAD
    return how, window, count


def counted_ahead(admission: Admission, ahead: dict[tuple[str, str], int]) -> Admission:
    """`admission` with its rate charges on the counters `ahead` names (owner, name) in their stored windows, later
    than its own: another gateway's clock turned the minute first. Its settlement corrects no tokens there (the
    admission's own window is not the counter's: a correction is skipped, never misplaced), so a request admitted
    in those seconds may count its worst case of tokens, not its actual ones."""
    rates = [
        rate
        if (key := (rate_owner(rate, admission.key_id), rate.name)) not in ahead
        else replace(rate, window=ahead[key])
        for rate in admission.rates
    ]
    return Admission(
        admission.reservation_id,
        admission.key_id,
        admission.budgets,
        rates,
        admission.expires_at,
        admission.home_region,
    )


def rate_owner(rate: RateCharge, key_id: str) -> str:
    """The key whose counter `rate` counts on: the one it names (an ancestor's limit, shared by every
    descendant), else the admission's own key `key_id`."""
    return rate.key_id or key_id


class Counters:
    """One key's counters as a backend holds them: per budget period the committed (spent plus live
    reservations) and spent USD, per rate name its `(window, count)`."""

    __slots__ = ("committed", "spent", "rates")

    def __init__(
        self,
        committed: dict[str, float] | None = None,
        spent: dict[str, float] | None = None,
        rates: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.committed = {} if committed is None else committed
        self.spent = {} if spent is None else spent
        self.rates = {} if rates is None else rates


class RateStep(Value):
    """A rate charge on its owner's counter. Unless `restart`: the condition is "no stored window, or the
    stored window is the charge's and the count plus the amount stays within the limit", the change "count +=
    amount, window = the charge's". With `restart` (the stored window rolled over): the condition is "no
    stored window, or one older than the charge's", the change "count = amount, window = the charge's"."""

    __slots__ = ("charge", "restart")

    def __init__(self, charge: RateCharge, restart: bool = False) -> None:
        self.charge: Final = charge
        self.restart: Final = restart


class MeterUpdate(Value):
    """What an admission changes on one key's counters. Per budget charge, the condition "committed (0 when
    missing) plus the amount stays within the limit", the change "committed += amount" and a reservation
    `(key, reservation id, period, amount, expires_at)` recorded; per rate step, see `RateStep`.
    `home_region` is where the key's counters are homed (a backend spanning regions keeps a lease of it)."""

    __slots__ = ("key_id", "home_region", "budgets", "rates")

    def __init__(
        self, key_id: str, home_region: str | None, budgets: list[BudgetCharge], rates: list[RateStep]
    ) -> None:
        self.key_id: Final = key_id
        self.home_region: Final = home_region
        self.budgets: Final = budgets
        self.rates: Final = rates


class AdmissionWrite(Value):
    """An admission's changes, key by key (its own key first). `reported` names the keys whose counters the
    admission's snapshot reports: every key the admission counts on."""

    __slots__ = ("admission", "meters", "reported")

    def __init__(self, admission: Admission, meters: list[MeterUpdate], reported: list[str]) -> None:
        self.admission: Final = admission
        self.meters: Final = meters
        self.reported: Final = reported


class Applied(Value):
    """An admission written: the counters after it, of (at least) the `reported` keys."""

    __slots__ = ("counters",)

    def __init__(self, counters: dict[str, Counters]) -> None:
        self.counters: Final = counters


class Unmet(Value):
    """An admission not written, nothing changed: the counters as they were of (at least) every key one of
    whose conditions failed."""

    __slots__ = ("counters",)

    def __init__(self, counters: dict[str, Counters]) -> None:
        self.counters: Final = counters


class SettleUpdate(Value):
    """What a settlement changes on one key's counters. Per budget charge (`amount_usd` the actual cost),
    "committed += committed_delta, spent += actual", and the reservation removed; the condition: the
    reservation is there, or, if `released`, is not (expiry released it). Per token correction, "count +=
    amount" on the counter of the correction's window (corrections are only made in the current window).
    `committed_delta` is a float (`usd_sum`'s): a backend keeping decimals works it out from the charge, the
    settlement's `reserved_usd` and `released` instead (DynamoDB's `committed_change`), where no float rounds it."""

    __slots__ = ("key_id", "home_region", "budgets", "released", "tokens")

    def __init__(
        self,
        key_id: str,
        home_region: str | None,
        budgets: list[tuple[BudgetCharge, float]],
        released: bool,
        tokens: list[RateCharge],
    ) -> None:
        self.key_id: Final = key_id
        self.home_region: Final = home_region
        self.budgets: Final = budgets
        self.released: Final = released
        self.tokens: Final = tokens


class Reservation(Value):
    """A reservation as stored: `leased` when it is held in a backend's lease of the key (not its own counter);
    `stored`, a backend's own form of it (DynamoDB: the attribute's exact value), for its release to compare."""

    __slots__ = ("key_id", "reservation_id", "period", "amount_usd", "expires_at", "leased", "stored")

    def __init__(
        self,
        key_id: str,
        reservation_id: str,
        period: str,
        amount_usd: float,
        expires_at: float,
        leased: bool = False,
        stored: str | None = None,
    ) -> None:
        self.key_id: Final = key_id
        self.reservation_id: Final = reservation_id
        self.period: Final = period
        self.amount_usd: Final = amount_usd
        self.expires_at: Final = expires_at
        self.leased: Final = leased
        self.stored: Final = stored


class Refill(Exception):
    """Raised by `_write_admission` when a counter the backend keeps in parts (DynamoDB's lease of a budget
    homed in another region) cannot cover a charge: `top_up` moves budget into it (or raises
    `BudgetRefused`), then the admission is tried again."""

    def __init__(self, top_up: Callable[[], Awaitable[None]]) -> None:
        super().__init__("refill")
        self.top_up = top_up


class MeteredStore(Store):
    """`Store`'s budget, rate and reservation semantics over a backend's primitives (the module docstring)."""

    clock: Callable[[], float] = staticmethod(time.time)

    # --- the primitives a backend implements ------------------------------------------------------

    @abstractmethod
    async def _write_admission(self, write: AdmissionWrite) -> Applied | Unmet:
        """Check every condition of every `MeterUpdate` in `write` and, only if all hold, apply every change,
        atomically (no other write to these counters between the checks and the changes; all or nothing).
        Return `Applied`, or `Unmet` with nothing changed. May raise `Refill`; `StoreError` when the storage
        fails."""

    @abstractmethod
    async def _write_settlement(self, settlement: Settlement, updates: list[SettleUpdate]) -> frozenset[str]:
        """Apply the settlement once, atomically: if a marker for `settlement.reservation_id` (or, when it has
        one, its ledger line's request id) exists, change nothing and return the empty set; if a reservation
        is not where its update assumes, change nothing and return the keys of those updates; else record the
        marker and the ledger line, apply every update and return the empty set."""

    @abstractmethod
    async def _expired_reservations(self, key_id: str, now: float) -> list[Reservation]:
        """The reservations on `key_id`'s counters, written in this store's region, that expired before `now`."""

    @abstractmethod
    async def _release(self, key_id: str, reservations: list[Reservation]) -> float:
        """Remove these reservations and lower committed by each one's amount, once (one settled or released
        meanwhile is not lowered again; a backend may drop a whole group then); returns the USD released."""

    @abstractmethod
    async def _read_counters(self, key_id: str, period: str) -> Counters:
        """`key_id`'s counters: `period`'s committed and spent (summed over every region, as far as replication
        has brought them), and its rate counters as counted in this region."""

    # --- the semantics ------------------------------------------------------------------------------

    async def admit(self, admission: Admission) -> MeterSnapshot:
        for rate in admission.rates:
            if rate.amount > rate.limit:
                raise RateRefused(
                    rate.name,
                    rate.limit,
                    (rate.window + 1) * 60 - self.clock(),
                    rate.amount,
                    key_id=rate_owner(rate, admission.key_id),
                )
        cached = self._cached(admission)
        if cached is not None:
            return cached
        restart: set[tuple[str, str]] = set()
        ahead: dict[tuple[str, str], int] = {}
        tries = refills = 0
        while tries < ADMIT_TRIES and refills < MAX_REFILLS:
            try:
                outcome = await self._write_admission(self._admission_write(admission, restart))
            except Refill as refill:
                refills += 1
                await refill.top_up()
                continue
            if isinstance(outcome, Applied):
                return self._admitted(admission, outcome.counters, ahead)
            for key_id, counters in outcome.counters.items():
                self._diagnose(admission, key_id, counters, restart, ahead)
            if ahead:
                admission = counted_ahead(admission, ahead)
            tries += 1
        raise StoreError("meter update kept failing its condition")

    def admit_held(self, admission: Admission) -> MeterSnapshot | None:
        if any(rate.amount > rate.limit for rate in admission.rates):
            return None  # (`admit` refuses it)
        return self._cached(admission)

    def _cached(self, admission: Admission) -> MeterSnapshot | None:
        """A backend's cache in front of `_write_admission` (the embedded store's in-memory slices of its
        counters, which every check of `_write_admission` keeps within the limits) may admit from what it holds,
        with no write: the snapshot; else None."""
        return None

    def _admission_write(self, admission: Admission, restart: set[tuple[str, str]]) -> AdmissionWrite:
        """Which counters `admission` touches, key by key; `restart` names the (key, rate) counters whose
        stored window rolled over."""
        owners = [rate_owner(r, admission.key_id) for r in admission.rates]
        key_ids = dict.fromkeys([admission.key_id, *(b.key_id for b in admission.budgets), *owners])
        meters = []
        for key_id in key_ids:
            budgets = [b for b in admission.budgets if b.key_id == key_id]
            steps = [
                RateStep(rate, (key_id, rate.name) in restart)
                for rate, owner in zip(admission.rates, owners, strict=True)
                if owner == key_id
            ]
            if budgets or steps:
                meters.append(MeterUpdate(key_id, self._home_of(admission, key_id), budgets, steps))
        # Every key's counters are reported: the answer's headers give what binds along the chain.
        return AdmissionWrite(admission, meters, [meter.key_id for meter in meters])

    @staticmethod
    def _home_of(charges: Admission | Settlement, key_id: str) -> str | None:
        """The home region of `key_id`'s counters, as the charges name it (else the admission's key's)."""
        for charge in charges.budgets:
            if charge.key_id == key_id:
                return charge.home_region
        for rate in charges.rates:
            if rate.key_id == key_id:
                return rate.home_region
        return charges.home_region

    def _diagnose(
        self,
        admission: Admission,
        key_id: str,
        old: Counters,
        restart: set[tuple[str, str]],
        ahead: dict[tuple[str, str], int],
    ) -> None:
        """Why `key_id`'s conditions failed, from its counters as they were: raise the refusal, or mark the
        rate counters whose window rolled over so the next try restarts them, and those stored in a later window
        than the admission's (`ahead`) so that it counts in that one."""
        for charge in admission.budgets:
            if charge.key_id == key_id:
                self._check_budget(charge, old)
        for rate in admission.rates:
            if rate_owner(rate, admission.key_id) != key_id:
                continue
            how, window, count = rate_window(rate, old)
            counter = (key_id, rate.name)
            if how == ROLLED:
                restart.add(counter)
                continue
            restart.discard(counter)  # another request started this window first: add to it
            if how == AHEAD:
                # Another gateway's clock has turned the minute this one's has not yet: the request counts in that
                # window, whose minute begins here within the clocks' difference. (Counted in this clock's minute, it
                # would be refused until this clock reaches it, with `retry-after: 120`: a false 429 at every
                # minute's turn, for the skew's length.)
                ahead[counter] = window
            if count + rate.amount > rate.limit:
                raise RateRefused(rate.name, rate.limit, (window + 1) * 60 - self.clock(), key_id=key_id)

    def _check_budget(self, charge: BudgetCharge, old: Counters) -> None:
        """Raise `BudgetRefused` if `charge` does not fit the counter as it was."""
        if not fits(charge, old):
            raise BudgetRefused(charge.key_id, charge.limit_usd - old.committed.get(charge.period, 0.0))

    @staticmethod
    def _check(meter: MeterUpdate, old: Counters) -> frozenset[str] | None:
        """For a backend that reads a key's counters and writes them in one atomic step (a transaction, a
        lock): None if one of `meter`'s conditions fails on `old`; else the names of its rate counters whose
        stored window rolled over, which restart at the charge's amount (no second try needed for them)."""
        if not all(fits(charge, old) for charge in meter.budgets):
            return None
        restart = set()
        for step in meter.rates:
            rate = step.charge
            how, _, count = rate_window(rate, old)
            if how == AHEAD or (how == SAME and count + rate.amount > rate.limit):
                return None
            if how == ROLLED:
                restart.add(rate.name)
        return frozenset(restart)

    @staticmethod
    def _admitted(
        admission: Admission, counters: dict[str, Counters], ahead: dict[tuple[str, str], int] | None = None
    ) -> MeterSnapshot:
        """The counters as the admission left them: every budget's committed USD (under its key's id, and the
        nearest's also under its period), and every rate count (the key's own under its name, an ancestor's,
        which its other descendants share, under `RateCharge.counter`), with the window of each it counted in a
        window ahead of its own (`ahead`, `counted_ahead`): its count resets as that one ends. (Told the counter
        resets as the admission's minute ends, a client would read `remaining 0, reset 43s`, then get a 429 with
        `retry-after: 103`.)"""
        snapshot = MeterSnapshot()
        for i, charge in enumerate(admission.budgets):
            budget = counters.get(charge.key_id)
            if budget is None:
                continue
            committed = budget.committed.get(charge.period, 0.0)
            snapshot.committed_usd[charge.key_id] = committed
            if i == 0:
                snapshot.committed_usd[charge.period] = committed
                if charge.period in budget.spent:
                    snapshot.spent_usd[charge.period] = budget.spent[charge.period]
        for rate in admission.rates:
            owner = rate_owner(rate, admission.key_id)
            stored = counters.get(owner, Counters()).rates.get(rate.name)
            if stored is not None and stored[0] == rate.window:
                snapshot.rates[rate.counter] = stored[1]
                if ahead and (owner, rate.name) in ahead:
                    snapshot.rate_windows[rate.counter] = rate.window
        return snapshot

    async def settle(self, settlement: Settlement) -> None:
        item = settlement.item
        # Tokens are corrected on the counters the admission counted them on (each correction names its key; an
        # older spooled one names only an ancestor's, the line item the own key's), line item or not (a request
        # that reached no provider gives back all it reserved), and only in the current window: a rolled-over
        # window has nothing left to correct.
        owner = item.key_id if item is not None else ""
        window = int(self.clock() // 60)
        tokens = [r for r in settlement.rates if r.window == window and r.amount and rate_owner(r, owner)]
        owners = [rate_owner(r, owner) for r in tokens]
        key_ids = list(dict.fromkeys([*(b.key_id for b in settlement.budgets), *owners]))
        released: set[str] = set()
        for _ in range(SETTLE_TRIES):
            updates = []
            for key_id in key_ids:
                gone = key_id in released
                budgets = [
                    (b, b.amount_usd if gone else usd_sum(b.amount_usd, -settlement.reserved_usd))
                    for b in settlement.budgets
                    if b.key_id == key_id
                ]
                corrections = [r for r, o in zip(tokens, owners, strict=True) if o == key_id]
                updates.append(SettleUpdate(key_id, self._home_of(settlement, key_id), budgets, gone, corrections))
            mismatched = await self._write_settlement(settlement, updates)
            if not mismatched:
                return
            released ^= mismatched  # the reservation expired meanwhile (or came back): the other variant
        raise StoreError("settlement kept failing its condition")

    async def release_expired(self, key_id: str, now: float) -> float:
        expired = await self._expired_reservations(key_id, now)
        return await self._release(key_id, expired) if expired else 0.0

    async def meter(self, key_id: str, period: str) -> MeterSnapshot:
        counters = await self._read_counters(key_id, period)
        snapshot = MeterSnapshot()
        if period in counters.committed:
            snapshot.committed_usd[period] = counters.committed[period]
            snapshot.spent_usd[period] = counters.spent.get(period, 0.0)
        window = int(self.clock() // 60)
        snapshot.rates = {name: count for name, (at, count) in counters.rates.items() if at == window}
        return snapshot
