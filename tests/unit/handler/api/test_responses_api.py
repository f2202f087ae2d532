"""The Responses front-end's translation of input items into the internal request, and of the answer into a
response (whole, or as a stream ends it)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import typing
from typing import Any

import orjson
import pytest
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent, response_input_item_param

from adapters.providers.gemini import GeminiAdapter
from adapters.providers.openai import OpenAIAdapter
from handler import schemas
from handler.api.reasoning_seal import ReasoningSeal
from handler.api.responses_api import (
    ITEM_TYPES,
    Namespaces,
    ResponseIds,
    ResponsesRequest,
    finish,
    plain_response,
    search_tools,
    to_chat_request,
    to_response,
    translated_search,
)
from handler.api.responses_items import item_ids
from handler.api.responses_stream import ResponsesEventWriter
from handler.errors import InvalidRequestError
from handler.pipeline.pricing import Cost
from handler.ports import Target
from handler.schemas import ChatCompletion, Usage
from handler.wire import StreamEvent
from tests.bench.run import COMPLETION

SEAL = ReasoningSeal(b"unit")


def translate(items: list[dict[str, Any]], **fields: Any) -> tuple[list[dict[str, Any]], list[str]]:
    req, dropped = to_chat_request(ResponsesRequest.model_validate({"model": "m", "input": items, **fields}), [], SEAL)
    return [m.model_dump(exclude_none=True) for m in req.messages], dropped


def block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": f"sig-{text}"}


def test_a_turn_that_thinks_between_its_calls_keeps_every_signed_block() -> None:
    first = SEAL.seal({"text": "a", "fields": {"thinking_blocks": [block("a")]}})
    second = SEAL.seal({"text": "b", "fields": {"thinking_blocks": [block("b")]}})
    messages, dropped = translate(
        [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "summary": [], "encrypted_content": first},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "reasoning", "summary": [], "encrypted_content": second},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": "2"},
        ]
    )
    assert dropped == []
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assistant = messages[1]
    assert assistant["thinking_blocks"] == [block("a"), block("b")] and assistant["reasoning_content"] == "ab"
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]


def test_assistant_text_between_a_turns_calls_is_that_turns_and_after_their_outputs_the_next() -> None:
    """Text after a call and before its output is the same turn's (Claude writes between its calls): it started a
    turn of its own, and the first turn's call was answered after it, which OpenAI refuses (400 "An assistant message
    with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'"). Text after the outputs
    starts the next turn."""
    messages, _ = translate(
        [
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "and the other"}]},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": "2"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
            {"role": "developer", "content": "be brief"},
        ],
        instructions="sys",
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant", "system"]
    assert messages[2]["content"] == "and the other" and [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert messages[5]["content"] == "done"


def test_a_seal_from_another_key_is_not_trusted() -> None:
    foreign = ReasoningSeal(b"other").seal({"text": "secret plan", "fields": {"thinking_blocks": [block("x")]}})
    messages, dropped = translate(
        [
            {"role": "user", "content": "go"},
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "summary"}],
                "encrypted_content": foreign,
            },
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]
    )
    assert dropped == ["input[reasoning].encrypted_content"]
    assert "thinking_blocks" not in messages[1] and messages[1]["reasoning_content"] == "summary"


def signed_only(secret: bytes, payload: dict[str, Any]) -> str:
    """A seal as the gateway made them before they were encrypted (`gwr1.`): base64 of the JSON, an HMAC tag."""
    key = hashlib.sha256(b"gateway reasoning seal\x00" + secret).digest()
    body = orjson.dumps(payload)
    tag = hmac.new(key, body, hashlib.sha256).digest()
    return "gwr1." + base64.urlsafe_b64encode(body).decode() + "." + base64.urlsafe_b64encode(tag).decode()


def given_away(sealed: str) -> bytes:
    """What a seal shows anyone: its parts, base64-decoded."""
    return b"".join(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in sealed.split(".")[1:])


SECRET_THOUGHT = {"text": "the key is sk-live-123", "fields": {"thinking_blocks": [block("the key is sk-live-123")]}}


def test_a_seal_is_encrypted_each_time_anew() -> None:
    """A seal was base64 of its JSON: Claude's thinking, and any secret it quoted, read by anyone. Now its payload
    is encrypted under a fresh nonce (the same reasoning sealed twice gives two unrelated blobs), and opens whole."""
    first, second = SEAL.seal(SECRET_THOUGHT), SEAL.seal(SECRET_THOUGHT)
    assert first.startswith("gwr2.") and first != second
    for sealed in (first, second):
        assert b"sk-live-123" not in given_away(sealed) and b"thinking" not in given_away(sealed)
        assert SEAL.open(sealed) == SECRET_THOUGHT
    assert SEAL.open(SEAL.seal({})) == {}


def test_an_altered_or_cut_seal_is_not_opened() -> None:
    """The tag covers the version, the nonce and the ciphertext, and is checked before anything is decrypted."""
    sealed = SEAL.seal(SECRET_THOUGHT)
    body, tag = sealed.removeprefix("gwr2.").split(".")
    raw = base64.urlsafe_b64decode(body)
    for changed in (raw[:5] + bytes([raw[5] ^ 1]) + raw[6:], raw[:-1] + bytes([raw[-1] ^ 1]), raw[:16], raw[:10]):
        assert SEAL.open("gwr2." + base64.urlsafe_b64encode(changed).decode() + "." + tag) is None
    assert SEAL.open("gwr2." + body + "." + base64.urlsafe_b64encode(bytes(32)).decode()) is None
    assert SEAL.open("gwr1." + body + "." + tag) is None  # (another version's tag)
    assert SEAL.open("gwr2.!!.??") is None and SEAL.open("gwr3." + body + "." + tag) is None


def test_a_seal_made_before_seals_were_encrypted_still_opens_and_is_kept_encrypted() -> None:
    """A Codex session under way across the upgrade hands back `gwr1.` seals (and stored responses hold them): they
    open as before, checked by their tag, and what the gateway keeps of them is sealed anew."""
    old = signed_only(b"unit", SECRET_THOUGHT)
    assert SEAL.open(old) == SECRET_THOUGHT
    messages, dropped = translate(
        [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "summary": [], "encrypted_content": old},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        ]
    )
    assert dropped == [] and messages[1]["thinking_blocks"] == SECRET_THOUGHT["fields"]["thinking_blocks"]
    assert SEAL.open(signed_only(b"other", SECRET_THOUGHT)) is None
    assert SEAL.open(old[:-8] + "AAAAAAA=") is None

    again = SEAL.upgraded(old)
    assert again.startswith("gwr2.") and SEAL.open(again) == SECRET_THOUGHT
    foreign = signed_only(b"other", SECRET_THOUGHT)
    assert SEAL.upgraded(foreign) == foreign and SEAL.upgraded("enc_openai") == "enc_openai"
    items = [{"role": "user", "content": "go"}, {"type": "reasoning", "summary": [], "encrypted_content": old}]
    [question, reasoning] = SEAL.upgraded_items(items)
    assert question is items[0] and SEAL.open(reasoning["encrypted_content"]) == SECRET_THOUGHT
    assert reasoning["encrypted_content"].startswith("gwr2.")


def test_the_item_types_are_the_apis() -> None:
    """The input item types the gateway knows are those of OpenAI's `ResponseInputItem` union, as the SDK has them
    (an SDK that adds one fails this, until the list has it)."""
    union = typing.get_args(response_input_item_param.ResponseInputItemParam)
    kinds = set()
    for member in union:
        declared = typing.get_type_hints(member)["type"]
        while typing.get_origin(declared) is not typing.Literal:
            declared = next(arg for arg in typing.get_args(declared) if arg is not type(None))
        kinds.update(typing.get_args(declared))
    assert kinds == ITEM_TYPES


@pytest.mark.parametrize("text", ["Say hello.", ""])
def test_a_string_input_is_translated_as_the_user_message_it_stands_for(text: str) -> None:
    """A string input is translated as the one user message `input_items` makes of it, after any history: an
    assistant turn the history leaves open (its calls not yet answered, its text, a search) is closed first, as a
    message item closes it, and instructions stay ahead."""
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    answer = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Here."}]}
    search = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}}
    for history in ([], [{"role": "user", "content": "hi"}], [answer], [answer, call], [search], [call, search]):
        for fields in ({}, {"instructions": "Be brief."}):
            as_text = to_chat_request(
                ResponsesRequest.model_validate({"model": "m", "input": text, **fields}), history, SEAL
            )
            item = {"type": "message", "role": "user", "content": text}
            as_item = to_chat_request(
                ResponsesRequest.model_validate({"model": "m", "input": [item], **fields}), history, SEAL
            )
            assert as_text[0].model_dump() == as_item[0].model_dump() and as_text[1] == as_item[1]


def test_a_past_search_sent_back_is_history_left_out_unnamed() -> None:
    """Codex (`store: false`) sends back every item it got: a turn's `web_search_call` records a search that ran, its
    results in the message after it (its pages there as citations). Left out of a translation, nothing the model needs
    is lost, so nothing is named, on every later turn, sent by value or continued from a stored response; it was
    named (`input[web_search_call]`) on every turn of the conversation after the search, and a 400 under
    `x-gateway-strict`. Gemini's stream gives its search after the text it grounds (a stored streamed response keeps
    that order, and Codex sends the items back in it): the turn's text is before the search there, and it is history
    too; it was named, as a search no text of its turn follows."""
    question = {"role": "user", "content": "news?"}
    search = {
        "type": "web_search_call",
        "id": "ws_1",
        "status": "completed",
        "action": {"type": "search", "query": "q"},
    }
    answer = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Here.", "annotations": []}],
    }
    again = {"role": "user", "content": "more?"}
    messages, dropped = translate([question, search, answer, again])
    assert dropped == [] and [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "Here."
    body = ResponsesRequest.model_validate({"model": "m", "input": "more?"})
    req, dropped = to_chat_request(body, [question, search, answer], SEAL)
    assert dropped == [] and [m.role for m in req.messages] == ["user", "assistant", "user"]
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
    for items in ([question, answer, search, again], [question, answer, call, search, output, again]):
        messages, dropped = translate(items)
        assert dropped == [] and messages[1]["content"] == "Here."
    req, dropped = to_chat_request(body, [question, answer, search], SEAL)
    assert dropped == [] and [m.role for m in req.messages] == ["user", "assistant", "user"]
    # (A search whose turn has no text, a function call its turn: what it found is in no message, named.)
    for items in ([question, search, call, output], [question, call, search, output, answer], [question, search]):
        assert translate(items)[1] == ["input[web_search_call]"]


def test_an_item_of_no_type_the_api_has_is_refused_and_one_the_translation_cannot_carry_named() -> None:
    """Refused, naming the item, as OpenAI answers it; left out without a word but a name, the model answered
    without it. A real item type no translation carries (a hosted tool's call) is left out and named as before; an
    item of the conversation `previous_response_id` continues, taken when it was sent, too."""
    question = {"role": "user", "content": "go"}
    for item, said in (
        ({"type": "user_message", "content": "hi"}, "Invalid value: 'user_message'. Supported values are: "),
        ({"type": 5}, "Invalid value: 5."),
        ({"type": []}, "Invalid value: []."),  # (unhashable: a TypeError in the lookup, found by review)
        ({"type": {"a": 1}}, "Invalid value: {'a': 1}."),
        ({"type": "x" * 500}, "Invalid value: '" + "x" * 60 + "..."),
        ({"content": "hi"}, "Missing required parameter: 'input[1].type'."),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            translate([question, item])
        assert refused.value.param == "input[1]" and refused.value.message.startswith(said)
    messages, dropped = translate([question, {"type": "file_search_call", "id": "fs_1", "status": "completed"}])
    assert messages == [question] and dropped == ["input[file_search_call]"]
    body = ResponsesRequest.model_validate({"model": "m", "input": "and?"})
    req, dropped = to_chat_request(body, [question, {"type": "user_message", "content": "hi"}], SEAL)
    assert len(req.messages) == 2 and dropped == ["input[user_message]"]
    req, dropped = to_chat_request(body, [question, {"type": ["message"], "content": "hi"}], SEAL)
    assert len(req.messages) == 2 and dropped == ["input[['message']]"]


@pytest.mark.parametrize(
    "items",
    [
        [{"type": "function_call", "name": "f"}],
        [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}],
        [{"role": "system", "content": "only instructions"}],
    ],
)
def test_what_cannot_be_sent_is_a_clear_400(items: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequestError):
        translate(items)


@pytest.mark.parametrize(
    "field", [{"conversation": "conv_1"}, {"prompt": {"id": "pmpt_1"}}, {"background": True}], ids=str
)
def test_state_kept_at_openai_is_refused_not_dropped(field: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        translate([{"role": "user", "content": "Hi"}], **field)
    assert refused.value.param == next(iter(field))


def test_background_false_is_what_the_gateway_does_anyway() -> None:
    messages, dropped = translate([{"role": "user", "content": "Hi"}], background=False)
    assert messages == [{"role": "user", "content": "Hi"}] and dropped == []


def test_an_item_id_the_gateway_made_names_its_response() -> None:
    """What the gateway kept of a reasoning item sent back by value is found by the response its id names."""
    ids = ResponseIds("req_" + "0123456789abcdef" * 2)
    made = [ids.item("rs") for _ in range(1000)]
    assert {ResponseIds.response_of(item_id) for item_id in made} == {ids.response}
    for foreign in ("rs_68c1f0a2b3d4e5f60718293a4b5c6d7e0f1a2b3c4d5e6f70", "rs_1", "rs_" + "0" * 32, "msg"):
        assert ResponseIds.response_of(foreign) is None


def test_an_input_item_id_the_gateway_made_names_its_response() -> None:
    """A stored input item's made id (`input_items` lists it so) names the response that first kept it, the
    gateway's or, passed through, OpenAI's (`resp_<hex>`, of any length): an `item_reference` to it finds it. The
    natively served one's was not recognised, and its reference was refused as naming nothing."""
    for response_id in ("resp_" + "0123456789abcdef" * 2, "resp_68c1f0a2b3d4e5f60718293a4b5c6d7e0f1a2b3c4d5e6f70"):
        made = item_ids([{"role": "user", "content": "Hi"}, {"type": "function_call_output"}], response_id)
        assert [ResponseIds.response_of(item_id) for item_id in made] == [response_id, response_id]


@pytest.mark.parametrize(
    ("reasoning", "summary"),
    [
        ({"effort": "low", "summary": "auto"}, "auto"),
        ({"summary": "detailed"}, "detailed"),
        ({"generate_summary": "concise"}, "concise"),
        ({"effort": "low"}, None),
    ],
)
def test_a_reasoning_summary_reaches_the_adapters_and_never_an_upstream_body(
    reasoning: dict[str, Any], summary: str | None
) -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "reasoning": reasoning})
    req, dropped = to_chat_request(body, [], SEAL)
    assert req.reasoning_summary == summary and dropped == []
    assert "reasoning_summary" not in req.model_dump()  # no Chat Completions API has it


