"""Stored responses: `store`, `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`, on each store."""

from __future__ import annotations

import base64
import itertools
import os
from collections.abc import Sequence
from typing import Any

import httpx
import openai
import orjson
import pytest

from adapters.store import dynamo_responses
from handler.api.responses_routes import MAX_KEPT_READS
from handler.entry.cli import main
from handler.ports import StoredResponse, StoreError
from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, fresh_minute, openai_client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def child_of(running: Running, parent: str) -> str:
    answer = httpx.post(f"{running.url}/v1/keys", json={"name": "child"}, headers=bearer(parent))
    assert answer.status_code in (200, 201), answer.text
    key: str = answer.json()["key"]
    return key


def test_a_stored_response_is_read_continued_and_deleted(on_each_store: Running) -> None:
    running = on_each_store
    key = running.mint(name="store")
    sdk = openai_client(running, key)
    first = sdk.responses.create(model="gpt-4o-mini", input="My name is Ada.", metadata={"topic": "names"})
    again = sdk.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == TEXT and again.metadata == {"topic": "names"}
    assert again.usage is not None and again.usage.output_tokens == 7

    second = sdk.responses.create(model="gpt-4o-mini", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = running.fakes["openai"].state.requests[-1]["json"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "My name is Ada." and sent[1]["content"] == TEXT
    items = sdk.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message", "message", "message"]

    deleted = httpx.delete(f"{running.url}/v1/responses/{first.id}", headers=bearer(key))
    assert deleted.status_code == 200 and deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:  # (OpenAI's 400 `previous_response_not_found`)
        sdk.responses.create(model="gpt-4o-mini", input="And now?", previous_response_id=first.id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "previous_response_id"
    assert caught.value.body["code"] == "previous_response_not_found"


def test_of_deletes_racing_one_deletes_and_the_others_find_nothing(on_each_store: Running) -> None:
    """Each delete looked the response up, then deleted it, and answered `deleted: true` whatever the store
    said: deletes racing each other all passed the look-up, and all said they deleted it."""
    import asyncio

    running = on_each_store
    key = running.mint(name="racing-deletes")
    made = openai_client(running, key).responses.create(model="gpt-4o-mini", input="Hi")

    async def race() -> list[int]:
        async with httpx.AsyncClient(headers=bearer(key), timeout=30) as client:
            url = f"{running.url}/v1/responses/{made.id}"
            return [answer.status_code for answer in await asyncio.gather(*(client.delete(url) for _ in range(6)))]

    assert sorted(asyncio.run(race())) == [200, 404, 404, 404, 404, 404]


def test_only_the_maker_and_its_ancestors_see_a_response(on_each_store: Running) -> None:
    running = on_each_store
    parent = running.mint(name="parent")
    child = child_of(running, parent)
    stranger = running.mint(name="stranger")
    made = openai_client(running, child).responses.create(model="gpt-4o-mini", input="Hi")
    url = f"{running.url}/v1/responses/{made.id}"
    assert httpx.get(url, headers=bearer(parent)).json()["id"] == made.id
    for outsider in (stranger, child_of(running, child)):  # another key, and the maker's own child
        answer = httpx.get(url, headers=bearer(outsider))
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
        assert httpx.delete(url, headers=bearer(outsider)).status_code == 404
        continued: Any = {"model": "gpt-4o-mini", "input": "Hi", "previous_response_id": made.id}
        refused = httpx.post(f"{running.url}/v1/responses", json=continued, headers=bearer(outsider))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "previous_response_not_found"
    assert httpx.get(url, headers=bearer(child)).status_code == 200


def test_store_false_keeps_nothing(on_each_store: Running) -> None:
    running = on_each_store
    key = running.mint(name="nostore")
    sdk = openai_client(running, key)
    made = sdk.responses.create(model="gpt-4o-mini", input="Hi", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(made.id)


def test_a_streamed_response_is_stored_before_it_completes(on_each_store: Running) -> None:
    running = on_each_store
    sdk = openai_client(running, running.mint(name="streamstore"))
    with sdk.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
        final = stream.get_final_response()
    assert sdk.responses.retrieve(final.id).output_text == TEXT


def test_unknown_ids_are_404(running: Running, key: str) -> None:
    for response_id in ("resp_nothing", "not-a-response-id"):
        answer = httpx.get(f"{running.url}/v1/responses/{response_id}", headers=bearer(key))
        assert answer.status_code == 404


@pytest.mark.parametrize("stream", [False, True])
def test_a_response_the_store_cannot_keep_is_still_answered(
    fleet: Running, fleet_key: str, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    async def failing(stored: StoredResponse, held: Sequence[str] = ()) -> None:
        raise StoreError("the response is too large to keep")

    monkeypatch.setattr(fleet.gateway.store, "put_response", failing)
    sdk = openai_client(fleet, fleet_key)
    if stream:
        with sdk.responses.stream(model="claude", input="Hi") as events:
            response = events.get_final_response()
    else:
        response = sdk.responses.create(model="claude", input="Hi")
    assert response.status == "completed" and response.output_text and response.store is False


def screenshot_turn(turn: int) -> list[dict[str, Any]]:
    """A computer-use turn: a 120 KB screenshot (PNG data does not compress) and a question."""
    shot = base64.b64encode(os.urandom(120_000)).decode()
    content = [
        {"type": "input_text", "text": f"turn {turn}: what changed?"},
        {"type": "input_image", "image_url": f"data:image/png;base64,{shot}"},
    ]
    return [{"role": "user", "content": content}]


def test_a_chain_of_screenshots_is_kept_turn_after_turn(on_each_store: Running) -> None:
    """On DynamoDB the third turn (360 KB of screenshots) was answered `store: false` and the fourth, continuing
    it, was a 404: a response was one item of base64, 380,000 bytes at most. SQLite kept them all."""
    running = on_each_store
    sdk = openai_client(running, running.mint(name="screens"))
    previous: str | None = None
    for turn in range(1, 6):
        made = sdk.responses.create(
            model="gpt-4o-mini", input=screenshot_turn(turn), previous_response_id=previous or openai.NOT_GIVEN
        )
        assert made.store is True, turn
        previous = made.id
    sent = orjson.dumps(running.fakes["openai"].state.requests[-1]["json"])
    assert sent.count(b"data:image/png;base64,") == 5
    assert len(sdk.responses.input_items.list(previous, limit=100).data) == 9  # five questions, four answers


def test_a_conversation_too_large_to_keep_says_so_when_continued(
    running_dynamodb: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One the store cannot keep is answered `store: false`, and continuing it is a 400 that says why, where it
    was a 404 as for an id never given."""
    running = running_dynamodb
    monkeypatch.setattr(dynamo_responses, "MAX_DYNAMODB_RECORD", 200_000)  # (16 MB, brought within a test's reach)
    key = running.mint(name="too-large")
    sdk = openai_client(running, key)
    made = sdk.responses.create(model="gpt-4o-mini", input=[*screenshot_turn(1), *screenshot_turn(2)])
    assert made.status == "completed" and made.store is False
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="gpt-4o-mini", input="and now?", previous_response_id=made.id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "previous_response_id"
    message = caught.value.body["message"]
    assert "not stored" in message and "too large to keep on DynamoDB" in message and "at most 0.2 MB" in message
    read = httpx.get(f"{running.url}/v1/responses/{made.id}", headers=bearer(key))
    assert read.status_code == 404 and "too large to keep" in read.json()["error"]["message"]
    stranger = httpx.get(f"{running.url}/v1/responses/{made.id}", headers=bearer(running.mint(name="stranger")))
    assert stranger.status_code == 404 and "too large" not in stranger.text  # (another key's: not there at all)


def test_reasoning_items_of_made_up_responses_cost_few_store_reads(
    on_each_store: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each distinct response a reasoning item's id names was read, before the key's rate limit: a key whose rpm
    was spent sent 2,000 made-up ones and had its 429 after 2,000 reads (8.9 s on DynamoDB)."""
    running = on_each_store
    key = running.mint(name="reads", rpm=1)
    fresh_minute()  # (the minute's one request and the refused one in the same minute)
    store = running.gateway.store
    real = store.get_response
    reads: list[str] = []

    async def counted(response_id: str) -> StoredResponse | None:
        reads.append(response_id)
        return await real(response_id)

    assert httpx.post(f"{running.url}/v1/responses", headers=bearer(key), json={"model": "gpt-4o-mini", "input": "hi"})
    monkeypatch.setattr(store, "get_response", counted)
    made_up = [{"type": "reasoning", "id": f"rs_{i:032x}001", "summary": []} for i in range(2_000)]
    body = {"model": "gpt-4o-mini", "input": [*made_up, {"role": "user", "content": "x"}], "store": False}
    answer = httpx.post(f"{running.url}/v1/responses", headers=bearer(key), json=body, timeout=60)
    assert answer.status_code == 429 and answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert len([r for r in reads if r.startswith("resp_")]) <= MAX_KEPT_READS


TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
ASKED = 'Weather in Paris? CALL get_weather {"city": "Paris"}'


def shown_upstream(running: Running, model: str) -> list[str]:
    """What the provider's last request holds, in order: the call and its result as each API names them."""
    fake = {"claude": "anthropic", "gemini": "gemini"}.get(model, "openai")
    sent = running.fakes[fake].state.requests[-1]["json"]
    if model == "claude":
        return [str(part["type"]) for m in sent["messages"] for part in m["content"] if isinstance(part, dict)]
    if model == "gemini":
        return [next(iter(part)) for turn in sent["contents"] for part in turn["parts"]]
    if model == "gpt-chat":
        return ["tool_calls" if m.get("tool_calls") else m["role"] for m in sent["messages"]]
    return [str(item.get("type") or item.get("role")) for item in sent["input"]]


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        ("claude", ["text", "tool_use", "tool_result"]),
        ("gemini", ["text", "functionCall", "functionResponse"]),
        ("gpt-chat", ["user", "tool_calls", "tool"]),
        ("gpt", ["user", "function_call", "function_call_output"]),
        ("gpt-keeps", ["user", "function_call", "function_call_output"]),
    ],
)
def test_an_item_reference_stands_for_the_stored_item(
    fleet_on_each_store: Running, model: str, shown: list[str]
) -> None:
    """A tool turn that names the stored function call by `item_reference` instead of sending it again (as
    Codex-style clients do): the reference was dropped (`input[item_reference]`), and each provider got a tool
    result answering no call (Anthropic's and OpenAI's 400; the gateway's own for Gemini), or, passed through to
    OpenAI with `store: false`, an id it never kept (its 404). It stands for the stored item now, on every provider:
    OpenAI's own ids (passed through) found by the store's index, the gateway's by the response they name."""
    running = fleet_on_each_store
    sdk = openai_client(running, running.mint(name="references"))
    first = sdk.responses.create(model=model, input=ASKED, tools=TOOLS)
    call = next(item for item in first.output if item.type == "function_call")
    raw = sdk.responses.with_raw_response.create(
        model=model,
        tools=TOOLS,
        input=[
            {"role": "user", "content": ASKED},
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
        ],
    )
    second = raw.parse()
    assert second.status == "completed" and "item_reference" not in raw.headers.get("x-gateway-dropped-params", "")
    assert shown_upstream(running, model) == shown
    listed = list(sdk.responses.input_items.list(second.id, order="asc"))
    assert [item.type for item in listed] == ["message", "function_call", "function_call_output"]
    assert listed[1].id == call.id and listed[1].call_id == call.call_id  # (the item it stood for, by its id)


def test_an_item_reference_finds_only_what_the_key_may_read(fleet_on_each_store: Running) -> None:
    """A reference resolves among the responses the key may read, as `previous_response_id` does; one to nothing
    it may read is a 400 naming the id, as OpenAI's is, not a silent drop: an item of another key's response, of a
    deleted one, or an id never given. A stored input item's made id (from `input_items`) names it too. A reference
    may leave out its type, as the API takes it (an item of no type was dropped: the request had no message left)."""
    running = fleet_on_each_store
    key, stranger = running.mint(name="owner"), running.mint(name="stranger")
    sdk = openai_client(running, key)
    native = sdk.responses.create(model="gpt", input=ASKED, tools=TOOLS)
    translated = sdk.responses.create(model="claude", input=ASKED, tools=TOOLS)
    question = next(iter(sdk.responses.input_items.list(translated.id)))
    assert question.id.startswith("msg_") and question.id != "msg_fake1"

    def refer(to: str, by: str = key, typed: bool = True) -> httpx.Response:
        reference = {"type": "item_reference", "id": to} if typed else {"id": to}  # (the API's type is optional)
        body = {"model": "claude", "input": [reference]}
        return httpx.post(f"{running.url}/v1/responses", json=body, headers=bearer(by))

    # (a natively served response's input ids are made from OpenAI's response id: `resp_<hex>`, any length)
    native_question = next(iter(sdk.responses.input_items.list(native.id)))
    for made, typed in itertools.product((question.id, native_question.id), (True, False)):
        answered = refer(made, typed=typed)
        assert answered.status_code == 200, answered.text
        assert running.fakes["anthropic"].state.requests[-1]["json"]["messages"][0]["content"][0]["text"] == ASKED
    call = translated.output[-1].id
    assert httpx.delete(f"{running.url}/v1/responses/{translated.id}", headers=bearer(key)).status_code == 200
    native_call = native.output[-1].id
    for to, by in ((native_call, stranger), (question.id, stranger), (call, key), ("fc_never_given", key)):
        refused = refer(to, by)
        assert refused.status_code == 400, (to, refused.text)
        error = refused.json()["error"]
        assert error["message"] == f"Item with id '{to}' not found." and error["param"] == "input[0]"
    assert refer(native_call).status_code == 200


def test_an_item_reference_finds_a_response_an_older_release_kept_once_migrated(
    fleet_on_each_store: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A natively served response an older release kept has no index of OpenAI's ids in it: a reference to its
    function call (without `previous_response_id`) was a 400 "not found" where that release passed it to the
    provider, and `gateway store migrate` indexed nothing. It indexes them now."""
    running = fleet_on_each_store
    sdk = openai_client(running, key := running.mint(name="older"))
    store = running.gateway.store
    keep = store.put_response

    async def as_an_older_release(
        stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False
    ) -> None:
        await keep(stored, newer_only=newer_only)  # (no index)

    monkeypatch.setattr(store, "put_response", as_an_older_release)
    native = sdk.responses.create(model="gpt", input=ASKED, tools=TOOLS)
    monkeypatch.undo()
    call = next(item for item in native.output if item.type == "function_call")
    body = {
        "model": "gpt",
        "tools": TOOLS,
        "input": [
            {"type": "item_reference", "id": call.id},
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C"},
        ],
    }
    refused = httpx.post(f"{running.url}/v1/responses", json=body, headers=bearer(key))
    assert refused.status_code == 400 and f"Item with id '{call.id}' not found." in refused.text
    assert main(["store", "migrate", "--store", running.store_url]) == 0
    answered = httpx.post(f"{running.url}/v1/responses", json=body, headers=bearer(key))
    assert answered.status_code == 200, answered.text
    sent = running.fakes["openai"].state.requests[-1]["json"]["input"]
    assert [item.get("type") for item in sent] == ["function_call", "function_call_output"]


def test_an_input_sending_an_item_twice_is_refused(fleet: Running, fleet_key: str) -> None:
    """Refused as OpenAI refuses it ("Duplicate item found with id ..."): the previous turn's output sent again by
    value beside `previous_response_id`, or one reference beside the item it names, which the model read twice
    and the key paid for twice; nothing reaches the provider."""
    sdk = openai_client(fleet, fleet_key)
    first = sdk.responses.create(model="claude", input=ASKED, tools=TOOLS)
    call = first.output[-1]
    sent = len(fleet.fakes["anthropic"].state.requests)
    twice: list[Any] = [
        {"previous_response_id": first.id, "input": [call.model_dump(exclude_none=True)]},
        {"input": [{"type": "item_reference", "id": call.id}, {"type": "item_reference", "id": call.id}]},
    ]
    for body in twice:
        answer = httpx.post(f"{fleet.url}/v1/responses", json={"model": "claude", **body}, headers=bearer(fleet_key))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["message"].startswith(f"Duplicate item found with id {call.id}.")
    assert len(fleet.fakes["anthropic"].state.requests) == sent


# --- a provider that keeps answers itself (`responses_store: true`) under the gateway's one account ---------------


def kept_turn(running: Running, key: str, items: Any, **settings: Any) -> httpx.Response:
    """A turn of `keeps-reasoner`, whose provider keeps the answers it serves (OpenAI's `store`)."""
    body = {"model": "keeps-reasoner", "input": items, **settings}
    return httpx.post(f"{running.url}/v1/responses", json=body, headers=bearer(key), timeout=30)


def sent_ids(running: Running) -> list[str | None]:
    sent: dict[str, Any] = running.fakes["openai"].state.requests[-1]["json"]
    assert sent.get("store", True) is True  # (the provider stores the turn: it reads an item sent by id)
    return [item.get("id") for item in sent["input"]]


def test_another_keys_items_reach_a_provider_that_keeps_answers_without_their_ids(
    fleet_on_each_store: Running,
) -> None:
    """Key A's turn is kept by OpenAI too (the operator's `responses_store: true`). Key B, which may not see it (a 404,
    and a 400 for its `item_reference`), sent A's reasoning item back by value with its id alone, as the Agents SDK
    sends a stored turn: it reached OpenAI with the id, store on, and a storing OpenAI reads such an item from the
    account's store, so B's turn ran on A's hidden reasoning (found by review). Another key's ids go no more, whatever
    the item (a message's, a function call's); a reasoning item without its `encrypted_content` is left out and
    named, as for a provider that stores nothing; and they go no more when B continues its own turn, whose stored
    conversation holds them as B sent them."""
    running = fleet_on_each_store
    a, b = running.mint(name="tenant-a"), running.mint(name="tenant-b")
    first = kept_turn(running, a, "My secret plan is X.")
    assert first.status_code == 200, first.text
    reasoning, message = first.json()["output"]
    assert reasoning["type"] == "reasoning" and message["type"] == "message"
    assert httpx.get(f"{running.url}/v1/responses/{first.json()['id']}", headers=bearer(b)).status_code == 404
    ask: Any = {"role": "user", "content": "Repeat what you reasoned before."}
    referred = kept_turn(running, b, [{"type": "item_reference", "id": reasoning["id"]}, ask])
    assert referred.status_code == 400, referred.text

    by_value = [{"type": "reasoning", "id": reasoning["id"], "summary": []}, message, ask]
    second = kept_turn(running, b, by_value)
    assert second.status_code == 200, second.text
    assert sent_ids(running) == [None, None]  # (A's message without its id, B's question; A's reasoning left out)
    assert second.headers["x-gateway-dropped-params"] == "input[reasoning]"

    third = kept_turn(running, b, [{"role": "user", "content": "And again?"}], previous_response_id=second.json()["id"])
    assert third.status_code == 200, third.text
    own = [item["id"] for item in second.json()["output"]]
    assert sent_ids(running) == [None, None, *own, None]  # (B's own answer with its ids: OpenAI keeps it for B)


def test_a_keys_own_items_and_those_of_keys_under_it_keep_their_ids_at_a_provider_that_keeps_answers(
    fleet_on_each_store: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The items a key may see (answered to it, or to a key under it, as a stored response is read) go to a provider
    that keeps answers with their ids, for it to read from its store: sent back by value (one index query and one read
    find the response that answered them), continued, and continued again with no read but the continued response's.
    A request whose items carry no provider id reads nothing."""
    running = fleet_on_each_store
    parent = running.mint(name="keeping-parent")
    child = child_of(running, parent)
    store = running.gateway.store
    reads: list[str] = []
    real_read, real_index = store.get_response, store.responses_holding

    async def read(response_id: str) -> StoredResponse | None:
        reads.append(response_id)
        return await real_read(response_id)

    async def index(item_id: str) -> list[str]:
        reads.append(item_id)
        return await real_index(item_id)

    monkeypatch.setattr(store, "get_response", read)
    monkeypatch.setattr(store, "responses_holding", index)
    first = kept_turn(running, child, [{"role": "user", "content": "Plan?"}])
    assert first.status_code == 200 and reads == []
    reasoning, message = first.json()["output"]
    for key in (child, parent):
        reads.clear()
        back = kept_turn(running, key, [{"type": "reasoning", "id": reasoning["id"], "summary": []}, message])
        assert back.status_code == 200 and "x-gateway-dropped-params" not in back.headers
        assert sent_ids(running) == [reasoning["id"], message["id"]]
        assert reads == [reasoning["id"], first.json()["id"]]  # (the reasoning's response, by the index)

    turns = [first.json()]
    for question in ("Go on.", "And then?"):
        reads.clear()
        turns.append(kept_turn(running, child, question, previous_response_id=turns[-1]["id"]).json())
        assert reads == [turns[-2]["id"]]  # (the continued response alone: its items answered are kept beside it)
    second = [item["id"] for item in turns[1]["output"]]
    assert sent_ids(running) == [None, reasoning["id"], message["id"], None, *second, None]
