"""Logs, metrics and traces with Powertools for AWS Lambda.

One JSON log line per request (request id, key id, model, provider, region, status, cost, latency
split, route), never a secret: nothing from request headers or bodies is logged. The request line has
the layout of Powertools' Logger (level, location, message, timestamp, service, then the fields) but
is written with one `orjson.dumps` and one write: going through `logging` and Powertools' formatter
cost more than the rest of the gateway's own work (docs/performance.md has the figures). Everything else logs through
Powertools' Logger. Metrics go out in
CloudWatch's embedded metric format (EMF) on Lambda, or anywhere `GATEWAY_METRICS=on`. Traces wrap
upstream and store calls in X-Ray subsegments when Powertools tracing is active on Lambda, and go out over
OTLP/HTTP where an endpoint is configured (handler/telemetry/tracing.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from handler.redaction import redact_message
from handler.telemetry import prometheus

if TYPE_CHECKING:
    from handler.ports import KeyRecord, ProviderAdapter, Target
    from handler.schemas import Usage
    from handler.telemetry.tracing import Trace


# What telemetry reads of a request, and no more: the pipeline's `Exchange` is one (mypy checks it where the
# pipeline passes it in), and telemetry needs nothing else of the pipeline.
class Sent(Protocol):
    """An upstream attempt: where it went."""

    @property
    def model(self) -> str: ...  # the public model it served
    @property
    def target(self) -> Target: ...
    @property
    def adapter(self) -> ProviderAdapter: ...


class Charged(Protocol):
    """What a request cost."""

    @property
    def provider_usd(self) -> float | None: ...
    @property
    def fee_usd(self) -> float: ...
    @property
    def total_usd(self) -> float | None: ...
    @property
    def usage(self) -> Usage: ...


class Labelled(Protocol):
    """The attribution a client sent: its agent session and tags."""

    @property
    def session(self) -> str | None: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


class Observed(Protocol):
    """One request as its log line, metrics and spans see it."""

    trace: Trace | None  # (written: a request's spans are finished once)

    @property
    def request_id(self) -> str: ...
    @property
    def key(self) -> KeyRecord: ...
    @property
    def model(self) -> str: ...
    @property
    def named_model(self) -> str: ...  # (`model` as the line and spans carry it)
    @property
    def user(self) -> str | None: ...
    @property
    def controls(self) -> Labelled: ...
    @property
    def route(self) -> Sequence[str]: ...
    @property
    def attempts(self) -> int: ...
    @property
    def started(self) -> float: ...
    @property
    def store_ms(self) -> float: ...
    @property
    def upstream_ms(self) -> float: ...
    @property
    def attempt(self) -> Sent | None: ...
    @property
    def cost(self) -> Charged | None: ...


SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "llm-gateway")
logger = Logger(service=SERVICE, level=os.environ.get("POWERTOOLS_LOG_LEVEL", "INFO"))
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "LLMGateway")
METRICS_ON = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or os.environ.get("GATEWAY_METRICS") == "on"
METRICS_DISABLED = is_metrics_disabled()  # POWERTOOLS_METRICS_DISABLED (or POWERTOOLS_DEV), as Powertools reads it
TRACING_ON = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) and os.environ.get("POWERTOOLS_TRACE_DISABLED") != "true"


def _tracer() -> Any:
    if not TRACING_ON:
        return None
    try:
        from aws_lambda_powertools import Tracer

        return Tracer(service=SERVICE)
    except Exception:  # noqa: BLE001 - no X-Ray SDK in this build: run untraced rather than fail
        return None


tracer = _tracer()
REQUEST_LINES = logger.log_level <= logging.INFO


_second: list[Any] = [0, ""]  # the last second formatted, and its text


def timestamp(now: float) -> str:
    """Powertools' timestamp layout (`2026-11-28 05:33:48,123+0000`), formatting each second once."""
    second = int(now)
    if _second[0] != second:
        _second[:] = [second, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))]
    return f"{_second[1]},{int(now % 1 * 1000):03d}+0000"


def request_line(fields: dict[str, Any], location: str) -> None:
    """Write one request's log line (see the module docstring)."""
    if not REQUEST_LINES:
        return
    head = {
        "level": "INFO",
        "location": location,
        "message": "request",
        "timestamp": timestamp(time.time()),
        "service": SERVICE,
    }
    head.update(fields)
    try:
        line = orjson.dumps(head)
    except TypeError:  # (orjson's refusal of a str UTF-8 cannot carry: see `carried`)
        line = orjson.dumps(carried(head))
    sys.stdout.write(line.decode() + "\n")


