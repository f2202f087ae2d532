"""`gateway serve` stopped by a service manager (SIGTERM) while an answer is still going: the answer gets its grace
(`--shutdown-grace`), then is cut and settled as a stream its client left, and the process exits before the kill
that follows SIGTERM (Docker's 10 s, ECS's and Kubernetes' 30 s by default)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.store import open_store
from handler.pipeline.gateway import SHUTDOWN_SETTLE_S
from handler.pipeline.keys import split_key
from handler.ports import LedgerItem, UsageQuery
from tests.support.serve import gateway_serve
from tests.support.servers import ServerThread

GRACE_S = 1.0


def test_a_stream_still_going_at_sigterm_is_cut_after_its_grace_and_settled_before_the_process_exits(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn waited for every answer still going, without limit: a stream (up to `timeouts.total`, 900 s)
    held the shutdown until the service manager's kill, and its settlement was never written."""
    from tests.fakes import openai as openai_fake

    monkeypatch.setattr(openai_fake, "SLOW_SECONDS", 4.0)  # between the fake's chunks: a stream of ~20 s
    server, _ = upstream
    received: list[bytes] = []
    with gateway_serve(
        server.url, tmp_path, {}, args=("--shutdown-grace", str(GRACE_S)), upstream_models=("drip",)
    ) as served:
        body = {"model": "drip", "messages": [{"role": "user", "content": "x"}], "stream": True}
        headers = {"authorization": f"Bearer {served.key}"}

        def stream() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "POST", f"{served.url}/v1/chat/completions", json=body, headers=headers, timeout=60
                ) as answer,
            ):
                for piece in answer.iter_bytes():
                    received.append(piece)

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:  # its head is out: the stream is going
            time.sleep(0.05)
        assert received
        stopped = served.stopped_in(30)
        reader.join(10)
    assert stopped < GRACE_S + SHUTDOWN_SETTLE_S, stopped  # (it was the stream's whole ~20 s)
    # Cut, not finished: no chunk ended its choice; its last event is the gateway's error (it was cut with no word),
    # with what it is charged, before `[DONE]`, as a stream any other failure ends.
    events = b"".join(received).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and len(events) > 2, events
    assert '"finish_reason":"' not in "".join(events)
    error = json.loads(events[-3].removeprefix("data: "))
    assert error["error"]["code"] == "server_shutting_down"
    assert error["error"]["type"] == "service_unavailable"
    assert "shut down" in error["error"]["message"]
    assert error["cost"]["input_tokens"] > 0

    [line] = asyncio.run(ledger(tmp_path, served.key))
    assert (line.model, line.status, line.cost_source) == ("drip", 499, "estimate")
    assert line.input_tokens > 0


