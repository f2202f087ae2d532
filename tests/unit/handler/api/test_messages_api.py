"""The Messages front-end's translation to the internal request: what survives, and what is named as dropped."""

from __future__ import annotations

from typing import Any

import pytest

from handler.api.messages_api import (
    MessagesCountRequest,
    MessagesRequest,
    beta_family,
    lost_betas,
    to_chat_request,
)
from handler.api.reasoning_seal import ReasoningSeal
from handler.errors import InvalidRequestError
from handler.schemas import TOOL_CONTEXT, ChatRequest

CACHED = {"type": "ephemeral"}


def translate(**fields: Any) -> tuple[ChatRequest, list[str]]:
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}
    return to_chat_request(MessagesRequest.model_validate(body))


def dumped(req: ChatRequest) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in req.messages]


def test_system_blocks_keep_their_cache_markers() -> None:
    req, dropped = translate(
        system=[{"type": "text", "text": "Rules.", "cache_control": CACHED}, {"type": "text", "text": "More."}]
    )
    assert dumped(req)[0] == {
        "role": "system",
        "content": [{"type": "text", "text": "Rules.", "cache_control": CACHED}, {"type": "text", "text": "More."}],
    }
    assert dropped == []


def test_system_role_messages_stay_where_they_are_until_cleared() -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "system", "content": "Environment: /tmp"},
        {"role": "system", "content": "Only for this turn.", "clear_at": "next_user_message"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "two"},
        {"role": "system", "content": "Still for this turn.", "clear_at": "next_user_message"},
    ]
    req, _ = translate(messages=messages)
    assert [(m.role, m.text()) for m in req.messages] == [
        ("user", "one"),
        ("system", "Environment: /tmp"),
        ("assistant", "ok"),
        ("user", "two"),
        ("system", "Still for this turn."),
    ]


def test_thinking_and_output_config_are_carried() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req, dropped = translate(
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}, "task_budget": 5},
        context_management={"edits": []},
    )
    assert req.thinking is not None and req.thinking.type == "adaptive" and req.thinking.effort == "high"
    assert req.response_format is not None and req.response_format.json_schema is not None
    assert req.response_format.json_schema.schema_ == schema
    assert dropped == ["context_management", "output_config.task_budget"]


def test_an_effort_alone_is_an_adaptive_wish() -> None:
    req, _ = translate(output_config={"effort": "low"})
    assert req.thinking is not None and (req.thinking.type, req.thinking.effort) == ("adaptive", "low")


def test_documents_images_and_unknown_blocks() -> None:
    content = [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
            "title": "a.pdf",
        },
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "plain words"}},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
            "cache_control": CACHED,
        },
        {"type": "search_result", "source": "x", "title": "t", "content": []},
    ]
    req, dropped = translate(messages=[{"role": "user", "content": content}])
    parts = dumped(req)[0]["content"]
    file = {"file_data": "data:application/pdf;base64,JVBE", "filename": "a.pdf"}
    assert parts[0] == {"type": "file", "file": file, "document": {"title": "a.pdf"}}
    assert parts[1] == {"type": "text", "text": "plain words"}
    assert parts[2] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBO"},
        "cache_control": CACHED,
    }
    assert dropped == ["messages.document.url", "messages.search_result"]


def test_a_documents_title_context_and_citations_stay_on_its_part_for_the_adapter() -> None:
    # They were lost here, on every deployment but Anthropic's, without a word even under x-gateway-strict.
    source = {"type": "text", "media_type": "text/plain", "data": "The sky is green."}
    cited = {
        "type": "document",
        "source": source,
        "title": "Facts",
        "context": "a test",
        "citations": {"enabled": True},
    }
    req, dropped = translate(messages=[{"role": "user", "content": [cited, {"type": "text", "text": "Colour?"}]}])
    document = {"title": "Facts", "context": "a test", "citations": {"enabled": True}}
    assert dumped(req)[0]["content"][0] == {"type": "text", "text": "The sky is green.", "document": document}
    assert dropped == []  # (named, or carried, by the adapter of the deployment that serves it)


