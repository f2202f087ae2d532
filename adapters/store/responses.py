"""Stored Responses API answers, for each backend: a mixin per store class.

A response is kept whole, compressed (a conversation's items repeat a lot of text), under its id, until its
expiry; reads treat an expired one as gone before the backend's own clean-up (DynamoDB's TTL runs within days,
SQLite's sweep on the next write) removes it. The first write of an id stands while it lives (put if absent):
two processes making the reasoning seal's secret at once both read back the one that was kept.

On DynamoDB, whose item holds at most 400 KB, a record is cut into parts of `PART_BYTES` (binary, not base64): the
first on the response's item, the others on items of their own under the same partition key, named by a token
drawn for the write (`RESP#<token>#<n>`). The parts are written first and the response's item last, naming the
token and the count: a reader finds the whole record or nothing, also in another region of a global table, where
the items replicate one by one (a part not there yet reads as the response not there yet), and the parts of a
write that failed are never named (they go with their TTL). A record past `MAX_DYNAMODB_RECORD` is refused
(`ResponseTooLarge`). Each response still keeps its whole conversation: a turn's write grows with it (a 120 KB
screenshot a turn writes some 120 KB more each turn), the price of every response standing alone (its expiry,
its deletion and who may read it are its own).

DynamoDB deletes a response by removing its record and marking the item (`gone`, a token drawn by the deleting
call) rather than deleting the item: its client sends a call again when the answer does not come, and a delete
that had landed left nothing for the call sent again to find, so it said the response had not existed. The mark
sent again finds its own token and answers as the first would have; the item, its record gone, goes with its TTL.

The DynamoDB mixin imports the DynamoDB client in its methods: a process on the embedded store never imports
it (with the store package's, 3.2 million instructions of a Lambda's cold start on SQLite).

An item a response holds under an id that does not name the response (a provider's own: OpenAI's `fc_…`, `rs_…`;
the gateway's own ids embed their response's token, see `handler.api.responses_api.ResponseIds`) is indexed beside
it, so that an `item_reference` to it, or its reasoning sent back by value, finds the response (`responses_holding`):
one row, or item, per item and response, written with the response and living as long. SQLite deletes a response's
rows with it; DynamoDB leaves them to their TTL (the gateway's policy has no `DeleteItem`), which is the same to a
reader: it reads the response a row names, and a deleted one is not there.

| backend | where |
|---|---|
| SQLite | table `responses` (`id`, `expires_at`, `data`) |
| | table `response_items` (`item_id`, `created_at`, `response_id`, `expires_at`) |
| DynamoDB | `pk=RESP#<id>`, `sk=RESP`: `record` (part 0, binary), `parts`, `token`, `expires_at`, `ttl`, `gone` |
| | `pk=RESP#<id>`, `sk=RESP#<token>#<n>`: `record` (part n), `ttl` |
| | `pk=RESPITEM#<item id>`, `sk=<created_at>#<response id>`: `response`, `expires_at`, `ttl` |
| | (kept before parts: `data`, the whole compressed record's base64, a string, on the response's item) |
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from adapters.store.expressions import num, read_num, text
from handler.ports import MAX_HOLDERS, ResponseTooLarge, StoredResponse, StoreError

if TYPE_CHECKING:
    import sqlite3

logger = logging.getLogger("gateway")

RESPONSES_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, expires_at REAL NOT NULL, data BLOB NOT NULL) "
    "WITHOUT ROWID"
)
# Expired responses are deleted as each new one is kept: by this index, not by reading every stored response
# (5 ms a put with 20,000 of 4 KB kept, on the event loop, and growing with them; 0.05 ms by the index).
RESPONSES_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)"
RESPONSE_ITEMS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS response_items (item_id TEXT NOT NULL, created_at REAL NOT NULL, "
    "response_id TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (item_id, created_at, response_id)) WITHOUT ROWID"
)
RESPONSE_ITEMS_INDEXES = (
    "CREATE INDEX IF NOT EXISTS response_items_expiry ON response_items (expires_at)",
    "CREATE INDEX IF NOT EXISTS response_items_response ON response_items (response_id)",
)
RESPONSE_SK = "RESP"
HOLDER_PK = "RESPITEM#"  # an item's index entries (`responses_holding`)
RECORD = "record"  # a part of the compressed record, binary
DATA = "data"  # the whole compressed record in base64, as responses kept before `record` were
PARTS = "parts"
TOKEN = "token"
GONE = "gone"  # on a DynamoDB response item: the token of the call that deleted it (its record removed)
# A part of a record on one DynamoDB item (at most 400 KB). 300 KB: moto, the tests' DynamoDB, counts a binary
# value by its base64 (400 KB), DynamoDB by its bytes.
PART_BYTES = 300_000
# The largest compressed record kept on DynamoDB (54 parts): some 20 MB of images' base64, or far more text than
# any model's context holds. Read whole on every turn that continues it, and written again with each turn.
MAX_DYNAMODB_RECORD = 16_000_000


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

    def _lock_wait(self) -> contextlib.AbstractContextManager[None]:
        """The store's bound on SQLite's wait for another process's write lock (`SQLiteStore._lock_wait`)."""
        return contextlib.nullcontext()

    def _responses(self) -> sqlite3.Connection:
        if not self._responses_ready:
            self.db.execute(RESPONSES_SCHEMA)
            self.db.execute(RESPONSES_EXPIRY_INDEX)  # (also on a file kept before the index was)
            self.db.execute(RESPONSE_ITEMS_SCHEMA)
            for index in RESPONSE_ITEMS_INDEXES:
                self.db.execute(index)
            self._responses_ready = True
        return self.db

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = ()) -> None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            db = self._responses()
            with self._lock_wait():  # (each statement autocommits: it may wait for another process's write lock)
                now = time.time()
                db.execute("DELETE FROM responses WHERE expires_at < ?", (now,))
                db.execute("DELETE FROM response_items WHERE expires_at < ?", (now,))
                written = db.execute(
                    "INSERT OR IGNORE INTO responses (id, expires_at, data) VALUES (?, ?, ?)",  # (expired ones: gone)
                    (stored.id, stored.expires_at, pack(stored)),
                )
                if written.rowcount > 0 and held:  # (the first write's items stand with it)
                    db.executemany(
                        "INSERT OR IGNORE INTO response_items (item_id, created_at, response_id, expires_at) "
                        "VALUES (?, ?, ?, ?)",
                        [(item_id, stored.created_at, stored.id, stored.expires_at) for item_id in held],
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot keep the response: {exc}") from exc

    async def responses_holding(self, item_id: str) -> list[str]:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            rows = (
                self._responses()
                .execute(
                    "SELECT response_id FROM response_items WHERE item_id = ? AND expires_at >= ? "
                    "ORDER BY created_at DESC LIMIT ?",
                    (item_id, time.time(), MAX_HOLDERS),
                )
                .fetchall()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot read the response's items: {exc}") from exc
        return [str(row[0]) for row in rows]

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
            db = self._responses()
            with self._lock_wait():
                cursor = db.execute(
                    "DELETE FROM responses WHERE id = ? AND expires_at >= ?", (response_id, time.time())
                )
                db.execute("DELETE FROM response_items WHERE response_id = ?", (response_id,))
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot delete the response: {exc}") from exc
        return cursor.rowcount > 0


class DynamoDBResponses:
    """The same on the DynamoDB store's table: an item per response, and one per further part of a record past
    `PART_BYTES` (see the module docstring)."""

    client: Any
    table: str

    @staticmethod
    def _response_key(response_id: str, sk: str = RESPONSE_SK) -> dict[str, Any]:
        return {"pk": text(f"RESP#{response_id}"), "sk": text(sk)}

    @staticmethod
    def _part_sk(token: str, n: int) -> str:
        return f"{RESPONSE_SK}#{token}#{n}"

    def _binary(self, value: bytes) -> dict[str, Any]:
        """A binary value: base64 in the JSON API's wire form for this package's client, bytes for boto3's (which
        encodes them itself)."""
        from adapters.store.dynamo_client import DynamoDBClient  # (on first use: see the module docstring)

        return {"B": base64.b64encode(value).decode() if isinstance(self.client, DynamoDBClient) else value}

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = ()) -> None:

        record = pack(stored)
        if len(record) > MAX_DYNAMODB_RECORD:
            raise ResponseTooLarge(
                f"its conversation is too large to keep on DynamoDB ({len(record) / 1e6:.1f} MB compressed, "
                f"at most {MAX_DYNAMODB_RECORD / 1e6:g} MB)"
            )
        parts = [record[i : i + PART_BYTES] for i in range(0, len(record), PART_BYTES)] or [b""]
        ttl = num(int(stored.expires_at))
        item = {
            **self._response_key(stored.id),
            RECORD: self._binary(parts[0]),
            "expires_at": num(stored.expires_at),  # (what a delete sent again answers by: the record is gone then)
            "ttl": ttl,
        }
        # The index entries beside the record (no round trip more): one naming a response not written (its write
        # failed, or another's stood) is read as the hint it is (`responses_holding`).
        await asyncio.gather(
            self._put_record(stored.id, item, parts, ttl), *(self._index(item_id, stored, ttl) for item_id in held)
        )

    async def _index(self, item_id: str, stored: StoredResponse, ttl: dict[str, Any]) -> None:
        """An index entry of `responses_holding`; one not written leaves only that item unfound by its id (the
        response is kept: it must not be answered as not stored)."""
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        entry = {
            "pk": text(HOLDER_PK + item_id),
            "sk": text(f"{stored.created_at:017.6f}#{stored.id}"),  # (the newest last: read backwards)
            "response": text(stored.id),
            "expires_at": num(stored.expires_at),
            "ttl": ttl,
        }
        try:
            await call(self.client, "put_item", TableName=self.table, Item=entry)
        except StoreError as exc:
            logger.warning("an item of a response not indexed: %s", exc, extra={"response_id": stored.id})

    async def _put_record(
        self, response_id: str, item: dict[str, Any], parts: list[bytes], ttl: dict[str, Any]
    ) -> None:
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use: see the module docstring)

        if len(parts) > 1:
            token = uuid.uuid4().hex
            item.update({PARTS: num(len(parts)), TOKEN: text(token)})
            # The parts first: the response's item, written last, is what makes them a record.
            await asyncio.gather(
                *(
                    call(
                        self.client,
                        "put_item",
                        TableName=self.table,
                        Item={
                            **self._response_key(response_id, self._part_sk(token, n)),
                            RECORD: self._binary(part),
                            "ttl": ttl,
                        },
                    )
                    for n, part in enumerate(parts[1:], 1)
                )
            )
        try:
            await call(
                self.client,
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #ttl < :now",
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues={":now": num(int(time.time()))},
            )
        except ConditionFailed:  # a live response has the id: the first write stands (its parts, if any, expire)
            return

    async def responses_holding(self, item_id: str) -> list[str]:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        answer = await call(
            self.client,
            "query",
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": text(HOLDER_PK + item_id)},
            ScanIndexForward=False,
            Limit=MAX_HOLDERS,
            ConsistentRead=True,
        )
        now = time.time()
        return [item["response"]["S"] for item in answer.get("Items", []) if read_num(item, "expires_at") >= now]

    async def get_response(self, response_id: str) -> StoredResponse | None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        answer = await call(
            self.client, "get_item", TableName=self.table, Key=self._response_key(response_id), ConsistentRead=True
        )
        item = answer.get("Item")
        if not item or ("expires_at" in item and read_num(item, "expires_at") < time.time()):
            return None  # (an expired one's parts unread)
        if RECORD in item:
            record = await self._whole(response_id, item)
            if record is None:
                return None
        elif DATA in item:  # kept before `record`
            record = base64.b64decode(item[DATA]["S"])
        else:  # deleted: `gone`
            return None
        stored = unpack(record)
        return stored if stored.expires_at >= time.time() else None

    async def _whole(self, response_id: str, item: dict[str, Any]) -> bytes | None:
        """The compressed record of a response's item: its own part and the others, read at once; None when one
        of them is not there (not yet replicated to this region, or removed by a delete under way)."""
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        first = read_binary(item[RECORD])
        count = int(read_num(item, PARTS) or 1)
        if count == 1:
            return first
        token = item[TOKEN]["S"]
        answers = await asyncio.gather(
            *(
                call(
                    self.client,
                    "get_item",
                    TableName=self.table,
                    Key=self._response_key(response_id, self._part_sk(token, n)),
                    ConsistentRead=True,
                )
                for n in range(1, count)
            )
        )
        parts = [first]
        for answer in answers:
            part = answer.get("Item")
            if not part or RECORD not in part:
                return None
            parts.append(read_binary(part[RECORD]))
        return b"".join(parts)

    async def delete_response(self, response_id: str) -> bool:
        """Removes the record and marks the item deleted by this call (see the module docstring), then removes the
        record's other parts; whether it existed and had not expired. The request, sent again, is the same: its
        token, and its `now` here."""
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use)

        now = time.time()
        try:
            answer = await call(
                self.client,
                "update_item",
                TableName=self.table,
                Key=self._response_key(response_id),
                UpdateExpression="SET #gone = :token REMOVE #record, #data",
                ConditionExpression="attribute_exists(#record) OR attribute_exists(#data) OR #gone = :token",
                ExpressionAttributeNames={"#gone": GONE, "#record": RECORD, "#data": DATA},
                ExpressionAttributeValues={":token": text(uuid.uuid4().hex)},
                ReturnValues="ALL_OLD",
            )
        except ConditionFailed:  # unknown, or deleted by another call
            return False
        old = answer["Attributes"]
        if TOKEN in old:
            await self._remove_parts(response_id, old[TOKEN]["S"], int(read_num(old, PARTS)))
        if "expires_at" in old:
            return read_num(old, "expires_at") >= now
        if DATA in old:
            return unpack(base64.b64decode(old[DATA]["S"])).expires_at >= now
        # Sent again: the first call removed the record. A response kept before `expires_at` was written has
        # only its `ttl`, the second it expires in.
        return read_num(old, "ttl") + 1 > now

    async def _remove_parts(self, response_id: str, token: str, count: int) -> None:
        """The record's other parts removed as the first's was (the items go with their TTL; the gateway's policy
        has no `DeleteItem`). Already deleted for every reader, whose response's item names them no more: a part
        that could not be removed now goes with its TTL."""
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use)

        async def remove(n: int) -> None:
            try:
                await call(
                    self.client,
                    "update_item",
                    TableName=self.table,
                    Key=self._response_key(response_id, self._part_sk(token, n)),
                    UpdateExpression="REMOVE #record",
                    ConditionExpression="attribute_exists(pk)",  # (not an item made anew, without a TTL)
                    ExpressionAttributeNames={"#record": RECORD},
                )
            except ConditionFailed:  # gone with its TTL already
                pass

        try:
            await asyncio.gather(*(remove(n) for n in range(1, count)))
        except StoreError as exc:
            logger.warning("parts of a deleted response left to their TTL: %s", exc, extra={"response_id": response_id})


def read_binary(value: dict[str, Any]) -> bytes:
    raw = value["B"]
    return raw if isinstance(raw, bytes) else base64.b64decode(raw)
