"""Routing rules, one fault each: retries, fallbacks, deadlines, pins, cost caps, schema enforcement."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes.openai import TEXT
from tests.functional.conftest import (
    FAKE_KEYS,
    Running,
    closed_port,
    fresh_minute,
    gateway_config,
    openai_client,
    serving,
)
from tests.support.servers import ServerThread

HI = [{"role": "user", "content": "Hi"}]


def client(running: Running, key: str) -> openai.OpenAI:
    return openai_client(running, key)


def route_of(running: Running, key: str, model: str, **headers: str) -> str:
    raw = client(running, key).chat.completions.with_raw_response.create(
        model=model, messages=HI, extra_headers=headers
    )
    assert raw.parse().choices[0].message.content == TEXT
    return raw.headers["x-gateway-route"]


def test_429_honours_retry_after_then_falls_back_to_the_next_model(running: Running, key: str) -> None:
    # The fake's 429 says `retry-after: 0`: one retry of the same deployment, then the fallback model.
    assert route_of(running, key, "limited") == (
        "openai/fail-429@global=429, openai/fail-429@global=429, openai/gpt-4o-mini@global=200"
    )


def test_refused_connection_moves_to_the_next_deployment(running: Running, key: str) -> None:
    route = route_of(running, key, "refused")
    assert route.startswith("dead/gpt-4o-mini@global=connect_error") and route.endswith("openai/gpt-4o-mini@global=200")


@pytest.mark.usefixtures("no_gc_pauses")
def test_first_byte_timeout_falls_back(running: Running, key: str) -> None:
    started = time.monotonic()
    assert (
        route_of(running, key, "slow-then-ok") == "openai/slow@global=upstream_timeout, openai/gpt-4o-mini@global=200"
    )
    assert time.monotonic() - started < 2.0  # first_byte timeout is 1.5 s in the test config


def test_invalid_json_answer_falls_back(running: Running, key: str) -> None:
    assert route_of(running, key, "garbage") == "openai/bad-json@global=invalid_json, openai/gpt-4o-mini@global=200"


def test_a_stream_answered_without_a_single_event_falls_back(running: Running, key: str) -> None:
    """A 200 to a stream request whose body holds no event (JSON, an error an OpenAI-compatible server put in a
    200, a proxy's buffered answer): the provider's malformed answer, so the plan goes on. It was relayed as a
    successful, empty, billed completion."""
    stream = client(running, key).chat.completions.with_raw_response.create(model="garbage", messages=HI, stream=True)
    assert stream.headers["x-gateway-route"] == "openai/bad-json@global=invalid_response, openai/gpt-4o-mini@global=200"
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices) == TEXT


def test_an_answer_of_another_shape_is_the_providers_error_never_a_500(running: Running, key: str) -> None:
    """Valid JSON in a shape the parser does not expect (`choices` that is no list): not streamed, the provider's
    malformed answer (a 502); streamed, after the first chunks, the client's in-stream error, a whole SSE body
    ending in `[DONE]`, and a ledger line with the error's status, not a client's 499."""
    whole = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"model": "garbled", "messages": HI},
        headers={"authorization": f"Bearer {key}"},
    )
    assert whole.status_code == 502 and whole.json()["error"]["code"] == "upstream_error"
    own = running.mint(name="garbled")
    with httpx.stream(
        "POST",
        f"{running.url}/v1/chat/completions",
        json={"model": "garbled", "messages": HI, "stream": True},
        headers={"authorization": f"Bearer {own}"},
    ) as streamed:
        text = streamed.read().decode()
    assert streamed.status_code == 200 and '"content":"Hello"' in text
    assert "malformed stream event" in text and text.rstrip().endswith("data: [DONE]")
    [line] = running.ledger(own)
    assert line.status == 502


def test_stream_fails_over_before_its_first_byte_only(running: Running, key: str) -> None:
    stream = client(running, key).chat.completions.with_raw_response.create(
        model="cut-then-ok", messages=HI, stream=True
    )
    assert stream.headers["x-gateway-route"] == "openai/stream-cut@global=200"
    text = ""
    with pytest.raises(openai.APIError) as cut:
        for chunk in stream.parse():
            text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    # Cut after its first bytes reached us: no failover, and the client is told the answer is not whole (it
    # used to end as if finished).
    assert text == "Hello from" and "ended before the answer was finished" in cut.value.message
    cut_line = running.ledger(key)[-1]  # what was relayed is billed, on a line that says the answer failed
    assert (cut_line.status, cut_line.cost_source, cut_line.output_tokens > 0) == (502, "estimate", True)


def test_fallbacks_header_none_and_override(running: Running, key: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(running, key).chat.completions.create(
            model="limited", messages=HI, extra_headers={"x-gateway-fallbacks": "none"}
        )
    # The provider's 429 survived the gateway's own retry: a 429 the SDKs are told not to repeat at once.
    assert info.value.status_code == 429 and info.value.response.headers["x-should-retry"] == "false"
    assert route_of(running, key, "broken", **{"x-gateway-fallbacks": "gpt-4o-mini"}).endswith("gpt-4o-mini@global=200")


@pytest.mark.usefixtures("no_gc_pauses")
def test_deadline_covers_the_whole_request(running: Running, key: str) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client(running, key).chat.completions.create(
            model="slow", messages=HI, extra_headers={"x-gateway-deadline-ms": "300"}
        )
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    assert time.monotonic() - started < 1.0


def test_region_and_provider_pins(running: Running, key: str) -> None:
    assert route_of(running, key, "regional") == "openai/gpt-4o-mini@us-east-1=200"  # gateway in us-east-1
    pinned = route_of(running, key, "regional", **{"x-gateway-region": "eu-central-1"})
    assert pinned == "openai/gpt-4o-mini@eu-central-1=200"
    with pytest.raises(openai.InternalServerError) as info:
        client(running, key).chat.completions.create(
            model="regional", messages=HI, extra_headers={"x-gateway-provider": "nobody"}
        )
    assert info.value.status_code == 503 and info.value.code == "no_deployment_available"


def test_max_cost_refuses_an_expensive_worst_case(running: Running, key: str) -> None:
    """The interface has one code for a 402, `budget_exceeded` (of type `insufficient_quota`): the request's own cap
    answered `cost_limit_exceeded`, of type `invalid_request_error` (found by review). Its `param` and message say
    it is the request's own cap, not the key's budget."""
    with pytest.raises(openai.APIStatusError) as info:
        client(running, key).chat.completions.create(
            model="gpt-4o-mini", messages=HI, max_tokens=10_000, extra_headers={"x-gateway-max-cost-usd": "0.000001"}
        )
    assert info.value.status_code == 402 and info.value.code == "budget_exceeded"
    assert (info.value.type, info.value.param) == ("insufficient_quota", "x-gateway-max-cost-usd")
    own_cap = "exceeds x-gateway-max-cost-usd $0.000001, this request's own cap (not the key's budget)"
    assert own_cap in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert route_of(running, key, "gpt-4o-mini", **{"x-gateway-max-cost-usd": "1"}).endswith("=200")


def test_bad_control_headers_are_400(running: Running, key: str) -> None:
    for name, value in (("x-gateway-deadline-ms", "soon"), ("x-gateway-max-cost-usd", "-1")):
        with pytest.raises(openai.BadRequestError) as info:
            client(running, key).chat.completions.create(model="gpt-4o-mini", messages=HI, extra_headers={name: value})
        assert info.value.param == name


def test_a_control_headers_value_is_echoed_as_the_client_wrote_it_and_never_a_key(running: Running, key: str) -> None:
    """Sent as curl and Go send a header's text, UTF-8: `x-gateway-deadline-ms: é` was a 400 saying "not 'Ã©'" (the
    server reads a header as Latin-1), a fallback named `modèle` "model 'modÃ¨le'", and a flag's value was echoed
    whole, a key pasted into it too. A number in other digits (`１０００`, which Python reads) is none: the deadline
    read as the request arrives takes ASCII alone. A value longer than 16 characters, which may be a key or a token
    of a shape no redaction knows (a UUID, an Entra client secret, `xai-`, a JWT), is echoed only by its length, a
    fallback's name too."""
    auth = ("authorization", f"Bearer {key}")
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 100}
    cases = [
        ("x-gateway-deadline-ms", "é", "x-gateway-deadline-ms must be a number, not 'é'"),
        ("x-gateway-deadline-ms", "１０００", "x-gateway-deadline-ms must be a number, not '１０００'"),
        ("x-gateway-max-cost-usd", "0,01 €", "x-gateway-max-cost-usd must be a number, not '0,01 €'"),
        ("x-gateway-strict", "vrai", "x-gateway-strict must be true or false, not 'vrai'"),
        ("x-gateway-fallbacks", "modèle", "fallback model 'modèle' in x-gateway-fallbacks does not exist"),
    ]
    for name, value, said in cases:
        answer = httpx.post(
            f"{running.url}/v1/chat/completions", json=body, headers=[auth, (name, value.encode())], timeout=30
        )
        assert answer.status_code == (404 if name == "x-gateway-fallbacks" else 400), (name, answer.text)
        error = answer.json()["error"]
        assert error["param"] == name and error["message"].startswith(said), error["message"]
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    uuid_key, entra_secret = "3f9a2b1c-7d4e-4a8b-9c2d-1e5f6a7b8c9d", "Wk78Q~3fGhJk2.LmNpQ4rS_tU6vW8xY-0zA1bC3dE5"
    for secret in (key, jwt, "xai-" + "k" * 40, "gsk_" + "g" * 40, "tok-" + "0123456789ab" * 2, uuid_key, entra_secret):
        for name, status in (("x-gateway-strict", 400), ("x-gateway-fallbacks", 404)):
            answer = httpx.post(
                f"{running.url}/v1/chat/completions", json=body, headers=[auth, (name, secret)], timeout=30
            )
            assert answer.status_code == status and secret[:12] not in answer.text, (name, answer.text)
            assert f"a value of {len(secret)} characters" in answer.json()["error"]["message"], (name, answer.text)


