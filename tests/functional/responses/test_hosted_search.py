"""The Responses API's hosted `web_search` tool (Codex sends it with every turn) and Chat Completions'
`web_search_options` on the deployments the gateway translates for, where the provider has a search of its own:
Claude on Anthropic (its web search tool, `max_uses` the request's limit) and Gemini (Grounding with Google Search).
The search runs there, and its answer comes back as OpenAI's does: each search a `web_search_call` item (its
`action`: the query and the sources), the text's citations `url_citation` annotations (Chat Completions: the
message's `annotations`), whole and streamed; the searches are charged at `web_search_usd` each and reserved for the
most the request allows. Before, the tool was left out and named dropped (`tools[web_search]`) on both: the model
answered without searching. A provider with no search of its own (Bedrock, DeepSeek, a Chat Completions server) is
still sent none (tests/functional/responses/test_search_reserve.py)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from handler.api.reasoning_seal import ReasoningSeal
from handler.pipeline.charges import DEFAULT_SEARCHES
from handler.schemas import TOOL_CONTEXT
from tests.functional.conftest import Running, anthropic_client, openai_client
from tests.functional.responses.fleet import PRICE, SEARCH_USD
from tests.functional.responses.test_responses_api import dropped
from tests.support.inprocess import serve

SEARCH: Any = [{"type": "web_search"}]
SEARCHED = {"claude": "anthropic", "gemini": "gemini"}  # (the fleet's model on each provider with a search)
URL = "https://example.com/"  # (the page both fakes' search finds)
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sent(running: Running, model: str) -> dict[str, Any]:
    body: dict[str, Any] = running.fakes[SEARCHED[model]].state.requests[-1]["json"]
    return body


def tokens_usd(usage: Any) -> float:
    return (usage.input_tokens * PRICE["input"] + usage.output_tokens * PRICE["output"]) / 1e6


def checked_answer(output: list[Any], text: str | None = None) -> None:
    """A searched answer's output: the search's `web_search_call`, done, then the text citing the page it found."""
    [search, message] = output
    assert (search.type, search.status, search.action.type) == ("web_search_call", "completed", "search")
    assert search.action.query == "fake search" and search.id.startswith("ws_")
    assert [source.url for source in search.action.sources or ()] == [URL]
    [part] = message.content
    [cited] = part.annotations
    assert (cited.type, cited.url, cited.start_index, cited.end_index) == ("url_citation", URL, 0, len(part.text))
    assert text is None or part.text == text


@pytest.mark.parametrize("model", sorted(SEARCHED))
def test_a_search_runs_where_the_provider_has_one(fleet: Running, model: str) -> None:
    key = fleet.mint(name=f"search-runs-{model}")
    raw = openai_client(fleet, key).responses.with_raw_response.create(model=model, input="Hi", tools=SEARCH)
    response = raw.parse()
    assert dropped(raw.headers) == []  # (it was `tools[web_search]`)
    checked_answer(response.output)
    tool = next(t for t in sent(fleet, model)["tools"] if "google_search" in t or t.get("name") == "web_search")
    if model == "claude":
        assert tool == {"type": "web_search_20250305", "name": "web_search", "max_uses": DEFAULT_SEARCHES}
    else:
        assert tool == {"google_search": {}}
    [line] = fleet.ledger(key)
    assert response.usage is not None
    assert line.cost_usd == pytest.approx(tokens_usd(response.usage) + SEARCH_USD)  # (one search, at its price)


@pytest.mark.parametrize("model", sorted(SEARCHED))
def test_a_streamed_search_comes_back_as_openai_streams_one(fleet: Running, model: str) -> None:
    key = fleet.mint(name=f"search-stream-{model}")
    events = list(openai_client(fleet, key).responses.create(model=model, input="Hi", tools=SEARCH, stream=True))
    kinds = [event.type for event in events]
    for kind in ("in_progress", "searching", "completed"):
        assert f"response.web_search_call.{kind}" in kinds
    [added] = [event for event in events if event.type == "response.output_text.annotation.added"]
    assert added.annotation.url == URL  # type: ignore[union-attr]
    final = events[-1]
    assert final.type == "response.completed"
    ordered = sorted(final.response.output, key=lambda item: item.type != "web_search_call")  # (Gemini's come last)
    checked_answer(ordered)
    done = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "web_search_call"]
    assert [item.id for item in done] == [ordered[0].id]
    [line] = fleet.ledger(key)
    assert line.cost_usd == pytest.approx(tokens_usd(final.response.usage) + SEARCH_USD)


def test_the_search_options_claude_takes_go_with_it_and_the_rest_are_named(fleet: Running) -> None:
    key = fleet.mint(name="search-options-claude")
    tool: Any = {
        "type": "web_search",
        "search_context_size": "high",
        "user_location": {"type": "approximate", "city": "Paris", "country": "FR", "timezone": "Europe/Paris"},
        "filters": {"allowed_domains": ["example.com"]},
    }
    raw = openai_client(fleet, key).responses.with_raw_response.create(
        model="claude", input="Hi", tools=[tool], extra_body={"max_tool_calls": 2}
    )
    assert raw.parse().status == "completed"
    assert dropped(raw.headers) == ["tools[web_search].search_context_size"]
    [search] = sent(fleet, "claude")["tools"]
    assert search == {
        "type": "web_search_20250305",
        "name": "web_search",
        "max_uses": 2,
        "user_location": {"type": "approximate", "city": "Paris", "country": "FR", "timezone": "Europe/Paris"},
        "allowed_domains": ["example.com"],
    }


def test_what_google_search_cannot_honour_is_named(fleet: Running) -> None:
    """Google Search takes no options: the location, the sites allowed, the context size and Codex's cached mode
    (`external_web_access: false`) are named dropped."""
    key = fleet.mint(name="search-options-gemini")
    tool: Any = {
        "type": "web_search",
        "search_context_size": "low",
        "user_location": {"type": "approximate", "city": "Paris"},
        "filters": {"allowed_domains": ["example.com"]},
        "external_web_access": False,
    }
    raw = openai_client(fleet, key).responses.with_raw_response.create(model="gemini", input="Hi", tools=[tool])
    checked_answer(raw.parse().output)
    assert dropped(raw.headers) == [
        f"tools[web_search].{name}"
        for name in ("search_context_size", "user_location", "filters.allowed_domains", "external_web_access")
    ]
    assert sent(fleet, "gemini")["tools"] == [{"google_search": {}}]


def test_gemini_before_3_keeps_the_functions_and_names_the_search(fleet: Running) -> None:
    """Gemini 2.5 refuses Google Search beside function declarations (a 400 for every Codex turn, which always offers
    its functions): the functions go, the search is named dropped, and no search is charged."""
    key = fleet.mint(name="search-with-functions")
    raw = openai_client(fleet, key).responses.with_raw_response.create(
        model="gemini", input="Hi", tools=[WEATHER, *SEARCH]
    )
    response = raw.parse()
    assert response.status == "completed" and dropped(raw.headers) == ["tools[web_search]"]
    assert [list(tool) for tool in sent(fleet, "gemini")["tools"]] == [["functionDeclarations"]]
    [line] = fleet.ledger(key)
    assert response.usage is not None and line.cost_usd == pytest.approx(tokens_usd(response.usage))


def test_claude_takes_the_search_beside_the_functions(fleet: Running) -> None:
    key = fleet.mint(name="search-with-functions-claude")
    raw = openai_client(fleet, key).responses.with_raw_response.create(
        model="claude", input="Hi", tools=[WEATHER, *SEARCH]
    )
    assert dropped(raw.headers) == []
    checked_answer(raw.parse().output)
    assert [tool["name"] for tool in sent(fleet, "claude")["tools"]] == ["get_weather", "web_search"]


@pytest.mark.parametrize("model", ["claude", "gemini-3"])
def test_the_searches_a_translation_runs_are_held_against_the_max_cost(fleet: Running, model: str) -> None:
    """The most searches the request allows (ten unset, `max_tool_calls`) at $0.01 each are in its worst case."""
    key = fleet.mint(name=f"search-held-{model}")
    body = {"model": model, "input": "Hi", "max_output_tokens": 16, "tools": SEARCH}
    headers = {"authorization": f"Bearer {key}", "x-gateway-max-cost-usd": "0.05"}
    refused = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    assert refused.status_code == 402 and "worst-case cost $0.1" in refused.json()["error"]["message"], refused.text
    four = {**body, "max_tool_calls": 4}
    assert httpx.post(f"{fleet.url}/v1/responses", json=four, headers=headers, timeout=30).status_code == 200


def test_gemini_25_is_held_the_one_grounded_prompt_it_bills(fleet: Running) -> None:
    """Gemini before 3 bills an answer's searches as one grounded prompt, however many queries it ran: one is held,
    not the ten a request may run (a request was held $0.35 for Google's $0.035). Found by review (mergerev36)."""
    key = fleet.mint(name="search-held-gemini-25")
    body = {"model": "gemini", "input": "Hi", "max_output_tokens": 16, "tools": SEARCH}
    capped = {"authorization": f"Bearer {key}", "x-gateway-max-cost-usd": "0.005"}
    refused = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=capped, timeout=30)
    assert refused.status_code == 402 and "worst-case cost $0.01" in refused.json()["error"]["message"], refused.text
    headers = {**capped, "x-gateway-max-cost-usd": "0.02"}
    assert httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", sorted(SEARCHED))