def carried(value: Any) -> Any:
    """`value` with each string in it that UTF-8 cannot carry (a lone surrogate, which a Lambda event's JSON can hold)
    written as one it can, `?` for each such character: orjson raises on the string, and the request's line, then the
    last-resort 500's line for it, would never be written, the answer a plain-text 500."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {carried(name): carried(inner) for name, inner in value.items()}
    if isinstance(value, list | tuple):
        return [carried(inner) for inner in value]
    return value


# Every log record the process makes carries no secret, whoever makes it: the gateway's loggers, uvicorn's `Exception in
# ASGI application` and Mangum's `Exception in 'http' protocol.` (each with the traceback of an error the app did not
# expect), asyncio's `Task exception was never retrieved`, a library's. An error's words may quote what it was handling
# (an HTTP library's refusal of a header value quotes the provider key in it), and a traceback gives them again, with
# those of the errors it chains; and a field given as `extra=` may be those words (`"reason": str(exc)`). The redaction
# runs as the record is made (`redacted_record`, the process's record factory; its `extra=` fields as
# `Logger.makeRecord` sets them after, `redacted_extras`): a filter on the root logger is not consulted for the records
# of the loggers under it (`gateway`'s, `uvicorn.error`'s), and one on a handler only where the handler is known when it
# is added (Lambda's runtime adds the root's, uvicorn its own, pytest its own per test).
class RedactedText(str):
    """A log message whose words and arguments are redacted already (the buffered function's access line, its method
    and path `path_clipped`): `redacted_record` leaves it as it is, so that a request's line pays for its redaction
    once. A record with a traceback or a stack is redacted whatever its message."""


TRACEBACKS = logging.Formatter()  # (formats a record's traceback as `logging.Formatter` writes it: `exc_text`)


def redacted(record: logging.LogRecord) -> None:
    """`record`'s message, and the traceback and stack it carries, with every known secret and credential-shaped
    value redacted (`redaction.redact_message`), in place. Its traceback is formatted here once and kept formatted
    (`exc_text`, which `logging.Formatter` writes rather than format it again). A traceback a secret was redacted
    from is no longer carried as the exception (a formatter would format it again, whole): Powertools' formatter
    writes it as it writes any, from the record's `exception` and `exception_name`."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - arguments that do not fit the message: its handler says so, as logging does
        message = None
    if message is not None and (said := redact_message(message)) != message:
        record.msg, record.args = said, None
    if record.exc_info and record.exc_info[0] is not None:
        text = TRACEBACKS.formatException(record.exc_info)
        record.exc_text = redact_message(text)
        if record.exc_text != text:
            record.exception, record.exception_name = record.exc_text, record.exc_info[0].__name__
            record.exc_info = None
    if record.stack_info:
        record.stack_info = redact_message(record.stack_info)


