"""Stored Responses API answers on every backend (the `Store` port's response methods)."""

from __future__ import annotations

import os
import time

import pytest

from handler.ports import Store, StoredResponse, StoreError
from tests.unit.adapters.store import test_contract

# The contract's fixtures: the store on SQLite, then on moto's DynamoDB server.
store_url = test_contract.store_url
store = test_contract.store


def stored(response_id: str, body: bytes = b'{"items": [], "response": {}}', ttl: float = 60) -> StoredResponse:
    now = time.time()
    return StoredResponse(response_id, "key1", ["root"], now, now + ttl, body)


async def test_a_response_is_kept_read_and_deleted(store: Store) -> None:
    kept = stored("resp_a", b'{"items": [{"role": "user", "content": "Hi"}], "response": {"id": "resp_a"}}')
    await store.put_response(kept)
    assert await store.get_response("resp_a") == kept
    assert await store.get_response("resp_other") is None
    assert await store.delete_response("resp_a") is True
    assert await store.get_response("resp_a") is None
    assert await store.delete_response("resp_a") is False


async def test_an_expired_response_is_gone(store: Store) -> None:
    await store.put_response(stored("resp_old", ttl=-1))
    assert await store.get_response("resp_old") is None
    assert await store.delete_response("resp_old") is False


async def test_a_long_conversation_is_kept_compressed(store: Store) -> None:
    text = b'{"role": "user", "content": "the same long prompt again"},' * 20_000  # 1.2 MB, repetitive as chats are
    body = b'{"items": [' + text.rstrip(b",") + b'], "response": {}}'
    await store.put_response(stored("resp_long", body))
    found = await store.get_response("resp_long")
    assert found is not None and found.body == body


async def test_what_cannot_be_kept_is_a_store_error(store: Store, store_url: str) -> None:
    if not store_url.startswith("dynamodb"):
        pytest.skip("only DynamoDB limits an item's size")
    body = b'{"noise": "' + os.urandom(300_000).hex().encode() + b'"}'
    with pytest.raises(StoreError, match="too large"):
        await store.put_response(stored("resp_huge", body))


async def test_keeping_a_response_does_not_read_every_stored_one(store: Store, store_url: str) -> None:
    """Each put deletes the expired responses: by an index on their expiry, where it scanned the whole table
    (5 ms a put with 20,000 of 4 KB kept, on the event loop, and growing)."""
    if not store_url.startswith("sqlite"):
        pytest.skip("DynamoDB expires items by their ttl")
    await store.put_response(stored("resp_plan"))
    db = store.db  # type: ignore[attr-defined]
    plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN DELETE FROM responses WHERE expires_at < 1"))
    assert "responses_expiry" in plan, plan
