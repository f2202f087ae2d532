"""Secrets, headers, upstream choice, admin routes, key lifetimes and the IP allowlist."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from typing import Any

import httpx
import pytest
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from handler.api.app import create_app
from tests.functional.conftest import FAKE_KEYS, Running
from tests.support.dynamo import DynamoServer
from tests.support.inprocess import serve

HI = [{"role": "user", "content": "Hi"}]
MODELS: dict[str, Any] = {
    "m": {"deployments": [{"provider": "openai", "model": "m"}], "price": {"input": 1, "output": 2}}
}
PROVIDER_SECRETS = list(FAKE_KEYS.values())
HOP_BY_HOP = ["connection", "keep-alive", "te", "transfer-encoding", "upgrade", "proxy-authorization"]


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(running: Running, key: str, model: str = "gpt-4o-mini", **headers: str) -> httpx.Response:
    body = {"model": model, "messages": HI}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers={**auth(key), **headers}, timeout=15)


def test_keys_are_hashed_at_rest_in_sqlite(running: Running) -> None:
    key = running.mint(name="at-rest")
    secret = key.split("_", 2)[2]
    path = running.store_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        dump = "\n".join(db.iterdump())
    assert key.split("_")[1] in dump  # the id is stored ...
    assert secret not in dump and key not in dump  # ... the secret never


def test_keys_are_hashed_at_rest_in_dynamodb(running_dynamodb: Running, dynamo: DynamoServer) -> None:
    key = running_dynamodb.mint(name="at-rest")
    secret = key.split("_", 2)[2]
    table = running_dynamodb.store_url.split("://", 1)[1].split("?", 1)[0]
    assert chat(running_dynamodb, key).status_code == 200
    items = dynamo.client().scan(TableName=table)["Items"]
    raw = repr(items)
    assert key.split("_")[1] in raw and secret not in raw and key not in raw
    assert not any(s in raw for s in PROVIDER_SECRETS)


def test_no_secret_in_logs_errors_headers_or_ledger(
    running: Running, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("gateway", "llm-gateway", "httpx", "uvicorn", ""):
        logging.getLogger(name).setLevel(logging.DEBUG)
    key = running.mint(name="scan", budget_usd=5.0)
    admin = running.mint(name="scan-admin", admin=True)
    answers: list[httpx.Response] = []
    for model in ("gpt-4o-mini", "broken", "rejects", "unconfigured", "limited", "garbage", "refused", "nope"):
        answers.append(chat(running, key, model))
    answers.append(chat(running, key + "x"))
    answers.append(chat(running, "gwk_" + key.split("_")[1] + "_" + "A" * 43))
    answers.append(httpx.get(f"{running.url}/admin/keys", headers=auth(key)))
    answers.append(httpx.get(f"{running.url}/admin/keys", headers=auth(admin)))
    answers.append(httpx.get(f"{running.url}/admin/usage", headers=auth(admin)))
    answers.append(httpx.get(f"{running.url}/v1/usage", headers=auth(key), params={"format": "csv"}))
    answers.append(httpx.post(f"{running.url}/v1/messages", headers={"x-api-key": key}, json={"model": "broken"}))
    stream = {"model": "cut", "messages": HI, "stream": True}
    answers.append(httpx.post(f"{running.url}/v1/chat/completions", json=stream, headers=auth(key), timeout=15))
    time.sleep(0.5)
    out, err = capfd.readouterr()
    logged = out + err + "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    assert "request" in out  # the request lines were captured
    secrets = [*PROVIDER_SECRETS, key, key.split("_", 2)[2], admin, admin.split("_", 2)[2]]
    seen = [logged, *(a.text + repr(a.headers) for a in answers)]
    for secret in secrets:
        for text in seen:
            assert secret not in text
    ledger = httpx.get(f"{running.url}/admin/usage", headers=auth(admin), params={"group_by": "key"}).text
    assert not any(s in ledger for s in secrets)


async def test_an_unexpected_errors_traceback_is_logged_without_the_provider_key(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """An error nobody expected (here the upstream's transport failing with the request's `Authorization` in its
    words, as an HTTP library's protocol error may word it) is answered a plain 500 and logged with its traceback
    (`logger.exception("unhandled error")`): the message and traceback went to the log as they were, the provider key
    in both (found by review). Written by any formatter, the record holds the traceback and no key."""
    provider_key = "Zq8xLmN4pR7tVw2yBc5dEf9gHj3kMn6P"  # a Mistral-like key: no `sk-` shape, known as registered

    def fails_quoting_its_request(request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"illegal header value {request.headers['authorization']!r}")

    served = await serve(fails_quoting_its_request, MODELS, environ={"OPENAI_API_KEY": provider_key})
    transport = httpx.ASGITransport(app=create_app(served.gateway), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        answer = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HI}, headers=auth(served.key.key)
        )
    await served.gateway.aclose()
    assert answer.status_code == 500 and provider_key not in answer.text
    [record] = [record for record in caplog.records if record.getMessage() == "unhandled error"]
    formatters = [logging.Formatter(), LambdaPowertoolsFormatter()]
    logged = [capfd.readouterr().out, *(formatter.format(record) for formatter in formatters)]
    assert all("Traceback (most recent call last)" in line for line in logged[1:])
    assert all("RuntimeError: illegal header value 'Bearer [REDACTED]'" in line for line in logged[1:]), logged
    assert not any(provider_key in line for line in logged)


def test_a_key_where_a_name_belongs_is_in_no_errors_param(running: Running, key: str) -> None:
    """A client that puts its key where the gateway echoes a name (a tag's name in a child's spec, a tool's type, an
    `include`): the 400's message said `[REDACTED]` and its `param` beside it the key whole (review), in OpenAI's
    shape and in a Responses stream's `error` event alike (they read the same error)."""
    secret = key.split("_", 2)[2]
    strict = {**auth(key), "x-gateway-strict": "true"}
    hi = {"model": "vllm-llama", "input": "Hi"}  # (a server without the Responses API: translated)
    refused = [
        ("tags.[REDACTED]", "/v1/keys", {"name": "child", "tags": {key: 5}}, auth(key)),
        ("model_limits.[REDACTED].rpm", "/v1/keys", {"name": "child", "model_limits": {key: {"rpm": "x"}}}, auth(key)),
        ("tools[[REDACTED]]", "/v1/responses", {**hi, "tools": [{"type": key}]}, strict),
        ("include[[REDACTED]]", "/v1/responses", {**hi, "include": [key]}, strict),
    ]
    for param, path, body, headers in refused:
        answer = httpx.post(f"{running.url}{path}", json=body, headers=headers, timeout=15)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
        assert secret not in answer.text, answer.text
    # Anthropic's shape has no `param`: its message alone names the tool, redacted as it was.
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HI, "tools": [{"type": key, "name": "t"}]}
    answer = httpx.post(f"{running.url}/v1/messages", json=body, headers=strict, timeout=15)
    assert answer.status_code == 400 and secret not in answer.text, answer.text


