"""Budgets and rate limits admitted in memory, from slices of the shared counters.

The embedded store's counters live in one file that several processes may share (the server's workers,
the CLI, tests). An admission as a write transaction on that file would be a few statements and a commit
on every request, about a fifth of a request's CPU. Instead, a process takes a *slice* of a counter (a
slice of a budget, or of a rate limit's count for the current minute), counted in the file as committed
the moment it is granted, and admits requests against it in memory. The file's own checks still hold
every slice within the limit, so no combination of processes can commit more than a limit; a slice
only moves the write from every request to every few seconds of traffic.

A slice is sized by the traffic that drew on it: `SPAN_S` seconds of what was used since the last grant,
never more than `FRACTION` of what the counter has left, never less than the request needs (the first
grant is exactly one request's worth). Near a limit, grants shrink to single requests, so one process
alone admits exactly what fits.

Several processes on one key (a server's workers) each slice it by their own traffic. That can fragment the
counter near its limit: one process holds a slice it does not use while another is refused. So a refusal
while another process says it holds unused slices of the key (`holders` in the file) *recalls* them: the
refused process writes `recall_at` on its own holder row and waits once (`RECALL_WAIT_S`) before its refusal
stands. A holder sees the recall at its next grant or sweep (every `SWEEP_S`), returns its unused slices,
and for `CONTEND_S` grants exactly one request's worth: a process holding no unused slice of the counters then
admits each request as it is, with its own reservation row and none of the slices' bookkeeping
(adapters/store/sqlite_slices.py). A holder keeps its presence fresh while it holds slices, and says so
when it no longer does.

Slices nobody used for `IDLE_S` go back, so readers in other processes see near-exact counters; readers
in the holding process see exact ones (the store subtracts what it holds). A budget slice is a row in
`reservations` that outlives every request admitted from it: it expires (and is released like any
reservation) only after its last request's reservation would have, so a crashed process's slices come
back no later than its reservations would; sooner, once a refusal finds its holder's lock free (the
process has ended: `Liveness`, adapters/store/sqlite_slices.py). Rate slices live as long as their
minute. A slice serves only limits at least as high as the one it was granted under (a lowered limit is
checked in the file), and a request that spends beyond what its slice held has the excess committed with
its settlement. Until that is written (with the rest of its batch, or at a retry), the process counts the
excess on top of what the file says (`Slices.unwritten`, by counter, not by slice: a retry may outlast the
slice, which the sweeper drops once idle and a grant replaces once expired): a grant in the meantime, in the
same batch say, finds only the room that is left.

This module keeps the process's side: the slices, the requests admitted from them, and the arithmetic.
The store (adapters/store/sqlite_slices.py) writes the grants and returns.
"""

from __future__ import annotations

import math
import uuid

from adapters.store.metered import EPSILON, rate_owner, usd_sum
from handler.ports import Admission, MeterSnapshot, Settlement

SPAN_S = 2.0
FRACTION = 0.25
IDLE_S = 2.0
SWEEP_S = 0.5
# Another process counts as active on a key for this long after its last word on it; a recall holds this long.
CONTEND_S = 10.0
# A budget slice outlives the requests admitted from it by this much, so it is renewed once a minute.
RENEW_S = 60.0
MICROS = 1_000_000  # a dollar's (`slice_size`)


def slice_size(need: float, room: float, used: float, since_s: float, exact: bool) -> float:
    """What to take from a shared counter with `room` left for a request that needs `need` more than the
    slice holds, after `used` was drawn in the `since_s` seconds since the last grant (see the module
    docstring). The caller has checked that `need <= room`. More than the need is whole micro-dollars, as a
    DynamoDB lease's grant is: what the slice holds, and the counter it goes back to, stay short decimals, which
    `usd_sum` adds exactly."""
    if exact:
        return need
    wanted = used / max(since_s, 0.001) * SPAN_S
    return max(need, math.floor(min(wanted, room * FRACTION) * MICROS) / MICROS)


class BudgetSlice:
    """A slice of one key's budget for one period: `row` in `reservations`, `avail` of it unused here."""

    __slots__ = (
        "row",
        "expires_at",
        "limit",
        "avail",
        "committed_seen",
        "drawn",
        "granted_at",
        "used_at",
        "holds",
    )

    def __init__(self, row: str) -> None:
        self.row = row
        self.expires_at = 0.0
        self.limit = 0.0  # the limit it was granted under: a lower one must go back to the file
        self.avail = 0.0
        # The counter after this process's last write on it, this slice and `Slices.unwritten` included.
        self.committed_seen = 0.0
        self.drawn = 0.0  # drawn since the last grant
        self.granted_at = 0.0
        self.used_at = 0.0
        self.holds = 0  # requests admitted from it and not yet settled

    def usable(self, amount: float, limit: float, expires_at: float) -> bool:
        return (
            self.avail + EPSILON >= amount
            and expires_at <= self.expires_at
            and limit >= self.limit
            and self.committed_seen - self.avail + amount <= limit + EPSILON
        )


