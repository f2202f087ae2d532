"""The gateway redacts the operator's own accounts from a provider's error before a client reads it
(handler/redaction.py, `ACCOUNT_IDS`: "OpenAI's organisation and project (its 429 'Rate limit reached for gpt-4o in
organization org-...') ... No credential, but the operator's, which no client of the gateway has any business
reading"). Groq and xAI name the operator's account in their errors as well, in shapes the pattern (`org-`/`proj_`
ids, twelve-digit AWS accounts) does not take:

- Groq's rate limits name its organization as `org_` and a ULID (continuedev/continue#10920: "429 Rate limit reached
  for model `llama-3.3-70b-versatile` in organization `org_01kjh7p9n8f1qs6nz2bz77vy6b` service tier `on_demand` ...");
- xAI's spent credits name its team by UUID (continuedev/continue#10373: `429 "Your team
  16f2151a-40f4-4a80-8ad0-cae00c27e8dd has either used all available credits or reached its monthly spending
  limit..."`; warpdotdev/warp#14868, the same as a 403), in xAI's error shape `{"code": ..., "error": "..."}`.

Both reached every client the error was relayed to. Found by review."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Running
from tests.support.scripted import SCRIPTS, profiled_gateway

GROQ_ORG = "org_01kjh7p9n8f1qs6nz2bz77vy6b"
GROQ_LIMITED = {
    "error": {
        "message": f"Rate limit reached for model `llama-3.3-70b-versatile` in organization `{GROQ_ORG}` service tier "
        "`on_demand` on tokens per day (TPD): Limit 100000, Used 97050, Requested 3619. Please try again in "
        "9m38.016s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}
XAI_TEAM = "16f2151a-40f4-4a80-8ad0-cae00c27e8dd"
XAI_SPENT = {
    "code": "Some resource has been exhausted",
    "error": f"Your team {XAI_TEAM} has either used all available credits or reached its monthly spending limit. To "
    "continue making API requests, please purchase more credits or raise your spending limit.",
}
CASES: dict[str, tuple[int, dict[str, Any], str, str]] = {
    "groq": (429, GROQ_LIMITED, GROQ_ORG, "Rate limit reached"),
    "xai": (429, XAI_SPENT, XAI_TEAM, "used all available credits"),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from profiled_gateway(
        tmp_path_factory.mktemp("accounts"),
        {"groq": {"type": "openai", "profile": "groq"}, "xai": {"type": "openai", "profile": "xai"}},
    )


@pytest.mark.parametrize("model", sorted(CASES))
def test_the_operators_account_at_the_provider_is_not_quoted_to_a_client(gateway: Running, model: str) -> None:
    status, body, account, reason = CASES[model]
    key = gateway.mint(name=f"accounts-{model}")
    SCRIPTS[model] = {"status": status, "whole": body}
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(
        f"{gateway.url}/v1/chat/completions", json=request, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code >= 400, answer.text
    assert reason in answer.text  # (the reason stays)
    assert account not in answer.text, answer.text
