"""Every `events/*.json` through the Lambda handler, in one warm environment (a fresh interpreter)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.routing import Mount

from adapters.store import open_store
from handler.entry.adapter import NO_UTF8
from handler.pipeline.keys import hash_secret
from handler.ports import ConflictError, KeyRecord
from tests.fakes import ssm
from tests.fakes.openai import API_KEY, TEXT
from tests.fakes.openai import create_app as openai_fake
from tests.support.events import (
    EVENTS,
    SAMPLE_ADMIN_KEY,
    SAMPLE_ADMIN_KEY_ID,
    SAMPLE_ADMIN_SECRET,
    SAMPLE_KEY_ID,
    SAMPLE_OTHER_KEY_ID,
    SAMPLE_OTHER_SECRET,
    SAMPLE_SECRET,
    delivery_problems,
    rendered,
)
from tests.support.events import event as api_event
from tests.support.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
EXPECTED: dict[str, tuple[int, str | None]] = {
    "health": (200, None),
    "models": (200, None),
    "models-show": (200, None),
    "route": (200, None),
    "chat-completions-ok": (200, None),
    "chat-completions-stream": (200, None),
    "chat-completions-base64-body": (200, None),
    "chat-completions-bad-key": (401, "invalid_api_key"),
    "chat-completions-no-key": (401, "invalid_api_key"),
    "chat-completions-unknown-model": (404, "model_not_found"),
    "chat-completions-bad-json": (400, "invalid_request"),
    "chat-completions-wrong-types": (400, "invalid_request"),
    "embeddings-ok": (200, None),
    "messages-ok": (200, None),
    "messages-count-tokens": (200, None),
    "models-anthropic": (200, None),
    "not-found-route": (404, "not_found"),
    "responses-ok": (200, None),
    "responses-stream": (200, None),
    "responses-get-unknown": (404, "not_found"),
    "responses-delete-unknown": (404, "not_found"),
    "responses-input-items-unknown": (404, "not_found"),
    "messages-bad-key": (401, "authentication_error"),
    "messages-unknown-model": (404, "not_found_error"),
    "key-show": (200, None),
    "keys-mint-child": (201, None),
    "usage-by-model": (200, None),
    "usage-csv": (200, None),
    "usage-bad-group-by": (400, "invalid_request"),
    "admin-keys-list": (200, None),
    "admin-keys-not-admin": (403, "admin_only"),
    "admin-keys-create": (201, None),
    "admin-keys-show": (200, None),
    "admin-keys-retag": (200, None),
    "admin-keys-rotate": (200, None),
    "admin-keys-revoke": (200, None),
    "admin-usage": (200, None),
    "admin-usage-unknown-key": (404, "not_found"),
    "metrics": (200, None),
    "openapi": (200, None),
    "dashboard": (200, None),
    "dashboard-static": (200, None),
    "dashboard-sign-in-expired": (401, "sign_in_link_expired"),
}
# Errors in Anthropic's shape, `{"type": "error", "error": {"type", "message"}}`: EXPECTED names their `type`.
ANTHROPIC_ERRORS = {"messages-bad-key", "messages-unknown-model"}

# A usage report's row, after its group columns (docs/usage.md).
USAGE_COLUMNS = [
    "requests",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "fee_usd",
    "total_usd",
    "cache_savings_usd",
    "unknown_cost_requests",
    "estimated_cost_requests",
    "reserved_cost_requests",
]

REACHED_THE_PROVIDER = {
    "chat-completions-ok",
    "chat-completions-stream",
    "chat-completions-base64-body",
    "embeddings-ok",
    "messages-ok",
    "responses-ok",
    "responses-stream",
}


async def seed_sample_keys(store_url: str) -> None:
    """The events' sample key, the sample admin key the admin routes' events carry, and the other key those of the
    routes that administer one key act on; those a replay before made in the same store are kept."""
    store = open_store(store_url)
    try:
        record = KeyRecord(id=SAMPLE_KEY_ID, name="sample", secret_hash=hash_secret(SAMPLE_SECRET), created_at=0)
        admin_hash = hash_secret(SAMPLE_ADMIN_SECRET)
        admin = KeyRecord(id=SAMPLE_ADMIN_KEY_ID, name="sample admin", secret_hash=admin_hash, created_at=0, admin=True)
        other = KeyRecord(
            id=SAMPLE_OTHER_KEY_ID, name="sample other", secret_hash=hash_secret(SAMPLE_OTHER_SECRET), created_at=0
        )
        for sample in (record, admin, other):
            with contextlib.suppress(ConflictError):
                await store.create_key(sample)
    finally:
        await store.close()


def replay(
    tmp_path: Path,
    upstream_url: str,
    paths: list[Path],
    freeze_s: float = 0,
    environ: dict[str, str] | None = None,
    observability: dict[str, Any] | None = None,
    logs: list[str] | None = None,
    api_key: str | None = "env:OPENAI_API_KEY",
    settings: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The handler's answers to `paths`, one warm environment; its log lines (stderr) appended to `logs`. `api_key`:
    the provider's key reference (None: `auth: none`); `settings`: the config's `gateway:` section; `headers`: the
    provider's own."""
    provider: dict[str, Any] = {"type": "openai", "base_url": f"{upstream_url}/openai/v1"}
    provider |= {"api_key": api_key} if api_key is not None else {"auth": "none"}
    provider |= {"headers": headers} if headers is not None else {}
    config: dict[str, Any] = {
        "providers": {"openai": provider},
        "models": {
            "gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "text-embedding-3-small": {
                "kind": "embedding",
                "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}],
            },
        },
    }
    if observability is not None:
        config["observability"] = observability
    if settings is not None:
        config["gateway"] = settings
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    store_url = f"sqlite:///{tmp_path / 'lambda.db'}"
    asyncio.run(seed_sample_keys(store_url))
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config_path),
        "GATEWAY_STORE": store_url,
        "OPENAI_API_KEY": "test-openai-key",
        "AWS_REGION": "eu-central-1",
        "LAMBDA_FREEZE_S": str(freeze_s),
        **(environ or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tests.support.lambda_replay", *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if logs is not None:
        logs.extend(result.stderr.splitlines())
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_event_file_has_an_expectation() -> None:
    assert {p.stem for p in EVENTS.glob("*.json")} == set(EXPECTED)


def test_event_files_are_what_the_generator_writes() -> None:
    """`events/` is `python -m tests.support.events`'s output, byte for byte: no file edited by hand, none left
    behind by a case renamed or removed, none a changed case did not rewrite."""
    on_disk = {p.name: p.read_bytes() for p in EVENTS.glob("*.json")}
    assert on_disk == {name: text.encode() for name, text in rendered().items()}


def test_event_files_are_what_the_http_api_delivers() -> None:
    """An event with a query string lacked `queryStringParameters`, which payload 2.0 always has beside
    `rawQueryString` (`sam local generate-event` writes it too), and no event with a body said its length: Mangum
    reads neither, so the gateway answered them, but a tool or handler reading the parameters saw none. Found by
    review."""
    payloads = {path.name: json.loads(path.read_text()) for path in EVENTS.glob("*.json")}
    assert [problem for name, payload in payloads.items() for problem in delivery_problems(name, payload)] == []
    assert payloads["usage-csv.json"]["queryStringParameters"] == {"group_by": "model", "format": "csv"}
    assert payloads["chat-completions-base64-body.json"]["headers"]["content-length"] == "81"  # (the decoded body's)
    assert payloads["admin-keys-revoke.json"]["headers"]["content-length"] == "0"  # (a POST of no body)
    repeated = api_event("GET", "/v1/usage", query="group_by=model&tag=team%3Aa&tag=team%3Ab")
    assert repeated["queryStringParameters"] == {"group_by": "model", "tag": "team:a,team:b"}
    assert delivery_problems("repeated", {**repeated, "queryStringParameters": {}}) == [
        "repeated: queryStringParameters is not its rawQueryString's {'group_by': 'model', 'tag': 'team:a,team:b'}"
    ]


def test_events_replay_through_the_handler(tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]) -> None:
    server, _ = upstream
    # Every event in the generator's order (the other key rotated before it is revoked), then the admin report once
    # more, after all of them: every line the store holds.
    results = replay(tmp_path, server.url, [*(EVENTS / name for name in rendered()), EVENTS / "admin-usage.json"])
    admin_report_at_the_end = results.pop()
    assert len(results) == len(EXPECTED)
    for result in results:
        status, code = EXPECTED[result["event"]]
        assert result["status"] == status, result
        if code is not None:
            answer = json.loads(result["body"])
            if result["event"] in ANTHROPIC_ERRORS:
                assert answer["type"] == "error" and set(answer["error"]) == {"type", "message"}, result
                assert answer["error"]["type"] == code, result
            else:
                assert answer["error"]["code"] == code, result
            assert result["headers"]["x-should-retry"] == "false", result  # none of these can succeed later
        else:
            assert "x-request-id" in result["headers"]
        proxied = ("chat-", "embeddings-", "responses-ok", "responses-stream")
        if result["event"].startswith(proxied):  # its log line is out before the freeze
            assert result["request_lines"] == 1, result
        assert result["unsettled"] == 0, result  # nothing left to run while the environment is frozen
        # Every request that reached the provider is one ledger line, written before the invocation returned.
        assert result["ledger_lines"] == (1 if result["event"] in REACHED_THE_PROVIDER else 0), result
    by_name = {r["event"]: r for r in results}
    assert json.loads(by_name["chat-completions-ok"]["body"])["choices"][0]["message"]["content"] == TEXT
    stream_body = by_name["chat-completions-stream"]["body"]
    assert stream_body.rstrip().endswith("data: [DONE]") and '"cost"' in stream_body
    assert by_name["chat-completions-ok"]["headers"]["x-gateway-region"] == "global"
    message = json.loads(by_name["messages-ok"]["body"])
    assert message["type"] == "message" and message["content"][0]["text"] == TEXT
    counted = by_name["messages-count-tokens"]
    assert json.loads(counted["body"])["input_tokens"] > 0 and counted["headers"]["x-gateway-estimate"] == "true"
    assert json.loads(by_name["models-anthropic"]["body"])["data"][0]["type"] == "model"
    assert json.loads(by_name["responses-ok"]["body"])["output"][0]["content"][0]["text"] == TEXT
    responses_stream = by_name["responses-stream"]["body"]
    assert "event: response.completed" in responses_stream and '"cost"' in responses_stream
    for name in ("responses-get-unknown", "responses-delete-unknown"):  # OpenAI's words, naming the id asked for
        error = json.loads(by_name[name]["body"])["error"]
        assert error["message"] == "Response with id 'resp_0123456789abcdef' not found.", by_name[name]
    check_key_routes(by_name)
    check_usage_reports(results)
    check_admin_routes(results, admin_report_at_the_end)
    check_key_administration(by_name)
    check_model_and_public_routes(by_name)


