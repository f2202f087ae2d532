"""A request's small leaf objects (`stream_options`, an image's `image_url`, `input_audio`) are typed dicts
(`handler.schemas.OPEN_DICT`), and an `allowed_tools` choice a dict checked in Python (`checked_allowed_tools`), not
models: validated as strictly as the models around them, their unknown fields kept as the models keep theirs, and
serialized as sent."""

from typing import Any

import pytest
from pydantic import ValidationError

from handler.schemas import ChatRequest

IMAGE = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low", "future_field": 1}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
CHOICE = {
    "type": "allowed_tools",
    "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]},
}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": [IMAGE, AUDIO]}], **fields}


def test_a_leaf_keeps_what_the_client_sent_as_it_sent_it() -> None:
    sent = body(
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice=CHOICE,
    )
    req = ChatRequest.model_validate(sent)
    dumped = req.model_dump(exclude_none=True)
    assert dumped["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    assert dumped["messages"][0]["content"] == [IMAGE, AUDIO]
    assert dumped["tool_choice"] == CHOICE


@pytest.mark.parametrize(
    "fields",
    [
        {"stream_options": {"include_usage": "yes"}},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "max"}}]}
            ]
        },
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA"}}]}]},
        {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
        {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}}},
        {"tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "custom"}]}}},
        {"tool_choice": {"type": "allowed_tools"}},
        {"tool_choice": {"type": "function"}},
        {"tool_choice": {"type": "web_search"}},
        {
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {"mode": "sometimes", "tools": CHOICE["allowed_tools"]["tools"]},
            }
        },
    ],
)
def test_a_leaf_is_validated_as_strictly_as_the_models(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatRequest.model_validate(body(**fields))


def test_an_allowed_tools_choice_is_refused_for_its_own_problem() -> None:
    """Not for the union's other members' complaints (it was "tool_choice.type: Input should be 'function'"), and
    in words of its own (not pydantic's "Value error, ...")."""
    from handler.api.refused_bodies import invalid_from_validation

    sent = body(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "sometimes", "tools": []}})
    with pytest.raises(ValidationError) as raised:
        ChatRequest.model_validate(sent)
    error = invalid_from_validation(raised.value, sent)
    assert (error.param, error.message) == (
        "tool_choice",
        "tool_choice: allowed_tools.mode must be 'auto' or 'required'",
    )
