"""The output cap, per attempt: a budgeted request's reservation covers the largest cap over the plan (fallbacks
included), and each attempt is sent its own model's, which a provider refuses past its model's maximum. Any
request's own cap past its model's maximum is lowered to it: the configured one, or the one the provider named."""

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
        # No `max_output_tokens`: the ceiling is what the provider names when it refuses a larger cap.
        "bare-gpt": {"deployments": [{**openai, "model": "gpt-4o"}], "price": PRICE},
        "bare-deepseek": {"deployments": [{**openai, "model": "deepseek-chat"}], "price": PRICE},
        "bare-claude": {"deployments": [{**anthropic, "model": "claude-3-5-haiku-latest"}], "price": PRICE},
        "bare-haiku": {"deployments": [{**anthropic, "model": "claude-haiku-4-5"}], "price": PRICE},
        # Configured past what the provider allows (gpt-4o-mini writes 16,384 at most).
        "over-mini": {"deployments": [{**openai, "model": "gpt-4o-mini"}], "max_output_tokens": 32_000, "price": PRICE},
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


def test_a_clients_cap_past_the_models_maximum_is_lowered_to_it(capped: Running) -> None:
    """Claude Code asks 32,000 output tokens of every model; gpt-4o-mini refused it (16,384 at most) with a 400,
    so Claude Code could not run on it through the gateway. A key without a budget: the cap is the client's."""
    key = capped.mint(name="caps-unbudgeted")
    before = len(sent(capped, "openai"))
    answer = ask(capped, key, "mini", max_tokens=32_000)
    assert answer.status_code == 200, answer.text
    assert [body["max_tokens"] for body in sent(capped, "openai")[before:]] == [16_384]
    within = ask(capped, key, "mini", max_completion_tokens=500)
    assert within.status_code == 200 and sent(capped, "openai")[-1]["max_completion_tokens"] == 500
    uncapped = ask(capped, key, "mini")  # none asked, none budgeted: none sent (the provider's default)
    assert uncapped.status_code == 200
    assert "max_tokens" not in sent(capped, "openai")[-1] and "max_completion_tokens" not in sent(capped, "openai")[-1]


@pytest.mark.parametrize(
    ("model", "provider", "field", "ceiling"),
    [
        ("bare-gpt", "openai", "max_tokens", 16_384),
        ("bare-deepseek", "openai", "max_tokens", 8_192),
        ("bare-claude", "anthropic", "max_tokens", 8_192),
    ],
)
def test_the_ceiling_a_provider_names_is_learned_and_kept(
    capped: Running, model: str, provider: str, field: str, ceiling: int
) -> None:
    """A model configured without `max_output_tokens`: the provider's refusal names its ceiling (in OpenAI's,
    DeepSeek's or Anthropic's words), the request is sent again within it, and later ones are sent within it
    from the start."""
    key = capped.mint(name=f"caps-{model}")
    before = len(sent(capped, provider))
    answer = ask(capped, key, model, max_tokens=100_000)
    assert answer.status_code == 200, answer.text
    assert [body[field] for body in sent(capped, provider)[before:]] == [100_000, ceiling]
    label = answer.headers["x-gateway-route"].split("=")[0]
    assert answer.headers["x-gateway-route"] == f"{label}=400, {label}=200"
    again = ask(capped, key, model, max_tokens=50_000)
    assert again.status_code == 200 and again.headers["x-gateway-route"] == f"{label}=200"
    assert sent(capped, provider)[-1][field] == ceiling


def test_a_messages_request_passed_through_is_kept_within_the_ceiling_too(capped: Running) -> None:
    """Claude Code's own API to Anthropic: the body passes through as sent but for `model` and the cap, which is
    lowered to the ceiling Anthropic named (64,000 for claude-haiku-4-5), then to the configured one."""
    key = capped.mint(name="caps-native")
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    body = {"model": "bare-haiku", "max_tokens": 100_000, "messages": [{"role": "user", "content": "hi"}]}
    before = len(sent(capped, "anthropic"))
    first = httpx.post(f"{capped.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    label = "anthropic/claude-haiku-4-5@global"
    assert first.headers["x-gateway-route"] == f"{label}=400, {label}=200"
    again = httpx.post(f"{capped.url}/v1/messages", json=body, headers=headers, timeout=30)
    assert again.status_code == 200 and again.headers["x-gateway-route"] == f"{label}=200"
    configured = httpx.post(f"{capped.url}/v1/messages", json={**body, "model": "haiku"}, headers=headers, timeout=30)
    assert configured.status_code == 200
    assert [b["max_tokens"] for b in sent(capped, "anthropic")[before:]] == [100_000, 64_000, 64_000, 64_000]


def test_a_ceiling_configured_past_the_providers_is_lowered_to_the_one_it_names(capped: Running) -> None:
    """The configured ceiling won over the learned one: the request was sent again unchanged, refused again, and
    so on (4,415 upstream requests in 3 s for one client request, found by review)."""
    key = capped.mint(name="caps-over")
    before = len(sent(capped, "openai"))
    first = ask(capped, key, "over-mini", max_tokens=20_000)
    assert first.status_code == 200, first.text
    label = "openai/gpt-4o-mini@global"
    assert first.headers["x-gateway-route"] == f"{label}=400, {label}=200"
    again = ask(capped, key, "over-mini", max_tokens=20_000)
    assert again.status_code == 200 and again.headers["x-gateway-route"] == f"{label}=200"
    assert [body["max_tokens"] for body in sent(capped, "openai")[before:]] == [20_000, 16_384, 16_384]
