"""Where spans go: `observability.otlp` and the OpenTelemetry environment variables, checked at start-up."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import ConfigError, parse_config
from handler.entry.cli import main
from handler.otlp_config import OtlpConfig
from handler.pipeline.keys import hash_secret
from handler.schemas import ChatCompletion
from handler.telemetry.tracing import ANSWER_BYTES, CONTENT_CHARS, CUT_MARGIN, RequestTracer, otlp_settings
from handler.wire import StreamEvent

ROOT = Path(__file__).resolve().parents[4]


def settings(config: OtlpConfig | None = None, **environ: str):  # type: ignore[no-untyped-def]
    return otlp_settings(config, environ)


def test_nothing_is_exported_without_an_endpoint_or_when_disabled() -> None:
    assert settings() is None
    assert settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", OTEL_SDK_DISABLED="true") is None
    assert settings(OtlpConfig(endpoint="http://c:4318", enabled=False)) is None


def test_the_environment_names_the_endpoint_headers_service_and_timeout_as_the_spec_says() -> None:
    found = settings(
        OTEL_EXPORTER_OTLP_ENDPOINT="https://collector:4318/",
        OTEL_EXPORTER_OTLP_HEADERS="x-honeycomb-team=abc%3D%3D, tenant = blue",
        OTEL_SERVICE_NAME="edge",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod",
        OTEL_EXPORTER_OTLP_TIMEOUT="2500",
    )
    assert found is not None
    assert found.url == "https://collector:4318/v1/traces"  # the signal's path appended to the base
    assert found.headers == {"x-honeycomb-team": "abc==", "tenant": "blue"}
    assert found.resource == {"deployment.environment": "prod", "service.name": "edge"}
    assert found.timeout_s == 2.5
    traces = settings(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://ignored:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://collector:4318/custom/traces",
    )
    assert traces is not None and traces.url == "http://collector:4318/custom/traces"  # used as given
    assert traces.resource["service.name"] == "llm-gateway" and traces.timeout_s == 10.0


def test_the_config_wins_over_the_environment_and_its_headers_take_secret_references() -> None:
    config = OtlpConfig(
        endpoint="http://from-config:4318",
        headers={"authorization": "env:OTLP_TOKEN"},
        service_name="gw",
        timeout_ms=500,
    )
    found = otlp_settings(config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://from-env:4318", "OTLP_TOKEN": "Bearer s3"})
    assert found is not None
    assert found.url == "http://from-config:4318/v1/traces"
    assert found.headers == {"authorization": "Bearer s3"} and found.timeout_s == 0.5
    with pytest.raises(ConfigError, match=r"observability.otlp.headers.authorization"):
        otlp_settings(config, {})  # the reference resolves to nothing: say so at start-up, not per export


def test_a_collectors_header_is_read_as_a_providers_is() -> None:
    """A token exported from a file keeps its newline: sent without it. A value no header can carry (a non-ASCII
    character) was a `UnicodeEncodeError` traceback building the exporter's client: now a config error naming the
    header, never the value."""
    config = OtlpConfig(endpoint="http://c:4318", headers={"authorization": "env:OTLP_TOKEN"})
    found = otlp_settings(config, {"OTLP_TOKEN": "Bearer token-0123\n"})
    assert found is not None and found.headers == {"authorization": "Bearer token-0123"}
    with pytest.raises(ConfigError) as caught:
        otlp_settings(config, {"OTLP_TOKEN": "Bearer t\u00f6ken-0123"})
    assert caught.value.problems == [
        "observability.otlp.headers.authorization: its value holds a non-ASCII character at character 9, which no "
        "HTTP header can carry"
    ]
    with pytest.raises(ConfigError, match=r"^observability.otlp.headers.x tenant: not a header's name"):
        otlp_settings(OtlpConfig(endpoint="http://c:4318", headers={"x tenant": "blue"}), {})


def test_the_service_name_is_ranked_as_the_otel_spec_ranks_it() -> None:
    """`OTEL_RESOURCE_ATTRIBUTES=service.name=checkout-gateway` was overwritten with `llm-gateway`: the spec has
    `OTEL_SERVICE_NAME` win only when it is set, then `service.name` from `OTEL_RESOURCE_ATTRIBUTES`; the config's
    own setting (`service_name`, or `service.name` in its `resource_attributes`) wins over both."""
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}

    def service(config: OtlpConfig | None = None, **environ: str) -> str:
        found = otlp_settings(config, {**base, **environ})
        assert found is not None
        return found.resource["service.name"]

    attributes = "service.name=checkout-gateway,team=pay"
    assert service(OTEL_RESOURCE_ATTRIBUTES=attributes) == "checkout-gateway"
    assert service(OTEL_RESOURCE_ATTRIBUTES=attributes, OTEL_SERVICE_NAME="edge") == "edge"
    assert service(OTEL_RESOURCE_ATTRIBUTES=attributes, OTEL_SERVICE_NAME="") == "checkout-gateway"
    assert service(OtlpConfig(service_name="gw"), OTEL_RESOURCE_ATTRIBUTES=attributes, OTEL_SERVICE_NAME="e") == "gw"
    in_config = OtlpConfig(resource_attributes={"service.name": "from-config"})
    assert service(in_config, OTEL_RESOURCE_ATTRIBUTES=attributes, OTEL_SERVICE_NAME="edge") == "from-config"
    assert service(OTEL_RESOURCE_ATTRIBUTES="team=pay") == "llm-gateway"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_unusable_environment_values_are_a_clear_error(environ: dict[str, str], named: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **environ}
    with pytest.raises(ConfigError, match=named):
        otlp_settings(None, environ)


def test_a_malformed_header_is_named_by_its_place_never_quoted() -> None:
    """`authorization:Bearer ...` (a colon where `=` belongs) must not reach the CLI's output or Lambda's init
    error with the token in it."""
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1,authorization:Bearer tok_9f8e7d6c5b4a392",
    }
    with pytest.raises(ConfigError, match="item 2") as refused:
        otlp_settings(None, environ)
    assert "tok_9f8e7d6c5b4a392" not in str(refused.value) and "Bearer" not in str(refused.value)


def test_a_collectors_credential_is_a_secret_with_its_scheme_and_without_it(only_secrets: Callable[..., None]) -> None:
    """The collector's header values were registered as secrets whole (`Bearer <token>`): a log line or an error that
    echoed the token alone kept it (review). The credential after an `authorization` value's scheme (`Bearer`,
    `Basic`, Elastic's `ApiKey`) is a secret too, and a key header's value is one as it is."""
    from handler import redaction
    from handler.pipeline.gateway import build_tracer

    only_secrets()
    token, basic, api_key, key = (
        "otlp-token-9f8e7d6c5b4a",
        "dXNlcjpwYXNzLTAxMjM0NQ==",
        "ZWxhc3RpYy1rZXktMDEy",
        "dd-0123456789ab",
    )
    otlp = {"endpoint": "http://127.0.0.1:9", "headers": {"authorization": "env:OTLP_AUTH"}}
    config = parse_config({"observability": {"otlp": otlp}}, set(REGISTRY))
    environ = {
        "OTLP_AUTH": f"Bearer {token}",
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-scope-auth=Basic%20{basic},x-elastic=ApiKey%20{api_key},dd-api-key={key}",
    }
    tracer = build_tracer(config, environ, "us-east-1")
    assert tracer is not None
    tracer.close(0.1)
    for secret in (token, basic, api_key, key):
        assert redaction.redact_message(f"the collector refused {secret}.") == "the collector refused [REDACTED].", (
            secret
        )
        assert redaction.scrub(f'{{"said": "{secret}"}}'.encode()) == b'{"said": "[REDACTED]"}', secret


@pytest.mark.parametrize(
    "written",
    [
        b'data: {"text":"The secret is wJalrXUtnFEMI\\/K7MDENG\\/bPxRfiCYEXAMPLEKEY."}\n\n',  # PHP's, Java's `\/`
        b'{"input": "The secret is \\u0077JalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY."}',  # a `\u0077` for its `w`
        b"The secret is wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY.",  # a stream's text, put together
    ],
)
def test_captured_content_is_redacted_as_the_clients_bytes_are(
    only_secrets: Callable[..., None], written: bytes
) -> None:
    """A captured answer went to the collector with a secret its provider's encoder JSON-escaped, which the client
    got `[REDACTED]` (review): what is captured is `scrub`bed, as the client's bytes are, before its redaction."""
    from handler.telemetry.tracing import captured

    only_secrets("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    exported = captured(written, ())
    assert "The secret is [REDACTED]." in exported and "EXAMPLEKEY" not in exported


class Holding:
    """An exporter that keeps what is submitted: the spans' builders, and the bytes each request holds."""

    def __init__(self) -> None:
        self.sources: list[Any] = []
        self.sizes: list[int] = []

    def submit(self, count: int, build: Any, size: int = 0) -> None:
        self.sources.append(build)
        self.sizes.append(size)


def embeddings_answer(inputs: int, dimensions: int) -> bytes:
    vector = [0.012345678901234567] * dimensions
    data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(inputs)]
    usage = {"prompt_tokens": inputs, "total_tokens": inputs}
    return orjson.dumps({"object": "list", "data": data, "model": "text-embedding-3-small", "usage": usage})


