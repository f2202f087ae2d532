"""Budgets and rate limits: reserve the worst case before the call, settle the actual cost after.

One admission is one store call (the key's and its ancestors' budget counters and the rate counters,
atomically): a round trip on DynamoDB, usually none on the embedded store, which admits from leases of
the counters held in memory (adapters/store/slices.py); one settlement is one more. A key with no
budget and no limits costs no store call before the upstream call at all.

Across regions the store spends a key homed elsewhere from this region's lease of its budget; the charges
carry each key's `home_region` so the store can tell (`adapters/store/region_leases.py`).

A settlement the store keeps refusing goes to the settlement spool (handler/pipeline/spool.py) and lands later; so
does one still unwritten when a Lambda invocation's time is nearly up (`SETTLE_BY`).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from collections.abc import Callable, Collection, Coroutine
from contextvars import ContextVar
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from handler.errors import BudgetExceededError, RateLimitError, ServiceUnavailableError
from handler.pipeline.keys import KeyService, model_allowed
from handler.pipeline.pricing import dollars
from handler.ports import (
    STORE_DEADLINE,
    Admission,
    BudgetCharge,
    BudgetRefused,
    KeyRecord,
    LedgerItem,
    MeterSnapshot,
    RateCharge,
    RateRefused,
    Settlement,
    Store,
    StoreDeadlineError,
    StoreError,
)
from handler.telemetry.observability import span

if TYPE_CHECKING:
    from handler.pipeline.spool import SettlementSpool

# A settlement the store refuses is tried this many times (after 0.05, 0.15, 0.45, 1.35 s), then spooled.
SETTLE_ATTEMPTS = 5
SETTLE_FIRST_DELAY_S = 0.05
# On Lambda, the event loop's time by which a settlement made in this context must be durable: the invocation's
# deadline less a margin (set per invocation by handler/api/app.py; tasks and callbacks started from the invocation
# inherit it). Lambda kills an environment at its deadline, with whatever it was writing: a settlement still in
# the store's retries then has neither a ledger line nor a spool line. None: no deadline (a server).
SETTLE_BY: ContextVar[float | None] = ContextVar("settle_by", default=None)
OUT_OF_TIME = "the invocation's time ran out before the store took it"
CANCELLED = "cancelled while settling"  # (the reason a cancel gave, when it gave one, follows it)
SPOOL_ENV = "GATEWAY_SETTLEMENT_SPOOL"  # the settlement spool's file, where not the store's `spool_path`


class LazySpool:
    """A store's settlement spool (handler/pipeline/spool.py), made, and its module imported, once something may
    be pending: a settlement this process spools, or a file that holds anything when the gateway starts (or when an
    admin's `/health` counts). A cold start nearly always finds the file empty or absent, and a stat says so: reading
    it took the module's import, a million instructions of every Lambda cold start. Unmade, the spool has nothing of
    this process's pending, so a settlement's `watch` has nothing to re-drive, as the spool's own would not. One per
    store (`of`), so the `Gateway` and every `Meter` of a process share it."""

    __slots__ = ("path", "spool")
    _by_store: ClassVar[weakref.WeakKeyDictionary[Store, LazySpool]] = weakref.WeakKeyDictionary()

    def __init__(self, path: str | None, spool: SettlementSpool | None = None) -> None:
        self.path = path
        self.spool = spool

    @classmethod
    def of(cls, store: Store) -> LazySpool:
        """The spool of `store` (at `GATEWAY_SETTLEMENT_SPOOL` or the store's `spool_path`; in memory without)."""
        spool = cls._by_store.get(store)
        if spool is None:
            spool = cls(os.environ.get(SPOOL_ENV) or getattr(store, "spool_path", None))
            cls._by_store[store] = spool
        return spool

    def made(self) -> SettlementSpool:
        """The spool itself, made (its file read) on first use."""
        if self.spool is None:
            from handler.pipeline.spool import SettlementSpool

            self.spool = SettlementSpool(self.path)
        return self.spool

    def on_disk(self) -> bool:
        """Whether the spool's file holds anything, by its size (a spool in memory holds nothing before it is made;
        the file is emptied once nothing in it is pending)."""
        if self.path is None:
            return False
        try:
            return os.stat(self.path).st_size > 0
        except FileNotFoundError:
            return False
        except OSError:
            return True  # (cannot tell: the spool reads it, and logs why it cannot)

    def watch(self, store: Store, *, at_once: bool = False) -> None:
        """`SettlementSpool.watch`; at start-up (`at_once`) the spool is made if its file holds anything."""
        if self.spool is None and not (at_once and self.on_disk()):
            return
        self.made().watch(store, at_once=at_once)

    def count(self) -> int:
        """`SettlementSpool.count`: the settlements pending in the file now (none, unread, while it is empty)."""
        if self.spool is None and not self.on_disk():
            return 0
        return self.made().count()

    async def close(self) -> None:
        if self.spool is not None:
            await self.spool.close()


def period_of(kind: str, now: float) -> str:
    """The budget period containing `now` (UTC): `total`, `day:YYYY-MM-DD` or `month:YYYY-MM`."""
    t = time.gmtime(now)
    if kind == "day":
        return f"day:{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    if kind == "month":
        return f"month:{t.tm_year:04d}-{t.tm_mon:02d}"
    return "total"


def model_limits(key: KeyRecord, model: str) -> list[tuple[str, dict[str, int]]]:
    """The per-model limits of `key` that apply to `model`, as (pattern, limits): every entry whose pattern matches
    it binds, whatever its place (as minting a child assumes), each on a counter of its own that every model the
    pattern matches shares (`gpt-*` at 10 rpm: ten requests a minute to all gpt models together)."""
    return [(pattern, limits) for pattern, limits in key.model_limits.items() if model_allowed([pattern], model)]


# The `x-ratelimit-reset-*` headers `Meter._limit_headers` writes, one per kind of limit.
RESETS = ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")


class RateHeaders(dict[str, str]):
    """OpenAI's `x-ratelimit-*` headers as an admission's counts had them (`Meter._rate_headers`), with when the minute
    they count in ends (`ends_at`, on the meter's `clock`): an answer is built later, whole ones minutes later, and
    tells them as they hold then (`tell`)."""

    __slots__ = ("ends_at", "clock")

    def __init__(self, headers: dict[str, str], ends_at: float, clock: Callable[[], float]) -> None:
        super().__init__(headers)
        self.ends_at = ends_at
        self.clock = clock

    def tell(self, headers: dict[str, str]) -> None:
        """Add the headers as they hold now to an answer's `headers`: `reset` counted from now, as the minute's end
        draws nearer; none once that minute has ended. The request counted in it alone (its settlement corrects that
        minute's counts, never the next's), and what the next one holds is not known without reading the store: an
        answer that outlives its minute would say `remaining 0, reset 15s` where the next request is admitted at
        once. (Written into the answer's headers, the resets over the admission's: no dict of their own per answer.)"""
        left = self.ends_at - self.clock()
        if left <= 0:
            return
        headers.update(self)
        reset = f"{max(1, math.ceil(left))}s"
        for name in RESETS:
            if name in self:
                headers[name] = reset


class Reservation:
    """What an admission holds until settlement."""

    __slots__ = (
        "admission", "amount_usd", "tokens", "advice", "snapshot", "budget_limit", "budget_key", "store_ms",
        "headers", "prompt_tokens", "output_tokens", "admitted_at",
    )  # fmt: skip

    def __init__(self, admission: Admission | None, amount_usd: float, tokens: int, advice: int = 0) -> None:
        self.admission = admission
        self.amount_usd = amount_usd
        self.tokens = tokens  # what it counted on each tokens a minute (what the request shows: `_admit_tokens`)
        # What it counted more on the key chain's own `tpm` for the advisor tool's calls (`Meter.reservation`).
        self.advice = advice
        self.snapshot = MeterSnapshot()
        self.budget_limit: float | None = None
        self.budget_key: str | None = None
        self.store_ms = 0.0
        self.headers: dict[str, str] = {}
        self.prompt_tokens = 0  # the worst case's prompt reserved for (the plan's largest: `PromptEstimate.tokens`)
        self.output_tokens = 0
        # When it was admitted (the clock its budget period was read from): its ledger line's time, so that a
        # request that ends in the next period is reported in the period its budget was charged to.
        self.admitted_at = 0.0


class Counted:
    """What one admission counted on the rate limits of a key's chain (`rates`, its `admission`'s), with the counts
    the store reported for them (`snapshot`): the `x-ratelimit-*` of an answer a model other than the one asked for
    served are read from every admission of the request that counted on a limit binding that model
    (`Meter.served_headers`); what a model's own limits counted, when nothing was sent to it, is given back
    (`Meter.given_back`)."""

    __slots__ = ("admission", "rates", "snapshot")

    def __init__(self, admission: Admission, snapshot: MeterSnapshot) -> None:
        self.admission = admission
        self.rates = admission.rates
        self.snapshot = snapshot


def binds(rate: RateCharge, model: str) -> bool:
    """Whether `rate` limits requests to `model`: a key's own `rpm`/`tpm` binds every model, a `model_limits`
    entry's (`rpm:<pattern>`) the models its pattern matches."""
    pattern = rate.name[4:]
    return not pattern or model_allowed([pattern], model)


def unbound(rates: list[RateCharge], sent: Collection[str]) -> list[RateCharge]:
    """The charges of `rates` that bind none of the models in `sent` (`binds`)."""
    return [rate for rate in rates if not any(binds(rate, model) for model in sent)]


def written(landing: asyncio.Future[MeterSnapshot]) -> bool:
    """Whether an admission's outcome (`StoreDeadlineError.landing`) is its write: not refused, failed nor cut."""
    return not landing.cancelled() and landing.exception() is None


def remaining_usd(reservation: Reservation, actual_usd: float) -> float | None:
    """The budget left once this request settles at `actual_usd`: the least any budget of the key's chain
    leaves (a child's own $10 under a parent with $1 left has $1 to spend)."""
    if reservation.budget_limit is None or reservation.admission is None:
        return None
    committed_usd = reservation.snapshot.committed_usd
    least: float | None = None
    for i, charge in enumerate(reservation.admission.budgets):
        committed = committed_usd.get(charge.key_id)
        if committed is None and i == 0:
            committed = committed_usd.get(charge.period)
        if committed is None:
            continue  # (a store that does not report this counter)
        left = charge.limit_usd - (committed - reservation.amount_usd + actual_usd)
        least = left if least is None else min(least, left)
    return None if least is None else max(0.0, dollars(least))


class Meter:
    """Admission and settlement against a `Store`."""

    def __init__(
        self,
        store: Store,
        keys: KeyService,
        reservation_ttl: float,
        clock: Callable[[], float] | None = None,
        spool: SettlementSpool | None = None,
        spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
        awaiting: set[asyncio.Future[Any]] | None = None,
    ) -> None:
        """`spawn` runs what must finish after the request that started it (the gateway's `spawn`, whose work a
        drain waits for); else a task of the meter's own. `awaiting`: where the admissions that run on past their
        request's deadline wait for their outcome (the gateway's, which a shutdown waits for)."""
        self.store = store
        self.keys = keys
        self.reservation_ttl = reservation_ttl
        self.clock = clock if clock is not None else time.time  # (looked up now: a test's clock is found too)
        self.spooled = LazySpool(None, spool) if spool is not None else LazySpool.of(store)
        self.spawn = spawn if spawn is not None else self._spawn
        self.awaiting: set[asyncio.Future[Any]] = awaiting if awaiting is not None else set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def spool(self) -> SettlementSpool:
        """Where settlements the store refused wait until they land (made on first use: `LazySpool`)."""
        return self.spooled.made()

    async def admit(
        self, lineage: list[KeyRecord], model: str, worst_usd: float | None, tokens: int, request_id: str
    ) -> Reservation:
        """Reserve `worst_usd` on the budget of the key and of every ancestor that has one, and count the
        request against the rate limits of each of them (`lineage`: the key and its ancestors, nearest first):
        `reservation`, then `held` or `write`."""
        reservation = self.reservation(lineage, model, worst_usd, tokens, request_id)
        if reservation.admission is not None and not self.held(reservation):
            await self.write(reservation, lineage[0])
        return reservation

    def reservation(
        self,
        lineage: list[KeyRecord],
        model: str,
        worst_usd: float | None,
        tokens: int,
        request_id: str,
        advice: int = 0,
    ) -> Reservation:
        """What `admit` reserves and counts, not yet admitted: its `admission` is None where there is nothing to
        write (no budget and no limits along the key's chain). `advice`: the most tokens the advisor tool's calls
        may read and write (Anthropic runs another model inside the answer), counted on the key chain's own `tpm`
        beside `tokens`, on top of them: a key's tokens a minute are every model's it runs. (Its model's own limits
        count it apart, as a fallback's do: `admit_fallback`.) Settled to the tokens it ran (`settlement`)."""
        key = lineage[0]
        now = self.clock()
        budgeted = [r for r in lineage if r.budget_usd is not None]
        if budgeted and worst_usd is None:
            raise BudgetExceededError(
                f"model '{model}' has no known price, so a key with a budget cannot use it",
                code="budget_exceeded",
            )
        amount = worst_usd or 0.0
        budgets = [
            BudgetCharge(r.id, period_of(r.budget_period, now), float(r.budget_usd or 0.0), amount, r.home_region)
            for r in budgeted
        ]
        window = int(now // 60)
        rates = [rate for holder in lineage for rate in self._rates(holder, key, model, window, tokens, advice=advice)]
        reservation = Reservation(None, amount, tokens, advice)
        reservation.admitted_at = now
        if budgeted:
            reservation.budget_key, reservation.budget_limit = budgeted[0].id, float(budgeted[0].budget_usd or 0.0)
        if budgets or rates:
            reservation.admission = Admission(
                request_id, key.id, budgets, rates, now + self.reservation_ttl, key.home_region
            )
        return reservation

    def held(self, reservation: Reservation) -> bool:
        """Whether the store admitted `reservation` at once from what this process holds (`Store.admit_held`): no
        write, so nothing a cancelled request could lose."""
        assert reservation.admission is not None
        snapshot = self.store.admit_held(reservation.admission)
        if snapshot is None:
            return False
        self._admitted(reservation, snapshot)
        return True

    async def write(self, reservation: Reservation, key: KeyRecord, needs: tuple[str, str] | None = None) -> None:
        """The store's admission of `reservation` (`key`'s request), or its refusal as the client's error (`needs`:
        what a request too large for a tokens limit is told its tokens are and what lowers them, where it is no
        prompt and output: an embeddings request's inputs)."""
        admission = reservation.admission
        assert admission is not None
        started = time.perf_counter()
        window = int(reservation.admitted_at // 60)
        snapshot = await self._admit(
            admission, key, reservation.amount_usd, window, advice=reservation.advice, needs=needs
        )
        reservation.store_ms = (time.perf_counter() - started) * 1000
        self._admitted(reservation, snapshot)

    def _admitted(self, reservation: Reservation, snapshot: MeterSnapshot) -> None:
        admission = reservation.admission
        assert admission is not None
        reservation.snapshot = snapshot
        reservation.headers = self._rate_headers(admission.rates, snapshot, int(reservation.admitted_at // 60))

    async def admit_fallback(
        self, lineage: list[KeyRecord], model: str, tokens: int, request_id: str, counted: list[str]
    ) -> Counted | None:
        """Count a request on a fallback `model`'s own limits along the key's chain (`tokens`: its worst case, settled
        to the tokens used once it is sent to, `used`) before its first attempt: the request was admitted on the
        model it named, and a fallback must not escape a per-model limit. A pattern that also matches a model in
        `counted` (the one it named, the fallbacks counted before) has counted it already. Raises the 429 when one
        is spent; else what it counted (None: no limit of its own)."""
        key = lineage[0]
        now = self.clock()
        window = int(now // 60)
        rates = [rate for holder in lineage for rate in self._rates(holder, key, model, window, tokens, counted)]
        if not rates:
            return None
        admission = Admission(request_id, key.id, [], rates, now + self.reservation_ttl, key.home_region)
        return Counted(admission, await self._admit(admission, key, 0.0, window))

    def served_headers(self, reservation: Reservation | None, others: list[Counted], model: str) -> dict[str, str]:
        """The `x-ratelimit-*` of an answer `model` served where another was asked for (a fallback): the tightest of
        the limits that bind it along the key's chain, each with its count as the admission that counted it saw (the
        request's, `reservation`; `others`: a count's, a fallback's own limits'). A limit on the model asked for alone
        binds none of its fallbacks, and is not told."""
        admissions = list(others)
        if reservation is not None and reservation.admission is not None:
            admissions.append(Counted(reservation.admission, reservation.snapshot))
        rates: list[RateCharge] = []
        snapshot = MeterSnapshot()
        for admission in admissions:
            bound = [rate for rate in admission.rates if binds(rate, model)]
            rates += bound
            snapshot.rates.update(
                (r.counter, admission.snapshot.rates[r.counter]) for r in bound if r.counter in admission.snapshot.rates
            )
            windows = admission.snapshot.rate_windows
            snapshot.rate_windows.update((r.counter, windows[r.counter]) for r in bound if r.counter in windows)
        if not rates:
            return {}
        return self._rate_headers(rates, snapshot, max(rate.window for rate in rates))

    def given_back(self, counted: Counted, sent: Collection[str] = ()) -> Settlement:
        """What gives back what a model's own limits counted when nothing was sent to it, as a request never sent
        gives back what its admission counted (`settlement`, `unsent`): a fallback's (`admit_fallback`: the request
        ended first, its deadline, the client gone, the worst case its attempt needed not covered), the model asked
        for's (`taken_apart`: its deployments passed over, or pinned away; a token count's, `admit_count`). But for a
        limit that binds a model in `sent`, which an attempt went out to: the request was sent under it (a key's own
        `rpm`). Settled under the count's own reservation id, which no other settlement of the request may share:
        the store applies one settlement an id (`<request id>@<model>`, `@advisor:<model>`; a token count's
        `#count`, out of the names a fallback's model may have, as an extra reservation's `#<n>` is)."""
        admission = counted.admission
        rates = unbound(admission.rates, sent) if sent else admission.rates
        if len(rates) < len(admission.rates):
            admission = admission._replace(rates=rates)
        return self.settlement(Reservation(admission, 0.0, 0), 0.0, 0, None, unsent=True)

    def used(self, counted: Counted, tokens: int) -> Settlement | None:
        """What settles what a model's own limits counted (`admit_fallback`: a fallback's, an advisor's) once the
        request was sent to it: the worst case it counted on their tokens a minute corrected to the `tokens` it used,
        as the admission's are (`settlement`). Kept whole, a fallback's own `tpm` would hold three worst cases of
        ~2,010 tokens for three answers of ~23, and refuse the fourth for the rest of the minute, where the same
        requests sent to that model straight settle down. Under the count's own reservation id, as
        `given_back`'s (a model was sent to or was not, never both): the store applies one settlement an id, so a
        retried one corrects nothing twice. None: it counted no tokens (a token count's requests a minute)."""
        admission = counted.admission
        if not any(rate.name.startswith("tpm") for rate in admission.rates):
            return None
        return self.settlement(Reservation(admission, 0.0, 0), 0.0, tokens, None)

    @staticmethod
    def taken_apart(reservation: Reservation, model: str, sent: Collection[str]) -> Counted | None:
        """What `reservation`'s admission counted on limits of the model asked for (`model`) that bind none of the
        models an attempt went out to (`sent`; none to `model`: its deployments passed over, or pinned away), taken
        out of the admission, whose settlement then leaves them be: a count of their own under their own id, as a
        fallback's own limits' is (`admit_fallback`), for `given_back` to give back whole. (Settled with the rest,
        their tokens would be corrected to the answer's on a limit the model that served it is not held to, and the
        model asked for refused for the minute though nothing went to it.) The key's own `rpm`/`tpm` bind
        every model and stay. None: there are none."""
        admission = reservation.admission
        if admission is None:
            return None
        apart = unbound(admission.rates, sent)
        if not apart:
            return None
        reservation.admission = admission._replace(rates=[rate for rate in admission.rates if rate not in apart])
        own = admission._replace(reservation_id=f"{admission.reservation_id}@{model}", budgets=[], rates=apart)
        return Counted(own, reservation.snapshot)

    async def reserve_again(self, reservation: Reservation, key: KeyRecord, n: int) -> Reservation:
        """The `n`th worst case more on every budget `reservation` holds, and no rate counted: for an attempt the
        provider got whole and may bill though it gave no answer (a first-byte timeout, a broken answer), before
        the next attempt goes out; its line then carries both. Raises the 402 when a budget cannot cover it.
        Settled with nothing spent (`settlement(extra, 0.0, 0, None)`) when the request is."""
        admission = reservation.admission
        if admission is None or not admission.budgets:
            return Reservation(None, 0.0, 0)
        now = self.clock()
        extra = Admission(
            f"{admission.reservation_id}#{n}",
            admission.key_id,
            admission.budgets,
            [],
            now + self.reservation_ttl,
            admission.home_region,
        )
        started = time.perf_counter()
        again = Reservation(extra, reservation.amount_usd, 0)
        again.snapshot = await self._admit(extra, key, reservation.amount_usd, int(now // 60))
        again.store_ms = (time.perf_counter() - started) * 1000
        return again

    async def admit_count(self, lineage: list[KeyRecord], model: str, reservation_id: str) -> Counted | None:
        """Count a token count a provider is asked for on the requests-a-minute limits of the key's chain
        (`model`'s own among them), or raise the 429: free, so no budget and no tokens a minute, but the
        provider limits its counting per organisation, on the operator's key. What it counted (None: no limit),
        its answer's `x-ratelimit-*` headers (the requests' alone, `count_headers`), as a request's are.
        `reservation_id`: the count's own, not its line's (a give-back under the id its line is settled under is
        taken for that settlement, and dropped: `given_back`)."""
        key = lineage[0]
        now = self.clock()
        window = int(now // 60)
        rates = [
            rate
            for holder in lineage
            for rate in self._rates(holder, key, model, window, 0)
            if rate.name.startswith("rpm")
        ]
        if not rates:
            return None
        admission = Admission(reservation_id, key.id, [], rates, now + self.reservation_ttl, key.home_region)
        return Counted(admission, await self._admit(admission, key, 0.0, window))

    async def remaining(self, lineage: list[KeyRecord]) -> float | None:
        """What the budgets of the key's chain (`lineage`) leave now, the least of them, as `GET /v1/key` says it
        (`remaining_usd`): for an answer that reserved nothing, whose admission read no budget (a token count).
        None, with no store call, where no key of the chain has a budget; else each budgeted key's meter read at
        once, one round trip."""
        budgeted = [holder for holder in lineage if holder.budget_usd is not None]
        if not budgeted:
            return None
        now = self.clock()
        periods = [period_of(holder.budget_period, now) for holder in budgeted]
        snapshots = await asyncio.gather(
            *(self.store.meter(holder.id, period) for holder, period in zip(budgeted, periods, strict=True))
        )
        left = [
            float(holder.budget_usd or 0.0) - snapshot.committed_usd.get(period, 0.0)
            for holder, period, snapshot in zip(budgeted, periods, snapshots, strict=True)
        ]
        return max(0.0, dollars(min(left)))

    def count_headers(self, counted: Counted) -> dict[str, str]:
        """The `x-ratelimit-*` headers of what one admission `counted` (`admit_count`)."""
        return self._rate_headers(counted.rates, counted.snapshot, counted.rates[0].window)

    async def count_request(
        self, key: KeyRecord, request_id: str, counters: list[RateCharge], region: str | None = None
    ) -> None:
        """Count one request that spends nothing (minting a key) on `counters` for this minute (`key`'s own where
        they name no key), in `region` where given (`Store.admit_at`), or raise the 429."""
        now = self.clock()
        window = int(now // 60)
        rates = [replace(charge, window=window) for charge in counters]
        admission = Admission(request_id, key.id, [], rates, now + self.reservation_ttl, key.home_region)
        await self._admit(admission, key, 0.0, window, region)

    async def _admit(
        self,
        admission: Admission,
        key: KeyRecord,
        amount: float,
        window: int,
        region: str | None = None,
        advice: int = 0,
        needs: tuple[str, str] | None = None,
    ) -> MeterSnapshot:
        """One store admission (in `region`, where given), with its refusals as the client's errors (`advice`: what
        its own `tpm` counts for the advisor tool's calls, which a request too large for it is told; `needs`: see
        `write`)."""
        try:
            try:
                async with span("store.admit"):
                    if region is not None:
                        return await self.store.admit_at(admission, region)
                    return await self.store.admit(admission)
            except BudgetRefused as refused:
                # Reservations of requests that died hold budget until they expire, leases idle in other regions
                # until their region returns them; free them and retry once. On every budget of the admission, not
                # the refused one alone: a request that died on a key and its parent holds both, and the retry
                # would be refused by the parent. And retried whatever this release freed: another process
                # refused a moment before may have freed it first.
                if not any(charge.key_id == refused.key_id for charge in admission.budgets):
                    raise
                now = self.clock()
                for charge in admission.budgets:
                    await self.store.release_held(charge, now)
                if region is not None:
                    return await self.store.admit_at(admission, region)
                return await self.store.admit(admission)
        except BudgetRefused as refused:
            remaining = "" if refused.remaining_usd is None else f" (${max(refused.remaining_usd, 0):.6f} left)"
            whose = "this key's" if refused.key_id == key.id else "a parent key's"
            raise BudgetExceededError(
                f"{whose} budget cannot cover this request's worst case of ${amount:.6f}{remaining}"
            ) from None
        except RateRefused as refused:
            wait = max(1, math.ceil(refused.retry_after))
            whose = "this key's" if refused.key_id == key.id else "a parent key's"
            if refused.requested is not None:  # as OpenAI answers it: a 429 that says not to retry
                what, lower = "the prompt and the output it may produce", "lower max_tokens or shorten the prompt"
                if advice and refused.limit_name == "tpm":
                    what = f"the prompt, the output it may produce and {advice} its advisor tool's calls may run"
                    lower = "lower max_tokens, the advisor's max_uses or max_tokens, or shorten the prompt"
                if needs is not None:  # (an embeddings request has no output, and no max_tokens: found by embrev37)
                    what, lower = needs
                raise RateLimitError(
                    f"request too large for {whose} {refused.limit_name} limit of {refused.limit} tokens per minute: "
                    f"it needs about {refused.requested} ({what}); {lower}, no minute will admit it as it is",
                    retry=False,  # (`retry-after` stays, as on every 429; the SDKs read x-should-retry first)
                    headers={"retry-after": str(wait), **self._refusal_headers(admission.rates, refused, wait)},
                ) from None
            raise RateLimitError(
                f"{whose} rate limit {refused.limit_name}={refused.limit} per minute reached; retry in {wait}s",
                headers={"retry-after": str(wait), **self._refusal_headers(admission.rates, refused, wait)},
            ) from None
        except StoreError as exc:
            if isinstance(exc, StoreDeadlineError) and exc.landing is not None:
                self._release_once_written(exc.landing, Reservation(admission, amount, 0), region)
            why = (
                "did not answer within the request's deadline"
                if isinstance(exc, StoreDeadlineError)
                else "is unavailable"
            )
            raise ServiceUnavailableError(
                f"the key store {why}, so limits cannot be checked; retry shortly", code="store_unavailable"
            ) from exc

    def _release_once_written(
        self, landing: asyncio.Future[MeterSnapshot], reservation: Reservation, region: str | None = None
    ) -> None:
        """Release `reservation` once its admission, which runs on past the request's deadline (`landing`, see
        `StoreDeadlineError`), is written: the request was answered 503 and sent nothing, so it gives back all it
        counted, as a request never sent does (`settlement`, `unsent`); in `region`, where it was counted there
        (`Store.admit_at`: a mint's count, given back as the key it was for was never made). Refused or failed,
        nothing is released. Nothing on the request's path waits for the outcome: a callback spawns the release
        when it comes. A task waiting for it would hold the buffered Lambda function's 503 until the admission's own
        timeouts (15 s; the invocation's settlements run before its answer goes), and a bounded drain
        (`Gateway.settle_within`) that cancels the task would lose the release."""
        settlement = self.settlement(reservation, 0.0, 0, None, unsent=True)
        self.awaiting.add(landing)  # (what ends with it waits for it, within its bound: `Gateway.answered_within`)
        landing.add_done_callback(lambda done: self._written_late(done, settlement, region))

    def _written_late(self, landing: asyncio.Future[MeterSnapshot], settlement: Settlement, region: str | None) -> None:
        self.awaiting.discard(landing)
        if written(landing):
            self.spawn(self.settle(settlement, region))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # (the loop holds its tasks weakly)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _rates(
        holder: KeyRecord,
        key: KeyRecord,
        model: str,
        window: int,
        tokens: int,
        counted: list[str] | None = None,
        advice: int = 0,
    ) -> list[RateCharge]:
        """The rate charges of `holder`'s limits (`counted`: the models the request was counted on already; then
        only its limits on `model` that none of them matched): `key` itself, or one of its ancestors, whose
        counters every descendant shares (`RateCharge.key_id`). `advice`: tokens more on its own `tpm` alone (an
        advisor's: `reservation`)."""
        owner, home = (None, None) if holder is key else (holder.id, holder.home_region)
        rates = []
        if holder.rpm and counted is None:
            rates.append(RateCharge("rpm", window, holder.rpm, 1, owner, home))
        if holder.tpm and counted is None:
            rates.append(RateCharge("tpm", window, holder.tpm, tokens + advice, owner, home))
        for pattern, limits in model_limits(holder, model) if holder.model_limits else ():
            if counted and any(model_allowed([pattern], other) for other in counted):
                continue
            if limits.get("rpm"):
                rates.append(RateCharge(f"rpm:{pattern}", window, limits["rpm"], 1, owner, home))
            if limits.get("tpm"):
                rates.append(RateCharge(f"tpm:{pattern}", window, limits["tpm"], tokens, owner, home))
        return rates

    def _rate_headers(self, rates: list[RateCharge], snapshot: MeterSnapshot | None, window: int) -> RateHeaders:
        """OpenAI's `x-ratelimit-*` headers, for the tightest limit of each kind (requests, tokens), reset as the
        latest window their counters were counted in ends: `window`, or one the store counted a counter in that
        another gateway's clock began first (`MeterSnapshot.rate_windows`), as a 429's `retry-after` then is. An
        answer tells them as they hold when it is built (`RateHeaders.tell`)."""
        if snapshot is not None and snapshot.rate_windows:
            window = max(window, *(snapshot.rate_windows.get(rate.counter, window) for rate in rates))
        ends_at = (window + 1) * 60
        headers = self._limit_headers(rates, snapshot, max(1, math.ceil(ends_at - self.clock())))
        return RateHeaders(headers, ends_at, self.clock)

    @staticmethod
    def _limit_headers(rates: list[RateCharge], snapshot: MeterSnapshot | None, reset_s: int) -> dict[str, str]:
        """As `_rate_headers`, the counters resetting in `reset_s` seconds (rounded up, as `retry-after` is)."""
        reset = f"{reset_s}s"
        headers: dict[str, str] = {}
        for kind, label in (("rpm", "requests"), ("tpm", "tokens")):
            tightest: tuple[int, int] | None = None  # (remaining, limit)
            for charge in rates:
                if charge.name[:3] != kind:  # "rpm", "tpm", "rpm:<pattern>", "tpm:<pattern>"
                    continue
                used = snapshot.rates.get(charge.counter) if snapshot else None
                if used is None and snapshot is not None:
                    continue  # a counter the store did not report (its read failed): no figure made up for it
                left = charge.limit - (charge.amount if used is None else used)
                if tightest is None or left < tightest[0]:
                    tightest = (left, charge.limit)
            if tightest is not None:
                headers[f"x-ratelimit-limit-{label}"] = str(tightest[1])
                headers[f"x-ratelimit-remaining-{label}"] = str(max(0, tightest[0]))
                headers[f"x-ratelimit-reset-{label}"] = reset
        return headers

    def given_back_headers(self, reservation: Reservation) -> dict[str, str]:
        """The `x-ratelimit-*` headers of a request never sent: its admission's, with what it counted given back
        (`settlement`, `unsent`), as its counters will be once it settles."""
        admission = reservation.admission
        if admission is None or not admission.rates:
            return {}
        counted, ahead = reservation.snapshot.rates, reservation.snapshot.rate_windows
        snapshot = MeterSnapshot(rate_windows=ahead)
        # (a count in a window another gateway began stays: the settlement corrects the admission's window alone)
        snapshot.rates = {
            r.counter: counted[r.counter] - (0 if r.counter in ahead else r.amount)
            for r in admission.rates
            if r.counter in counted
        }
        return self._rate_headers(admission.rates, snapshot, admission.rates[0].window)

    def _refusal_headers(self, rates: list[RateCharge], refused: RateRefused, wait: int) -> dict[str, str]:
        """A 429's `x-ratelimit-*` headers: the refused limit with nothing remaining (unless the request alone was
        too large: the window's count is not known then), the other kind's limit without a remaining count,
        which a refusal does not read (the limit less this request would say that nothing had been used).
        They reset in `wait` seconds, the 429's `retry-after` (both rounded up from one reading of the clock)."""
        headers = self._limit_headers(rates, None, wait)
        refused_label = "requests" if refused.limit_name[:3] == "rpm" else "tokens"
        for label in ("requests", "tokens"):
            if label == refused_label and refused.requested is None:
                headers[f"x-ratelimit-limit-{label}"] = str(refused.limit)
                headers[f"x-ratelimit-remaining-{label}"] = "0"
            else:
                headers.pop(f"x-ratelimit-remaining-{label}", None)
        return headers

    def settlement(
        self,
        reservation: Reservation,
        actual_usd: float,
        tokens: int,
        item: LedgerItem | None,
        unsent: bool = False,
        advice: int = 0,
    ) -> Settlement:
        """What settles `reservation` at `actual_usd` and `tokens`; `unsent`: the request was never sent (no attempt
        went out), so it gives back the request it counted on the requests a minute too. `advice`: the tokens its
        advisor tool's calls ran, which the key chain's own `tpm` counted beside its own (`Reservation.advice`) and
        is settled to with them, in this one settlement (so once: the store applies one an id)."""
        admission = reservation.admission
        if admission is None:
            return Settlement(item.request_id if item else "", [], 0.0, [], item)
        # Built field by field: `dataclasses.replace` walks the fields by name, several times the cost here.
        budgets = [BudgetCharge(b.key_id, b.period, b.limit_usd, actual_usd, b.home_region) for b in admission.budgets]
        # Each correction names the key whose counter it corrects (an ancestor's, or the admission's own key): a
        # request that reached no provider has no line item to name it, and gives back all the tokens it reserved.
        # One never sent gives back itself on the requests a minute too (a deadline that ran out while it was
        # admitted used one of the key's requests for nothing); one whose attempts went out and reached no provider
        # (refused connections) stays counted, so a client retrying a dead provider's 502 at once is held to it.
        advised = tokens + advice
        rates = [
            RateCharge(
                r.name,
                r.window,
                r.limit,
                (advised if r.name == "tpm" else tokens) - r.amount if r.name.startswith("tpm") else -r.amount,
                r.key_id or admission.key_id,
                r.home_region if r.key_id else admission.home_region,
            )
            for r in admission.rates
            if unsent or r.name.startswith("tpm")
        ]
        return Settlement(
            admission.reservation_id,
            budgets,
            reservation.amount_usd,
            rates,
            item,
            admission.home_region,
            admission.expires_at,
        )

    async def settle(self, settlement: Settlement, region: str | None = None) -> None:
        """Apply a settlement, retrying a failed store call; if the store still refuses it, spool it (see
        handler/pipeline/spool.py): a settled cost must never be lost. Under a deadline (`SETTLE_BY`) the attempts,
        every retry of the layers below included, end there and the settlement is spooled (at once, without a store
        call, if that time has passed); a write cut off may have landed, and its re-drive then changes nothing.
        `region`: where its admission was counted (`Store.settle_at`; spooled, it is re-driven here, where a count
        kept in another region is not found: that count then stays to the end of its minute, as it did before such
        counts were given back). Never raises but for cancellation (the settlement is spooled first)."""
        if not settlement.budgets and not settlement.rates and settlement.item is None:
            return
        by = SETTLE_BY.get()
        # Its store calls end by its own deadline, not by the request's (`STORE_DEADLINE`), which it may outlive.
        bound = None if STORE_DEADLINE.get() == by else STORE_DEADLINE.set(by)
        try:
            if by is None:
                await self._attempts(settlement, region)
            elif by > asyncio.get_running_loop().time():
                try:
                    async with asyncio.timeout_at(by):
                        await self._attempts(settlement, region)
                except TimeoutError:
                    self.spool.add(settlement, OUT_OF_TIME)
            else:
                self.spool.add(settlement, OUT_OF_TIME)
        except asyncio.CancelledError as exc:  # (a bounded wait): it may have landed; then its re-drive changes nothing
            self.spool.add(settlement, f"{CANCELLED}: {exc.args[0]}" if exc.args else CANCELLED)
            raise
        finally:
            if bound is not None:
                STORE_DEADLINE.reset(bound)
        self.spooled.watch(self.store)  # the store answers again, or was just refused: re-drive what waits

    async def _attempts(self, settlement: Settlement, region: str | None = None) -> None:
        """`SETTLE_ATTEMPTS` store calls (in `region`, where given), further apart each time, then the spool."""
        delay = SETTLE_FIRST_DELAY_S
        for attempt in range(1, SETTLE_ATTEMPTS + 1):
            try:
                if region is None:
                    await self.store.settle(settlement)
                else:
                    await self.store.settle_at(settlement, region)
                return
            except Exception as exc:  # noqa: BLE001 - whatever failed, the cost must reach the spool
                if attempt == SETTLE_ATTEMPTS:
                    self.spool.add(settlement, str(exc) or type(exc).__name__)
                    return
                await asyncio.sleep(delay)
                delay *= 3

    def settle_soon(self, settlement: Settlement) -> asyncio.Future[None] | None:
        """`settle`'s first attempt queued in the store's batch, with no task waiting on it (the store's
        `settle_soon`): the future resolves once it is written; hand it to `landed` then. None: the store has no
        queue for it (a settlement with nothing to settle among them), or the attempt failed: run `settle`."""
        try:
            return self.store.settle_soon(settlement)
        except Exception:  # noqa: BLE001 - the first attempt failed: `settle` tries again, then spools
            return None

    def landed(
        self, settlement: Settlement, done: asyncio.Future[None], spawn: Callable[[Coroutine[Any, Any, None]], None]
    ) -> None:
        """After `settle_soon`'s attempt: if it failed, `settle` runs in a task of `spawn`'s, its further
        attempts and the spool after it."""
        if done.cancelled():  # (the store closed under it): it may have landed; if so, the re-drive changes nothing
            self.spool.add(settlement, CANCELLED)
        elif done.exception() is not None:
            spawn(self.settle(settlement))
        else:
            self.spooled.watch(self.store)
