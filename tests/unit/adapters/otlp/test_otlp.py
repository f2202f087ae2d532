"""OTLP's trace protobuf as written by hand (adapters/otlp/wire.py), read back with opentelemetry-proto;
and the batch exporter's queue: bounded, dropping and counting, flushed on close; a flush or a close that waits no
longer than it is given."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from adapters.otlp import wire
from adapters.otlp.exporter import BatchExporter


def span(number: int = 0, **fields: object) -> wire.SpanData:
    values: dict[str, object] = {
        "trace_id": bytes(range(16)),
        "span_id": number.to_bytes(8, "big") or b"\x01" * 8,
        "parent_span_id": b"",
        "name": f"chat gpt-4o-mini #{number}",
        "kind": wire.KIND_SERVER,
        "start_ns": 1_764_000_000_000_000_000,
        "end_ns": 1_764_000_000_250_000_000,
        "attributes": [],
        **fields,
    }
    return wire.SpanData(**values)  # type: ignore[arg-type]


def decode(body: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(body)


def test_every_attribute_type_reads_back_with_the_official_classes() -> None:
    attributes = [
        ("text", "naïve ✓"),
        ("flag", True),
        ("count", 1234567890123),
        ("negative", -7),
        ("ratio", 0.125),
        ("reasons", ["stop", "length"]),
        ("empty", ""),
    ]
    data = span(7, parent_span_id=b"\x09" * 8, attributes=attributes, status=wire.STATUS_ERROR, status_message="no")
    request = decode(wire.export_request([("service.name", "gw")], "llm-gateway", "0.1.0", [wire.span(data)]))
    (resource_spans,) = request.resource_spans
    assert resource_spans.resource.attributes[0].value.string_value == "gw"
    (scope_spans,) = resource_spans.scope_spans
    assert (scope_spans.scope.name, scope_spans.scope.version) == ("llm-gateway", "0.1.0")
    (decoded,) = scope_spans.spans
    assert decoded.trace_id == bytes(range(16)) and decoded.span_id == (7).to_bytes(8, "big")
    assert decoded.parent_span_id == b"\x09" * 8
    assert decoded.name == "chat gpt-4o-mini #7" and decoded.kind == Span.SPAN_KIND_SERVER
    assert (decoded.start_time_unix_nano, decoded.end_time_unix_nano) == (data.start_ns, data.end_ns)
    values = {kv.key: kv.value for kv in decoded.attributes}
    assert values["text"].string_value == "naïve ✓"
    assert values["flag"].bool_value is True
    assert values["count"].int_value == 1234567890123 and values["negative"].int_value == -7
    assert values["ratio"].double_value == 0.125
    assert [v.string_value for v in values["reasons"].array_value.values] == ["stop", "length"]
    assert values["empty"].WhichOneof("value") == "string_value"
    assert decoded.status.code == Status.STATUS_CODE_ERROR and decoded.status.message == "no"
    assert decoded.flags & 0xFF == 1  # sampled


def test_an_end_before_the_start_is_clamped_to_the_start() -> None:
    (decoded,) = (
        decode(wire.export_request([], "s", "", [wire.span(span(end_ns=1))])).resource_spans[0].scope_spans[0].spans
    )
    assert decoded.end_time_unix_nano == decoded.start_time_unix_nano


class Collector:
    """An httpx transport standing in for a collector: records bodies, may hold every export until released, or
    take `delay_s` to answer each; `arrived` is set once an export reaches it."""

    def __init__(self, status: int = 200, hold: bool = False, delay_s: float = 0.0) -> None:
        self.status = status
        self.delay_s = delay_s
        self.bodies: list[bytes] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrived.set()
        self.release.wait(10)
        time.sleep(self.delay_s)
        self.bodies.append(request.content)
        assert request.headers["content-type"] == "application/x-protobuf"
        return httpx.Response(self.status)

    def spans(self) -> list[str]:
        return [s.name for body in self.bodies for s in decode(body).resource_spans[0].scope_spans[0].spans]


def exporter(collector: Collector, **options: object) -> BatchExporter:
    return BatchExporter(
        "http://collector/v1/traces",
        {"authorization": "Bearer t"},
        [("service.name", "gw")],
        transport=httpx.MockTransport(collector),
        **options,  # type: ignore[arg-type]
    )


def queue(batcher: BatchExporter, *spans: wire.SpanData) -> None:
    batcher.submit(len(spans), lambda: list(spans))


def held_first(batcher: BatchExporter, collector: Collector) -> None:
    """One span queued, and waited on until the exporter's thread has taken it and sends it to `collector`, which
    holds it: what is queued next waits behind it."""
    queue(batcher, span(1))
    assert collector.arrived.wait(10), "the exporter's thread never sent the first span"


def test_close_flushes_everything_queued_in_batches() -> None:
    collector = Collector()
    batcher = exporter(collector, batch_size=3, schedule_delay_s=60)
    for number in range(1, 8):
        queue(batcher, span(number))
    batcher.close()
    assert collector.spans() == [f"chat gpt-4o-mini #{n}" for n in range(1, 8)]
    assert len(collector.bodies) >= 3 and batcher.exported == 7 and batcher.dropped == 0


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    collector = Collector(hold=True)  # the collector holds the first export: the queue fills behind it
    counted: list[int] = []
    batcher = exporter(collector, batch_size=1, queue_size=2, schedule_delay_s=0.01, on_drop=counted.append)
    held_first(batcher, collector)
    for number in range(2, 12):
        queue(batcher, span(number))
    assert batcher.dropped == 8 and sum(counted) == 8
    collector.release.set()
    batcher.close()
    assert collector.spans() == ["chat gpt-4o-mini #1", "chat gpt-4o-mini #2", "chat gpt-4o-mini #3"]


def test_the_queue_is_bounded_in_the_bytes_its_requests_hold_too() -> None:
    """A request whose content is captured holds its prompt and its answer's head until its spans are built: with a
    collector that never answers, a queue bounded in spans alone held them all (review: 88 MB for 40 answers)."""
    collector = Collector(hold=True)
    batcher = exporter(collector, batch_size=1, queue_bytes=3_000_000, schedule_delay_s=0.01)
    held_first(batcher, collector)
    for number in range(2, 7):
        batcher.submit(1, lambda number=number: [span(number)], 1_000_000)  # (the 4th, 5th and 6th: past 3 MB)
    batcher.submit(1, lambda: [span(7)])  # (holding nothing: it fits)
    assert batcher.dropped == 2
    collector.release.set()
    batcher.close()
    assert collector.spans() == [f"chat gpt-4o-mini #{n}" for n in (1, 2, 3, 4, 7)]


def test_a_refusing_collector_counts_the_batch_as_dropped() -> None:
    collector = Collector(status=400)
    batcher = exporter(collector, schedule_delay_s=60)
    queue(batcher, span(1), span(2))
    batcher.close()
    assert batcher.dropped == 2 and batcher.exported == 0 and len(collector.bodies) == 1  # a 400 is not retried


def test_spans_submitted_after_close_are_dropped() -> None:
    collector = Collector()
    batcher = exporter(collector)
    batcher.close()
    queue(batcher, span(1))
    assert batcher.dropped == 1 and collector.bodies == []


def test_spans_that_fail_to_build_are_dropped_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector()
    batcher = exporter(collector, schedule_delay_s=60)

    def broken() -> list[wire.SpanData]:
        raise ValueError("a request recorded something odd")

    batcher.submit(3, broken)
    queue(batcher, span(4))
    batcher.close()
    assert batcher.dropped == 3 and collector.spans() == ["chat gpt-4o-mini #4"]
    assert "building a request's spans failed" in caplog.text


def test_a_flush_waits_no_longer_than_its_bound_and_keeps_what_it_could_not_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collector that holds the export (one that never answers; or an export in flight when Lambda froze the
    environment): the flush sent on the caller's thread and waited for the export's own timeouts (10 s, retried: 20 s
    on Lambda). Now it returns at its bound with the spans still queued; the next flush does not wait for that
    collector at all, and once it answers the spans go out, none dropped."""
    collector = Collector(hold=True)
    batcher = exporter(collector, schedule_delay_s=60)
    queue(batcher, span(1))
    started = time.monotonic()
    sent = batcher.flush(0.2)
    assert time.monotonic() - started < 0.2 + 0.5
    assert sent is False
    queue(batcher, span(2))
    started = time.monotonic()
    sent = batcher.flush(0.2)  # the export is still in flight: no second wait for it
    assert time.monotonic() - started < 0.1
    assert sent is False
    assert caplog.text.count("OTLP export did not finish within 0.2 s") == 1
    collector.release.set()
    deadline = time.monotonic() + 5
    while batcher.exported < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert collector.spans() == ["chat gpt-4o-mini #1", "chat gpt-4o-mini #2"] and batcher.dropped == 0
    queue(batcher, span(3))
    assert batcher.flush(5) is True  # an export landed: flushes wait again
    batcher.close()
    assert collector.spans()[-1] == "chat gpt-4o-mini #3"


