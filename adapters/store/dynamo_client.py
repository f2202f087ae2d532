"""DynamoDB's JSON API over the gateway's own HTTP client: the store's hot-path calls without botocore.

boto3's client spends several times this client's CPU per `UpdateItem` (request serialization and
validation, the event hooks, the response parser, the retry handler; docs/performance.md has the figures), and
the store ran each call on a thread to keep it off the event loop, so the two calls of a request cost more
than all the rest of the gateway's work. The JSON API needs none of that: the store's requests are already in its wire
form (attribute values as `{"S": ...}` / `{"N": ...}`), so a call is one `orjson.dumps`, a SigV4 signature
(adapters/sigv4.py) and one POST on a kept-alive connection (adapters/http/http1.py), awaited on the event loop.

It answers as boto3's low-level client does, so the store serves both: the same method names (`get_item`,
`update_item`, `transact_write_items`, ...; awaitable here), the same response dicts, and failures as
exceptions carrying boto3's `response` (`Error.Code`, `Error.Message`, and the error's own fields such as
`Item` or `CancellationReasons`), with `exceptions.ConditionalCheckFailedException` and
`exceptions.TransactionCanceledException` to catch. Throttling, 5xx answers, timeouts and failed
connections are retried (at most `MAX_ATTEMPTS`, with jittered backoff), as botocore's standard mode does. Under a
deadline (`handler.ports.STORE_DEADLINE`: the request's, or a settlement's) the attempts end there: the one in flight
is cut at it, and none is sent, nor waited for, that could not end before it; the failure's code is then
`DEADLINE_CODE`.

Credentials and the endpoint come from the process's AWS layer (adapters/aws.py): the environment's keys,
else botocore's chain (profiles, container and instance roles), refreshed off the hot path; the endpoint
given, else `AWS_ENDPOINT_URL_DYNAMODB`/`AWS_ENDPOINT_URL`, else the region's in its partition.

`call` is how the store's modules (dynamodb.py, region_leases.py, dynamo_responses.py, dynamo_signins.py) make
every call: a lost condition is `ConditionFailed`, a call refused for contention is sent again (not past the
deadline), a call the deadline cut is `StoreDeadlineError`, anything else is `StoreError`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson

from adapters.aws import AwsCredentials, endpoint
from adapters.http import ACCEPT_ENCODING, IDENTITY
from adapters.http.client import HttpClient
from adapters.http.http1 import Http1Transport
from adapters.sigv4 import Credentials, Signer
from adapters.store.expressions import Item
from handler.ports import STORE_DEADLINE, StoreDeadlineError, StoreError
from handler.redaction import redact_message

API_VERSION = "DynamoDB_20120810"
CONTENT_TYPE = "application/x-amz-json-1.0"
MAX_ATTEMPTS = 3
MAX_CONNECTIONS = 64
BACKOFF_S = 0.025
# A call's failure code once its context's deadline (`STORE_DEADLINE`) cut it, or left no time for another attempt.
DEADLINE_CODE = "DeadlineExceeded"
# botocore's standard retry mode: throttling and transient errors (and every 5xx answer, below).
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
OPERATIONS = {
    "get_item": "GetItem",
    "put_item": "PutItem",
    "update_item": "UpdateItem",
    "delete_item": "DeleteItem",
    "query": "Query",
    "scan": "Scan",
    "transact_write_items": "TransactWriteItems",
    "transact_get_items": "TransactGetItems",
    "batch_write_item": "BatchWriteItem",
    "batch_get_item": "BatchGetItem",
    "describe_table": "DescribeTable",
}


class DynamoDBError(Exception):
    """A failed call, shaped as botocore's `ClientError`: `response["Error"]["Code"]` and the rest.

    Its message, and its response's, are redacted as it is made (`redact_message`): DynamoDB's error for a signature
    it could not match quotes the canonical request, the session token in its `x-amz-security-token:` line, and an
    error may quote the `Authorization` header; the `StoreError` made of it carries it as its cause, which any path
    that logs a traceback would print."""

    def __init__(self, operation: str, response: dict[str, Any]) -> None:
        error = response.get("Error", {})
        if error.get("Message"):
            error = {**error, "Message": redact_message(str(error["Message"]))}
            response = {**response, "Error": error}
        super().__init__(f"{operation}: {error.get('Code')}: {error.get('Message')}")
        self.operation_name = operation
        self.response = response


class ConditionalCheckFailedException(DynamoDBError):
    pass


class TransactionCanceledException(DynamoDBError):
    pass


class Exceptions:
    """What the store catches by class, as on a boto3 client's `exceptions`."""

    ClientError = DynamoDBError
    ConditionalCheckFailedException = ConditionalCheckFailedException
    TransactionCanceledException = TransactionCanceledException


ERROR_CLASSES: dict[str, type[DynamoDBError]] = {
    "ConditionalCheckFailedException": ConditionalCheckFailedException,
    "TransactionCanceledException": TransactionCanceledException,
}


