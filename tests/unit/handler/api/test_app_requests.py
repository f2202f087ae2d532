"""Request details the app reads from its environment: Lambda's time left, the Web Adapter's client address."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from handler.api import app as app_module
from handler.api.app import (
    MAX_JSON_DEPTH,
    arrival_deadline_s,
    header,
    lambda_time_left_s,
    lwa_source_ip,
    parse_controls,
)
from handler.api.messages_api import MessagesRequest
from handler.api.refused_bodies import fail_fast_validator, invalid_from_validation, nested_deeper_than
from handler.api.responses_api import ResponsesRequest
from handler.errors import InvalidRequestError
from handler.schemas import ChatRequest


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def request(headers: dict[str, str] | None = None, **scope: Any) -> Request:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw, **scope})


def test_a_lambda_invocation_caps_the_deadline_at_its_remaining_time() -> None:
    on_lambda = request(**{"aws.context": LambdaContext(10_000)})
    assert lambda_time_left_s(on_lambda.scope) == pytest.approx(8.5)
    assert parse_controls(on_lambda).deadline_s == pytest.approx(8.5)
    tighter = request({"x-gateway-deadline-ms": "2000"}, **{"aws.context": LambdaContext(10_000)})
    assert parse_controls(tighter).deadline_s == pytest.approx(2.0)
    assert parse_controls(request()).deadline_s is None
    assert lambda_time_left_s(request(**{"aws.context": LambdaContext(100)}).scope) == pytest.approx(0.1)


def arrived(ago_ms: float, **context: Any) -> dict[str, Any]:
    return {"version": "2.0", "requestContext": {**context, "timeEpoch": int(time.time() * 1000 - ago_ms)}}


def test_after_a_cold_start_the_deadline_ends_before_api_gateway_gives_up() -> None:
    """API Gateway's HTTP API gives up 30 s after it received the request, a cold start's init included, which Lambda
    counts apart from the function's Timeout (29 s): after an init of 4 s the deadline came 27.5 s into the
    invocation, 31.5 s after the request's arrival, and API Gateway's bare 503 came first. Found by review."""
    cold = request(**{"aws.context": LambdaContext(29_000), "aws.event": arrived(4_000)})
    assert lambda_time_left_s(cold.scope) == pytest.approx(30 - 4 - 1.5, abs=0.05)
    assert arrival_deadline_s(cold.scope) == pytest.approx(24.5, abs=0.05)
    warm = request(**{"aws.context": LambdaContext(29_000), "aws.event": arrived(20)})
    assert lambda_time_left_s(warm.scope) == pytest.approx(27.5, abs=0.05)  # (the invocation's own bound, sooner)
    rest = {"requestContext": {"requestTimeEpoch": int(time.time() * 1000 - 4_000)}}  # (a REST API waits 29 s)
    assert lambda_time_left_s(request(**{"aws.context": LambdaContext(29_000), "aws.event": rest}).scope) == (
        pytest.approx(23.5, abs=0.05)
    )
    # A function URL waits as long as the function; a sample event's arrival (`sam local invoke`) is long past, one
    # in the future is no arrival: the invocation's time alone.
    for event in (
        arrived(4_000, domainName="abc.lambda-url.us-east-1.on.aws"),
        {"version": "2.0", "requestContext": {"timeEpoch": 1795514400000}},
        arrived(-5_000),
        arrived(4_000) | {"requestContext": {"timeEpoch": "soon"}},
        {"requestContext": None},
    ):
        scope = request(**{"aws.context": LambdaContext(29_000), "aws.event": event}).scope
        assert lambda_time_left_s(scope) == pytest.approx(27.5), event


def test_behind_the_web_adapter_the_invocations_trace_is_the_adapters_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The X-Ray SDK reads a Lambda invocation's trace from `_X_AMZN_TRACE_ID`, which behind the adapter no runtime
    sets: it is taken from the adapter's `x-amzn-trace-id`, on loopback only (a client's own header is no trace)."""
    monkeypatch.setattr(app_module, "TRACING_ON", True)
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-0-before")
    trace = {"x-amzn-trace-id": "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"}
    app_module.adopt_invocation_trace(request(trace, client=("198.51.100.2", 5000)).scope)
    assert app_module.os.environ["_X_AMZN_TRACE_ID"] == "Root=1-0-before"
    app_module.adopt_invocation_trace(request(trace, client=("127.0.0.1", 5000)).scope)
    assert app_module.os.environ["_X_AMZN_TRACE_ID"] == trace["x-amzn-trace-id"]
    monkeypatch.setattr(app_module, "TRACING_ON", False)
    app_module.adopt_invocation_trace(request({"x-amzn-trace-id": "Root=1-1-x"}, client=("127.0.0.1", 5000)).scope)
    assert app_module.os.environ["_X_AMZN_TRACE_ID"] == trace["x-amzn-trace-id"]