def completion(message: dict[str, Any], usage: Usage | None = None, finish: str = "stop") -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "created": 0,
            "model": "m",
            "choices": [{"message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or Usage.of(10, 3),
        }
    )


def streamed(answer: ChatCompletion, req: ResponsesRequest) -> dict[str, Any]:
    """The final response a stream of the same answer ends with."""
    writer = ResponsesEventWriter(req, ResponseIds("req_" + "0" * 32), SEAL)
    for chunk in schemas.completion_chunks(answer):
        writer.chunk(chunk)
    _, response = writer.completed()
    return finish(response, answer.usage or Usage(), None)


@pytest.mark.parametrize("stream", [False, True])
def test_cache_writes_are_in_the_usage_openais_types_require(stream: bool) -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "Hi"})
    answer = completion({"content": "Hello"}, Usage.of(160, 7, cached=100, cache_write=50))
    ids = ResponseIds("req_" + "0" * 32)
    response = streamed(answer, req) if stream else to_response(answer, req, ids, SEAL, None)
    usage = Response.model_validate(response).usage
    assert usage is not None and usage.input_tokens == 160
    assert (usage.input_tokens_details.cached_tokens, usage.input_tokens_details.cache_write_tokens) == (100, 50)


def test_only_a_turn_that_thinks_between_its_parts_keeps_their_order() -> None:
    sealed = [SEAL.seal({"text": t, "fields": {"thinking_blocks": [block(t)]}}) for t in ("a", "b")]
    reasoning = [{"type": "reasoning", "summary": [], "encrypted_content": s} for s in sealed]
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    said = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hm"}]}
    question = {"role": "user", "content": "go"}
    between, _ = to_chat_request(
        ResponsesRequest.model_validate({"model": "m", "input": [question, reasoning[0], said, reasoning[1], call]}),
        [],
        SEAL,
    )
    assert between.messages[1].block_order == [("thinking", 0), ("text", 2), ("thinking", 1), ("call", 0)]
    first, _ = to_chat_request(
        ResponsesRequest.model_validate({"model": "m", "input": [question, *reasoning, said, call]}), [], SEAL
    )
    assert first.messages[1].block_order is None  # the usual order says it


