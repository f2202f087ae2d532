"""The gateway's own DynamoDB client: wire format, errors as boto3 shapes them, retries, and when it is used."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from adapters.sigv4 import Credentials
from adapters.store import open_store
from adapters.store.dynamo_client import (
    ConditionalCheckFailedException,
    DynamoDBClient,
    DynamoDBError,
    TransactionCanceledException,
    call,
)
from adapters.store.dynamodb import DynamoDBStore
from handler.ports import STORE_DEADLINE, StoreDeadlineError, StoreError
from tests.support.dynamo import DynamoServer

CREDENTIALS = Credentials("AKIDTEST", "secret", "token")
KEY = {"pk": {"S": "METER#k"}, "sk": {"S": "METER"}}


def scripted(*answers: Callable[[httpx.Request], httpx.Response]) -> tuple[DynamoDBClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    script = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return script.pop(0)(request)

    client = DynamoDBClient("eu-west-1", CREDENTIALS, transport=httpx.MockTransport(answer))
    return client, seen


def ok(body: dict[str, Any]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, json=body)


def error(status: int, code: str, **fields: Any) -> Callable[[httpx.Request], httpx.Response]:
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": f"{code} happened", **fields}
    return lambda request: httpx.Response(status, json=body, headers={"content-type": "application/x-amz-json-1.0"})


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused")


async def test_a_call_is_one_signed_json_post() -> None:
    client, seen = scripted(ok({"Attributes": {"n": {"N": "2"}}}))
    answer = await client.update_item(TableName="t", Key=KEY, UpdateExpression="ADD n :one")
    assert answer == {"Attributes": {"n": {"N": "2"}}}
    (request,) = seen
    assert str(request.url) == "https://dynamodb.eu-west-1.amazonaws.com/"
    assert request.method == "POST"
    assert request.headers["x-amz-target"] == "DynamoDB_20120810.UpdateItem"
    assert request.headers["content-type"] == "application/x-amz-json-1.0"
    assert request.headers["x-amz-security-token"] == "token"
    assert request.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/eu-west-1/dynamodb/aws4_request" in request.headers["authorization"]
    # (no coding of the answer accepted, which the client would not decode: signed as it is sent)
    assert request.headers["accept-encoding"] == "identity"
    assert "accept-encoding;" in request.headers["authorization"].split("SignedHeaders=")[1]
    assert json.loads(request.content) == {"TableName": "t", "Key": KEY, "UpdateExpression": "ADD n :one"}


async def test_errors_carry_botocores_response_shape() -> None:
    client, _ = scripted(
        error(400, "ConditionalCheckFailedException", Item={"n": {"N": "9"}}),
        error(400, "TransactionCanceledException", CancellationReasons=[{"Code": "ConditionalCheckFailed"}]),
        error(400, "ResourceNotFoundException"),
    )
    with pytest.raises(ConditionalCheckFailedException) as failed:
        await client.update_item(TableName="t", Key=KEY)
    assert failed.value.response["Error"] == {
        "Code": "ConditionalCheckFailedException",
        "Message": "ConditionalCheckFailedException happened",
    }
    assert failed.value.response["Item"] == {"n": {"N": "9"}}
    with pytest.raises(client.exceptions.TransactionCanceledException) as canceled:
        await client.transact_write_items(TransactItems=[])
    assert isinstance(canceled.value, TransactionCanceledException)
    assert canceled.value.response["CancellationReasons"] == [{"Code": "ConditionalCheckFailed"}]
    with pytest.raises(DynamoDBError) as missing:
        await client.get_item(TableName="nope", Key=KEY)
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


async def test_throttling_server_errors_and_refused_connections_are_retried() -> None:
    client, seen = scripted(error(400, "ProvisionedThroughputExceededException"), refused, ok({"Item": KEY}))
    assert await client.get_item(TableName="t", Key=KEY) == {"Item": KEY}
    assert len(seen) == 3
    client, seen = scripted(*[error(500, "InternalServerError")] * 3)
    with pytest.raises(DynamoDBError) as failed:
        await client.get_item(TableName="t", Key=KEY)
    assert failed.value.response["Error"]["Code"] == "InternalServerError" and len(seen) == 3
    client, seen = scripted(error(400, "ConditionalCheckFailedException"), ok({}))
    with pytest.raises(ConditionalCheckFailedException):  # never retried: the answer is final
        await client.update_item(TableName="t", Key=KEY)
    assert len(seen) == 1


TOKEN = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+Zq81LmN0pX4vR7tY2uW9="
SIGNATURE = "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
# What DynamoDB says of a request whose signature it could not match: the canonical request, its session token
# included; and an error quoting the request's `Authorization` header, as a proxy's may.
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access "
    "Key and signing method.\n\nThe Canonical String for this request should have been\n'POST\n/\n\n"
    "content-type:application/x-amz-json-1.0\nhost:dynamodb.eu-west-1.amazonaws.com\nx-amz-date:20261205T101010Z\n"
    f"x-amz-security-token:{TOKEN}\nx-amz-target:DynamoDB_20120810.GetItem\n\n"
    "content-type;host;x-amz-date;x-amz-security-token;x-amz-target\n"
    "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'"  # (the body's hash)
)
QUOTED = (
    "refused: Authorization: AWS4-HMAC-SHA256 Credential=ASIAZQ81LMN0PX4VR7TY/20261205/eu-west-1/dynamodb/"
    f"aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature={SIGNATURE}"
)


@pytest.mark.parametrize("message", [MISMATCH, QUOTED], ids=["canonical-request", "authorization"])
@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_quoting_the_calls_credentials_has_them_redacted_as_it_is_made(
    status: int, message: str, only_secrets: Callable[..., None]
) -> None:
    """DynamoDB's error for a signature it could not match quotes the canonical request, the session token in its
    `x-amz-security-token:` line; an error may quote the `Authorization` header (the access key id, the signature).
    The `StoreError` carried the DynamoDB error whole as its cause, for any path that logs a traceback (review): the
    error's message, and its response's, are redacted as the error is made, known secrets or not."""
    only_secrets()  # (none: the shapes alone find them)
    body = {"__type": "com.amazon.coral.service#InvalidSignatureException", "message": message}
    client, _ = scripted(*[lambda request: httpx.Response(status, json=body)] * 3)
    with pytest.raises(StoreError) as failed:
        await call(client, "get_item", TableName="t", Key=KEY)
    cause = failed.value.__cause__
    assert isinstance(cause, DynamoDBError)
    said = f"{failed.value} {cause} {cause.response}"
    assert TOKEN[:20] not in said and "ASIAZQ81" not in said and SIGNATURE not in said, said
    assert "InvalidSignatureException" in said and "[REDACTED]" in said


@contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """Store calls made meanwhile end `seconds` from now (`STORE_DEADLINE`, as a request's deadline sets it)."""
    bound = STORE_DEADLINE.set(asyncio.get_running_loop().time() + seconds)
    try:
        yield
    finally:
        STORE_DEADLINE.reset(bound)


async def test_under_a_deadline_a_call_that_is_never_answered_ends_there_retries_included() -> None:
    """An endpoint that never answers: three attempts of 5 s (its connect and read timeouts) whatever the request's
    deadline, 15 s. Now the attempt in flight is cut at the deadline and none follows."""
    seen: list[httpx.Request] = []

    async def silent(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    client = DynamoDBClient("eu-west-1", CREDENTIALS, transport=httpx.MockTransport(silent))
    started = time.perf_counter()
    with deadline_in(0.3), pytest.raises(StoreDeadlineError):
        await call(client, "get_item", TableName="t", Key=KEY)
    assert 0.25 < time.perf_counter() - started < 0.8
    assert len(seen) == 1
    with deadline_in(-1), pytest.raises(StoreDeadlineError):  # past already: nothing is sent
        await call(client, "get_item", TableName="t", Key=KEY)
    assert len(seen) == 1


async def test_under_a_deadline_contention_is_not_waited_out_past_it() -> None:
    """A write refused for contention is sent again up to 8 times, over a second or more of backoff; under a deadline
    the retries stop where the next would end past it."""
    client, seen = scripted(*[error(400, "TransactionConflictException")] * 8)
    started = time.perf_counter()
    with deadline_in(0.05), pytest.raises(StoreDeadlineError):
        await call(client, "update_item", TableName="t", Key=KEY)
    assert time.perf_counter() - started < 0.1
    assert 1 <= len(seen) < 8


async def test_against_a_dynamodb_server(dynamo: DynamoServer) -> None:
    table = dynamo.create_table()
    client = DynamoDBClient("us-east-1", CREDENTIALS, endpoint_url=dynamo.url)
    try:
        await client.put_item(TableName=table, Item={**KEY, "n": {"N": "1"}})
        add_one_below_two = {
            "TableName": table,
            "Key": KEY,
            "UpdateExpression": "ADD n :one",
            "ConditionExpression": "n < :limit",
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":limit": {"N": "2"}},
        }
        answer = await client.update_item(**add_one_below_two, ReturnValues="ALL_NEW")
        assert answer["Attributes"]["n"] == {"N": "2"}
        with pytest.raises(ConditionalCheckFailedException) as failed:
            await client.update_item(**add_one_below_two, ReturnValuesOnConditionCheckFailure="ALL_OLD")
        assert failed.value.response["Item"]["n"] == {"N": "2"}
        assert (await client.get_item(TableName=table, Key=KEY, ConsistentRead=True))["Item"]["n"] == {"N": "2"}
    finally:
        await client.close()


def test_the_store_uses_it_whatever_the_credentials(dynamo: DynamoServer) -> None:
    """One client for every environment: keys in the environment or a role (tests/unit/adapters/test_aws.py
    runs the store on container credentials)."""
    store = open_store(dynamo.store_url("t"))
    assert isinstance(store, DynamoDBStore) and isinstance(store.client, DynamoDBClient)


async def test_a_snapstart_restore_drops_the_stores_connections(dynamo: DynamoServer) -> None:
    """`Gateway.reopen` (the restore hook) closes the DynamoDB client's pooled connections, which a snapshot
    froze dead; the next call opens a new one."""
    import time

    from handler.pipeline.gateway import build_gateway
    from handler.ports import KeyRecord
    from tests.functional.conftest import FAKE_KEYS, gateway_config

    store = open_store(dynamo.store_url(dynamo.create_table()))
    assert isinstance(store, DynamoDBStore) and isinstance(store.client, DynamoDBClient)
    pools = store.client.http._transport._pools  # type: ignore[attr-defined]
    record = KeyRecord(id="snap", name="snap", secret_hash="h" * 64, created_at=time.time())
    await store.create_key(record)
    assert store.client.http._transport._pools  # type: ignore[attr-defined]
    gateway = build_gateway(config=gateway_config("http://127.0.0.1:9", {"openai"}), store=store, environ=FAKE_KEYS)
    await gateway.reopen()
    assert not store.client.http._transport._pools  # type: ignore[attr-defined]
    assert pools is not store.client.http._transport._pools or not pools  # type: ignore[attr-defined]
    assert await store.get_key("snap") is not None
    await gateway.aclose()
