"""A third store backend, in memory, to show what a backend needs: `MeteredStore`'s primitives over plain dicts
and one asyncio lock (plus the records every store keeps: keys, the ledger, stored responses, the owners of threads'
answers, sign-ins). It holds no budget, rate or settlement rule of its own; the contract suite runs against it beside
SQLite and DynamoDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adapters.store.metered import (
    AdmissionWrite,
    Applied,
    Counters,
    MeteredStore,
    Reservation,
    SettleUpdate,
    Unmet,
)
from adapters.store.records import key_from_json, key_purge_after, key_to_json
from handler.ports import (
    MAX_HOLDERS,
    ChildLimitReached,
    ConflictError,
    KeyRecord,
    LedgerItem,
    Settlement,
    StoredResponse,
    ThreadAnswer,
    UsageQuery,
    family_root,
)


@dataclass(slots=True)
class Meter:
    """One key's counters and the reservations on them."""

    committed: dict[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    rates: dict[str, tuple[int, int]] = field(default_factory=dict)
    reservations: dict[tuple[str, str], Reservation] = field(default_factory=dict)  # by (id, period)

    def counters(self) -> Counters:
        return Counters(dict(self.committed), dict(self.spent), dict(self.rates))


class MemoryStore(MeteredStore):
    """`Store` in one process's memory: the primitives under one lock, each call atomic."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.meters: dict[str, Meter] = {}
        self.settled: set[str] = set()
        self.ledger: dict[str, LedgerItem] = {}
        self.keys: dict[str, str] = {}  # id -> the record as JSON (a copy, as a real store would hold)
        self.children: dict[str, set[str]] = {}  # parent id -> its children's ids, kept past their records
        self.responses: dict[str, StoredResponse] = {}
        self.holders: dict[str, list[str]] = {}  # item id: the responses holding it, the newest first
        self.thread_answers: dict[str, ThreadAnswer] = {}
        self.sign_ins: dict[str, tuple[str, float]] = {}

    def _meter(self, key_id: str) -> Meter:
        return self.meters.setdefault(key_id, Meter())

    # --- the primitives ---------------------------------------------------------------------------

    async def _write_admission(self, write: AdmissionWrite) -> Applied | Unmet:
        async with self.lock:
            restarts = {m.key_id: self._check(m, self._meter(m.key_id).counters()) for m in write.meters}
            unmet = {k: self._meter(k).counters() for k, restart in restarts.items() if restart is None}
            if unmet:
                return Unmet(unmet)
            admission = write.admission
            for update in write.meters:
                meter = self._meter(update.key_id)
                for charge in update.budgets:
                    meter.committed[charge.period] = meter.committed.get(charge.period, 0.0) + charge.amount_usd
                    meter.reservations[(admission.reservation_id, charge.period)] = Reservation(
                        update.key_id, admission.reservation_id, charge.period, charge.amount_usd, admission.expires_at
                    )
                for step in update.rates:
                    rate = step.charge
                    restart = step.restart or rate.name in (restarts[update.key_id] or ())
                    count = 0 if restart else meter.rates.get(rate.name, (0, 0))[1]
                    meter.rates[rate.name] = (rate.window, count + rate.amount)
            return Applied({k: self._meter(k).counters() for k in write.reported})

    async def _write_settlement(self, settlement: Settlement, updates: list[SettleUpdate]) -> frozenset[str]:
        async with self.lock:
            item = settlement.item
            if settlement.reservation_id in self.settled or (item is not None and item.request_id in self.ledger):
                return frozenset()
            mismatched = frozenset(
                update.key_id
                for update in updates
                for charge, _ in update.budgets
                if ((settlement.reservation_id, charge.period) in self._meter(update.key_id).reservations)
                == update.released
            )
            if mismatched:
                return mismatched
            self.settled.add(settlement.reservation_id)
            if item is not None:
                self.ledger[item.request_id] = item
            for update in updates:
                meter = self._meter(update.key_id)
                for charge, delta in update.budgets:
                    meter.reservations.pop((settlement.reservation_id, charge.period), None)
                    meter.committed[charge.period] = meter.committed.get(charge.period, 0.0) + delta
                    meter.spent[charge.period] = meter.spent.get(charge.period, 0.0) + charge.amount_usd
                for rate in update.tokens:
                    window, count = meter.rates.get(rate.name, (0, 0))
                    if window == rate.window:
                        meter.rates[rate.name] = (window, count + rate.amount)
            return frozenset()

    async def _expired_reservations(self, key_id: str, now: float) -> list[Reservation]:
        return [r for r in self._meter(key_id).reservations.values() if r.expires_at < now]

    async def _release(self, key_id: str, reservations: list[Reservation]) -> float:
        async with self.lock:
            meter = self._meter(key_id)
            released = 0.0
            for reservation in reservations:
                if meter.reservations.pop((reservation.reservation_id, reservation.period), None) is not None:
                    period = reservation.period
                    meter.committed[period] = meter.committed.get(period, 0.0) - reservation.amount_usd
                    released += reservation.amount_usd
            return released

    async def _read_counters(self, key_id: str, period: str) -> Counters:
        return self._meter(key_id).counters()

    # --- the records every store keeps ------------------------------------------------------------

    async def create_key(self, record: KeyRecord) -> None:
        if record.id in self.keys and await self.get_key(record.id) is not None:
            raise ConflictError(f"key {record.id} exists")
        self.keys[record.id] = key_to_json(record)
        if record.parent_id is not None:
            self.children.setdefault(record.parent_id, set()).add(record.id)

    async def create_child(self, record: KeyRecord, max_children: int, root_home: str | None = None) -> None:
        root = family_root(record)
        assert root is not None
        async with self.lock:
            live = {r.id: r for r in await self.list_keys()}
            family = [
                r
                for r in live.values()
                if root in r.ancestors and all(a in live for a in r.ancestors[r.ancestors.index(root) + 1 :])
            ]
            if len(family) >= max_children:
                raise ChildLimitReached(root, max_children)
            await self.create_key(record)

    async def child_ids(self, parent_id: str, root_home: str | None = None) -> list[str]:
        return sorted(self.children.get(parent_id, ()))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        raw = self.keys.get(key_id)
        record = key_from_json(raw) if raw is not None else None
        purge = key_purge_after(record) if record is not None else None
        return None if purge is not None and purge < time.time() else record

    async def update_key(self, record: KeyRecord) -> None:
        stored = await self.get_key(record.id)
        if stored is None or stored.version != record.version - 1:
            raise ConflictError(f"key {record.id} changed since it was read")
        self.keys[record.id] = key_to_json(record)

    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        records = [await self.get_key(key_id) for key_id in sorted(self.keys)]
        return [r for r in records if r is not None and (parent_id is None or r.parent_id == parent_id)]

    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
        lines = [i for i in self.ledger.values() if query.since <= i.ts < query.until]
        if query.key_ids is not None:
            lines = [i for i in lines if i.key_id in query.key_ids]
        return sorted(lines, key=lambda i: i.ts)

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False) -> None:
        if await self.get_response(stored.id) is None:
            self.responses[stored.id] = stored
            for item_id in held:
                self.holders.setdefault(item_id, []).insert(0, stored.id)

    async def index_held(self, held_in: Callable[[StoredResponse], Sequence[str]]) -> int:
        written = 0
        for stored in list(self.responses.values()):
            if stored.expires_at > time.time():
                for item_id in held_in(stored):
                    if stored.id not in self.holders.setdefault(item_id, []):
                        self.holders[item_id].insert(0, stored.id)
                        written += 1
        return written

    async def responses_holding(self, item_id: str) -> list[str]:
        live = [r for r in self.holders.get(item_id, []) if await self.get_response(r) is not None]
        return live[:MAX_HOLDERS]

    async def get_response(self, response_id: str) -> StoredResponse | None:
        stored = self.responses.get(response_id)
        return stored if stored is not None and stored.expires_at > time.time() else None

    async def delete_response(self, response_id: str) -> bool:
        live = await self.get_response(response_id) is not None
        self.responses.pop(response_id, None)
        return live

    async def put_thread_answer(self, answer: ThreadAnswer) -> None:
        self.thread_answers[answer.id] = answer

    async def get_thread_answer(self, message_id: str) -> ThreadAnswer | None:
        answer = self.thread_answers.get(message_id)
        return answer if answer is not None and answer.expires_at >= time.time() else None

    async def put_sign_in(self, token_hash: str, key_id: str, expires_at: float) -> None:
        self.sign_ins[token_hash] = (key_id, expires_at)

    async def take_sign_in(self, token_hash: str) -> str | None:
        key_id, expires_at = self.sign_ins.pop(token_hash, ("", 0.0))
        return key_id if expires_at > time.time() else None