def test_a_whole_answer_is_not_kept_for_the_exporter_unless_its_content_is_captured() -> None:
    """A request's trace kept its whole answer until the exporter's thread built its spans, and that thread parsed it
    for finish reasons (`orjson.loads`, holding the GIL): a 65 MB embeddings answer (2,048 inputs of 1,536 floats)
    stalled every other thread, the one serving requests among them, for 512 ms; with a hung collector, every
    queued answer stayed in memory (review). Now the finish reasons are read from the answer the route built, and the
    body is not kept at all: the exporter's thread has nothing to parse."""
    tracer = RequestTracer(Holding(), capture_content=False, region="us-east-1")  # type: ignore[arg-type]
    trace = tracer.begin({}, "/v1/embeddings", None, ())
    assert trace is not None
    trace.answered(embeddings_answer(2048, 1536))
    assert trace.body is None and trace.held() == 0
    trace.read_answer()  # (what `_spans` runs first, on the exporter's thread)
    assert trace.finish_reasons == [] and trace.answer is None


def test_a_whole_answers_finish_reasons_are_read_from_what_its_route_built() -> None:
    tracer = RequestTracer(Holding(), capture_content=False, region="us-east-1")  # type: ignore[arg-type]
    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"},
                {"index": 1, "message": {"role": "assistant", "content": "b"}, "finish_reason": "length"},
            ],
        }
    )
    answers: list[tuple[str, object, list[str]]] = [
        ("/v1/chat/completions", completion, ["stop", "length"]),
        ("/v1/messages", {"type": "message", "stop_reason": "tool_use", "content": []}, ["tool_use"]),
        ("/v1/responses", {"object": "response", "status": "incomplete", "output": []}, ["incomplete"]),
    ]
    for path, parsed, reasons in answers:
        trace = tracer.begin({}, path, None, ())
        assert trace is not None
        trace.answered(b'{"not": "read"}', parsed)
        trace.read_answer()
        assert trace.finish_reasons == reasons and trace.body is None


