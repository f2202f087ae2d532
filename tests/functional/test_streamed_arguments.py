"""A call's arguments through `EventWriter` (`JsonPrefix.waits`, `cut_partial`) to the Anthropic SDK's
`messages.stream(...).get_final_message()`, against a scripted OpenAI-compatible upstream (review mergerev34c)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional.conftest import Running, anthropic_client
from tests.support.scripted import SCRIPTS, chunk, scripted_gateway, usage_chunk

MESSAGES_TOOLS: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
HI: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from scripted_gateway(tmp_path_factory.mktemp("streamed-arguments"), {"plain": "compatible"})


@pytest.fixture(scope="module")
def key(gateway: Running) -> str:
    return gateway.mint(name="streamed-arguments")


def streamed(gateway: Running, key: str, fragments: list[str], finish: str | None) -> Any:
    opened = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    events = [chunk({"role": "assistant", "tool_calls": [opened]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments]
    events += [chunk({}, finish), usage_chunk()] if finish else [usage_chunk()]
    SCRIPTS["plain"] = {"stream": events}
    with anthropic_client(gateway, key).messages.stream(
        model="plain", max_tokens=100, messages=HI, tools=MESSAGES_TOOLS
    ) as s:
        return s.get_final_message()


@pytest.mark.parametrize(
    ("fragments", "finish"),
    [([" "], "tool_calls"), (["\n", "  "], "tool_calls"), (["\n"], "length"), ([" "], None)],
    ids=["space-whole", "newlines-whole", "cut-by-max-tokens", "no-finish-reason"],
)
def test_arguments_of_whitespace_alone_do_not_fail_a_messages_clients_stream(
    gateway: Running, key: str, fragments: list[str], finish: str | None
) -> None:
    """Whitespace before the object now waits for the object (`waits`, TOP mode). But where no object comes (a call
    whose arguments are whitespace alone, or a call cut by `max_tokens` after its leading whitespace) the block's end
    (`_close`, not `broken`) relays the held whitespace alone, and jiter refuses it: the SDK fails the whole stream,
    "Unable to parse tool parameter JSON ... EOF while parsing a value". The same answer whole gives `{"_raw": " "}`
    (`_arguments`). D3 of review mergerev34b, fixed for an object that follows, not for one that does not."""
    message = streamed(gateway, key, fragments, finish)
    assert [b.type for b in message.content] == ["tool_use"]
    assert isinstance(message.content[0].input, dict)


def test_a_valid_object_after_leading_whitespace_streams_whole(gateway: Running, key: str) -> None:
    """The baseline: whitespace before an object goes with it."""
    message = streamed(gateway, key, ["\n ", " ", '{"city"', ': "Paris"}'], "tool_calls")
    assert message.content[0].input == {"city": "Paris"}


@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        (['{"c": "x\\ud8', "3d", "\\u", 'de00"}'], {"c": "x\U0001f600"}),
        (['{"c": "x\\ud83d\\ud8', '3d"}'], {"c": "x", "_raw": '{"c": "x\\ud83d\\ud83d"}'}),
        (['{"c": "\\', 'q"}'], {"c": "", "_raw": '{"c": "\\q"}'}),
        (["{" + '"a":' * 0 + '"d": ' + "[" * 199, "1" + "]" * 199 + "}"], {"d": [[1]]}),
    ],
    ids=["pair-cut", "high-after-high", "bad-escape", "depth-200"],
)
def test_escapes_and_depth_reach_a_messages_client(
    gateway: Running, key: str, fragments: list[str], expected: dict[str, Any]
) -> None:
    """The baseline: escapes cut anywhere, refused ones cut off (`cut_partial`), 200 levels as they are."""
    message = streamed(gateway, key, fragments, "tool_calls")
    got = message.content[0].input
    if "depth" in str(fragments[0][:3]) or len(fragments[0]) > 100:
        depth = 0
        value: Any = got["d"]
        while isinstance(value, list):
            depth, value = depth + 1, value[0]
        assert (depth, value) == (199, 1)
    else:
        assert got == expected