def test_behind_the_web_adapter_the_deadline_is_its_lambda_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming function had no deadline of Lambda's: a slow upstream ran until the function was killed,
    unsettled. The adapter's `x-amzn-lambda-context` carries the invocation's deadline (epoch milliseconds)."""
    deadline = int(time.time() * 1000) + 10_000
    adapter = ("127.0.0.1", 5000)
    on_lambda = request({"x-amzn-lambda-context": f'{{"request_id": "r", "deadline": {deadline}}}'}, client=adapter)
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", False)
    assert lambda_time_left_s(on_lambda.scope) is None
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", True)
    assert lambda_time_left_s(on_lambda.scope) == pytest.approx(8.5, abs=0.2)
    assert parse_controls(on_lambda).deadline_s == pytest.approx(8.5, abs=0.2)
    remote = request({"x-amzn-lambda-context": f'{{"deadline": {deadline}}}'}, client=("198.51.100.2", 5000))
    assert lambda_time_left_s(remote.scope) is None  # only the adapter itself, on loopback, is believed
    for raw in ("not json", "[]", '{"deadline": "soon"}', '{"deadline": true}', "{}"):
        assert lambda_time_left_s(request({"x-amzn-lambda-context": raw}, client=adapter).scope) is None
    late = request({"x-amzn-lambda-context": f'{{"deadline": {deadline - 60_000}}}'}, client=adapter)
    assert lambda_time_left_s(late.scope) == pytest.approx(0.1)


def test_controls_come_from_the_gateway_headers_alone() -> None:
    from handler.pipeline.exchange import Controls
    from handler.pipeline.routing import RouteControls

    assert parse_controls(request({"authorization": "Bearer k", "x-request-id": "r"})) == Controls()
    full = request(
        {
            "x-gateway-fallbacks": "none",
            "x-gateway-provider": "anthropic",
            "x-gateway-region": "eu-west-1",
            "x-gateway-deadline-ms": "2500",
            "x-gateway-max-cost-usd": "0.01",
            "x-gateway-strict": "TRUE",
            "x-gateway-enforce-schema": "true",
        }
    )
    assert parse_controls(full) == Controls(
        route=RouteControls(fallbacks=[], provider="anthropic", region="eu-west-1"),
        deadline_s=2.5,
        max_cost_usd=0.01,
        strict=True,
        enforce_schema=True,
    )


def test_a_fallbacks_header_that_names_no_model_is_a_400_not_none() -> None:
    """`x-gateway-fallbacks:` with nothing in it (a client's template whose variable was unset), or only commas,
    was read as `none`: the configured fallbacks were dropped unsaid. Only `none` says no fallbacks."""
    for value in ("", ",", " , ", ",,"):
        with pytest.raises(InvalidRequestError) as refused:
            parse_controls(request({"x-gateway-fallbacks": value}))
        assert refused.value.param == "x-gateway-fallbacks" and "none" in refused.value.message
    for value, fallbacks in (("None", []), (" a , b,", ["a", "b"]), ("a,,b", ["a", "b"])):
        assert parse_controls(request({"x-gateway-fallbacks": value})).route.fallbacks == fallbacks


@pytest.mark.parametrize("name", ["x-gateway-strict", "x-gateway-enforce-schema"])
def test_a_flag_control_is_true_or_false_and_nothing_else_is_taken_for_off(name: str) -> None:
    """`x-gateway-strict: 1` (or `yes`, `on`) was silently taken as off: the parameters it meant to refuse
    went on, dropped; now it is a 400 naming the header."""
    field = "strict" if name == "x-gateway-strict" else "enforce_schema"
    for value, on in (("true", True), (" True ", True), ("false", False), ("FALSE", False), ("", False)):
        assert getattr(parse_controls(request({name: value})), field) is on
    for value in ("1", "yes", "on", "maybe"):
        with pytest.raises(InvalidRequestError) as refused:
            parse_controls(request({name: value}))
        assert refused.value.param == name and "true or false" in refused.value.message


@pytest.mark.parametrize(
    ("name", "value", "other"),
    [
        ("x-gateway-fallbacks", "gpt-4o", "none"),
        ("x-gateway-deadline-ms", "2500", "100"),
        ("x-gateway-max-cost-usd", "100", "0.0000001"),
        ("x-gateway-provider", "openai", "anthropic"),
        ("x-gateway-region", "eu-west-1", "us-east-1"),
        ("x-gateway-strict", "true", "false"),
        ("x-gateway-enforce-schema", "true", "false"),
        ("x-gateway-tags", "team=a", "team=b"),
        ("x-claude-code-session-id", "s1", "s2"),
        ("session-id", "s1", "s2"),
        ("x-session-id", "s1", "s2"),
    ],
)
def test_a_control_on_two_lines_is_one_value_or_a_400(name: str, value: str, other: str) -> None:
    """Each control was read from its first line alone: a second line that differed was dropped unsaid (a cost cap a
    proxy appended after the client's own went unread). Identical lines are one value; differing lines are a 400
    naming the header, as their joined form is."""

    def sent(*values: str) -> Request:
        raw = [(b"x-request-id", b"r"), *((name.encode(), v.encode()) for v in values)]
        return Request({"type": "http", "method": "POST", "path": "/", "headers": raw})

    assert parse_controls(sent(value, value)) == parse_controls(sent(value))
    for lines in ((value, other), (other, value)):
        with pytest.raises(InvalidRequestError) as refused:
            parse_controls(sent(*lines))
        assert refused.value.param == name and name in refused.value.message


def test_a_header_of_the_gateways_prefix_it_does_not_read_is_left_alone_on_any_lines() -> None:
    """Only the controls the gateway reads are held to one value: a client's own `x-gateway-*` header, on two lines
    that differ, is no reason to refuse its request."""
    raw = [(b"x-gateway-trace-label", b"a"), (b"x-gateway-trace-label", b"b"), (b"x-gateway-strict", b"true")]
    controls = parse_controls(Request({"type": "http", "method": "POST", "path": "/", "headers": raw}))
    assert controls.strict


def test_web_adapter_request_context_gives_the_client_address() -> None:
    context = '{"http": {"method": "POST", "path": "/v1/chat/completions", "sourceIp": "203.0.113.7"}}'
    assert lwa_source_ip(context) == "203.0.113.7"
    assert lwa_source_ip('{"identity": {"sourceIp": "2001:db8::1"}}') == "2001:db8::1"
    for bad in (None, "", "not json", "[]", '{"http": {"sourceIp": "evil"}}', '{"http": 5}'):
        assert lwa_source_ip(bad) is None


def test_the_request_context_counts_only_behind_the_web_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    api = app_module.Api.__new__(app_module.Api)
    api.trusted = []
    spoofed = request({"x-amzn-request-context": '{"http": {"sourceIp": "10.0.0.1"}}'}, client=("127.0.0.1", 5000))
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", False)
    assert api.client_ip(spoofed) == "127.0.0.1"
    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", True)
    assert api.client_ip(spoofed) == "10.0.0.1"
    remote = request({"x-amzn-request-context": '{"http": {"sourceIp": "10.0.0.1"}}'}, client=("198.51.100.2", 5000))
    assert api.client_ip(remote) == "198.51.100.2"  # only the adapter itself, on loopback, is believed


def test_every_x_forwarded_for_line_is_read_from_the_right(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that adds its own `X-Forwarded-For` line (HAProxy's `option forwardfor`) rather than extending the
    client's left the client's line first, and only the first was read: a client behind a trusted proxy chose its
    own address, past a key's `allow_ips` (found by review)."""
    import ipaddress

    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", False)
    api = app_module.Api.__new__(app_module.Api)
    api.trusted = [ipaddress.ip_network("127.0.0.1/32")]
    lines = [(b"x-forwarded-for", b"10.9.9.9"), (b"x-forwarded-for", b"203.0.113.7")]
    split = Request({"type": "http", "method": "GET", "path": "/", "headers": lines, "client": ("127.0.0.1", 5000)})
    assert api.client_ip(split) == "203.0.113.7"
    joined = request({"x-forwarded-for": "10.9.9.9, 203.0.113.7"}, client=("127.0.0.1", 5000))
    assert api.client_ip(joined) == "203.0.113.7"
    behind = request({"x-forwarded-for": "203.0.113.7, 127.0.0.1"}, client=("127.0.0.1", 5000))
    assert api.client_ip(behind) == "203.0.113.7"  # trusted hops are walked past


def test_a_dual_stack_peer_and_hops_with_ports_are_read_as_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a dual-stack socket (`gateway serve --host ::`) an IPv4 proxy's address is `::ffff:127.0.0.1`, which was
    tested raw against `127.0.0.0/8`: never trusted, so `X-Forwarded-For` was ignored and every key's `allow_ips`
    checked the proxy's own address. And a hop with a port (`203.0.113.7:51234`, as Azure Application Gateway writes
    it) was taken for no address at all: its allowed client refused (found by review)."""
    import ipaddress

    monkeypatch.setattr(app_module, "BEHIND_WEB_ADAPTER", False)
    api = app_module.Api.__new__(app_module.Api)
    api.trusted = [ipaddress.ip_network("127.0.0.0/8")]
    mapped = ("::ffff:127.0.0.1", 5000)
    assert api.client_ip(request({"x-forwarded-for": "198.51.100.1"}, client=mapped)) == "198.51.100.1"
    assert api.client_ip(request({"x-forwarded-for": "::ffff:203.0.113.7"}, client=mapped)) == "203.0.113.7"
    behind = request({"x-forwarded-for": "198.51.100.1, ::ffff:127.0.0.2"}, client=mapped)
    assert api.client_ip(behind) == "198.51.100.1"  # a mapped trusted hop is walked past too
    for hop, client in (
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("10.9.9.9, 203.0.113.7:51234", "203.0.113.7"),
    ):
        assert api.client_ip(request({"x-forwarded-for": hop}, client=("127.0.0.1", 5000))) == client
    for unreadable in ("203.0.113.7:port", "2001:db8::1:443x", "[2001:db8::1]443", "[2001:db8::1", "unknown"):
        assert api.client_ip(request({"x-forwarded-for": unreadable}, client=mapped)) == unreadable  # no address
    untrusted = ("::ffff:198.51.100.2", 5000)
    assert api.client_ip(request({"x-forwarded-for": "10.0.0.1"}, client=untrusted)) == "198.51.100.2"


def test_a_keys_ip_ranges_hold_behind_a_trusted_proxy_on_a_dual_stack_socket() -> None:
    """What a key holder sees (the review's figures, port 18434): a key allowed from 127.0.0.0/8 answered 200 to a
    client the proxy said was 198.51.100.1, and a key allowed from 203.0.113.0/24 refused its own client (403
    "requests from ::ffff:127.0.0.1"). Through the app, with the peer a dual-stack socket gives."""
    import asyncio

    from starlette.testclient import TestClient

    from handler.api.app import create_app
    from handler.config import parse_config
    from handler.pipeline.gateway import build_gateway
    from handler.pipeline.key_admin import KeyAdmin
    from handler.ports import KeyRecord

    config = parse_config({"gateway": {"trusted_proxies": ["127.0.0.0/8"]}}, set())
    gateway = build_gateway(config=config, store_url="sqlite://", environ={})

    def mint(allow_ips: list[str]) -> str:
        record = KeyRecord(id="", name="ranged", secret_hash="", created_at=0, allow_ips=allow_ips)
        return asyncio.run(KeyAdmin(gateway.keys).mint(record)).key

    internal, office = mint(["127.0.0.0/8"]), mint(["203.0.113.0/24"])
    with TestClient(create_app(gateway), client=("::ffff:127.0.0.1", 50000)) as client:

        def whoami(key: str, forwarded: str) -> Any:
            return client.get("/v1/key", headers={"authorization": f"Bearer {key}", "x-forwarded-for": forwarded})

        outside = whoami(internal, "198.51.100.1")
        assert outside.status_code == 403 and outside.json()["error"]["code"] == "ip_not_allowed"
        assert "198.51.100.1" in outside.json()["error"]["message"]
        assert whoami(office, "198.51.100.1").status_code == 403
        assert whoami(office, "203.0.113.7").status_code == 200
        assert whoami(office, "203.0.113.7:51234").status_code == 200
        assert whoami(internal, "127.0.0.1").status_code == 200


def test_a_wrong_method_is_405_with_allow() -> None:
    from starlette.testclient import TestClient

    from handler.api.app import create_app
    from handler.pipeline.gateway import build_gateway

    gateway = build_gateway(store_url="sqlite://", environ={})
    with TestClient(create_app(gateway)) as client:
        answer = client.get("/v1/chat/completions")
    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert answer.json()["error"]["code"] == "method_not_allowed"


def test_a_404_or_405_echoes_the_method_clipped_and_redacted_as_the_path() -> None:
    """A 404 or 405 names the request's method and path; the path was clipped, the method echoed whole: a 100 KB
    method (a token any length, which an ASGI server or the Lambda function's event passes) was a 100 KB answer."""
    from starlette.testclient import TestClient

    from handler.redaction import NAME_CHARS

    key = "AKIAIOSFODNN7EXAMPLE"  # (a key's shape that survives the client's upper-casing of the method)
    with TestClient(gateway_app()) as client:
        for path, status in (("/v1/chat/completions", 405), ("/v2/nothing", 404)):
            for method in ("X" * 100_000, "X" * (NAME_CHARS - 10) + f"-{key}-" + "X" * 100_000):
                answer = client.request(method, path)
                assert answer.status_code == status
                message = answer.json()["error"]["message"]
                assert len(answer.content) < 2 * NAME_CHARS + 200
                assert message.endswith(f" {path}: {answer.reason_phrase}")
                assert "AKIA" not in message


def gateway_app() -> Any:
    from handler.api.app import create_app
    from handler.pipeline.gateway import build_gateway

    return create_app(build_gateway(store_url="sqlite://", environ={}))


def test_the_direct_lane_answers_errors_as_the_router_does() -> None:
    """The proxied routes skip Starlette's router; their errors still come out in the interface's shapes."""
    from starlette.testclient import TestClient

    from handler.ports import StoreError

    app = gateway_app()

    async def store_down(request: Request) -> Any:
        raise StoreError("connection refused to 10.0.0.5")

    async def broken(request: Request) -> Any:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        unauthenticated = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["type"] == "authentication_error"
        assert unauthenticated.headers["x-request-id"].startswith("req_")
        anthropic = client.post("/v1/messages", json={})
        assert anthropic.status_code == 401 and anthropic.json()["type"] == "error"  # Anthropic's shape
        app.direct["/v1/embeddings"] = store_down
        down = client.post("/v1/embeddings", json={})
        assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
        assert "10.0.0.5" not in down.text
        app.direct["/v1/chat/completions"] = broken
        failed = client.post("/v1/chat/completions", json={})
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
        assert failed.headers["x-request-id"].startswith("req_")
        assert "a bug" not in failed.text
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug"):
        client.post("/v1/chat/completions", json={})  # re-raised after the 500, for the server to log


@pytest.mark.parametrize("root", ["", "/prod"])
def test_messages_errors_are_in_anthropics_shape_under_a_root_path(root: str) -> None:
    """Mounted under a stage's prefix (Mangum's `/prod`), a Messages client still gets Anthropic's error shape and
    a Chat Completions client OpenAI's: the shape follows the route, not the path with its prefix."""
    from starlette.testclient import TestClient

    headers = {"x-api-key": "gwk_bad", "anthropic-version": "2023-06-01"}
    with TestClient(gateway_app(), root_path=root) as client:
        for path in ("/v1/messages", "/v1/messages/count_tokens"):
            refused = client.post(f"{root}{path}", json={"model": "m"}, headers=headers)
            assert refused.status_code == 401 and refused.json()["type"] == "error", path
            assert refused.json()["error"]["type"] == "authentication_error"
        chat = client.post(f"{root}/v1/chat/completions", json={"model": "m"}, headers=headers)
        assert chat.status_code == 401 and chat.json()["error"]["type"] == "authentication_error"


async def test_the_direct_lane_routes_under_a_root_path() -> None:
    """Mounted under a prefix (a proxy's or Mangum's root path), the proxied routes are still found."""
    app = gateway_app()
    seen: list[str] = []

    async def handler(request: Request) -> Any:
        from starlette.responses import Response

        seen.append(request.state.request_id)
        return Response(b"{}", media_type="application/json")

    app.direct["/v1/chat/completions"] = handler
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/prod/v1/chat/completions", "root_path": "/prod",
             "headers": [], "query_string": b""}  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 200 and len(seen) == 1 and seen[0].startswith("req_")


def test_a_key_in_a_path_is_neither_logged_nor_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    """A client that puts a whole key where an id belongs (`/admin/keys/{id}`), or anywhere in a path: the 404
    names the path and the request line logs it, both without the key's secret."""
    from starlette.testclient import TestClient

    secret = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3t"
    key = f"gwk_abcdefghijkm_{secret}"
    with TestClient(gateway_app()) as client:
        missing = client.get(f"/v1/{key}")
        assert missing.status_code == 404 and "[REDACTED]" in missing.text and secret not in missing.text
        unknown = client.get(f"/admin/keys/{key}", headers={"authorization": f"Bearer {key}"})
        assert unknown.status_code == 401 and secret not in unknown.text
    logged = capsys.readouterr().out
    assert '"status":404' in logged and secret not in logged


async def test_a_client_gone_before_its_body_was_sent_is_a_499_not_a_500() -> None:
    """Starlette's ClientDisconnect while the body streams in: the client left (499, client_closed_request),
    which is not the gateway's failure (a 500 fed its error alarms)."""
    from handler.api.app import Api
    from handler.errors import ClientClosedError
    from handler.pipeline.gateway import build_gateway

    messages = iter([{"type": "http.request", "body": b'{"model":', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    api = Api(build_gateway(store_url="sqlite://", environ={}))
    with pytest.raises(ClientClosedError) as gone:
        await api.body(Request(scope, receive))
    assert gone.value.status == 499


async def test_a_body_the_server_ended_is_observed_with_the_error_it_answered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gateway serve` answers a body not whole in time (408, or its deadline's 504: handler/entry/server.py) and ends
    the app's read as a client's leaving does; the app observes the request with that error (`BODY_LATE`), with the
    request id the answer carried, not as a client that left (499)."""
    from handler.api.app import BODY_LATE
    from handler.errors import RequestTimeoutError

    app = gateway_app()
    scope = {"type": "http", "method": "POST", "path": "/dashboard/sign-in", "headers": [], "query_string": b""}
    sent: list[dict[str, Any]] = []
    messages = iter([{"type": "http.request", "body": b'{"tok', "more_body": True}, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        message = next(messages)
        if message["type"] == "http.disconnect":  # (the server's timer ran out: handler/entry/server.py)
            scope["state"][BODY_LATE] = RequestTimeoutError("the request's body was not whole within 60 s")
        return message

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 408
    assert dict(sent[0]["headers"])[b"x-request-id"] == scope["state"]["request_id"].encode()
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "request_timeout"
    [line] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if "request_timeout" in line]
    assert line["status"] == 408 and line["request_id"] == scope["state"]["request_id"]


@pytest.mark.parametrize(
    ("method", "path", "anthropic"),
    [("POST", "/v1/chat/completions", False), ("POST", "/v1/messages", True), ("GET", "/v1/key", False)],
)
async def test_a_request_a_stopping_server_cuts_before_its_answer_is_told_so_in_its_apis_error_shape(
    method: str, path: str, anthropic: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn cuts what is still going once `--shutdown-grace` has run out: a request whose answer had not begun
    got its plain-text 500, no request id, no `x-should-retry` (review). Cut so on either lane, it is the gateway's
    503 in its API's shape; a cancellation of any other server's goes on as before."""
    app = gateway_app()
    gateway = app.state.gateway
    waiting = asyncio.Event()

    async def hang(*_: Any) -> Any:
        waiting.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(gateway.keys, "authenticate_lineage", hang)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def cut(stopping: bool) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "query_string": b"",
                 "headers": [(b"authorization", b"Bearer gwk_k_s")]}  # fmt: skip
        waiting.clear()
        serving = asyncio.ensure_future(app(scope, receive, send))
        await waiting.wait()
        gateway.stopping = stopping
        serving.cancel("Task cancelled, timeout graceful shutdown exceeded")  # (uvicorn's words)
        await serving
        return sent

    with pytest.raises(asyncio.CancelledError):
        await cut(stopping=False)
    start, body = await cut(stopping=True)
    headers = dict(start["headers"])
    assert start["status"] == 503
    assert headers[b"x-should-retry"] == b"true" and headers[b"retry-after"] == b"1"
    assert headers[b"x-request-id"].startswith(b"req_")
    said = orjson.loads(body["body"])
    if anthropic:
        assert said["type"] == "error" and said["error"]["type"] == "api_error"
        assert headers[b"request-id"] == headers[b"x-request-id"]
    else:
        assert (said["error"]["type"], said["error"]["code"]) == ("service_unavailable", "server_shutting_down")
    message = said["error"]["message"]
    assert message.startswith("the gateway shut down") and "nothing is charged" in message


async def test_an_answer_a_stopping_server_cuts_once_it_has_begun_is_not_answered_twice() -> None:
    """A cut after the answer began (the Starlette lane's: its response's start sent) cannot be the 503: it ends as
    before, for the server to close the connection."""
    app = gateway_app()
    app.state.gateway.stopping = True
    started = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        started.set()
        await asyncio.Event().wait()  # a client that reads nothing: the write waits

    scope = {"type": "http", "method": "GET", "path": "/health", "headers": [], "query_string": b""}
    serving = asyncio.ensure_future(app(scope, receive, send))
    await started.wait()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(serving, 5)


async def test_a_body_in_several_messages_is_read_whole_and_kept_for_a_later_reader() -> None:
    """The body read from the ASGI messages (no async generator): chunks joined, and kept where Starlette keeps
    it, so `Request.body` after it gives the same bytes instead of waiting for messages that will not come."""
    from handler.api.app import Api
    from handler.pipeline.gateway import build_gateway

    parts = [b'{"model":', b' "m", ', b'"messages": []}']
    messages = iter([{"type": "http.request", "body": p, "more_body": i < 2} for i, p in enumerate(parts)])

    async def receive() -> dict[str, Any]:
        return next(messages)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    api = Api(build_gateway(store_url="sqlite://", environ={}))
    request = Request(scope, receive)
    assert await api.body(request) == b"".join(parts)
    assert await request.body() == b"".join(parts)
    assert await api.body(request) == b"".join(parts)


async def test_a_body_without_a_length_is_refused_once_its_chunks_pass_the_limit() -> None:
    """No content-length (chunked): the limit is counted over the messages as they come, a 413 once passed."""
    from handler.api.app import Api
    from handler.errors import RequestTooLargeError
    from handler.pipeline.gateway import build_gateway

    api = Api(build_gateway(store_url="sqlite://", environ={}))
    chunk = b"x" * (api.max_body // 2 + 1)
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": chunk, "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    with pytest.raises(RequestTooLargeError) as refused:
        await api.body(Request(scope, receive))
    assert refused.value.status == 413 and len(received) == 2


def depth_of(value: Any) -> int:
    """JSON nesting by recursion, the definition `nested_deeper_than` answers to (a scalar is 0 levels)."""
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner, max_size=4),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=2), JSON_VALUES, max_size=4), st.integers(1, 8))
def test_nesting_is_measured_exactly(data: dict[str, Any], limit: int) -> None:
    assert nested_deeper_than(data, limit) == (depth_of(data) > limit)


@pytest.mark.parametrize("depth", [127, 128, 129])
def test_nesting_at_the_bodys_bound(depth: int) -> None:
    body = orjson.loads(b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}")
    deepest_in_a_wide_body = {"wide": [{"k": "v" * 10, "n": [1, 2]}] * 50, "deep": body}
    assert nested_deeper_than(body, MAX_JSON_DEPTH) == (depth > MAX_JSON_DEPTH)
    assert nested_deeper_than(deepest_in_a_wide_body, MAX_JSON_DEPTH) == (depth + 1 > MAX_JSON_DEPTH)


@pytest.mark.parametrize(
    ("message", "param", "says"),
    [
        ({"role": "user", "content": [{"type": "text"}]}, "messages.0.content.0.text", "Field required"),
        ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages.0.content.0.text", "valid string"),
        ({"role": "robot", "content": "hi"}, "messages.0.role", "Input should be"),
    ],
)
def test_a_validation_error_names_the_clients_field_at_its_deepest(message: Any, param: str, says: str) -> None:
    """Not pydantic's names for a union's members (`messages.0.content.str`), nor the first member's complaint
    when another member went further (a text part without its text was "content: a valid string")."""
    body = {"model": "m", "messages": [message]}
    with pytest.raises(ValidationError) as raised:
        ChatRequest.model_validate(body)
    error = invalid_from_validation(raised.value, body)
    assert error.param == param and says in error.message, (error.param, error.message)


def test_a_large_body_is_named_by_its_first_problem_without_all_of_them_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydantic's whole error list (a dict each) was built to name one problem: 500,000 of them held the event loop
    for seconds (review). In a large body every list stops at its first bad item (`fail_fast_validator`); past
    `ERRORS_READ` errors (a small body's), only the first are read."""
    items = {"model": "m", "messages": [{"role": "user", "content": "hi"}, *[1] * 100_000]}
    with pytest.raises(ValidationError) as raised:
        fail_fast_validator(ChatRequest).validate_python(items)
    assert raised.value.error_count() == 1
    assert str(invalid_from_validation(raised.value, items).message).startswith("messages.1: Input should be")
    small = {"model": "m", "messages": [1] * 5_000}
    with pytest.raises(ValidationError) as raised:
        ChatRequest.model_validate(small)
    monkeypatch.setattr(ValidationError, "errors", None)  # (past `ERRORS_READ`: not built)
    error = invalid_from_validation(raised.value, small)
    assert (error.param, error.message) == (
        "messages.0",
        "messages.0: Input should be a valid dictionary or instance of Message (and 4999 more problems)",
    )


LONG = [1] * 1_000
TEXT = {"type": "text", "text": "hi"}
HI = [{"role": "user", "content": "hi"}]
CALL = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}, *[{}] * 1_000]}),
        (ChatRequest, {"model": "m", "messages": [{"role": "user", "content": [TEXT, *LONG]}]}),
        (ChatRequest, {"model": "m", "messages": [{"role": "assistant", "tool_calls": [CALL, *LONG]}]}),
        (ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": LONG}),
        (ChatRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["x", *LONG]}),
        (MessagesRequest, {"model": "m", "max_tokens": 1, "messages": LONG}),
        (MessagesRequest, {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [TEXT, *LONG]}]}),
        (
            MessagesRequest,
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "tools": LONG},
        ),
        (
            MessagesRequest,
            {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "stop_sequences": LONG},
        ),
        (ResponsesRequest, {"model": "m", "input": ["x", *LONG]}),
        (ResponsesRequest, {"model": "m", "tools": LONG}),
    ],
)
def test_every_list_of_a_large_body_stops_at_its_first_bad_item(model: type[BaseModel], body: dict[str, Any]) -> None:
    """However deep the list (a message's parts, its tool calls), one error for it: two where it is one member of a
    union (content's text or parts), against an error an item the models' own validators give."""
    with pytest.raises(ValidationError) as own:
        model.model_validate(body)
    with pytest.raises(ValidationError) as raised:
        fail_fast_validator(model).validate_python(body)
    assert own.value.error_count() >= 1_000
    assert raised.value.error_count() <= 2, raised.value.errors()[:3]


def test_a_large_valid_body_validates_as_the_models_own_validator_has_it() -> None:
    """The same classes, fields and extra fields, and each model's own validator left as it was (pydantic-core would
    have reused it, lists and all, for the fail-fast one: `__pydantic_complete__`)."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [TEXT, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c", "content": "42"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "stop": ["x"],
        "seed": 3,
        "logit_bias": {"50256": -100},
    }
    fast = fail_fast_validator(ChatRequest).validate_python(body)
    own = ChatRequest.model_validate(body)
    assert type(fast) is ChatRequest and fast == own
    assert [type(m) for m in fast.messages] == [type(m) for m in own.messages]
    assert (
        fast.model_dump(exclude_unset=True) == own.model_dump(exclude_unset=True)
        and fast.model_extra == own.model_extra
    )
    assert ChatRequest.__pydantic_complete__ is True
    with pytest.raises(ValidationError) as raised:
        ChatRequest.model_validate({"model": "m", "messages": LONG})
    assert raised.value.error_count() == len(LONG)  # (the model's own validator, unchanged)


def test_a_responses_requests_metadata_is_held_to_openais_limits_before_its_values_are_read() -> None:
    """16 pairs, keys of 64 characters, values of 512 (OpenAI's documented limits): a dict is validated whole,
    not `fail_fast`, and 200,000 wrong values held the event loop 0.7-1.3 s."""
    sixteen = {f"k{i}": "v" for i in range(16)}
    assert ResponsesRequest.model_validate({"model": "m", "metadata": sixteen}).metadata == sixteen
    for metadata, says in [
        ({f"k{i}": i for i in range(200_000)}, "at most 16 key-value pairs, not 200000"),
        ({"k" * 65: "v"}, "keys are at most 64 characters"),
        ({"k": "v" * 513}, "values 512"),
    ]:
        body = {"model": "m", "metadata": metadata}
        started = time.perf_counter()
        with pytest.raises(ValidationError) as raised:
            ResponsesRequest.model_validate(body)
        error = invalid_from_validation(raised.value, body)
        assert error.param == "metadata" and says in error.message, error.message
        assert error.message.startswith("metadata: ") and "Value error" not in error.message, error.message
        assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize("name", ["authorization", "content-type", "content-length", "x-absent"])
def test_a_header_is_read_as_starlettes_headers_read_it(name: str) -> None:
    """`header` reads the raw names as `request.headers.get` does: the first of a repeated header, Latin-1 text,
    an empty value as such, None for one not sent."""
    raw = [
        (b"authorization", b"Bearer first"),
        (b"authorization", b"Bearer second"),
        (b"content-type", "application/json; charset=\u00e9".encode("latin-1")),
        (b"content-length", b""),
    ]
    request = Request({"type": "http", "headers": raw})
    assert header(request, name.encode()) == request.headers.get(name)


@pytest.mark.parametrize("pair", [list, tuple], ids=["mangum", "uvicorn"])
def test_a_repeated_header_is_read_as_its_first_value(pair: Any) -> None:
    """The headers every proxied request reads (`header`'s, the deadline's, the controls') are read as Starlette's
    `Headers.get` reads them: a repeated name's first value, from headers as Mangum (lists) or uvicorn (tuples)
    gives them; a control among them is seen, and one set nowhere is none."""
    raw = [(b"authorization", b"Bearer a"), (b"x-gateway-deadline-ms", b"2000"), (b"authorization", b"Bearer b")]
    scope = {"type": "http", "headers": [pair(h) for h in [*raw, (b"x-gateway-deadline-ms", b"1000")]]}
    assert header(Request(scope), b"authorization") == Request(scope).headers.get("authorization") == "Bearer a"
    assert header(Request(scope), b"x-api-key") is None
    assert arrival_deadline_s(scope) == 2.0
    tagged = {"type": "http", "headers": [pair(h) for h in [*raw, (b"x-gateway-tags", b"team=a")]]}
    assert (parse_controls(Request(tagged)).tags, parse_controls(Request(tagged)).deadline_s) == ({"team": "a"}, 2.0)
    assert parse_controls(Request({"type": "http", "headers": [pair(raw[0])]})).deadline_s is None