def check_key_routes(by_name: dict[str, dict[str, Any]]) -> None:
    """`GET /v1/key` shows the sample key, never its hash; `POST /v1/keys` mints a child of it, as asked."""
    key = json.loads(by_name["key-show"]["body"])
    assert key["id"] == SAMPLE_KEY_ID and key["name"] == "sample" and key["admin"] is False, key
    assert {"models", "budget_usd", "spent_usd", "remaining_usd", "expires_at"} <= set(key), key
    assert "secret_hash" not in key and "key" not in key, key
    child = json.loads(by_name["keys-mint-child"]["body"])
    assert child["parent_id"] == SAMPLE_KEY_ID and child["ancestors"] == [SAMPLE_KEY_ID], child
    assert child["name"] == "sample-child" and child["models"] == ["gpt-4o-mini"] and child["budget_usd"] == 1.0
    assert child["expires_at"] - child["created_at"] == pytest.approx(3600, abs=1), child
    assert child["key"].startswith(f"gwk_{child['id']}_") and child["admin"] is False, child


def check_usage_reports(results: list[dict[str, Any]]) -> None:
    """`GET /v1/usage` counts every ledger line the replay wrote before it (all the sample key's), grouped as
    asked, in JSON or CSV, with the columns docs/usage.md lists; a group it does not know is a 400 naming it."""
    for index, result in enumerate(results):
        lines = sum(r["ledger_lines"] for r in results[:index])
        if result["event"] == "usage-by-model":
            report = json.loads(result["body"])
            assert report["object"] == "list" and report["group_by"] == ["model"], report
            assert report["since"] == datetime(2026, 1, 1, tzinfo=UTC).timestamp(), report
            assert {"filter", "tag_names", "latency"} <= set(report) and report["latency"]["requests"] == lines
            rows: list[dict[str, Any]] = report["data"]
        elif result["event"] == "usage-csv":
            assert result["headers"]["content-type"].startswith("text/csv"), result
            rows = list(csv.DictReader(io.StringIO(result["body"])))
        else:
            continue
        assert [list(row) for row in rows] == [["model", *USAGE_COLUMNS]] * len(rows), result
        assert sum(int(row["requests"]) for row in rows) == lines > 0, result
        assert {row["model"] for row in rows} <= {"gpt-4o-mini", "text-embedding-3-small"}, result
    bad = json.loads(next(r for r in results if r["event"] == "usage-bad-group-by")["body"])
    assert bad["error"]["param"] == "group_by" and "colour" in bad["error"]["message"], bad