def test_a_control_header_on_two_lines_is_read_whole(running: Running, key: str) -> None:
    """`x-gateway-max-cost-usd: 100` then `x-gateway-max-cost-usd: 0.0000001` was a 200, charged past the second
    cap, which was never read (swapped, a 402): only the first line counted. Two lines are one of both values joined
    (RFC 9110, 5.3), which is a 400; so are differing lines, naming the header. Identical lines are one. Found by
    review (fuzzing the control headers)."""
    auth = ("authorization", f"Bearer {key}")
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 100}

    def post(*controls: tuple[str, str]) -> httpx.Response:
        return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=[auth, *controls], timeout=30)

    cap = "x-gateway-max-cost-usd"
    assert post((cap, "100, 0.0000001")).status_code == 400
    for lines in (((cap, "100"), (cap, "0.0000001")), ((cap, "0.0000001"), (cap, "100"))):
        answer = post(*lines)
        assert answer.status_code == 400, (answer.status_code, answer.headers.get("x-gateway-cost-usd"))
        assert answer.json()["error"]["param"] == cap and cap in answer.json()["error"]["message"]
    assert post((cap, "100"), (cap, "100")).status_code == 200


def test_route_explain_shows_order_and_reasons(running: Running, key: str) -> None:
    answer = httpx.get(
        f"{running.url}/v1/route", params={"model": "regional"}, headers={"authorization": f"Bearer {key}"}
    )
    attempts = answer.json()["attempts"]
    assert [a["region"] for a in attempts] == ["us-east-1", "eu-central-1"]
    assert attempts[0]["distance_km"] == 0 and attempts[0]["breaker"] == "closed"


SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "city", "schema": {"type": "object", "required": ["city"]}, "strict": True},
}


def test_an_answer_thrown_away_for_its_schema_is_charged(running: Running) -> None:
    """The provider billed every answer the gateway threw away for breaking the response schema: with no attempt
    answering well, the request's line carries them all (it had none, and charged nothing: a budgeted key could
    run completions for free by naming a schema the model never meets), and each is covered by the budget before
    the next attempt goes out."""
    key = running.mint(name="schema-billed", budget_usd=1.0)
    for model in ("json-model", "json-twice"):
        with pytest.raises(openai.APIStatusError) as info:
            client(running, key).chat.completions.create(model=model, messages=HI, response_format=SCHEMA)  # type: ignore[arg-type]
        assert info.value.status_code == 502 and info.value.code == "schema_violation"
    once, twice = running.ledger(key)
    assert (once.status, once.cost_source, twice.status) == (502, "provider", 502)
    assert once.cost_usd is not None and once.cost_usd > 0
    assert twice.cost_usd == pytest.approx(2 * once.cost_usd)
    # The lines count the tokens they charge for (they said 0 in, 0 out at a price: review).
    assert once.input_tokens > 0 and once.output_tokens > 0
    assert (twice.input_tokens, twice.output_tokens) == (2 * once.input_tokens, 2 * once.output_tokens)
    assert twice.route == "openai/gpt-4o-mini@global=schema_violation, openai/gpt-4o-mini@global=schema_violation"
    me = httpx.get(f"{running.url}/v1/key", headers={"authorization": f"Bearer {key}"}).json()
    assert me["spent_usd"] == pytest.approx(3 * once.cost_usd) and me["reserved_usd"] == pytest.approx(0, abs=1e-12)