def redacted_records(made: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A record factory making each record as `made` does, `redacted` (but a `RedactedText` message without a
    traceback or a stack: already redacted)."""

    def redacted_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        if type(record.msg) is not RedactedText or record.exc_info or record.stack_info:
            redacted(record)
        return record

    return redacted_record


logging.setLogRecordFactory(redacted_records(logging.getLogRecordFactory()))


def redacted_field(value: Any) -> Any:
    """A record's field (an `extra=`'s value) as `redacted` leaves a message: a string `redact_message`ed, each name
    and value of a dict and each member of a list so (a spooled settlement, a Lambda event's field names); a number,
    a flag or None as it is; anything else as the text a formatter writes of it (`str`: an error's, which may quote a
    key), redacted."""
    if isinstance(value, str):
        return redact_message(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {redacted_field(name): redacted_field(inner) for name, inner in value.items()}
    if isinstance(value, list | tuple):
        return [redacted_field(inner) for inner in value]
    return redact_message(str(value))


def redacted_extras(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """`Logger.makeRecord` as `make` does it, with each field a call gives as `extra=` `redacted_field`: a JSON
    formatter writes every one (Powertools', the gateway's `logger`; Lambda's runtime's, in its JSON log format), and
    `makeRecord` sets them on the record after the record factory (`redacted_record`) has made it. A record without
    `extra=` costs one call more (the buffered function's access line: 0.04 µs)."""

    def redacted_made(
        self: logging.Logger,
        name: str,
        level: int,
        fn: str,
        lno: int,
        msg: object,
        args: Any,
        exc_info: Any,
        func: str | None = None,
        extra: Mapping[str, object] | None = None,
        sinfo: str | None = None,
    ) -> logging.LogRecord:
        record = make(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo)
        if extra:
            fields = record.__dict__
            for field in extra:
                fields[field] = redacted_field(fields[field])
        return record

    return redacted_made


# (On the class: every logger is one, or its subclass: the root, `gateway`'s, uvicorn's, Mangum's, the logger under
# Powertools' `Logger`, whenever it was made.)
logging.Logger.makeRecord = redacted_extras(logging.Logger.makeRecord)  # type: ignore[method-assign]


class _Untraced:
    """What `span` gives when tracing is off: no generator, no context manager built per call."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


UNTRACED = _Untraced()


def span(name: str, **annotations: str) -> contextlib.AbstractAsyncContextManager[None]:
    """An X-Ray subsegment around an upstream or store call; nothing when tracing is off."""
    return UNTRACED if tracer is None else _subsegment(name, annotations)


@contextlib.asynccontextmanager
async def _subsegment(name: str, annotations: dict[str, str]) -> AsyncIterator[None]:
    async with tracer.provider.in_subsegment_async(name) as subsegment:
        for key, value in annotations.items():
            subsegment.put_annotation(key, value)
        yield


def to_microsecond(ms: float) -> float:
    """A duration in milliseconds (not negative) to three decimals, as `round(ms, 3)` gives it but for a tie in the
    digits past the third: `round` with digits formats and parses the float (some 3,000 instructions, four in every
    request's line), where a whole number of microseconds over 1,000 is one rounding and one division."""
    return round(ms * 1000) / 1000


def observe(
    ex: Observed,
    status: int,
    *,
    stream: bool = False,
    code: str | None = None,
) -> None:
    """The request's one log line, its metrics, and its spans when OTLP export is on (a whole answer is handed to
    its trace before: `Trace.answered`)."""
    ended = time.perf_counter()
    trace = ex.trace
    if trace is not None:
        trace.tracer.finish(ex, status, code, stream, ended)
    total = (ended - ex.started) * 1000
    target = ex.attempt.target if ex.attempt else None
    cost = ex.cost
    fields: dict[str, Any] = {
        "request_id": ex.request_id,
        "key_id": ex.key.id,
        "model": ex.named_model,
        "provider": target.provider if target else None,
        "upstream_model": target.model if target else None,
        "region": target.runs_in if target else None,
        "status": status,
        "stream": stream,
        "route": ", ".join(ex.route),
        "cost_usd": cost.provider_usd if cost else None,
        "fee_usd": cost.fee_usd if cost else None,
        "input_tokens": cost.usage.prompt_tokens if cost else None,
        "output_tokens": cost.usage.completion_tokens if cost else None,
        "latency_ms": to_microsecond(total),
        "gateway_ms": to_microsecond(max(0.0, total - ex.store_ms - ex.upstream_ms)),
        "store_ms": to_microsecond(ex.store_ms),
        "upstream_ms": to_microsecond(ex.upstream_ms),
    }
    if code:
        fields["error_code"] = code
    request_line(fields, "observe")
    served = ex.attempt.model if ex.attempt else ex.model  # the ledger's model: after a fallback, not the asked
    prometheus.REGISTRY.record(
        model=served,
        provider=fields["provider"],
        region=fields["region"],
        status=status,
        code=code,
        seconds=total / 1000,
        added_seconds=fields["gateway_ms"] / 1000,
        input_tokens=cost.usage.prompt_tokens if cost else 0,
        output_tokens=cost.usage.completion_tokens if cost else 0,
        cost_usd=fields["cost_usd"],
        fee_usd=cost.fee_usd if cost else 0.0,
    )
    if not METRICS_ON:
        return
    values = [
        ("latency", "Milliseconds", total),
        ("gateway_overhead", "Milliseconds", fields["gateway_ms"]),
        ("requests", "Count", 1),
        ("errors", "Count", 1 if status >= 500 else 0),
        ("fallbacks", "Count", max(0, ex.attempts - 1) if len(ex.route) > 1 else 0),  # (one entry: none, unread)
    ]
    if cost is not None:
        values += [("input_tokens", "Count", cost.usage.prompt_tokens)]
        values += [("output_tokens", "Count", cost.usage.completion_tokens)]
    if cost is not None and cost.total_usd is not None:
        # (The providers' cost and the fee together: not `cost_usd`, which the request's line beside it, the ledger
        # and `x-gateway-cost-usd` give as the providers' cost alone.)
        values += [("spend_usd", "None", cost.total_usd)]
    # The dimensions Prometheus' labels are: a model or provider the config does not name is `other` (a client
    # cannot add metrics to CloudWatch, each billed, by naming models; nor put a key in one).
    provider = target.provider if target else "none"
    emf_line({"provider": provider, "model": prometheus.REGISTRY.model_label(served)}, values)


def emf_line(dimensions: dict[str, str], values: list[tuple[str, str, float]]) -> None:
    """One request's metrics in CloudWatch's embedded metric format: the line Powertools' `Metrics` writes for
    the same dimensions and `(name, unit, value)`s (same members in the same order; the unit is its
    `MetricUnit` value), written with one `orjson.dumps`: Powertools' per-metric validation and `json` encoder
    cost a request more than the rest of its log line and metrics (docs/performance.md)."""
    if METRICS_DISABLED:
        return
    dimensions = {name: value for name, value in dimensions.items() if value.strip()}  # (Powertools skips blanks)
    dimensions.setdefault("service", SERVICE)
    line = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": name, "Unit": unit} for name, unit, _ in values],
                }
            ],
        },
        **dimensions,
        **{name: [float(value)] for name, _, value in values},
    }
    sys.stdout.write(orjson.dumps(line).decode() + "\n")


