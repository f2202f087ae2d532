"""A budgeted request's output cap, per attempt: the reservation covers the largest cap over the plan (fallbacks
included), and each attempt is sent its own model's, which a provider refuses past its model's maximum."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import Running, gateway_config, serve_gateway
from tests.support.servers import ServerThread

pytestmark = pytest.mark.skipif("anthropic" not in REGISTRY, reason="the anthropic provider type is not registered")

PRICE = {"input": 1, "output": 2}


@pytest.fixture(scope="module")
def capped(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The shipped config's chain (gpt-4o-mini, 16,384 output tokens at most, falling back to claude-haiku-4-5 and
    its 64,000), and a chain whose first model fails over to one allowed more."""
    server, fakes = upstream
    data = gateway_config(server.url, set(fakes)).model_dump(mode="json", exclude_unset=True)
    openai, anthropic = {"provider": "openai"}, {"provider": "anthropic"}
    data["models"] = {
        "mini": {
            "deployments": [{**openai, "model": "gpt-4o-mini"}],
            "max_output_tokens": 16_384,
            "fallbacks": ["haiku"],
            "price": PRICE,
        },
        "haiku": {
            "deployments": [{**anthropic, "model": "claude-haiku-4-5"}],
            "max_output_tokens": 64_000,
            "price": PRICE,
        },
        "small-broken": {
            "deployments": [{**openai, "model": "fail-500"}],
            "max_output_tokens": 1_000,
            "fallbacks": ["larger"],
            "price": PRICE,
        },
        "larger": {"deployments": [{**openai, "model": "gpt-4o-mini"}], "max_output_tokens": 2_000, "price": PRICE},
    }
    store = Path(tmp_path_factory.mktemp("caps")) / "gateway.db"
    running, gateway_server = serve_gateway(parse_config(data, set(REGISTRY)), f"sqlite:///{store}", server, fakes)
    yield running
    gateway_server.stop()


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def ask(running: Running, key: str, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers(key), timeout=30)


def sent(running: Running, provider: str) -> list[dict[str, Any]]:
    return [r["json"] for r in running.fakes[provider].state.requests]


def test_each_attempt_is_capped_at_its_own_models_maximum(capped: Running) -> None:
    """Sent the chain's largest cap (64,000), gpt-4o-mini refused every budgeted request that set none, with a
    400 no fallback follows."""
    key = capped.mint(name="caps", budget_usd=10.0)
    answer = ask(capped, key, "mini")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-route"] == "openai/gpt-4o-mini@global=200"
    assert sent(capped, "openai")[-1]["max_completion_tokens"] == 16_384
    pinned = ask(capped, key, "mini", max_tokens=100_000)  # the client's own cap, past the model's: the model's
    assert pinned.status_code == 200 and sent(capped, "openai")[-1]["max_tokens"] == 16_384


def test_a_fallback_gets_the_clients_cap_back_where_its_model_allows_it(capped: Running) -> None:
    """The first attempt is lowered to its model's 1,000; the fallback, allowed 2,000, is sent the client's 1,500."""
    key = capped.mint(name="caps-fallback", budget_usd=10.0)
    answer = ask(capped, key, "small-broken", max_tokens=1_500)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-route"].endswith("openai/gpt-4o-mini@global=200")
    broken, served = [body for body in sent(capped, "openai") if body.get("max_tokens") in (1_000, 1_500)][-2:]
    assert (broken["model"], broken["max_tokens"]) == ("fail-500", 1_000)
    assert (served["model"], served["max_tokens"]) == ("gpt-4o-mini", 1_500)