def test_schema_violation_is_a_502_after_every_attempt(running: Running, key: str) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client(running, key).chat.completions.create(model="json-model", messages=HI, response_format=SCHEMA)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.code == "schema_violation"
    assert "not JSON" in info.value.message
    chunks = list(
        client(running, key).chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,
            response_format=SCHEMA,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"x-gateway-enforce-schema": "true"},
        )
    )
    assert (chunks[-1].model_extra or {})["schema_violation"]["code"] == "schema_violation"


# A `$ref` that points nowhere: jsonschema's `check_schema` accepts it; only validating an answer finds it.
DANGLING = {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}
ENFORCE = {"x-gateway-enforce-schema": "true"}


def enforced(running: Running, key: str, path: str, body: dict[str, object]) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **ENFORCE}
    return httpx.post(f"{running.url}{path}", json=body, headers=headers, timeout=30)


def chat_with(schema: dict[str, object], **fields: object) -> dict[str, object]:
    format_ = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    return {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 5, "response_format": format_, **fields}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", chat_with(DANGLING)),
        ("/v1/chat/completions", chat_with(DANGLING, stream=True)),
        (
            "/v1/responses",
            {
                "model": "gpt-4o-mini",
                "input": "hi",
                "text": {"format": {"type": "json_schema", "name": "s", "schema": DANGLING}},
            },
        ),
        ("/v1/chat/completions", chat_with({"type": "object", "properties": {"a": {"pattern": "(?<"}}})),
        ("/v1/chat/completions", chat_with({"properties": {"a": {"$ref": "https://example.com/s.json"}}})),
    ],
)
def test_an_enforced_schema_that_cannot_check_an_answer_is_a_400_before_anything_is_sent(
    running: Running, path: str, body: dict[str, object]
) -> None:
    """A schema whose reference resolves nowhere was a 500 `internal_error` (a stream's last event) once the
    provider had answered, its key charged; an invalid one (`pattern: "(?<"`) a 400 only after the answer, the key
    charged the reservation's worst case for it (review). Now both are refused before anything is reserved or sent."""
    key = running.mint(name="schema-unchecked")
    sent = len(running.fakes["openai"].state.requests)
    answer = enforced(running, key, path, body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request", answer.text
    assert "response_format.json_schema.schema" in answer.json()["error"]["message"]
    assert "x-gateway-route" not in answer.headers
    assert len(running.fakes["openai"].state.requests) == sent
    assert sum(line.cost_usd or 0 for line in running.ledger(key)) == 0


@pytest.fixture
def own_breakers(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """A gateway of its own: a breaker its test opens is not the other tests'."""
    server, fakes = upstream
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('breakers')) / 'gateway.db'}"
    yield from serving(gateway_config(server.url, set(fakes)), store, upstream, FAKE_KEYS)


def test_one_keys_schema_no_answer_fits_does_not_open_the_breaker_for_every_key(own_breakers: Running) -> None:
    """`{"not": {}}` is a valid schema no answer fits: each request was a 502 `schema_violation` counted as the
    deployment's failure, so five opened its breaker and another key's plain request was a 503
    `no_deployment_available` for 30 s (review). The deployment answered each time: its breaker stays closed."""
    mallory, alice = own_breakers.mint(name="mallory"), own_breakers.mint(name="alice")
    breakers = own_breakers.gateway.router.breakers
    for stream in (False, True):  # (a stream's violation comes with its end: it never counted)
        for _ in range(breakers.threshold):
            body = chat_with({"not": {}}, stream=stream)
            refused = enforced(own_breakers, mallory, "/v1/chat/completions", body)
            assert refused.status_code == (200 if stream else 502) and "schema_violation" in refused.text
        assert breakers.state("openai/gpt-4o-mini@global") == "closed"
        assert route_of(own_breakers, alice, "gpt-4o-mini") == "openai/gpt-4o-mini@global=200"


