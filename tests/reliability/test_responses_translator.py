"""Property tests of the Responses API front-end: any Responses body that validates becomes a request every
provider translator takes, or a clear `InvalidRequestError` (a 400), never another exception (a 500)."""

from __future__ import annotations

import string
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.providers.registry import REGISTRY
from handler.api.reasoning_seal import ReasoningSeal
from handler.api.responses_api import ResponsesRequest, to_chat_request
from handler.errors import InvalidRequestError
from tests.reliability.test_translators import SECRET, check_provider_request, make

SEAL = ReasoningSeal(b"test seal")
text = st.text(max_size=30)
name = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=16)
part = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, text),
    st.builds(lambda t: {"type": "output_text", "text": t}, text),
    st.just({"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"}),
    st.just({"type": "input_image", "file_id": "file_1"}),
    st.just({"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}),
    st.just({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
    st.dictionaries(name, text, max_size=2),
)
message = st.builds(
    lambda role, content, typed: {**({"type": "message"} if typed else {}), "role": role, "content": content},
    st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
    text | st.lists(part, max_size=3),
    st.booleans(),
)
call_id = st.sampled_from(["call_1", "call_2", ""])
item = st.one_of(
    message,
    st.builds(
        lambda c, n, a: {"type": "function_call", "call_id": c, "name": n, "arguments": a},
        call_id,
        name,
        st.sampled_from(['{"city": "Paris"}', "", "not json", "[1]"]),
    ),
    st.builds(lambda c, o: {"type": "function_call_output", "call_id": c, "output": o}, call_id, text),
    st.builds(
        lambda summary, sealed: {"type": "reasoning", "summary": summary, **sealed},
        st.lists(st.builds(lambda t: {"type": "summary_text", "text": t}, text), max_size=2),
        st.sampled_from([{}, {"encrypted_content": "gwr1.e30=.AAAA"}, {"encrypted_content": SEAL.seal({"text": "t"})}]),
    ),
    st.builds(lambda kind: {"type": kind, "id": "x"}, st.sampled_from(["item_reference", "web_search_call", "zzz"])),
)
tool = st.one_of(
    st.builds(
        lambda n, schema: {"type": "function", "name": n, "parameters": schema},
        name,
        st.sampled_from([{"type": "object", "properties": {"city": {"type": "string"}}}, {"type": "object"}, None]),
    ),
    st.sampled_from(
        [
            {"type": "web_search"},
            {"type": "namespace", "name": "ns", "tools": []},
            {
                "type": "namespace",
                "name": "ns.agents",
                "tools": [{"type": "function", "name": "f"}, {"type": "custom"}],
            },
            {"type": "custom"},
        ]
    ),
)
body = st.fixed_dictionaries(
    {"model": st.just("m"), "input": text | st.lists(item, max_size=6)},
    optional={
        "instructions": text,
        "tools": st.lists(tool, max_size=3),
        "tool_choice": st.sampled_from(
            ["auto", "none", "required", "bogus", {"type": "function", "name": "f"}, {"type": "allowed_tools"}]
        ),
        "text": st.sampled_from(
            [
                {"format": {"type": "text"}},
                {"format": {"type": "json_object"}},
                {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
                {"format": {"type": "json_schema", "name": "w"}},
                {"verbosity": "low"},
            ]
        ),
        "reasoning": st.sampled_from([{"effort": "low"}, {"summary": "auto"}]),
        "max_output_tokens": st.integers(1, 5000),
        "include": st.just(["reasoning.encrypted_content"]),
        "truncation": st.sampled_from(["auto", "disabled"]),
    },
)


@pytest.mark.parametrize("type_name", sorted(REGISTRY))
@given(data=body, stream=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_responses_body_translates_or_is_a_clear_400(type_name: str, data: dict[str, Any], stream: bool) -> None:
    try:
        request = ResponsesRequest.model_validate({**data, "stream": stream})
    except ValidationError:
        reject()
    adapter, target = make(type_name)
    try:
        chat, _ = to_chat_request(request, [], SEAL)
        built = adapter.chat_request(chat, target, stream=stream)
    except InvalidRequestError as exc:
        assert exc.status == 400 and exc.message
        return
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc} for {orjson.dumps(data).decode()}") from exc
    check_provider_request(type_name, built, target)
    assert SECRET not in built.request.url + built.request.body.decode()