def test_a_key_where_a_name_belongs_is_not_in_the_dropped_params_header(running: Running, key: str) -> None:
    """`x-gateway-dropped-params` names what the translation left out in the client's own words: a Messages field
    named by the key, a Responses `include` or tool type holding it were listed whole, on a 200 (review). Each name
    is redacted, with or without its `gwk_`, and clipped to 256 characters as an echoed model name is."""
    secret, body = key.split("_", 2)[2], key.removeprefix("gwk_")
    sent = [
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HI, key: 1}, "[REDACTED]"),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HI, f"x-{body}": 1}, "x-[REDACTED]"),
        ("/v1/responses", {"model": "vllm-llama", "input": "Hi", "include": [key]}, "include[[REDACTED]]"),
        ("/v1/responses", {"model": "vllm-llama", "input": "Hi", "tools": [{"type": body}]}, "tools[[REDACTED]]"),
        ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HI, "f" * 5000: 1}, "f" * 256),
    ]
    for path, request, named in sent:
        answer = httpx.post(f"{running.url}{path}", json=request, headers=auth(key), timeout=15)
        assert answer.status_code == 200, answer.text
        dropped = answer.headers["x-gateway-dropped-params"].split(",")
        assert named in dropped and secret not in repr(answer.headers), dropped


def test_an_xai_or_groq_key_where_a_name_belongs_is_echoed_nowhere(
    running: Running, key: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A key of xAI's shape (`xai-` and 80 letters and digits) or Groq's (`gsk_` and 52) sent as a model's name was
    echoed whole by the 404 `model_not_found` of every API and by `GET /v1/models/{id}`, and written to the request's
    log line; as a field's name, in `x-gateway-dropped-params`; as a `user`, on the ledger line (review)."""
    letters = "Zq81LmN0pX4vR7tY2uW9Kd3sQe7HjB5nV1cX8aLp"
    keys = ["xai-" + letters * 2, "gsk_" + letters + letters[:12]]
    for secret in keys:
        for path, body in (
            ("/v1/chat/completions", {"model": secret, "messages": HI}),
            ("/v1/messages", {"model": secret, "max_tokens": 10, "messages": HI}),
            ("/v1/responses", {"model": secret, "input": "Hi"}),
            ("/v1/embeddings", {"model": secret, "input": "Hi"}),
        ):
            answer = httpx.post(f"{running.url}{path}", json=body, headers=auth(key), timeout=15)
            assert answer.status_code == 404 and "'[REDACTED]'" in answer.text and secret not in answer.text, path
        answer = httpx.get(f"{running.url}/v1/models/{secret}", headers=auth(key), timeout=15)
        assert answer.status_code == 404 and secret not in answer.text
        body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": HI, secret: 1}
        answer = httpx.post(f"{running.url}/v1/messages", json=body, headers=auth(key), timeout=15)
        assert answer.status_code == 200 and answer.headers["x-gateway-dropped-params"] == "[REDACTED]", answer.text
        body = {"model": "gpt-4o-mini", "messages": HI, "user": secret}
        answer = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=auth(key), timeout=15)
        assert answer.status_code == 200, answer.text
    time.sleep(0.5)
    out, err = capfd.readouterr()
    lines = running.ledger(key)
    assert len(lines) == 4 and {line.user for line in lines} == {None, "[REDACTED]"}, lines
    for secret in keys:
        assert secret not in out + err and secret[4:] not in out + err


