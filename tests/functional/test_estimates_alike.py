"""The same answer is estimated alike on every path where its provider gives no usage: a tool call's name and arguments
are counted whole (`pipeline.answer_chars`), and were its arguments alone streamed (`ChunkStream._count`): the same
`get_weather({"city":"Oslo"})` was 9 output tokens whole and 5 streamed. Found by review (mergerev35b)."""

from __future__ import annotations

import httpx
import orjson

from tests.support.inprocess import serve

HEAD = {"id": "c", "created": 1, "model": "m-1"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}


def upstream(request: httpx.Request) -> httpx.Response:
    if orjson.loads(request.content).get("stream"):
        delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **CALL}]}
        first = {
            **HEAD,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        end = {
            **HEAD,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
        }
        body = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in (first, end)) + b"data: [DONE]\n\n"
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    message = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    return httpx.Response(
        200,
        json={
            **HEAD,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        },
    )


async def test_a_tool_call_is_estimated_alike_whole_and_streamed() -> None:
    models = {"m": {"deployments": [{"provider": "openai", "model": "m-1"}], "price": {"input": 1, "output": 10}}}
    provider = {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://compatible.example/v1"}
    served = await serve(upstream, models, provider=provider)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    try:
        for stream in (False, True):
            answer = await served.http.post(
                "/v1/chat/completions",
                json={"model": "m", "stream": stream, "tools": tools, "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {served.key.key}"},
            )
            assert answer.status_code == 200, answer.text
        whole, streamed = await served.ledger()
    finally:
        await served.gateway.aclose()
    assert whole.cost_source == streamed.cost_source == "estimate"
    assert streamed.output_tokens == whole.output_tokens, (whole.output_tokens, streamed.output_tokens)