def test_an_order_the_answer_no_longer_fits_gives_the_usual_items() -> None:
    """An answer changed after its order was taken (a secret in its text redacted) is not cut at the wrong places."""
    req = ResponsesRequest.model_validate({"model": "m", "input": "Hi"})
    thinking = {"thinking_blocks": [block("a"), block("b")]}
    order = [("thinking", 0), ("text", 5), ("thinking", 1)]
    ids = ResponseIds("req_" + "0" * 32)
    fits = completion({"content": "hello", "reasoning_content": "ab", **thinking})
    fits.choices[0].message.block_order = order
    assert [item["type"] for item in to_response(fits, req, ids, SEAL, None)["output"]] == [
        "reasoning",
        "message",
        "reasoning",
    ]
    changed = completion({"content": "[REDACTED]", "reasoning_content": "ab", **thinking})
    changed.choices[0].message.block_order = order
    assert [item["type"] for item in to_response(changed, req, ids, SEAL, None)["output"]] == ["reasoning", "message"]


def test_an_allowed_tools_choice_is_the_chat_choice_of_the_function_tools_it_allows() -> None:
    """It went as its mode alone, the list named as dropped: the model could call any tool. The function tools it
    allows are the Chat Completions choice's; the hosted search among them is named only where the translation does
    not carry it (unpriced: `translated_search`, no search to run; it was named where it ran too)."""
    tools = [{"type": "function", "name": name} for name in ("a", "b")] + [{"type": "web_search"}]
    allowed = [{"type": "function", "name": "b"}, {"type": "web_search"}]
    choice = {"type": "allowed_tools", "mode": "required", "tools": allowed}
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools, "tool_choice": choice})
    req, dropped = to_chat_request(body, [], SEAL)
    assert req.model_dump(exclude_none=True)["tool_choice"] == {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]},
    }
    assert "tool_choice.tools" not in dropped
    searches = [{"type": "web_search"}]
    assert translated_search(req, searches, 0, dropped, choice) == [*dropped, "tools[web_search]", "tool_choice.tools"]
    assert "tool_choice.tools" not in translated_search(req, searches, 10, dropped, choice)
    only_hosted = ResponsesRequest.model_validate(
        {**body.model_dump(), "tool_choice": {**choice, "tools": allowed[1:]}}
    )
    assert to_chat_request(only_hosted, [], SEAL)[0].tool_choice == "required"