def spool_metrics(pending: int, *, spooled: int = 0, landed: int = 0) -> None:
    """The settlement spool's metrics (handler/pipeline/spool.py), one EMF line with the service as its only dimension:
    `settlements_spooled`, each time a settlement is spooled (the template's alarm's input: written by the
    invocation that spooled it, before it answers, so an environment frozen or recycled next cannot keep it from
    CloudWatch, as it can keep the later re-drives that `pending_settlements` alone relies on); `settlements_landed`,
    spooled settlements a re-drive landed; and `pending_settlements`, how many wait in this process's spool, at each
    of those and every re-drive. Flushed at once: the line is rare, and a freeze right after must not hold it."""
    if not METRICS_ON:
        return
    values: list[tuple[str, str, float]] = [("pending_settlements", "Count", pending)]
    if spooled:
        values.append(("settlements_spooled", "Count", spooled))
    if landed:
        values.append(("settlements_landed", "Count", landed))
    emf_line({}, values)
    sys.stdout.flush()


def observe_failure(
    request_id: str | None,
    path: str,
    status: int,
    code: str,
    *,
    key_id: str | None = None,
    counted: bool = True,
    started: float | None = None,
) -> None:
    """A request that failed before it had an exchange (bad key, bad JSON, ...): its log line (with its key's id,
    once the key was known), and, for a request to a model (`counted`), its metrics: the request metrics count
    requests to models, whole, so the key, admin and usage routes are in neither their successes nor failures.
    `started`: when the request came in (`time.perf_counter()`); its time is in the duration histograms as the
    request is in the counts (all of it the gateway's own: no upstream was asked)."""
    seconds = max(0.0, time.perf_counter() - started) if started is not None else 0.0
    fields: dict[str, Any] = {"request_id": request_id, "path": path, "status": status, "error_code": code}
    if key_id is not None:
        fields["key_id"] = key_id
    fields["latency_ms"] = round(seconds * 1000, 3)
    request_line(fields, "observe_failure")
    if not counted:
        return
    prometheus.REGISTRY.failure(status, code, seconds)
    if METRICS_ON:
        values: list[tuple[str, str, float]] = [
            ("latency", "Milliseconds", seconds * 1000),
            ("gateway_overhead", "Milliseconds", seconds * 1000),
            ("requests", "Count", 1),
            ("errors", "Count", 1 if status >= 500 else 0),
        ]
        emf_line({"provider": "none", "model": prometheus.OTHER}, values)
