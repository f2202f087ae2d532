"""The DynamoDB store's keys: records, children and their counts, the links reports walk (`DynamoDBKeys`, a part of
`adapters.store.dynamodb.DynamoDBStore`; its module docstring lists the items).

Every key write carries a token of its own (`w`, `stamped`), so a write sent again after its answer was lost knows
itself when its own condition refuses it (`already_written`). A child is counted and written in its parent's home
region (`create_child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.store.dynamo_client import CONDITION_FAILED as FAILED
from adapters.store.dynamo_client import ConditionFailed, call, scanned
from adapters.store.expressions import Expression, Item, num, text
from adapters.store.records import LEDGER_TTL_SECONDS, key_from_json, key_purge_after, key_to_json
from adapters.store.region_leases import RegionLeases
from handler.ports import ChildLimitReached, ConflictError, KeyPlace, KeyRecord, StoreError, family_root

WRITE_TOKEN = "w"  # on a key item: a token of the write that put it (`already_written`)
COUNT_SK = "COUNT"
FAMILY_COUNT = "d"  # on a root's count item: the keys minted in its family (`create_child`)
# On a root's count item: grown by every write of its `d` (a mint, a correction), so that a correction applies only to
# the count its recount read; `d` alone can be lowered and grown back to the value read (`_count_family`).
COUNT_VERSION = "v"
# On a parent's count item: its children, as the release before family counts counted them (`n < max_children`, its
# limit per parent, which it still checks while its processes run beside this release's), and the `n` this release
# has in its root's `d` (`m`). That release mints with `ADD n 1` alone: an `n` that is not `m` is a mint `d` misses.
CHILD_COUNT = "n"
COUNTED = "m"
CHILD_PREFIX = "CHILD#"
DESCENDANT_PREFIX = "DESC#"  # on a root's partition: a key deeper than its children, for the family's recount
NO_CHILD_LIMIT = 2**53  # `create_key`'s children: counted like any other, never refused
BATCH_GET_KEYS = 100  # DynamoDB's limit for one `BatchGetItem`


@dataclass
class OlderMints:
    """What a recount found of an older release's mints (`DynamoDBKeys._older_mints`): the parents whose `n` moved
    without `m`, with that `n` as read, and how many keys under them the root's partition did not link."""

    children: dict[str, Item] = field(default_factory=dict)
    found: int = 0


