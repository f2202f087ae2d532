"""What a report on a big family of keys costs: finding the family (`with_descendants`) and reading its lines.

    python -m tests.bench.family_report --store sqlite [--children 1000] [--grandchildren 9]
    python -m tests.bench.family_report --store dynamodb [--children 100] [--grandchildren 9]

A root key, `--children` children, `--grandchildren` children of each and one great-grandchild (10,002 keys with the
defaults), one ledger line at each depth below the root. Prints the seconds each step took, the DynamoDB calls it
made (on moto's server, started here) and how many of the three lines the report holds. moto answers a query of
the key index in time linear in the table, so on DynamoDB the calls count, not the seconds: 1,000 children are past
an hour there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.store import open_store
from adapters.store.dynamo_client import DynamoDBClient
from adapters.store.dynamodb import DynamoDBStore
from handler.pipeline.key_admin import with_descendants
from handler.ports import KeyRecord, Settlement, Store, UsageQuery
from tests.support.dynamo import CREDENTIALS, DynamoServer
from tests.unit.adapters.store.test_contract import line

BATCH_WRITE = 25  # DynamoDB's limit for one `BatchWriteItem`


def child_of(parent: KeyRecord | None) -> KeyRecord:
    ancestors = [*parent.ancestors, parent.id] if parent else []
    return KeyRecord(
        id=uuid.uuid4().hex[:12],
        name="bench",
        secret_hash="h" * 64,
        created_at=time.time(),
        parent_id=parent.id if parent else None,
        ancestors=ancestors,
    )


async def seed(store: Store, keys: list[KeyRecord]) -> None:
    """The keys and their links as `create_key` writes them; on DynamoDB in batches (one `create_key` a call is
    minutes on moto for 10,000 keys)."""
    if not isinstance(store, DynamoDBStore):
        for key in keys:
            await store.create_key(key)
        return
    items = [store._key_item(key) for key in keys]
    items += [store._link_item(key.parent_id, key.id, None, None) for key in keys if key.parent_id]
    for start in range(0, len(items), BATCH_WRITE):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + BATCH_WRITE]]
        await store._call("batch_write_item", RequestItems={store.table: batch})


def count_calls(store: Store) -> list[int]:
    """A counter of the DynamoDB calls `store` makes from now on (stays at 0 on SQLite)."""
    calls = [0]
    client = getattr(store, "client", None)
    if isinstance(client, DynamoDBClient):
        call = client.call

        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return await call(*args, **kwargs)

        client.call = counted  # type: ignore[method-assign]
    return calls


async def measure(url: str, children: int, grandchildren: int) -> None:
    store = open_store(url)
    try:
        root = child_of(None)
        kids = [child_of(root) for _ in range(children)]
        grand = [child_of(kid) for kid in kids for _ in range(grandchildren)]
        deepest = child_of(grand[-1])
        await seed(store, [root, *kids, *grand, deepest])
        for spender in (kids[0], grand[0], deepest):
            item = replace(line(spender.id, 0.01), ancestors=list(spender.ancestors))
            await store.settle(Settlement(item.request_id, [], 0.0, [], item))
        calls = count_calls(store)
        started = time.perf_counter()
        family = await with_descendants(store, root.id)
        found, walk_calls = time.perf_counter(), calls[0]
        items = await store.usage(UsageQuery(family, time.time() - 3600, time.time() + 60))
        done = time.perf_counter()
        print(
            f"{url.partition(':')[0]}: {len(family)} keys of {2 + children * (1 + grandchildren)}; "
            f"family {found - started:.2f} s ({walk_calls} calls), lines {done - found:.2f} s "
            f"({calls[0] - walk_calls} calls); {len(items)} of 3 lines"
        )
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["sqlite", "dynamodb"], default="sqlite")
    parser.add_argument("--children", type=int, default=None)
    parser.add_argument("--grandchildren", type=int, default=9)
    args = parser.parse_args()
    children = args.children or (1000 if args.store == "sqlite" else 100)
    if args.store == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            asyncio.run(measure(f"sqlite:///{Path(folder) / 'bench.db'}", children, args.grandchildren))
        return
    os.environ.update(CREDENTIALS)  # moto's, as the tests use
    server = DynamoServer().start()
    try:
        url = server.store_url(server.create_table()).replace("read_timeout=15", "read_timeout=120")
        asyncio.run(measure(url, children, args.grandchildren))
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