@pytest.mark.parametrize(
    ("choice", "named"),
    [
        ("required", True),
        ({"type": "function", "name": "get_weather"}, True),
        ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "file_search"}]}, True),
        ({"type": "file_search"}, True),
        ("auto", False),
        ("none", False),
    ],
)
def test_a_choice_with_no_function_tool_left_to_choose_is_named(choice: Any, named: bool) -> None:
    """Beside hosted tools alone (left out), a choice that asks for a call went unnamed: the model, asked to call a
    tool, answered freely. It is named `tool_choice`, as the pass-through names it; `auto` and `none` ask nothing."""
    tools = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools, "tool_choice": choice})
    req, dropped = to_chat_request(body, [], SEAL)
    assert req.tool_choice is None and req.tools is None
    assert dropped == ["tools[file_search]", *(["tool_choice"] if named else [])]
    with pytest.raises(InvalidRequestError):  # (a choice the API does not have is the client's 400, tools or none)
        to_chat_request(
            ResponsesRequest.model_validate({"model": "m", "input": "hi", "tool_choice": "often"}), [], SEAL
        )


@pytest.mark.parametrize("stream", [False, True])
def test_a_service_tier_the_deployment_was_not_sent_is_not_echoed_as_served(stream: bool) -> None:
    """The response says the tier it ran at: the one asked, unless the deployment that answered was not sent it
    (named as dropped), then its provider's default; it said `flex`, as if the answer had run at it."""
    req = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "service_tier": "flex"})
    answer = completion({"content": "Hello"}, Usage.of(10, 2))
    ids = ResponseIds("req_" + "0" * 32)
    for dropped, tier in ((["service_tier"], "default"), ([], "flex")):
        if stream:
            writer = ResponsesEventWriter(req, ids, SEAL, dropped)
            for chunk in schemas.completion_chunks(answer):
                writer.chunk(chunk)
            assert writer.response("in_progress")["service_tier"] == tier
            response = writer.completed()[1]
        else:
            response = to_response(answer, req, ids, SEAL, None, dropped)
        assert response["service_tier"] == tier


