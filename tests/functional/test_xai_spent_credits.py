"""xAI answers a team out of credit, or past its monthly spending limit, with a 429 (continuedev/continue#10373:
`429 "Your team ... has either used all available credits or reached its monthly spending limit. To continue making
API requests, please purchase more credits or raise your spending limit."`): the operator's account, as OpenAI's
`insufficient_quota` 429 is, which the gateway reads as the deployment refused (`EXHAUSTED_429_TYPES`: failed over,
counted on its breaker, the client a 502). xAI's body names no such code (`{"code": "Some resource has been
exhausted", "error": "..."}`), so the gateway read it as a rate limit: the client was told it was rate-limited and to
come back (429 `upstream_rate_limited`), and every request went on to the spent account, none counted on its breaker.
Found by review."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.functional.conftest import Running
from tests.support.scripted import SCRIPTS, profiled_gateway

SPENT = {
    "code": "Some resource has been exhausted",
    "error": "Your team 16f2151a-40f4-4a80-8ad0-cae00c27e8dd has either used all available credits or reached its "
    "monthly spending limit. To continue making API requests, please purchase more credits or raise your spending "
    "limit.",
}
QUOTA = {
    "error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from profiled_gateway(tmp_path_factory.mktemp("xai-spent"), {"grok-4": {"type": "openai", "profile": "xai"}})


@pytest.mark.parametrize("body", [QUOTA, SPENT], ids=["openai-shaped-control", "xai"])
def test_xais_spent_credits_are_the_deployments_refusal_not_a_rate_limit(gateway: Running, body: dict) -> None:
    key = gateway.mint(name="xai-spent")
    SCRIPTS["grok-4"] = {"status": 429, "whole": body}
    request = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=request, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["type"] != "rate_limit_error"
