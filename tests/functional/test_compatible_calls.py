"""Tool calls as OpenAI-compatible servers really stream and end them, through every client API, read by the
official SDKs (the upstream scripted per test: tests/support/scripted.py).

- Gemini's OpenAI-compatible endpoint (the gateway's `google` profile) streams each call whole in one delta with no
  `index` (openai/openai-python#2806; `"index": null` elsewhere): read as required, every streamed tool call from it
  was a 502 "the provider sent a malformed stream event", to Chat, Responses and Messages clients alike.
- A call whose answer ends `finish_reason: "stop"` (OpenAI's own under a `tool_choice` naming a function; Gemini's
  compatible endpoint when streaming) reached a Messages client with `stop_reason: "end_turn"` beside its `tool_use`
  block: the Anthropic SDK's tool runner takes that for the last answer and runs none of its tools.
- A whole Responses answer gave calls without ids (`"id": ""`, from some servers) `call_id: ""`, every call of a
  parallel pair alike, where the same answer streamed gets one of its own per call.
- A thought signature Gemini's compatible endpoint gives in a delta of its own after its call reached a Chat client
  but not a Responses or Messages client, whose call id carries it back: Gemini 3 was sent Google's stand-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from tests.functional.conftest import Running, anthropic_client, openai_client
from tests.support.scripted import BREAK, REQUESTS, SCRIPTS, chunk, scripted_gateway, usage_chunk, whole

MODELS = {
    "gemini-3-flash": "google",
    "gemini-2.5-flash": "google",
    "gpt-forced": "compatible",
    "idless": "compatible",
}
CHAT_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
RESPONSES_TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
MESSAGES_TOOLS: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
HI: Any = [{"role": "user", "content": "Weather in Paris and Rome?"}]
SIGNED = {"google": {"thought_signature": "c2lnbmVk"}}


def google_call(n: int, city: str) -> dict[str, Any]:
    """A call as Gemini's compatible endpoint streams it: whole, no `index`."""
    function = {"name": "get_weather", "arguments": f'{{"city":"{city}"}}'}
    return {"extra_content": SIGNED, "function": function, "id": f"function-call-{n}", "type": "function"}


def responses_calls(gateway: Running, key: str, model: str) -> list[tuple[str, str]]:
    """The calls (`call_id`, `arguments`) a Responses client's stream gets of `model`'s scripted answer."""
    with openai_client(gateway, key).responses.stream(model=model, input=HI, tools=RESPONSES_TOOLS) as stream:
        final = stream.get_final_response()
    return [(item.call_id, item.arguments) for item in final.output if item.type == "function_call"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from scripted_gateway(tmp_path_factory.mktemp("compatible-calls"), MODELS)


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="compatible-calls")


@pytest.fixture
def indexless() -> None:
    """Two parallel calls in one delta without `index`, the stream ended `tool_calls`."""
    calls = [google_call(1, "Paris"), google_call(2, "Rome")]
    SCRIPTS["gemini-3-flash"] = {
        "stream": [chunk({"role": "assistant", "tool_calls": calls}), chunk({}, "tool_calls"), usage_chunk()]
    }


@pytest.mark.usefixtures("indexless")
def test_geminis_compatible_endpoint_streams_calls_a_chat_client_gets(gateway: Running, key: str) -> None:
    stream = openai_client(gateway, key).chat.completions.create(
        model="gemini-3-flash", messages=HI, tools=CHAT_TOOLS, stream=True
    )
    deltas = [d for c in stream if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.function.arguments) for d in deltas if d.function] == [
        (0, '{"city":"Paris"}'),
        (1, '{"city":"Rome"}'),
    ]


@pytest.mark.usefixtures("indexless")
def test_geminis_compatible_endpoint_streams_calls_a_responses_client_gets(gateway: Running, key: str) -> None:
    with openai_client(gateway, key).responses.stream(model="gemini-3-flash", input=HI, tools=RESPONSES_TOOLS) as s:
        final = s.get_final_response()
    calls = [(item.name, item.arguments) for item in final.output if item.type == "function_call"]
    assert calls == [("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Rome"}')]


@pytest.mark.usefixtures("indexless")
def test_geminis_compatible_endpoint_streams_calls_a_messages_client_gets(gateway: Running, key: str) -> None:
    with anthropic_client(gateway, key).messages.stream(
        model="gemini-3-flash", max_tokens=100, messages=HI, tools=MESSAGES_TOOLS
    ) as s:
        message = s.get_final_message()
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {"city": "Rome"}),
    ]
    assert message.stop_reason == "tool_use"


