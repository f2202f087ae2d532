"""Stored Responses API answers on the DynamoDB store's table (`DynamoDBResponses`): the record as one base64
string where the release before parts kept it so, else in binary parts, the response's item written last, the index
of the items a response holds. See adapters/store/responses.py's
docstring for the layout; this module is imported by the DynamoDB store alone, so a process on the embedded store
never reads it (nor the DynamoDB client, which its methods import on first use)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from adapters.store.expressions import num, read_num, text
from adapters.store.responses import pack, unpack
from handler.ports import MAX_HOLDERS, ResponseTooLarge, StoredResponse, StoreError

logger = logging.getLogger("gateway")

RESPONSE_SK = "RESP"
HOLDER_PK = "RESPITEM#"  # an item's index entries (`responses_holding`)
RECORD = "record"  # a part of the compressed record, binary
DATA = "data"  # the whole compressed record in base64: a record that fits one item, as the release before parts
# The longest `DATA` the release before parts wrote (380,000 characters, some 285 KB compressed), and the longest this
# one writes: a record that fits is written as that release wrote it, so that a process of it (beside this one during
# a rollout, or alone after a rollback) reads, continues and deletes it. It reads `DATA` alone: a record in parts is
# not there for it (404), nor deleted by its DELETE.
MAX_DATA = 380_000
PARTS = "parts"
TOKEN = "token"
GONE = "gone"  # on a DynamoDB response item: the token of the call that deleted it (its record removed)
# A part of a record on one DynamoDB item (at most 400 KB). 300 KB: moto, the tests' DynamoDB, counts a binary
# value by its base64 (400 KB), DynamoDB by its bytes.
PART_BYTES = 300_000
# The largest compressed record kept on DynamoDB (54 parts): some 20 MB of images' base64, or far more text than
# any model's context holds. Read whole on every turn that continues it, and written again with each turn.
MAX_DYNAMODB_RECORD = 16_000_000


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

    async def put_response(self, stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False) -> None:
        record = pack(stored)
        if len(record) > MAX_DYNAMODB_RECORD:
            raise ResponseTooLarge(
                f"its conversation is too large to keep on DynamoDB ({len(record) / 1e6:.1f} MB compressed, "
                f"at most {MAX_DYNAMODB_RECORD / 1e6:g} MB)"
            )
        ttl = num(int(stored.expires_at))
        item = {
            **self._response_key(stored.id),
            "expires_at": num(stored.expires_at),  # (what a delete sent again answers by: the record is gone then)
            "ttl": ttl,
        }
        parts: list[bytes] = []
        if not newer_only and len(record) <= MAX_DATA // 4 * 3:  # (its base64: 4 characters for 3 bytes)
            item[DATA] = text(base64.b64encode(record).decode())
        else:
            parts = [record[i : i + PART_BYTES] for i in range(0, len(record), PART_BYTES)] or [b""]
            item[RECORD] = self._binary(parts[0])
        # The index entries beside the record (no round trip more): one naming a response not written (its write
        # failed, or another's stood) is read as the hint it is (`responses_holding`).
        await asyncio.gather(
            self._put_record(stored.id, item, parts, ttl), *(self._index(item_id, stored, ttl) for item_id in held)
        )

    async def _index(self, item_id: str, stored: StoredResponse, ttl: dict[str, Any]) -> None:
        """An index entry of `responses_holding`; one not written leaves only that item unfound by its id (the
        response is kept: it must not be answered as not stored)."""
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        try:
            await call(self.client, "put_item", TableName=self.table, Item=self._entry(item_id, stored, ttl))
        except StoreError as exc:
            logger.warning("an item of a response not indexed: %s", exc, extra={"response_id": stored.id})

    @staticmethod
    def _entry(item_id: str, stored: StoredResponse, ttl: dict[str, Any]) -> dict[str, Any]:
        return {
            "pk": text(HOLDER_PK + item_id),
            "sk": text(f"{stored.created_at:017.6f}#{stored.id}"),  # (the newest last: read backwards)
            "response": text(stored.id),
            "expires_at": num(stored.expires_at),
            "ttl": ttl,
        }

    async def index_held(self, held_in: Callable[[StoredResponse], Sequence[str]]) -> int:
        """One paginated scan for the responses' items (`sk = RESP`), each response read as `get_response` reads it,
        its missing entries written (put if absent)."""
        from adapters.store.dynamo_client import ConditionFailed, call, scanned  # (on first use)

        async def put_missing(entry: dict[str, Any]) -> int:
            try:
                await call(
                    self.client,
                    "put_item",
                    TableName=self.table,
                    Item=entry,
                    ConditionExpression="attribute_not_exists(pk)",
                )
            except ConditionFailed:
                return 0
            return 1

        written = 0
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :response) AND sk = :sk",
            "ProjectionExpression": "pk",
            "ExpressionAttributeValues": {":response": text("RESP#"), ":sk": text(RESPONSE_SK)},
        }
        async for item in scanned(self.client, **request):
            stored = await self.get_response(item["pk"]["S"].removeprefix("RESP#"))
            if stored is not None:
                ttl = num(int(stored.expires_at))
                entries = [self._entry(item_id, stored, ttl) for item_id in held_in(stored)]
                written += sum(await asyncio.gather(*(put_missing(entry) for entry in entries)))
        return written

    async def _put_record(
        self, response_id: str, item: dict[str, Any], parts: list[bytes], ttl: dict[str, Any]
    ) -> None:
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use: see the module docstring)

        if len(parts) > 1:  # (none: the record is the item's `DATA`)
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