def check_admin_routes(results: list[dict[str, Any]], admin_report_at_the_end: dict[str, Any]) -> None:
    """The sample admin key lists the keys (never a hash), reads every key's usage by key, and `/metrics` in
    Prometheus' text format, which counts the provider's answers and every error answered before it; the sample
    key is refused the admin routes (`admin_only`, in EXPECTED)."""
    by_name = {r["event"]: r for r in results}
    keys = json.loads(by_name["admin-keys-list"]["body"])
    child = json.loads(by_name["keys-mint-child"]["body"])["id"]  # (minted before the list)
    assert keys["object"] == "list" and {k["id"]: k["admin"] for k in keys["data"]} == {
        SAMPLE_KEY_ID: False,
        SAMPLE_ADMIN_KEY_ID: True,
        SAMPLE_OTHER_KEY_ID: False,
        child: False,
    }, keys
    assert not any("secret_hash" in k or "key" in k for k in keys["data"]), keys
    in_order = by_name["admin-usage"]
    for result, before in ((in_order, results[: results.index(in_order)]), (admin_report_at_the_end, results)):
        lines = sum(r["ledger_lines"] for r in before)  # all the sample key's
        report = json.loads(result["body"])
        assert report["group_by"] == ["key"] and report["latency"]["requests"] == lines, report
        rows = report["data"]
        assert [list(row) for row in rows] == [["key", "key_name", *USAGE_COLUMNS]] * len(rows), report
        assert [(row["key"], row["key_name"], row["requests"]) for row in rows] == (
            [(SAMPLE_KEY_ID, "sample", lines)] if lines else []
        ), report
    metrics = by_name["metrics"]
    assert metrics["headers"]["content-type"].startswith("text/plain; version=0.0.4"), metrics
    text = metrics["body"]
    assert "# TYPE gateway_requests_total counter" in text and "# TYPE gateway_errors_total counter" in text, text
    series = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    before = results[: results.index(metrics)]
    answered = sum(
        float(v)
        for k, v in series.items()
        if k.startswith("gateway_requests_total{") and 'provider="openai"' in k and 'status="200"' in k
    )
    assert answered == sum(r["ledger_lines"] for r in before), text
    errors = sum(float(v) for k, v in series.items() if k.startswith("gateway_errors_total{"))
    # (the request metrics count requests to models: the key, admin and usage routes' failures are not in them)
    assert errors == sum(1 for r in before if r["status"] >= 400 and to_a_model(r["event"])), text


def check_key_administration(by_name: dict[str, dict[str, Any]]) -> None:
    """The sample admin key creates a root key as asked (its secret shown once), and shows, retags, rotates and then
    revokes the other key; no answer holds a hash, and only a created or rotated key's holds a secret."""
    created = json.loads(by_name["admin-keys-create"]["body"])
    assert created["name"] == "sample-created" and created["models"] == ["gpt-4o-mini"], created
    assert created["budget_usd"] == 1.0 and created["parent_id"] is None and created["admin"] is False, created
    assert created["expires_at"] - created["created_at"] == pytest.approx(3600, abs=1), created
    assert created["key"].startswith(f"gwk_{created['id']}_"), created
    shown = json.loads(by_name["admin-keys-show"]["body"])
    assert shown["id"] == SAMPLE_OTHER_KEY_ID and shown["name"] == "sample other" and shown["tags"] == {}, shown
    assert json.loads(by_name["admin-keys-retag"]["body"])["tags"] == {"team": "samples"}
    rotated = json.loads(by_name["admin-keys-rotate"]["body"])
    assert rotated["key"].startswith(f"gwk_{SAMPLE_OTHER_KEY_ID}_") and SAMPLE_OTHER_SECRET not in rotated["key"]
    assert rotated["rotation_grace_until"] - time.time() == pytest.approx(3600, abs=60), rotated
    revoked = json.loads(by_name["admin-keys-revoke"]["body"])
    assert revoked["id"] == SAMPLE_OTHER_KEY_ID and revoked["revoked_at"] is not None, revoked
    for name in ("admin-keys-show", "admin-keys-retag", "admin-keys-rotate", "admin-keys-revoke", "admin-keys-create"):
        answer = json.loads(by_name[name]["body"])
        assert "secret_hash" not in answer and ("key" in answer) == name.endswith(("create", "rotate")), answer


def check_model_and_public_routes(by_name: dict[str, dict[str, Any]]) -> None:
    """One model shown as the list shows it, and the deployments its requests would try; the routes that take no key:
    the OpenAPI document, the dashboard's page and its script, and a sign-in refused a token never issued."""
    listed = json.loads(by_name["models"]["body"])["data"]
    assert json.loads(by_name["models-show"]["body"]) == next(m for m in listed if m["id"] == "gpt-4o-mini")
    plan = json.loads(by_name["route"]["body"])
    assert plan["model"] == "gpt-4o-mini" and [a["provider"] for a in plan["attempts"]] == ["openai"], plan
    assert json.loads(by_name["openapi"]["body"])["openapi"].startswith("3.1"), by_name["openapi"]["body"][:200]
    assert by_name["dashboard"]["headers"]["content-type"].startswith("text/html"), by_name["dashboard"]["headers"]
    assert by_name["dashboard-static"]["headers"]["content-type"].startswith("text/javascript")


def documented_routes() -> set[tuple[str, str]]:
    """(method, path template) of every row of docs/interface.md's table of endpoints."""
    text = (ROOT / "docs" / "interface.md").read_text()
    table = text[text.index("| route | auth | what |") :]
    routes = set()
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cell = line.split("|")[1]
        methods = re.findall(r"\b(GET|POST|PUT|PATCH|DELETE)\b", cell)
        path = re.search(r"(/[^\s`?]*)", cell)
        assert methods and path, line
        routes |= {(method, path.group(1)) for method in methods}
    return routes


