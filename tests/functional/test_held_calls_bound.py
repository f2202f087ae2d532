"""A held call where `gateway.timeouts.request` cuts the stream: handed out, and the stream ends with the bound's
error, as one without a held call does (review mergerev34c)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import Running
from tests.functional.test_held_calls import SCRIPTS, UNSIGNED, chat_calls, held_gateway
from tests.support.scripted import chunk


def one_deployment(google: dict[str, Any]) -> dict[str, Any]:
    deployment = {
        "deployments": [{"provider": "google", "model": "gemini-3-flash"}],
        "price": {"input": 1, "output": 2},
    }
    return {
        "gateway": {"timeouts": {"between_chunks": 60, "total": 2, "request": 2}},
        "providers": {"google": {**google, "profile": "google"}},
        "models": {"gemini-3-flash": deployment},
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from held_gateway(tmp_path_factory.mktemp("held-bound"), one_deployment)


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="held-bound")


def cut_at_the_bound(gateway: Running, key: str, events: list[Any]) -> tuple[list[Any], str]:
    SCRIPTS["gemini-3-flash"] = events
    calls, error = chat_calls(gateway, key)
    assert error is not None
    return calls, str(error)


def test_a_held_call_cut_at_the_request_bound_ends_with_the_bounds_error(gateway: Running, key: str) -> None:
    """Without a held chunk, the read cut at `ends` (the attempt's `total`) raises `UpstreamTimeoutError` out of
    `_pull`, and `batches` names the request's bound (`deadline_passed`: "gateway.timeouts.request"). With one, `_pull`
    catches the same error as a broken read, hands the call out, and stores it as `_failure`, which `batches` raises
    as it is: the client, ledger and breaker get the attempt's timeout in place of the request's bound."""
    text = chunk({"role": "assistant", "content": "Let me look."})
    _, plain = cut_at_the_bound(gateway, key, [text, 6.0])
    calls, held = cut_at_the_bound(gateway, key, [text, chunk({"tool_calls": [{**UNSIGNED, "index": 0}]}), 6.0])
    assert [c.id for c in calls] == ["function-call-1"]
    assert "timeouts.request" in plain
    assert "timeouts.request" in held, (plain, held)
