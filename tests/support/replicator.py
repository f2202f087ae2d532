"""A stand-in for DynamoDB global tables between two test servers: copies items with a delay, last writer wins.

Global tables replicate every write asynchronously (about a second between regions) and settle two regions
writing one item by keeping the write with the later timestamp, everywhere; conditions are checked only in
the region that takes the write. This replicator reproduces that on two moto servers by polling: every
`interval` it scans both tables, treats every item that differs from what it last saw (and from what it
itself last copied in) as a local write stamped with the time it was seen, and `delay` seconds later copies
the whole item to the other side, unless the other side has a local write of that item seen later: that one
wins and will be copied back instead. A copied item replaces the other side's version whole, so two regions
adding to one counter within the delay lose one of the additions, as on DynamoDB. Deletes are not copied
(the gateway never deletes; TTL deletes would come from each region's own TTL in any case).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

Key = tuple[str, str]
Item = dict[str, Any]


@dataclass
class Replica:
    """One region's table: a boto3 client for its server (in its region) and the table's name."""

    client: Any
    table: str
    seen: dict[Key, Item] = field(default_factory=dict)
    copied_in: dict[Key, Item] = field(default_factory=dict)
    written_at: dict[Key, float] = field(default_factory=dict)


@dataclass
class ReplicatorStats:
    copied: int = 0
    superseded: int = 0  # a copy dropped because the destination wrote the item later
    overwritten_concurrent: int = 0  # a copy that replaced a write the source never saw: an update lost


class Replicator:
    """Keeps two replicas in sync in a background thread until `stop()`."""

    def __init__(self, a: Replica, b: Replica, delay: float = 0.5, interval: float = 0.05) -> None:
        self.replicas = (a, b)
        self.delay = delay
        self.interval = interval
        self.stats = ReplicatorStats()
        self.pending: deque[tuple[float, int, Key, Item]] = deque()
        self.quiet_ticks = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Replicator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.error is not None:
            raise RuntimeError("the replicator failed") from self.error

    def wait_until_settled(self, timeout: float = 30.0) -> None:
        """Block until nothing is waiting to be copied and two full scans found no new write."""
        deadline = time.monotonic() + timeout
        self.quiet_ticks = 0
        while self.pending or self.quiet_ticks < 2:
            if self.error is not None:
                raise RuntimeError("the replicator failed") from self.error
            if time.monotonic() > deadline:
                raise TimeoutError("replication did not settle")
            time.sleep(self.interval)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._tick()
                self._stop.wait(self.interval)
        except BaseException as exc:  # reported by stop() / wait_until_settled()
            self.error = exc

    @staticmethod
    def _scan(replica: Replica) -> dict[Key, Item]:
        items: dict[Key, Item] = {}
        request: dict[str, Any] = {"TableName": replica.table, "ConsistentRead": True}
        while True:
            answer = replica.client.scan(**request)
            for item in answer.get("Items", []):
                items[(item["pk"]["S"], item["sk"]["S"])] = item
            if "LastEvaluatedKey" not in answer:
                return items
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]

    def _tick(self) -> None:
        changed = False
        for index, replica in enumerate(self.replicas):
            now = time.monotonic()
            for key, item in self._scan(replica).items():
                if replica.seen.get(key) == item:
                    continue
                replica.seen[key] = item
                if replica.copied_in.get(key) == item:
                    continue  # our own copy arriving
                replica.written_at[key] = now
                self.pending.append((now, index, key, item))
                changed = True
        now = time.monotonic()
        while self.pending and now - self.pending[0][0] >= self.delay:
            written, index, key, item = self.pending.popleft()
            target = self.replicas[1 - index]
            theirs = target.written_at.get(key)
            if theirs is not None and theirs > written:
                self.stats.superseded += 1  # the later write wins; it is on its way back
                continue
            if theirs is not None and theirs > written - self.delay:
                self.stats.overwritten_concurrent += 1
            target.client.put_item(TableName=target.table, Item=item)
            target.copied_in[key] = item
            target.seen[key] = item
            self.stats.copied += 1
        self.quiet_ticks = 0 if changed else self.quiet_ticks + 1