def test_client_auth_and_hop_by_hop_headers_never_reach_the_upstream(running: Running, key: str) -> None:
    recorded = running.fakes["openai"].state.requests
    before = len(recorded)
    headers = {
        "x-api-key": key,
        "cookie": "session=client-cookie",
        "proxy-authorization": "Basic Y2xpZW50OnNlY3JldA==",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "connection": "keep-alive, x-hop",
        "x-hop": "named-in-connection",
        "x-forwarded-for": "203.0.113.9",
        "openai-organization": "org-client",
    }
    assert chat(running, key, **headers).status_code == 200
    stream = {"model": "gpt-4o-mini", "messages": HI, "stream": True}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=stream, headers={**auth(key), **headers})
    assert answer.status_code == 200
    sent = recorded[before:]
    assert len(sent) == 2
    for request in sent:
        upstream = request["headers"]
        assert upstream["authorization"] == "Bearer test-openai-key"  # the provider's key, not the client's
        assert key not in repr(upstream)
        for name in ("x-api-key", "cookie", "proxy-authorization", "keep-alive", "te", "x-hop", "x-forwarded-for"):
            assert name not in upstream, name
        assert "x-hop" not in upstream.get("connection", "")
        assert "org-client" not in repr(upstream)


@pytest.mark.parametrize(
    "attempt",
    [
        {"body": {"base_url": "http://127.0.0.1:1/evil"}},
        {"body": {"api_base": "http://127.0.0.1:1/evil", "extra_headers": {"host": "evil"}}},
        {"headers": {"x-gateway-base-url": "http://127.0.0.1:1", "host": "evil.example"}},
        {"headers": {"x-forwarded-host": "evil.example", "x-original-url": "/evil"}},
        {"model": "http://127.0.0.1:1/v1"},
        {"model": "../../evil"},
        {"model": "gpt-4o-mini/../../evil"},
        {"model": "gpt-4o-mini@evil.example"},
        {"headers": {"x-gateway-provider": "http://127.0.0.1:1"}},
        {"headers": {"x-gateway-region": "../../evil"}},
    ],
)
def test_no_request_chooses_the_upstream_url(running: Running, key: str, attempt: dict[str, Any]) -> None:
    recorded = running.fakes["openai"].state.requests
    before = len(recorded)
    body = {"model": attempt.get("model", "gpt-4o-mini"), "messages": HI, **attempt.get("body", {})}
    headers = {**auth(key), **attempt.get("headers", {})}
    answer = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers, timeout=15)
    assert answer.status_code < 500 or answer.json()["error"]["code"] == "no_deployment_available"
    for request in recorded[before:]:  # whatever reached an upstream went where the config says
        assert request["path"] == "/openai/v1/chat/completions"
        assert request["json"]["model"] == "gpt-4o-mini"
    if "model" in attempt:
        assert answer.status_code == 404 and len(recorded) == before