def test_deltas_of_one_call_without_index_stay_one_call(gateway: Running, key: str) -> None:
    # A call begun with its id, its arguments in later deltas with neither id nor index, then a second call.
    opened = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    SCRIPTS["gpt-forced"] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [opened]}),
            chunk({"tool_calls": [{"function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": None, "function": {"arguments": '"Paris"}'}}]}),
            chunk({"tool_calls": [{**opened, "id": "c2", "function": {"name": "get_weather", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ]
    }
    assert responses_calls(gateway, key, "gpt-forced") == [("c1", '{"city":"Paris"}'), ("c2", "{}")]


def test_a_stream_that_still_does_not_read_is_the_providers_malformed_answer(gateway: Running, key: str) -> None:
    SCRIPTS["gpt-forced"] = {"stream": [chunk({"role": "assistant", "tool_calls": [{"id": 7}]}), usage_chunk()]}
    with pytest.raises(openai.APIStatusError) as raised:
        list(openai_client(gateway, key).chat.completions.create(model="gpt-forced", messages=HI, stream=True))
    assert raised.value.status_code == 502 and "malformed" in raised.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("model", ["gpt-forced", "gemini-3-flash"])
def test_a_tool_call_ended_stop_reaches_a_messages_client_as_tool_use(
    gateway: Running, key: str, model: str, stream: bool
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    SCRIPTS[model] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [{**call, "index": 0}]}),
            chunk({}, "stop"),
            usage_chunk(),
        ],
        "whole": whole({"role": "assistant", "content": None, "tool_calls": [call]}, "stop"),
    }
    client = anthropic_client(gateway, key)
    asked: Any = {
        "model": model,
        "max_tokens": 100,
        "messages": HI,
        "tools": MESSAGES_TOOLS,
        "tool_choice": {"type": "tool", "name": "get_weather"},
    }
    if stream:
        with client.messages.stream(**asked) as s:
            message = s.get_final_message()
    else:
        message = client.messages.create(**asked)
    assert [b.type for b in message.content] == ["tool_use"]
    assert message.stop_reason == "tool_use", message.stop_reason


def test_an_answer_without_a_call_ended_stop_is_still_end_turn(gateway: Running, key: str) -> None:
    SCRIPTS["gpt-forced"] = {"whole": whole({"role": "assistant", "content": "Sunny."}, "stop")}
    message = anthropic_client(gateway, key).messages.create(model="gpt-forced", max_tokens=100, messages=HI)
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_calls_without_ids_get_distinct_call_ids_whole_as_streamed(gateway: Running, key: str, stream: bool) -> None:
    calls = [
        {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
    ]
    SCRIPTS["idless"] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [{**calls[0], "index": 0}]}),
            chunk({"tool_calls": [{**calls[1], "index": 1}]}),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        "whole": whole({"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"),
    }
    sdk = openai_client(gateway, key)
    if stream:
        with sdk.responses.stream(model="idless", input=HI, tools=RESPONSES_TOOLS) as events:
            response = events.get_final_response()
    else:
        response = sdk.responses.create(model="idless", input=HI, tools=RESPONSES_TOOLS)
    call_ids = [item.call_id for item in response.output if item.type == "function_call"]
    assert len(call_ids) == 2 and all(call_ids) and len(set(call_ids)) == 2, call_ids


@pytest.fixture
def late_signature() -> None:
    call = {"index": 0, "id": "function-call-1", "type": "function"}
    function = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    SCRIPTS["gemini-3-flash"] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [{**call, "function": function}]}),
            chunk({"tool_calls": [{"index": 0, "extra_content": SIGNED}]}),  # the signature, after the call
            chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        "whole": whole({"role": "assistant", "content": "DONE: 18C"}),
    }


def signature_sent_back() -> Any:
    """The `extra_content` of the call the last request to Gemini's endpoint carried back."""
    messages = REQUESTS[-1]["json"]["messages"]
    (call,) = [call for m in messages for call in m.get("tool_calls") or ()]
    return call.get("extra_content")


@pytest.mark.usefixtures("late_signature")
def test_a_responses_client_carries_a_late_signature_back_to_gemini(gateway: Running, key: str) -> None:
    sdk = openai_client(gateway, key)
    with sdk.responses.stream(model="gemini-3-flash", input="Weather?", tools=RESPONSES_TOOLS, store=False) as stream:
        first = stream.get_final_response()
    (call,) = [item for item in first.output if item.type == "function_call"]
    history: Any = [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
    ]
    sdk.responses.create(model="gemini-3-flash", input=history, tools=RESPONSES_TOOLS, store=False)
    assert signature_sent_back() == SIGNED


