"""A buffered Lambda invocation whose settlement DynamoDB will not take in time: the settlement is spooled, and the
handler answers, before the function's deadline, where Lambda kills the environment with whatever it was writing.

The handler runs in a fresh interpreter (tests/support/lambda_replay.py) under a context whose remaining time runs
down from `TIMEOUT_MS`; the store is moto behind a proxy that throttles the settlement's `TransactWriteItems`, stalls
it, or lets moto apply it and never answers. The spool, re-driven afterwards, lands the settlement exactly once.
Before the fix the store's retries (the meter's, the contention retries, the HTTP client's) ran on: 12 s throttled and
about 50 s stalled, so on Lambda the function was killed with no ledger line, no spool line and no log line.

`gateway serve` stopping (SIGTERM) with such a settlement in flight has no deadline of Lambda's, but a service
manager kills a process that takes too long to stop: its shutdown waits `SHUTDOWN_SETTLE_S` for the settlement, then
spools it.

Every other store call a request makes (its key lookup, admission, stored responses, an admin route's reads) ends by
the request's deadline too (`x-gateway-deadline-ms`, on Lambda the invocation's remaining time less 1.5 s): past it
the client has a 503 `store_unavailable` with `retry-after`. Before, against a DynamoDB endpoint that accepts
connections and never answers, each took three attempts of 5 s: 15 s whatever the deadline, and on Lambda the function
was killed first with no answer at all; an SQLite file whose write lock another process held kept an admission 5 s."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.store import open_store
from handler.api.app import LATE_ANSWER_WAIT_S
from handler.pipeline.budgets import OUT_OF_TIME, period_of
from handler.pipeline.gateway import SHUTDOWN_SETTLE_S
from handler.pipeline.keys import hash_secret, split_key
from handler.pipeline.spool import SettlementSpool
from handler.ports import KeyRecord, LedgerItem, UsageQuery
from tests.functional.conftest import gateway_config, serve_gateway
from tests.support.dynamo import DynamoServer
from tests.support.events import EVENTS, SAMPLE_KEY_ID, SAMPLE_SECRET
from tests.support.serve import gateway_serve
from tests.support.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_MS = 4000  # the function's timeout, as the context tells it (template.yaml's is 29 s)
THROTTLED = b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded."}'


def settling_refused(target: str, mode: str) -> Any:
    """A DynamoDB endpoint forwarding every call to `target`, except a settlement's transaction (the one that writes
    a `SETTLED#` marker): `throttle` refuses it, `stall` never answers it, `applied` has it applied and never
    answers (the write landed, the gateway cannot know)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")}
        settling = headers.get("x-amz-target", "").endswith(".TransactWriteItems") and b'"SETTLED#' in body
        if settling and mode == "throttle":
            head = [(b"content-type", b"application/x-amz-json-1.0")]
            await send({"type": "http.response.start", "status": 400, "headers": head})
            await send({"type": "http.response.body", "body": THROTTLED})
            return
        if not (settling and mode == "stall"):
            async with httpx.AsyncClient() as client:
                answer = await client.post(target + "/", content=body, headers=headers)
            if not settling:
                head = [(b"content-type", answer.headers.get("content-type", "").encode())]
                await send({"type": "http.response.start", "status": answer.status_code, "headers": head})
                await send({"type": "http.response.body", "body": answer.content})
                return
        while (await receive())["type"] != "http.disconnect":  # no answer, until the gateway gives up on it
            pass

    return app


async def budgeted_sample_key(store_url: str, rpm: int | None = None) -> None:
    """The events' sample key, with a budget (and `rpm`, where given): the settlement moves its committed and spent
    too."""
    store = open_store(store_url)
    try:
        secret_hash = hash_secret(SAMPLE_SECRET)
        record = KeyRecord(
            id=SAMPLE_KEY_ID, name="sample", secret_hash=secret_hash, created_at=0, budget_usd=1.0, rpm=rpm
        )
        await store.create_key(record)
    finally:
        await store.close()


