"""OTLP/HTTP span export in batches, from a thread of its own.

A request hands its spans to `BatchExporter.submit` as a count and a function that builds them, which is
only appended to a bounded queue (a deque: no lock on the request's path; building the spans' attributes
happens on the thread too) and, once a batch is full, wakes the thread. The queue is bounded in spans and in the
bytes of content its requests hold until their spans are built (a captured prompt and answer: `Trace.held`). The
thread sends a batch (`application/x-protobuf`, POST to the traces URL) when one is full or every `schedule_delay_s`,
whichever comes first. When the queue is full (in spans or in bytes), new spans are dropped and counted, never
waited for: a slow or dead collector costs the requests nothing, and holds no more memory than the bounds allow.

`flush` (the end of a Lambda invocation) and `close` (shutdown) have the thread send everything queued and wait
for it at most their `timeout_s`: only the thread ever talks to the collector, so no wait outlasts its bound
whatever the collector does (an HTTP timeout bounds each read, not a whole export, and an export can be in flight
on the thread when a flush begins, or when Lambda froze the environment). Spans not sent by then stay queued and go
out with the next export; an export that fails drops its spans, counted, with one warning per run of failures. Once
a flush has run out of time, flushes given no longer than it wait no more until an export lands again: a collector
that never answers costs one wait, not one per invocation. A flush given longer still waits: a flush cut short (on
Lambda, by an invocation that ended near its timeout) says nothing of a collector that needs a little more, and
would otherwise have the next invocation, with all its time, return at once with its spans unsent.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from adapters.otlp import wire

log = logging.getLogger("gateway.otlp")
RETRYABLE = frozenset({429, 502, 503, 504})
SpanSource = Callable[[], Sequence[wire.SpanData]]
YIELD_EVERY = 4


class BatchExporter:
    """Queues spans and exports them to one OTLP/HTTP traces endpoint (see the module docstring)."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        resource: wire.Attributes,
        *,
        scope_version: str = "",
        timeout_s: float = 10.0,
        queue_size: int = 2048,
        queue_bytes: int = 64 * 1024 * 1024,
        batch_size: int = 512,
        schedule_delay_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        self.url = url
        self.resource = resource
        self.scope_version = scope_version
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self.batch_size = batch_size
        self.schedule_delay_s = schedule_delay_s
        self.dropped = 0  # spans dropped: queue full, or the collector refused them
        self.exported = 0
        self._on_drop = on_drop
        self._queue: collections.deque[tuple[int, int, SpanSource]] = collections.deque()
        # Spans queued = queued_in - queued_out (bytes held likewise); spans sent or dropped by the thread: finished.
        # Each counter has one writer (submit's thread; the sender), so none loses an update without a lock.
        self._queued_in = 0
        self._queued_out = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._finished = 0
        self._progress = threading.Condition()  # notified by the sender each time `_finished` moves
        self._wake = threading.Event()
        self._closed = False
        self._abandoned = False  # `close` counted what was left (its batch in flight included) as dropped
        self._failing = False
        # The longest wait a flush ran out of since the last export landed (None: none did): flushes given no longer
        # do not wait.
        self._ran_out: float | None = None
        self._client = httpx.Client(
            headers={**headers, "content-type": "application/x-protobuf"}, timeout=timeout_s, transport=transport
        )
        self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
        self._thread.start()

    def submit(self, count: int, build: SpanSource, size: int = 0) -> None:
        """Queue one request's `count` spans, built by `build` on the exporter's thread, which holds `size` bytes of
        content until then; drops (and counts) them when the queue is full, in spans or bytes, or the exporter
        closed. Called from the thread that serves requests."""
        queued = self._queued_in - self._queued_out + count
        held = self._bytes_in - self._bytes_out + size
        if self._closed or queued > self.queue_size or held > self.queue_bytes:
            self._drop(count)
            return
        self._queue.append((count, size, build))
        self._queued_in += count
        self._bytes_in += size
        if queued >= self.batch_size:
            self._wake.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._on_drop is not None:
            self._on_drop(count)

    def _run(self) -> None:
        try:
            while not self._closed:
                self._wake.wait(self.schedule_delay_s)
                self._wake.clear()
                self._send_queued()
        finally:
            self._client.close()  # here, not in `close`: an export still in flight when `close` gave up ends first

    def _send_queued(self) -> None:
        while self._queue:
            batch: list[wire.SpanData] = []
            taken = 0
            while self._queue and len(batch) < self.batch_size:
                count, size, build = self._queue.popleft()
                self._queued_out += count
                self._bytes_out += size
                taken += count
                try:
                    batch.extend(build())
                except Exception:  # noqa: BLE001 - one request's spans lost, never the thread
                    log.exception("building a request's spans failed")
                    self._drop(count)
            if batch:
                self._send(batch)
            with self._progress:
                self._finished += taken
                self._progress.notify_all()

    def _send(self, batch: list[wire.SpanData]) -> None:
        encoded = []
        for number, data in enumerate(batch, 1):
            encoded.append(wire.span(data))
            if number % YIELD_EVERY == 0:
                # Hand the GIL back now and then: the thread serving requests never waits for a whole batch's
                # encoding (pure Python), only ever for a few spans'.
                time.sleep(0)
        body = wire.export_request(self.resource, "llm-gateway", self.scope_version, encoded)
        for attempt in range(2):
            try:
                response = self._client.post(self.url, content=body)
            except httpx.HTTPError as exc:
                status, reason = 0, type(exc).__name__
            else:
                status, reason = response.status_code, response.reason_phrase
                if status < 300:
                    self.exported += len(batch)
                    self._failing = False
                    self._ran_out = None
                    return
            if self._abandoned:  # (`close` counted this batch already)
                return
            if attempt == 0 and (status == 0 or status in RETRYABLE) and not self._closed:
                time.sleep(0.5)
                continue
            break
        self._drop(len(batch))
        if not self._failing:  # once per run of failures, not once per batch
            self._failing = True
            log.warning("OTLP export failed (%s %s); spans are dropped until it recovers", status or "", reason)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Have the thread send everything queued now, and wait for it at most `timeout_s` (none at all while a
        flush given as long or longer has run out of time and no export landed since): True once all of it is sent or
        dropped. What is not sent by then stays queued for the next export."""
        target = self._queued_in
        if self._finished >= target:
            return True
        self._wake.set()
        ran_out = self._ran_out
        if ran_out is not None and timeout_s <= ran_out:
            return False
        if self._wait(target, timeout_s):
            return True
        self._ran_out = timeout_s
        if ran_out is None:  # once per run of slow flushes, as failures are warned of
            log.warning(
                "OTLP export did not finish within %.1f s; its spans stay queued for the next export, and flushes "
                "given no longer do not wait until an export lands",
                timeout_s,
            )
        return False

    def _wait(self, target: int, timeout_s: float) -> bool:
        with self._progress:
            return self._progress.wait_for(lambda: self._finished >= target, timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, stop the thread, and drop (counted) whatever is not sent within `timeout_s`."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout_s
        target = self._queued_in
        self._wake.set()
        self._wait(target, timeout_s)  # (shutdown waits even for a collector a flush gave up on)
        self._closed = True
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._abandoned = True
        left = self._queued_in - self._finished  # still queued, or in an export that has not ended
        self._queue.clear()
        if left:
            self._drop(left)
            log.warning("OTLP exporter stopped with %d spans not sent within %.1f s; they are dropped", left, timeout_s)
