"""DynamoDB refusing calls as it does under contention, which neither emulator ever does: a client to inject it."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from adapters.sigv4 import Credentials
from adapters.store.dynamo_client import ERROR_CLASSES, DynamoDBClient, DynamoDBError, error_response
from tests.support.dynamo import DynamoServer


class FlakyClient(DynamoDBClient):
    """The gateway's DynamoDB client on the test server, refusing calls as DynamoDB does under contention
    (neither emulator ever does): a refused call is never sent, so nothing of it is applied.

    `fail(operation, code, times)` refuses the next `times` calls of an operation (`UpdateItem`,
    `TransactWriteItems`, ...); `fail_randomly(odds, code)` refuses that share of every write. A
    `TransactionCanceledException` carries one `TransactionConflict` reason per item, as DynamoDB's does.
    `lose(operation, times)` sends the next calls and then fails them, as a timeout after DynamoDB applied
    the write does.
    `sent` counts the calls that reached the server, per operation; `refused`, those refused here."""

    WRITES = frozenset({"UpdateItem", "PutItem", "TransactWriteItems", "DeleteItem"})

    def __init__(self, server: DynamoServer, seed: int = 7) -> None:
        super().__init__("us-east-1", Credentials("testing", "testing"), server.url, read_timeout=15)
        self.scripted: dict[str, list[str]] = {}
        self.lost: Counter[str] = Counter()
        self.odds = 0.0
        self.random_code = ""
        self.random = random.Random(seed)
        self.sent: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def fail(self, operation: str, code: str, times: int) -> None:
        self.scripted.setdefault(operation, []).extend([code] * times)

    def lose(self, operation: str, times: int) -> None:
        self.lost[operation] += times

    def fail_randomly(self, odds: float, code: str) -> None:
        self.odds, self.random_code = odds, code

    async def call(self, operation: str, request: dict[str, Any]) -> dict[str, Any]:
        queued = self.scripted.get(operation)
        code = queued.pop(0) if queued else None
        if code is None and operation in self.WRITES and self.random.random() < self.odds:
            code = self.random_code
        if code is not None:
            self.refused[operation] += 1
            fields = None
            if code == "TransactionCanceledException":
                items = request.get("TransactItems", [None])
                fields = {"CancellationReasons": [{"Code": "TransactionConflict"} for _ in items]}
            raise ERROR_CLASSES.get(code, DynamoDBError)(operation, error_response(400, code, "injected", fields))
        self.sent[operation] += 1
        answer = await super().call(operation, request)
        if self.lost[operation]:
            self.lost[operation] -= 1
            raise DynamoDBError(operation, error_response(0, "ConnectionError", "injected: the answer was lost"))
        return answer
