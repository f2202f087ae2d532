"""Each proxied request as an OpenTelemetry span, exported over OTLP/HTTP (docs/observability.md).

The request's span follows the OpenTelemetry GenAI semantic conventions (`gen_ai.*`) and carries the
gateway's own figures (`gateway.*`: route, cost, fee, retries, key id, never the key's secret). Its children
are the store round trip that admits the request and one span per upstream attempt. A request records what
its spans need on its `Trace` (a few appends) and, when it is observed, queues a builder of its spans with the
exporter; building, encoding and sending happen on the exporter's thread, off the request's path. An incoming
W3C `traceparent` is continued (its trace id, the caller's span as parent, its sampling decision).

Prompts and answers are exported only with `observability.otlp.capture_content: true`, and then with every
known secret and credential-shaped value redacted (handler/redaction.py), as written or JSON-escaped, and the secret
alone of the request's key or an ancestor (`captured`), cut across a stream's deltas too (`Trace.output`).
"""

from __future__ import annotations

import functools
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from handler.config import (
    ConfigError,
    SecretFetcher,
    SecretUnreadableError,
    header_name_problem,
    header_value_problem,
    resolve_credential,
)
from handler.otlp_config import OtlpConfig
from handler.records import Value
from handler.redaction import redact_message, scrub, without_hashed_secrets
from handler.wire import RESPONSES_DELTAS, messages_text, responses_text

if TYPE_CHECKING:
    from adapters.otlp.exporter import BatchExporter
    from adapters.otlp.wire import AttributeValue, SpanData
    from handler.schemas import ChatRequest
    from handler.telemetry.observability import Observed, Sent

# W3C Trace Context's `traceparent`: version 00 is these four fields exactly; a higher version (not ff) is read as
# version 00 from its first four fields, as the spec says it SHOULD be, whatever follows them after a dash.
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
CONTENT_CHARS = 64 * 1024  # a captured prompt or answer is cut here, once redacted
# What is kept past the cut until the redaction has run: a secret across the cut, cut before it is redacted, would
# go out as its head with a few characters of its secret; any key or token is far shorter than this.
CUT_MARGIN = 1024
# The most of a whole answer's body that a captured answer can read: its first `CONTENT_CHARS + CUT_MARGIN`
# characters, at most four UTF-8 bytes each. Only that much is kept for the exporter's thread, however large the body.
ANSWER_BYTES = 4 * (CONTENT_CHARS + CUT_MARGIN)
# What each proxied route is, as `gen_ai.operation.name`.
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/embeddings": "embeddings",
    "/v1/messages/count_tokens": "count_tokens",
}
# The events that end a Messages (`message_delta` carries the stop reason) or a Responses stream.
FINAL_EVENTS = frozenset({"message_delta", "response.completed", "response.incomplete", "response.failed"})
# Span kinds and status codes of OTLP's Span message (adapters/otlp/wire.py, without importing it).
SERVER, CLIENT, ERROR = 2, 3, 2

Attributes = list[tuple[str, "AttributeValue"]]


@dataclass(slots=True)
class Step:
    """A child span: a store round trip or an upstream attempt (times from `time.perf_counter`)."""

    name: str
    started: float
    ended: float
    attributes: Attributes
    failed: bool = False