def test_every_documented_route_has_an_event() -> None:
    """docs/interface.md says `events/` holds an event for every route, which the tests replay through the handler:
    12 of its routes had none (the admin key routes, `GET /v1/models/{model_id}`, `GET /v1/route`, a response's
    input items, `/openapi.json` and the dashboard's), so nothing took them through Mangum. Found by review."""
    events = []
    for file in EVENTS.glob("*.json"):
        http = json.loads(file.read_text())["requestContext"]["http"]
        events.append((http["method"], http["path"]))
    routes = documented_routes()
    assert len(routes) > 25  # (the table was read)

    def takes(template: str, path: str) -> bool:
        return re.fullmatch(re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)), path) is not None

    without = sorted(
        f"{method} {template}"
        for method, template in routes
        if not any(m == method and takes(template, path) for m, path in events)
    )
    assert without == [], without


def to_a_model(name: str) -> bool:
    """Whether the event `name` is a request to a model (`RouteSpec.counted`)."""
    from handler.api.route_table import COUNTED_PATHS

    http = json.loads((ROOT / "events" / f"{name}.json").read_text())["requestContext"]["http"]
    return bool(http["method"] == "POST" and http["path"] in COUNTED_PATHS)


def test_a_rotated_out_admin_secret_administers_nothing_on_lambda(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """As on `gateway serve`: the sample admin key rotated with the default grace, its old secret is the key's for
    `GET /v1/key` but a 403 `admin_only` on the admin routes and `POST /v1/keys`; nothing it asked for is made (it
    rotated the key away from the new secret and created an admin key of its own: found by review)."""
    server, _ = upstream
    rotate = f"/admin/keys/{SAMPLE_ADMIN_KEY_ID}/rotate"
    events = {
        "rotate": api_event("POST", rotate, {}, key=SAMPLE_ADMIN_KEY),
        "rotate-again": api_event("POST", rotate, {"grace_seconds": 0}, key=SAMPLE_ADMIN_KEY),
        "create-admin": api_event("POST", "/admin/keys", {"name": "backdoor", "admin": True}, key=SAMPLE_ADMIN_KEY),
        "mint-child": api_event("POST", "/v1/keys", {"name": "backdoor-child"}, key=SAMPLE_ADMIN_KEY),
        "list": api_event("GET", "/admin/keys", key=SAMPLE_ADMIN_KEY),
        "whoami": api_event("GET", "/v1/key", key=SAMPLE_ADMIN_KEY),
    }
    results = replayed_then_health(tmp_path, server.url, events, [])
    statuses = [r["status"] for r in results]
    assert statuses == [200, 403, 403, 403, 403, 200, 200], [r["body"][:300] for r in results]
    for refused in results[1:5]:
        error = json.loads(refused["body"])["error"]
        assert error["code"] == "admin_only" and "previous secret" in error["message"], refused
    assert json.loads(results[5]["body"])["id"] == SAMPLE_ADMIN_KEY_ID

    async def stored() -> list[KeyRecord]:
        store = open_store(f"sqlite:///{tmp_path / 'lambda.db'}")
        try:
            return await store.list_keys()
        finally:
            await store.close()

    keys = {record.id: record for record in asyncio.run(stored())}
    assert set(keys) == {SAMPLE_KEY_ID, SAMPLE_ADMIN_KEY_ID, SAMPLE_OTHER_KEY_ID}  # no key created, no child minted
    new_secret = json.loads(results[0]["body"])["key"].split("_", 2)[2]
    assert keys[SAMPLE_ADMIN_KEY_ID].secret_hash == hash_secret(new_secret)  # not rotated again


def replayed_then_health(tmp_path: Path, url: str, events: dict[str, Any], logs: list[str]) -> list[dict[str, Any]]:
    """Each of `events` written as a file of its name and replayed through the handler, then `health.json` (the
    environment still answers): the results in that order, the log lines in `logs`."""
    paths = []
    for name, event in events.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(event))
    return replay(tmp_path, url, [*paths, EVENTS / "health.json"], logs=logs)


def test_an_event_that_is_no_http_request_is_a_400_in_the_gateways_error_shape(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """The Lambda console's default test event, `{}`, `42`, `null`, a list, an event of a source's shape without a
    request's fields, and a body marked base64 that is not (from an HTTP API, a REST API or an ALB) raised Mangum's
    `RuntimeError` (or a `TypeError`, a `KeyError`, `binascii.Error`) out of the handler: an invocation error, behind
    API Gateway a bare 500. Each is a 400 `invalid_request` with a request id, logged with the event's field names
    (never its values, the body least of all), and the environment answers the next request. A request whose body
    alone cannot be read is answered in its source's form (an ALB's `multiValueHeaders` where it sends them) and in
    its API's shape (Anthropic's on /v1/messages). Found by review."""
    server, _ = upstream
    chat = json.loads((EVENTS / "chat-completions-base64-body.json").read_text())
    secret = "!!!the client's prompt, not base64!!!"
    rest = {
        "resource": "/{proxy+}",
        "path": "/v1/chat/completions",
        "httpMethod": "POST",
        "headers": {"content-type": "application/json", "host": "gw.example.com"},
        "multiValueHeaders": {"content-type": ["application/json"], "host": ["gw.example.com"]},
        "queryStringParameters": None,
        "requestContext": {"stage": "prod", "identity": {"sourceIp": "203.0.113.9"}, "requestId": "r1"},
        "body": secret,
        "isBase64Encoded": True,
    }
    alb_headers = {"content-type": "application/json", "anthropic-version": "2023-06-01", "host": "gw.example.com"}
    alb = {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-central-1:1:targetgroup/g/a"}},
        "httpMethod": "POST",
        "path": "/v1/messages",
        "queryStringParameters": {},
        "headers": alb_headers,
        "body": secret,
        "isBase64Encoded": True,
    }
    alb_multi = {
        **{k: v for k, v in alb.items() if k not in ("headers", "queryStringParameters")},
        "multiValueHeaders": {name: [value] for name, value in alb_headers.items()},
        "multiValueQueryStringParameters": {},
    }
    odd: dict[str, Any] = {
        "console-default": {"key1": "value1", "key2": "value2", "key3": "value3"},
        "empty": {},
        "bad-base64": {**chat, "body": secret},
        "number": 42,
        "null": None,
        "list": ["version", "requestContext"],
        "http-api-without-its-request": {"version": "2.0", "requestContext": {}},
        "rest-bad-base64": rest,
        "alb-bad-base64": alb,
        "alb-multi-value-bad-base64": alb_multi,
    }
    logs: list[str] = []
    results = replayed_then_health(tmp_path, server.url, odd, logs)
    by_name = {result["event"]: result for result in results}
    not_base64 = "the event's body is marked isBase64Encoded but is not base64"
    for name in odd:
        result = by_name[name]
        headers = result["headers"] or {k: v[0] for k, v in result["multi_value_headers"].items()}
        assert result["status"] == 400 and headers["x-should-retry"] == "false", result
        assert headers["content-type"] == "application/json" and headers["x-request-id"].startswith("req_"), result
        said = json.loads(result["body"])
        if name.startswith("alb"):  # (a request to /v1/messages)
            assert said["type"] == "error" and headers["request-id"] == headers["x-request-id"], result
            assert said["error"] == {"type": "invalid_request_error", "message": not_base64}, result
            continue
        error = said["error"]
        assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error", result
        if "base64" in name:
            assert error["message"] == not_base64, result
        else:
            assert error["message"].startswith("the Lambda event is no HTTP request: the gateway takes API Gateway")
    assert by_name["alb-multi-value-bad-base64"]["headers"] == {}  # (its answer's headers are all multi-valued)
    assert results[-1]["status"] == 200, results[-1]
    warned = [json.loads(line) for line in logs if "unreadable Lambda event" in line]
    assert [w["event_fields"] for w in warned[:6]] == [
        ["key1", "key2", "key3"],
        [],
        sorted(chat),
        "int",
        "NoneType",
        "list",
    ]
    assert all(w["request_id"].startswith("req_") for w in warned) and len(warned) == len(odd), warned
    assert not any("value1" in line or "not base64!!!" in line for line in logs)


def http_api_event(method: Any = "GET", headers: Any = None, query: Any = "") -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "health.json").read_text())
    event["requestContext"]["http"]["method"] = method
    event["rawQueryString"] = query
    if headers is not None:
        event["headers"] = headers
    return event


