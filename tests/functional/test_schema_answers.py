"""An enforced schema's check of the answers it is given: every choice of one, however it nests, and what the
request is charged when the check refuses an answer the provider has billed. In-process (`tests.support.inprocess`).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from handler.pipeline import schema_check
from tests.functional.test_loop_holds import ENFORCED, MODELS, enforced
from tests.support.inprocess import serve
from tests.unit.handler.pipeline.test_schema_check import TREE, tree

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
BILLED = 10 * 1e-6 + 5 * 2e-6  # (10 tokens in, 5 out, at $1 and $2 a million: $0.00002)


def saying(*contents: str) -> Any:
    """The provider answering one choice of each of `contents` (10 tokens in, 5 out)."""

    def answer(request: httpx.Request) -> httpx.Response:
        choices = [
            {"index": index, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            for index, content in enumerate(contents)
        ]
        body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": choices}
        return httpx.Response(200, json=body | {"usage": USAGE})

    return answer


def streaming(*contents: str) -> Any:
    """The provider streaming one choice of each of `contents`, a delta each, then its usage."""
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    events = [
        {**chunk, "choices": [{"index": index, "delta": {"role": "assistant", "content": content}}]}
        for index, content in enumerate(contents)
    ]
    events += [{**chunk, "choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]} for index in range(2)]
    events.append({**chunk, "choices": [], "usage": USAGE})
    sse = b"".join(b"data: " + orjson.dumps(event) + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    return lambda request: httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})


async def test_every_choice_of_an_enforced_answer_is_checked() -> None:
    """With `n: 2` only the first choice was checked: a second that was not JSON at all was relayed in a 200 under
    `x-gateway-enforce-schema: true` (review). Each choice is checked, and the one that breaks the schema named."""
    schema = {"type": "object", "required": ["a"]}
    served = await serve(saying('{"a": 1}', "not JSON at all"), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    answer = await served.http.post("/v1/chat/completions", json=enforced(schema) | {"n": 2}, headers=headers)
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "schema_violation", answer.text
    assert "schema: choice 1: the answer is not JSON" in answer.json()["error"]["message"]
    await served.gateway.aclose()
    served = await serve(saying('{"a": 1}', '{"a": 2}'), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    fitting = await served.http.post("/v1/chat/completions", json=enforced(schema) | {"n": 2}, headers=headers)
    assert fitting.status_code == 200 and len(fitting.json()["choices"]) == 2, fitting.text
    await served.gateway.aclose()


async def test_every_choice_of_an_enforced_stream_is_checked_at_its_end() -> None:
    """A stream's text was kept for its first choice (`index == 0`) alone: the second's went unchecked."""
    schema = {"type": "object", "required": ["a"]}
    served = await serve(streaming('{"a": 1}', '{"b": 2}'), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    body = enforced(schema) | {"n": 2, "stream": True}
    answer = await served.http.post("/v1/chat/completions", json=body, headers=headers)
    await served.gateway.aclose()
    last = orjson.loads(answer.content.split(b"data: ")[-2])
    assert last["schema_violation"]["message"] == "choice 1: (root): 'a' is a required property"


async def test_an_answer_too_deep_to_check_is_a_schema_violation_charged_what_the_provider_billed() -> None:
    """A valid answer 200 nodes deep to a recursive tree schema took jsonschema past Python's limit: a 400 blaming
    the schema, no failover, and, the check raising other than a violation, the attempt was left in flight and
    charged the reserved worst case (4,000 output tokens, $0.0081) for an answer billed 5 tokens (review). An answer
    past `MAX_ANSWER_DEPTH` is a violation, which the next deployment may avoid; each answer is charged as billed."""
    served = await serve(saying(tree(200)), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    body = enforced(TREE) | {"max_tokens": 4000}
    answer = await served.http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "schema_violation", answer.text
    assert "nests deeper than 64 levels" in answer.json()["error"]["message"]
    [line] = await served.ledger()
    assert (line.status, line.output_tokens, line.cost_usd) == (502, 5, pytest.approx(BILLED))
    assert line.route == "openai/gpt-4o-mini@global=schema_violation"
    await served.gateway.aclose()
    served = await serve(saying(tree(31)), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    within = await served.http.post("/v1/chat/completions", json=body, headers=headers)
    assert within.status_code == 200, within.text
    await served.gateway.aclose()


async def test_an_answer_whose_check_fails_is_charged_what_the_provider_billed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the check of a paid answer raises other than a violation (here, a schema that cannot check it,
    standing for whatever admission lets through) left the attempt in flight: its 400 was charged the reserved worst
    case (4,000 output tokens, $0.0081), not the 5 tokens billed (review). The answer's usage is charged."""
    from handler.pipeline.schema_patterns import Validator

    schema = {"$ref": "#/x", "x": {"items": [{"type": "integer"}]}}  # (checked without the registry: a crash)
    monkeypatch.setitem(schema_check._built, orjson.dumps(schema, option=orjson.OPT_SORT_KEYS), Validator(schema))
    served = await serve(saying('["x"]'), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    body = enforced(schema) | {"max_tokens": 4000}
    answer = await served.http.post("/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 400 and "cannot check an answer" in answer.text, answer.text
    [line] = await served.ledger()
    assert (line.status, line.output_tokens, line.cost_usd) == (400, 5, pytest.approx(BILLED))
    assert line.route == "openai/gpt-4o-mini@global=invalid_request"
    await served.gateway.aclose()


async def test_a_price_that_is_a_multiple_of_a_cent_fits_multiple_of_0_01() -> None:
    """`{"price": 19.99}` against `multipleOf: 0.01` was a 502 `schema_violation` after every deployment was tried
    and billed: jsonschema divided the floats (review)."""
    served = await serve(saying('{"price": 19.99}'), MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    schema = {"type": "object", "properties": {"price": {"type": "number", "multipleOf": 0.01}}}
    answer = await served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
    await served.gateway.aclose()
    assert answer.status_code == 200, answer.text