def test_chat_completions_search_options_run_there_charged_per_search(fleet: Running, model: str, stream: bool) -> None:
    """`web_search_options` on Claude or Gemini: their own search runs, its citations are the message's
    `annotations` (a stream's delta carries them, as OpenAI's search models' do), and each search is charged, not
    OpenAI's per-request fee (it was left out and named: `web_search_options`)."""
    key = fleet.mint(name=f"chat-search-{model}-{stream}")
    sdk = openai_client(fleet, key)
    asked: Any = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    options = {"web_search_options": {"user_location": {"type": "approximate", "approximate": {"city": "Paris"}}}}
    if stream:
        with sdk.chat.completions.with_streaming_response.create(
            **asked, stream=True, extra_body=options, stream_options={"include_usage": True}
        ) as raw:
            names = dropped(raw.headers)
            chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        extras = [c.choices[0].delta.model_extra or {} for c in chunks if c.choices]
        [annotations] = [extra["annotations"] for extra in extras if extra.get("annotations")]
        usage = next(c.usage for c in chunks if c.usage)
    else:
        raw_answer = sdk.chat.completions.with_raw_response.create(**asked, extra_body=options)
        names = dropped(raw_answer.headers)
        message = raw_answer.parse().choices[0].message
        text = message.content or ""
        annotations = [a.model_dump() for a in message.annotations or ()]
        usage = raw_answer.parse().usage
    assert names == ([] if model == "claude" else ["web_search_options.user_location"])
    [cited] = annotations
    assert cited["type"] == "url_citation" and cited["url_citation"]["url"] == URL
    assert (cited["url_citation"]["start_index"], cited["url_citation"]["end_index"]) == (0, len(text))
    [line] = fleet.ledger(key)
    assert usage is not None
    tokens = (usage.prompt_tokens * PRICE["input"] + usage.completion_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens + SEARCH_USD)