class RateSlice:
    """A slice of one rate counter's count for the minute `window`."""

    __slots__ = ("window", "limit", "avail", "count_seen", "drawn", "granted_at", "used_at")

    def __init__(self, window: int) -> None:
        self.window = window
        self.limit = 0
        self.avail = 0
        self.count_seen = 0
        self.drawn = 0
        self.granted_at = 0.0
        self.used_at = 0.0

    def usable(self, window: int, amount: int, limit: int) -> bool:
        return (
            self.window == window
            and self.avail >= amount
            and limit >= self.limit
            and self.count_seen - self.avail + amount <= limit
        )


class Held:
    """A request admitted from slices, until it settles (or its reservation expires)."""

    __slots__ = ("key_id", "expires_at", "amount_usd", "counters", "budgets", "rates", "adjusted", "deficits")

    def __init__(
        self,
        key_id: str,
        expires_at: float,
        amount_usd: float,
        counters: list[tuple[str, str]],  # per budget: (key id, period)
        budgets: list[BudgetSlice],
        rates: dict[tuple[str, str], RateSlice],  # by (owner key, rate name)
    ) -> None:
        self.key_id = key_id
        self.expires_at = expires_at
        self.amount_usd = amount_usd
        self.counters = counters
        self.budgets = budgets
        self.rates = rates
        self.adjusted = False  # the settlement has been applied to the slices (the store write may follow)
        self.deficits: list[float] = []  # per budget: spent beyond what the slice held


