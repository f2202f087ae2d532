"""`x-gateway-budget-remaining-usd` rides on every answer of a proxied route whose key (or an ancestor) has a budget:
the budget's own refusal (402 `budget_exceeded`) among them, where a client needs the figure most. It was left out on
every API, though the gateway had read the budget to refuse the request. Found by review (ifacerev36)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord
from tests.support.inprocess import serve

HI = [{"role": "user", "content": "hi"}]
MODELS = {
    "m": {"deployments": [{"provider": "openai", "model": "m"}], "price": {"input": 1, "output": 2}},
    "unpriced": {"deployments": [{"provider": "openai", "model": "u"}], "price": "unknown"},
}
ASKED: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": HI},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"messages": HI},
}


def never(request: httpx.Request) -> httpx.Response:  # (the budget refuses first)
    return httpx.Response(500, json={"error": {"message": "not expected"}})


@pytest.mark.parametrize("model", ["m", "unpriced"])
@pytest.mark.parametrize("path", list(ASKED))
async def test_a_budgets_refusal_tells_the_budget_left(path: str, model: str) -> None:
    served = await serve(never, MODELS)
    try:
        record = KeyRecord(id="", name="poor", secret_hash="", created_at=0, budget_usd=0.0001, budget_period="month")
        poor = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(record)
        if path == "/v1/messages":
            headers = {"x-api-key": poor.key, "anthropic-version": "2023-06-01"}
        else:
            headers = {"authorization": f"Bearer {poor.key}"}
        body = {
            "model": model,
            "max_output_tokens" if path == "/v1/responses" else "max_tokens": 100_000,
            **ASKED[path],
        }
        answer = await served.http.post(path, json=body, headers=headers)
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 402, answer.text
    assert float(answer.headers["x-gateway-budget-remaining-usd"]) == pytest.approx(0.0001), dict(answer.headers)