def rest_api_event(method: Any = "GET", query: Any = None) -> dict[str, Any]:
    return {
        "resource": "/{proxy+}",
        "path": "/health",
        "httpMethod": method,
        "headers": {"host": "gw.example.com"},
        "multiValueHeaders": {"host": ["gw.example.com"]},
        "queryStringParameters": query,
        "requestContext": {"stage": "prod", "identity": {"sourceIp": "203.0.113.9"}, "requestId": "r1"},
        "body": None,
        "isBase64Encoded": False,
    }


def test_an_event_whose_method_headers_or_query_are_not_a_requests_is_a_400(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A method that is no string (`["GET"]`, `{"a": 1}`) went through to Starlette's router, whose `Route.matches`
    raised `TypeError: unhashable type`: a 500 `internal_error`, logged as an unhandled error. A method of no token
    characters, a header or a query that is no string: none is a request's. Each is the 400 any other unreadable
    event gets, and the environment answers the next request. Found by review (fuzzing the Lambda entry)."""
    server, _ = upstream
    odd: dict[str, Any] = {
        "http-api-method-list": http_api_event(["GET"]),
        "http-api-method-object": http_api_event({"a": 1}),
        "http-api-method-null": http_api_event(None),
        "http-api-method-number": http_api_event(7),
        "http-api-method-empty": http_api_event(""),
        "http-api-method-spaced": http_api_event("G ET"),
        "http-api-header-list": http_api_event(headers={"host": "gw.example.com", "accept": ["a", "b"]}),
        "http-api-query-list": http_api_event(query=["a=1"]),
        "rest-api-method-list": rest_api_event(["GET"]),
        "rest-api-method-object": rest_api_event({"a": 1}),
        "rest-api-query-list": rest_api_event(query=["a=1"]),
    }
    logs: list[str] = []
    results = replayed_then_health(tmp_path, server.url, odd, logs)
    for result in results[:-1]:
        assert result["status"] == 400, result
        error = json.loads(result["body"])["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith("the Lambda event is no HTTP"), result
    assert results[-1]["status"] == 200, results[-1]
    assert sum("unreadable Lambda event" in line for line in logs) == len(odd)
    assert not any("Traceback" in line or "internal_error" in line for line in logs), logs


def test_an_event_whose_path_headers_or_query_hold_a_lone_surrogate_is_a_400_in_the_error_shape(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """JSON's `"\\ud800"` is a lone surrogate the Lambda runtime's parser takes, and no UTF-8 carries. In a path it
    reached the app (Mangum keeps the path a str), whose request line could not write it, nor the last-resort 500's
    line after it: the answer was Starlette's plain-text 500, with no `x-should-retry`, a traceback logged, on every
    route (found by review). In a header or the query string it was refused as no HTTP request at all. Each is the
    400 of an unreadable event, saying what it is, and the environment answers the next request."""
    server, _ = upstream
    odd: dict[str, Any] = {}
    for name, path in (("root", "/\ud800"), ("model", "/v1/models/\udfff"), ("response", "/v1/responses/resp_\ud800")):
        odd[f"http-api-path-{name}"] = event = http_api_event()
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
    odd["http-api-header"] = http_api_event(headers={"host": "gw.example.com", "user-agent": "curl/\ud800"})
    odd["http-api-query"] = http_api_event(query="a=\udfff")
    odd["rest-api-path"] = {**rest_api_event(), "path": "/health/\ud800"}
    odd["rest-api-query"] = rest_api_event(query={"a": "\ud800"})
    logs: list[str] = []
    results = replayed_then_health(tmp_path, server.url, odd, logs)
    for result in results[:-1]:
        headers = result["headers"] or {k: v[0] for k, v in result["multi_value_headers"].items()}
        assert result["status"] == 400 and headers["x-should-retry"] == "false", result
        assert headers["x-request-id"].startswith("req_"), result
        error = json.loads(result["body"])["error"]
        assert error["code"] == "invalid_request" and error["message"] == NO_UTF8, result
    assert results[-1]["status"] == 200, results[-1]
    assert sum("unreadable Lambda event" in line for line in logs) == len(odd)
    assert not any("Traceback" in line or "internal_error" in line for line in logs), logs


@pytest.mark.parametrize("invocations", [8])
def test_warm_invocations_reuse_one_upstream_connection(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], invocations: int
) -> None:
    server, fakes = upstream
    recorded = fakes["openai"].state.requests
    before = len(recorded)
    results = replay(tmp_path, server.url, [EVENTS / "chat-completions-ok.json"] * invocations)
    assert [r["status"] for r in results] == [200] * invocations
    peers = {r["peer"] for r in recorded[before:]}
    assert len(recorded) - before == invocations
    assert len(peers) == 1, f"expected one upstream connection, saw {len(peers)}: {peers}"


def test_warm_invocations_survive_an_upstream_closing_idle_connections_while_frozen(tmp_path: Path) -> None:
    """Between invocations the environment is frozen while the upstream closes the idle keep-alive connection
    (real providers do after tens of seconds; this one after 0.2 s): nothing in the process sees the close
    until the next invocation reuses the connection. Each invocation must still be answered, on its first
    attempt, with the upstream asked once per invocation."""
    fake = openai_fake()
    server = ServerThread(Starlette(routes=[Mount("/openai", app=fake)]), keep_alive_s=0.2).start()
    try:
        results = replay(tmp_path, server.url, [EVENTS / "chat-completions-ok.json"] * 4, freeze_s=0.6)
    finally:
        server.stop()
    assert [r["status"] for r in results] == [200] * 4, [r["headers"].get("x-gateway-route") for r in results]
    assert {r["headers"]["x-gateway-route"] for r in results} == {"openai/gpt-4o-mini@global=200"}
    assert len(fake.state.requests) == 4


@contextmanager
def fake_ssm(script: list[str]) -> Iterator[tuple[dict[str, str], list[str]]]:
    """SSM answering as `script` says (tests/fakes/ssm.py): the environment pointing the handler at it (each call
    tried once: botocore's own retries are not what is tested), and the names it was asked for."""
    app = ssm.create_app(script)
    server = ServerThread(app).start()
    environ = {
        "AWS_ENDPOINT_URL_SSM": server.url,
        "AWS_ACCESS_KEY_ID": "AKIAFAKESSMTESTS",
        "AWS_SECRET_ACCESS_KEY": "fake-secret-access-key-for-the-ssm-fake",
        "AWS_MAX_ATTEMPTS": "1",
    }
    try:
        yield environ, app.state.calls
    finally:
        server.stop()


STORED_KEY = "ssm:/llm-gateway/openai"
# Where the provider's credential held in SSM is configured: as its `api_key`, or as a header of its own holding the
# whole `authorization` value (`auth: none`), as an Azure resource's Entra ID token is.
CREDENTIALS = ["api_key", "header"]


def three_chats_reading_ssm(
    tmp_path: Path, url: str, credential: str, then: str
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Three chat invocations 1.2 s apart, frozen between them, whose provider key (`credential`) SSM throttles
    first and gives as `then` after: their results, the log lines and SSM's calls."""
    logs: list[str] = []
    with fake_ssm(in_ssm(credential, [ssm.THROTTLE, then])) as (environ, calls):
        results = replay(
            tmp_path,
            url,
            [EVENTS / "chat-completions-ok.json"] * 3,
            freeze_s=1.2,
            environ=environ,
            logs=logs,
            settings={"provider_key_refresh_seconds": 1.0},
            **stored_credential(credential),
        )
    return results, logs, calls


def stored_credential(credential: str) -> dict[str, Any]:
    """`replay`'s arguments for a provider whose `credential` is `STORED_KEY`."""
    if credential == "api_key":
        return {"api_key": STORED_KEY}
    return {"api_key": None, "headers": {"authorization": STORED_KEY}}


def in_ssm(credential: str, script: list[str]) -> list[str]:
    """`script` with each key as SSM holds it for `credential`: a header's value is the whole `Bearer <key>`."""
    if credential == "api_key":
        return script
    return [step if step in (ssm.THROTTLE, ssm.ABSENT) else f"Bearer {step}" for step in script]


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_a_provider_key_ssm_would_not_give_at_init_is_read_again_and_the_503_says_so(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], credential: str
) -> None:
    """SSM throttled the key's read at init (a burst of cold starts does): the environment started, and its requests
    were answered `503 provider_not_configured` "store the key in ssm" (untrue), `x-should-retry: false`, for the
    environment's life, SSM never asked again. Now the 503 says the key could not be read, that a retry may succeed,
    and the key is read again on a later invocation, which is answered; the failure is logged, the key never. A
    credential in `headers` had the environment's init fail (every model down) where the same throttle on `api_key`
    only gave that provider a 503 until it was read: now it is the same."""
    server, _ = upstream
    results, logs, calls = three_chats_reading_ssm(tmp_path, server.url, credential, API_KEY)
    refused = results[0]
    assert refused["status"] == 503, refused
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "provider_not_configured", error
    assert f"{STORED_KEY} could not be read (ThrottlingException)" in error["message"], error
    assert refused["headers"]["x-should-retry"] == "true" and int(refused["headers"]["retry-after"]) >= 1, refused
    assert [r["status"] for r in results[1:]] == [200, 200], results
    assert len(calls) >= 2 and set(calls) == {"/llm-gateway/openai"}
    assert any("ThrottlingException" in line and "provider openai" in line for line in logs), logs
    assert not any(API_KEY in line for line in logs)


def test_a_provider_key_absent_from_ssm_is_named_missing(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """An absent parameter is not an unreadable one: the 503 says where to store the key, and not to retry."""
    server, _ = upstream
    with fake_ssm([ssm.ABSENT]) as (environ, _calls):
        (result,) = replay(
            tmp_path, server.url, [EVENTS / "chat-completions-ok.json"], environ=environ, api_key=STORED_KEY
        )
    assert result["status"] == 503, result
    error = json.loads(result["body"])["error"]
    assert (
        error["code"] == "provider_not_configured" and "store the key in ssm as /llm-gateway/openai" in error["message"]
    ), error
    assert result["headers"]["x-should-retry"] == "false", result


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_a_provider_key_in_ssm_with_a_newline_after_it_is_sent_without_it(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], credential: str
) -> None:
    """A key written to SSM from a file (`--value file://key.txt`) ends in a newline: every request was a 502,
    `upstream unreachable (LocalProtocolError ...)`, counted on the provider's breaker. Found by review."""
    server, _ = upstream
    with fake_ssm(in_ssm(credential, [f"{API_KEY}\n"])) as (environ, _calls):
        stored = stored_credential(credential)
        (result,) = replay(tmp_path, server.url, [EVENTS / "chat-completions-ok.json"], environ=environ, **stored)
    assert result["status"] == 200, result
    assert result["headers"]["x-gateway-route"] == "openai/gpt-4o-mini@global=200", result


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_a_provider_key_read_again_from_ssm_that_no_header_can_carry_is_the_503_not_a_500(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], credential: str
) -> None:
    """Read again after SSM throttled its read at init, the key held a non-ASCII character: every request was a 500
    `internal_error` (httpx's UnicodeEncodeError). Now the documented 503, saying why and where, never the value.
    Found by review."""
    server, _ = upstream
    results, logs, calls = three_chats_reading_ssm(tmp_path, server.url, credential, "sk-k\u00e9y-0123456789")
    # (The second invocation has it read, and is answered as the plan it made before the read said; the third says
    # what the read found.)
    assert [r["status"] for r in results] == [503] * 3 and len(calls) >= 2, results
    read_again = results[2]
    error = json.loads(read_again["body"])["error"]
    assert error["code"] == "provider_not_configured", error
    at = 5 if credential == "api_key" else 12  # (a header's value is the whole `Bearer <key>`)
    said = f"{STORED_KEY} could not be read (its value holds a non-ASCII character at character {at}, which no HTTP"
    assert said in error["message"], error
    assert not any("k\u00e9y" in line for line in [*logs, read_again["body"]])


@pytest.mark.parametrize("credential", CREDENTIALS)
def test_a_provider_key_rotated_in_ssm_is_read_again_when_the_provider_refuses_the_old_one(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], credential: str
) -> None:
    """The key was rotated in SSM (the old one revoked at the provider) after the environment read it: the provider's
    401 has the gateway read the key again, and the request is sent again with the new one, once. Before: a 502
    until the environment ended (for a credential in `headers`, until this fix, whatever else was read again)."""
    server, _ = upstream
    with fake_ssm(in_ssm(credential, ["sk-old-key-revoked-at-openai", API_KEY])) as (environ, calls):
        results = replay(
            tmp_path,
            server.url,
            [EVENTS / "chat-completions-ok.json"] * 2,
            environ=environ,
            **stored_credential(credential),
        )
    assert [r["status"] for r in results] == [200, 200], results
    route = "openai/gpt-4o-mini@global"
    assert results[0]["headers"]["x-gateway-route"] == f"{route}=401, {route}=200", results[0]
    assert results[1]["headers"]["x-gateway-route"] == f"{route}=200", results[1]
    assert results[0]["ledger_lines"] == 1 and len(calls) == 2