def test_thinking_blocks_keep_their_signatures_and_tools_their_absent_descriptions() -> None:
    thinking = {"type": "thinking", "thinking": "Plan.", "signature": "sig"}
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [thinking, {"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "done", "cache_control": CACHED}],
        },
    ]
    tools = [
        {"name": "Bash", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ]
    req, dropped = translate(messages=messages, tools=tools)
    assistant = req.messages[1]
    assert (assistant.model_extra or {})["thinking_blocks"] == [thinking] and assistant.reasoning_content == "Plan."
    assert dumped(req)[2] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": [{"type": "text", "text": "done", "cache_control": CACHED}],
    }
    assert req.tools is not None and len(req.tools) == 1
    assert "description" not in req.tools[0].function.model_dump(exclude_unset=True)
    assert dropped == ["tools.web_search_20250305"]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": "do"}, {"type": "text", "text": "ne", "cache_control": CACHED}],
        [
            {"type": "text", "text": "do", "cache_control": CACHED},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        ],
    ],
    ids=["text", "with-an-image"],
)
def test_a_marker_inside_a_tool_result_marks_the_tool_messages_last_part(content: list[dict[str, Any]]) -> None:
    """Anthropic takes a cache marker on a tool result's content blocks as on the result: it is kept (it was lost
    with the result's text), on the tool message's last part, where Bedrock follows the result with a cache
    point."""
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": content}]},
    ]
    req, dropped = translate(messages=messages, tools=[{"name": "Bash", "input_schema": {"type": "object"}}])
    parts = dumped(req)[2]["content"]
    assert parts[-1]["cache_control"] == CACHED and dropped == []
    assert [part for part in parts if "cache_control" in part] == parts[-1:]


def test_count_requests_need_no_max_tokens() -> None:
    req, _ = to_chat_request(
        MessagesCountRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    )
    assert req.max_tokens is None


def test_a_named_tool_choice_needs_its_name() -> None:
    with pytest.raises(InvalidRequestError):
        translate(tools=[{"name": "a", "input_schema": {"type": "object"}}], tool_choice={"type": "tool"})


def test_tool_features_without_an_equivalent_are_named() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}, "strict": True, "defer_loading": True}]
    req, dropped = translate(tools=tools)
    assert req.tools is not None and req.tools[0].function.strict is True
    assert dropped == ["tools.defer_loading"]


def test_an_mcp_toolset_has_no_name_and_is_named_as_dropped_but_a_custom_tool_needs_one() -> None:
    _, dropped = translate(tools=[{"type": "mcp_toolset", "mcp_server_name": "docs"}])
    assert dropped == ["tools.mcp_toolset"]
    for nameless in ({"input_schema": {"type": "object"}}, {"type": "custom", "input_schema": {"type": "object"}}):
        with pytest.raises(InvalidRequestError, match="tools.0.name"):
            translate(tools=[nameless])


@pytest.mark.parametrize(
    ("user_id", "user"),
    [
        ('{"device_id":"d1","account_uuid":"a1","session_id":"s1"}', "a1"),
        ('{"device_id":"d1","account_uuid":"","session_id":"s1"}', "d1"),
        ("alice", "alice"),
        ("{not json", "{not json"),
        ('["d1"]', '["d1"]'),
        ('{"session_id":"s1"}', '{"session_id":"s1"}'),
    ],
)
def test_the_end_user_is_claude_codes_account_or_device_and_any_other_user_id_as_written(
    user_id: str, user: str
) -> None:
    req, _ = translate(metadata={"user_id": user_id})
    assert req.user == user


def lost(header: str, **fields: Any) -> tuple[str, ...]:
    """The betas of `header` a translation of the request with `fields` loses."""
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}
    _, untranslated = to_chat_request(MessagesRequest.model_validate(body))
    return lost_betas(header, body, untranslated)


@pytest.mark.parametrize(
    ("beta", "family"),
    [
        ("context-1m-2025-08-07", "context-1m"),
        ("claude-code-20250219", "claude-code"),
        ("output-128k-2025-02-19", "output-128k"),
        ("max-tokens-3-5-sonnet-2024-07-15", "max-tokens-3-5-sonnet"),
        ("no-date", "no-date"),
    ],
)
def test_a_betas_family_is_its_name_less_its_date(beta: str, family: str) -> None:
    assert beta_family(beta) == family


def test_a_beta_is_named_when_the_request_uses_what_it_turns_on() -> None:
    """The rule `lost_betas` writes down: a beta's feature that the request uses and the translation leaves out is
    named; one the request does not use, or whose meaning the translation keeps, is not; an unknown one is."""
    assert lost("context-management-2025-06-27") == ()
    managed: Any = {"edits": [{"type": "clear_thinking_20251015"}]}
    assert lost("context-management-2025-06-27", context_management=managed) == (
        "anthropic-beta[context-management-2025-06-27]",
    )
    tool = {"name": "t", "input_schema": {"type": "object"}}
    assert lost("advanced-tool-use-2025-11-20", tools=[tool]) == ()
    assert lost("advanced-tool-use-2025-11-20", tools=[{**tool, "defer_loading": True}]) == (
        "anthropic-beta[advanced-tool-use-2025-11-20]",
    )
    assert lost("code-execution-2025-08-25") == ()
    assert lost("code-execution-2025-08-25", tools=[{"type": "code_execution_20250825", "name": "code_execution"}])
    upload = {"type": "document", "source": {"type": "file", "file_id": "file_1"}}
    asked = {"role": "user", "content": [{"type": "text", "text": "Summarise it."}, upload]}
    assert lost("files-api-2025-04-14", messages=[asked]) == ("anthropic-beta[files-api-2025-04-14]",)
    assert lost("dev-full-thinking-2025-05-14") == ()
    assert lost("dev-full-thinking-2025-05-14", thinking={"type": "enabled", "budget_tokens": 2048})
    assert lost("context-1m-2025-08-07") == ("anthropic-beta[context-1m-2025-08-07]",)
    kept = (
        "claude-code-20250219, interleaved-thinking-2025-05-14,effort-2025-11-24,fine-grained-tool-streaming-2025-05-14"
    )
    assert lost(kept, thinking={"type": "adaptive"}, output_config={"effort": "high"}) == ()
    assert lost("prompt-caching-scope-2026-01-05") == ()  # (Claude Code 2.1's: caching, the provider's)
    assert lost("some-new-feature-2027-01-01,some-new-feature-2027-01-01, ") == (
        "anthropic-beta[some-new-feature-2027-01-01]",
    )


