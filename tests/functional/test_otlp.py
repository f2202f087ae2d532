"""OpenTelemetry export: each request's spans reach a real OTLP/HTTP receiver, which decodes them with
opentelemetry-proto's own classes (tests/support/otlp.py)."""

from __future__ import annotations

import asyncio
import gc
import re
import secrets
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from handler.config import ModelConfig, ObservabilityConfig, ProviderConfig
from handler.otlp_config import OtlpConfig
from handler.pipeline.keys import split_key
from handler.telemetry.tracing import CONTENT_CHARS
from tests.functional.conftest import FAKE_KEYS, Running, gateway_config, serve_gateway
from tests.functional.test_lambda_events import replay
from tests.functional.test_metrics import labels, scrape
from tests.support.events import EVENTS
from tests.support.inprocess import PROVIDER_KEYS, serve
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.serve import gateway_serve
from tests.support.servers import ServerThread

SECRET_PROMPT = "the-prompt-text-that-must-stay-home"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT, ERROR = 2, 3, 2
LAMBDA_FLUSH_SECONDS = 2.0  # handler/entry/lambda_handler.py's FLUSH_SECONDS (importing it builds a gateway)


def otlp_gateway(
    upstream: tuple[ServerThread, dict[str, Any]],
    tmp_path: Path,
    endpoint: str,
    secrets: dict[str, str] | None = None,
    **otlp: Any,
) -> tuple[Running, ServerThread]:
    """A gateway exporting to `endpoint`, with `secrets` in its environment beside the fakes' keys (AWS credentials,
    registered at start)."""
    server, fakes = upstream
    config = gateway_config(server.url, set(fakes))
    config.observability = ObservabilityConfig(otlp=OtlpConfig(schedule_delay_ms=20, **otlp))
    # A deployment that takes /v1/responses in its own API: the gateway relays its events as they come.
    native = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"}
    config.providers["openai-responses"] = ProviderConfig.model_validate({**native, "responses_api": "native"})
    config.models["gpt-responses"] = ModelConfig.model_validate(
        {"deployments": [{"provider": "openai-responses", "model": "gpt-4o-mini"}]}
    )
    # The same, written by an encoder that escapes every `/` (`\/`), as PHP's and some Java encoders do.
    config.models["escaping-gpt"] = ModelConfig.model_validate(
        {"deployments": [{"provider": "openai-responses", "model": "gpt-4o-mini-slashes-escaped"}]}
    )
    environ = {
        **(secrets or {}),
        **FAKE_KEYS,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "gateway-under-test",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20collector-token-123",
    }
    return serve_gateway(config, f"sqlite:///{tmp_path / 'gateway.db'}", server, fakes, environ)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced(
    upstream: tuple[ServerThread, dict[str, Any]], receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    running, server = otlp_gateway(upstream, tmp_path_factory.mktemp("otlp"), receiver.url)
    yield running
    server.stop()


def post(running: Running, path: str, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{running.url}{path}", json=body, headers={"authorization": f"Bearer {key}", **headers}, timeout=30
    )


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_ns)