@pytest.mark.usefixtures("late_signature")
def test_a_messages_client_carries_a_late_signature_back_to_gemini(gateway: Running, key: str) -> None:
    client = anthropic_client(gateway, key)
    ask: Any = {"role": "user", "content": "Weather?"}
    with client.messages.stream(model="gemini-3-flash", max_tokens=100, messages=[ask], tools=MESSAGES_TOOLS) as s:
        first = s.get_final_message()
    (use,) = [block for block in first.content if block.type == "tool_use"]
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "18C"}
    history: Any = [ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    client.messages.create(model="gemini-3-flash", max_tokens=100, messages=history, tools=MESSAGES_TOOLS)
    assert signature_sent_back() == SIGNED


@pytest.mark.usefixtures("late_signature")
def test_a_chat_client_gets_a_late_signature_once_with_its_call(gateway: Running, key: str) -> None:
    stream = openai_client(gateway, key).chat.completions.create(
        model="gemini-3-flash", messages=HI, tools=CHAT_TOOLS, stream=True
    )
    deltas = [d.model_dump(exclude_none=True) for c in stream if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert [d.get("extra_content") for d in deltas] == [SIGNED], deltas


@pytest.mark.parametrize(
    ("pieces", "went"),
    [
        (["{'city': 'Paris'}"], {}),
        (["{", "'city'", ": 'Paris'}"], {}),
        (['{"city": "Par', "is\x01", '"}'], {"city": "Par"}),
        (["\n", '{"city": "Paris"}'], None),
    ],
    ids=["whole", "after-its-brace", "mid-string", "whitespace-first"],
)
def test_arguments_that_are_not_json_stream_to_a_messages_client_as_it_reads_them(
    gateway: Running, key: str, pieces: list[str], went: dict[str, str] | None
) -> None:
    """A model on a compatible server may write a call's arguments as no JSON (`{'city': 'Paris'}`): relayed as they
    came in `input_json_delta`s, the Anthropic SDK's stream failed on them ("Unable to parse tool parameter JSON"), its
    text and usage lost with them. What cannot begin an object is held back, and the input ends whole, the arguments
    as they came in `_raw`: as the whole answer has it, where nothing went before its first member."""
    arguments = "".join(pieces)
    opened = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    SCRIPTS["gpt-forced"] = {
        "stream": [
            chunk({"role": "assistant", "content": "Checking."}),
            chunk({"tool_calls": [opened]}),
            *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}) for piece in pieces),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ],
        "whole": whole(
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [{**opened, "function": {"name": "get_weather", "arguments": arguments}}],
            },
            "tool_calls",
        ),
    }
    client = anthropic_client(gateway, key)
    asked: Any = {"model": "gpt-forced", "max_tokens": 100, "messages": HI, "tools": MESSAGES_TOOLS}
    with client.messages.stream(**asked) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].type == "text" and streamed.content[0].text == "Checking."
    (use,) = [block for block in streamed.content if block.type == "tool_use"]
    # (`went` None: JSON after whitespace, which went after the object's first fragment: the SDK refuses it alone.)
    assert use.input == ({**went, "_raw": arguments} if went is not None else {"city": "Paris"})
    if not went:  # (nothing went before its first member: all of it as the whole answer has it)
        answered = client.messages.create(**asked)
        assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in answered.content]
    assert streamed.usage.output_tokens == 5


def test_a_delta_without_index_goes_on_with_the_call_begun_last_though_that_one_had_an_index(
    gateway: Running, key: str
) -> None:
    """Only the calls of chunks that did not read were recorded: a call begun with its `index` was not, and a later
    delta of it without one went on with an earlier call (review mergerev34)."""
    c1 = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    c2 = {"index": 1, "id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":'}}
    SCRIPTS["gpt-forced"] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [c1]}),
            chunk({"tool_calls": [c2]}),
            chunk({"tool_calls": [{"function": {"arguments": '"Rome"}'}}]}),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ]
    }
    assert responses_calls(gateway, key, "gpt-forced") == [("c1", '{"city":"Paris"}'), ("c2", '{"city":"Rome"}')]


OVERLOADED = {"error": {"message": "the model is overloaded", "type": "server_error", "code": 503}}


