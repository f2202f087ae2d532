"""A service tier the gateway does not price refused before anything is reserved only where a deployment of the plan
would be sent it (`ProviderAdapter.takes_service_tier`): a translation that leaves it out cannot be billed by it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from handler.errors import InvalidRequestError
from handler.schemas import ChatRequest
from tests.unit.handler.pipeline.test_search_charges import EVERY_PROVIDER, example_aws_keys, exchange, planned  # noqa: F401


@pytest.mark.parametrize(
    ("provider", "model"), [({"type": "openai", "api_key": "sk-test"}, "gpt-4o"), *EVERY_PROVIDER[1:]]
)
@pytest.mark.usefixtures("example_aws_keys")
def test_an_unpriced_tier_is_refused_where_the_deployment_is_sent_it(provider: dict[str, Any], model: str) -> None:
    """Whether a deployment is sent `service_tier` is decided before its request is built, and agrees with the request
    built: `priority` (not priced: the gateway takes `flex` alone) is the 400 before anything is reserved where the
    request would carry it, and elsewhere is left out and named (it was refused everywhere)."""
    data = {
        "providers": {"p": provider},
        "models": {"m": {"deployments": [{"provider": "p", "model": model}], "price": {"input": 1.0, "output": 2.0}}},
    }
    pipeline, [attempt] = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "service_tier": "priority"}
    )
    built = attempt.adapter.chat_request(req, attempt.target, stream=False)
    sent = "service_tier" in orjson.loads(built.request.body)
    assert attempt.adapter.takes_service_tier(attempt.target) is sent
    assert ("service_tier" in built.dropped) is not sent
    ex = exchange()
    if sent:
        with pytest.raises(InvalidRequestError, match="service_tier 'priority' is not priced for model 'm'"):
            pipeline._price_options(ex, req, [attempt])
    else:
        pipeline._price_options(ex, req, [attempt])
        pipeline._tier_priced(ex, attempt, built.dropped)  # (as `_failover` checks each attempt it builds)
        assert ex.service_tier == "priority"


def test_an_attempt_cut_unanswered_is_priced_at_the_tier_it_was_sent() -> None:
    """OpenAI is sent `priority` (priced ×2) and cut in flight, billable (`Exchange.missed`); a Claude fallback, whose
    request leaves the tier out, answers. The missed attempt is charged its worst case at the tier its own request
    carried: read from the serving attempt's dropped list, it was priced at 1.0/2.0 a million, half what OpenAI
    bills."""
    data = {
        "providers": {"o": {"type": "openai", "api_key": "sk-test"}, "a": {"type": "anthropic", "api_key": "k"}},
        "models": {
            "m": {
                "deployments": [{"provider": "o", "model": "gpt-4o"}, {"provider": "a", "model": "claude-sonnet-4-5"}],
                "price": {"input": 1.0, "output": 2.0, "options": {"service_tier": {"priority": 2.0}}},
            }
        },
    }
    pipeline, [openai, claude] = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "service_tier": "priority"}
    )
    ex = exchange()
    pipeline._price_options(ex, req, [openai, claude])
    for attempt in (openai, claude):  # (as each attempt's request is built, `Pipeline._failover`)
        ex.dropped_at[id(attempt)] = attempt.adapter.chat_request(req, attempt.target, stream=False).dropped
    assert "service_tier" not in ex.dropped_at[id(openai)] and "service_tier" in ex.dropped_at[id(claude)]
    ex.missed.append(openai)
    ex.dropped = ex.dropped_at[id(claude)]  # (the answer's: Claude served)
    price = pipeline._price(ex, openai, pipeline._unanswered_tier(ex, openai))  # (as `_waste` prices the missed one)
    assert price is not None and (price.input, price.output) == (2.0, 4.0)