# --- namespace tools -------------------------------------------------------------------------------


def function_tool(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object"}}


def namespace_tool(name: str, *tools: dict[str, Any]) -> dict[str, Any]:
    return {"type": "namespace", "name": name, "description": "d", "tools": list(tools)}


def test_a_namespaces_functions_are_offered_under_their_names_or_prefixed_where_another_tool_has_it() -> None:
    """Each function of a namespace goes as a plain one, in its namespace's place: under its own name where no other
    tool has it, else prefixed with its namespace (and a suffix where even that is taken). A custom tool among them
    is named as one alone would be, and a namespace with no name is left out whole (its calls could not name it)."""
    tools = [
        function_tool("exec_command"),
        namespace_tool("agents", function_tool("spawn_agent"), function_tool("exec_command"), {"type": "custom"}),
        namespace_tool("other", function_tool("spawn_agent"), function_tool("wait_agent")),
        function_tool("other__spawn_agent"),
        {"type": "namespace", "tools": [function_tool("lost")]},
    ]
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools})
    req, dropped = to_chat_request(body, [], SEAL)
    assert [tool.function.name for tool in req.tools or ()] == [
        "exec_command",
        "agents__spawn_agent",
        "agents__exec_command",
        "other__spawn_agent_2",
        "wait_agent",
        "other__spawn_agent",
    ]
    assert dropped == ["tools[custom]", "tools[namespace]"]
    spaces = Namespaces(body.tools)
    assert spaces.client_name("other__spawn_agent_2") == ("other", "spawn_agent")
    assert spaces.client_name("wait_agent") == ("other", "wait_agent")
    assert spaces.client_name("other__spawn_agent") == (None, "other__spawn_agent")