@pytest.mark.parametrize("ending", [OVERLOADED, BREAK], ids=["providers-error", "connection-dropped"])
@pytest.mark.parametrize("model", ["gpt-forced", "gemini-3-flash", "gemini-2.5-flash"])
def test_a_call_streamed_before_the_stream_breaks_reaches_a_chat_client(
    gateway: Running, key: str, model: str, ending: Any
) -> None:
    """A chunk that begins a call with no thought signature waits for the next (`_signed_late`); where the next is
    the server's error, or the connection drops, the call (which the provider billed) was dropped (reviews
    mergerev34 and mergerev34b)."""
    call = {"id": "function-call-1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    SCRIPTS[model] = {
        "stream": [
            chunk({"role": "assistant", "content": "Checking."}),
            chunk({"tool_calls": [call]}),  # (no `index`: as Gemini's endpoint streams a call)
            ending,
        ],
        "done": False,
    }
    stream = openai_client(gateway, key).chat.completions.create(
        model=model, messages=HI, tools=CHAT_TOOLS, stream=True
    )
    calls: list[Any] = []
    with pytest.raises(openai.APIError):
        for c in stream:
            calls += [d for choice in c.choices for d in choice.delta.tool_calls or ()]
    assert [d.id for d in calls] == ["function-call-1"], calls


def test_a_call_numbered_below_zero_is_relayed_as_it_came(gateway: Running, key: str) -> None:
    """Calls begun were recorded by their `index`, and `index: -1` ended the stream as the gateway's error (an
    IndexError), where it had been relayed (review mergerev34b)."""
    opened = {"index": -1, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    SCRIPTS["gpt-forced"] = {
        "stream": [chunk({"role": "assistant", "tool_calls": [opened]}), chunk({}, "tool_calls"), usage_chunk()]
    }
    stream = openai_client(gateway, key).chat.completions.create(
        model="gpt-forced", messages=HI, tools=CHAT_TOOLS, stream=True
    )
    calls = [d for c in stream for choice in c.choices for d in choice.delta.tool_calls or ()]
    assert [(d.index, d.id) for d in calls] == [(-1, "call_1")]


def messages_input(gateway: Running, key: str, pieces: list[str]) -> Any:
    """The input a Messages client's stream gets of a call whose arguments come in `pieces`."""
    opened = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    SCRIPTS["gpt-forced"] = {
        "stream": [
            chunk({"role": "assistant", "tool_calls": [opened]}),
            *(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces),
            chunk({}, "tool_calls"),
            usage_chunk(),
        ]
    }
    asked: Any = {"model": "gpt-forced", "max_tokens": 100, "messages": HI, "tools": MESSAGES_TOOLS}
    with anthropic_client(gateway, key).messages.stream(**asked) as stream:
        (use,) = [b for b in stream.get_final_message().content if b.type == "tool_use"]
    return use.input


@pytest.mark.parametrize("pieces", [['{"city": "\\ude0', '0"}'], ['{"city": "\\ud83d\\ud8', '00"}']])
def test_a_surrogate_escape_cut_and_refused_does_not_fail_a_messages_clients_stream(
    gateway: Running, key: str, pieces: list[str]
) -> None:
    """An escape cut across fragments that completes to a lone surrogate is refused; the closing wrote the same
    escape back (its digits padded), and the SDK failed the whole stream (review mergerev34b)."""
    assert messages_input(gateway, key, pieces) == {"city": "", "_raw": "".join(pieces)}


def test_an_object_nested_150_deep_streams_to_a_messages_client_as_it_is(gateway: Running, key: str) -> None:
    text = '{"a":' + "[" * 149 + "]" * 149 + "}"
    assert messages_input(gateway, key, [text[i : i + 7] for i in range(0, len(text), 7)]) == orjson.loads(text)


def test_a_late_signature_of_gemini_2_5_reaches_a_messages_client_as_gemini_3s_does(gateway: Running, key: str) -> None:
    """Only Gemini 3 waited for a signature given after its call; Gemini 2.5 signs its calls too, where it thinks
    (review mergerev34b)."""
    ids = []
    for model in ("gemini-3-flash", "gemini-2.5-flash"):
        call = {"index": 0, "id": "function-call-1", "type": "function"}
        function = {"name": "get_weather", "arguments": '{"city":"Paris"}'}
        SCRIPTS[model] = {
            "stream": [
                chunk({"role": "assistant", "tool_calls": [{**call, "function": function}]}),
                chunk({"tool_calls": [{"index": 0, "extra_content": SIGNED}]}),
                chunk({}, "tool_calls"),
                usage_chunk(),
            ]
        }
        asked: Any = {"model": model, "max_tokens": 100, "messages": HI, "tools": MESSAGES_TOOLS}
        with anthropic_client(gateway, key).messages.stream(**asked) as stream:
            (use,) = [b for b in stream.get_final_message().content if b.type == "tool_use"]
        ids.append(use.id)
    assert ids[0] == ids[1] != "function-call-1", ids
