"""`GET /metrics`: the process's request figures in Prometheus' text format (version 0.0.4).

Counters and histograms live in this process (each `gateway serve` worker has its own, as Prometheus expects
of a multi-process target scraped per process; on Lambda the same figures go out as CloudWatch EMF). Label
values are bounded: a model or provider the config does not name, and any label set past `MAX_SERIES` per
metric, are counted under `other`, so a client cannot grow the series without limit.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable

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
        if labels not in self.counters:
            labels = self._bounded(labels, len(self.counters))
        self.counters[labels] = self.counters.get(labels, 0.0) + amount

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
        self.cost = Family("gateway_cost_usd_total", "counter", "USD charged: the providers' cost plus the fee.")
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
        return [self.requests, self.errors, self.tokens, self.cost, self.duration, self.added, self.dropped_spans]

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
    ) -> None:
        """One answered request."""
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
        if len(self._series) < MAX_SERIES:  # (label values a client chose cannot grow it without end)
            self._series[(model, provider, region, status)] = labels
        return labels

    def failure(self, status: int, code: str, seconds: float) -> None:
        """A request refused before it had a model (bad key, bad JSON, ...), answered in `seconds`: in the duration
        histograms as in the counts, so each histogram's `_count` is the requests counted (it left them out)."""
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
                status, body, kind = b"200 OK", REGISTRY.render(), CONTENT_TYPE.encode()
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