def test_a_namespaced_call_sent_back_goes_under_the_name_its_function_is_offered_by() -> None:
    tools = [function_tool("spawn_agent"), namespace_tool("agents", function_tool("spawn_agent"))]
    calls = [
        {"type": "function_call", "call_id": "c1", "name": "spawn_agent", "namespace": "agents", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "spawn_agent", "arguments": "{}"},
        {"type": "function_call", "call_id": "c3", "name": "gone", "namespace": "old", "arguments": "{}"},
    ]
    outputs = [{"type": "function_call_output", "call_id": f"c{n}", "output": "ok"} for n in (1, 2, 3)]
    messages, dropped = translate([{"role": "user", "content": "go"}, *calls, *outputs], tools=tools)
    assert [call["function"]["name"] for call in messages[1]["tool_calls"]] == [
        "agents__spawn_agent",
        "spawn_agent",
        "old__gone",  # (a namespace no longer offered: its call still says whose it was)
    ]
    assert dropped == []
    with pytest.raises(InvalidRequestError, match=r"input\[1\]\.namespace"):
        translate([{"role": "user", "content": "go"}, {**calls[0], "namespace": 7}])


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ({"type": "function", "name": "spawn_agent", "namespace": "agents"}, "agents__spawn_agent"),
        ({"type": "function", "name": "spawn_agent"}, "spawn_agent"),
        ({"type": "function", "name": "wait_agent"}, "wait_agent"),
    ],
)
def test_a_choice_of_a_namespaced_function_chooses_the_name_it_is_offered_by(choice: Any, sent: str) -> None:
    tools = [
        function_tool("spawn_agent"),
        namespace_tool("agents", function_tool("spawn_agent"), function_tool("wait_agent")),
    ]
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools, "tool_choice": choice})
    req, dropped = to_chat_request(body, [], SEAL)
    assert req.model_dump(exclude_none=True)["tool_choice"] == {"type": "function", "function": {"name": sent}}
    allowed = {"type": "allowed_tools", "mode": "auto", "tools": [choice]}
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools, "tool_choice": allowed})
    req, dropped = to_chat_request(body, [], SEAL)
    assert req.model_dump(exclude_none=True)["tool_choice"]["allowed_tools"]["tools"] == [
        {"type": "function", "function": {"name": sent}}
    ]
    assert dropped == []


def test_a_namespaced_call_cut_mid_stream_names_its_namespace() -> None:
    """The output a broken stream's `response.failed` carries names the call's namespace, as a whole answer does."""
    tools = [namespace_tool("agents", function_tool("spawn_agent"))]
    req = ResponsesRequest.model_validate({"model": "m", "input": "hi", "tools": tools})
    call = {"id": "call_1", "type": "function", "function": {"name": "spawn_agent", "arguments": '{"message": "x"}'}}
    answer = completion({"content": None, "tool_calls": [call]}, finish="tool_calls")
    ids = ResponseIds("req_" + "0" * 32)
    whole = to_response(answer, req, ids, SEAL, None)["output"]
    writer = ResponsesEventWriter(req, ResponseIds("req_" + "1" * 32), SEAL)
    for chunk in schemas.completion_chunks(answer):
        if not chunk.choices or not chunk.choices[0].finish_reason:
            writer.chunk(chunk)
    cut = writer.streamed()
    for item in (whole[-1], cut[-1]):
        assert (item["type"], item["name"], item["namespace"]) == ("function_call", "spawn_agent", "agents")


