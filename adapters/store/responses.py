"""Stored Responses API answers, for each backend: a mixin per store class.

A response is kept whole, compressed (a conversation's items repeat a lot of text, and a DynamoDB item
holds at most 400 KB), under its id, until its expiry; reads treat an expired one as gone before the
backend's own clean-up (DynamoDB's TTL runs within days, SQLite's sweep on the next write) removes it.

DynamoDB deletes a response by removing its record and marking the item (`gone`, a token drawn by the deleting
call) rather than deleting the item: its client sends a call again when the answer does not come, and a delete
that had landed left nothing for the call sent again to find, so it said the response had not existed. The mark
sent again finds its own token and answers as the first would have; the item, its record gone, goes with its TTL.

The DynamoDB mixin imports the DynamoDB client in its methods: a process on the embedded store never imports
it (with the store package's, 3.2 million instructions of a Lambda's cold start on SQLite).

| backend | where |
|---|---|
| SQLite | table `responses` (`id`, `expires_at`, `data`) |
| DynamoDB | `pk=RESP#<id>`, `sk=RESP`, `data` (base64 of the compressed record), `expires_at`, `ttl`, `gone` |
"""

from __future__ import annotations

import base64
import time
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import orjson

from adapters.store.expressions import num, read_num, text
from handler.ports import StoredResponse, StoreError

if TYPE_CHECKING:
    import sqlite3

RESPONSES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, expires_at REAL NOT NULL, data BLOB NOT NULL) "
    "WITHOUT ROWID"
)
# Expired responses are deleted as each new one is kept: by this index, not by reading every stored response
# (5 ms a put with 20,000 of 4 KB kept, on the event loop, and growing with them; 0.05 ms by the index).
RESPONSES_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)"
RESPONSE_SK = "RESP"
DATA = "data"
GONE = "gone"  # on a DynamoDB response item: the token of the call that deleted it (its `data` removed)
# DynamoDB's item limit is 400 KB; what a response may take of it, keys and attribute names aside.
MAX_DYNAMODB_DATA = 380_000


def pack(stored: StoredResponse) -> bytes:
    """The record compressed: a JSON line of its fields, then its body as it is."""
    fields = {
        "id": stored.id,
        "key_id": stored.key_id,
        "ancestors": stored.ancestors,
        "created_at": stored.created_at,
        "expires_at": stored.expires_at,
    }
    return zlib.compress(orjson.dumps(fields) + b"\n" + stored.body, 6)


def unpack(raw: bytes) -> StoredResponse:
    head, _, body = zlib.decompress(raw).partition(b"\n")  # JSON as orjson writes it has no raw newline
    data: dict[str, Any] = orjson.loads(head)
    return StoredResponse(
        id=str(data["id"]),
        key_id=str(data["key_id"]),
        ancestors=[str(a) for a in data.get("ancestors") or ()],
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        body=body,
    )


class SQLiteResponses:
    """`put_response`, `get_response`, `delete_response` on the SQLite store's connection. Each is one
    autocommitting statement (no transaction of the store's batches is open between its calls)."""

    db: sqlite3.Connection
    _responses_ready: bool = False

    def _responses(self) -> sqlite3.Connection:
        if not self._responses_ready:
            self.db.execute(RESPONSES_SCHEMA)
            self.db.execute(RESPONSES_EXPIRY_INDEX)  # (also on a file kept before the index was)
            self._responses_ready = True
        return self.db

    async def put_response(self, stored: StoredResponse) -> None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            db = self._responses()
            db.execute("DELETE FROM responses WHERE expires_at < ?", (time.time(),))
            db.execute(
                "INSERT OR REPLACE INTO responses (id, expires_at, data) VALUES (?, ?, ?)",
                (stored.id, stored.expires_at, pack(stored)),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot keep the response: {exc}") from exc

    async def get_response(self, response_id: str) -> StoredResponse | None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            row = (
                self._responses()
                .execute("SELECT data FROM responses WHERE id = ? AND expires_at >= ?", (response_id, time.time()))
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot read the response: {exc}") from exc
        return unpack(row[0]) if row else None

    async def delete_response(self, response_id: str) -> bool:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            cursor = self._responses().execute(
                "DELETE FROM responses WHERE id = ? AND expires_at >= ?", (response_id, time.time())
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot delete the response: {exc}") from exc
        return cursor.rowcount > 0


class DynamoDBResponses:
    """The same on the DynamoDB store's table: one item per response (see the module docstring)."""

    client: Any
    table: str

    @staticmethod
    def _response_key(response_id: str) -> dict[str, Any]:
        return {"pk": text(f"RESP#{response_id}"), "sk": text(RESPONSE_SK)}

    async def put_response(self, stored: StoredResponse) -> None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        data = base64.b64encode(pack(stored)).decode()
        if len(data) > MAX_DYNAMODB_DATA:
            raise StoreError(
                f"the response is too large to keep ({len(data)} bytes compressed, at most {MAX_DYNAMODB_DATA})"
            )
        item = {
            **self._response_key(stored.id),
            DATA: text(data),
            "expires_at": num(stored.expires_at),  # (what a delete sent again answers by: `data` is gone then)
            "ttl": num(int(stored.expires_at)),
        }
        await call(self.client, "put_item", TableName=self.table, Item=item)

    async def get_response(self, response_id: str) -> StoredResponse | None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        answer = await call(
            self.client, "get_item", TableName=self.table, Key=self._response_key(response_id), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item or DATA not in item:  # (deleted: `gone`)
            return None
        stored = unpack(base64.b64decode(item[DATA]["S"]))
        return stored if stored.expires_at >= time.time() else None

    async def delete_response(self, response_id: str) -> bool:
        """Removes the record and marks the item deleted by this call (see the module docstring); whether it
        existed and had not expired. The request, sent again, is the same: its token, and its `now` here."""
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use)

        now = time.time()
        try:
            answer = await call(
                self.client,
                "update_item",
                TableName=self.table,
                Key=self._response_key(response_id),
                UpdateExpression="SET #gone = :token REMOVE #data",
                ConditionExpression="attribute_exists(#data) OR #gone = :token",
                ExpressionAttributeNames={"#gone": GONE, "#data": DATA},
                ExpressionAttributeValues={":token": text(uuid.uuid4().hex)},
                ReturnValues="ALL_OLD",
            )
        except ConditionFailed:  # unknown, or deleted by another call
            return False
        old = answer["Attributes"]
        if DATA in old:
            return unpack(base64.b64decode(old[DATA]["S"])).expires_at >= now
        # Sent again: the first call removed the record. A response kept before `expires_at` was written has
        # only its `ttl`, the second it expires in.
        return read_num(old, "expires_at") >= now if "expires_at" in old else read_num(old, "ttl") + 1 > now
