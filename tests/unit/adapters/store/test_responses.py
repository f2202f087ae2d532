"""Stored Responses API answers on every backend (the `Store` port's response methods)."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import zlib
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from adapters.store import dynamo_responses, open_store, responses
from handler.api.reasoning_seal import Seals
from handler.api.responses_routes import ResponseArchive, held_in
from handler.errors import NotFoundError
from handler.ports import MAX_HOLDERS, ResponseTooLarge, Store, StoredResponse, StoreError
from tests.unit.adapters.store import test_contract
from tests.unit.adapters.store.test_contract import storage_only

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


def screenshots(count: int, size: int = 120_000) -> bytes:
    """A record's body holding `count` images as a client sends them: base64 of data that does not compress."""
    shots = ",".join(f'"data:image/png;base64,{base64.b64encode(os.urandom(size)).decode()}"' for _ in range(count))
    return f'{{"items": [{shots}], "response": {{}}}}'.encode()


async def items_of(store: Store, response_id: str) -> list[dict[str, Any]]:
    """The DynamoDB items under a response's partition key, as they are."""
    answer = await store.client.query(  # type: ignore[attr-defined]
        TableName=store.table,  # type: ignore[attr-defined]
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"RESP#{response_id}"}},
        ConsistentRead=True,
    )
    items: list[dict[str, Any]] = answer["Items"]
    return items


async def test_a_conversation_past_a_dynamodb_item_is_kept_read_and_deleted(store: Store, store_url: str) -> None:
    """On DynamoDB a response was one item of base64 (380,000 bytes at most): a conversation past ~285 KB of
    images (a 120 KB screenshot a turn: the third turn) was not kept, and the next turn's `previous_response_id`
    was a 404, where SQLite kept it. Now its parts go on items of their own, binary."""
    body = screenshots(8)  # 1.3 MB of base64, some 1 MB compressed
    await store.put_response(stored("resp_screens", body))
    found = await store.get_response("resp_screens")
    assert found is not None and found.body == body
    if store_url.startswith("dynamodb"):
        items = await items_of(store, "resp_screens")
        assert len(items) == 4 and all("B" in item["record"] for item in items)
    assert await store.delete_response("resp_screens") is True
    assert await store.get_response("resp_screens") is None
    assert await store.delete_response("resp_screens") is False
    if store_url.startswith("dynamodb"):  # the images go with the delete, not with the TTL
        assert not any("record" in item for item in await items_of(store, "resp_screens"))


