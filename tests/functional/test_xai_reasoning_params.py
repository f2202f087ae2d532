"""xAI's reasoning models refuse `stop` (docs.x.ai/docs/guides/reasoning: "presencePenalty, frequencyPenalty and
stop parameters are not supported by reasoning models. Adding them in the request would result in an error"). The
`xai` profile had no rule for `stop` (nor the penalties), so a Chat client's `stop` (a Messages client's
`stop_sequences`) went to grok-4 as written and the client got xAI's 400, where the gateway's promise is to leave
out and name what a provider cannot honour (`x-gateway-dropped-params`), as it does for DeepSeek's thinking mode (its
penalties and `logprobs`). (A Messages client's `thinking` is not sent as `reasoning_effort`, which grok-4 also
refuses: checked, sound.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Running
from tests.support.scripted import REQUESTS, SCRIPTS, profiled_gateway, whole


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from profiled_gateway(tmp_path_factory.mktemp("xai-params"), {"grok-4": {"type": "openai", "profile": "xai"}})


def sent(gateway: Running, path: str, body: dict[str, Any]) -> tuple[httpx.Response, dict[str, Any]]:
    key = gateway.mint(name="xai-params")
    SCRIPTS["grok-4"] = {"whole": whole({"role": "assistant", "content": "ok"})}
    REQUESTS.clear()
    answer = httpx.post(f"{gateway.url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer, REQUESTS[-1]["json"]


def test_a_chat_clients_stop_is_not_sent_to_a_grok_reasoning_model(gateway: Running) -> None:
    body = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "stop": ["END"]}
    answer, upstream = sent(gateway, "/v1/chat/completions", body)
    assert "stop" not in upstream, upstream
    assert "stop" in answer.headers.get("x-gateway-dropped-params", "")