@pytest.fixture
def two_endpoints(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """One provider's one model at two base URLs (a deployment's own `base_url`), the first of them dead."""
    server, _ = upstream
    data = {
        "providers": {"local": {"type": "openai", "api_key": "env:OPENAI_API_KEY"}},
        "models": {
            "llama": {
                "deployments": [
                    {"provider": "local", "model": "gpt-4o-mini", "base_url": f"http://127.0.0.1:{closed_port()}/v1"},
                    {"provider": "local", "model": "gpt-4o-mini", "base_url": f"{server.url}/openai/v1"},
                ],
                "price": {"input": 1, "output": 2},
            }
        },
    }
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('endpoints')) / 'gateway.db'}"
    yield from serving(parse_config(data, set(REGISTRY)), store, upstream, FAKE_KEYS)


def test_a_dead_endpoint_is_taken_out_of_rotation_and_named_apart_from_a_healthy_one(two_endpoints: Running) -> None:
    """Two deployments of one provider and model that differ only by `base_url` shared one breaker and one name,
    `local/gpt-4o-mini@global`: the healthy one's answers cleared the dead one's failures, so its breaker never opened
    and every request was sent to it first, and the route named both attempts alike. Found by review (routerev36)."""
    key = two_endpoints.mint(name="endpoints")
    routes = []
    for _ in range(7):
        answer = httpx.post(
            f"{two_endpoints.url}/v1/chat/completions",
            json={"model": "llama", "messages": HI},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        routes.append((answer.status_code, answer.headers.get("x-gateway-route") or ""))
    assert all(status == 200 for status, _ in routes), routes
    # Five failures in a row at the dead endpoint open its breaker: the sixth request and later pass it over.
    assert all("=breaker-open" in route for _, route in routes[5:]), routes
    names = [part.rsplit("=", 1)[0] for part in routes[0][1].split(", ")]
    assert len(set(names)) == len(names) == 2, routes[0]
    assert all(name.startswith("local/gpt-4o-mini@global[127.0.0.1:") for name in names), names


AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEA", "format": "wav"}}


def test_a_deployment_that_cannot_take_the_request_passes_it_to_the_next(running: Running, key: str) -> None:
    """The first deployment's provider could not take the request as written (audio for Claude; under strict, a
    `seed` Claude would drop): that refusal was the whole request's 400, though the next deployment takes it. A
    review's example: the interface's own `claude-haiku` (Bedrock, Bedrock, Anthropic) refused an image by URL."""
    sdk = client(running, key)
    sent_to_claude = len(running.fakes["anthropic"].state.requests)
    heard = [{"role": "user", "content": [{"type": "text", "text": "what is it"}, AUDIO]}]
    raw = sdk.chat.completions.with_raw_response.create(model="claude-or-openai", messages=heard)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content == TEXT
    assert raw.headers["x-gateway-route"] == (
        "anthropic/claude-haiku-4-5@global=unsupported, openai/gpt-4o-mini@global=200"
    )
    strict = sdk.chat.completions.with_raw_response.create(
        model="claude-or-openai", messages=HI, seed=7, extra_headers={"x-gateway-strict": "true"}
    )
    assert strict.headers["x-gateway-route"] == (
        "anthropic/claude-haiku-4-5@global=unsupported, openai/gpt-4o-mini@global=200"
    )
    assert "x-gateway-dropped-params" not in strict.headers  # OpenAI honours `seed`
    assert len(running.fakes["anthropic"].state.requests) == sent_to_claude
    assert [line.status for line in running.ledger(key)] == [200, 200]  # a line each, none for the refusals


CLAUDE = "anthropic/claude-haiku-4-5@global"


@pytest.mark.parametrize("way", ["unsupported", "strict", "fallback-limit"])
def test_an_attempt_that_sends_nothing_leaves_a_half_open_breakers_probe_to_the_next(
    own_breakers: Running, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic's breaker is half-open (its cooldown passed) when a request passes Claude over without sending it
    anything: audio Claude cannot take, a `seed` it would drop under strict (`=unsupported`), or Claude as a fallback
    the key's own limit on it refuses (`=rate_limited`). The failover took the breaker's one probe before it knew
    that nothing would be sent, and nothing ever reported on it: for the next 30 s every request passed Anthropic
    over as `=breaker-open` (review). The probe is left to the next request that is sent to it."""
    key = own_breakers.mint(name="probe", model_limits={"claude-haiku-4-5": {"rpm": 1}})
    if way == "fallback-limit":
        fresh_minute()
        client(own_breakers, key).chat.completions.create(model="claude-haiku-4-5", messages=HI)  # (the minute's one)
    breakers = own_breakers.gateway.router.breakers
    for _ in range(breakers.threshold):
        breakers.failure(CLAUDE)
    clock = breakers.clock
    monkeypatch.setattr(breakers, "clock", lambda: clock() + breakers.cooldown)  # (the cooldown has passed)
    assert breakers.state(CLAUDE) == "half-open"
    sent_to_claude = len(own_breakers.fakes["anthropic"].state.requests)
    sdk = client(own_breakers, key).with_options(max_retries=0)
    if way == "fallback-limit":
        with pytest.raises(openai.APIStatusError) as failed:
            sdk.chat.completions.create(
                model="broken", messages=HI, extra_headers={"x-gateway-fallbacks": "claude-haiku-4-5"}
            )
        assert failed.value.response.headers["x-gateway-route"].endswith(f"{CLAUDE}=rate_limited")
    else:
        heard = [{"role": "user", "content": [{"type": "text", "text": "what is it"}, AUDIO]}]
        asked = {"messages": heard} if way == "unsupported" else {"messages": HI, "seed": 7}
        strict = {"x-gateway-strict": "true"} if way == "strict" else {}
        raw = sdk.chat.completions.with_raw_response.create(model="claude-or-openai", **asked, extra_headers=strict)  # type: ignore[call-overload]
        assert raw.headers["x-gateway-route"] == f"{CLAUDE}=unsupported, openai/gpt-4o-mini@global=200"
    assert len(own_breakers.fakes["anthropic"].state.requests) == sent_to_claude
    # The next request Claude can take probes it, and its answer closes the breaker.
    assert route_of_claude(own_breakers, own_breakers.mint(name="next")) == f"{CLAUDE}=200"
    assert len(own_breakers.fakes["anthropic"].state.requests) == sent_to_claude + 1
    assert breakers.state(CLAUDE) == "closed"


def route_of_claude(running: Running, key: str) -> str:
    raw = client(running, key).chat.completions.with_raw_response.create(model="claude-or-openai", messages=HI)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-gateway-route"]


def test_a_request_no_deployment_can_take_is_the_first_ones_400(running: Running, key: str) -> None:
    heard = [{"role": "user", "content": [AUDIO]}]
    with pytest.raises(openai.BadRequestError) as refused:
        client(running, key).chat.completions.create(model="claude-haiku-4-5", messages=heard)  # type: ignore[arg-type]
    assert "input_audio" in refused.value.message
    assert refused.value.response.headers["x-gateway-route"] == "anthropic/claude-haiku-4-5@global=unsupported"
    assert running.ledger(key) == []  # nothing reached a provider


def test_a_fallback_outside_the_keys_scope_is_named_in_the_route_where_the_plan_reaches_it(running: Running) -> None:
    """`x-gateway-route` lists every attempt in order: a fallback skipped as outside the key's scope was listed
    first, before the attempts of the model it falls back from."""
    key = running.mint(models=["broken", "gpt-4o-mini"])
    route = route_of(running, key, "broken", **{"x-gateway-fallbacks": "claude-haiku-4-5,gpt-4o-mini"}).split(", ")
    assert route[0].startswith("openai/fail-500@global=")  # (500, or breaker-open after other tests' failures)
    assert route[1:] == ["claude-haiku-4-5=model_not_allowed", "openai/gpt-4o-mini@global=200"]


def test_an_unknown_fallback_in_the_header_is_the_headers_fault(running: Running, key: str) -> None:
    """`x-gateway-fallbacks: nope` was a 404 naming `param: model`, though the request's model was fine."""
    with pytest.raises(openai.NotFoundError) as info:
        client(running, key).chat.completions.create(
            model="gpt-4o-mini", messages=HI, extra_headers={"x-gateway-fallbacks": "nope"}
        )
    assert (info.value.code, info.value.param) == ("model_not_found", "x-gateway-fallbacks")
    assert "x-gateway-fallbacks" in info.value.message


def test_a_fallbacks_header_that_names_nothing_or_another_kind_is_the_headers_400(running: Running, key: str) -> None:
    """`limited` (always 429) falls back to gpt-4o-mini by config. `x-gateway-fallbacks:` left empty (or `,`) was
    read as `none`, and `text-embedding-3-small` (an embedding model, for a chat request) was dropped unsaid: either
    way the configured fallback was gone and the client got the 429, nothing saying its header was not followed
    (review). Each is a 400 naming the header, before anything is sent."""
    sent = len(running.fakes["openai"].state.requests)
    for value, said in (("", "names no model"), (",,", "names no model"), ("text-embedding-3-small", "embedding")):
        with pytest.raises(openai.BadRequestError) as refused:
            client(running, key).chat.completions.create(
                model="limited", messages=HI, extra_headers={"x-gateway-fallbacks": value}
            )
        assert refused.value.param == "x-gateway-fallbacks" and said in refused.value.message, value
    assert len(running.fakes["openai"].state.requests) == sent and running.ledger(key) == []


# A name of letters (`\p{L}`: ECMA-262's, with the `u` flag JSON Schema's patterns have).
NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^\\p{L}+$"}}}


def messages_saying(model: str, said: str, stream: bool) -> dict[str, object]:
    """A Messages request whose answer, from the fakes, is `said`, under `NAMED` as its output format."""
    return {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": f"SAY {said}"}],
        "output_config": {"format": {"type": "json_schema", "schema": NAMED}},
        "stream": stream,
    }


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """An event stream's events: each one's name and its data."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((lines.get("event", ""), orjson.loads(lines["data"])))
    return events


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gpt-4o-mini"])  # passed through to Anthropic; translated
def test_an_enforced_messages_answer_that_breaks_its_schema_is_a_502_in_anthropics_shape(
    running: Running, model: str
) -> None:
    """`/v1/messages` with `output_config.format` and `x-gateway-enforce-schema: true` was never checked when it
    went to Anthropic as sent (review). An answer that does not fit is now the 502 `schema_violation` Chat
    Completions answers, in Anthropic's error shape, the answer charged as one thrown away."""
    key = running.mint(name=f"messages-schema-{model}")
    fits = enforced(running, key, "/v1/messages", messages_saying(model, '{"name": "Zoë"}', stream=False))
    assert fits.status_code == 200, fits.text
    assert [block["text"] for block in fits.json()["content"]] == ['{"name": "Zoë"}']
    broken = enforced(running, key, "/v1/messages", messages_saying(model, '{"name": "a1"}', stream=False))
    assert broken.status_code == 502, broken.text
    error = broken.json()
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert error["error"]["message"] == (
        "the answer does not match the response schema: name: 'a1' does not match '^\\\\p{L}+$'"
    )
    lines = running.ledger(key)
    assert [line.status for line in lines] == [200, 502]
    assert lines[1].cost_usd is not None and lines[1].cost_usd > 0


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "gpt-4o-mini"])
def test_an_enforced_messages_stream_that_breaks_its_schema_ends_on_an_error_event(
    running: Running, model: str
) -> None:
    """A Messages stream's answer was never checked, passed through or translated (review). As a chat stream's, it
    is checked once whole, at its end: one that does not fit ends on Anthropic's `error` event in place of its
    `message_delta` and `message_stop`, with what it was charged, as a stream that fails does."""
    key = running.mint(name=f"messages-schema-stream-{model}")
    fits = enforced(running, key, "/v1/messages", messages_saying(model, '{"name": "Zoë"}', stream=True))
    assert [name for name, _ in sse_events(fits.text)][-2:] == ["message_delta", "message_stop"]
    broken = enforced(running, key, "/v1/messages", messages_saying(model, '{"name": "a1"}', stream=True))
    assert broken.status_code == 200
    events = sse_events(broken.text)
    assert [name for name, _ in events][-2:] == ["content_block_stop", "error"]
    error = events[-1][1]
    assert error["error"] == {
        "type": "api_error",
        "message": "the answer does not match the response schema: name: 'a1' does not match '^\\\\p{L}+$'",
    }
    assert error["cost"]["total_usd"] > 0 and error["usage"]["output_tokens"] > 0
    assert [line.status for line in running.ledger(key)] == [200, 200]