def test_a_captured_answer_keeps_only_the_head_it_can_export() -> None:
    """With content captured, the answer's text goes out cut at `CONTENT_CHARS`: only that head (at most four bytes a
    character) is kept for the exporter's thread, and the queue counts it (`BatchExporter.queue_bytes`)."""
    holding = Holding()
    tracer = RequestTracer(holding, capture_content=True, region="us-east-1")  # type: ignore[arg-type]
    trace = tracer.begin({}, "/v1/embeddings", b'{"model": "e", "input": "hi"}', ())
    assert trace is not None
    answer = embeddings_answer(100, 1000)
    trace.answered(answer)
    assert trace.body == answer[:ANSWER_BYTES] and len(answer) > 5 * ANSWER_BYTES
    tracer.finish(SimpleNamespace(trace=trace), 200, None, False, time.perf_counter())  # type: ignore[arg-type]
    assert holding.sizes == [ANSWER_BYTES + len(b'{"model": "e", "input": "hi"}')]
    trace.read_answer()
    assert trace.body is None and "".join(trace.answer or []) == answer[: CONTENT_CHARS + CUT_MARGIN].decode()


def test_the_config_section_is_validated_with_paths() -> None:
    bad = {"observability": {"otlp": {"endpoint": "collector:4318", "batch_size": 0, "capture": True}}}
    with pytest.raises(ConfigError) as info:
        parse_config(bad, set(REGISTRY))
    found = "\n".join(info.value.problems)
    assert "observability.otlp.endpoint" in found and "http:// or https://" in found
    assert "observability.otlp.batch_size" in found and "observability.otlp.capture" in found