def test_answers_waiting_on_their_provider_past_the_grace_are_told_the_gateway_shut_down_in_their_apis_shape(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut past `--shutdown-grace`, a non-streamed answer got uvicorn's plain-text `500 Internal Server Error`, with
    no request id and no `x-should-retry`, and a stream on /v1/messages was cut with no error event (review)."""
    from tests.fakes import openai as openai_fake

    monkeypatch.setattr(openai_fake, "SLOW_SECONDS", 6.0)  # `slow` answers, and `drip` streams, past the grace
    server, fakes = upstream
    recorded = fakes["openai"].state.requests
    sent = len(recorded)
    answers: dict[str, httpx.Response] = {}
    streamed: list[bytes] = []
    messages = [{"role": "user", "content": "x"}]
    with gateway_serve(
        server.url, tmp_path, {}, args=("--shutdown-grace", str(GRACE_S)), upstream_models=("slow", "drip")
    ) as served:
        headers = {"authorization": f"Bearer {served.key}", "anthropic-version": "2023-06-01"}

        def call(path: str, body: dict[str, Any]) -> None:
            with contextlib.suppress(httpx.HTTPError):
                answers[path] = httpx.post(f"{served.url}{path}", json=body, headers=headers, timeout=60)

        def stream() -> None:
            body = {"model": "drip", "messages": messages, "max_tokens": 50, "stream": True}
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("POST", f"{served.url}/v1/messages", json=body, headers=headers, timeout=60) as answer,
            ):
                for piece in answer.iter_bytes():
                    streamed.append(piece)

        callers = [
            threading.Thread(target=call, args=("/v1/chat/completions", {"model": "slow", "messages": messages})),
            threading.Thread(
                target=call, args=("/v1/messages", {"model": "slow", "messages": messages, "max_tokens": 50})
            ),
            threading.Thread(target=stream),
        ]
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 10
        while (len(recorded) < sent + 3 or not streamed) and time.monotonic() < deadline:  # all at the provider
            time.sleep(0.05)
        stopped = served.stopped_in(30)
        for caller in callers:
            caller.join(10)
    assert stopped < GRACE_S + SHUTDOWN_SETTLE_S, stopped

    chat, anthropic = answers["/v1/chat/completions"], answers["/v1/messages"]
    for answer in (chat, anthropic):
        assert answer.status_code == 503, answer.text
        assert answer.headers["x-should-retry"] == "true"
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["x-request-id"].startswith("req_")
        assert answer.headers["x-gateway-route"] == "openai/slow@global=server_shutting_down"
    error = chat.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "server_shutting_down")
    assert "shut down" in error["message"]
    assert "charged its reserved worst case, 9 input and 4096 output tokens" in error["message"]
    said = anthropic.json()
    assert (said["type"], said["error"]["type"]) == ("error", "api_error")
    assert "charged its reserved worst case, 34 input and 50 output tokens" in said["error"]["message"]
    assert anthropic.headers["request-id"] == anthropic.headers["x-request-id"]

    # The stream on /v1/messages ends with Anthropic's error event, what it is charged beside it.
    last = b"".join(streamed).decode().split("\n\n")[-2]
    assert last.startswith("event: error\ndata: "), last
    event = json.loads(last.split("data: ", 1)[1])
    assert (event["type"], event["error"]["type"]) == ("error", "api_error")
    assert "shut down" in event["error"]["message"]
    assert event["cost"]["input_tokens"] == 22

    # Each left its one ledger line, as a request its client left does: the reserved worst case where the provider
    # had not answered, what was produced where the stream had begun.
    lines = sorted(
        (line.model, line.status, line.cost_source, line.output_tokens)
        for line in asyncio.run(ledger(tmp_path, served.key))
    )
    assert lines == [("drip", 499, "estimate", 0), ("slow", 499, "reserved", 50), ("slow", 499, "reserved", 4096)]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stopped_server_gives_back_the_unused_slices_of_its_workers(
    tmp_path: Path, upstream: tuple[ServerThread, dict[str, Any]], workers: int
) -> None:
    """Each worker admits a budgeted key's requests from a slice of its budget, counted as committed in the file. The
    shutdown never closed the store, the one thing that gives unused slices back: after 20 requests ($0.000108
    spent) a stopped server left $0.0629 committed with one worker, and $0.0691 in two slice rows with two, for
    some 17 minutes (the rows' expiry), while a restarted server refused the key's requests that much early."""
    server, _ = upstream
    with gateway_serve(server.url, tmp_path, {}, args=("--workers", str(workers)), key_args=("--budget-usd", "1")) as s:

        async def spend() -> list[int]:
            gate = asyncio.Semaphore(4)
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50}
            # (a connection a request: the kernel spreads them over the workers)
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=30, limits=limits) as http:

                async def one() -> int:
                    async with gate:
                        headers = {"authorization": f"Bearer {s.key}"}
                        answer = await http.post(f"{s.url}/v1/chat/completions", json=body, headers=headers)
                        return answer.status_code

                return await asyncio.gather(*(one() for _ in range(20)))

        assert asyncio.run(spend()) == [200] * 20
        stopped = s.stopped_in(30)  # (well within the slices' idle time: each worker still holds its own)
    assert stopped < GRACE_S + SHUTDOWN_SETTLE_S, stopped
    lines = asyncio.run(ledger(tmp_path, s.key))
    db = sqlite3.connect(tmp_path / "gateway.db")
    try:
        reserved = db.execute("SELECT id, amount FROM reservations").fetchall()
        key_id, _ = split_key(s.key) or ("", "")
        [(committed, spent)] = db.execute("SELECT committed, spent FROM meters WHERE key_id = ?", (key_id,))
    finally:
        db.close()
    assert len(lines) == 20
    assert spent == pytest.approx(sum(line.cost_usd or 0.0 for line in lines), abs=1e-12)
    assert reserved == []
    assert committed == pytest.approx(spent, abs=1e-12)
    assert list((tmp_path / "gateway.db-holders").iterdir()) == []  # (each worker's lock file, gone with it)


def ledger(folder: Path, key: str) -> Coroutine[Any, Any, list[LedgerItem]]:
    """The ledger lines of `key` in the store `gateway serve` ran on in `folder`."""

    async def read() -> list[LedgerItem]:
        store = open_store(f"sqlite:///{folder / 'gateway.db'}")
        try:
            key_id, _ = split_key(key) or ("", "")
            return await store.usage(UsageQuery([key_id], 0, time.time() + 1))
        finally:
            await store.close()

    return read()