async def test_a_record_not_whole_in_this_region_reads_as_not_kept(store: Store, store_url: str) -> None:
    """A reader never sees a half-written record: the parts are written before the response's item names them,
    and a part not (yet) there, as in a region a global table has not brought it to, is no record."""
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB's parts")
    client = store.client  # type: ignore[attr-defined]
    real = client.call
    written: list[str] = []

    async def failing_last(operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "PutItem" and request["Item"]["sk"]["S"] == "RESP":
            raise StoreError("lost on the way")
        written.append(request["Item"]["sk"]["S"])
        return await real(operation, request)

    client.call = failing_last
    try:
        with pytest.raises(StoreError):
            await store.put_response(stored("resp_half", screenshots(4)))
    finally:
        client.call = real
    assert written and await store.get_response("resp_half") is None  # its part was written, never named

    await store.put_response(stored("resp_partial", screenshots(4)))
    part = next(item for item in await items_of(store, "resp_partial") if item["sk"]["S"] != "RESP")
    await client.put_item(TableName=store.table, Item={"pk": part["pk"], "sk": part["sk"]})  # type: ignore[attr-defined]
    assert await store.get_response("resp_partial") is None


async def test_too_large_a_conversation_is_refused_saying_so(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not store_url.startswith("dynamodb"):
        pytest.skip("only DynamoDB bounds a record")
    monkeypatch.setattr(dynamo_responses, "MAX_DYNAMODB_RECORD", 400_000)
    with pytest.raises(ResponseTooLarge, match=r"too large to keep on DynamoDB \(0.\d MB compressed, at most 0.4 MB\)"):
        await store.put_response(stored("resp_huge", screenshots(4)))
    assert await store.get_response("resp_huge") is None


async def test_the_responses_holding_an_item_are_found_by_its_id(store: Store, store_url: str) -> None:
    """A provider's item id names no response: the store indexes the ids a response holds (`held`), so that an
    `item_reference` to one, or its reasoning sent back by value, finds the response; the newest first, for as long
    as the response lives, with a record in parts too, and a deleted one no more found (DynamoDB leaves its entry to
    the TTL: the response read is not there)."""
    now = time.time()
    older = StoredResponse("resp_older", "key1", [], now - 10, now + 60, b'{"items": []}')
    await store.put_response(older, ["fc_abc", "rs_abc"])
    await store.put_response(stored("resp_newer", screenshots(4)), ["fc_abc"])  # (in parts, on DynamoDB)
    await store.put_response(stored("resp_lapsed", ttl=-1), ["fc_abc"])
    assert await store.responses_holding("fc_abc") == ["resp_newer", "resp_older"]
    assert await store.responses_holding("rs_abc") == ["resp_older"]
    assert await store.responses_holding("fc_none") == []
    assert await store.delete_response("resp_newer") is True
    holders = await store.responses_holding("fc_abc")
    assert [r for r in holders if await store.get_response(r) is not None] == ["resp_older"]
    if not store_url.startswith("dynamodb"):
        assert holders == ["resp_older"]
    for n in range(MAX_HOLDERS + 2):
        await store.put_response(stored(f"resp_many{n}"), ["fc_many"])
    assert len(await store.responses_holding("fc_many")) == MAX_HOLDERS


async def test_migrate_indexes_the_items_of_responses_kept_before_the_index(store: Store) -> None:
    """A response an older release kept (with `responses_api: native`, a provider's `fc_…` ids in its output) had
    no index entries, and `gateway store migrate` wrote none: an `item_reference` to its function call was a 400
    "not found" where that release passed it on. `index_held` writes the missing entries, past what is no
    response (the reasoning seal's secret, why one was not kept); a second run writes nothing."""
    output = b'"output": [{"type": "function_call", "id": "fc_before", "call_id": "call_1"}, {"id": "msg_resp1_0001"}]'
    body = b'{"items": [], "item_ids": [], "response": {"id": "resp_native", ' + output + b'}, "sealed": {}}'
    await store.put_response(stored("resp_native", body))  # (as that release kept it: no `held`)
    await store.put_response(stored("resp_indexed", body), ["fc_before"])
    image = base64.b64encode(os.urandom(300_000))  # (in parts, on DynamoDB)
    await store.put_response(stored("resp_large", body.replace(b'"items": []', b'"items": ["' + image + b'"]')))
    await store.put_response(stored("resp_gone", body, ttl=-1))
    await store.put_response(stored("gateway-reasoning-seal", b"0123abcd"))
    await store.put_response(stored("resp_unkept", b'{"unkept": "too large"}'))
    assert await store.responses_holding("fc_before") == ["resp_indexed"]
    assert await store.index_held(held_in) == 2  # (`msg_resp1_…` names its response: not indexed)
    assert sorted(await store.responses_holding("fc_before")) == ["resp_indexed", "resp_large", "resp_native"]
    assert await store.index_held(held_in) == 0


async def test_an_index_entry_not_written_leaves_the_response_kept(store: Store, store_url: str) -> None:
    """The index is a way to find a response, not part of it: an entry DynamoDB did not write leaves that item
    unfound by its id, and the response kept (not answered `store: false`, as a failing record write is)."""
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB writes the entries on items of their own")
    client = store.client  # type: ignore[attr-defined]
    real = client.call

    async def failing_entries(operation: str, request: dict[str, Any]) -> dict[str, Any]:
        if operation == "PutItem" and request["Item"]["pk"]["S"].startswith(dynamo_responses.HOLDER_PK):
            raise StoreError("lost on the way")
        return await real(operation, request)

    client.call = failing_entries
    try:
        await store.put_response(stored("resp_unindexed"), ["fc_unindexed"])
    finally:
        client.call = real
    assert await store.get_response("resp_unindexed") is not None
    assert await store.responses_holding("fc_unindexed") == []


async def test_the_first_write_of_an_id_stands(store: Store) -> None:
    """Put if absent, as the reasoning seal's secret needs: two processes making it at once each wrote theirs,
    and the one that read back before the other's write landed sealed with a secret nobody keeps."""
    await store.put_response(stored("resp_once", b"first"))
    await store.put_response(stored("resp_once", b"second"))
    found = await store.get_response("resp_once")
    assert found is not None and found.body == b"first"
    await store.put_response(stored("resp_lapsed", b"first", ttl=-1))  # an expired one is no longer there
    await store.put_response(stored("resp_lapsed", b"second"))
    found = await store.get_response("resp_lapsed")
    assert found is not None and found.body == b"second"


async def test_a_response_kept_as_one_base64_item_is_still_read_and_deleted(store: Store, store_url: str) -> None:
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB's former layout")
    kept = stored("resp_before", b'{"items": [], "response": {"id": "resp_before"}}')
    item = {
        "pk": {"S": "RESP#resp_before"},
        "sk": {"S": "RESP"},
        "data": {"S": base64.b64encode(responses.pack(kept)).decode()},
        "expires_at": {"N": repr(kept.expires_at)},
        "ttl": {"N": str(int(kept.expires_at))},
    }
    await store.client.put_item(TableName=store.table, Item=item)  # type: ignore[attr-defined]
    assert await store.get_response("resp_before") == kept
    assert await store.delete_response("resp_before") is True
    assert await store.get_response("resp_before") is None


async def test_a_response_that_fits_one_item_is_kept_as_the_release_before_parts_kept_it(
    store: Store, store_url: str
) -> None:
    """The release before parts reads and deletes a response's `data` alone (the base64 of the record compressed):
    during a rollout, and after a rollback, it answered 404 to every response this one kept (GET, input_items,
    `previous_response_id`) and its DELETE removed nothing, as all went in binary `record` parts. A record that fits
    the item that release kept is written as it wrote it; one past it, in parts (that release never kept one)."""
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB's layouts")
    kept = stored("resp_shared", b'{"items": [{"role": "user", "content": "Hi"}], "response": {"id": "resp_shared"}}')
    await store.put_response(kept, ["fc_shared"])
    (item,) = [item for item in await items_of(store, "resp_shared")]
    assert "record" not in item and as_the_release_before_parts_read_it(item) == kept
    assert item["ttl"] == {"N": str(int(kept.expires_at))} and float(item["expires_at"]["N"]) == kept.expires_at

    largest = stored("resp_largest", screenshots(2))  # (images do not compress: some 240 KB, within its 380,000)
    await store.put_response(largest)
    (item,) = [item for item in await items_of(store, "resp_largest")]
    assert as_the_release_before_parts_read_it(item) == largest
    await store.put_response(stored("resp_past", screenshots(3)))  # (some 360 KB: past it)
    assert all("data" not in item for item in await items_of(store, "resp_past"))

    # Deleted as that release deletes one: gone for this one too.
    await store.client.update_item(  # type: ignore[attr-defined]
        TableName=store.table,  # type: ignore[attr-defined]
        Key={"pk": {"S": "RESP#resp_shared"}, "sk": {"S": "RESP"}},
        UpdateExpression="SET #gone = :token REMOVE #data",
        ConditionExpression="attribute_exists(#data) OR #gone = :token",
        ExpressionAttributeNames={"#gone": "gone", "#data": "data"},
        ExpressionAttributeValues={":token": {"S": "t1"}},
    )
    assert await store.get_response("resp_shared") is None
    assert await store.delete_response("resp_shared") is False


async def test_why_a_response_was_not_kept_is_hidden_from_the_release_before_parts(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What stands for a response too large to keep (`{"unkept": why}`) is no response to the release before
    parts, which would answer its GET with a 500 (it has no `response`): kept where that release does not look, it
    answers 404, as it did for a response it could not keep."""
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB's layouts")
    monkeypatch.setattr(dynamo_responses, "MAX_DYNAMODB_RECORD", 200_000)
    archive = archive_on(store)
    key: Any = SimpleNamespace(id="key1", ancestors=["root"])
    response: dict[str, Any] = {"id": "resp_unkept", "output": []}
    await archive.keep(key, [{"role": "user", "content": screenshots(2).decode()}], response, [], {})
    assert response["store"] is False
    (item,) = [item for item in await items_of(store, "resp_unkept")]
    assert as_the_release_before_parts_read_it(item) is None
    with pytest.raises(NotFoundError, match="too large to keep"):
        await archive.find("resp_unkept", key)


def as_the_release_before_parts_read_it(item: dict[str, Any]) -> StoredResponse | None:
    """A response's item as the release before parts read it: its `data` alone, the base64 of the record
    compressed, a JSON line of its fields then its body."""
    if "data" not in item:
        return None
    head, _, body = zlib.decompress(base64.b64decode(item["data"]["S"])).partition(b"\n")
    fields: dict[str, Any] = orjson.loads(head)
    return StoredResponse(
        id=str(fields["id"]),
        key_id=str(fields["key_id"]),
        ancestors=[str(a) for a in fields.get("ancestors") or ()],
        created_at=float(fields["created_at"]),
        expires_at=float(fields["expires_at"]),
        body=body,
    )


async def test_keeping_a_response_does_not_read_every_stored_one(store: Store, store_url: str) -> None:
    """Each put deletes the expired responses: by an index on their expiry, where it scanned the whole table
    (5 ms a put with 20,000 of 4 KB kept, on the event loop, and growing)."""
    if not store_url.startswith("sqlite"):
        pytest.skip("DynamoDB expires items by their ttl")
    await store.put_response(stored("resp_plan"))
    db = store.db  # type: ignore[attr-defined]
    plan = " ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN DELETE FROM responses WHERE expires_at < 1"))
    assert "responses_expiry" in plan, plan


async def test_two_processes_making_the_seal_secret_at_once_agree_on_it(store: Store, store_url: str) -> None:
    """Two instances starting together on a fresh store each wrote a secret; the one whose write landed first
    read it back and sealed with a secret the other's write then replaced (its blobs opened nowhere after)."""
    storage_only(store_url, "two processes share the store")
    other = open_store(store_url)
    for opened, delay in ((store, 0.0), (other, 0.05)):  # both read before either wrote; the second's write late
        opened.put_response = on_the_wire(opened.put_response, delay)  # type: ignore[method-assign]
    later = open_store(store_url)  # a third, starting after them
    try:
        first, second = await asyncio.gather(Seals(None, store).kept_secret(), Seals(None, other).kept_secret())
        third = await Seals(None, later).kept_secret()
    finally:
        await other.close()
        await later.close()
    assert first == second == third


def on_the_wire(put: Callable[[StoredResponse], Awaitable[None]], delay: float) -> Any:
    async def late(stored: StoredResponse) -> None:
        await asyncio.sleep(delay)
        await put(stored)

    return late


def archive_on(store: Store) -> ResponseArchive:
    config = SimpleNamespace(gateway=SimpleNamespace(responses_ttl_seconds=60))
    api: Any = SimpleNamespace(gateway=SimpleNamespace(store=store, config=config))
    return ResponseArchive(api)