def test_admin_routes_need_an_admin_key(running: Running, key: str, mint: Any) -> None:
    """Without an admin key: 401 or 403. With an admin key's old secret, in its rotation's grace: 403 (it rotated
    the key away from its new secret, and created admin keys of its own: found by review)."""
    admin = mint(admin=True)
    rotation = httpx.post(f"{running.url}/admin/keys/{admin.split('_')[1]}/rotate", headers=auth(admin), json={})
    assert rotation.status_code == 200
    routes = [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/usage"),
        ("GET", f"/admin/keys/{key.split('_')[1]}"),
        ("POST", f"/admin/keys/{key.split('_')[1]}/rotate"),
        ("POST", f"/admin/keys/{key.split('_')[1]}/revoke"),
    ]
    for method, path in routes:
        for headers, status in (({}, 401), (auth(key), 403), ({"x-api-key": key}, 401), (auth(admin), 403)):
            answer = httpx.request(method, f"{running.url}{path}", headers=headers, json={"name": "x"})
            assert answer.status_code == status, (method, path, headers.keys(), answer.text)
    assert chat(running, key).status_code == 200  # the key survived every attempt
    assert chat(running, admin).status_code == 200  # (the old secret's grace: the key's requests)


def test_expired_revoked_and_rotated_keys_stop_at_once(running: Running, mint: Any) -> None:
    """Revoked and rotated here: this process drops its cached keys at once, so the very next request is
    refused; expired: the first request after the expiry is refused, without waiting for the key cache."""
    admin = mint(admin=True)
    soon = httpx.post(
        f"{running.url}/admin/keys", headers=auth(admin), json={"name": "soon", "expires_in_seconds": 3.0}
    ).json()
    minted = time.monotonic()  # (after the answer: the key was made before it, so it has expired 3 s after this)
    assert chat(running, soon["key"]).status_code == 200
    victim = httpx.post(f"{running.url}/admin/keys", headers=auth(admin), json={"name": "v"}).json()
    rotated = httpx.post(f"{running.url}/admin/keys", headers=auth(admin), json={"name": "r"}).json()
    assert chat(running, victim["key"]).status_code == 200 and chat(running, rotated["key"]).status_code == 200
    httpx.post(f"{running.url}/admin/keys/{victim['id']}/revoke", headers=auth(admin))
    new = httpx.post(
        f"{running.url}/admin/keys/{rotated['id']}/rotate", headers=auth(admin), json={"grace_seconds": 0}
    ).json()
    assert chat(running, victim["key"]).json()["error"]["code"] == "key_revoked"
    assert chat(running, rotated["key"]).status_code == 401
    assert chat(running, new["key"]).status_code == 200
    time.sleep(max(0.0, minted + 3.05 - time.monotonic()))
    assert chat(running, soon["key"]).json()["error"]["code"] == "key_expired"


@pytest.mark.parametrize(
    "spoof",
    [
        {"x-forwarded-for": "10.1.2.3"},
        {"x-forwarded-for": "127.0.0.1, 10.1.2.3"},
        {"forwarded": "for=10.1.2.3"},
        {"x-real-ip": "10.1.2.3"},
        {"x-client-ip": "10.1.2.3", "true-client-ip": "10.1.2.3", "cf-connecting-ip": "10.1.2.3"},
    ],
)
def test_the_ip_allowlist_cannot_be_bypassed_with_forwarding_headers(
    running: Running, mint: Any, spoof: dict[str, str]
) -> None:
    elsewhere = mint(allow_ips=["10.0.0.0/8"])
    answer = chat(running, elsewhere, **spoof)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "ip_not_allowed"
    here = mint(allow_ips=["127.0.0.1/32"])
    spoofed_away = {name: value.replace("10.1.2.3", "8.8.8.8") for name, value in spoof.items()}
    assert chat(running, here, **spoofed_away).status_code == 200  # nor can one be locked out by them
