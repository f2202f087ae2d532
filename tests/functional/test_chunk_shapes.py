"""Chat Completions chunks as OpenAI documents them, read off the wire (an SDK cannot tell null from absent)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.functional.conftest import Running


def stream_events(running: Running, key: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    ask = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": True, **body}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=ask, headers=headers) as answer:
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_with_include_usage_every_chunk_but_the_last_has_usage_null(running: Running, key: str) -> None:
    *chunks, last = stream_events(running, key, {"stream_options": {"include_usage": True}})
    assert len(chunks) > 1 and all("usage" in chunk and chunk["usage"] is None for chunk in chunks)
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 7


def test_without_include_usage_no_chunk_has_usage(running: Running, key: str) -> None:
    events = stream_events(running, key, {})
    assert len(events) > 1 and not any("usage" in event for event in events)
