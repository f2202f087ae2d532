"""Stored responses and `previous_response_id` at their edges: a response that cannot be continued answered as
OpenAI answers it, an id no store key can hold, a provider's item id that looks like the gateway's. Found by review
(storerev36)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from adapters.store import dynamo_client
from handler.api.responses_api import ResponseIds
from handler.api.responses_routes import held_ids
from tests.functional.conftest import Running, openai_client


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def continued(running: Running, key: str, previous: str) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "input": "And now?", "previous_response_id": previous}
    return httpx.post(f"{running.url}/v1/responses", json=body, headers=bearer(key), timeout=30)


@pytest.mark.parametrize("case", ["unknown", "deleted", "another_keys", "unstored"])
def test_a_previous_response_not_found_is_answered_as_openai_answers_it(running: Running, case: str) -> None:
    """OpenAI answers a `previous_response_id` it cannot continue with a 400, `code: previous_response_not_found`,
    "Previous response with id '...' not found." (the repository's own fake and tests/unit/handler/test_wire.py
    quote it). Clients recover on that code (they send the whole conversation again, as Codex proxies do); the
    gateway answered 404 `not_found` "Response with id ... not found.", which the openai SDK raises as NotFoundError
    and which no such recovery recognises. Found by review (storerev36)."""
    key = running.mint(name=f"prev-{case}")
    sdk = openai_client(running, key)
    if case == "unknown":
        previous = "resp_0123456789abcdef0123456789abcdef"
    elif case == "deleted":
        previous = sdk.responses.create(model="gpt-4o-mini", input="Hi").id
        assert httpx.delete(f"{running.url}/v1/responses/{previous}", headers=bearer(key)).status_code == 200
    elif case == "another_keys":
        previous = (
            openai_client(running, running.mint(name="owner")).responses.create(model="gpt-4o-mini", input="Hi").id
        )
    else:
        previous = sdk.responses.create(model="gpt-4o-mini", input="Hi", store=False).id
    answer = continued(running, key, previous)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "previous_response_not_found"
    assert error["param"] == "previous_response_id"
    assert error["message"] == f"Previous response with id '{previous}' not found."


class KeyTooLong(Exception):
    """DynamoDB's answer to a key past its bound, as botocore raises it (`response["Error"]["Code"]`)."""

    def __init__(self) -> None:
        super().__init__("ValidationException")
        self.response = {
            "Error": {
                "Code": "ValidationException",
                "Message": "One or more parameter values were invalid: Size of hashkey has exceeded the maximum "
                "size limit of2048 bytes",
            }
        }


def as_dynamodb_checks_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks a partition key's size on writes only; DynamoDB checks it on every call that names a key
    (GetItem, UpdateItem, Query: a ValidationException past 2,048 bytes)."""
    invoke = dynamo_client.invoke

    async def checked(client: Any, operation: str, request: dict[str, Any]) -> Any:
        keys = [request.get("Key") or {}, request.get("Item") or {}]
        values = request.get("ExpressionAttributeValues") or {}
        named = [str(k.get("pk", {}).get("S", "")) for k in keys] + [str(v.get("S", "")) for v in values.values()]
        if operation in ("get_item", "update_item", "put_item", "query") and any(
            len(pk.encode()) > 2048 for pk in named if pk.startswith(("RESP#", "RESPITEM#"))
        ):
            raise KeyTooLong
        return await invoke(client, operation, request)

    monkeypatch.setattr(dynamo_client, "invoke", checked)


def test_a_response_id_too_long_for_a_dynamodb_key_is_not_found_not_a_store_outage(
    running_dynamodb: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Message threads bound the id they look up (`LONGEST_MESSAGE_ID`, "a DynamoDB key holds 2 KB") and the item
    index bounds its ids (`MAX_INDEXED_ID`), but `GET`/`DELETE /v1/responses/{id}`, `input_items` and
    `previous_response_id` send any `resp_...` id to the store: on DynamoDB one past 2,048 bytes is DynamoDB's
    ValidationException, answered `503 store_unavailable` ("retry shortly", `x-should-retry: true`, retried by the
    SDKs) for an id that simply names nothing (404). Found by review (storerev36)."""
    running = running_dynamodb
    key = running.mint(name="long-id")
    as_dynamodb_checks_keys(monkeypatch)
    response_id = "resp_" + "a" * 2100
    url = f"{running.url}/v1/responses/{response_id}"
    answers = {
        "get": httpx.get(url, headers=bearer(key)),
        "delete": httpx.delete(url, headers=bearer(key)),
        "input_items": httpx.get(f"{url}/input_items", headers=bearer(key)),
        "previous_response_id": continued(running, key, response_id),
    }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert all(status in (400, 404) for status in statuses.values()), statuses


# OpenAI's ids: a prefix, then 48 hex digits (docs' examples: msg_67ccd3acc8d48190a77525dc6de64b4104becd8eaca4d36c).
# About one in 1,850 has its last 16 hex digits all decimal ((10/16)**16): such an id fully matches the gateway's own
# item id pattern (`ResponseIds.ITEM_ID`: a prefix, 32 hex digits, 3 or more decimal digits).
OPENAI_CALL_ID = "fc_68af0b2c5e7c8190a1b2c3d4e5f6a7b81234567890123456"


def test_an_openai_item_id_is_not_taken_for_one_the_gateway_made() -> None:
    """`ResponseIds.response_of` reads the OpenAI id above as the gateway's, naming a response `resp_68af...a7b8`
    that never existed. So `held_ids` leaves it out of the store's index of a natively served response's items, and
    an `item_reference` to that function call (or its reasoning sent back by value) looks in the made-up response,
    finds nothing, and is the 400 `Item with id '...' not found.` (the Relay also strips the id as the gateway's).
    Found by review (storerev36)."""
    assert ResponseIds.response_of(OPENAI_CALL_ID) is None
    response = {"id": "resp_68af0b2c4d0c81909d5f6e7a8b9c0d1e2f3a4b5c6d7e8f90", "output": [{"id": OPENAI_CALL_ID}]}
    assert held_ids(response) == [OPENAI_CALL_ID]