def test_config_check_reports_the_environment_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert main(["config", "check"]) == 1
    assert "http/protobuf" in capsys.readouterr().err


def test_without_an_endpoint_no_tracing_code_is_imported(tmp_path: Path) -> None:
    """Cold starts matter: a gateway without OTLP export never imports handler/telemetry/tracing.py or the exporter."""
    program = (
        "import sys\n"
        "from handler.api.app import create_app\n"
        "from handler.config import Config\n"
        "from handler.pipeline.gateway import build_gateway\n"
        f"gateway = build_gateway(config=Config(), store_url='sqlite:///{tmp_path}/g.db', environ={{}})\n"
        "create_app(gateway)\n"
        "assert gateway.tracer is None\n"
        "names = ('handler.telemetry.tracing', 'adapters.otlp', 'google.protobuf')\n"
        "print(sorted(m for m in sys.modules if m.startswith(names)))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def block_delta(index: Any, kind: str, member: str, text: str) -> StreamEvent:
    payload = {"type": "content_block_delta", "index": index, "delta": {"type": kind, member: text}}
    return StreamEvent("content_block_delta", orjson.dumps(payload))


def test_a_keys_secret_cut_across_interleaved_deltas_of_a_passed_through_stream_goes_out_redacted() -> None:
    """A pass-through stream's captured answer is its events one after another: the secret of the request's key,
    cut across deltas, was in no one event, and went to the collector whole in pieces (review mergerev D2). Its
    text is kept too, by what the client joins (a content block), and where that text holds a redaction the span
    carries it, redacted, in place of the events; each block's text on its own line."""
    secret = secrets.token_urlsafe(32)
    holding = Holding()
    tracer = RequestTracer(holding, capture_content=True, region="us-east-1")  # type: ignore[arg-type]
    trace = tracer.begin({}, "/v1/messages", b'{"model": "m"}', (hash_secret(secret),))
    assert trace is not None
    trace.relayed(
        [
            block_delta(0, "thinking_delta", "thinking", f"I say {secret[:20]}"),
            block_delta(1, "text_delta", "text", "Your key is "),  # (another block between the secret's pieces)
            block_delta(0, "thinking_delta", "thinking", secret[20:]),
            block_delta(1, "text_delta", "text", f"{secret[:10]}"),
            block_delta(1, "text_delta", "text", f"{secret[10:]}."),
            block_delta([1], "text_delta", "text", "misshapen index"),  # (keys no dict: no failure on the loop)
            StreamEvent("message_delta", b'{"type":"message_delta","delta":{"stop_reason":"end_turn"}}'),
        ]
    )
    assert trace.output() == "I say [REDACTED]\nYour key is [REDACTED].\nmisshapen index"
    tracer.finish(SimpleNamespace(trace=trace), 200, None, True, time.perf_counter())  # type: ignore[arg-type]
    said = len(f"I say {secret}Your key is {secret}.misshapen index")
    assert trace.said_chars == said and holding.sizes == [len(b'{"model": "m"}') + trace.answer_chars + said]


def test_a_passed_through_streams_text_is_kept_only_when_captured_and_bounded_as_its_answer() -> None:
    """Without a redaction in its text, the events go out as they came; uncaptured, no event is parsed for it."""
    events = [
        StreamEvent("response.output_text.delta", orjson.dumps({"type": "response.output_text.delta", "delta": d}))
        for d in ["x" * CONTENT_CHARS, "y" * 2 * CUT_MARGIN]
    ]
    for capture in (False, True):
        tracer = RequestTracer(Holding(), capture_content=capture, region="us-east-1")  # type: ignore[arg-type]
        trace = tracer.begin({}, "/v1/responses", None, (hash_secret(secrets.token_urlsafe(32)),))
        assert trace is not None
        trace.relayed(events)
        assert trace.said_chars == (CONTENT_CHARS + CUT_MARGIN if capture else 0)
    assert trace.output() == "".join(trace.answer or ())[:CONTENT_CHARS] and trace.output().startswith("{")
