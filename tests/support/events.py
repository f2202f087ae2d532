"""Writes `events/*.json`: one API Gateway HTTP API (v2) event per route and case.

Run `python -m tests.support.events` after changing a case; the tests replay every file, in the order of `CASES`,
and check that each is what this module writes, and that every route docs/interface.md lists has one. The events
carry a sample key, `SAMPLE_KEY`, and the admin routes' events a sample admin key, `SAMPLE_ADMIN_KEY`; those of the
routes that administer one key name a third, `SAMPLE_OTHER_KEY_ID`, which they show, retag, rotate and then revoke.
Only the replay tests seed the three into their store; `sam local invoke` users put real keys and a real key id in
their place (docs/deploying.md).

Each is what the HTTP API's payload 2.0 delivers, as `sam local generate-event apigateway http-api-proxy` writes it
too: a query string in `queryStringParameters` as well as `rawQueryString`, a request body's length in its
`content-length` header (`delivery_problems`, which `main` and the tests check every event for).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

SAMPLE_KEY_ID = "samp1ekeyevt"
SAMPLE_SECRET = "sample-secret-for-local-events-only-never-in-production"
SAMPLE_KEY = f"gwk_{SAMPLE_KEY_ID}_{SAMPLE_SECRET}"
SAMPLE_ADMIN_KEY_ID = "samp1eadmevt"
SAMPLE_ADMIN_SECRET = "sample-admin-secret-for-local-events-only-never-in-production"
SAMPLE_ADMIN_KEY = f"gwk_{SAMPLE_ADMIN_KEY_ID}_{SAMPLE_ADMIN_SECRET}"
SAMPLE_OTHER_KEY_ID = "samp1eothevt"
SAMPLE_OTHER_SECRET = "sample-other-secret-for-local-events-only-never-in-production"
EVENTS = Path(__file__).resolve().parents[2] / "events"


def event(
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = SAMPLE_KEY,
    headers: dict[str, str] | None = None,
    query: str = "",
    raw_body: str | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    all_headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "host": "abcdef1234.execute-api.eu-central-1.amazonaws.com",
        "user-agent": "OpenAI/Python 1.0",
        "x-forwarded-for": "203.0.113.10",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if key:
        all_headers["authorization"] = f"Bearer {key}"
    all_headers.update(headers or {})
    text = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    if text is not None or method in BODY_METHODS:
        all_headers["content-length"] = str(len((text or "").encode()))
    result: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": all_headers,
    }
    if query:  # (where API Gateway's own example event has them)
        result["queryStringParameters"] = query_parameters(query)
    result |= {
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abcdef1234",
            "domainName": "abcdef1234.execute-api.eu-central-1.amazonaws.com",
            "domainPrefix": "abcdef1234",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "OpenAI/Python 1.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "$default",
            "stage": "$default",
            "time": "24/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795514400000,
        },
        "isBase64Encoded": base64_body,
    }
    if text is not None:
        result["body"] = base64.b64encode(text.encode()).decode() if base64_body else text
    return result


# The methods whose request carries a length, if only `content-length: 0` (every HTTP client sends it for them).
BODY_METHODS = ("POST", "PUT", "PATCH")


def query_parameters(query: str) -> dict[str, str]:
    """A query string as the HTTP API's `queryStringParameters`: decoded, a name given twice with its values joined by
    commas."""
    parsed = urllib.parse.parse_qs(query, keep_blank_values=True)
    return {name: ",".join(values) for name, values in parsed.items()}


def delivery_problems(name: str, payload: dict[str, Any]) -> list[str]:
    """What event `name` lacks of what the HTTP API delivers: the parameters of its query string, its body's length.
    (Mangum reads only `rawQueryString`, so the gateway answered such an event as the deployed API's; Powertools'
    event classes, a Lambda console test and a handler reading the parameters saw none.)"""
    problems = []
    query = payload.get("rawQueryString")
    if query and payload.get("queryStringParameters") != query_parameters(query):
        problems.append(f"{name}: queryStringParameters is not its rawQueryString's {query_parameters(query)}")
    body = payload.get("body")
    if body is not None or payload["requestContext"]["http"]["method"] in BODY_METHODS:
        sent = base64.b64decode(body) if body and payload.get("isBase64Encoded") else (body or "").encode()
        length = payload["headers"].get("content-length")
        if length != str(len(sent)):
            problems.append(f"{name}: content-length is {length!r}, where its body is {len(sent)} bytes")
    return problems


HI = [{"role": "user", "content": "Say hello."}]
# What the anthropic SDK and Claude Code send: the key in `x-api-key`, the API version.
ANTHROPIC_CLIENT = {"x-api-key": SAMPLE_KEY, "anthropic-version": "2023-06-01", "user-agent": "Anthropic/Python 0.75"}
CASES: dict[str, dict[str, Any]] = {
    "health": event("GET", "/health", key=None),
    "models": event("GET", "/v1/models"),
    "models-show": event("GET", "/v1/models/gpt-4o-mini"),
    "route": event("GET", "/v1/route", query="model=gpt-4o-mini"),
    "chat-completions-ok": event("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}),
    "chat-completions-stream": event(
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": HI, "stream": True, "stream_options": {"include_usage": True}},
    ),
    "chat-completions-base64-body": event(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, base64_body=True
    ),
    "chat-completions-bad-key": event(
        "POST",
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": HI},
        key="gwk_aaaaaaaaaaaa_" + "x" * 43,
    ),
    "chat-completions-no-key": event(
        "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HI}, key=None
    ),
    "chat-completions-unknown-model": event("POST", "/v1/chat/completions", {"model": "gpt-0", "messages": HI}),
    "chat-completions-bad-json": event("POST", "/v1/chat/completions", raw_body='{"model": "gpt-4o-mini", '),
    "chat-completions-wrong-types": event("POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": "hi"}),
    "messages-ok": event(
        "POST",
        "/v1/messages",
        {"model": "gpt-4o-mini", "max_tokens": 100, "messages": HI},
        key=None,
        headers=ANTHROPIC_CLIENT,
    ),
    "messages-count-tokens": event(
        "POST",
        "/v1/messages/count_tokens",
        {"model": "gpt-4o-mini", "messages": HI},
        key=None,
        headers=ANTHROPIC_CLIENT,
    ),
    "models-anthropic": event("GET", "/v1/models", key=None, headers=ANTHROPIC_CLIENT),
    "embeddings-ok": event("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hello", "world"]}),
    "not-found-route": event("GET", "/v2/nothing"),
    "responses-ok": event("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Say hello.", "store": False}),
    "responses-stream": event("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "Say hello.", "stream": True}),
    "responses-get-unknown": event("GET", "/v1/responses/resp_0123456789abcdef"),
    "responses-delete-unknown": event("DELETE", "/v1/responses/resp_0123456789abcdef"),
    "responses-input-items-unknown": event("GET", "/v1/responses/resp_0123456789abcdef/input_items"),
    "messages-bad-key": event(
        "POST",
        "/v1/messages",
        {"model": "gpt-4o-mini", "max_tokens": 100, "messages": HI},
        key=None,
        headers={**ANTHROPIC_CLIENT, "x-api-key": "gwk_aaaaaaaaaaaa_" + "x" * 43},
    ),
    "messages-unknown-model": event(
        "POST",
        "/v1/messages",
        {"model": "claude-0", "max_tokens": 100, "messages": HI},
        key=None,
        headers=ANTHROPIC_CLIENT,
    ),
    "key-show": event("GET", "/v1/key"),
    # A child of the sample key, good for an hour: `sam local invoke` with a real key mints one in the table.
    "keys-mint-child": event(
        "POST",
        "/v1/keys",
        {"name": "sample-child", "models": ["gpt-4o-mini"], "budget_usd": 1.0, "expires_in_seconds": 3600},
    ),
    "usage-by-model": event("GET", "/v1/usage", query="since=2026-01-01&group_by=model"),
    "usage-csv": event("GET", "/v1/usage", query="group_by=model&format=csv", headers={"accept": "text/csv"}),
    "usage-bad-group-by": event("GET", "/v1/usage", query="group_by=colour"),
    "admin-keys-list": event("GET", "/admin/keys", key=SAMPLE_ADMIN_KEY),
    "admin-keys-not-admin": event("GET", "/admin/keys"),
    # A root key good for an hour, with a $1 budget: `sam local invoke` with a real admin key creates one in the table.
    "admin-keys-create": event(
        "POST",
        "/admin/keys",
        {"name": "sample-created", "models": ["gpt-4o-mini"], "budget_usd": 1.0, "expires_in_seconds": 3600},
        key=SAMPLE_ADMIN_KEY,
    ),
    "admin-keys-show": event("GET", f"/admin/keys/{SAMPLE_OTHER_KEY_ID}", key=SAMPLE_ADMIN_KEY),
    "admin-keys-retag": event(
        "PATCH", f"/admin/keys/{SAMPLE_OTHER_KEY_ID}", {"tags": {"team": "samples"}}, key=SAMPLE_ADMIN_KEY
    ),
    "admin-keys-rotate": event(
        "POST", f"/admin/keys/{SAMPLE_OTHER_KEY_ID}/rotate", {"grace_seconds": 3600}, key=SAMPLE_ADMIN_KEY
    ),
    "admin-keys-revoke": event("POST", f"/admin/keys/{SAMPLE_OTHER_KEY_ID}/revoke", key=SAMPLE_ADMIN_KEY),
    "admin-usage": event("GET", "/admin/usage", key=SAMPLE_ADMIN_KEY, query="group_by=key"),
    "admin-usage-unknown-key": event("GET", "/admin/usage", key=SAMPLE_ADMIN_KEY, query="key=nosuchkeyid"),
    "metrics": event("GET", "/metrics", key=SAMPLE_ADMIN_KEY, headers={"accept": "text/plain"}),
    "openapi": event("GET", "/openapi.json", key=None),
    "dashboard": event("GET", "/dashboard", key=None, headers={"accept": "text/html"}),
    "dashboard-static": event("GET", "/dashboard/static/dashboard.js", key=None, headers={"accept": "*/*"}),
    # A token no `gateway dashboard` issued (a link's works once): the 401 a used or expired link gets.
    "dashboard-sign-in-expired": event("POST", "/dashboard/sign-in", {"token": "a-token-never-issued"}, key=None),
}


def rendered() -> dict[str, str]:
    """Each event file's name and the text this module writes to it."""
    return {f"{name}.json": json.dumps(payload, indent=2) + "\n" for name, payload in CASES.items()}


def main() -> None:
    problems = [problem for name, payload in CASES.items() for problem in delivery_problems(name, payload)]
    if problems:
        raise SystemExit("\n".join(problems))
    EVENTS.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (EVENTS / name).write_text(text)


if __name__ == "__main__":
    main()