@pytest.mark.parametrize(("status", "finish"), [("failed", "stop"), ("searching", "length"), ("completed", "stop")])
def test_a_search_ending_the_answer_keeps_its_own_status(status: str, finish: Any) -> None:
    """A translated answer whose last output item is a search (Claude cut by its cap mid-search, a paused turn, a
    search whose results came last) keeps the search's status: the answer's ending status is a message's or a call's
    (`completed`, `incomplete`), and `incomplete` is none of a `web_search_call`'s (in_progress, searching, completed,
    failed); a failed search read `completed`."""
    search = {
        "id": "srvtoolu_1",
        "type": "web_search_call",
        "status": status,
        "action": {"type": "search", "query": "q"},
    }
    message = schemas.AssistantMessage(content=None, web_searches=[search])
    answer = ChatCompletion(
        id="chatcmpl-1",
        created=0,
        model="m",
        choices=[schemas.Choice(index=0, message=message, finish_reason=finish)],
        usage=Usage.of(5, 2),
    )
    req = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]})
    response = to_response(answer, req, ResponseIds("req_" + "0" * 32), SEAL, None)
    assert [(item["type"], item["status"]) for item in response["output"]] == [("web_search_call", status)]
    Response.model_validate(response)  # (as the openai SDK reads it)


GROUNDED = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "hello"}]},
            "finishReason": "MAX_TOKENS",
            "groundingMetadata": {
                "webSearchQueries": ["q"],
                "groundingChunks": [{"web": {"uri": "https://example.com/", "title": "t"}}],
                "groundingSupports": [{"segment": {"startIndex": 0, "endIndex": 5}, "groundingChunkIndices": [0]}],
            },
        }
    ],
    "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7},
}


def sdk_accumulated(writer: ResponsesEventWriter, chunks: list[schemas.ChatCompletionChunk]) -> Response:
    """The response the openai SDK's stream helper ends with, for the events the writer gives for `chunks`."""
    stream = writer.start() + b"".join(writer.chunk(chunk) for chunk in chunks)
    closing, response = writer.completed()
    finish(response, Usage.of(5, 2), None)
    kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    stream += closing + writer.event(kind, response=response)
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    given = []
    for event in stream.split(b"\n\n")[:-1]:
        payload = orjson.loads(event.split(b"\ndata: ", 1)[1])
        given += state.handle_event(construct_type(type_=ResponseStreamEvent, value=payload))  # type: ignore[arg-type]
    assert given[-1].type == kind
    return given[-1].response


def test_a_grounded_answer_cut_by_its_cap_streams_its_message_incomplete_as_whole() -> None:
    """Gemini gives a grounding's searches just before the event that says the answer was cut (`MAX_TOKENS`): the
    message they follow is closed with the answer's ending status, `incomplete` as the whole answer has it (it was
    closed `completed` as the searches came), and the searches come after it, as documented."""
    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]})
    req, dropped = to_chat_request(body, [], SEAL)
    translated_search(req, search_tools(body), 10, dropped, body.tool_choice)
    target = Target("g", "gemini", "gemini-2.5-flash", "global", "http://gemini.invalid")
    adapter = GeminiAdapter("g", "AIza-test-key", {})
    answer = adapter.chat_response(orjson.dumps(GROUNDED), req, target)
    whole = to_response(answer, body, ResponseIds("req_" + "0" * 32), SEAL, None)["output"]
    assert [(item["type"], item["status"]) for item in whole] == [
        ("web_search_call", "completed"),
        ("message", "incomplete"),
    ]
    parser = adapter.stream_parser(req, target)
    chunks = [*parser.feed(StreamEvent(None, orjson.dumps(GROUNDED))), *parser.finish()]
    streamed = sdk_accumulated(ResponsesEventWriter(body, ResponseIds("req_" + "1" * 32), SEAL), chunks)
    assert streamed.status == "incomplete"
    assert [(item.type, item.status) for item in streamed.output] == [
        ("message", "incomplete"),
        ("web_search_call", "completed"),
    ]
    [message] = [item.model_dump(exclude_none=True) for item in streamed.output if item.type == "message"]
    assert {**message, "id": ""} == {**whole[-1], "id": ""}  # (its text, its citation)


