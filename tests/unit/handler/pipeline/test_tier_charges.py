"""A service tier the gateway does not price refused before anything is reserved only where a deployment of the plan
would be sent it (`ProviderAdapter.takes_service_tier`): a translation that leaves it out cannot be billed by it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from handler.errors import InvalidRequestError
from handler.schemas import ChatRequest
from tests.unit.handler.pipeline.test_search_charges import EVERY_PROVIDER, exchange, planned


@pytest.mark.parametrize(
    ("provider", "model"), [({"type": "openai", "api_key": "sk-test"}, "gpt-4o"), *EVERY_PROVIDER[1:]]
)
def test_an_unpriced_tier_is_refused_where_the_deployment_is_sent_it(
    provider: dict[str, Any], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a deployment is sent `service_tier` is decided before its request is built, and agrees with the request
    built: `priority` (not priced: the gateway takes `flex` alone) is the 400 before anything is reserved where the
    request would carry it, and elsewhere is left out and named (it was refused everywhere)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
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
