"""The DynamoDB store's one-time dashboard sign-in tokens (see `adapters/store/signins.py`): a module of its own, so
that a process on the embedded store imports neither it nor the DynamoDB expressions it reads."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from adapters.store.expressions import Item, num, text

if TYPE_CHECKING:
    from adapters.store.region_leases import RegionLeases

SIGN_IN_SK = "SIGNIN"
TAKEN = "taken"  # on a sign-in item: the token of the call that took it
HOME = "home"  # on a sign-in item: the region that wrote it, where it is taken (none: a store without one)


class DynamoDBSignIns:
    """The same on the DynamoDB store's table: one item per token (see the module docstring)."""

    client: Any
    table: str
    region: str | None
    leases: RegionLeases

    @staticmethod
    def _sign_in_key(token_hash: str) -> dict[str, Any]:
        return {"pk": text(f"SIGNIN#{token_hash}"), "sk": text(SIGN_IN_SK)}

    async def put_sign_in(self, token_hash: str, key_id: str, expires_at: float) -> None:
        from adapters.store.dynamo_client import call  # (on first use: see the module docstring)

        item = {
            **self._sign_in_key(token_hash),
            "key_id": text(key_id),
            "expires_at": num(expires_at),
            "ttl": num(int(expires_at) + 1),
        }
        if self.region is not None:
            item[HOME] = text(self.region)
        await call(self.client, "put_item", TableName=self.table, Item=item)

    async def take_sign_in(self, token_hash: str) -> str | None:
        """Marks the item taken by this call, in the region that wrote it, if it is live and not taken by another
        (see the module docstring): tried here, where it was most likely made, then in the region the refusal
        names. The request, sent again, is the same: its token and its `now`, so it answers as the first would
        have."""
        mark = {":token": text(uuid.uuid4().hex), ":now": num(time.time())}
        key_id, found = await self._mark_taken(self.client, token_hash, self.region, mark)
        home = found.get(HOME, {}).get("S")
        if key_id is None and home is not None and home != self.region:
            key_id, _ = await self._mark_taken(self.leases.client_for(home), token_hash, home, mark)
        return key_id

    async def _mark_taken(
        self, client: Any, token_hash: str, region: str | None, mark: Item
    ) -> tuple[str | None, Item]:
        """`take_sign_in`'s conditional update through `client`, on the item written in `region`: the key id, or
        None and the item as the refusal found it (unknown, expired, taken by another call, or written elsewhere)."""
        from adapters.store.dynamo_client import ConditionFailed, call  # (on first use)

        written_here = "attribute_not_exists(#home)" if region is None else "#home = :home"
        try:
            answer = await call(
                client,
                "update_item",
                TableName=self.table,
                Key=self._sign_in_key(token_hash),
                UpdateExpression="SET #taken = :token",
                ConditionExpression=(
                    f"{written_here} AND #expires >= :now AND (attribute_not_exists(#taken) OR #taken = :token)"
                ),
                ExpressionAttributeNames={"#taken": TAKEN, "#expires": "expires_at", "#home": HOME},
                ExpressionAttributeValues={**mark, **({} if region is None else {":home": text(region)})},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as exc:
            return None, exc.item
        return str(answer["Attributes"]["key_id"]["S"]), {}