@dataclass(slots=True)
class Trace:
    """What one request's spans need beyond its exchange; built only when OTLP export is on."""

    tracer: RequestTracer
    trace_id: bytes
    parent_id: bytes
    span_id: bytes
    wall_ns: int  # `time.time_ns()` at `perf`, to place perf_counter readings on the clock
    perf: float
    path: str
    steps: list[Step] = field(default_factory=list)
    request: Attributes = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt: bytes | None = None
    answer: list[str] | None = None  # a list only when content is captured
    answer_chars: int = 0
    # A pass-through stream's text, when content is captured: its deltas' texts by what the client joins them into (a
    # content block, a Responses part), as they came (`said`), bounded as the answer is.
    said: dict[Hashable, list[str]] = field(default_factory=dict)
    said_chars: int = 0
    body: bytes | None = None  # a whole answer's head, kept only when content is captured (`answered`)
    answering: Step | None = None  # the attempt that answered: a stream's runs on to the stream's end
    # The hashes of the secrets of the request's key and its ancestors, when content is captured (`captured`): only
    # they, not the keys' records, are kept for the exporter's thread.
    own_secrets: tuple[str, ...] = ()

    def requested(self, req: ChatRequest) -> None:
        """The request's sampling parameters, as the client sent them."""
        limit = req.output_limit()
        if limit is not None:
            self.request.append(("gen_ai.request.max_tokens", limit))
        if req.temperature is not None:
            self.request.append(("gen_ai.request.temperature", float(req.temperature)))
        if req.top_p is not None:
            self.request.append(("gen_ai.request.top_p", float(req.top_p)))

    def attempt(self, attempt: Sent, started: float, status: int, outcome: str | None) -> None:
        """One upstream attempt ended: answered with `status` (0: no answer), failed with `outcome` or not."""
        target = attempt.target
        attributes: Attributes = [
            ("gen_ai.operation.name", OPERATIONS.get(self.path, "chat")),
            ("gen_ai.request.model", target.model),
            ("gateway.deployment", target.label),
            *_upstream(attempt),
        ]
        if status:
            attributes.append(("http.response.status_code", status))
        if outcome is not None:
            attributes.append(("error.type", str(outcome)))
        name = f"{OPERATIONS.get(self.path, 'chat')} {target.model}"
        step = Step(name, started, time.perf_counter(), attributes, outcome is not None)
        self.steps.append(step)
        if outcome is None:
            self.answering = step

    def stream_ended(self) -> None:
        """The answering attempt's stream ended (or was cut): its span ends now, not at its first chunks."""
        if self.answering is not None:
            self.answering.ended = time.perf_counter()

    def store(self, name: str, store_ms: float) -> None:
        """A store round trip of `store_ms` that ended now."""
        ended = time.perf_counter()
        self.steps.append(Step(name, ended - store_ms / 1000, ended, [("gateway.store.operation", name)]))

    def relayed(self, items: list[Any]) -> None:
        """Stream items on their way to the client: chat chunks (their finish reasons and text) or a
        provider's own events (the one that ends a Messages or Responses stream read for its finish reason;
        their data, and the text their deltas add, when content is captured)."""
        for item in items:
            choices = getattr(item, "choices", None)
            if choices is None:
                data = getattr(item, "data", None)
                if not isinstance(data, bytes):
                    continue
                name = getattr(item, "event", None)
                if name in FINAL_EVENTS:
                    self._final_event(data)
                if self.answer is not None:
                    self._answer(data.decode("utf-8", "replace"))
                    self._said(name, data)
                continue
            for choice in choices:
                if choice.finish_reason:
                    self.finish_reasons.append(str(choice.finish_reason))
                if self.answer is not None and choice.delta.content:
                    self._answer(choice.delta.content)

    def _said(self, name: str | None, data: bytes) -> None:
        """The text a provider's event adds to what the client joins (`said_by`), kept by where it joins it."""
        room = CONTENT_CHARS + CUT_MARGIN - self.said_chars
        if room <= 0 or (found := said_by(name, data)) is None:
            return
        channel, text = found
        try:
            pieces = self.said.setdefault(channel, [])
        except TypeError:  # (a provider's misshapen id, a list or an object, keys no dict: its text joins the stream's)
            pieces = self.said.setdefault(None, [])
        if len(text) > room:
            text = text[:room]
        pieces.append(text)
        self.said_chars += len(text)

    def output(self) -> str:
        """The captured answer as exported (`captured`). A pass-through stream's is its events' data, which a secret
        the model wrote across several deltas is in no one place of: exported so, it went to the collector whole in
        pieces that a reader joins as the client's SDK does. Where its text, joined as the client joins it, holds
        anything redacted (the request's key's secret, a credential's shape: the relay has `[REDACTED]` the gateway's
        own secrets already), the answer exported is that text, redacted, as a translated stream's is; else the
        events, as they came."""
        if self.said:
            text = "\n".join("".join(pieces) for pieces in self.said.values())
            redacted = _redacted(text.encode("utf-8", "replace"), self.own_secrets)
            if redacted != text:
                return redacted[:CONTENT_CHARS]
        return captured("".join(self.answer or ()).encode(), self.own_secrets)

    def _final_event(self, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        reason = None
        if isinstance(payload, dict):
            delta, response = payload.get("delta"), payload.get("response")
            if isinstance(delta, dict):  # Messages: message_delta
                reason = delta.get("stop_reason")
            elif isinstance(response, dict):  # Responses: response.completed / .incomplete / .failed
                reason = response.get("status")
        if isinstance(reason, str):
            self.finish_reasons.append(reason)

    def answered(self, answer: bytes | memoryview, parsed: object = None) -> None:
        """A whole (non-streamed) answer: its finish reasons read now from `parsed`, the answer as its route built it
        (`finish_reasons_of`), and its body's head kept for the exporter's thread only when content is captured. The
        whole body kept until the exporter builds the spans, and parsed there for the finish reasons, would grow the
        process by 88 MB with a collector that never answers (40 queued embeddings answers of 2 MB), and parsing a
        65 MB one (`orjson.loads` holds the GIL) stalls the thread serving requests for 512 ms."""
        if parsed is not None:
            self.finish_reasons += finish_reasons_of(parsed)
        if self.answer is not None:
            self.body = bytes(answer[:ANSWER_BYTES])

    def cut(self, attempt: Sent, reason: str) -> None:
        """The attempt in flight when the request was cut (a deadline, the client gone): it began when the step
        before it ended (attempts follow one another)."""
        started = self.steps[-1].ended if self.steps else self.perf
        self.attempt(attempt, started, 0, reason)

    def read_answer(self) -> None:
        """What `answered` kept for captured content: its text (the head that can be exported)."""
        if self.body is not None and self.answer is not None:
            self._answer(self.body.decode("utf-8", "replace"))
        self.body = None

    def held(self) -> int:
        """The bytes of content this trace holds until its spans are built (`BatchExporter.queue_bytes`): the captured
        prompt and answer; none when content is not captured."""
        return len(self.prompt or b"") + len(self.body or b"") + self.answer_chars + self.said_chars

    def _answer(self, text: str) -> None:
        assert self.answer is not None
        room = CONTENT_CHARS + CUT_MARGIN - self.answer_chars
        if room > 0:
            self.answer.append(text[:room])
            self.answer_chars += min(len(text), room)

    def clock(self, perf: float) -> int:
        """A `time.perf_counter()` reading in nanoseconds since the epoch."""
        return self.wall_ns + int((perf - self.perf) * 1e9)


def finish_reasons_of(answer: object) -> list[str]:
    """A whole answer's finish reasons, read from the answer its route built (no body is parsed again for them): a
    `ChatCompletion`'s choices', or a Messages (`stop_reason`) or Responses (`status`) body's. An embeddings answer
    has none, and is not read."""
    choices = getattr(answer, "choices", None)
    if choices is not None:
        return [str(choice.finish_reason) for choice in choices if choice.finish_reason]
    if isinstance(answer, dict):
        for name in ("stop_reason", "status"):  # Messages, Responses
            if isinstance(answer.get(name), str):
                return [answer[name]]
    return []


def captured(content: bytes, own_secrets: Sequence[str]) -> str:
    """A captured prompt or answer (JSON, SSE events' data, or text) as exported: `scrub`bed as the client's bytes
    are, then `redact_message`d, then without the secret alone of the request's key or an ancestor (`own_secrets`,
    their hashes: `without_hashed_secrets`; a key's user who pastes it in a prompt would have it exported whole,
    since no shape tells it apart), then cut. (`redact_message` alone reads the text as written: a secret a provider's
    encoder JSON-escaped, `\\/` for `/`, would reach the client `[REDACTED]` and the collector whole.) Run on the
    exporter's thread, for a request whose content is captured only, on at most `CONTENT_CHARS + CUT_MARGIN`
    characters: the own-secret check of a 1 MB prompt of base64url text (65 KiB of it kept) costs 3 ms
    (docs/observability.md)."""
    return _redacted(content, own_secrets)[:CONTENT_CHARS]


def _redacted(content: bytes, own_secrets: Sequence[str]) -> str:
    text = redact_message(scrub(content).decode("utf-8", "replace"))
    return without_hashed_secrets(text, own_secrets)


def said_by(name: str | None, data: bytes) -> tuple[Hashable, str] | None:
    """The text a provider's event (`name`, its `data`) adds to what a client joins, and where the client joins it,
    as the relay's redaction reads them (handler/pipeline/redacting.py): a Messages `content_block_delta`'s text,
    thinking or tool input, by its block's index; a Responses text delta's (`RESPONSES_DELTAS`), by its part. None
    for any other event. (Parsed on the loop, for a captured stream only: a stream's relay costs some 1 µs an event
    more for it, 1.2 µs in all for a Messages delta where 0.33 µs captured its data alone; docs/observability.md.)"""
    messages = name == "content_block_delta"
    if not messages and name is not None and name not in RESPONSES_DELTAS:
        return None
    try:
        payload = orjson.loads(data)
        located = messages_text(payload) if messages else responses_text(payload)
    except (orjson.JSONDecodeError, TypeError):  # (not JSON; a delta's `type` a list or an object: no text)
        return None
    if located is None:
        return None
    channel, holder, member = located
    return channel, holder[member]


def _continued(version: str, trace_id: str, parent_id: str, flags: str, rest: str | None) -> bool:
    """Whether a `traceparent` of these fields names a trace to continue: version ff is invalid, version 00 has
    nothing after its flags, and neither id may be all zeros."""
    if version == "ff" or (version == "00" and rest is not None):
        return False
    return trace_id != "0" * 32 and parent_id != "0" * 16


@functools.lru_cache(maxsize=1024)  # a deployment's base URL: the same few for every request
def _host(url: str) -> tuple[str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "", parts.port


def _upstream(attempt: Sent) -> Attributes:
    """Who and where an attempt went: the provider's API, the upstream's host and region."""
    target = attempt.target
    host, port = _host(target.base_url)
    where: Attributes = [
        ("gen_ai.provider.name", attempt.adapter.semconv_provider or target.provider_type),
        ("server.address", host),
        ("gateway.upstream.region", target.region),
    ]
    if port:
        where.append(("server.port", port))
    return where


class RequestTracer:
    """Starts a `Trace` per request and turns a finished one into spans for the exporter."""

    def __init__(self, exporter: BatchExporter, capture_content: bool, region: str | None) -> None:
        from adapters.otlp.wire import SpanData  # (here: the module is imported only when export is on)

        self.span_data = SpanData
        self.exporter = exporter
        self.capture_content = capture_content
        self.region = region  # the gateway's own, for `cloud.region`; None where it is not known (left out)

    def begin(
        self, headers: Mapping[str, str], path: str, body: bytes | None, own_secrets: tuple[str, ...]
    ) -> Trace | None:
        """A request's trace: the caller's trace continued where a valid `traceparent` names one; None when
        the caller's trace is not sampled (nothing is recorded or exported then). `own_secrets`: the hashes of the
        secrets of the request's key and its ancestors (`keys.own_secret_hashes`), kept when content is captured."""
        perf = time.perf_counter()
        random = os.urandom(24)
        trace_id, parent_id = random[:16], b""
        match = TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
        if match and _continued(*match.groups()):
            if not int(match.group(4), 16) & 1:
                return None
            trace_id, parent_id = bytes.fromhex(match.group(2)), bytes.fromhex(match.group(3))
        trace = Trace(self, trace_id, parent_id, random[16:], time.time_ns(), perf, path)
        if self.capture_content:
            trace.answer = []
            trace.prompt = body[: CONTENT_CHARS + CUT_MARGIN] if body else None  # (redacted, then cut: `_attributes`)
            trace.own_secrets = own_secrets
        return trace

    def finish(self, ex: Observed, status: int, code: str | None, stream: bool, ended: float) -> None:
        """The request was answered at `ended` (`time.perf_counter()`): queue its span and its children's."""
        trace = ex.trace
        if trace is None:
            return
        ex.trace = None  # observed once: a second observation (an error after the answer began) adds nothing
        self.exporter.submit(
            1 + len(trace.steps),
            functools.partial(self._spans, ex, trace, status, code, stream, ended),
            trace.held(),
        )

    def _spans(
        self, ex: Observed, trace: Trace, status: int, code: str | None, stream: bool, ended: float
    ) -> list[SpanData]:
        """The request's spans, built on the exporter's thread from what the request recorded."""
        trace.read_answer()
        span_data = self.span_data
        # (Read once: a name the config does not name is cut and checked for the key's secret on each read.)
        model = ex.named_model
        spans = [
            span_data(
                trace.trace_id,
                trace.span_id,
                trace.parent_id,
                f"{OPERATIONS.get(trace.path, 'chat')} {model}",
                SERVER,
                trace.clock(ex.started),
                trace.clock(ended),
                self._attributes(ex, trace, model, status, code, stream, ended),
                ERROR if status >= 500 else 0,
                code or "" if status >= 500 else "",
            )
        ]
        ids = os.urandom(8 * len(trace.steps))
        for number, step in enumerate(trace.steps):
            spans.append(
                span_data(
                    trace.trace_id,
                    ids[number * 8 : number * 8 + 8],
                    trace.span_id,
                    step.name,
                    CLIENT,
                    trace.clock(step.started),
                    trace.clock(step.ended),
                    step.attributes,
                    ERROR if step.failed else 0,
                )
            )
        return spans

    def _attributes(
        self, ex: Observed, trace: Trace, model: str, status: int, code: str | None, stream: bool, ended: float
    ) -> Attributes:
        attempts = [s for s in trace.steps if s.name != "store.admit"]
        total_ms = (ended - ex.started) * 1000
        out: Attributes = [
            ("gen_ai.operation.name", OPERATIONS.get(trace.path, "chat")),
            ("gen_ai.request.model", model),
            *trace.request,
            ("http.request.method", "POST"),
            ("http.route", trace.path),
            ("http.response.status_code", status),
            ("gateway.request_id", ex.request_id),
            ("gateway.key.id", ex.key.id),
            ("gateway.stream", stream),
            ("gateway.retries", max(0, len(attempts) - 1)),
            ("gateway.latency.gateway_ms", round(max(0.0, total_ms - ex.store_ms - ex.upstream_ms), 3)),
            ("gateway.latency.store_ms", round(ex.store_ms, 3)),
            ("gateway.latency.upstream_ms", round(ex.upstream_ms, 3)),
        ]
        if self.region is not None:
            out.append(("cloud.region", self.region))
        if ex.route:
            out.append(("gateway.route", ", ".join(ex.route)))
        attempt = ex.attempt
        if attempt is not None:
            out += [
                ("gen_ai.response.model", attempt.target.model),
                ("gateway.provider", attempt.target.provider),
                *_upstream(attempt),
            ]
        cost = ex.cost
        if cost is not None:
            usage = cost.usage
            out += [
                ("gen_ai.usage.input_tokens", usage.prompt_tokens),
                ("gen_ai.usage.output_tokens", usage.completion_tokens),
                ("gateway.fee_usd", cost.fee_usd),
            ]
            if usage.cached_tokens:
                out.append(("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens))
            if usage.cache_write_tokens:
                out.append(("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens))
            if cost.provider_usd is not None:
                out.append(("gateway.cost_usd", cost.provider_usd))
        if trace.finish_reasons:
            out.append(("gen_ai.response.finish_reasons", list(dict.fromkeys(trace.finish_reasons))))
        if code is not None:
            out.append(("error.type", code))
        if ex.user is not None:
            out.append(("user.id", ex.user))
        if ex.controls.session is not None:
            out.append(("gen_ai.conversation.id", ex.controls.session))
        out += [(f"gateway.tag.{name}", value) for name, value in ex.controls.tags.items()]
        if trace.prompt is not None:
            out.append(("gen_ai.input.messages", captured(trace.prompt, trace.own_secrets)))
        if trace.answer:
            out.append(("gen_ai.output.messages", trace.output()))
        return out

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Have what is queued sent (the end of a Lambda invocation), waiting for it at most `timeout_s`: False if it
        was not all sent by then (it stays queued for the next export; adapters/otlp/exporter.py)."""
        return self.exporter.flush(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued and stop the exporter (shutdown), within `timeout_s`: what is left then is dropped."""
        self.exporter.close(timeout_s)


class OtlpSettings(Value):
    """`observability.otlp` with the `OTEL_*` environment filled in: what the exporter is built from."""

    __slots__ = ("url", "headers", "resource", "timeout_s", "config")

    def __init__(
        self, url: str, headers: dict[str, str], resource: dict[str, str], timeout_s: float, config: OtlpConfig
    ) -> None:
        self.url: Final = url
        self.headers: Final = headers
        self.resource: Final = resource
        self.timeout_s: Final = timeout_s
        self.config: Final = config


def otlp_settings(
    config: OtlpConfig | None, environ: Mapping[str, str], fetch: SecretFetcher | None = None
) -> OtlpSettings | None:
    """Where and how to export, or None when no endpoint is configured (or `OTEL_SDK_DISABLED=true`).
    Raises `ConfigError` for values an exporter could not use."""
    config = config or OtlpConfig()
    if not config.enabled or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        problem = f"OTEL_EXPORTER_OTLP_PROTOCOL: '{protocol}' is not supported; the gateway speaks http/protobuf"
        raise ConfigError([problem])
    url = config.traces_endpoint or (_traces_url(config.endpoint) if config.endpoint else None)
    url = url or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or None
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    url = url or (_traces_url(base) if base else None)
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ConfigError([f"OTEL_EXPORTER_OTLP_ENDPOINT: '{url}' is not an http:// or https:// URL"])
    headers = _pairs(environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""), "OTEL_EXPORTER_OTLP_HEADERS")
    headers |= _pairs(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""), "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    for name, reference in (config.headers or {}).items():
        try:
            value = resolve_credential(reference, environ, fetch)
        except SecretUnreadableError as failure:  # (the environment's init fails, and is tried again)
            raise ConfigError([f"observability.otlp.headers.{name}: {failure}"]) from None
        if value is None:
            raise ConfigError([f"observability.otlp.headers.{name}: the reference resolves to nothing"])
        # (Checked as a provider's headers are: a non-ASCII value would be a traceback building the exporter's client.)
        if wrong := header_name_problem(name):
            raise ConfigError([f"observability.otlp.headers.{name}: {wrong}"])
        if wrong := header_value_problem(value):
            raise ConfigError([f"observability.otlp.headers.{name}: its value {wrong}"])
        headers[name] = value
    # The service's name, as the OTel spec ranks it (`OTEL_SERVICE_NAME` over `service.name` in
    # `OTEL_RESOURCE_ATTRIBUTES`), with the config's own over both, and `llm-gateway` where none names it.
    resource = _pairs(environ.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES")
    if environ.get("OTEL_SERVICE_NAME", "").strip():
        resource["service.name"] = environ["OTEL_SERVICE_NAME"].strip()
    resource |= config.resource_attributes or {}
    if config.service_name:
        resource["service.name"] = config.service_name
    if not resource.get("service.name"):
        resource["service.name"] = "llm-gateway"
    timeout_ms = config.timeout_ms or _millis(
        environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    return OtlpSettings(url, headers, resource, (timeout_ms or 10_000) / 1000, config)


def _traces_url(base: str) -> str:
    return base.rstrip("/") + "/v1/traces"


def _pairs(raw: str, name: str) -> dict[str, str]:
    """`k=v,k2=v2` with percent-encoded values, as the OTel spec writes headers and resource attributes."""
    pairs: dict[str, str] = {}
    for position, item in enumerate(raw.split(","), 1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Named by its place, never quoted: it may be a credential with a mistyped separator.
            raise ConfigError([f"{name}: item {position} is not a key=value pair (its text is not shown)"])
        pairs[key.strip()] = urllib.parse.unquote(value.strip())
    return pairs


def _millis(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        raw = environ.get(name)
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise ConfigError([f"{name}: '{raw[:40]}' is not a whole number of milliseconds"]) from None
            if value <= 0:
                raise ConfigError([f"{name}: must be positive"])
            return value
    return None


def build_tracer(
    settings: OtlpSettings | None, region: str | None, *, on_drop: Callable[[int], None] | None = None
) -> RequestTracer | None:
    """The process's tracer, importing the exporter (and httpx's sync client) only when export is on; `region` the
    gateway's own (`cloud.region` on its resource and spans), None where it is not known: left out of both."""
    if settings is None:
        return None
    from adapters.otlp.exporter import BatchExporter

    resource = {**({"cloud.region": region} if region is not None else {}), **settings.resource}
    config = settings.config
    exporter = BatchExporter(
        settings.url,
        settings.headers,
        list(resource.items()),
        timeout_s=settings.timeout_s,
        queue_size=config.queue_size,
        queue_bytes=config.queue_bytes,
        batch_size=config.batch_size,
        schedule_delay_s=config.schedule_delay_ms / 1000,
        on_drop=on_drop,
    )
    return RequestTracer(exporter, config.capture_content, region)
