"""A 429's short wait is waited out where nothing else can answer at once: a first version of the review's fix
skipped it wherever a next deployment's breaker was closed, though that deployment could not take the request
(`=unsupported`) and was sent nothing. Found by review (mergerev36c)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import FAKE_KEYS, SDK_HTTP, Running, serve_gateway
from tests.support.servers import ServerThread

PRICE = {"input": 1.0, "output": 2.0}
HI = [{"role": "user", "content": "Hi"}]
LIMITED = "fail-429;retry-after=1;x-note=mergerev36c"


@pytest.fixture(scope="module")
def gw(upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    server, fakes = upstream
    config = parse_config(
        {
            "providers": {
                "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"},
                "anthropic": {
                    "type": "anthropic",
                    "api_key": "env:ANTHROPIC_API_KEY",
                    "base_url": f"{server.url}/anthropic",
                },
            },
            "models": {
                "limited-then-claude": {
                    "deployments": [
                        {"provider": "openai", "model": LIMITED},
                        {"provider": "anthropic", "model": "claude-haiku-4-5"},
                    ],
                    "price": PRICE,
                },
            },
        },
        set(REGISTRY),
    )
    store = f"sqlite:///{tmp_path_factory.mktemp('r') / 'g.db'}"
    running, gateway_server = serve_gateway(config, store, server, fakes, dict(FAKE_KEYS))
    yield running
    gateway_server.stop()


def test_a_429s_short_wait_is_waited_where_the_next_deployment_cannot_take_the_request(gw: Running) -> None:
    """A 429 with `retry-after: 1`, and the next deployment (Claude) cannot take the request (a `seed` it would drop,
    under `x-gateway-strict`): nothing can be tried at once, so the wait is the only way to an answer and is waited
    out (`max_retries_per_deployment: 1`, the deadline far). Skipped, the request "failed over" to a deployment that
    was sent nothing, and the client got the 429 at once."""
    sdk = openai.OpenAI(api_key=gw.mint(), base_url=f"{gw.url}/v1", http_client=SDK_HTTP, max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(
            model="limited-then-claude",
            messages=HI,  # type: ignore[arg-type]
            seed=7,
            extra_headers={"x-gateway-strict": "true"},
        )
    route = limited.value.response.headers["x-gateway-route"]
    said = limited.value.response.text
    once = f"openai/{LIMITED}@global=429"
    assert route == f"{once}, {once}, anthropic/claude-haiku-4-5@global=unsupported", (route, said)
    assert "failed over to the next deployment rather than wait" not in said
