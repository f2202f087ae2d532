"""`GET /v1/responses/{id}/input_items` through the official SDK: OpenAI's item shapes, ids of their own, pages."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import httpx
import orjson
import pytest
from openai.types.responses import (
    ResponseFunctionToolCallItem,
    ResponseFunctionToolCallOutputItem,
    ResponseInputImage,
    ResponseInputMessageItem,
    ResponseInputText,
    ResponseOutputMessage,
    ResponseOutputText,
)

from adapters.store import open_store
from handler.pipeline.keys import split_key
from handler.ports import StoredResponse, StoreError
from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, openai_client

IMAGE = "data:image/png;base64,iVBORw0KGgo="


def test_items_come_in_openai_shapes(on_each_store: Running) -> None:
    running = on_each_store
    sdk = openai_client(running, running.mint(name="items"))
    conversation: Any = [
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": [{"type": "input_text", "text": "be brief"}]},
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": IMAGE}],
        },
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    first = sdk.responses.create(model="gpt-4o-mini", input=conversation, instructions="not an item")
    second = sdk.responses.create(model="gpt-4o-mini", input="and?", previous_response_id=first.id)

    items = sdk.responses.input_items.list(second.id, order="asc").data
    assert [type(item) for item in items] == [
        ResponseInputMessageItem,
        ResponseInputMessageItem,
        ResponseInputMessageItem,
        ResponseFunctionToolCallItem,
        ResponseFunctionToolCallOutputItem,
        ResponseOutputMessage,  # the first response's answer
        ResponseInputMessageItem,
    ]
    hi, brief, look, call, output, answer, again = items
    assert isinstance(hi, ResponseInputMessageItem) and hi.role == "user" and hi.status == "completed"
    assert hi.content == [ResponseInputText(type="input_text", text="hi")]
    assert isinstance(brief, ResponseInputMessageItem) and brief.role == "developer"
    assert isinstance(look, ResponseInputMessageItem) and isinstance(look.content[1], ResponseInputImage)
    assert look.content[1].image_url == IMAGE and look.content[1].detail == "auto"
    assert isinstance(call, ResponseFunctionToolCallItem) and (call.call_id, call.name) == ("call_1", "lookup")
    assert call.status == "completed" and call.id.startswith("fc_")
    assert isinstance(output, ResponseFunctionToolCallOutputItem) and output.output == "42"
    assert output.status == "completed"
    assert isinstance(answer, ResponseOutputMessage) and answer.id == first.output[0].id
    assert isinstance(answer.content[0], ResponseOutputText) and answer.content[0].text == TEXT
    assert isinstance(again, ResponseInputMessageItem) and again.content[0].text == "and?"  # type: ignore[union-attr]


def test_ids_are_the_items_own(running: Running, key: str) -> None:
    sdk = openai_client(running, key)
    first = sdk.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    )
    other = sdk.responses.create(
        model="gpt-4o-mini", input=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]
    )
    continued = sdk.responses.create(model="gpt-4o-mini", input="three", previous_response_id=first.id)
    own = [item.id for item in sdk.responses.input_items.list(first.id, order="asc")]
    theirs = [item.id for item in sdk.responses.input_items.list(other.id, order="asc")]
    later = [item.id for item in sdk.responses.input_items.list(continued.id, order="asc")]
    assert len(set(own)) == 2 and not set(own) & set(theirs)  # unique across responses
    assert later[:2] == own and len(set(later)) == 4  # an item keeps its id in the turns that continue it
    assert [item.id for item in sdk.responses.input_items.list(first.id, order="asc")] == own  # and on every read


def test_pages_follow_limit_order_and_after(running: Running, key: str) -> None:
    sdk = openai_client(running, key)
    made = sdk.responses.create(model="gpt-4o-mini", input=[{"role": "user", "content": f"m{n}"} for n in range(25)])
    texts = [item.content[0].text for item in sdk.responses.input_items.list(made.id, limit=10)]  # type: ignore[union-attr]
    assert texts == [f"m{n}" for n in reversed(range(25))]  # every page, the newest first (the default)

    first = sdk.responses.input_items.list(made.id, limit=10, order="asc")
    assert len(first.data) == 10 and first.has_more and first.first_id == first.data[0].id
    pages = list(first.iter_pages())
    assert [len(p.data) for p in pages] == [10, 10, 5] and [p.has_more for p in pages] == [True, True, False]
    ids = [item.id for p in pages for item in p.data]
    assert len(set(ids)) == 25 and pages[-1].last_id == ids[-1]
    assert len(sdk.responses.input_items.list(made.id).data) == 20  # limit defaults to 20
    rest = sdk.responses.input_items.list(made.id, order="asc", after=ids[22])
    assert [item.id for item in rest.data] == ids[23:] and not rest.has_more


def test_items_kept_twice_page_to_the_end(running: Running, key: str) -> None:
    """A record kept with two items under one id (a continuation that sent the previous turn's output again by value
    beside `previous_response_id`, before such an input was refused: see `test_responses_store`): the SDK's paging
    by `after` came back to the first forever."""
    sdk = openai_client(running, key)
    first = sdk.responses.create(model="gpt-4o-mini", input="hi")
    again = [item.model_dump(exclude_none=True) for item in first.output]
    response_id = "resp_keptitemstwice"
    record = {
        "items": [{"role": "user", "content": "hi"}, *again, *again, {"role": "user", "content": "again"}],
        "response": {"id": response_id, "object": "response", "output": []},
    }
    asyncio.run(put_record(running, response_id, (split_key(key) or ("", ""))[0], record))
    everything = [item.id for item in sdk.responses.input_items.list(response_id, order="asc")]
    pages = sdk.responses.input_items.list(response_id, order="asc", limit=1)
    assert len(everything) == 4 and len(set(everything)) == 4
    assert [item.id for item in itertools.islice(pages, 20)] == everything
    assert everything[1] == first.output[0].id  # the first of the two keeps the id the client knows it by


async def put_record(running: Running, response_id: str, key_id: str, record: dict[str, Any]) -> None:
    store = open_store(running.store_url)
    try:
        now = time.time()
        await store.put_response(StoredResponse(response_id, key_id, [], now, now + 3600, orjson.dumps(record)))
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=%C2%B2", "limit"),  # `²`, a digit to `isdigit` and not to `int` (a 500, found by review)
        ("limit=" + "1" * 4301, "limit"),  # past `int`'s digit limit (a 500)
        ("order=up", "order"),
        ("after=msg_x", "after"),
    ],
)
def test_a_bad_page_request_is_400(running: Running, key: str, query: str, param: str) -> None:
    made = openai_client(running, key).responses.create(model="gpt-4o-mini", input="hi")
    answer = httpx.get(
        f"{running.url}/v1/responses/{made.id}/input_items?{query}", headers={"authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request" and error["param"] == param
    assert answer.headers["x-should-retry"] == "false"


def test_a_response_stored_before_item_ids_were_kept(running: Running, key: str) -> None:
    """A record written by an earlier version (items as the client sent them, no ids kept) is still listed,
    with the same ids on every read, and a turn that continues it keeps them."""
    key_id = (split_key(key) or ("", ""))[0]
    response_id = "resp_storedbeforeids"
    response = {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [
            {
                "id": "msg_old001",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "hello", "annotations": []}],
            }
        ],
    }
    record = {
        "items": [{"role": "user", "content": "old"}, {"type": "message", "role": "user", "content": "older"}],
        "response": response,
    }

    asyncio.run(put_record(running, response_id, key_id, record))
    sdk = openai_client(running, key)
    listed = sdk.responses.input_items.list(response_id, order="asc").data
    assert all(isinstance(item, ResponseInputMessageItem) and item.status == "completed" for item in listed)
    assert [item.content[0].text for item in listed] == ["old", "older"]  # type: ignore[union-attr]
    ids = [item.id for item in listed]
    assert len(set(ids)) == 2 and [item.id for item in sdk.responses.input_items.list(response_id, order="asc")] == ids
    continued = sdk.responses.create(model="gpt-4o-mini", input="new", previous_response_id=response_id)
    later = [item.id for item in sdk.responses.input_items.list(continued.id, order="asc")]
    assert later[:3] == [*ids, "msg_old001"] and len(set(later)) == 4


@pytest.mark.parametrize("call", ["GET", "input_items", "DELETE", "previous_response_id"])
def test_a_store_down_on_a_stored_response_is_a_503_that_names_the_store(
    fleet: Running, fleet_key: str, call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of a stored response the store could not answer said "the key store is unavailable"."""
    made = openai_client(fleet, fleet_key).responses.create(model="claude", input="hi")

    async def down(response_id: str) -> StoredResponse | None:
        raise StoreError("ProvisionedThroughputExceededException: throttled")

    monkeypatch.setattr(fleet.gateway.store, "get_response", down)
    url, auth = f"{fleet.url}/v1/responses", {"authorization": f"Bearer {fleet_key}"}
    asked = {
        "GET": lambda: httpx.get(f"{url}/{made.id}", headers=auth),
        "input_items": lambda: httpx.get(f"{url}/{made.id}/input_items", headers=auth),
        "DELETE": lambda: httpx.delete(f"{url}/{made.id}", headers=auth),
        "previous_response_id": lambda: httpx.post(
            url, headers=auth, json={"model": "claude", "input": "x", "previous_response_id": made.id}
        ),
    }[call]()
    error = asked.json()["error"]
    assert asked.status_code == 503 and asked.headers["retry-after"] and error["code"] == "store_unavailable"
    assert "key store" not in error["message"] and "store" in error["message"]
    assert "Provisioned" not in asked.text  # (the store's own words stay in the log)
