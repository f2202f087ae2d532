"""Traces around upstream and store calls: X-Ray subsegments when tracing is on, no work when it is off; and the
request's log line."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from handler.telemetry import observability
from handler.telemetry.observability import UNTRACED, span


class FakeSubsegment:
    def __init__(self, name: str, opened: list[Any]) -> None:
        self.name = name
        self.annotations: dict[str, str] = {}
        self.closed = False
        opened.append(self)

    def put_annotation(self, key: str, value: str) -> None:
        self.annotations[key] = value


class FakeProvider:
    """The part of the X-Ray provider Powertools' Tracer exposes that `span` uses."""

    def __init__(self) -> None:
        self.opened: list[FakeSubsegment] = []

    @contextlib.asynccontextmanager
    async def in_subsegment_async(self, name: str) -> AsyncIterator[FakeSubsegment]:
        subsegment = FakeSubsegment(name, self.opened)
        try:
            yield subsegment
        finally:
            subsegment.closed = True


class FakeTracer:
    def __init__(self) -> None:
        self.provider = FakeProvider()


async def test_untraced_spans_share_one_no_op_context() -> None:
    assert observability.tracer is None  # tests run off Lambda
    assert span("store.admit") is UNTRACED
    async with span("upstream", provider="openai", region="us-east-1") as value:
        assert value is None


async def test_traced_spans_open_an_annotated_subsegment(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = FakeTracer()
    monkeypatch.setattr(observability, "tracer", tracer)
    async with span("upstream", provider="openai", region="eu-west-1"):
        (subsegment,) = tracer.provider.opened
        assert subsegment.name == "upstream"
        assert subsegment.annotations == {"provider": "openai", "region": "eu-west-1"}
        assert not subsegment.closed
    assert subsegment.closed


async def test_a_failing_call_still_closes_its_subsegment(monkeypatch: pytest.MonkeyPatch) -> None:
    tracer = FakeTracer()
    monkeypatch.setattr(observability, "tracer", tracer)
    with pytest.raises(TimeoutError):
        async with span("store.admit"):
            raise TimeoutError
    assert tracer.provider.opened[0].closed


def test_a_request_line_holding_text_utf8_cannot_carry_is_still_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lone surrogate (a Lambda event's path can hold one) made orjson raise: the request's line, and the line of
    the last-resort 500 that followed, were never written, and the answer was a plain-text 500 (found by review)."""
    monkeypatch.setattr(observability, "REQUEST_LINES", True)
    observability.request_line({"path": "/v1/models/\ud800", "tags": ["a\udfffb"], "status": 404}, "observe")
    line = orjson.loads(capsys.readouterr().out)
    assert line["path"] == "/v1/models/?" and line["tags"] == ["a?b"] and line["status"] == 404
    assert line["message"] == "request" and line["location"] == "observe"
