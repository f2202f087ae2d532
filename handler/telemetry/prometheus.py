"""`GET /metrics`: the server's request figures in Prometheus' text format (version 0.0.4).

Counters and histograms live in this process (on Lambda the same figures go out as CloudWatch EMF). Label
values are bounded: a model or provider the config does not name, and any label set past `MAX_SERIES` per
metric, are counted under `other`, so a client cannot grow the series without limit.

`gateway serve --workers N` runs N processes on one port, and a scrape reaches whichever took the connection: each
worker answered with its own figures (ten scrapes read 15, 15, 15, 5, ...; a kept-alive Prometheus saw 5 requests of
20, and a "reset" each time it moved). So the server makes a folder for its workers (`SHARED_ENV`); each writes its
figures there, a file of its own (`Shared`), at most every `SHARE_INTERVAL_S` and only when they changed, and once
more on its way out; a scrape on any worker answers with its own figures as they are and every other worker's file,
summed (every figure is a counter or a histogram). A request's path does no file I/O: the writes are a task's
of their own, and the reads a scrape's.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from handler.redaction import clipped

MAX_SERIES = 2000
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OTHER = "other"

Labels = tuple[tuple[str, str], ...]
# A request's label sets: where it went (model, provider, region), with its status, with each token direction.
SeriesLabels = tuple[Labels, Labels, Labels, Labels]


class Histogram:
    """Cumulative buckets, sum and count of one label set."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * len(LATENCY_BUCKETS)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(LATENCY_BUCKETS, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1