def test_a_chat_request_is_a_genai_span_with_store_and_upstream_children(
    traced: Running, receiver: OtlpReceiver
) -> None:
    key = traced.mint(budget_usd=5.0)  # a budget: the request is admitted in the store
    answer = post(
        traced,
        "/v1/chat/completions",
        key,
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": SECRET_PROMPT}],
            "max_tokens": 50,
            "temperature": 0.5,
        },
        traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        **{"x-gateway-tags": "team=search"},
    )
    assert answer.status_code == 200
    root, *children = receiver.request_spans(answer.headers["x-request-id"])
    assert root.name == "chat gpt-4o-mini" and root.kind == SERVER
    # The caller's trace goes on: its trace id, its span as the parent.
    assert (root.trace_id, root.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    usage = answer.json()["usage"]
    attributes = root.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["gen_ai.request.max_tokens"] == 50 and attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["http.response.status_code"] == 200 and attributes["http.route"] == "/v1/chat/completions"
    assert attributes["gateway.cost_usd"] == pytest.approx(float(answer.headers["x-gateway-cost-usd"]))
    assert attributes["gateway.fee_usd"] == 0
    assert attributes["gateway.route"] == answer.headers["x-gateway-route"]
    assert attributes["gateway.retries"] == 0
    assert attributes["gateway.key.id"] == key.split("_")[1]
    assert attributes["gateway.tag.team"] == "search"
    assert attributes["cloud.region"] == "us-east-1"
    assert root.resource["service.name"] == "gateway-under-test" and root.resource["cloud.region"] == "us-east-1"
    assert "error.type" not in attributes
    store, upstream = by_name(children, "store"), by_name(children, "chat ")
    assert [s.name for s in store] == ["store.admit"]
    assert len(upstream) == 1 and upstream[0].kind == CLIENT
    assert upstream[0].attributes["http.response.status_code"] == 200
    assert upstream[0].attributes["gen_ai.provider.name"] == "openai"
    assert all(root.start_ns <= c.start_ns <= c.end_ns <= root.end_ns for c in children)
    # Neither the prompt nor the key's secret goes out; the collector's token goes where it belongs only.
    everything = b"".join(receiver.bodies)
    assert SECRET_PROMPT.encode() not in everything and key.encode() not in everything
    assert receiver.headers[-1]["authorization"] == "Bearer collector-token-123"
    assert receiver.headers[-1]["content-type"] == "application/x-protobuf"


@pytest.mark.parametrize(
    ("environ", "region"),
    [
        ({}, None),  # run locally: no region is known, none is said
        ({"GATEWAY_REGION": "eu-west-1"}, "eu-west-1"),  # the region configured
        ({"AWS_REGION": "ap-southeast-2", "GATEWAY_REGION": "eu-west-1"}, "ap-southeast-2"),  # Lambda's, which wins
    ],
)
async def test_cloud_region_is_where_the_gateway_runs_and_left_out_where_unknown(
    receiver: OtlpReceiver, environ: dict[str, str], region: str | None
) -> None:
    """A gateway run locally, with neither `AWS_REGION` nor `GATEWAY_REGION`, said `cloud.region: us-east-1` on every
    span and on its resource (the region it routes from when it knows none, not one it runs in), so a collector's
    view of a laptop's traces read as production's in us-east-1. Now the region the gateway runs in, or nothing."""
    model = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    served = await serve(
        lambda request: httpx.Response(200, json=completion),
        {"m": model},
        environ={**PROVIDER_KEYS, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **environ},
    )
    try:
        answer = await served.post(
            "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert answer.status_code == 200
        spans = await asyncio.to_thread(receiver.request_spans, answer.headers["x-request-id"])
    finally:
        await served.gateway.aclose()
    [root] = [span for span in spans if span.kind == SERVER]
    assert root.attributes.get("cloud.region") == region and root.resource.get("cloud.region") == region
    assert root.resource["service.name"] == "llm-gateway"


def test_a_streamed_request_spans_the_whole_stream(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": SECRET_PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{traced.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as answer:
        text = "".join(answer.iter_text())
        request_id = answer.headers["x-request-id"]
    assert text.rstrip().endswith("data: [DONE]")
    root, *children = receiver.request_spans(request_id)
    assert root.attributes["gateway.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] > 0
    assert root.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert len(by_name(children, "chat ")) == 1
    assert by_name(children, "store") == []  # no budget, no rate limit: nothing to admit in the store
    assert SECRET_PROMPT.encode() not in b"".join(receiver.bodies)
    assert trace_id_is_new(root)


def test_a_streams_upstream_span_runs_to_the_streams_end(
    traced: Running, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream attempt's span ended at the stream's first chunks: a provider generating for seconds after
    them showed as a short call and a long wait in the gateway."""
    from tests.fakes import openai as openai_fake

    monkeypatch.setattr(openai_fake, "SLOW_SECONDS", 0.25)  # between the fake's chunks
    key = traced.mint()
    body = {"model": "drip", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with httpx.stream(
        "POST", f"{traced.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as answer:
        answer.read()
        request_id = answer.headers["x-request-id"]
    root, *children = receiver.request_spans(request_id)
    [attempt] = by_name(children, "chat ")
    whole, upstream = root.end_ns - root.start_ns, attempt.end_ns - attempt.start_ns
    assert whole > 750e6 and upstream > 0.75 * whole, (whole, upstream)
    assert attempt.end_ns <= root.end_ns


def trace_id_is_new(span: ReceivedSpan) -> bool:
    return span.parent_span_id == "" and span.trace_id not in ("", "0" * 32, CALLER_TRACE)


def test_a_messages_request_names_its_provider_and_stop_reason(traced: Running, receiver: OtlpReceiver) -> None:
    if "claude-haiku-4-5" not in traced.gateway.config.models:
        pytest.skip("no Anthropic fake")
    key = traced.mint()
    answer = httpx.post(
        f"{traced.url}/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": SECRET_PROMPT}]},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )
    assert answer.status_code == 200
    root, *children = receiver.request_spans(answer.headers["x-request-id"])
    assert root.name == "chat claude-haiku-4-5" and root.attributes["http.route"] == "/v1/messages"
    assert root.attributes["gen_ai.provider.name"] == "anthropic"
    assert root.attributes["gen_ai.usage.input_tokens"] == answer.json()["usage"]["input_tokens"]
    assert root.attributes["gen_ai.response.finish_reasons"] == [answer.json()["stop_reason"]]
    assert root.attributes["gen_ai.request.max_tokens"] == 64
    assert [s.attributes["http.response.status_code"] for s in by_name(children, "chat ")] == [200]
    assert SECRET_PROMPT.encode() not in b"".join(receiver.bodies)


def test_failover_shows_each_attempt_and_a_failure_its_error_type(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    answer = post(
        traced, "/v1/chat/completions", key, {"model": "flaky", "messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status_code == 200
    root, *children = receiver.request_spans(answer.headers["x-request-id"])
    first, second = by_name(children, "chat ")
    assert first.attributes["http.response.status_code"] == 500 and first.attributes["error.type"] == "500"
    assert first.status_code == ERROR and first.attributes["gen_ai.request.model"] == "fail-500"
    assert second.attributes["http.response.status_code"] == 200 and "error.type" not in second.attributes
    assert first.end_ns <= second.start_ns
    assert root.attributes["gateway.retries"] == 1 and "error.type" not in root.attributes
    assert root.attributes["gateway.route"] == answer.headers["x-gateway-route"]

    failed = post(
        traced, "/v1/chat/completions", key, {"model": "refused", "messages": [{"role": "user", "content": "x"}]}
    )
    assert failed.status_code == 200  # the dead deployment, then the live one
    root, *children = receiver.request_spans(failed.headers["x-request-id"])
    dead, live = by_name(children, "chat ")
    assert "http.response.status_code" not in dead.attributes and dead.attributes["error.type"]

    rejected = post(
        traced, "/v1/chat/completions", key, {"model": "rejects", "messages": [{"role": "user", "content": "x"}]}
    )
    assert rejected.status_code == 400
    root, *children = receiver.request_spans(rejected.headers["x-request-id"])
    assert root.attributes["error.type"] == rejected.json()["error"]["code"]
    assert root.attributes["http.response.status_code"] == 400
    assert [s.attributes["http.response.status_code"] for s in by_name(children, "chat ")] == [400]


def test_content_goes_out_only_when_captured_and_then_redacted(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()  # its own: the other tests check that no prompt ever reached theirs
    running, server = otlp_gateway(upstream, tmp_path, receiver.url, capture_content=True)
    leaked = "sk-ant-api03-abcdefghijklmnop"
    messages = [{"role": "user", "content": f"{SECRET_PROMPT} {leaked}"}]
    try:
        key = running.mint()
        answer = post(running, "/v1/chat/completions", key, {"model": "gpt-4o-mini", "messages": messages})
        root, *_ = receiver.request_spans(answer.headers["x-request-id"])
        streamed = post(
            running, "/v1/chat/completions", key, {"model": "gpt-4o-mini", "messages": messages, "stream": True}
        )
        stream_root, *_ = receiver.request_spans(streamed.headers["x-request-id"])
    finally:
        server.stop()
        receiver.stop()
    for span in (root, stream_root):
        prompt = span.attributes["gen_ai.input.messages"]
        assert SECRET_PROMPT in prompt and leaked not in prompt and "[REDACTED]" in prompt
    assert answer.json()["choices"][0]["message"]["content"] in root.attributes["gen_ai.output.messages"]
    # A stream's answer is the text it relayed, put together.
    relayed = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in streamed.text.splitlines()
        if line.startswith("data: {") and orjson.loads(line[6:])["choices"]
    )
    assert relayed and stream_root.attributes["gen_ai.output.messages"] == relayed


def test_a_secret_across_the_cut_of_a_captured_prompt_goes_out_redacted(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """A captured prompt is cut at 64 KiB: it was cut before it was redacted, so a key across the cut went out as its
    id and the first characters of its secret, which no rule could tell for a key any more (review). It is redacted
    whole, then cut."""
    receiver = OtlpReceiver().start()
    running, server = otlp_gateway(upstream, tmp_path, receiver.url, capture_content=True)
    try:
        key = running.mint()
        secret = running.mint()
        head = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        filler = "x" * (CONTENT_CHARS - len(head) - 21)  # the key begins 20 characters before the cut
        body = head + f'{filler} {secret} {SECRET_PROMPT}"}}]}}'.encode()
        answer = httpx.post(
            f"{running.url}/v1/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        root, *_ = receiver.request_spans(answer.headers["x-request-id"])
    finally:
        server.stop()
        receiver.stop()
    prompt = root.attributes["gen_ai.input.messages"]
    assert len(prompt) == CONTENT_CHARS and prompt.startswith(head.decode() + "xxx")
    key_id, secret_part = secret.split("_", 2)[1:]
    tail = prompt[len(head) + len(filler) :]  # what of the prompt stood where the key began
    assert key_id not in tail and secret_part[:3] not in tail and tail.startswith(" [REDACTED"), tail


def test_a_keys_secret_alone_in_a_captured_prompt_or_answer_goes_out_redacted(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """A key's secret alone (43 characters, without `gwk_` and its id), pasted in a prompt by the key's user, went to
    the collector whole in the prompt and in the answer that repeated it: no shape tells it apart, and only the ledger's
    values were checked for it (`without_own_secret`). The request's key's and its ancestors' are redacted; 43
    characters of the same alphabet that are no key's secret are kept."""
    receiver = OtlpReceiver().start()
    running, server = otlp_gateway(upstream, tmp_path, receiver.url, capture_content=True)
    try:
        parent = running.mint(name="parent")
        parent_id, parent_secret = split_key(parent) or ("", "")
        child = running.mint(name="child", parent_id=parent_id, ancestors=[parent_id])
        own_secret = (split_key(child) or ("", ""))[1]
        nobodys = secrets.token_urlsafe(32)
        said = {}
        for name, text, stream in [
            ("own", f"note={own_secret} kept", False),
            ("parent's", f"sess-{parent_secret}", False),
            ("own, streamed", f"{own_secret}_2", True),
            ("nobody's", f"id {nobodys}", False),
        ]:
            messages = [{"role": "user", "content": f"{SECRET_PROMPT} SAY {text}"}]
            body = {"model": "gpt-4o-mini", "messages": messages, "stream": stream}
            answer = post(running, "/v1/chat/completions", child, body)
            assert answer.status_code == 200, answer.text
            root, *_ = receiver.request_spans(answer.headers["x-request-id"])
            said[name] = (root.attributes["gen_ai.input.messages"], root.attributes["gen_ai.output.messages"])
    finally:
        server.stop()
        receiver.stop()
    assert len(own_secret) == len(parent_secret) == len(nobodys) == 43
    for prompt, answer in (said["own"], said["parent's"], said["own, streamed"]):
        assert SECRET_PROMPT in prompt and "[REDACTED]" in prompt and "[REDACTED]" in answer, (prompt, answer)
    assert "note=[REDACTED] kept" in said["own"][1] and "sess-[REDACTED]" in said["parent's"][1]
    assert said["own, streamed"][1] == "[REDACTED]_2"
    exported = b"".join(receiver.bodies)
    assert own_secret.encode() not in exported and parent_secret.encode() not in exported
    assert all(nobodys in captured for captured in said["nobody's"]), said["nobody's"]


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # AWS's documented example: an encoder may escape its `/`


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_captured_prompt_and_answer_hold_no_secret_json_escaped(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path, stream: bool
) -> None:
    """A Responses stream passed through from a provider that escapes `/` reached the client with the AWS secret
    `[REDACTED]` (its bytes are read with JSON's escapes undone), and the collector with it whole, `\\/` for `/`,
    in every event that repeats the text (review): the capture was redacted as an error's words are, escapes and
    all. What is captured passes the redaction the client's bytes pass; so does a prompt that escapes it."""
    receiver = OtlpReceiver().start()
    secrets = {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}
    running, server = otlp_gateway(upstream, tmp_path, receiver.url, secrets, capture_content=True)
    try:
        key = running.mint()
        asked = {"model": "escaping-gpt", "input": f"SAY The secret is {AWS_SECRET}.", "stream": stream, "store": False}
        answer = httpx.post(
            f"{running.url}/v1/responses",
            content=orjson.dumps(asked).replace(b"/", b"\\/"),  # (the client's encoder escapes it too)
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        root, *_ = receiver.request_spans(answer.headers["x-request-id"])
    finally:
        server.stop()
        receiver.stop()
    assert "[REDACTED]" in answer.text and AWS_SECRET not in answer.text.replace("\\/", "/")
    prompt, said = root.attributes["gen_ai.input.messages"], root.attributes["gen_ai.output.messages"]
    assert "The secret is [REDACTED]" in prompt and "The secret is [REDACTED]" in said
    for captured in (prompt, said):
        assert AWS_SECRET[:12] not in captured.replace("\\/", "/"), captured


def timed_requests(running: Running, key: str, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=running.url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            answer = client.post(
                "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
            )
            times.append(time.perf_counter() - started)
            assert answer.status_code == 200
    return times


def test_a_slow_or_dead_collector_does_not_slow_responses(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path, running: Running
) -> None:
    """A collector that takes 2 s to answer each export, and one that accepts connections and never answers:
    no response waits for either, and the spans that do not fit the queue are dropped and counted."""
    slow = OtlpReceiver(delay_s=2.0).start()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes the handshakes; nothing ever reads or answers
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for endpoint in (slow.url, silent_url):
            traced, server = otlp_gateway(
                upstream, tmp_path / endpoint.rsplit(":", 1)[1], endpoint, batch_size=1, queue_size=4, timeout_ms=3000
            )
            try:
                key, admin, plain = traced.mint(), traced.mint(admin=True), running.mint()
                timed_requests(traced, key, 3)  # connections opened
                times, baseline = [], []
                for _ in range(4):  # interleaved with the same requests to a gateway without tracing
                    times += timed_requests(traced, key, 5)
                    baseline += timed_requests(running, plain, 5)
                dropped = scrape(traced, admin)["gateway_otlp_spans_dropped_total"][labels()]
            finally:
                server.stop()
            # Every export to this collector takes seconds; no response waits for one.
            assert max(times) < 1.0, times
            assert statistics.median(times) < 2 * statistics.median(baseline) + 0.01, (times, baseline)
            assert dropped >= 20  # two spans a request, at most four queued
    slow.stop()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_collector_that_never_answers_does_not_hold_the_queued_requests_answers(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """A request's trace kept its whole answer until the exporter's thread built its spans: with the collector hung,
    40 embeddings answers of 2 MB (100 inputs of 1,000 floats) grew the process by 88 MB (5 MB untraced), and the
    default queue holds some 1,000 such requests (review). Now nothing of an answer is kept unless content is
    captured, and then its head only, within the queue's `queue_bytes`."""
    silent = silent_collector()
    traced, server = otlp_gateway(upstream, tmp_path, f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_ms=60_000)
    try:
        headers = {"authorization": f"Bearer {traced.mint()}"}
        url = f"{traced.url}/v1/embeddings"
        small = {"model": "text-embedding-3-small", "input": "x"}
        assert httpx.post(url, json=small, headers=headers).status_code == 200
        # The exporter's thread has taken that request's spans, and waits on the collector from here on.
        silent.settimeout(10)
        exporting, _ = silent.accept()
        big = {"model": "text-embedding-3-small", "input": ["x"] * 100, "dimensions": 1000, "encoding_format": "float"}
        assert httpx.post(url, json=big, headers=headers, timeout=30).status_code == 200  # (first-use imports)
        gc.collect()
        before, sizes = rss_mb(), 0
        for _ in range(40):
            answer = httpx.post(url, json=big, headers=headers, timeout=30)
            assert answer.status_code == 200
            sizes += len(answer.content)
            del answer
        gc.collect()
        grown = rss_mb() - before
        exporting.close()
    finally:
        server.stop()
        silent.close()
    assert sizes > 60_000_000
    assert grown < 25, f"the process grew {grown:.0f} MB over {sizes / 1e6:.0f} MB of answers relayed"


def test_an_unsampled_caller_trace_is_not_exported(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    quiet = post(traced, "/v1/chat/completions", key, body, traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-00")
    malformed = post(traced, "/v1/chat/completions", key, body, traceparent="00-xyz-00f067aa0ba902b7-01")
    root, *_ = receiver.request_spans(malformed.headers["x-request-id"])  # a new trace, not the malformed one
    assert trace_id_is_new(root)
    with pytest.raises(AssertionError, match="no span"):
        receiver.request_spans(quiet.headers["x-request-id"], timeout_s=0.5)


def test_a_traceparent_of_a_higher_version_is_continued_from_its_first_four_fields(
    traced: Running, receiver: OtlpReceiver
) -> None:
    """`01-<trace>-<span>-01-extra` started a new trace: W3C Trace Context says a higher version SHOULD be parsed
    as version 00, from its first four fields. Version 00 with more after its flags, and version ff, stay invalid."""
    key = traced.mint()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    for header in (f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-extra", f"cc-{CALLER_TRACE}-{CALLER_SPAN}-03"):
        answer = post(traced, "/v1/chat/completions", key, body, traceparent=header)
        root, *_ = receiver.request_spans(answer.headers["x-request-id"])
        assert (root.trace_id, root.parent_span_id) == (CALLER_TRACE, CALLER_SPAN), header
    unsampled = post(traced, "/v1/chat/completions", key, body, traceparent=f"02-{CALLER_TRACE}-{CALLER_SPAN}-00-x")
    with pytest.raises(AssertionError, match="no span"):
        receiver.request_spans(unsampled.headers["x-request-id"], timeout_s=0.5)
    for header in (
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
        f"01-{CALLER_TRACE}-{CALLER_SPAN}-01extra",
    ):
        answer = post(traced, "/v1/chat/completions", key, body, traceparent=header)
        root, *_ = receiver.request_spans(answer.headers["x-request-id"])
        assert trace_id_is_new(root), header


def test_the_docs_traceparent_example_has_the_children_the_docs_name(traced: Running, receiver: OtlpReceiver) -> None:
    """docs/observability.md's curl example (with `$GATEWAY_KEY`, the first admin key: no budget) promised "store
    and upstream children"; it has the upstream attempt's only, and a key with a budget gets `store.admit` too."""
    import re
    import shlex

    page = (Path(__file__).resolve().parents[2] / "docs" / "observability.md").read_text()
    example = re.search(
        r"# A request that continues a trace of the caller's.*?\n(curl .*?)\n```\n\n(.*?)\n\n", page, re.S
    )
    assert example is not None
    words = shlex.split(example.group(1).replace("\\\n", " "))
    headers = dict(words[i + 1].split(": ", 1) for i, word in enumerate(words) if word == "-H")
    body = orjson.loads(words[words.index("-d") + 1])
    said = " ".join(example.group(2).split())
    assert "with its upstream attempt's span as its child" in said and "store and upstream children" not in said
    for key, children in (
        (traced.mint(admin=True), ["chat gpt-4o-mini"]),
        (traced.mint(budget_usd=5.0), ["chat gpt-4o-mini", "store.admit"]),
    ):
        sent = {**headers, "authorization": f"Bearer {key}"}
        answer = httpx.post(f"{traced.url}/v1/chat/completions", json=body, headers=sent, timeout=30)
        assert answer.status_code == 200
        root, *rest = receiver.request_spans(answer.headers["x-request-id"])
        assert (root.name, root.trace_id, root.parent_span_id) == ("chat gpt-4o-mini", CALLER_TRACE, CALLER_SPAN)
        assert sorted(span.name for span in rest) == children


def test_on_lambda_each_invocation_flushes_its_spans_and_emits_emf(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], receiver: OtlpReceiver
) -> None:
    """The buffered function: a frozen environment runs no exporter thread, so each invocation sends its spans
    before it returns (the schedule here is ten minutes: only that flush can deliver them). Its figures also
    go out as CloudWatch EMF: requests, tokens, cost and the gateway's added latency."""
    server, _ = upstream
    before = len(receiver.spans)
    logs: list[str] = []
    results = replay(
        tmp_path,
        server.url,
        [EVENTS / "chat-completions-ok.json", EVENTS / "chat-completions-stream.json"],
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "GATEWAY_METRICS": "on"},
        observability={"otlp": {"schedule_delay_ms": 600_000}},
        logs=logs,
    )
    assert [r["status"] for r in results] == [200, 200]
    roots = [s for s in receiver.spans[before:] if s.kind == SERVER]
    assert [r.attributes["gateway.stream"] for r in roots] == [False, True]
    assert {r.attributes["gateway.request_id"] for r in roots} == {r["headers"]["x-request-id"] for r in results}
    assert all(r.resource["cloud.region"] == "eu-central-1" for r in roots)
    emitted = [orjson.loads(line) for line in logs if '"_aws"' in line and '"requests"' in line]
    assert len(emitted) == 2
    names = {m["Name"] for m in emitted[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert {"requests", "input_tokens", "output_tokens", "spend_usd", "gateway_overhead", "latency"} <= names
    first = {name: value[0] if isinstance(value, list) else value for name, value in emitted[0].items()}
    assert first["input_tokens"] == roots[0].attributes["gen_ai.usage.input_tokens"]
    assert first["output_tokens"] == roots[0].attributes["gen_ai.usage.output_tokens"]
    spent = roots[0].attributes["gateway.cost_usd"] + roots[0].attributes["gateway.fee_usd"]
    assert first["spend_usd"] == pytest.approx(spent)
    assert first["gateway_overhead"] == pytest.approx(roots[0].attributes["gateway.latency.gateway_ms"], abs=0.01)


def silent_collector() -> socket.socket:
    """A collector that accepts connections and never answers: the kernel completes the handshakes, nothing reads."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    return silent


def test_on_lambda_a_collector_that_never_answers_holds_no_invocation_past_the_flush_bound(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """The buffered function exporting to a collector that never answers (the export's own timeout the default 10 s,
    retried once): each invocation took 20.5 s. Now the first waits at most `FLUSH_SECONDS` for its spans, the
    environment is frozen with that export in flight, and the invocations after it do not wait for it at all."""
    server, _ = upstream
    logs: list[str] = []
    with silent_collector() as silent:
        results = replay(
            tmp_path,
            server.url,
            [EVENTS / "chat-completions-ok.json"] * 3,
            freeze_s=0.5,
            environ={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"},
            observability={"otlp": {"schedule_delay_ms": 600_000}},
            logs=logs,
        )
    assert [r["status"] for r in results] == [200] * 3
    first, *later = [r["ms"] for r in results]
    assert first < (LAMBDA_FLUSH_SECONDS + 0.5) * 1000, first
    assert max(later) < 500, later
    assert sum("OTLP export did not finish within 2.0 s" in line for line in logs) == 1


def test_gateway_serve_stops_within_its_bound_when_the_collector_never_answers(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """Shutdown sends what is queued for up to 5 s: it sent on its own thread, behind an export already in flight, and
    waited for the exports' timeouts (10 s, retried once: 20 s and more). Now it stops after 5 s, the spans counted as
    dropped."""
    server, _ = upstream
    with silent_collector() as silent:
        otlp = {"otlp": {"endpoint": f"http://127.0.0.1:{silent.getsockname()[1]}", "schedule_delay_ms": 20}}
        with gateway_serve(server.url, tmp_path, otlp) as served:
            post_to(served.url, served.key)
            time.sleep(0.2)  # the exporter's thread has sent it, and waits for an answer
            post_to(served.url, served.key)
            stopped = served.stopped_in(60)
    assert stopped < 5 + 2, stopped
    assert "OTLP exporter stopped with 4 spans not sent within 5.0 s" in (tmp_path / "gateway.log").read_text()


def test_a_responses_request_and_an_embedding_are_spans_too(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    answer = post(traced, "/v1/responses", key, {"model": "gpt-4o-mini", "input": SECRET_PROMPT, "store": False})
    assert answer.status_code == 200
    root, *children = receiver.request_spans(answer.headers["x-request-id"])
    assert root.attributes["http.route"] == "/v1/responses" and root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.response.finish_reasons"] == [answer.json()["status"]]
    assert root.attributes["gen_ai.usage.output_tokens"] == answer.json()["usage"]["output_tokens"]
    assert len(by_name(children, "chat ")) == 1
    embedded = post(traced, "/v1/embeddings", key, {"model": "text-embedding-3-small", "input": SECRET_PROMPT})
    root, *children = receiver.request_spans(embedded.headers["x-request-id"])
    assert root.name == "embeddings text-embedding-3-small"
    assert root.attributes["gen_ai.operation.name"] == "embeddings"
    assert [s.name for s in by_name(children, "embeddings ")] == ["embeddings text-embedding-3-small"]
    assert SECRET_PROMPT.encode() not in b"".join(receiver.bodies)


def test_an_attempt_cut_by_the_deadline_has_its_span(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    body = {"model": "slow", "messages": [{"role": "user", "content": "x"}]}
    answer = post(traced, "/v1/chat/completions", key, body, **{"x-gateway-deadline-ms": "300"})
    assert answer.status_code == 504
    root, *children = receiver.request_spans(answer.headers["x-request-id"])
    assert root.attributes["error.type"] == "upstream_timeout" and root.status_code == ERROR
    (cut,) = by_name(children, "chat ")
    assert cut.attributes["error.type"] == "upstream_timeout" and "http.response.status_code" not in cut.attributes
    assert 0.25e9 < cut.end_ns - cut.start_ns < 1.5e9  # the wait for the answer the deadline cut short


def stream_text(running: Running, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, str]:
    """A streamed answer's whole body, and its request id."""
    with httpx.stream("POST", f"{running.url}{path}", json=body, headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        return "".join(answer.iter_text()), answer.headers["x-request-id"]


def test_passed_through_streams_name_their_finish_reason(traced: Running, receiver: OtlpReceiver) -> None:
    key = traced.mint()
    if "claude-haiku-4-5" in traced.gateway.config.models:
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        text, request_id = stream_text(
            traced, "/v1/messages", body, {"x-api-key": key, "anthropic-version": "2023-06-01"}
        )
        stop = next(
            orjson.loads(line[6:])["delta"]["stop_reason"]
            for line in text.splitlines()
            if '"message_delta"' in line and line.startswith("data: ")
        )
        root, *_ = receiver.request_spans(request_id)
        assert root.attributes["gateway.stream"] is True and root.attributes["gen_ai.response.finish_reasons"] == [stop]
    body = {"model": "gpt-responses", "input": "x", "stream": True, "store": False}
    text, request_id = stream_text(traced, "/v1/responses", body, {"authorization": f"Bearer {key}"})
    assert "response.completed" in text
    root, *_ = receiver.request_spans(request_id)
    assert root.attributes["gen_ai.response.finish_reasons"] == ["completed"]


def test_gateway_serve_sends_what_is_queued_when_it_stops(
    upstream: tuple[ServerThread, dict[str, Any]], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """The schedule is ten minutes and the batch far from full: only the flush on shutdown (SIGTERM) sends."""
    server, _ = upstream
    otlp = {"otlp": {"endpoint": receiver.url, "schedule_delay_ms": 600_000}}
    with gateway_serve(server.url, tmp_path, otlp) as served:
        answer = post_to(served.url, served.key)
        served.process.terminate()
        served.process.wait(15)  # (uvicorn shuts down, then ends by the signal it caught, as it should)
    root, *children = receiver.request_spans(answer.headers["x-request-id"], timeout_s=1)
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini" and len(children) == 1


def post_to(url: str, key: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    return answer


def test_a_key_sent_as_the_model_reaches_no_span(traced: Running, receiver: OtlpReceiver) -> None:
    """A client that put its key where the model belongs (`"model": "gwk_..."`, a 404) had it exported twice, in
    the request span's name and its `gen_ai.request.model`."""
    key = traced.mint(models=["*"])
    answer = post(traced, "/v1/chat/completions", key, {"model": key, "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.status_code == 404 and key not in answer.text
    root, *_ = receiver.request_spans(answer.headers["x-request-id"])
    assert root.name == "chat [REDACTED]" and root.attributes["gen_ai.request.model"] == "[REDACTED]"
    assert key.encode() not in b"".join(receiver.bodies)


def test_a_huge_model_name_is_cut_in_the_answer_the_log_line_and_the_span(
    traced: Running, receiver: OtlpReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5 MB `"model"` (the body limit allows ~8 MiB) was echoed whole: a 5,000,481-byte log line (CloudWatch Logs
    takes events of 256 KB), a 10 MB span (its name and `gen_ai.request.model`), whose batch a collector refused
    with every other request's span in it, and a 5 MB error message. Each carries the name's first 256 characters;
    a key that begins before the cut is redacted whole, not left with its first characters showing."""
    import orjson

    key = traced.mint(models=["*"])
    capsys.readouterr()
    huge = "m" * 5_000_000
    answer = post(traced, "/v1/chat/completions", key, {"model": huge, "messages": [{"role": "user", "content": "x"}]})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
    assert len(answer.content) < 1024 and f"'{'m' * 256}'" in answer.json()["error"]["message"]
    root, *_ = receiver.request_spans(answer.headers["x-request-id"])
    assert root.name == f"chat {'m' * 256}" and root.attributes["gen_ai.request.model"] == "m" * 256
    logged = [line for line in capsys.readouterr().out.splitlines() if answer.headers["x-request-id"] in line]
    assert [orjson.loads(line)["model"] for line in logged] == ["m" * 256] and len(logged[0]) < 2048

    straddling = "m" * 249 + "/" + key  # the key begins 6 characters before the cut
    answer = post(
        traced, "/v1/chat/completions", key, {"model": straddling, "messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status_code == 404
    root, *_ = receiver.request_spans(answer.headers["x-request-id"])
    assert root.attributes["gen_ai.request.model"] == ("m" * 249 + "/[REDACTED]")[:256]
    assert key[:6] not in answer.text.replace("m" * 250, "")
    assert key[:6] not in capsys.readouterr().out.replace("m" * 250, "")
    scoped = traced.mint(models=["gpt-4o-mini"])  # a key limited to others: its 404 (it was a 403) quotes the name too
    answer = post(
        traced, "/v1/chat/completions", scoped, {"model": huge, "messages": [{"role": "user", "content": "x"}]}
    )
    assert answer.status_code == 404 and len(answer.content) < 1024


# The deltas' texts in a captured pass-through stream's events, as a client's SDK joins them (and the whole texts
# a Responses stream repeats in its `*.done` events and its last response).
SHAPED = "sk-ant-api03-abcdefghijklmnop"  # a credential's shape, redacted in what is captured
DELTA_TEXTS = re.compile(r'"(?:text|thinking|partial_json|delta)":"((?:[^"\\]|\\.)*)"')


def said_in_a_passed_through_stream(running: Running, path: str, key: str, say: str) -> tuple[str, str]:
    """What a pass-through stream told to `say` streams (four characters a delta), and its request id."""
    if path == "/v1/messages":
        body: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 200, "stream": True}
        body["messages"] = [{"role": "user", "content": f"SAY {say}"}]
        return stream_text(running, path, body, {"x-api-key": key, "anthropic-version": "2023-06-01"})
    body = {"model": "gpt-responses", "input": f"SAY {say}", "stream": True, "store": False}
    return stream_text(running, path, body, {"authorization": f"Bearer {key}"})


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
def test_a_secret_said_across_a_passed_through_streams_deltas_goes_out_redacted(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path, path: str
) -> None:
    """A pass-through stream (a Messages stream from Anthropic, a Responses stream from OpenAI) was captured as its
    events one after another, and the secret alone of the request's key was looked for in them: said by the model
    across several deltas (as a model streams a 43-character run of tokens), it was in no one event, and went to the
    collector whole in pieces, which a reader of the span joins as the client's SDK does (review mergerev D2); so
    did a credential's shape. Such a stream's answer now goes out as its text, redacted, as a translated stream's
    does. The gateway's own secrets (a provider's key, the AWS secret key) cut across deltas never reached the
    collector in pieces: the relay holds back what could begin one, and the stream it relays is what is captured;
    with them alone, the events still go."""
    receiver = OtlpReceiver().start()
    aws = {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}
    running, server = otlp_gateway(upstream, tmp_path, receiver.url, aws, capture_content=True)
    provider_key = FAKE_KEYS["ANTHROPIC_API_KEY" if path == "/v1/messages" else "OPENAI_API_KEY"]
    known = f"the provider's {provider_key} and AWS's {AWS_SECRET}"
    try:
        key = running.mint()
        own_secret = (split_key(key) or ("", ""))[1]
        said = {}
        for name, say in [
            ("own", f"Your key is {own_secret}, {known}."),
            ("shaped", f"A key: {SHAPED}."),  # (no secret the gateway knows: shaped as a credential)
            ("known", f"Only {known}."),
        ]:
            relayed, request_id = said_in_a_passed_through_stream(running, path, key, say)
            client_joined = "".join(DELTA_TEXTS.findall(relayed))  # (what the client reads: no secret it knows)
            assert provider_key not in client_joined and (name == "shaped") == (SHAPED in client_joined), relayed
            root, *_ = receiver.request_spans(request_id)
            said[name] = root.attributes["gen_ai.output.messages"]
    finally:
        server.stop()
        receiver.stop()
    assert len(own_secret) == 43
    for exported in said.values():
        joined = "".join(DELTA_TEXTS.findall(exported)).replace("\\/", "/")
        for secret in (own_secret, provider_key, AWS_SECRET, SHAPED):
            assert secret not in joined and secret not in exported, exported
    assert said["own"] == "Your key is [REDACTED], the provider's [REDACTED] and AWS's [REDACTED]."
    assert said["shaped"] == "A key: [REDACTED]."
    known_said = "".join(DELTA_TEXTS.findall(said["known"])).replace("\\/", "/")
    assert said["known"].startswith("{") and "the provider's [REDACTED] and AWS's [REDACTED]" in known_said
