"""Stored Responses API answers, for each backend: a mixin per store class.

A response is kept whole, compressed (a conversation's items repeat a lot of text), under its id, until its
expiry; reads treat an expired one as gone before the backend's own clean-up (DynamoDB's TTL runs within days,
SQLite's sweep on the next write) removes it. The first write of an id stands while it lives (put if absent):
two processes making the reasoning seal's secret at once both read back the one that was kept.

On DynamoDB a record is kept as the release before parts kept it, the base64 of the record on the response's item
(`data`), where it fits that release's bound (`dynamo_responses.MAX_DATA`): that release reads and deletes `data`
alone, and shares the table with this one during a rollout and after a rollback. A record past it (that release
never kept one), and what stands for a response too large to keep (`newer_only`: that release would fail on it), is
cut into parts of `PART_BYTES` (binary, not base64; a DynamoDB item holds at most 400 KB): the first on the
response's item, the others on items of their own under the same partition key, named by a token drawn for the write
(`RESP#<token>#<n>`). The parts are written first and the response's item last, naming the token and the count: a
reader finds the whole record or nothing, also in another region of a global table, where the items replicate one by
one (a part not there yet reads as the response not there yet), and the parts of a write that failed are never named
(they go with their TTL). A record past `MAX_DYNAMODB_RECORD` is refused (`ResponseTooLarge`). Each response still
keeps its whole conversation: a turn's write grows with it (a 120 KB screenshot a turn writes some 120 KB more each
turn), the price of every response standing alone (its expiry, its deletion and who may read it are its own).

DynamoDB deletes a response by removing its record and marking the item (`gone`, a token drawn by the deleting
call) rather than deleting the item: its client sends a call again when the answer does not come, and a delete
that had landed left nothing for the call sent again to find, so it said the response had not existed. The mark
sent again finds its own token and answers as the first would have; the item, its record gone, goes with its TTL.

The DynamoDB mixin is a module of its own (adapters/store/dynamo_responses.py), imported by the DynamoDB store,
and imports the DynamoDB client in its methods: a process on the embedded store never imports either (with the
store package's, 3.2 million instructions of a Lambda's cold start on SQLite; the mixin's own, since it keeps
records in parts, about a million).

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
| DynamoDB | `pk=RESP#<id>`, `sk=RESP`: `data` (the record's base64) or `record` (part 0, binary), `parts`, `token`, |
| | `expires_at`, `ttl`, `gone` |
| | `pk=RESP#<id>`, `sk=RESP#<token>#<n>`: `record` (part n), `ttl` |
| | `pk=RESPITEM#<item id>`, `sk=<created_at>#<response id>`: `response`, `expires_at`, `ttl` |
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from adapters.store.sqlite_tables import OnTheStore
from handler.ports import MAX_HOLDERS, StoredResponse, StoreError

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


class SQLiteResponses(OnTheStore):
    """`put_response`, `get_response`, `delete_response` on the SQLite store's connection, each one statement: made
    by the store with its first stored response (`OnTheStore`)."""

    _responses_ready = False

    def _responses(self) -> sqlite3.Connection:
        if not self._responses_ready:
            self.db.execute(RESPONSES_SCHEMA)
            self.db.execute(RESPONSES_EXPIRY_INDEX)  # (also on a file kept before the index was)
            self.db.execute(RESPONSE_ITEMS_SCHEMA)
            for index in RESPONSE_ITEMS_INDEXES:
                self.db.execute(index)
            self._responses_ready = True
        return self.db

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False) -> None:
        """(`newer_only` is DynamoDB's: this store has one layout, and never refuses a record as too large.)"""
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

    async def index_held(self, held_in: Callable[[StoredResponse], Sequence[str]]) -> int:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        written, after = 0, ""
        try:
            db = self._responses()
            while True:
                rows = db.execute(
                    "SELECT id, data FROM responses WHERE id > ? AND expires_at >= ? ORDER BY id LIMIT 100",
                    (after, time.time()),
                ).fetchall()
                if not rows:
                    return written
                after = str(rows[-1][0])
                entries = [
                    (item_id, stored.created_at, stored.id, stored.expires_at)
                    for stored in (unpack(row[1]) for row in rows)
                    for item_id in held_in(stored)
                ]
                with self._lock_wait():
                    cursor = db.executemany(
                        "INSERT OR IGNORE INTO response_items (item_id, created_at, response_id, expires_at) "
                        "VALUES (?, ?, ?, ?)",
                        entries,
                    )
                written += max(cursor.rowcount, 0)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot index the responses' items: {exc}") from exc

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