def test_a_final_assistant_turn_with_text_is_a_prefill() -> None:
    """Claude's answer continues a final assistant turn: the internal request says so (`prefill`), for each adapter
    to send it as its provider continues one, or name it. One that called a tool asks for the tool's result, not a
    continuation; a conversation ending with the user's turn has none."""
    hi = {"role": "user", "content": "hi"}
    marked = [{"type": "text", "text": "Here", "cache_control": CACHED}, {"type": "text", "text": " it is: {"}]
    prefilled, dropped = translate(messages=[hi, {"role": "assistant", "content": marked}])
    assert prefilled.prefill == "Here it is: {" and dropped == []
    assert dumped(prefilled)[-1]["role"] == "assistant"
    call = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    for last in ({"role": "assistant", "content": [{"type": "text", "text": "Let me look."}, call]}, hi):
        assert translate(messages=[hi, last])[0].prefill is None
    assert translate(messages=[hi, {"role": "assistant", "content": ""}])[0].prefill is None


SEAL = ReasoningSeal(b"unit")
SEARCH_PARTS: Any = [{"toolCall": {"id": "s1", "args": {"queries": ["q"]}}, "thoughtSignature": "c2ln"}]


def searched_turn(*encrypted: Any, text: str = "Found.") -> list[dict[str, Any]]:
    """A conversation whose assistant turn holds a search's blocks, its results' `encrypted_content` `encrypted`."""
    results = [{"type": "web_search_result", "url": "", "title": "", "encrypted_content": e} for e in encrypted]
    use = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}}
    found = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": results}
    turn = [use, found, *([{"type": "text", "text": text}] if text else [])]
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": turn}, {"role": "user", "content": "?"}]


@pytest.mark.parametrize("text", ["Found.", ""])
def test_a_search_results_seal_brings_gemini_3s_parts_back_to_its_turn(text: str) -> None:
    """Gemini 3's own parts of a search, sealed in a search result (`messages_out.search_blocks`), are opened onto
    the assistant turn they came with (`reasoning_tool_context`, which the Gemini adapter sends to Gemini 3 alone);
    a search its turn has no text for is then not named, as a Responses turn that brings the parts back is not.
    Anthropic's own `encrypted_content` and an empty one are no seal. The seal was not read."""
    sealed = SEAL.seal({"fields": {TOOL_CONTEXT: SEARCH_PARTS}})
    body = {"model": "m", "max_tokens": 9, "messages": searched_turn("", sealed, "EqgfCioIARgB", text=text)}
    req, dropped = to_chat_request(MessagesRequest.model_validate(body), SEAL)
    assert req.messages[1].reasoning_tool_context == SEARCH_PARTS and dropped == []
    unopened, named = to_chat_request(MessagesRequest.model_validate(body))  # (no seal given: nothing opened)
    alone = [] if text else ["messages.server_tool_use", "messages.web_search_tool_result"]
    assert unopened.messages[1].reasoning_tool_context is None and named == alone


@pytest.mark.parametrize("text", ["Found.", ""])
@pytest.mark.parametrize("sealed", ["gwr2.not-a-seal", "gwr2.", "gwr1.e30=.AAAA", ReasoningSeal(b"other").seal({})])
def test_a_search_results_seal_that_does_not_open_is_named_never_a_500(sealed: str, text: str) -> None:
    """A seal altered, made up or another gateway's is left out and named, as a Responses reasoning item's is, and so
    is then a search whose turn has no text; a result's `encrypted_content` of another type is no seal."""
    body = {"model": "m", "max_tokens": 9, "messages": searched_turn(sealed, 5, None, text=text)}
    req, dropped = to_chat_request(MessagesRequest.model_validate(body), SEAL)
    assert req.messages[1].reasoning_tool_context is None
    alone = [] if text else ["messages.server_tool_use", "messages.web_search_tool_result"]
    assert dropped == ["messages.web_search_tool_result.encrypted_content", *alone]
