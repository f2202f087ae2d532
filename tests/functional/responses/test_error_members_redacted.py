"""A passed-through Responses stream's `error` event, and a failed response's `error`, were redacted in their
`message`, `code`, `param` and `type` only (`wire.redact_error`): any other member an upstream wrote in them (an
OpenRouter or LiteLLM error's `metadata.raw`, the upstream's raw body) reached the client, and the stored response,
with only the provider's key whole taken out. A Messages stream's error event is redacted whole; these now are too.
Found by review."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson

from handler.wire import ERROR_DEPTH, redact_error
from tests.support.inprocess import serve

KEY = "sk-proj-Zq8xK2mNv4Rt7Yw1Bc3DpQ9sLm5Hj6Gf"
MODELS = {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o"}], "price": {"input": 1, "output": 2}}}
NATIVE = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1", "responses_api": "native"}
ECHOES = {
    "without its prefix": KEY[3:],
    "as a bearer header": f"Authorization: Bearer {KEY[3:]}",
    "in base64": base64.b64encode(f"Bearer {KEY}".encode()).decode(),
}
CREATED = {
    "type": "response.created",
    "sequence_number": 0,
    "response": {"id": "resp_1", "object": "response", "status": "in_progress", "model": "gpt-4o", "output": []},
}


def leaked(text: str) -> dict[str, str]:
    return {how: echo for how, echo in ECHOES.items() if echo in text}


def sse(events: list[tuple[str, dict[str, Any]]]) -> httpx.Response:
    async def reads() -> Any:
        for name, event in events:
            yield f"event: {name}\n".encode() + b"data: " + orjson.dumps(event) + b"\n\n"

    return httpx.Response(200, content=reads(), headers={"content-type": "text/event-stream"})


def failing_stream(request: httpx.Request) -> httpx.Response:
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 1}
    return sse([("response.created", CREATED), ("error", {**error, "details": dict(ECHOES), "raw": [KEY[3:]]})])


async def test_a_passed_through_responses_error_event_relays_no_echoed_key_in_any_member() -> None:
    served = await serve(failing_stream, MODELS, environ={"OPENAI_API_KEY": KEY}, provider=NATIVE)
    try:
        answer = await served.post("/v1/responses", {"model": "m", "input": "Hi", "stream": True})
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200 and not leaked(answer.text)
    events = [orjson.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    error = next(event for event in events if event["type"] == "error")
    # (The rest of each member is kept: the client reads what the upstream said, less the key.)
    assert error["message"] == "boom" and error["sequence_number"] == 1 and "Authorization: Bearer" in str(error)
    assert "[REDACTED]" in error["details"]["without its prefix"] and error["raw"] == ["[REDACTED]"]


def failed_response(request: httpx.Request) -> httpx.Response:
    response = {
        **CREATED["response"],
        "status": "failed",
        "error": {"code": "server_error", "message": "boom", "metadata": dict(ECHOES)},
    }
    return httpx.Response(200, json=response)


async def test_a_passed_through_failed_response_relays_and_keeps_no_echoed_key_in_its_error() -> None:
    served = await serve(failed_response, MODELS, environ={"OPENAI_API_KEY": KEY}, provider=NATIVE)
    try:
        answer = await served.post("/v1/responses", {"model": "m", "input": "Hi", "store": True})
        stored = await served.get(f"/v1/responses/{answer.json()['id']}")
    finally:
        await served.gateway.aclose()
    assert answer.status_code == 200 and not leaked(answer.text)
    assert answer.json()["error"]["metadata"]["without its prefix"] == "[REDACTED]"
    assert stored.status_code == 200 and not leaked(stored.text), stored.text


def test_every_string_of_an_error_object_is_redacted_names_too_and_nothing_nests_without_end() -> None:
    nested: Any = KEY[3:]
    for _ in range(ERROR_DEPTH + 5):
        nested = [nested]
    error = {"message": KEY[3:], "error": {"code": "x", "deep": {KEY[3:]: [1, None, True, KEY[3:]]}}, "n": nested}
    redact_error(error)
    assert not leaked(orjson.dumps(error).decode())
    assert error["error"]["deep"] == {"[REDACTED]": [1, None, True, "[REDACTED]"]}
    depth, part = 0, error["n"]
    while isinstance(part, list):
        depth, part = depth + 1, part[0]
    assert part is None and depth == ERROR_DEPTH - 1


def test_an_error_nested_in_errors_past_the_depth_is_dropped_not_a_recursion_error() -> None:
    """An `error` in an `error` is redacted as the object is; a thousand deep (orjson reads 1,024) it went past
    Python's recursion limit. Past `ERROR_DEPTH` it is dropped. (Own read of the change.)"""
    error: dict[str, Any] = {"message": KEY[3:]}
    for _ in range(1_500):
        error = {"error": error, "raw": KEY[3:]}
    redact_error(error)
    depth, part = 0, error
    while isinstance(part.get("error"), dict):
        assert part["raw"] == "[REDACTED]"
        depth, part = depth + 1, part["error"]
    assert depth == ERROR_DEPTH - 1 and part["error"] is None
