"""Settlements the store could not take, kept on disk until they land.

A settlement is the cost of an answer already given: losing it loses money from the ledger and the budget.
When `Meter.settle` has retried and the store still refuses, the settlement goes here:

- one line appended to a JSONL file (`{"add": <settlement>}`, flushed and fsynced), and one structured log
  line carrying the whole settlement (key ids, model, tokens, cost: never a secret), so that even a spool on
  a machine that is gone can be replayed from the logs;
- re-driven by a retry task on the event loop (first after `RETRY_FIRST_S`, doubling to `RETRY_MAX_S`) for as
  long as anything is pending, by the next request that settles, and at start-up (if the file holds anything: a
  stat, not this module, tells an empty or absent one, `LazySpool` in handler/pipeline/budgets.py); a landed
  settlement gets a `{"done": <reservation id>}` line, and the file is emptied once nothing in it is pending.

Each entry starts on a line of its own (after a last line a killed writer or a full disk left without its end, a
newline first), so a torn line costs only itself; lines that cannot be read are never emptied away but appended to
`<file>.unreadable`, and logged once (how many, not their content).

Re-driving is safe because a store applies a settlement once per reservation id (`Store.settle`): a
settlement that in fact landed before its call failed, or that two processes re-drive at once, counts once.

The file is the truth, shared by every process that opens it (a server's workers, the CLI): each write opens,
appends and closes under an exclusive `flock` of `<file>.lock`, and a re-drive reads the whole file. Where it
lives: `GATEWAY_SETTLEMENT_SPOOL`, else the store's `spool_path` (beside the SQLite file; for DynamoDB under
`/tmp` on Lambda, `.gateway/` elsewhere). A store with no path (SQLite in memory) keeps its spool in memory.
`pending` is shown to admins by `/health`. Metrics (`spool_metrics`): `settlements_spooled` each time one is
spooled (the template's `SpooledSettlementsAlarm` fires on it), `settlements_landed` when a re-drive lands some, and
`pending_settlements` at each of those and every re-drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from handler.ports import STORE_DEADLINE, BudgetCharge, LedgerItem, RateCharge, Settlement, Store
from handler.telemetry.observability import logger, spool_metrics

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
REFUSALS_IN_A_ROW = 3  # a re-drive stops after so many refusals in a row: the store is down, not one settlement
T = TypeVar("T")


def settlement_to_dict(settlement: Settlement) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(orjson.dumps(settlement))
    return data


def settlement_from_dict(data: dict[str, Any]) -> Settlement:
    """The inverse of `settlement_to_dict`; fields a newer gateway added are ignored, missing ones defaulted."""
    item = data.get("item")
    return _build(
        Settlement,
        {
            **data,
            "budgets": [_build(BudgetCharge, b) for b in data.get("budgets", [])],
            "rates": [_build(RateCharge, r) for r in data.get("rates", [])],
            "item": _build(LedgerItem, item) if item is not None else None,
        },
    )


def _build(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


def _torn(file: IO[bytes]) -> bool:
    """Whether `file` ends inside a line (its last byte no newline)."""
    end = file.seek(0, os.SEEK_END)
    if not end:
        return False
    file.seek(end - 1)
    return file.read(1) != b"\n"


class SettlementSpool:
    """See the module docstring. One per store (made by its `LazySpool`, handler/pipeline/budgets.py, once something
    may be pending), so the `Gateway` and every `Meter` of a process share it."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._memory: dict[str, Settlement] = {}
        self._count = len(self._read())
        self._lock: asyncio.Lock | None = None
        self._retry: asyncio.Task[None] | None = None
        self.retry_first_s = RETRY_FIRST_S
        self.retry_max_s = RETRY_MAX_S

    @property
    def pending(self) -> int:
        """Settlements spooled and not yet landed, as this process last read the file (no I/O)."""
        return self._count

    def count(self) -> int:
        """Settlements spooled and not yet landed, read from the file now (other processes share it)."""
        self._count = len(self._read())
        return self._count

    # --- the file ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, entry: dict[str, Any]) -> None:
        """Append `entry` on a line of its own: after a last line left without its end (its writer killed, or the
        disk full), a newline first. Written onto that line, the entry would be unreadable with it, and lost."""
        assert self.path is not None
        with self._locked(), open(self.path, "a+b") as file:
            start = b"\n" if _torn(file) else b""
            file.write(start + orjson.dumps(entry) + b"\n")  # (at the end, wherever `_torn` read: it appends)
            file.flush()
            os.fsync(file.fileno())

    def _read(self) -> dict[str, Settlement]:
        """What is pending: added and not done, in the order added (and what only memory holds)."""
        pending, unreadable = self._parsed(self._lines() or [])
        for _ in unreadable:
            logger.error("unreadable line in the settlement spool", extra={"spool": str(self.path)})
        return {**pending, **self._memory}

    @staticmethod
    def _parsed(lines: list[bytes]) -> tuple[dict[str, Settlement], list[bytes]]:
        """The settlements `lines` leave pending, and the lines that cannot be read."""
        pending: dict[str, Settlement] = {}
        unreadable: list[bytes] = []
        for raw in lines:
            try:
                entry = orjson.loads(raw)
                if "add" in entry:
                    settlement = settlement_from_dict(entry["add"])
                    pending[settlement.reservation_id] = settlement
                elif "done" in entry:
                    pending.pop(entry["done"], None)
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
                unreadable.append(raw)
        return pending, unreadable

    def _lines(self) -> list[bytes] | None:
        """The file's lines ([] if there is no file or no path; None if it cannot be read)."""
        if self.path is None:
            return []
        try:
            return self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            logger.error("the settlement spool cannot be read", extra={"spool": str(self.path), "reason": str(exc)})
            return None

    def _compact(self) -> None:
        """Empty the file once nothing in it is pending (read again under the lock: another process may
        have added since). A line that cannot be read is kept aside first (`_set_aside`), never emptied away."""
        if self.path is None:
            return
        with self._locked():
            lines = self._lines()
            if not lines:  # (none to empty, or the file cannot be read)
                return
            pending, unreadable = self._parsed(lines)
            if set(pending) - set(self._memory):
                return
            if unreadable:
                self._set_aside(unreadable)
            self.path.write_bytes(b"")

    def _set_aside(self, lines: list[bytes]) -> None:
        """Append `lines` to `<file>.unreadable`, for an operator: a torn line may be most of a settlement whose
        writer was killed before its log line. Said once, without the lines (no settlement can be read from them)."""
        aside = f"{self.path}.unreadable"
        with open(aside, "ab") as file:
            file.write(b"".join(line + b"\n" for line in lines))
            file.flush()
            os.fsync(file.fileno())
        logger.error(
            "unreadable lines of the settlement spool kept aside before it was emptied",
            extra={"spool": str(self.path), "kept_in": aside, "lines": len(lines)},
        )

    # --- spooling and re-driving ------------------------------------------------------------------

    def add(self, settlement: Settlement, reason: str) -> None:
        """Keep `settlement` until it lands, say so in the log (with the whole settlement), and start retrying."""
        data = settlement_to_dict(settlement)
        where = str(self.path) if self.path else "memory"
        try:
            if self.path is None:
                self._memory[settlement.reservation_id] = settlement
            else:
                self._append({"add": data, "at": time.time(), "reason": reason})
        except OSError as exc:  # the disk refused the line: memory and the log line below keep it
            self._memory[settlement.reservation_id] = settlement
            where = f"memory (the spool file failed: {exc.strerror or type(exc).__name__})"
        logger.error(
            "settlement spooled: the store refused it; retried until it lands",
            extra={"settlement": data, "reason": reason, "spool": where},
        )
        self._count = len(self._read())
        spool_metrics(self._count, spooled=1)

    def watch(self, store: Store, *, at_once: bool = False) -> None:
        """Re-drive on this event loop while anything is pending (nothing to do if nothing is); `at_once`: the
        first pass without waiting (start-up)."""
        if not self._count:
            return
        loop = asyncio.get_running_loop()
        if self._retry is None or self._retry.done() or self._retry.get_loop() is not loop:
            self._retry = loop.create_task(self._retrying(store, 0.0 if at_once else self.retry_first_s))

    async def _retrying(self, store: Store, delay: float) -> None:
        STORE_DEADLINE.set(None)  # (this task's own: it outlives the request it was started in, and its deadline)
        while self._count:
            await asyncio.sleep(delay)
            try:
                landed = await self.redrive(store)
            except OSError as exc:  # the spool file itself failed: keep trying, slower
                logger.error("the settlement spool cannot be read or written", extra={"reason": str(exc)})
                landed = 0
            delay = self.retry_first_s if landed else min(max(delay, self.retry_first_s) * 2, self.retry_max_s)

    async def redrive(self, store: Store) -> int:
        """Settle what is pending, in order, until the store refuses `REFUSALS_IN_A_ROW` in a row (it is down:
        no use asking it more now); one it refuses alone (that one settlement cannot be written) is passed over,
        so it holds none of the others back. Returns how many landed."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        landed = 0
        refused = 0
        async with self._lock:
            for reservation_id, settlement in self._read().items():
                try:
                    await store.settle(settlement)
                except Exception as exc:  # noqa: BLE001 - whatever the failure, the settlement stays spooled
                    logger.warning(
                        "a spooled settlement still does not land; retried later",
                        extra={"reservation_id": reservation_id, "reason": str(exc) or type(exc).__name__},
                    )
                    refused += 1
                    if refused >= REFUSALS_IN_A_ROW:
                        break
                    continue
                refused = 0
                if self._memory.pop(reservation_id, None) is None:
                    self._append({"done": reservation_id, "at": time.time()})
                landed += 1
            self._compact()
            self._count = len(self._read())
        spool_metrics(self._count, landed=landed)
        if landed:
            logger.info("spooled settlements landed", extra={"landed": landed, "pending": self._count})
        return landed

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._retry


SPOOLED_MESSAGE = "settlement spooled"  # how `SettlementSpool.add`'s log line begins


def logged_settlements(text: str) -> tuple[list[Settlement], int]:
    """The settlements in log output the spool wrote (`settlement spooled: ...` lines, each carrying the whole
    settlement), once per reservation id, in the order found; and how many such lines could not be read.

    `text` is log lines as they are kept: the JSON line alone (`gateway serve`'s log), a CloudWatch export or
    `aws logs tail` output (a timestamp and a stream name before the JSON), or `aws logs filter-log-events`'s JSON
    document (`{"events": [{"message": ...}]}`). Any other line is passed over."""
    messages: list[str] = text.splitlines()
    with contextlib.suppress(orjson.JSONDecodeError):
        document = orjson.loads(text)
        if isinstance(document, dict) and isinstance(document.get("events"), list):
            messages = [event["message"] for event in document["events"] if isinstance(event, dict)]
            messages = [message for message in messages if isinstance(message, str)]
    found: dict[str, Settlement] = {}
    unreadable = 0
    for message in messages:
        if SPOOLED_MESSAGE not in message or "{" not in message:
            continue
        try:
            record = orjson.loads(message[message.index("{") :])
            if not isinstance(record, dict) or not str(record.get("message", "")).startswith(SPOOLED_MESSAGE):
                continue
            settlement = settlement_from_dict(record["settlement"])
        except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError):
            unreadable += 1
            continue
        found.setdefault(settlement.reservation_id, settlement)
    return list(found.values()), unreadable
