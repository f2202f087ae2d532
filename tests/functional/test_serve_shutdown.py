"""`gateway serve` stopped by a service manager (SIGTERM) while an answer is still going: the answer gets its grace
(`--shutdown-grace`), then is cut and settled as a stream its client left, and the process exits before the kill
that follows SIGTERM (Docker's 10 s, ECS's and Kubernetes' 30 s by default)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
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
    assert b"data: [DONE]" not in b"".join(received)  # cut, not finished

    async def ledger() -> list[LedgerItem]:
        store = open_store(f"sqlite:///{tmp_path / 'gateway.db'}")
        try:
            key_id, _ = split_key(served.key) or ("", "")
            return await store.usage(UsageQuery([key_id], 0, time.time() + 1))
        finally:
            await store.close()

    [line] = asyncio.run(ledger())
    assert (line.model, line.status, line.cost_source) == ("drip", 499, "estimate")
    assert line.input_tokens > 0
