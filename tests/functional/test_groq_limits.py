"""Groq answers a `service_tier: flex` request it has no flex capacity for with its own status 498 and error
`capacity_exceeded` (console.groq.com/docs/flex-processing: "If flex capacity is unavailable, requests will fail
quickly with status 498 and error capacity_exceeded. Add jittered backoff and retries to smooth spikes"): a failure a
later attempt gets past, as a 429 is. The gateway read any 4xx outside 408, 409, 425 and 429 as the client's
request refused (`handler.wire.passing_failure`): the fallback model was never tried, and the client was handed
Groq's 498, a status no OpenAI SDK retries. Found by review."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import FAKE_KEYS, Running, serve_gateway
from tests.support.scripted import ROUTES, SCRIPTS, whole
from tests.support.servers import ServerThread

CAPACITY = {
    "error": {"message": "flex tier capacity exceeded", "type": "invalid_request_error", "code": "capacity_exceeded"}
}


def gateway_of(tmp: Path) -> Iterator[Running]:
    server = ServerThread(Starlette(routes=ROUTES)).start()
    base = f"{server.url}/openai/v1"
    config = {
        "providers": {"groq": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": base, "profile": "groq"}},
        "models": {
            "llama-flex": {
                "deployments": [{"provider": "groq", "model": "llama-flex"}],
                "price": {"input": 1, "output": 2},
                "fallbacks": ["llama-backup"],
            },
            "llama-backup": {
                "deployments": [{"provider": "groq", "model": "llama-backup"}],
                "price": {"input": 1, "output": 2},
            },
        },
    }
    running, gateway_server = serve_gateway(
        parse_config(config, set(REGISTRY)), f"sqlite:///{tmp / 'gw.db'}", server, {}, FAKE_KEYS
    )
    yield running
    gateway_server.stop()
    server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from gateway_of(tmp_path_factory.mktemp("groq"))


def answered_by_the_fallback(gateway: Running, status: int, error: dict[str, Any]) -> None:
    """`llama-flex` answering `status` with `error`: the request is answered by its fallback, `llama-backup`."""
    key = gateway.mint(name=f"groq-{status}")
    SCRIPTS["llama-flex"] = {"status": status, "whole": error}
    SCRIPTS["llama-backup"] = {"whole": whole({"role": "assistant", "content": "from the fallback"})}
    body = {"model": "llama-flex", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, (answer.status_code, answer.text)
    assert answer.json()["choices"][0]["message"]["content"] == "from the fallback"


@pytest.mark.parametrize("status", [429, 498])  # (429: the control, failed over before)
def test_groqs_flex_capacity_498_fails_over_to_the_fallback(gateway: Running, status: int) -> None:
    answered_by_the_fallback(gateway, status, CAPACITY)


# Groq's on-demand tier refuses a request past the organization's tokens-per-minute allowance (its `max_tokens`
# counted in) with a 413 whose code is `rate_limit_exceeded` (continuedev/continue#10218, gpt-researcher#985,
# elizaOS/eliza#4040: "Request too large for model ... in organization ... service tier `on_demand` on tokens per
# minute (TPM): Limit 6000, Requested 14368 ... Need more tokens? Upgrade to Dev Tier"): the account's limit, which
# another deployment or the fallback model serves, not a request no provider could take.
TPM = {
    "error": {
        "message": "Request too large for model `llama-flex` in organization `org_01` service tier `on_demand` on "
        "tokens per minute (TPM): Limit 6000, Requested 14368, please reduce your message size and try again. Need "
        "more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}


def test_groqs_tier_tokens_per_minute_413_fails_over_to_the_fallback(gateway: Running) -> None:
    answered_by_the_fallback(gateway, 413, TPM)


def test_request_sized_413s_do_not_open_the_deployments_breaker(tmp_path: Path) -> None:
    """Groq's 413 refuses one request for its size against the tier's minute, and serves a smaller one at once:
    counted on the breaker, five clients' big prompts in a row took Groq away from every key. (mergerev35c)"""
    gateway_gen = gateway_of(tmp_path)
    gateway = next(gateway_gen)
    key = gateway.mint(name="groq-413-breaker")
    headers = {"authorization": f"Bearer {key}"}
    SCRIPTS["llama-backup"] = {"whole": whole({"role": "assistant", "content": "from the fallback"})}
    SCRIPTS["llama-flex"] = {"status": 413, "whole": TPM}
    big = {"model": "llama-flex", "messages": [{"role": "user", "content": "a long prompt " * 50}]}
    for _ in range(6):  # (the breaker's default threshold is 5)
        httpx.post(f"{gateway.url}/v1/chat/completions", json=big, headers=headers, timeout=30)
    SCRIPTS["llama-flex"] = {"whole": whole({"role": "assistant", "content": "from groq"})}  # a small request fits
    small = {"model": "llama-flex", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=small, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert "breaker-open" not in answer.headers.get("x-gateway-route", ""), answer.headers.get("x-gateway-route")
    assert answer.json()["choices"][0]["message"]["content"] == "from groq"
    next(gateway_gen, None)