class Family:
    """One metric: its help text, its type and its series by label set."""

    __slots__ = ("name", "kind", "help", "counters", "histograms")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind  # "counter" or "histogram"
        self.help = help
        self.counters: dict[Labels, float] = {}
        self.histograms: dict[Labels, Histogram] = {}

    def _bounded(self, labels: Labels, series: int) -> Labels:
        if series < MAX_SERIES:
            return labels
        return tuple((name, OTHER) for name, _ in labels)

    def add(self, labels: Labels, amount: float = 1.0) -> None:
        counters = self.counters
        value = counters.get(labels)  # (a label set's tuple is hashed at each look-up: two, not three, an add)
        if value is None:
            labels = self._bounded(labels, len(counters))
            value = counters.get(labels, 0.0)
        counters[labels] = value + amount

    def observe(self, labels: Labels, value: float) -> None:
        histogram = self.histograms.get(labels)
        if histogram is None:
            labels = self._bounded(labels, len(self.histograms))
            histogram = self.histograms.setdefault(labels, Histogram())
        histogram.observe(value)

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in sorted(self.counters.items()):
            yield f"{self.name}{_labels(labels)} {_number(value)}"
        for labels, histogram in sorted(self.histograms.items()):
            running = 0
            for bound, count in zip(LATENCY_BUCKETS, histogram.counts, strict=True):
                running += count
                yield f"{self.name}_bucket{_labels((*labels, ('le', repr(bound))))} {running}"
            yield f"{self.name}_bucket{_labels((*labels, ('le', '+Inf')))} {histogram.count}"
            yield f"{self.name}_sum{_labels(labels)} {_number(histogram.total)}"
            yield f"{self.name}_count{_labels(labels)} {histogram.count}"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
        for name, value in labels
    )
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class Registry:
    """The gateway's request metrics, by model, provider and region (and error code)."""

    def __init__(self, models: Iterable[str] = (), providers: Iterable[str] = ()) -> None:
        self.models = set(models)
        self.providers = set(providers)
        self._series: dict[tuple[str | None, str | None, str | None, int], SeriesLabels] = {}
        self.requests = Family("gateway_requests_total", "counter", "Requests answered, by status.")
        self.errors = Family("gateway_errors_total", "counter", "Error answers, by code.")
        self.tokens = Family("gateway_tokens_total", "counter", "Tokens billed, by direction (input, output).")
        # The providers' cost and the gateway's fee apart, as `x-gateway-cost-usd` and `x-gateway-fee-usd` and the
        # ledger give them (one counter of their sum would read, with a fee, a cost no header or line says).
        self.cost = Family("gateway_cost_usd_total", "counter", "USD of the providers' cost (x-gateway-cost-usd).")
        self.fee = Family("gateway_fee_usd_total", "counter", "USD of the gateway's fee (x-gateway-fee-usd).")
        self.duration = Family("gateway_request_duration_seconds", "histogram", "Whole request time.")
        self.added = Family(
            "gateway_added_latency_seconds", "histogram", "The gateway's own time: total less store and upstream."
        )
        self.dropped_spans = Family(
            "gateway_otlp_spans_dropped_total", "counter", "Trace spans dropped: export queue full or collector down."
        )

    def name(self, models: Iterable[str], providers: Iterable[str]) -> None:
        """Add label values that may appear (see `configure`)."""
        self.models.update(models)
        self.providers.update(providers)
        self._series.clear()  # a value counted as `other` until now may be named from here on

    def model_label(self, model: str | None) -> str:
        """`model` as a label or a metric's dimension: a model the config names, else `other`."""
        return model if model in self.models else OTHER

    def model_named(self, model: str) -> str:
        """`model` as a log line or span may carry it: a model the config names as it is, any other (a client's
        choice) cut at `NAME_CHARS` and without a key-shaped value in it (a key sent where the model belongs)."""
        return model if model in self.models else clipped(model)

    def families(self) -> list[Family]:
        return [
            self.requests,
            self.errors,
            self.tokens,
            self.cost,
            self.fee,
            self.duration,
            self.added,
            self.dropped_spans,
        ]

    def _where(self, model: str | None, provider: str | None, region: str | None) -> Labels:
        return (
            ("model", self.model_label(model)),
            ("provider", provider if provider in self.providers else ("none" if provider is None else OTHER)),
            ("region", region or "none"),
        )

    def record(
        self,
        *,
        model: str | None,
        provider: str | None,
        region: str | None,
        status: int,
        code: str | None,
        seconds: float,
        added_seconds: float,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | None = None,
        fee_usd: float = 0.0,
    ) -> None:
        """One answered request: `cost_usd` the providers' cost (None where unknown: a model without a price),
        `fee_usd` the gateway's fee, which a request is charged whether its cost is known or not."""
        labels = self._series.get((model, provider, region, status))
        if labels is None:
            labels = self._labels(model, provider, region, status)
        where, answered, inputs, outputs = labels
        self.requests.add(answered)
        if code is not None:
            self.errors.add((("code", code), ("status", str(status))))
        if input_tokens:
            self.tokens.add(inputs, input_tokens)
        if output_tokens:
            self.tokens.add(outputs, output_tokens)
        if cost_usd:
            self.cost.add(where, cost_usd)
        if fee_usd:
            self.fee.add(where, fee_usd)
        self.duration.observe(where, seconds)
        self.added.observe(where, added_seconds)

    def _labels(self, model: str | None, provider: str | None, region: str | None, status: int) -> SeriesLabels:
        """The label sets one answer adds to, built once per (model, provider, region, status): a request
        then builds no tuples (the families still bound their series, see `Family.add`)."""
        where = self._where(model, provider, region)
        labels = (
            where,
            (*where, ("status", str(status))),
            (*where, ("direction", "input")),
            (*where, ("direction", "output")),
        )
        # Kept for a model the config names (a request then builds no tuples); a client's made-up name (any length: a
        # 1 MB one would be kept whole, 2,000 of them a process's memory) is counted as `other` and kept by nothing.
        if (model is None or model in self.models) and len(self._series) < MAX_SERIES:
            self._series[(model, provider, region, status)] = labels
        return labels

    def state(self) -> dict[str, Any]:
        """The figures as a worker's file holds them: by metric, its counters' and histograms' label sets and
        values. (The dicts are copied first: the exporter's thread may add a dropped span meanwhile.)"""
        return {
            family.name: {
                "counters": [[labels, value] for labels, value in list(family.counters.items())],
                "histograms": [
                    [labels, list(h.counts), h.total, h.count] for labels, h in list(family.histograms.items())
                ],
            }
            for family in self.families()
        }

    def fingerprint(self) -> float:
        """A number that grows whenever a figure does (every counter and histogram only grows)."""
        total = 0.0
        for family in self.families():
            total += sum(list(family.counters.values())) + sum(h.count for h in list(family.histograms.values()))
        return total

    def absorb(self, state: dict[str, Any]) -> None:
        """Add another worker's figures (its `state`, as its file holds it) to these, label set by label set."""
        for family in self.families():
            figures = state.get(family.name) or {}
            for labels, value in figures.get("counters", ()):
                key = tuple((name, label) for name, label in labels)
                family.counters[key] = family.counters.get(key, 0.0) + value
            for labels, counts, total, count in figures.get("histograms", ()):
                key = tuple((name, label) for name, label in labels)
                histogram = family.histograms.setdefault(key, Histogram())
                histogram.counts = [mine + theirs for mine, theirs in zip(histogram.counts, counts, strict=True)]
                histogram.total += total
                histogram.count += count

    def failure(self, status: int, code: str, seconds: float) -> None:
        """A request refused before it had a model (bad key, bad JSON, ...), answered in `seconds`: in the duration
        histograms as in the counts, so each histogram's `_count` is the requests counted."""
        where = self._where(None, None, None)
        self.requests.add((*where, ("status", str(status))))
        self.errors.add((("code", code), ("status", str(status))))
        self.duration.observe(where, seconds)
        self.added.observe(where, seconds)

    def spans_dropped(self, count: int) -> None:
        """Spans the OTLP exporter could not send (called from its thread)."""
        self.dropped_spans.add((), count)

    def render(self) -> bytes:
        return ("\n".join(line for family in self.families() for line in family.lines()) + "\n").encode()


