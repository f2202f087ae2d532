"""Stored responses: `store`, `previous_response_id`, `GET` and `DELETE /v1/responses/{id}`, on each store."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import openai
import orjson
import pytest

from adapters.store import responses
from handler.api.responses_routes import MAX_KEPT_READS
from handler.ports import StoredResponse, StoreError
from tests.fakes.openai import TEXT
from tests.functional.conftest import Running, openai_client


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
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="gpt-4o-mini", input="And now?", previous_response_id=first.id)
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "previous_response_id"


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
        assert httpx.post(f"{running.url}/v1/responses", json=continued, headers=bearer(outsider)).status_code == 404
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
    async def failing(stored: StoredResponse) -> None:
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
    monkeypatch.setattr(responses, "MAX_DYNAMODB_RECORD", 200_000)  # (16 MB, brought within a test's reach)
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