class DynamoDBKeys:
    """Keys on the DynamoDB store's table, and the calls the rest of the store shares (`_call`, `_query`)."""

    client: Any
    table: str
    clock: Callable[[], float]
    region: str | None
    leases: RegionLeases
    page_size: int | None

    def _client_for(self, home: str | None) -> Any:
        return self.leases.client_for(home) if self.leases.remote(home) and home else self.client

    async def _call(self, operation: str, **request: Any) -> Any:
        """`dynamo_client.call` on this region's client: a lost condition is `ConditionFailed`, else `StoreError`."""
        return await call(self.client, operation, **request)

    def _key_item(self, record: KeyRecord) -> Item:
        item: Item = {
            "pk": text(f"KEY#{record.id}"),
            "sk": text("KEY"),
            "gsi1pk": text("KEYS"),
            "gsi1sk": text(listing_sk(KeyPlace.of(record))),
            "version": num(record.version),
            "data": text(key_to_json(record)),
        }
        purge = key_purge_after(record)
        if purge is not None:
            item["ttl"] = num(int(purge))
        return item

    async def create_key(self, record: KeyRecord) -> None:
        if record.home_region is None:
            record.home_region = self.region
        if record.parent_id is not None:
            await self._create_child(record, NO_CHILD_LIMIT)
            return
        item = stamped(self._key_item(record))
        try:
            await self._call(
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as exc:
            if not already_written(exc.item, item):
                raise ConflictError(f"key {record.id} exists") from exc

    async def create_child(self, record: KeyRecord, max_children: int, root_home: str | None = None) -> None:
        """The key's conditional `Put` in one `TransactWriteItems` with its root's family count (`ADD d 1` if
        `d < max_children`), its link to its parent (`child_ids`) and, below the root's children, its link on the
        root's partition (`DESC#`, for the recount), so that racing mints cannot all pass one count: of 20
        concurrent mints under a limit of 3, counted by a listing read before a separate write, all 20 passed.

        The count only grows: a key purged a day after it ends (its TTL) cannot lower it. So a refused condition
        is checked against the family itself (`_recount`) and, where fewer than the limit are live, the count is
        corrected and the mint tried once more. A root without a family count (its children minted before family
        counts existed, when each parent counted its children as `n`) has its count set the same way: `d < max`
        fails on a missing `d`. The recount reads the links with a consistent query of the root's partition and
        the keys' records with consistent reads, not the key listing (`list_keys` reads the `gsi1` index, which is
        eventually consistent and can miss a child minted a moment ago); the listing adds only children minted
        before links existed, long since on the index. A count changed since the recount read it is not corrected,
        so a mint the recount missed is never forgotten: the correction is conditional on the count's version
        (`v`, grown by every mint and every correction) as read, not on its value alone. On the value alone, two
        mints refused at a limit of 3 with one child purged both recounted 2 live and read 3: the first corrected
        it to 2 and minted (3 again), the second's correction found the 3 it read and passed too, and the family
        had 4 live keys. A count item without a version (the release before family counts writes none) gets one at
        its first mint or correction: a missing `v` is read as such, as a missing `d` is.

        The release before family counts may mint beside this one (a rollout's minutes, or a rollback): it counts
        each parent's children (`n`, on the parent's count item, `ADD n 1` if `n < max_children`) and links a key
        to its parent only. So this one keeps `n` as well (that release's limit per parent counts this one's
        children), and `m` beside it, grown together: on the root's count item and the parent's, in the same
        transaction, on the condition that `n` is `m`. A mint of that release under either moved `n` alone: the
        count is refused and the family recounted, following the links of every parent whose `n` is not its
        `m` (`_count_family`). One under another key of the family is found by the next recount (a refusal, a
        mint under that key or the root, `migrate`). That release's own mints still count per parent.

        Written in the root's home region (`root_home`), as its meter and record are, and counted again there:
        across the replicas of a global table, two regions minting under one parent at once each passed the same
        count in their own replica (the last writer wins the count item), and the parent had a child past its
        limit for each region. The child itself is homed where it was minted."""
        if record.parent_id is None:
            raise ValueError("create_child needs a record with a parent_id")
        if record.home_region is None:
            record.home_region = self.region
        await self._create_child(record, max_children, self._client_for(root_home))

    def _family_key(self, parent_id: str, sk: str) -> Item:
        return {"pk": text(f"FAMILY#{parent_id}"), "sk": text(sk)}

    def _link_item(self, parent_id: str, child_id: str, purge: float | None, ttl: float | None) -> Item:
        """A child's link: `purge`, when its record goes at the latest; `ttl`, when the link itself may (none
        for a child without an end, which may write lines for ever)."""
        link: Item = {**self._family_key(parent_id, f"{CHILD_PREFIX}{child_id}"), "child": text(child_id)}
        if purge is not None:
            link["purge"] = num(purge)
        if ttl is not None:
            link["ttl"] = num(int(ttl))
        return link

    async def _create_child(self, record: KeyRecord, max_children: int, client: Any | None = None) -> None:
        """`create_child`'s transaction, on `client` (the root's home region's; this region's if None)."""
        client = client or self.client
        parent_id, root_id = record.parent_id, family_root(record)
        assert parent_id is not None and root_id is not None
        purge = key_purge_after(record)
        link = self._link_item(parent_id, record.id, purge, None if purge is None else purge + LEDGER_TTL_SECONDS)
        item = stamped(self._key_item(record))
        # Each count item's `n` and `m` grow together: one an older release's mint moved (`n` alone) fails its
        # condition, and the family is recounted, that mint with it.
        older_unseen = "attribute_not_exists(#n) OR #n = #m"
        children: Item = {"#n": CHILD_COUNT, "#m": COUNTED}
        root_count: Item = {
            "TableName": self.table,
            "Key": self._family_key(root_id, COUNT_SK),
            "UpdateExpression": "ADD #d :one, #v :one" + (", #n :one, #m :one" if root_id == parent_id else ""),
            "ConditionExpression": f"#d < :max AND ({older_unseen})",
            "ExpressionAttributeNames": {"#d": FAMILY_COUNT, "#v": COUNT_VERSION, **children},
            "ExpressionAttributeValues": {":one": num(1), ":max": num(max_children)},
        }
        writes: list[Item] = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {"Update": root_count},
            {"Put": {"TableName": self.table, "Item": link}},
        ]
        if root_id != parent_id:
            parent_count: Item = {
                "TableName": self.table,
                "Key": self._family_key(parent_id, COUNT_SK),
                "UpdateExpression": "ADD #n :one, #m :one",
                "ConditionExpression": older_unseen,
                "ExpressionAttributeNames": children,
                "ExpressionAttributeValues": {":one": num(1)},
            }
            writes.append({"Update": parent_count})
            # Linked on the root's partition too (the root's children are its `CHILD#` links already).
            writes.append({"Put": {"TableName": self.table, "Item": self._descendant_link(root_id, record)}})
        for attempt in (1, 2):
            try:
                await call(client, "transact_write_items", TransactItems=writes)
                break
            except ConditionFailed as exc:
                if exc.reasons and exc.reasons[0].get("Code") == FAILED:
                    if already_written(exc.reasons[0].get("Item", {}), item):
                        break  # the whole transaction landed: its count and link with it
                    raise ConflictError(f"key {record.id} exists") from exc
                if attempt == 2 or not await self._recount(root_id, max_children, client):
                    raise ChildLimitReached(root_id, max_children) from exc
        if client is not self.client:
            await self._copy_here(item)

    async def _copy_here(self, item: Item) -> None:
        """A key item just written in another region (a child counted in its parent's home), put in this region's
        replica too: it is used here at once (minted here, for an agent that starts now), and would be 401 here until
        replication brings it (1.34 s). The same item, stamped by the same write, and only where the key is not
        yet or is this very write: a later change (made in the key's home, this region) is never overwritten, and
        the copy replication brings later is older than it (the last writer wins by time)."""
        with contextlib.suppress(ConditionFailed, StoreError):  # changed here already, or unreachable: replicated
            await self._call(
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #w = :w",
                ExpressionAttributeNames={"#w": WRITE_TOKEN},
                ExpressionAttributeValues={":w": item[WRITE_TOKEN]},
            )

    async def _recount(self, root_id: str, max_children: int, client: Any) -> bool:
        """After a refused count: whether fewer than `max_children` keys of the root's family are live; if so,
        the count set to them (unless it changed since it was read). See `create_child`."""
        live, _ = await self._count_family(root_id, client, max_children)
        return live < max_children

    async def _count_family(self, root_id: str, client: Any, limit: int | None = None) -> tuple[int, bool]:
        """How many keys of the root's family are live, and whether its count was set to that: not where `limit`
        of them are live, where it holds that number already, or where it changed since it was read (its value or
        its version `v`: a mint or a correction meanwhile, so a mint the count read here missed is never forgotten).

        Keys an older release minted (`n` moved without `m`, on the count item of their parent) are found from
        their parents' links: each below the root's children is linked on the root's partition (`DESC#`), then,
        once the count holds them, their parents' `m` is set to the `n` read before their links were (unless `n`
        moved since: a mint this walk may have missed is found again next time)."""
        count_key = self._family_key(root_id, COUNT_SK)
        answer = await call(client, "get_item", TableName=self.table, Key=count_key, ConsistentRead=True)
        root_count = answer.get("Item", {})
        seen = root_count.get(FAMILY_COUNT)
        live = await self._live_family(root_id, client)
        if limit is not None and len(live) >= limit:
            return len(live), False
        older = await self._older_mints(root_id, {root_id: root_count}, live, client)
        if older.found:
            live = await self._live_family(root_id, client)
            if limit is not None and len(live) >= limit:
                return len(live), False
        counted = False
        if seen is None or int(seen["N"]) != len(live):
            e = Expression()
            count, version = e.name(FAMILY_COUNT), e.name(COUNT_VERSION)
            e.clauses["SET"].append(f"{count} = {e.value(num(len(live)))}")
            e.clauses["ADD"].append(f"{version} {e.value(num(1))}")
            for name, read in ((count, seen), (version, root_count.get(COUNT_VERSION))):
                e.conditions.append(f"attribute_not_exists({name})" if read is None else f"{name} = {e.value(read)}")
            try:
                await call(client, "update_item", **e.update(count_key, self.table))
            except ConditionFailed:
                return len(live), False  # moved meanwhile: a retry meets the count as it is now
            counted = True

        async def seen_by_count(parent_id: str, children: Item) -> bool:
            try:
                await call(
                    client,
                    "update_item",
                    TableName=self.table,
                    Key=self._family_key(parent_id, COUNT_SK),
                    UpdateExpression="SET #m = :n",
                    ConditionExpression="#n = :n",
                    ExpressionAttributeNames={"#n": CHILD_COUNT, "#m": COUNTED},
                    ExpressionAttributeValues={":n": children},
                )
            except ConditionFailed:
                return False  # another mint under it since its `n` was read
            return True

        marked = await asyncio.gather(*(seen_by_count(p, n) for p, n in sorted(older.children.items())))
        return len(live), counted or any(marked)

    async def _older_mints(self, root_id: str, counts: dict[str, Item], live: set[str], client: Any) -> OlderMints:
        """The parents in the root's family (live keys, and the root) whose `n` is not their `m`, and the keys an
        older release minted under them that the root's partition does not link, linked there now (`DESC#`); each
        parent's count item is read before its links, so that its `n` covers no key they miss."""
        older = OlderMints()
        known = {root_id} | live
        unread = sorted(live)
        while True:
            for start in range(0, len(unread), BATCH_GET_KEYS):
                counts |= await self._count_items(unread[start : start + BATCH_GET_KEYS], client)
            signed = [
                parent_id
                for parent_id, item in counts.items()
                if parent_id not in older.children and CHILD_COUNT in item and item.get(COUNTED) != item[CHILD_COUNT]
            ]
            older.children |= {parent_id: counts[parent_id][CHILD_COUNT] for parent_id in signed}
            links = await asyncio.gather(*(self._links(parent_id, client) for parent_id in signed))
            unlinked = sorted({link["child"]["S"] for found in links for link in found} - known)
            records = await self._get_keys(unlinked, client)
            if not records:
                return older
            for record in records:
                await self._put_if_absent(client, self._descendant_link(root_id, record))
            older.found += len(records)
            known |= {record.id for record in records}
            unread = [record.id for record in records]

    async def _count_items(self, key_ids: list[str], client: Any) -> dict[str, Item]:
        """The count items (`FAMILY#<id>`, `COUNT`) of `key_ids` that exist, read consistently, by key id."""
        keys = [self._family_key(key_id, COUNT_SK) for key_id in key_ids]
        found: dict[str, Item] = {}
        pending: Item = {self.table: {"Keys": keys, "ConsistentRead": True}} if keys else {}
        while pending:
            answer = await call(client, "batch_get_item", RequestItems=pending)
            for item in answer.get("Responses", {}).get(self.table, []):
                found[item["pk"]["S"].removeprefix("FAMILY#")] = item
            pending = answer.get("UnprocessedKeys") or {}
            if pending:
                await asyncio.sleep(0.05)  # throttled: DynamoDB hands back what it did not read
        return found

    async def end_links(self, record: KeyRecord, root_home: str | None = None) -> None:
        """`Store.end_links`: the child's link (`CHILD#`, TTL 400 days past its record's purge) and, below the root's
        children, its link on the root's partition (`DESC#`, TTL at the purge), as `create_child` would write them
        for the record as it is now, through the root's home region's replica. Set only at the mint, a child minted
        without an expiry and then revoked (an agent's key, a signed-out session) kept both for good, the `DESC#`
        one read by every recount of its family, while its record went a day after its revocation. Each only
        where it is: a child minted before links is linked by `migrate`, from its record."""
        parent_id, root_id, purge = record.parent_id, family_root(record), key_purge_after(record)
        if parent_id is None or root_id is None or purge is None:
            return
        links = [(self._family_key(parent_id, f"{CHILD_PREFIX}{record.id}"), purge + LEDGER_TTL_SECONDS)]
        if root_id != parent_id:
            links.append((self._family_key(root_id, f"{DESCENDANT_PREFIX}{record.id}"), purge))
        client = self._client_for(root_home)

        async def end(key: Item, ttl: float) -> None:
            with contextlib.suppress(ConditionFailed):  # (no such link)
                await call(
                    client,
                    "update_item",
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET #purge = :purge, #ttl = :ttl",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#purge": "purge", "#ttl": "ttl"},
                    ExpressionAttributeValues={":purge": num(purge), ":ttl": num(int(ttl))},
                )

        await asyncio.gather(*(end(key, ttl) for key, ttl in links))

    def _descendant_link(self, root_id: str, record: KeyRecord) -> Item:
        """A key below the root's children, linked on the root's partition (for its recount)."""
        link: Item = {**self._family_key(root_id, f"{DESCENDANT_PREFIX}{record.id}"), "child": text(record.id)}
        purge = key_purge_after(record)
        if purge is not None:
            link["purge"] = num(purge)
            link["ttl"] = num(int(purge))
        return link

    async def _put_if_absent(self, client: Any, item: Item) -> bool:
        """Whether `item` was written: not where one is under its key already."""
        try:
            await call(
                client, "put_item", TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
            )
        except ConditionFailed:
            return False
        return True

    async def _link_families(self) -> int:
        """Bring families minted before family counts to them (`migrate`); returns how many items it wrote. An
        older gateway counted each parent's children (`n` on the parent's partition) and linked a key to its
        parent only: the keys below a root's children had no `DESC#` link, its recount (`_live_family`) did not
        find them, and a root with 1 child and 2 grandchildren under a limit of 3 minted a fourth key and more.
        Each such key is linked on its root's partition, and each root's count is set to its live family (as a
        recount sets it, conditional on the count and its version as read, so a mint meanwhile is never
        forgotten). Both are written in the root's home region, where `create_child` counts. A second run writes
        nothing."""
        records = await self._scan_keys()
        homes = {record.id: record.home_region for record in records}
        written = 0
        roots: set[str] = set()
        for record in records:
            root_id = family_root(record)
            if root_id is None:
                continue
            roots.add(root_id)
            if root_id == record.parent_id:
                continue  # (a root's children are its `CHILD#` links already)
            if not await self._put_if_absent(
                self._client_for(homes.get(root_id)), self._descendant_link(root_id, record)
            ):
                continue  # linked when minted, or by another run
            written += 1
        for root_id in sorted(roots & homes.keys()):  # (a purged root's family mints no more)
            _, counted = await self._count_family(root_id, self._client_for(homes.get(root_id)))
            written += counted
        return written

    async def _scan_keys(self) -> list[KeyRecord]:
        """Every key record the table holds that is not yet purged (one paginated, consistent scan)."""
        return [record async for item in self._key_items(consistent=True) if (record := self._live(item)) is not None]

    async def _links(self, parent_id: str, client: Any | None = None) -> list[Item]:
        return await self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :child)",
            ExpressionAttributeValues={":pk": text(f"FAMILY#{parent_id}"), ":child": text(CHILD_PREFIX)},
            ConsistentRead=True,
            client=client,
        )

    async def _live_family(self, root_id: str, client: Any | None = None) -> set[str]:
        """The keys of the root's family not yet purged, under no purged key: linked ones (its children's and
        deeper keys' links on its partition) by consistent reads of their records (a link's `purge` is when the
        key's record goes at the latest: a revocation brings it forward, nothing puts it back), and its children
        of the key listing."""
        now = self.clock()
        links = await self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": text(f"FAMILY#{root_id}")},
            ConsistentRead=True,
            client=client,
        )
        linked = [
            item["child"]["S"]
            for item in links
            if item["sk"]["S"].startswith((CHILD_PREFIX, DESCENDANT_PREFIX))
            and ("purge" not in item or float(item["purge"]["N"]) >= now)
        ]
        records = await self._get_keys(linked, client) + await self.list_keys(root_id)
        live = {record.id for record in records}
        return {
            record.id
            for record in records
            if root_id in record.ancestors
            and all(held in live for held in record.ancestors[record.ancestors.index(root_id) + 1 :])
        }

    async def _get_keys(self, key_ids: list[str], client: Any | None = None) -> list[KeyRecord]:
        """The live records of `key_ids`, read consistently, `BATCH_GET_KEYS` to a `BatchGetItem`."""
        found: list[KeyRecord] = []
        for start in range(0, len(key_ids), BATCH_GET_KEYS):
            keys = [{"pk": text(f"KEY#{k}"), "sk": text("KEY")} for k in key_ids[start : start + BATCH_GET_KEYS]]
            pending: Item = {self.table: {"Keys": keys, "ConsistentRead": True}}
            while pending:
                answer = await call(client or self.client, "batch_get_item", RequestItems=pending)
                items = answer.get("Responses", {}).get(self.table, [])
                found += [record for item in items if (record := self._live(item)) is not None]
                pending = answer.get("UnprocessedKeys") or {}
                if pending:
                    await asyncio.sleep(0.05)  # throttled: DynamoDB hands back what it did not read
        return found

    async def child_ids(self, parent_id: str, root_home: str | None = None) -> list[str]:
        """The parent's links (kept past their lines' TTL), with the children the key listing has (those minted
        before links existed, until `migrate` links them). The links are read in `root_home` where given: they
        are written only there (`create_child`), and a revocation made in another region walked that region's
        replica and missed a child minted a moment before (live under a revoked root, never purged)."""
        links, listed = await asyncio.gather(
            self._links(parent_id, self._client_for(root_home)), self.list_keys(parent_id)
        )
        return sorted({item["child"]["S"] for item in links} | {record.id for record in listed})

    def _live(self, item: Item) -> KeyRecord | None:
        # TTL deletion lags by up to a couple of days, so an item past its TTL is treated as gone.
        ttl = item.get("ttl")
        if ttl and float(ttl["N"]) < self.clock():
            return None
        return key_from_json(item["data"]["S"])

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._read_key(key_id, None)

    async def _read_key(self, key_id: str, region: str | None) -> KeyRecord | None:
        """The key's record as `region`'s replica has it (this region's if None), read consistently."""
        answer = await call(
            self._client_for(region),
            "get_item",
            TableName=self.table,
            Key={"pk": text(f"KEY#{key_id}"), "sk": text("KEY")},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return self._live(item) if item else None

    async def get_key_latest(self, key_id: str, written_in: str | None = None) -> KeyRecord | None:
        """`get_key`, read again in the key's home region when that is another (where `update_key` writes it). A
        key this region's replica does not have yet is read in `written_in` (a child's record is written in its
        root's home region, then copied where it was minted): else it would be taken for gone, and a revocation
        made here leave it live."""
        record, read_in = await self.get_key(key_id), self.region
        if record is None and self.leases.remote(written_in):
            record, read_in = await self._read_key(key_id, written_in), written_in
        if record is None or record.home_region == read_in or not self.leases.remote(record.home_region):
            return record
        return await self._read_key(key_id, record.home_region)

    async def update_key(self, record: KeyRecord) -> None:
        """Written in the key's home region, like its meter, so two regions never race on the record."""
        item = stamped(self._key_item(record))
        try:
            await call(
                self._client_for(record.home_region),
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression="version = :previous",
                ExpressionAttributeValues={":previous": num(record.version - 1)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as exc:
            if not already_written(exc.item, item):
                raise ConflictError(f"key {record.id} changed since it was read") from exc

    async def _home_keys(self) -> int:
        """Home every key without a home region (made before regions, or by a store that had none) in this store's
        region; returns how many it homed. Such a key keeps one meter item that every region serving it writes,
        and replication keeps one region's writes of it (two regions spent 1.83x a budget). A key changed since
        the scan read it is left to the next run."""
        if self.region is None:
            return 0
        homed = 0
        async for item in self._key_items():
            record = key_from_json(item["data"]["S"])
            if record.home_region is not None:
                continue
            record.home_region = self.region
            record.version += 1
            try:
                await self.update_key(record)
            except ConflictError:
                continue
            homed += 1
        return homed

    def _key_items(self, consistent: bool = False) -> AsyncIterator[Item]:
        """Every key's record item (its `data` and `ttl`), in one paginated scan of the table (`consistent`: a
        strongly consistent one): the store's tools' (`migrate`, `retire_region`), never a request's."""
        request: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :key) AND sk = :keysk",
            "ProjectionExpression": "#data, #ttl",
            "ExpressionAttributeNames": {"#data": "data", "#ttl": "ttl"},
            "ExpressionAttributeValues": {":key": text("KEY#"), ":keysk": text("KEY")},
        }
        if consistent:
            request["ConsistentRead"] = True
        return scanned(self.client, **request)

    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        condition = "gsi1pk = :keys"
        values: Item = {":keys": text("KEYS")}
        if parent_id is not None:
            condition += " AND begins_with(gsi1sk, :parent)"
            values[":parent"] = text(f"{parent_id}#")
        items = await self._query(IndexName="gsi1", KeyConditionExpression=condition, ExpressionAttributeValues=values)
        records = [self._live(item) for item in items]
        return sorted((r for r in records if r is not None), key=lambda r: r.id)

    async def list_keys_page(self, parent_id: str | None, limit: int, after: KeyPlace | None = None) -> list[KeyRecord]:
        """The index's order (`gsi1sk`: a parent's children together, by id; root keys, `~`, last), read from
        `after`'s place on (past it: every key's, or a parent's up to the end of its range, its own place left out)
        until the page holds `limit` live keys: no more of the index than the page (read whole and sorted by id, as
        `list_keys` reads it, an index of 120 keys is 120 items read for a page of 11)."""
        condition = "gsi1pk = :keys"
        values: Item = {":keys": text("KEYS")}
        start = None if after is None else listing_sk(after)
        if parent_id is None and start is not None:
            condition += " AND gsi1sk > :start"
            values[":start"] = text(start)
        elif parent_id is not None and start is None:
            condition += " AND begins_with(gsi1sk, :parent)"
            values[":parent"] = text(f"{parent_id}#")
        elif parent_id is not None and start is not None:
            # (`$` follows `#`: past every key under the parent, whose ids hold neither; the bounds are inclusive)
            condition += " AND gsi1sk BETWEEN :start AND :end"
            values.update({":start": text(start), ":end": text(f"{parent_id}$")})
        request: dict[str, Any] = {
            "IndexName": "gsi1",
            "KeyConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        records: list[KeyRecord] = []
        at_start = parent_id is not None and start is not None  # (its first item may be the one at `start`)
        while len(records) < limit:
            wanted = limit - len(records) + at_start
            request["Limit"] = min(wanted, self.page_size or wanted)
            answer = await self._call("query", TableName=self.table, **request)
            for item in answer.get("Items", []):
                record = None if item["gsi1sk"]["S"] == start else self._live(item)
                if record is not None:
                    records.append(record)
            if "LastEvaluatedKey" not in answer:
                break
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]
            at_start = False
        return records[:limit]

    async def _query(self, *, client: Any | None = None, **request: Any) -> list[Item]:
        """Every item a query matches, page after page (`page_size` items a page, if set), on `client` (this
        region's if None)."""
        if self.page_size is not None:
            request["Limit"] = self.page_size
        items: list[Item] = []
        while True:
            answer = await call(client or self.client, "query", TableName=self.table, **request)
            items += answer.get("Items", [])
            if "LastEvaluatedKey" not in answer:
                return items
            request["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def listing_sk(place: KeyPlace) -> str:
    """A key item's `gsi1sk`, its place in the key listing (`list_keys_page`): its parent's id (`~`, past every id,
    for a root key), then its own."""
    return f"{place.parent_id or '~'}#{place.key_id}"


def already_written(found: Item, written: Item) -> bool:
    """Whether the key item a conditional write was refused on (`found`, as the refusal returned it) is the one
    that write puts (`written`, `stamped`): it landed, its answer was lost (a timeout), the client sent it again,
    and its own condition refused it. Told by the write's token, not by the record: the same record written
    again by another call is a conflict, as on the embedded store. A write made on top of it before it was sent
    again hides it (a conflict then, as before)."""
    return WRITE_TOKEN in found and found[WRITE_TOKEN] == written[WRITE_TOKEN]


def stamped(item: Item) -> Item:
    """`item` with a token drawn for this one write (`already_written`)."""
    return {**item, WRITE_TOKEN: text(uuid.uuid4().hex)}