async def held(store_url: str, key_id: str = SAMPLE_KEY_ID) -> tuple[float, dict[str, int]]:
    """What `key_id` holds: its committed (the total period's), and the rate counters that count anything this
    minute (none, once it has ended)."""
    store = open_store(store_url)
    try:
        period = period_of("total", time.time())
        meter = await store.meter(key_id, period)
        return round(meter.committed_usd[period], 9), {name: count for name, count in meter.rates.items() if count}
    finally:
        await store.close()


async def replayed(
    store_url: str, spool: SettlementSpool, key_id: str = SAMPLE_KEY_ID
) -> tuple[list[LedgerItem], float, float]:
    """Re-drive `spool` into the store; the key's ledger lines then, its committed and spent."""
    store = open_store(store_url)
    try:
        await spool.redrive(store)
        lines = await store.usage(UsageQuery([key_id], 0, time.time() + 60))
        period = period_of("total", time.time())
        meter = await store.meter(key_id, period)
        return lines, meter.committed_usd[period], meter.spent_usd[period]
    finally:
        await store.close()


@pytest.mark.parametrize("mode", ["throttle", "stall", "applied"])
def test_a_settlement_the_store_does_not_take_is_spooled_and_answered_before_the_deadline(
    mode: str, tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    table = dynamo.create_table()
    asyncio.run(budgeted_sample_key(dynamo.store_url(table)))
    proxy = ServerThread(settling_refused(dynamo.url, mode)).start()
    server, _ = upstream
    config = {
        "providers": {
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"}
        },
        "models": {"gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    spool_path = tmp_path / "settlements.jsonl"
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp_path / "config.yaml"),
        "GATEWAY_STORE": f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}",  # 2 s reads, as deployed
        "GATEWAY_SETTLEMENT_SPOOL": str(spool_path),
        "OPENAI_API_KEY": "test-openai-key",
        "AWS_REGION": "us-east-1",
        "LAMBDA_TIMEOUT_MS": str(TIMEOUT_MS),
    }
    try:
        run = subprocess.run(
            [sys.executable, "-m", "tests.support.lambda_replay", str(EVENTS / "chat-completions-ok.json")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proxy.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = [json.loads(line) for line in run.stdout.splitlines()]
    request_id = result["headers"]["x-request-id"]

    # The client has its answer, and the function returned before Lambda would have killed it...
    assert result["status"] == 200, result
    assert result["ms"] < TIMEOUT_MS, result["ms"]
    assert result["unsettled"] == 0  # (nothing left to run after it returned)
    # ...with the settlement in the spool, and in a log line that carries the whole of it.
    spool = SettlementSpool(spool_path)
    assert spool.count() == 1
    logged = [json.loads(line) for line in run.stderr.splitlines() if '"settlement spooled' in line]
    assert [(e["reason"], e["settlement"]["reservation_id"]) for e in logged] == [(OUT_OF_TIME, request_id)]

    # Re-driven later, it counts once: one line, its cost committed and spent once; also where its write had landed.
    landed, _, _ = asyncio.run(replayed(dynamo.store_url(table), SettlementSpool(tmp_path / "nothing.jsonl")))
    assert [line.request_id for line in landed] == ([request_id] if mode == "applied" else [])
    lines, committed, spent = asyncio.run(replayed(dynamo.store_url(table), spool))
    assert [line.request_id for line in lines] == [request_id]
    assert committed == pytest.approx(lines[0].cost_usd) and spent == pytest.approx(lines[0].cost_usd)
    assert spool.count() == 0
    # Replayed once more from its log line (a recycled environment's /tmp is gone): nothing changes.
    from_the_log = tmp_path / "from-the-log.jsonl"
    from_the_log.write_text(json.dumps({"add": logged[0]["settlement"]}) + "\n")
    again, committed_again, spent_again = asyncio.run(replayed(dynamo.store_url(table), SettlementSpool(from_the_log)))
    assert [line.request_id for line in again] == [request_id]
    assert (committed_again, spent_again) == (committed, spent)


@pytest.mark.parametrize("mode", ["stall", "applied"])
def test_gateway_serve_stops_in_time_with_a_settlement_the_store_does_not_take_and_spools_it(
    mode: str, tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """SIGTERM while a settlement's write stalls (or landed and was never answered): the shutdown waited for every
    retry of every layer (77 s measured, stalled), and a service manager would have killed the process before the
    settlement was spooled. Now it stops after `SHUTDOWN_SETTLE_S`, the settlement spooled; re-driven, one line."""
    table = dynamo.create_table()
    proxy = ServerThread(settling_refused(dynamo.url, mode)).start()
    server, _ = upstream
    spool_path = tmp_path / "settlements.jsonl"
    environ = {
        "GATEWAY_STORE": f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}",  # 2 s reads, as deployed
        "GATEWAY_SETTLEMENT_SPOOL": str(spool_path),
        "AWS_REGION": "us-east-1",
    }
    try:
        with gateway_serve(server.url, tmp_path, {}, environ) as served:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
            headers = {"authorization": f"Bearer {served.key}"}
            answer = httpx.post(f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
            assert answer.status_code == 200
            time.sleep(0.3)  # its settlement is in the store's hands
            stopped = served.stopped_in(SHUTDOWN_SETTLE_S + 30)
    finally:
        proxy.stop()
    assert stopped < SHUTDOWN_SETTLE_S + 3, stopped
    request_id = answer.headers["x-request-id"]
    spool = SettlementSpool(spool_path)
    assert spool.count() == 1
    log = (tmp_path / "gateway.log").read_text().splitlines()
    logged = [json.loads(line) for line in log if '"settlement spooled' in line]
    assert [e["settlement"]["reservation_id"] for e in logged] == [request_id]
    assert any("shutdown: settlements the store did not take" in line for line in log)

    key_id, _ = split_key(served.key) or ("", "")
    landed, _, _ = asyncio.run(replayed(dynamo.store_url(table), SettlementSpool(tmp_path / "nothing.jsonl"), key_id))
    assert [line.request_id for line in landed] == ([request_id] if mode == "applied" else [])
    lines, _, _ = asyncio.run(replayed(dynamo.store_url(table), spool, key_id))
    assert [line.request_id for line in lines] == [request_id]  # exactly one line, however far its write had gone
    assert spool.count() == 0


# Requests whose first store call is their key lookup: a chat completion, a model list, an admin route's read.
KEY_LOOKUPS = ["chat-completions-ok", "models", "admin-keys-list"]
HEADER_DEADLINE_MS = 1000
SLACK_MS = 500  # what the deadline's 503 may take beyond it (a fresh interpreter's first requests)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An endpoint (a DynamoDB, a provider, a trace collector) that accepts connections and never answers (the kernel
    completes the handshakes; nothing reads): its URL."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def stalling(target: str, stalled: Callable[[str, bytes], bool], late_s: float | None = None) -> Any:
    """A DynamoDB endpoint forwarding every call to `target`, but those `stalled(operation, body)` picks, which it never
    answers (or forwards `late_s` late)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")}
        if stalled(headers.get("x-amz-target", "").rpartition(".")[2], body):
            if late_s is None:
                while (await receive())["type"] != "http.disconnect":  # no answer, until the gateway gives up on it
                    pass
                return
            await asyncio.sleep(late_s)
        async with httpx.AsyncClient() as client:
            answer = await client.post(target + "/", content=body, headers=headers)
        head = [(b"content-type", answer.headers.get("content-type", "").encode())]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": head})
        await send({"type": "http.response.body", "body": answer.content})

    return app


def admitting_or_reading_responses(operation: str, body: bytes) -> bool:
    """An admission's write (not a settlement's), or a stored response's read or write."""
    writes = operation in ("TransactWriteItems", "UpdateItem", "PutItem") and b'"SETTLED#' not in body
    return writes or b'"RESP#' in body


def openai_config(tmp_path: Path, upstream_url: str, upstream_model: str = "gpt-4o-mini") -> Path:
    """The config of the events' model, `gpt-4o-mini`, served by the fake's `upstream_model`."""
    config = {
        "providers": {
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"}
        },
        "models": {"gpt-4o-mini": {"deployments": [{"provider": "openai", "model": upstream_model}]}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def replay(
    events: list[Path], config: Path, store_url: str, timeout_ms: int | None, freeze_s: float = 0
) -> list[dict[str, Any]]:
    """`events` through the Lambda handler, in one fresh interpreter (tests/support/lambda_replay.py), each under a
    context with `timeout_ms` left (None: a context that tells none), the process frozen `freeze_s` between them: a
    result line each."""
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(config),
        "GATEWAY_STORE": store_url,  # 2 s reads, as deployed
        "GATEWAY_SETTLEMENT_SPOOL": str(config.parent / "settlements.jsonl"),
        "OPENAI_API_KEY": "test-openai-key",
        "AWS_REGION": "us-east-1",
        "LAMBDA_FREEZE_S": str(freeze_s),
    }
    if timeout_ms is not None:
        env["LAMBDA_TIMEOUT_MS"] = str(timeout_ms)
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.lambda_replay", *map(str, events)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


def test_the_span_flush_after_an_answer_at_the_deadline_is_bound_by_the_function_s_timeout(tmp_path: Path) -> None:
    """A provider that never answers, then a trace collector that never answers: the 504 came at the request's
    deadline (the invocation's 4 s less 1.5 s), charged and its ledger line written, and the span flush after it
    waited its whole 2 s (`FLUSH_SECONDS`), past the 1.5 s left: the handler returned at 4.5 s, where Lambda kills the
    invocation at 4 s and the client gets API Gateway's bare 5xx for an answer it was charged for. Now the flush ends
    by the invocation's remaining time less its margin (`FLUSH_MARGIN_MS`, 250 ms). Found by review."""
    store_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    asyncio.run(budgeted_sample_key(store_url))
    with silent_endpoint() as provider, silent_endpoint() as collector:
        config = openai_config(tmp_path, provider)
        traced = {"otlp": {"endpoint": collector, "schedule_delay_ms": 600_000}}  # (only the flush sends)
        config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "observability": traced}))
        [result] = replay([EVENTS / "chat-completions-ok.json"], config, store_url, TIMEOUT_MS)
    assert result["status"] == 504, result  # the gateway's own answer...
    assert json.loads(result["body"])["error"]["code"] == "upstream_timeout", result
    assert result["headers"]["x-request-id"].startswith("req_"), result
    assert result["ledger_lines"] == 1 and result["unsettled"] == 0, result  # ...charged (the provider may have run it)
    # The handler returned before the function's timeout, the flush having waited what the invocation could spare.
    assert TIMEOUT_MS - 500 < result["ms"] < TIMEOUT_MS, result["ms"]