@pytest.mark.parametrize(
    "script",
    [
        [ssm.THROTTLE, API_KEY],  # the read failed while the snapshot was taken
        ["sk-old-key-revoked-at-openai", API_KEY],  # the key was rotated after the snapshot
    ],
    ids=["unread-at-snapshot", "rotated-after-snapshot"],
)
@pytest.mark.parametrize("credential", CREDENTIALS)
def test_a_snapstart_restore_reads_the_provider_keys_again(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], script: list[str], credential: str
) -> None:
    """With SnapStart the key read at init is the snapshot's, restored hours later into any number of environments:
    the restore hook reads it again, so the first invocation is answered with the key SSM holds now. Before: a
    failed read was frozen into the snapshot (every restored environment 503 for its life), and a rotated key was
    never picked up."""
    server, _ = upstream
    with fake_ssm(in_ssm(credential, script)) as (environ, calls):
        (result,) = replay(
            tmp_path,
            server.url,
            [EVENTS / "chat-completions-ok.json"],
            environ={**environ, "LAMBDA_SNAPSTART": "1"},
            **stored_credential(credential),
        )
    assert result["status"] == 200, result
    assert result["headers"]["x-gateway-route"] == "openai/gpt-4o-mini@global=200", result
    assert len(calls) == 2  # at init, and after the restore


