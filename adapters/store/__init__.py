"""The stores behind the `Store` contract, chosen by URL (`--store` or `GATEWAY_STORE`):
`sqlite:///PATH` (the embedded default) or `dynamodb://TABLE?region=R&endpoint_url=URL`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from handler.ports import Store, StoreError


def dynamodb_client(region: str | None, endpoint_url: str | None) -> Any:
    """A boto3 DynamoDB client tuned for the hot path: short timeouts, few retries, kept-alive sockets.
    boto3 is imported here, not at module import, so a gateway on SQLite never pays its ~0.2 s import."""
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(
        connect_timeout=1.0,
        read_timeout=2.0,
        retries={"max_attempts": 3, "mode": "standard"},
        tcp_keepalive=True,
        max_pool_connections=64,
    )
    return boto3.session.Session().client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=config)


def open_store(url: str, client: Any = None) -> Store:
    """The store a URL names; `client` injects a boto3 DynamoDB client."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from adapters.store.sqlite import SQLiteStore

        # As in SQLAlchemy: `sqlite:///rel/path`, `sqlite:////abs/path`, `sqlite://` in memory.
        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    if parts.scheme == "dynamodb":
        from adapters.store.dynamodb import DynamoDBStore

        if not parts.netloc:
            raise StoreError(f"store URL '{url}' names no table: use dynamodb://TABLE?region=R")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        client = client or dynamodb_client(query.get("region"), query.get("endpoint_url"))
        return DynamoDBStore(client, parts.netloc)
    raise StoreError(f"unknown store URL '{url}': use sqlite:///PATH or dynamodb://TABLE?region=R")