def with_deadline(tmp_path: Path, name: str, ms: int) -> Path:
    """The event `name` with `x-gateway-deadline-ms: ms`."""
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event["headers"]["x-gateway-deadline-ms"] = str(ms)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(event))
    return path


def store_unavailable_by(result: dict[str, Any], limit_ms: float) -> None:
    """`result` is the 503 of a store that did not answer by the request's deadline, answered within `limit_ms`."""
    assert result["status"] == 503, result
    assert result["ms"] < limit_ms, (result["event"], result["ms"])
    error = json.loads(result["body"])["error"]
    assert error["code"] == "store_unavailable", error
    assert "within the request's deadline" in error["message"], error
    assert (result["headers"]["retry-after"], result["headers"]["x-should-retry"]) == ("1", "true")


@pytest.mark.parametrize("bound", ["invocation", "header"])
def test_a_store_that_never_answers_is_a_503_by_the_request_s_deadline(
    bound: str, tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """The key lookup of a chat completion, a model list and an admin read, against a DynamoDB endpoint that never
    answers: each took 15 s (three attempts of 5 s), past a Lambda invocation's 4 s (the function killed, no answer)
    and past `x-gateway-deadline-ms: 1000`. Now each is a 503 by the deadline: the invocation's time less its margin,
    or the header's."""
    server, _ = upstream
    config = openai_config(tmp_path, server.url)
    with silent_endpoint() as endpoint:
        store_url = f"dynamodb://gateway?region=us-east-1&endpoint_url={endpoint}"
        if bound == "invocation":
            results = replay([EVENTS / f"{name}.json" for name in KEY_LOOKUPS], config, store_url, TIMEOUT_MS)
            limit_ms = TIMEOUT_MS  # (its deadline: 1.5 s before; past it, Lambda kills the function)
        else:
            events = [with_deadline(tmp_path, name, HEADER_DEADLINE_MS) for name in KEY_LOOKUPS]
            results = replay(events, config, store_url, None)
            limit_ms = HEADER_DEADLINE_MS + SLACK_MS
    assert [r["event"] for r in results] == KEY_LOOKUPS
    for result in results:
        store_unavailable_by(result, limit_ms)


def test_an_admission_or_a_stored_response_the_store_does_not_answer_is_a_503_before_the_invocation_s_deadline(
    tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """The key found, then the budgeted key's admission, or a stored response's read, never answered: 15 s, past the
    invocation's 4 s. Now a 503 before it; nothing reached the provider, so nothing was to be recorded."""
    table = dynamo.create_table()
    asyncio.run(budgeted_sample_key(dynamo.store_url(table)))
    proxy = ServerThread(stalling(dynamo.url, admitting_or_reading_responses)).start()
    server, fakes = upstream
    config = openai_config(tmp_path, server.url)
    calls: list[dict[str, Any]] = fakes["openai"].state.requests
    before = len(calls)
    try:
        store_url = f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}"
        events = [EVENTS / "chat-completions-ok.json", EVENTS / "responses-get-unknown.json"]
        results = replay(events, config, store_url, TIMEOUT_MS)
    finally:
        proxy.stop()
    for result in results:
        store_unavailable_by(result, TIMEOUT_MS)
    lines, committed, _ = asyncio.run(replayed(dynamo.store_url(table), SettlementSpool(tmp_path / "none.jsonl")))
    assert (lines, committed) == ([], 0.0)
    assert len(calls) == before


def test_the_deadline_counts_from_the_request_s_arrival_its_key_lookup_included(
    tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A key lookup that takes 0.8 s, then a provider slower than the rest of `x-gateway-deadline-ms: 1500`: the
    deadline was counted from after the lookup, and the 504 came at 2.4 s. Now at 1.5 s, the whole request's."""
    table = dynamo.create_table()
    asyncio.run(budgeted_sample_key(dynamo.store_url(table)))
    proxy = ServerThread(stalling(dynamo.url, lambda operation, body: b'"KEY#' in body, late_s=0.8)).start()
    server, _ = upstream
    config = openai_config(tmp_path, server.url, "slow")  # (the fake answers it after 2 s)
    try:
        store_url = f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}"
        [result] = replay([with_deadline(tmp_path, "chat-completions-ok", 1500)], config, store_url, None)
    finally:
        proxy.stop()
    assert result["status"] == 504, result
    assert json.loads(result["body"])["error"]["code"] == "upstream_timeout"
    assert 1450 < result["ms"] < 1900, result["ms"]


def test_an_sqlite_write_lock_held_elsewhere_holds_a_request_no_longer_than_its_deadline(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """Another process holds the SQLite file's write lock: a budgeted key's admission waited for it 5 s (the store's
    busy timeout) whatever the request's deadline, and a stored response's write as long, with the event loop held.
    Now the admission is a 503 by `x-gateway-deadline-ms`, and the response is answered by then, not stored."""
    server, fakes = upstream
    path = tmp_path / "gateway.db"
    running, gateway_server = serve_gateway(gateway_config(server.url, set(fakes)), f"sqlite:///{path}", server, fakes)
    deadline = {"x-gateway-deadline-ms": str(HEADER_DEADLINE_MS)}
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    respond = {"model": "gpt-4o-mini", "input": "x", "store": True}
    try:
        budgeted, plain = running.mint(budget_usd=1.0), running.mint()
        with httpx.Client(base_url=running.url, timeout=30) as client:
            warm = client.post("/v1/responses", json=respond, headers={"authorization": f"Bearer {plain}"})
            assert warm.status_code == 200 and warm.json()["store"] is True
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process's write, held throughout
            try:
                started = time.perf_counter()
                admitted = client.post(
                    "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {budgeted}", **deadline}
                )
                admitted_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                kept = client.post(
                    "/v1/responses", json=respond, headers={"authorization": f"Bearer {plain}", **deadline}
                )
                kept_ms = (time.perf_counter() - started) * 1000
            finally:
                other.execute("ROLLBACK")
                other.close()
    finally:
        gateway_server.stop()
    assert (admitted.status_code, kept.status_code) == (503, 200), (admitted.text, kept.text)
    assert (admitted_ms < HEADER_DEADLINE_MS + SLACK_MS, kept_ms < HEADER_DEADLINE_MS + SLACK_MS) == (True, True), (
        admitted_ms,
        kept_ms,
    )
    assert admitted.json()["error"]["code"] == "store_unavailable"
    assert "within the request's deadline" in admitted.json()["error"]["message"]
    assert admitted.headers["retry-after"] == "1"
    assert kept.json()["store"] is False  # (answered as the provider was paid for it; not kept)


def test_an_admission_never_answered_is_a_503_by_the_header_deadline_on_the_buffered_function(
    tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A budgeted key's admission that DynamoDB never answers, with `x-gateway-deadline-ms: 1000` on a function whose
    timeout is 29 s (template.yaml's): the 503 by the deadline, the admission's call running on. A release that
    waited for the call's outcome in a task held the buffered function's answer (its settlements run before it goes)
    for the admission's own timeouts: the 503 after 15 s (found by review). Its answer is waited for at most
    `LATE_ANSWER_WAIT_S` past the deadline (0.5 s), in vain here."""
    table = dynamo.create_table()
    asyncio.run(budgeted_sample_key(dynamo.store_url(table)))
    proxy = ServerThread(stalling(dynamo.url, admitting_or_reading_responses)).start()
    server, _ = upstream
    config = openai_config(tmp_path, server.url)
    try:
        store_url = f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}"
        [result] = replay([with_deadline(tmp_path, "chat-completions-ok", 1000)], config, store_url, 29_000)
    finally:
        proxy.stop()
    store_unavailable_by(result, 1000 + LATE_ANSWER_WAIT_S * 1000 + SLACK_MS)  # (its answer waited for, in vain)


def first_admission() -> Callable[[str, bytes], bool]:
    """Picks a key's first admission (its meter's `UpdateItem`), and nothing after it."""
    picked: list[bytes] = []

    def stalled(operation: str, body: bytes) -> bool:
        if picked or operation != "UpdateItem" or b'"METER#' not in body:
            return False
        picked.append(body)
        return True

    return stalled


@pytest.mark.parametrize("late_s", [1.05, 1.8])
def test_a_late_admission_on_the_buffered_function_is_released_before_an_answer_goes(
    late_s: float, tmp_path: Path, dynamo: DynamoServer, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """A budgeted key's admission DynamoDB writes and answers `late_s` after it was sent, past
    `x-gateway-deadline-ms: 1000` (a 503), on a function whose timeout is 29 s: nothing waited for its answer, which
    the environment took in only with its next invocation (after a thaw), or never (the environment reclaimed): the
    reservation held the key's budget and its minute's request until it expired (960 s). Now each invocation's answer
    waits for such answers at most `LATE_ANSWER_WAIT_S` (0.5 s): 1.05 s late, the reservation is released before the
    503 goes; 1.8 s late, the 503 goes without it, and the next invocation (a `/health` after a 3 s freeze) releases
    it before its own answer goes."""
    table = dynamo.create_table()
    asyncio.run(budgeted_sample_key(dynamo.store_url(table), rpm=10))
    proxy = ServerThread(stalling(dynamo.url, first_admission(), late_s=late_s)).start()
    server, _ = upstream
    config = openai_config(tmp_path, server.url)
    within = late_s < 1.5
    events = [with_deadline(tmp_path, "chat-completions-ok", 1000), *([] if within else [EVENTS / "health.json"])]
    try:
        store_url = f"dynamodb://{table}?region=us-east-1&endpoint_url={proxy.url}"
        results = replay(events, config, store_url, 29_000, freeze_s=3.0)
    finally:
        proxy.stop()
    store_unavailable_by(results[0], 1000 + LATE_ANSWER_WAIT_S * 1000 + SLACK_MS)
    assert [r["status"] for r in results[1:]] == ([] if within else [200])
    assert [r["awaiting"] for r in results] == ([0] if within else [1, 0]), results
    assert asyncio.run(held(dynamo.store_url(table))) == (0, {})