def test_a_provider_without_a_search_is_still_sent_none(fleet: Running) -> None:
    key = fleet.mint(name="search-bedrock")
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(fleet, key).responses.create(
            model="bedrock-claude", input="Hi", tools=SEARCH, extra_headers={"x-gateway-strict": "true"}
        )
    assert "tools[web_search]" in str(caught.value.body)


def test_a_search_in_a_stream_cut_short_is_charged(fleet: Running) -> None:
    """Claude's stream breaks off once its search's result came (the fake's `search-cut`): the search is billed all
    the same, as a Messages stream passed through is charged it. The translated stream was charged its tokens alone
    ($0.000018 of $0.010018): the search that ran escaped the ledger."""
    key = fleet.mint(name="search-cut")
    body = {"model": "claude", "input": "Hi", "tools": SEARCH, "user": "search-cut", "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30) as answer:
        text = b"".join(answer.iter_bytes()).decode()
    assert "response.web_search_call.completed" in text and "response.failed" in text
    [line] = fleet.ledger(key)
    tokens = (line.input_tokens * PRICE["input"] + line.output_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens + SEARCH_USD)


@pytest.mark.parametrize("place", ["Paris", ["Paris"], 5])
def test_a_search_location_of_odd_shape_is_no_location(fleet: Running, place: Any) -> None:
    """`web_search_options.user_location.approximate` that is not an object is read as no location, as any option
    of an odd shape is: Claude searches without one. It was read as one (`.get` on the string): a 500."""
    key = fleet.mint(name=f"chat-search-odd-location-{type(place).__name__}")
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": "Hi"}],
        "web_search_options": {"user_location": {"type": "approximate", "approximate": place}},
    }
    answer = httpx.post(
        f"{fleet.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    [search] = [tool for tool in sent(fleet, "claude")["tools"] if tool.get("name") == "web_search"]
    assert "user_location" not in search


@pytest.mark.parametrize("functions", [[], [WEATHER]])
@pytest.mark.parametrize("model", sorted(SEARCHED))
def test_tool_choice_none_forbids_the_search_too(fleet: Running, model: str, functions: list[Any]) -> None:
    """OpenAI's `tool_choice: none` forbids every tool, the hosted ones included: the search is not sent (named
    dropped), runs nowhere, and is neither reserved nor charged. With the search the only tool, the translation
    carried no choice at all, and Claude and Gemini were sent their search tool and ran it: one search charged, and
    ten held ($0.10, a 402 under `x-gateway-max-cost-usd: 0.05`)."""
    key = fleet.mint(name=f"search-none-{model}-{len(functions)}")
    headers = {"x-gateway-max-cost-usd": "0.05"}
    raw = openai_client(fleet, key).responses.with_raw_response.create(
        model=model, input="Hi", tools=[*SEARCH, *functions], tool_choice="none", extra_headers=headers
    )
    response = raw.parse()
    assert "tools[web_search]" in dropped(raw.headers)
    assert [item.type for item in response.output] == ["message"]
    body = sent(fleet, model)
    assert "web_search" not in orjson.dumps(body).decode() and "google_search" not in orjson.dumps(body).decode()
    [line] = fleet.ledger(key)
    assert response.usage is not None
    assert line.cost_usd == pytest.approx(tokens_usd(response.usage))  # (no search)


def test_tool_choice_none_holds_no_search_where_the_request_goes_as_written(fleet: Running) -> None:
    """OpenAI's own Responses API is sent the request as written, its search beside `tool_choice: none`, and runs
    none: nothing is held for ten searches that cannot run (a 402 under `x-gateway-max-cost-usd: 0.05`, $0.108293
    held), and the line is the tokens alone."""
    key = fleet.mint(name="search-none-native")
    raw = openai_client(fleet, key).responses.with_raw_response.create(
        model="gpt", input="Hi", tools=SEARCH, tool_choice="none", extra_headers={"x-gateway-max-cost-usd": "0.05"}
    )
    response = raw.parse()
    assert response.status == "completed" and [item.type for item in response.output] == ["message"]
    assert fleet.fakes["openai"].state.requests[-1]["json"]["tool_choice"] == "none"
    [line] = fleet.ledger(key)
    assert response.usage is not None
    assert line.cost_usd == pytest.approx(tokens_usd(response.usage))


ONLY_WEATHER: Any = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", [*sorted(SEARCHED), "gpt"])
def test_an_allowed_tools_choice_without_the_search_runs_none(fleet: Running, model: str, stream: bool) -> None:
    """An `allowed_tools` choice that allows the functions and not the search leaves the model no search to run (as
    OpenAI's does): a translation is sent none, Claude's `web_search` and Gemini's `google_search` (nothing named: the
    choice is honoured), OpenAI's Responses API gets the request as written, and none is reserved or charged. Ten
    searches were held all the same ($0.10, a 402 under `x-gateway-max-cost-usd: 0.05`), and Claude was sent its
    search tool beside the one function allowed."""
    key = fleet.mint(name=f"search-not-allowed-{model}-{stream}")
    body = {"model": model, "input": "Hi", "tools": [*SEARCH, WEATHER], "tool_choice": ONLY_WEATHER, "stream": stream}
    headers = {"authorization": f"Bearer {key}", "x-gateway-max-cost-usd": "0.05"}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert dropped(answer.headers) == []
    provider = "openai" if model == "gpt" else SEARCHED[model]
    sent_body = orjson.dumps(fleet.fakes[provider].state.requests[-1]["json"]).decode()
    if model == "gpt":
        assert '"allowed_tools"' in sent_body  # (as written)
    else:
        assert "web_search" not in sent_body and "google_search" not in sent_body
    assert "web_search_call" not in answer.text
    [line] = fleet.ledger(key)
    tokens = (line.input_tokens * PRICE["input"] + line.output_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens)  # (no search)


WEATHER_OR_SEARCH: Any = {**ONLY_WEATHER, "tools": [*SEARCH, *ONLY_WEATHER["tools"]]}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tools", [[*SEARCH, WEATHER], SEARCH], ids=["beside_a_function", "alone"])
@pytest.mark.parametrize("model", ["claude", "gemini-3"])
def test_an_allowed_tools_choice_with_the_search_names_nothing_where_it_runs(
    fleet: Running, model: str, tools: Any, stream: bool
) -> None:
    """An `allowed_tools` choice that allows the search (and the function beside it) where the translation carries
    the search: the search runs and the choice is honoured, so nothing is named. The search the translation took for
    itself was named all the same, `tool_choice.tools` beside the function and `tool_choice` alone; where the search is
    not sent (Gemini 2.5 beside a function) it is named once, `tools[web_search]`."""
    key = fleet.mint(name=f"search-allowed-{model}-{len(tools)}-{stream}")
    allowed = WEATHER_OR_SEARCH if len(tools) > 1 else {**WEATHER_OR_SEARCH, "tools": SEARCH}
    body = {"model": model, "input": "Hi", "tools": tools, "tool_choice": allowed, "stream": stream}
    answer = httpx.post(f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert dropped(answer.headers) == []
    assert "web_search_call" in answer.text
    if len(tools) > 1:
        older = {**body, "model": "gemini"}
        answer = httpx.post(f"{fleet.url}/v1/responses", json=older, headers={"authorization": f"Bearer {key}"})
        assert dropped(answer.headers) == ["tools[web_search]"]


MESSAGES_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search"}


def messages(fleet: Running, key: str, body: dict[str, Any], cap: str | None = None) -> httpx.Response:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", **({"x-gateway-max-cost-usd": cap} if cap else {})}
    payload = {"max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **body}
    return httpx.post(f"{fleet.url}/v1/messages", json=payload, headers=headers, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropics_search_tool_runs_as_geminis_search(fleet: Running, stream: bool) -> None:
    """A Messages request with Anthropic's web search tool (Claude Code's WebSearch sends it alone), translated to
    Gemini: Google Search runs, its searches in the usage as Claude's are (`server_tool_use.web_search_requests`),
    charged at `web_search_usd` each, and the one grounded prompt Gemini 2.5 bills reserved for, whatever the tool's
    `max_uses` (it bills an answer's searches as one). The sites blocked are Google Search's
    `excludeDomains`; the location goes nowhere Gemini takes it: named. It was left out and named
    (`tools.web_search_20250305`): the model answered without searching."""
    key = fleet.mint(name=f"messages-search-gemini-{stream}")
    tool = {**MESSAGES_SEARCH, "max_uses": 3, "user_location": {"type": "approximate", "city": "Paris"}}
    answer = messages(
        fleet, key, {"model": "gemini", "tools": [{**tool, "blocked_domains": ["x.com"]}], "stream": stream}
    )
    assert answer.status_code == 200, answer.text
    assert dropped(answer.headers) == ["tools.web_search_20250305.user_location"]
    assert sent(fleet, "gemini")["tools"] == [{"google_search": {"excludeDomains": ["x.com"]}}]
    assert '"web_search_requests":1' in answer.text.replace(" ", "")
    [line] = fleet.ledger(key)
    tokens = (line.input_tokens * PRICE["input"] + line.output_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens + SEARCH_USD)
    held = messages(fleet, key, {"model": "gemini", "tools": [{**MESSAGES_SEARCH, "max_uses": 10}]}, cap="0.005")
    assert held.status_code == 402 and "worst-case cost $0.01" in held.text, held.text  # (one grounded prompt held)


@pytest.mark.parametrize("stream", [False, True])
def test_geminis_search_comes_back_as_claudes_search_blocks(fleet: Running, stream: bool) -> None:
    """A Messages request's web search run by Gemini comes back as Claude's does: a `server_tool_use` block
    (`name: "web_search"`, its `input.query`: Gemini's `webSearchQueries`) and its `web_search_tool_result` (the
    grounding's pages, `url` and `title`; `encrypted_content` empty: Gemini seals nothing), ahead of the text they
    ground (streamed, after it: Gemini grounds the text as it ends, and the text is not held back for it), parsed by
    the official SDK whole and streamed (its `get_final_message`). The answer held the text and the count alone.
    Sent back in the next turn (Claude Code keeps them), they go to no model and are not named."""
    key = fleet.mint(name=f"messages-search-blocks-{stream}")
    sdk = anthropic_client(fleet, key).messages
    asked: Any = {"model": "gemini", "max_tokens": 64, "tools": [MESSAGES_SEARCH]}
    first: Any = [{"role": "user", "content": "Hi"}]
    if stream:
        with sdk.stream(messages=first, **asked) as events:
            answer = events.get_final_message()
    else:
        answer = sdk.create(messages=first, **asked)
    searched = ["server_tool_use", "web_search_tool_result"]
    assert [block.type for block in answer.content] == (["text", *searched] if stream else [*searched, "text"])
    use, found = (block for block in answer.content if block.type in searched)
    (text,) = (block for block in answer.content if block.type == "text")
    assert use.type == "server_tool_use" and found.type == "web_search_tool_result" and text.type == "text"
    assert (use.name, use.input, found.tool_use_id) == ("web_search", {"query": "fake search"}, use.id)
    assert isinstance(found.content, list)
    assert [(page.url, page.title, page.encrypted_content) for page in found.content] == [(URL, "example.com", "")]
    assert text.text == "Hello from fake Gemini." and answer.usage.server_tool_use is not None
    assert answer.usage.server_tool_use.web_search_requests == 1
    turns: Any = [*first, {"role": "assistant", "content": [b.model_dump() for b in answer.content]}]
    turns.append({"role": "user", "content": "More?"})
    raw = sdk.with_raw_response.create(messages=turns, extra_headers={"x-gateway-strict": "true"}, **asked)
    assert raw.parse().content and "x-gateway-dropped-params" not in raw.headers
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": "Hello from fake Gemini."}]}  # (no search as text)


def test_anthropics_search_tool_goes_to_no_provider_without_a_search(fleet: Running) -> None:
    """DeepSeek has no search: the tool is named dropped, as before, and none is held (ten searches, $0.10, would be
    a 402 under `x-gateway-max-cost-usd: 0.05`) or charged."""
    key = fleet.mint(name="messages-search-deepseek")
    answer = messages(fleet, key, {"model": "deepseek", "tools": [MESSAGES_SEARCH]}, cap="0.05")
    assert answer.status_code == 200, answer.text
    assert dropped(answer.headers) == ["tools.web_search_20250305"]
    assert "web_search" not in orjson.dumps(fleet.fakes["openai"].state.requests[-1]["json"]).decode()
    [line] = fleet.ledger(key)
    tokens = (line.input_tokens * PRICE["input"] + line.output_tokens * PRICE["output"]) / 1e6
    assert line.cost_usd == pytest.approx(tokens)


@pytest.mark.parametrize("model", ["claude", "gemini", "gpt"])
@pytest.mark.parametrize("location", ["Paris", ["Paris"]])
def test_a_search_tools_location_that_is_no_object_is_never_the_gateways_500(
    fleet: Running, model: str, location: Any
) -> None:
    """A web search tool whose `user_location` is a string or a list (a client's mistake, Anthropic's 400) is read
    as no location where the search is carried, whatever the model: it was an AttributeError, the gateway's 500."""
    key = fleet.mint(name=f"search-location-{model}-{type(location).__name__}")
    answer = messages(fleet, key, {"model": model, "tools": [{**MESSAGES_SEARCH, "user_location": location}]})
    assert answer.status_code != 500 and "the gateway failed to handle this request" not in answer.text, answer.text


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_3_takes_the_search_beside_the_functions(fleet: Running, stream: bool) -> None:
    """Codex offers its functions with the search on every turn. Gemini 3 takes Google Search beside function
    declarations in its tool context (`toolConfig.includeServerSideToolInvocations`, which it requires for the two
    together): the search runs, comes back as OpenAI's does (its own `toolCall` and `toolResponse` parts read as no
    text), and is charged; nothing is named. It was left out and named (`tools[web_search]`) on every Gemini."""
    key = fleet.mint(name=f"search-with-functions-gemini-3-{stream}")
    sdk = openai_client(fleet, key)
    if stream:
        events = list(sdk.responses.create(model="gemini-3", input="Hi", tools=[WEATHER, *SEARCH], stream=True))
        assert events[-1].type == "response.completed"
        response = events[-1].response
        output = sorted(response.output, key=lambda item: item.type != "web_search_call")  # (Gemini's come last)
    else:
        raw = sdk.responses.with_raw_response.create(model="gemini-3", input="Hi", tools=[WEATHER, *SEARCH])
        assert dropped(raw.headers) == []
        response = raw.parse()
        output = response.output
    assert output[-1 if stream else 0].type == "reasoning"  # (the search's own parts, for the next turn)
    checked_answer([item for item in output if item.type != "reasoning"])
    body = fleet.fakes["gemini"].state.requests[-1]["json"]
    assert [list(tool) for tool in body["tools"]] == [["functionDeclarations"], ["google_search"]]
    assert body["toolConfig"]["includeServerSideToolInvocations"] is True
    [line] = fleet.ledger(key)
    assert response.usage is not None
    assert line.cost_usd == pytest.approx(tokens_usd(response.usage) + SEARCH_USD)


def test_a_gemini_3_search_sent_back_in_the_streams_order_is_history(fleet: Running) -> None:
    """Gemini's stream gives its search after the message it grounds (`[message, web_search_call]`), and the stored
    response keeps that order. Codex (`store: false`) sends the items back as it got them, followed by its next
    question; a `previous_response_id` continues the stored ones. The search's results are in that message, so it
    is left out unnamed, and the turn goes under `x-gateway-strict`: it was named (`input[web_search_call]`, a
    search no text of its turn follows) on every later turn, and refused with a 400 under strict."""
    key = fleet.mint(name="search-history-gemini-3")
    sdk = openai_client(fleet, key)
    events = list(sdk.responses.create(model="gemini-3", input="Hi", tools=[WEATHER, *SEARCH], stream=True))
    items = [event.item.model_dump(exclude_none=True) for event in events if event.type == "response.output_item.done"]
    assert [item["type"] for item in items] == ["message", "web_search_call", "reasoning"]
    completed = events[-1]
    assert completed.type == "response.completed"
    kinds = ["message", "web_search_call", "reasoning"]
    assert [item.type for item in completed.response.output] == kinds  # (stored so)
    by_value: Any = {"input": [{"role": "user", "content": "Hi"}, *items, {"role": "user", "content": "More?"}]}
    stored: Any = {"input": "More?", "previous_response_id": completed.response.id}
    for again in (by_value, stored):
        for strict in ({}, {"x-gateway-strict": "true"}):
            raw = sdk.responses.with_raw_response.create(
                model="gemini-3", tools=[WEATHER, *SEARCH], store=False, extra_headers=strict, **again
            )
            assert raw.parse().status == "completed" and dropped(raw.headers) == []
            contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
            assert [content["role"] for content in contents] == ["user", "model", "user"]
            assert [list(part)[0] for part in contents[1]["parts"]] == ["toolCall", "toolResponse", "text"]


SEARCH_CALL_PART = {"toolCall": {"id": "srch1", "toolType": "GOOGLE_SEARCH_WEB", "args": {"queries": ["fake search"]}}}


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_3s_own_search_parts_come_back_with_the_next_turn(fleet: Running, stream: bool) -> None:
    """Gemini 3's tool context answers with the search's own `toolCall` (signed) and `toolResponse` parts, which
    Google's SDK says a client passes back in the turn that follows. Codex (`store: false`) sends back only a
    `web_search_call`'s `status` and `action` (its id is never serialized): the parts ride, sealed, in a reasoning
    item's `encrypted_content`, which Codex sends back whole, and the next turn gives Gemini the model turn with them
    (the call with its signature, then its response, ahead of the function call they led to), whole and streamed.
    They were left out, and a search whose turn had no text was named (`input[web_search_call]`)."""
    key = fleet.mint(name=f"search-context-gemini-3-{stream}")
    sdk = openai_client(fleet, key)
    first: Any = {"role": "user", "content": 'CALL get_weather {"city": "Paris"}'}
    asked: Any = {"model": "gemini-3", "tools": [WEATHER, *SEARCH], "store": False}
    asked["include"] = ["reasoning.encrypted_content"]
    if stream:
        events = list(sdk.responses.create(input=[first], stream=True, **asked))
        output = events[-1].response.output
    else:
        output = sdk.responses.create(input=[first], **asked).output
    assert {item.type for item in output} == {"reasoning", "function_call"}
    [call] = [item for item in output if item.type == "function_call"]
    codex: list[Any] = []  # (the items as Codex keeps them: a search's id is not serialized)
    for item in output:
        kept = item.model_dump(exclude_none=True)
        codex.append({k: v for k, v in kept.items() if k != "id"} if item.type == "web_search_call" else kept)
    answered = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    raw = sdk.responses.with_raw_response.create(
        input=[first, *codex, answered], extra_headers={"x-gateway-strict": "true"}, **asked
    )
    assert raw.parse().status == "completed" and dropped(raw.headers) == []
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    parts = contents[1]["parts"]
    assert parts[0] == {**SEARCH_CALL_PART, "thoughtSignature": "c2VhcmNoLXNpZw=="}
    assert parts[1]["toolResponse"]["id"] == "srch1"
    assert [list(part)[0] for part in parts[2:]] == ["functionCall"]


MESSAGES_WEATHER: Any = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CALL_WEATHER = 'CALL get_weather {"city": "Paris"}'


def sealed_search_answer(fleet: Running, key: str, asked: str, stream: bool) -> tuple[Any, list[Any]]:
    """A Messages turn to Gemini 3 with the search beside a function (its tool context: the search's own `toolCall`
    and `toolResponse` parts), by the official SDK whole or streamed, and the conversation the client sends next: its
    question, the answer's blocks as the SDK gives them (`model_dump`, as Claude Code keeps them as they came), and
    the function's result (a call) or a question."""
    sdk = anthropic_client(fleet, key).messages
    first: Any = [{"role": "user", "content": asked}]
    tools: Any = [MESSAGES_SEARCH, MESSAGES_WEATHER]
    if stream:
        with sdk.stream(model="gemini-3", max_tokens=64, messages=first, tools=tools) as events:
            answer = events.get_final_message()
    else:
        answer = sdk.create(model="gemini-3", max_tokens=64, messages=first, tools=tools)
    calls = [block for block in answer.content if block.type == "tool_use"]
    after: Any = [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"}] if calls else "More?"
    turns = [*first, {"role": "assistant", "content": [b.model_dump() for b in answer.content]}]
    return answer, [*turns, {"role": "user", "content": after}]


def search_results(content: list[Any]) -> list[Any]:
    return [result for block in content if block.type == "web_search_tool_result" for result in block.content]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("asked", ["Hi", CALL_WEATHER], ids=["grounded_text", "function_call"])
def test_gemini_3s_own_search_parts_ride_sealed_in_a_messages_answer(fleet: Running, asked: str, stream: bool) -> None:
    """A Messages answer from Gemini 3 that searched carries the search's own parts (its signed `toolCall`, its
    `toolResponse`) sealed in the first search result's `encrypted_content`, the field Anthropic seals its pages in
    for later turns, which the SDK and Claude Code send back verbatim; every other result's is empty, as before. An
    answer whose search named no page (its function call: Gemini grounds nothing) carries them in a result of no page
    (`url` and `title` empty), which the SDK parses, whole and streamed. Sent back, the next turn gives Gemini 3 the
    model turn with the parts ahead of its text or call, as the Chat and Responses routes do, and names nothing. The
    Messages answer carried none (every `encrypted_content` empty; no result at all beside a call), and the next turn
    went to Gemini 3 without them."""
    key = fleet.mint(name=f"messages-search-context-{stream}-{asked[:4]}")
    answer, turns = sealed_search_answer(fleet, key, asked, stream)
    [carrier, *others] = search_results(answer.content)
    assert carrier.encrypted_content.startswith("gwr2.") and [other.encrypted_content for other in others] == []
    if asked == CALL_WEATHER:
        assert (carrier.url, carrier.title) == ("", "")
        kinds = ["tool_use", "server_tool_use", "web_search_tool_result"] if stream else ["server_tool_use"]
        assert [block.type for block in answer.content][: len(kinds)] == kinds
    else:
        assert (carrier.url, carrier.title) == (URL, "example.com")
    raw = anthropic_client(fleet, key).messages.with_raw_response.create(
        model="gemini-3",
        max_tokens=64,
        messages=turns,
        tools=[MESSAGES_SEARCH, MESSAGES_WEATHER],
        extra_headers={"x-gateway-strict": "true"},
    )
    assert raw.parse().content and "x-gateway-dropped-params" not in raw.headers
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    parts = contents[1]["parts"]
    assert parts[0] == {**SEARCH_CALL_PART, "thoughtSignature": "c2VhcmNoLXNpZw=="}
    assert parts[1]["toolResponse"]["id"] == "srch1"
    assert [list(part)[0] for part in parts[2:]] == (["functionCall"] if asked == CALL_WEATHER else ["text"])


@pytest.mark.parametrize("model", ["gemini", "gpt", "claude"])
def test_gemini_3s_sealed_search_parts_go_to_no_other_model(fleet: Running, model: str) -> None:
    """The same conversation sent to Gemini 2.5 (which refuses the tool context), to an OpenAI deployment or to Claude
    carries none of the search's own parts: only Gemini 3 takes them back (Claude gets the history as sent, the parts
    still sealed). The history carried no parts to leave out before."""
    key = fleet.mint(name=f"messages-search-context-elsewhere-{model}")
    answer, turns = sealed_search_answer(fleet, key, "Hi", stream=False)
    assert search_results(answer.content)[0].encrypted_content.startswith("gwr2.")
    sdk = anthropic_client(fleet, key).messages
    again = sdk.create(model=model, max_tokens=64, messages=turns, tools=[MESSAGES_SEARCH, MESSAGES_WEATHER])
    assert again.content
    provider = {"gemini": "gemini", "gpt": "openai", "claude": "anthropic"}[model]
    sent = orjson.dumps(fleet.fakes[provider].state.requests[-1]["json"]).decode()
    assert "toolCall" not in sent and "c2VhcmNoLXNpZw==" not in sent and "srch1" not in sent
    if model == "gemini":
        contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
        assert contents[1] == {"role": "model", "parts": [{"text": "Hello from fake Gemini."}]}


@pytest.mark.parametrize("whose", ["altered", "another_gateways"])
def test_a_search_result_seal_that_does_not_open_is_left_out_and_named(fleet: Running, whose: str) -> None:
    """A sealed search result altered, or sealed by another gateway (another key), opens nothing: the turn goes to
    Gemini 3 without the parts, answered as usual (never a 500), and the seal is named, as a Responses reasoning
    item's is (`messages.web_search_tool_result.encrypted_content`; a 400 under `x-gateway-strict`, as there). It was
    not read at all: the turn went without the parts, and nothing was named."""
    key = fleet.mint(name=f"messages-search-context-{whose}")
    _, turns = sealed_search_answer(fleet, key, "Hi", stream=False)
    [result] = turns[1]["content"][1]["content"]
    sealed = result["encrypted_content"]
    assert sealed.startswith("gwr2.")
    if whose == "altered":
        flipped = "A" if sealed[20] != "A" else "B"  # (a character of the nonce and ciphertext: the tag fails)
        result["encrypted_content"] = sealed[:20] + flipped + sealed[21:]
    else:
        result["encrypted_content"] = ReasoningSeal(b"another gateway").seal(
            {"fields": {TOOL_CONTEXT: [SEARCH_CALL_PART]}}
        )
    sdk = anthropic_client(fleet, key).messages
    asked: Any = {
        "model": "gemini-3",
        "max_tokens": 64,
        "messages": turns,
        "tools": [MESSAGES_SEARCH, MESSAGES_WEATHER],
    }
    raw = sdk.with_raw_response.create(**asked)
    assert raw.parse().content[-1].type == "text"
    assert dropped(raw.headers) == ["messages.web_search_tool_result.encrypted_content"]
    contents = fleet.fakes["gemini"].state.requests[-1]["json"]["contents"]
    assert contents[1] == {"role": "model", "parts": [{"text": "Hello from fake Gemini."}]}
    with pytest.raises(anthropic.BadRequestError):
        sdk.create(**asked, extra_headers={"x-gateway-strict": "true"})


# Claude pauses its turn (`pause_turn`, its search loop at Anthropic's limit of iterations) after writing a search's
# query, before its result: whole, and streamed (the query in an `input_json_delta`).
PAUSED_START: Any = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": []}
PAUSED_START |= {"stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}
PAUSED_SEARCH = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"}
PAUSED_USAGE = {"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 0}}


def paused_sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps({"type": event, **data}) + b"\n\n"


def paused_search(request: httpx.Request) -> httpx.Response:
    """Claude's answer: "Let me search.", then a search's query, and its turn paused before the result."""
    if not orjson.loads(request.content).get("stream"):
        content = [{"type": "text", "text": "Let me search."}, {**PAUSED_SEARCH, "input": {"query": "x"}}]
        whole = {**PAUSED_START, "content": content, "stop_reason": "pause_turn", "usage": PAUSED_USAGE}
        return httpx.Response(200, json=whole)
    text = {"type": "text_delta", "text": "Let me search."}
    query = {"type": "input_json_delta", "partial_json": '{"query": "x"}'}
    body = b"".join(
        [
            paused_sse("message_start", {"message": PAUSED_START}),
            paused_sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            paused_sse("content_block_delta", {"index": 0, "delta": text}),
            paused_sse("content_block_stop", {"index": 0}),
            paused_sse("content_block_start", {"index": 1, "content_block": {**PAUSED_SEARCH, "input": {}}}),
            paused_sse("content_block_delta", {"index": 1, "delta": query}),
            paused_sse("content_block_stop", {"index": 1}),
            paused_sse("message_delta", {"delta": {"stop_reason": "pause_turn"}, "usage": PAUSED_USAGE}),
            paused_sse("message_stop", {}),
        ]
    )
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


async def test_a_paused_search_is_the_same_item_streamed_as_whole() -> None:
    """Claude's turn paused after a search's query: its whole Responses answer held the `web_search_call` (status
    `searching`, its query), which a client sending back the items it got (Codex, `store: false`) sends back as
    history; its stream never announced it, and its `response.completed` lacked it, so the same answer was different
    history by `stream` (found by review). The stream gives it at the answer's end, as the whole answer keeps it."""
    served = await serve(
        paused_search,
        {"m": {"deployments": [{"provider": "openai", "model": "claude-haiku-4-5"}], "price": PRICE}},
        provider={"type": "anthropic", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up"},
    )
    body = {"model": "m", "input": "hi", "tools": SEARCH}
    whole = await served.post("/v1/responses", body)
    streamed = await served.post("/v1/responses", {**body, "stream": True})
    await served.gateway.aclose()
    assert whole.status_code == streamed.status_code == 200, (whole.text, streamed.text)
    events = [orjson.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    added = [event["item"] for event in events if event["type"] == "response.output_item.added"]
    assert "web_search_call" in [item["type"] for item in added], streamed.text

    def searches(output: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        calls = [item for item in output if item["type"] == "web_search_call"]
        return [(call["status"], call["action"]["query"]) for call in calls]

    completed = events[-1]["response"]
    assert events[-1]["type"] == "response.completed"
    assert searches(completed["output"]) == searches(whole.json()["output"]) == [("searching", "x")]
    assert sorted(item["type"] for item in completed["output"]) == sorted(
        item["type"] for item in whole.json()["output"]
    )