class DynamoDBClient:
    """See the module docstring. One per region; its connections are reused across calls."""

    exceptions = Exceptions

    def __init__(
        self,
        region: str,
        credentials: AwsCredentials | Credentials,
        endpoint_url: str | None = None,
        connect_timeout: float = 1.0,
        read_timeout: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = endpoint("dynamodb", region, endpoint_url) + "/"
        parsed = httpx.URL(self.url)
        self.host = parsed.netloc.decode("ascii")
        self.path = parsed.path
        self.region = region
        self.credentials = credentials
        fixed = credentials if isinstance(credentials, Credentials) else credentials.current()
        self.signer = Signer(fixed, region, "dynamodb")
        # At most MAX_CONNECTIONS calls in flight, as boto3's pool allows: a burst waits for a connection
        # rather than opening hundreds at once.
        self.http = HttpClient(
            transport or Http1Transport(max_per_origin=MAX_CONNECTIONS), connect_timeout, read_timeout
        )

    def __getattr__(self, name: str) -> Callable[..., Awaitable[dict[str, Any]]]:
        operation = OPERATIONS.get(name)
        if operation is None:
            raise AttributeError(name)

        async def call(**request: Any) -> dict[str, Any]:
            return await self.call(operation, request)

        return call

    async def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(request)
        # (`accept-encoding`, which the HTTP client adds to a request without it: signed as sent.)
        headers = {
            "content-type": CONTENT_TYPE,
            "x-amz-target": f"{API_VERSION}.{operation}",
            ACCEPT_ENCODING: IDENTITY,
        }
        by = STORE_DEADLINE.get()
        if past(by):  # (nothing sent: a write cut as it went out may land unknown to anyone)
            raise DynamoDBError(operation, error_response(0, DEADLINE_CODE, "the deadline had passed"))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            last = attempt == MAX_ATTEMPTS
            signed = self._signer().headers(self.host, self.path, headers, body)
            try:
                status, raw = await self.http.post(self.url, signed, body, by)
            except httpx.HTTPError as exc:  # refused, reset, timed out: nothing answered
                message = f"{type(exc).__name__}: {exc}"
                if last:
                    code = DEADLINE_CODE if past(by) else "ConnectionError"
                    raise DynamoDBError(operation, error_response(0, code, message)) from exc
                await backoff(operation, attempt, by, message)
                continue
            if status == 200:
                answer: dict[str, Any] = orjson.loads(raw) if raw else {}
                return answer
            failure = parse_error(status, raw)
            code = failure["Error"]["Code"]
            if not last and (status >= 500 or code in RETRYABLE_CODES):
                await backoff(operation, attempt, by, f"{code}: {failure['Error']['Message']}")
                continue
            raise ERROR_CLASSES.get(code, DynamoDBError)(operation, failure)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _signer(self) -> Signer:
        """The signer for the credentials as of now (new keys from a role: a new signer)."""
        credentials = self.credentials
        if isinstance(credentials, AwsCredentials):
            current = credentials.current()
            if current is not self.signer.credentials:
                self.signer = Signer(current, self.region, "dynamodb")
        return self.signer

    async def close(self) -> None:
        await self.http.aclose()


def past(by: float | None, wait: float = 0.0) -> bool:
    """Whether the deadline `by` (the event loop's time; None: none) has passed, or will have after `wait` s."""
    return by is not None and asyncio.get_running_loop().time() + wait >= by


async def backoff(operation: str, attempt: int, by: float | None, failure: str) -> None:
    """The jittered wait before attempt `attempt + 1`; the call's failure (`DEADLINE_CODE`) instead if the deadline
    `by` has passed or will by then: the attempt could not end before it."""
    wait = random.uniform(0, BACKOFF_S * 2**attempt)  # noqa: S311 - jitter, not a secret
    if past(by, wait):
        raise DynamoDBError(operation, error_response(0, DEADLINE_CODE, f"out of time after {failure}"))
    await asyncio.sleep(wait)


def error_response(status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        **(fields or {}),
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


def parse_error(status: int, raw: bytes) -> dict[str, Any]:
    """DynamoDB's error body (`{"__type": "...#Code", "message": ...}` plus the error's own fields) as
    botocore shapes it."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        return error_response(status, f"HTTP{status}", raw[:200].decode("utf-8", "replace"))
    code = str(body.pop("__type", f"HTTP{status}")).rpartition("#")[2]
    message = str(body.pop("message", None) or body.pop("Message", None) or "")
    return error_response(status, code, message, body)


async def invoke(client: Any, operation: str, request: dict[str, Any]) -> Any:
    """`client.<operation>(**request)` for either client: awaited on the loop for this one, on a thread for
    boto3's (whose calls block)."""
    if isinstance(client, DynamoDBClient):
        return await client.call(OPERATIONS[operation], request)
    by = STORE_DEADLINE.get()
    if by is None:
        return await asyncio.to_thread(getattr(client, operation), **request)
    try:
        async with asyncio.timeout_at(by):  # (the thread runs on; its answer is dropped)
            return await asyncio.to_thread(getattr(client, operation), **request)
    except TimeoutError as exc:
        message = "no answer by the deadline"
        raise DynamoDBError(OPERATIONS[operation], error_response(0, DEADLINE_CODE, message)) from exc


def error_code(exc: BaseException) -> str:
    """What failed, for a message: the service's error code where there is one (either client's errors carry
    it in `response`), else the exception's class."""
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    return str(code) if code else type(exc).__name__


CONDITION_FAILED = "ConditionalCheckFailed"
# Contention (see `contended`): the error codes of DynamoDB's API reference, and a cancelled transaction's
# reasons (`CancellationReasons[].Code`). botocore retries the throttling ones (its standard mode), but not a
# transaction conflict, which is what two admissions racing on one key's meter item meet.
CONTENTION_CODES = frozenset(
    {
        "TransactionConflictException",
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
    }
)
CONTENTION_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
CONTENTION_ATTEMPTS = 8
BACKOFF_BASE_S = 0.01
BACKOFF_CAP_S = 0.4


class ConditionFailed(Exception):
    """A conditional write (or a transaction) lost; `item` is the item as it was (ALL_OLD), if returned."""

    def __init__(self, item: Item, reasons: list[Item] | None = None) -> None:
        super().__init__("condition failed")
        self.item = item
        self.reasons = reasons or []


def contended(code: str | None, reasons: list[Item]) -> bool:
    """Whether DynamoDB refused a call for contention, so that the same call, sent again, may pass: a
    transaction raced another write on one of its items, or a partition, the table or the account is over
    its throughput. Nothing of a refused call was applied, and its conditions are checked again."""
    if code in CONTENTION_CODES:
        return True
    return code == "TransactionCanceledException" and any(r.get("Code") in CONTENTION_REASONS for r in reasons)


async def scanned(client: Any, **request: Any) -> AsyncIterator[dict[str, Any]]:
    """Every item a `Scan` of `request` finds, page after page, each page read once the one before is used."""
    while True:
        answer = await call(client, "scan", **request)
        for item in answer.get("Items", []):
            yield item
        if "LastEvaluatedKey" not in answer:
            return
        request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


async def call(client: Any, operation: str, **request: Any) -> Any:
    """One DynamoDB call off the event loop: a lost condition is `ConditionFailed`, anything else `StoreError`.

    A call refused for contention (`contended`) is sent again, up to `CONTENTION_ATTEMPTS` times, after a
    capped exponential backoff with full jitter (so racing writers spread out rather than collide again).
    Checks error codes rather than `client.exceptions` classes, which differ between clients of two sessions."""
    by = STORE_DEADLINE.get()
    for attempt in range(1, CONTENTION_ATTEMPTS + 1):
        try:
            return await invoke(client, operation, request)
        except Exception as exc:  # botocore raises many unrelated classes; every one means "store failed"
            response = getattr(exc, "response", None) or {}
            code = response.get("Error", {}).get("Code")
            reasons = response.get("CancellationReasons") or []
            if code == "ConditionalCheckFailedException":
                raise ConditionFailed(response.get("Item", {})) from exc
            if code == "TransactionCanceledException" and any(r.get("Code") == CONDITION_FAILED for r in reasons):
                raise ConditionFailed({}, reasons) from exc
            if code == DEADLINE_CODE:
                raise StoreDeadlineError(f"DynamoDB {operation} did not end by the deadline") from exc
            if attempt < CONTENTION_ATTEMPTS and contended(code, reasons):
                wait = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))  # noqa: S311
                if past(by, wait):
                    raise StoreDeadlineError(
                        f"DynamoDB {operation} was refused for contention until the deadline"
                    ) from exc
                await asyncio.sleep(wait)
                continue
            if code == "ResourceNotFoundException":
                raise StoreError(f"DynamoDB {operation} failed: {missing_table(client, request)}") from exc
            raise StoreError(f"DynamoDB {operation} failed: {error_code(exc)}") from exc
    raise AssertionError("unreachable")


def missing_table(client: Any, request: dict[str, Any]) -> str:
    """What a call's `ResourceNotFoundException` means, said with the table's name and how to make it: the code
    alone (`DynamoDB query failed: ResourceNotFoundException`) names neither."""
    named = [request.get("TableName")] + [
        part.get("TableName") for item in request.get("TransactItems", []) for part in item.values()
    ]
    tables = sorted({str(t) for t in named if t} | set(request.get("RequestItems", {})))
    region = getattr(client, "region", None) or getattr(getattr(client, "meta", None), "region_name", None)
    where = f" in {region}" if region else ""
    return (
        f"ResourceNotFoundException: no table {' or '.join(repr(t) for t in tables) or 'of that name'}{where}. "
        "Name the table of the deployed stack (dynamodb://TABLE?region=R), or create it by deploying the stack "
        "(`sam build && sam deploy --guided`, docs/deploying.md)"
    )  # the loop returns or raises on its last attempt
