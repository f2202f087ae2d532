"""Traces around upstream and store calls: X-Ray subsegments when tracing is on, no work when it is off; the
request's log line; and the redaction of every log record."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from uvicorn.logging import DefaultFormatter

from handler.entry.adapter import ACCESS_LINE
from handler.pipeline.provider_keys import header_secrets
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


# --- no secret in a log record, whoever makes it ----------------------------------------------------------------------

PROVIDER_KEY = "Zq8xLmN4pR7tVw2yBc5dEf9gHj3kMn6P"  # a Mistral-like key: no shape, known only as registered


def failure() -> BaseException:
    """An error that quotes the request it was handling, chained to another that quotes it too."""
    try:
        try:
            raise ValueError(f"header value 'Bearer {PROVIDER_KEY}'")
        except ValueError as cause:
            raise RuntimeError(f"illegal header value {PROVIDER_KEY!r}") from cause
    except RuntimeError as exc:
        return exc


def written(record: logging.LogRecord) -> list[str]:
    """`record` as each formatter the gateway's records meet writes it: Python's (Lambda's runtime, pytest, logging's
    last resort), uvicorn's (`uvicorn.error`) and Powertools' (the gateway's `logger`)."""
    formatters = [logging.Formatter(), DefaultFormatter("%(levelprefix)s %(message)s"), LambdaPowertoolsFormatter()]
    return [formatter.format(record) for formatter in formatters]


@pytest.mark.parametrize("name", ["gateway", "uvicorn.error", "mangum.http", "asyncio", "llm-gateway", ""])
def test_a_logged_traceback_holds_no_secret_whichever_logger_logs_it(
    name: str, only_secrets: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """`logger.exception("unhandled error")` (the app's last resort), uvicorn's `Exception in ASGI application` and
    Mangum's `Exception in 'http' protocol.` after it, asyncio's `Task exception was never retrieved`: each logged the
    traceback of an error that quoted the provider key, whole (found by review: only a few call sites redacted
    `str(exc)`, none a traceback). Every record is redacted as it is made, whichever logger makes it: its message,
    its traceback with the errors it chains, and its stack; the traceback is still written, as each formatter
    writes one."""
    only_secrets(PROVIDER_KEY)
    caplog.set_level(logging.DEBUG, logger=name or None)
    exc = failure()
    logging.getLogger(name).error(f"failed: {exc}", exc_info=exc, stack_info=True)
    [record] = [record for record in caplog.records if record.name == (name or "root")]
    lines = written(record)
    for line in lines:
        assert PROVIDER_KEY not in line, line
        assert "Traceback (most recent call last)" in line, line
        assert "RuntimeError: illegal header value '[REDACTED]'" in line, line
        assert "ValueError: header value 'Bearer [REDACTED]'" in line, line
    assert all("Stack (most recent call last)" in line for line in lines[:2])  # (Powertools writes no stack)
    assert orjson.loads(lines[2])["exception_name"] == "RuntimeError"


def test_a_record_without_a_secret_is_left_as_it_was_made(caplog: pytest.LogCaptureFixture) -> None:
    """A message and traceback holding no secret keep their form (its message and arguments apart, its exception):
    only what a secret was redacted from changes."""
    caplog.set_level(logging.INFO, logger="gateway")
    try:
        raise KeyError("absent")
    except KeyError:
        logging.getLogger("gateway").warning("store unavailable: %s", "busy", exc_info=True)
    [record] = caplog.records
    assert (record.msg, record.args, record.getMessage()) == (
        "store unavailable: %s",
        ("busy",),
        "store unavailable: busy",
    )
    assert record.exc_info is not None and record.exc_text is not None and "KeyError: 'absent'" in record.exc_text


def test_a_message_redacted_already_is_not_redacted_again(
    only_secrets: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """The buffered function's access line (`mangum.http`, one a request) is written of a method and a path each
    redacted as they are clipped (`path_clipped`): marked `RedactedText`, its record is made without a second pass.
    (The mark is the call site's word: what is given with it is not looked at.) A traceback beside it still is."""
    only_secrets(PROVIDER_KEY)
    caplog.set_level(logging.INFO, logger="mangum.http")
    log = logging.getLogger("mangum.http")
    log.info(ACCESS_LINE, "GET", f"/v1/models/{PROVIDER_KEY}", 404)
    log.info(ACCESS_LINE, "GET", f"/v1/models/{PROVIDER_KEY}", 500, exc_info=failure())
    marked, failed = caplog.records
    assert marked.args == ("GET", f"/v1/models/{PROVIDER_KEY}", 404)  # (as given: the call site redacts)
    assert PROVIDER_KEY not in "".join(written(failed))


GATEWAY_KEY = "gwk_a2b3c4d5e6f7_" + "Qx9" * 14 + "z"  # (a gateway key: its id, then 43 of its secret's alphabet)
BASIC = base64.b64encode(b"proxy:Tr0ub4dor&3x").decode()  # (a provider's Basic credential: its user and password)


@pytest.mark.parametrize("name", ["gateway", "uvicorn.error", "mangum.http", "llm-gateway", ""])
def test_a_records_extra_fields_hold_no_secret_whichever_logger_logs_them(
    name: str, only_secrets: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    """`logger.error("the settlement spool cannot be read", extra={"reason": str(exc)})` wrote the error's words
    whole, a key it quoted too: a record's `extra=` fields are set after the record factory redacts the record, and a
    JSON formatter writes each (Powertools', the gateway's `logger`; Lambda's runtime's in its JSON log format). Each
    field is redacted as the message is, within a dict or a list too, and one of another type as the text a formatter
    writes of it; a number, a flag or None is kept as it is."""
    only_secrets(PROVIDER_KEY, *header_secrets(f"Basic {BASIC}"))  # (as the gateway registers a provider's header)
    caplog.set_level(logging.DEBUG, logger=name or None)
    extra = {
        "reason": f"refused: Bearer {PROVIDER_KEY}",
        "settlement": {"user": GATEWAY_KEY, "tags": [f"note={PROVIDER_KEY}"], "cost_usd": 0.2, "stream": True},
        "sent": ("Authorization", f"Basic {BASIC}"),
        "failure": failure(),
        "password": "its password Tr0ub4dor&3x",
        "pending": 2,
        "region": None,
    }
    logging.getLogger(name).warning("the settlement spool cannot be read", extra=extra)
    [record] = [record for record in caplog.records if record.name == (name or "root")]
    named = logging.Formatter("%(message)s %(reason)s %(settlement)s %(sent)s %(failure)s %(password)s")
    lines = [*written(record), named.format(record)]
    for line in lines:
        for secret in (PROVIDER_KEY, GATEWAY_KEY, BASIC, "Tr0ub4dor&3x"):
            assert secret not in line, line
    fields = orjson.loads(lines[2])  # (Powertools' line)
    assert fields["reason"] == "refused: Bearer [REDACTED]"
    assert fields["settlement"] == {"user": "[REDACTED]", "tags": ["note=[REDACTED]"], "cost_usd": 0.2, "stream": True}
    assert fields["sent"] == ["Authorization", "[REDACTED]"]
    assert fields["failure"] == "illegal header value '[REDACTED]'"
    assert (fields["password"], fields["pending"], record.region) == ("its password [REDACTED]", 2, None)


def test_the_gateways_json_logger_writes_no_secret_in_a_records_fields(only_secrets: Callable[..., None]) -> None:
    """The line Powertools' `Logger` (`observability.logger`, the spool's and the start-up's) writes, as its own
    handler writes it: the spool's `reason`, an error's words, carried the provider key they quoted."""
    only_secrets(PROVIDER_KEY)
    written = io.StringIO()
    to_the_log = logging.StreamHandler(written)
    to_the_log.setFormatter(observability.logger.registered_handler.formatter)
    observability.logger.addHandler(to_the_log)
    try:
        observability.logger.error(
            "the settlement spool cannot be read or written", extra={"reason": f"[Errno 13] {PROVIDER_KEY}"}
        )
    finally:
        observability.logger.removeHandler(to_the_log)
    line = orjson.loads(written.getvalue())
    assert line["reason"] == "[Errno 13] [REDACTED]" and PROVIDER_KEY not in written.getvalue()