def test_a_search_between_two_texts_parts_them_streamed() -> None:
    """Claude's search that comes after some text, the answer going on after it: the message before it is done, the
    search its own item, the text after it a message of its own (as the searches that wait for the open item to
    close are written before more of the answer)."""
    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]})
    search = {"type": "web_search_call", "status": "completed", "action": {"type": "search", "query": "q"}}
    deltas = [{"content": "Let me look. "}, {"web_searches": [search]}, {"content": "Found it."}, {}]
    chunks = [
        schemas.ChatCompletionChunk.model_validate(
            {"id": "c", "created": 0, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": end}]}
        )
        for delta, end in zip(deltas, [None, None, None, "length"], strict=True)
    ]
    streamed = sdk_accumulated(ResponsesEventWriter(body, ResponseIds("req_" + "1" * 32), SEAL), chunks)
    assert [(item.type, item.status) for item in streamed.output] == [
        ("message", "completed"),
        ("web_search_call", "completed"),
        ("message", "incomplete"),
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_citation_is_of_the_text_it_annotates_or_none(stream: bool) -> None:
    """Chat Completions `annotations` become the text's `url_citation`s by one rule, whole or streamed: a span that
    starts in the text, ending at the text's end at most and not before its start. A span past the text (a provider's
    grounding of more than it wrote) cited indices outside it when streamed (20..11 of an 11-character text)."""

    def span(start: int, end: int) -> dict[str, Any]:
        return {"type": "url_citation", "url_citation": {"start_index": start, "end_index": end, "url": "https://e/"}}

    answer = completion({"content": "Hello world", "annotations": [span(0, 5), span(6, 40), span(20, 25), span(3, 1)]})
    req = ResponsesRequest.model_validate({"model": "m", "input": "Hi"})
    ids = ResponseIds("req_" + "0" * 32)
    response = streamed(answer, req) if stream else to_response(answer, req, ids, SEAL, None)
    cited = [(a["start_index"], a["end_index"]) for a in response["output"][-1]["content"][0]["annotations"]]
    assert cited == [(0, 5), (6, 11), (3, 3)]
    Response.model_validate(response)


def test_a_stream_cut_after_its_grounding_has_its_message_cut_and_its_searches_after_it() -> None:
    """Gemini's grounding came, the finish never did (the stream broke): `response.failed` has the message as far as
    it was written, `incomplete`, and the searches that ran after it (the message read `completed`)."""
    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", "tools": [{"type": "web_search"}]})
    search = {"type": "web_search_call", "status": "completed", "action": {"type": "search", "query": "q"}}
    writer = ResponsesEventWriter(body, ResponseIds("req_" + "1" * 32), SEAL)
    for delta in ({"content": "hello"}, {"web_searches": [search]}):
        writer.chunk(
            schemas.ChatCompletionChunk.model_validate(
                {"id": "c", "created": 0, "model": "m", "choices": [{"index": 0, "delta": delta}]}
            )
        )
    cut = writer.streamed()
    assert [(item["type"], item["status"]) for item in cut] == [
        ("message", "incomplete"),
        ("web_search_call", "completed"),
    ]
    assert cut[0]["content"][0]["text"] == "hello"


# --- plain answers --------------------------------------------------------------------------------

# Translated answers in the plain shape (`PlainCompletion`): text, a refusal beside text, cut by the output cap, no
# text, a service tier, no choices.
PLAIN_ANSWERS = {
    "text": COMPLETION,
    "refusal-and-text": {**COMPLETION, "choices": [{"message": {"content": "a", "refusal": "no"}}]},
    "cut": {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "finish_reason": "length"}]},
    "refusal-alone": {**COMPLETION, "choices": [{"message": {"content": None, "refusal": "no"}}]},
    "empty": {**COMPLETION, "choices": [{"message": {"content": ""}, "finish_reason": "stop"}]},
    "tier": {**COMPLETION, "service_tier": "priority"},
    "no-choices": {**COMPLETION, "choices": []},
}
REQ = {"model": "m", "input": "Say hello.", "max_output_tokens": 16, "store": False}  # (the benchmark's, as Codex's)


@pytest.mark.parametrize("dropped", [[], ["service_tier"]])
@pytest.mark.parametrize("answer", PLAIN_ANSWERS.values(), ids=PLAIN_ANSWERS.keys())
def test_a_plain_answer_is_the_response_its_model_is(answer: dict[str, Any], dropped: list[str]) -> None:
    """A translated answer read as a `PlainCompletion` (untraced, in the plain shape) makes the response the model
    read from the same answer makes: its items, their ids and statuses, its status, tier and usage."""
    raw = orjson.dumps(answer)
    adapter = OpenAIAdapter("p", "sk-test", {})
    chat = to_chat_request(ResponsesRequest.model_validate(REQ), [], SEAL)[0]
    where = Target("p", "openai", "gpt-4o-mini", "global", "https://api.openai.com/v1")
    plain, _ = adapter.plain_answer(raw, chat, where)
    assert isinstance(plain, schemas.PlainCompletion)
    req = ResponsesRequest.model_validate({**REQ, "service_tier": "flex"})
    cost = Cost(7.05e-06, 0.0, plain.usage, None)
    read = plain_response(plain, req, ResponseIds("req_" + "0" * 32), cost, dropped)
    completion = adapter.chat_response(raw, chat, where)
    model = to_response(completion, req, ResponseIds("req_" + "0" * 32), SEAL, cost, dropped)
    assert read == {**model, "created_at": read["created_at"], "completed_at": read["completed_at"]}