REGISTRY = Registry()
SHARED_ENV = "GATEWAY_METRICS_SHARED_DIR"  # the folder `gateway serve --workers N` makes for its workers' figures
SHARE_INTERVAL_S = 1.0  # a worker writes its figures at most this often (when they changed), and on its way out


class Shared:
    """This worker's figures in the server's folder (a file of its own), and the other workers' read back."""

    def __init__(self, folder: Path, registry: Registry) -> None:
        self.folder = folder
        self.registry = registry
        # The process id and a random part: a worker the server starts in place of one that died may get its id,
        # and must not write over the figures the dead one left (they stay in the server's sums).
        self.path = folder / f"worker-{os.getpid()}-{os.urandom(4).hex()}.json"
        self._written: float | None = None  # the fingerprint of the figures last taken to be written
        # Each taking of the figures is numbered, and a write lands only if no later one has (under `_on_file`'s
        # lock, in whichever thread writes): the periodic write and a scrape's may overlap, and the older figures
        # landing last left a counter lower on file than a scrape had answered (found by review, mergerev36c).
        self._taken = 0
        self._on_file = 0
        self._file_lock = threading.Lock()

    def _due(self) -> tuple[dict[str, Any], tuple[int, bytes] | None]:
        """The figures as they are, and their write, numbered, if they changed since the last taken. The fingerprint
        is read first: a count another thread adds between the two reads (the OTLP exporter's dropped spans) is then
        in the figures written, and changes the next fingerprint; read after them, it was in the fingerprint and not
        on file, and never written (found by review, mergerev36d)."""
        mark = self.registry.fingerprint()
        state = self.registry.state()
        if mark == self._written:
            return state, None
        self._written = mark
        self._taken += 1
        return state, (self._taken, orjson.dumps(state))

    def _write(self, taken: tuple[int, bytes]) -> None:
        number, data = taken
        with self._file_lock:
            if number <= self._on_file:  # (later figures are on file already)
                return
            temporary = self.path.with_suffix(f".{number}.tmp")
            try:
                temporary.write_bytes(data)
                os.replace(temporary, self.path)  # a reader sees the previous figures or these, never half of them
            except OSError:
                temporary.unlink(missing_ok=True)  # (each failed write's would stay in the server's folder)
                raise
            self._on_file = number

    async def answered(self) -> dict[str, Any]:
        """This worker's figures for a scrape to answer with, on file before it answers: the next scrape, which
        another worker may answer, reads at least them."""
        state, due = self._due()
        if due is None and self._on_file < self._taken:  # (the same figures, their write not landed yet: again)
            self._taken += 1
            due = self._taken, orjson.dumps(state)
        if due is not None:
            with contextlib.suppress(OSError):  # (the server removed its folder: it is stopping)
                await asyncio.to_thread(self._write, due)
        return state

    async def run(self) -> None:
        """Write the figures every `SHARE_INTERVAL_S` while they change (until cancelled)."""
        while True:
            await asyncio.sleep(SHARE_INTERVAL_S)
            _, due = self._due()
            if due is not None:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._write, due)

    def close(self) -> None:
        """The last figures, written on the worker's way out."""
        _, due = self._due()
        if due is not None:
            with contextlib.suppress(OSError):  # (the server removed its folder first: nobody will read them)
                self._write(due)

    def others(self) -> list[dict[str, Any]]:
        """Every other worker's figures as last written (those of a worker that has exited too: what it counted
        stays counted, so the server's counters never go back)."""
        states = []
        for path in self.folder.glob("worker-*.json"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                states.append(orjson.loads(path.read_bytes()))
        return states


_shared: Shared | None = None  # this worker's, while it shares its figures


async def share(folder: str | None) -> asyncio.Task[None] | None:
    """Share this process's figures through `folder` (a worker of `gateway serve --workers N`; None: a process
    that serves alone): the task that writes them, to cancel at shutdown, then `unshare`."""
    if not folder:
        return None
    global _shared
    _shared = Shared(Path(folder), REGISTRY)
    return asyncio.create_task(_shared.run())


async def unshare(task: asyncio.Task[None] | None) -> None:
    """Stop writing on a schedule, and write the last figures (the worker is stopping)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


async def render() -> bytes:
    """The text `GET /metrics` answers: this process's figures, and with `--workers` every worker's, summed
    (this one's as they are, the others' as they last wrote them: at most `SHARE_INTERVAL_S` old). This one's are
    written first, as the figures it answers with: the next scrape, which another worker may answer (each a connection
    of its own), reads at least them. Written only on schedule, a request this worker had answered within the second
    was in one scrape and not in the next, and Prometheus read the counter's fall as a reset (found by review,
    ifacerev36)."""
    if _shared is None:
        return REGISTRY.render()
    state = await _shared.answered()
    others = await asyncio.to_thread(_shared.others)
    server = Registry()
    server.absorb(state)
    for state in others:
        server.absorb(state)
    return server.render()


def configure(models: Iterable[str], providers: Iterable[str]) -> None:
    """Name the label values that may appear: the config's models and provider instances (added to those of any
    other gateway this process serves; a deployed process serves one)."""
    REGISTRY.name(models, providers)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 16 * 1024


async def serve(host: str, port: int) -> asyncio.Server:
    """`GET /metrics` with no key on a port of its own (`observability.metrics_port`): one small HTTP/1.1
    answer per connection, anything else a 404; a head that is too large or too slow is dropped."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method == b"GET" and path == b"/metrics":
                status, body, kind = b"200 OK", await render(), CONTENT_TYPE.encode()
            else:
                status, body, kind = b"404 Not Found", b"only GET /metrics here\n", b"text/plain"
            writer.write(
                b"HTTP/1.1 "
                + status
                + b"\r\ncontent-type: "
                + kind
                + b"\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\nconnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=MAX_REQUEST_HEAD)