def test_a_flush_cut_short_does_not_keep_a_later_flush_given_longer_from_waiting() -> None:
    """A healthy collector slower than the first flush's bound. A Lambda invocation that ends with 300 ms left gives
    its flush (300 - 250) ms (`flush_bound`), which runs out, as it should; that marked the exporter stalled, as if
    the collector were down, and the next invocation's flush, with 10 s left and so its whole 2 s, returned False at
    once, its span unsent (on Lambda the environment is then frozen with it). A flush given longer than the one that
    ran out waits again (one given no longer still does not: `test_a_flush_waits_no_longer_than_its_bound...`). Found
    by review. The collector answers 0.3 s into the second flush, not 0.3 s after the export: a pause of the process
    longer than that (a full collection late in the suite) let the answer come within the first flush's 50 ms."""
    collector = Collector(hold=True)
    batcher = exporter(collector, schedule_delay_s=60)
    try:
        queue(batcher, span(1))
        assert batcher.flush((300 - 250) / 1000) is False  # invocation 1
        queue(batcher, span(2))
        answers = threading.Timer(0.3, collector.release.set)
        answers.start()
        started = time.monotonic()
        sent = batcher.flush(2.0)  # invocation 2
        waited = time.monotonic() - started
        assert sent is True, f"the 2 s flush returned False after {waited:.3f} s, its span unsent"
        assert collector.spans() == ["chat gpt-4o-mini #1", "chat gpt-4o-mini #2"] and batcher.dropped == 0
    finally:
        collector.release.set()
        batcher.close(5)


def test_close_ends_within_its_bound_and_counts_what_it_could_not_send(caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector(status=503, hold=True)
    counted: list[int] = []
    batcher = exporter(collector, schedule_delay_s=60, on_drop=counted.append)
    queue(batcher, span(1), span(2))
    queue(batcher, span(3))
    started = time.monotonic()
    batcher.close(0.3)
    assert time.monotonic() - started < 0.3 + 0.5
    assert batcher.dropped == 3 and sum(counted) == 3
    assert "OTLP exporter stopped with 3 spans not sent within 0.3 s" in caplog.text
    collector.release.set()  # the export in flight fails late: its spans are not counted a second time
    batcher._thread.join(5)
    assert batcher.dropped == 3