class Slices:
    """One process's slices on one store (see the module docstring)."""

    __slots__ = ("holder", "budgets", "unwritten", "rates", "held", "recalled", "epoch")

    def __init__(self) -> None:
        self.holder = uuid.uuid4().hex[:12]
        self.budgets: dict[tuple[str, str], BudgetSlice] = {}
        # By (key id, period): what requests settled here spent beyond their slices that the file does not have
        # yet, and how many such settlements wait (`forget` removes the entry with the last). Counted in the
        # slice's `committed_seen` at once, and by a grant on top of what it reads from the file (`unwritten_usd`).
        # Kept by counter, not on the slice: the slice may be dropped or replaced before the file has it.
        self.unwritten: dict[tuple[str, str], tuple[float, int]] = {}
        self.rates: dict[tuple[str, str], RateSlice] = {}
        self.held: dict[str, Held] = {}
        self.recalled: dict[str, float] = {}  # key id -> another's last refusal that recalled slices
        self.epoch = 0

    def new_budget_slice(self) -> BudgetSlice:
        self.epoch += 1
        return BudgetSlice(f"slice:{self.holder}:{self.epoch}")

    def take(self, admission: Admission, now: float) -> MeterSnapshot | None:
        """Admit `admission` from the slices held, or None if one of them cannot cover it."""
        budgets = []
        for charge in admission.budgets:
            slice_ = self.budgets.get((charge.key_id, charge.period))
            if slice_ is None or not slice_.usable(charge.amount_usd, charge.limit_usd, admission.expires_at):
                return None
            budgets.append(slice_)
        rates = {}
        for rate in admission.rates:
            counter = (rate_owner(rate, admission.key_id), rate.name)
            rate_slice = self.rates.get(counter)
            if rate_slice is None or not rate_slice.usable(rate.window, rate.amount, rate.limit):
                return None
            rates[counter] = rate_slice
        snapshot = MeterSnapshot()
        for charge, slice_ in zip(admission.budgets, budgets, strict=True):
            slice_.avail = usd_sum(slice_.avail, -charge.amount_usd)
            slice_.drawn += charge.amount_usd
            slice_.used_at = now
            slice_.holds += 1
            committed = slice_.committed_seen - slice_.avail
            snapshot.committed_usd.setdefault(charge.period, committed)  # the nearest budget's, by period
            snapshot.committed_usd[charge.key_id] = committed
        for rate in admission.rates:
            rate_slice = rates[(rate_owner(rate, admission.key_id), rate.name)]
            rate_slice.avail -= rate.amount
            rate_slice.drawn += rate.amount
            rate_slice.used_at = now
            snapshot.rates[rate.counter] = rate_slice.count_seen - rate_slice.avail  # (an ancestor's: `name@id`)
        amount = admission.budgets[0].amount_usd if admission.budgets else 0.0
        counters = [(charge.key_id, charge.period) for charge in admission.budgets]
        self.held[admission.reservation_id] = Held(
            admission.key_id, admission.expires_at, amount, counters, budgets, rates
        )
        return snapshot

    def adjust(self, settlement: Settlement) -> tuple[list[tuple[str, float]] | None, list[int]]:
        """Apply a settlement to the slices its request was admitted from, once. Returns, per budget charge,
        the slice row it was reserved in and what it spent beyond what the slice held (None: not admitted
        here, so its reservation is a row of its own); and the indexes of the rate adjustments the store
        must still write (those not absorbed here)."""
        held = self.held.get(settlement.reservation_id)
        if held is None:
            return None, list(range(len(settlement.rates)))
        if not held.adjusted:
            held.adjusted = True
            held.deficits = []
            for charge, slice_, counter in zip(settlement.budgets, held.budgets, held.counters, strict=True):
                slice_.avail = usd_sum(slice_.avail, held.amount_usd, -charge.amount_usd)
                slice_.holds -= 1
                # Spent beyond what the slice held: committed anew, as a late settlement's spend is.
                deficit = max(0.0, -slice_.avail)
                if deficit:
                    slice_.avail += deficit
                    slice_.committed_seen += deficit
                    total, waiting = self.unwritten.get(counter, (0.0, 0))
                    self.unwritten[counter] = (total + deficit, waiting + 1)
                held.deficits.append(deficit)
            for rate in settlement.rates:
                counter = (rate_owner(rate, held.key_id), rate.name)
                rate_slice = held.rates.get(counter)
                current = self.rates.get(counter)
                # (a correction that names no key, spooled by an older gateway, has only the line item to name it)
                absorbed = rate.key_id is not None or settlement.item is not None
                if absorbed and rate_slice is current and rate_slice is not None and rate_slice.window == rate.window:
                    rate_slice.avail -= rate.amount  # more tokens than estimated take from the slice, fewer add
                else:
                    held.rates.pop(counter, None)
        rows = [(slice_.row, deficit) for slice_, deficit in zip(held.budgets, held.deficits, strict=True)]
        unabsorbed = [
            i for i, r in enumerate(settlement.rates) if (rate_owner(r, held.key_id), r.name) not in held.rates
        ]
        return rows, unabsorbed

    def release_expired(self, key_id: str | None, now: float) -> float:
        """Forget requests whose reservations expired unsettled (on `key_id`, or all), giving their
        reservations back to the slices they came from; returns the USD given back."""
        released = 0.0
        for reservation_id, held in list(self.held.items()):
            if held.expires_at >= now or (key_id is not None and all(key_id != k for k, _ in held.counters)):
                continue
            if held.adjusted:
                # Settled here, its write still pending or being retried: the retry must find the slice rows
                # it was reserved in. Past RENEW_S those rows may be released, and the rows-of-its-own path
                # then counts its spend right.
                if now > held.expires_at + RENEW_S:
                    self.forget(reservation_id)
                continue
            del self.held[reservation_id]
            for (budget_key, _), slice_ in zip(held.counters, held.budgets, strict=True):
                slice_.holds -= 1
                if slice_.expires_at > now:  # an expired slice's row is released with what it held
                    slice_.avail = usd_sum(slice_.avail, held.amount_usd)
                    if budget_key == key_id or key_id is None:
                        released += held.amount_usd
        return released

    def forget(self, reservation_id: str) -> None:
        """Forget a request settled here once the file has its settlement (or it is given up on): what it spent
        beyond its slices is no longer theirs to count on top of the file."""
        held = self.held.pop(reservation_id, None)
        if held is not None and any(held.deficits):
            for counter, deficit in zip(held.counters, held.deficits, strict=True):
                if not deficit:
                    continue
                total, waiting = self.unwritten[counter]
                if waiting == 1:  # the last: nothing left, not a float's residue of the sums
                    del self.unwritten[counter]
                else:
                    self.unwritten[counter] = (total - deficit, waiting - 1)

    def unwritten_usd(self, key_id: str, period: str) -> float:
        """What settlements here spent beyond their slices of this budget that the file does not have yet."""
        found = self.unwritten.get((key_id, period))
        return 0.0 if found is None else found[0]

    def recall(self, key_id: str, at: float | None) -> None:
        """Note that another process recalled the slices of `key_id` at `at` (None, 0: it did not)."""
        if at and at > self.recalled.get(key_id, 0.0):
            self.recalled[key_id] = at

    def exact(self, key_id: str, now: float) -> bool:
        """Whether grants on `key_id` are one request's worth: another process was refused on it while this one
        may have held unused slices of it, less than `CONTEND_S` ago."""
        recalled = self.recalled.get(key_id)
        return recalled is not None and now - recalled < CONTEND_S