LAMBDA_PAYLOAD_BYTES = 6_291_556  # the most Lambda returns from a synchronous invocation (its own figure)


def event_with(tmp_path: Path, name: str, body: dict[str, Any], file: str) -> Path:
    """`events/NAME.json` with another body, written to `tmp_path/FILE.json`."""
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event["body"] = json.dumps(body)
    path = tmp_path / f"{file}.json"
    path.write_text(json.dumps(event))
    return path


def ledger(tmp_path: Path) -> list[dict[str, Any]]:
    """The ledger's lines in the replay's embedded store, oldest first."""
    db = sqlite3.connect(tmp_path / "lambda.db")
    try:
        return [json.loads(row[0]) for row in db.execute("SELECT data FROM ledger ORDER BY ts")]
    finally:
        db.close()


def embeddings(inputs: int, **options: Any) -> dict[str, Any]:
    texts = [f"document number {i} about something" for i in range(inputs)]
    return {"model": "text-embedding-3-small", "input": texts, "dimensions": 1536, **options}


def test_an_embeddings_answer_known_to_be_past_lambda_s_6_mb_is_refused_before_it_is_sent(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """300 inputs of 1,536 floats is a 9.6 MB answer: Lambda's Runtime API refused it (413), the runtime exited, API
    Gateway answered 500, after the provider had billed it (and billed each retry again). Once the environment has
    seen the model's answers, it knows beforehand: a 413 in OpenAI's shape naming the limit and what to do, nothing
    sent, nothing charged; the same inputs as base64 (what OpenAI's SDKs ask for) fit and are answered."""
    server, fakes = upstream
    recorded = fakes["openai"].state.requests
    paths = [
        event_with(tmp_path, "embeddings-ok", embeddings(100), "hundred"),
        event_with(tmp_path, "embeddings-ok", embeddings(300), "three-hundred"),
        event_with(tmp_path, "embeddings-ok", embeddings(300, encoding_format="base64"), "three-hundred-base64"),
        event_with(tmp_path, "embeddings-ok", embeddings(10), "ten"),
    ]
    before = len(recorded)
    results = replay(tmp_path, server.url, paths)
    assert [r["status"] for r in results] == [200, 413, 200, 200], [r["body"][:300] for r in results]
    assert all(r["payload_bytes"] <= LAMBDA_PAYLOAD_BYTES for r in results), [r["payload_bytes"] for r in results]
    refused = results[1]
    error = json.loads(refused["body"])["error"]
    assert error["code"] == "request_too_large" and error["param"] == "input", error
    for words in ("6,291,556 bytes", "nothing was sent", "at most", "encoding_format base64", "streaming endpoint"):
        assert words in error["message"], error
    assert refused["headers"]["x-should-retry"] == "false" and refused["ledger_lines"] == 0, refused
    assert len(recorded) - before == 3  # the refused one never reached the provider
    assert [line["status"] for line in ledger(tmp_path)] == [200, 200, 200]


def test_an_answer_past_lambda_s_6_mb_is_a_413_whose_ledger_line_says_so(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """The first embeddings request of an environment (nothing learned of the model yet) whose answer is past the
    limit: the provider answered and billed it. The client gets a 413 saying so with its cost, not Lambda's 500 and
    a dead runtime; the ledger line keeps the cost and says 413, not a delivered 200; the environment serves on."""
    server, _ = upstream
    paths = [event_with(tmp_path, "embeddings-ok", embeddings(300), "three-hundred"), EVENTS / "embeddings-ok.json"]
    results = replay(tmp_path, server.url, paths)
    assert [r["status"] for r in results] == [413, 200], [r["body"][:300] for r in results]
    assert all(r["payload_bytes"] <= LAMBDA_PAYLOAD_BYTES for r in results), [r["payload_bytes"] for r in results]
    undelivered = results[0]
    error = json.loads(undelivered["body"])["error"]
    assert error["code"] == "request_too_large" and "billed" in error["message"], error
    assert float(undelivered["headers"]["x-gateway-cost-usd"]) > 0, undelivered["headers"]
    assert undelivered["headers"]["x-should-retry"] == "false" and undelivered["ledger_lines"] == 1, undelivered
    first, second = ledger(tmp_path)
    assert first["status"] == 413 and first["cost_usd"] > 0, first
    assert second["status"] == 200


def test_a_stream_past_lambda_s_6_mb_on_the_buffered_function_is_a_413(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A stream sent to the buffered endpoint arrives in one piece: one past the limit (40,000 chunks) is a 413 in
    OpenAI's shape, its ledger line saying so, rather than a payload Lambda refuses."""
    server, _ = upstream
    said = "SAY " + "abcd" * 40_000
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": said}]}
    (result,) = replay(tmp_path, server.url, [event_with(tmp_path, "chat-completions-stream", body, "long-stream")])
    assert result["status"] == 413 and result["payload_bytes"] <= LAMBDA_PAYLOAD_BYTES, result["body"][:300]
    error = json.loads(result["body"])["error"]
    assert error["code"] == "request_too_large" and "streaming endpoint" in error["message"], error
    assert result["headers"]["x-request-id"].startswith("req_")
    (line,) = ledger(tmp_path)
    assert line["status"] == 413 and line["cost_usd"] > 0, line


def seed_keys(tmp_path: Path, records: list[KeyRecord]) -> None:
    """`records` in the replay's embedded store, before its environment starts."""

    async def seed() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'lambda.db'}")
        try:
            for record in records:
                await store.create_key(record)
        finally:
            await store.close()

    asyncio.run(seed())


def key_listings(tmp_path: Path, url: str, queries: dict[str, str]) -> list[dict[str, Any]]:
    """The replays of `GET /admin/keys?QUERY` by the sample admin key, one a name of `queries`, in that order."""
    paths = []
    for name, query in queries.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(api_event("GET", "/admin/keys", key=SAMPLE_ADMIN_KEY, query=query)))
    return replay(tmp_path, url, paths)


def test_the_key_listing_of_20_000_keys_is_a_page_lambda_can_return(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """`GET /admin/keys` answered every key at once: 20,000 keys (363 bytes a key, as the function carries them)
    were 7.4 MB, past the 6 MB the buffered function can return (from some 17,000 keys on), a 413 for every admin.
    Now a client that sends no parameter gets the first 100, one that asks for the most a page holds 1,000, each a
    fraction of the limit, with where the next page starts."""
    server, _ = upstream
    seed_keys(
        tmp_path,
        [KeyRecord(id=f"k{n:011d}", name=f"agent {n}", secret_hash="h" * 64, created_at=0) for n in range(20_000)],
    )
    results = key_listings(tmp_path, server.url, {"first": "", "most": "limit=1000"})
    assert [r["status"] for r in results] == [200, 200], [r["body"][:300] for r in results]
    assert [r["payload_bytes"] < LAMBDA_PAYLOAD_BYTES // 10 for r in results] == [True, True]
    first, most = (json.loads(r["body"]) for r in results)
    assert (len(first["data"]), first["has_more"], len(most["data"]), most["has_more"]) == (100, True, 1000, True)
    assert [view["id"] for view in most["data"][:100]] == [view["id"] for view in first["data"]]


def test_a_page_of_keys_at_their_bounds_stays_within_what_lambda_can_return(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """Keys whose specs are at their bounds (a name of 200 characters, 100 model patterns and 100 model limits of 200,
    100 IP ranges, 16 tags) weigh some 51 KB each as the function carries them: 140 of them were 7.2 MB, past the
    buffered function's 6 MB even as one page of `limit=1000`. A page ends before 4 MB whatever `limit` asks
    (`has_more`, its `next_cursor` where it ended), and the next page goes on from there: every key listed once."""
    server, _ = upstream
    pattern = "m" * 190

    def widest(number: int) -> KeyRecord:
        return KeyRecord(
            id=f"w{number:011d}",
            name="n" * 200,
            secret_hash="h" * 64,
            created_at=0,
            models=[f"{pattern}{n:03d}*" for n in range(100)],
            model_limits={f"{pattern}{n:03d}?": {"rpm": 10**12, "tpm": 10**12} for n in range(100)},
            allow_ips=[f"2001:db8:{n:x}::/48" for n in range(100)],
            tags={f"{'t' * 125}{n:03d}": "v" * 128 for n in range(16)},
        )

    seed_keys(tmp_path, [widest(n) for n in range(140)])
    (first,) = key_listings(tmp_path, server.url, {"first": "limit=1000"})
    assert first["status"] == 200 and first["payload_bytes"] < LAMBDA_PAYLOAD_BYTES, first["body"][:300]
    page = json.loads(first["body"])
    assert page["has_more"] and 0 < len(page["data"]) < 140, (page["has_more"], len(page["data"]))
    (rest,) = key_listings(tmp_path, server.url, {"rest": f"limit=1000&cursor={page['next_cursor']}"})
    assert rest["status"] == 200 and rest["payload_bytes"] < LAMBDA_PAYLOAD_BYTES, rest["body"][:300]
    after = json.loads(rest["body"])
    assert not after["has_more"] and after["next_cursor"] is None
    listed = [view["id"] for view in page["data"] + after["data"]]
    samples = [SAMPLE_ADMIN_KEY_ID, SAMPLE_KEY_ID, SAMPLE_OTHER_KEY_ID]
    assert sorted(listed) == sorted([widest(n).id for n in range(140)] + samples)
