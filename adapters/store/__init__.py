"""The stores behind the `Store` contract, chosen by URL (`--store` or `GATEWAY_STORE`):
`sqlite:///PATH` (the embedded default) or `dynamodb://TABLE?region=R&endpoint_url=URL`.

For a global table, `region` is this replica's region; the home meters of keys homed in another region are
reached through that region's standard endpoint, or `home_endpoint_<region>=URL` where given (tests, local
servers); `lease_idle_seconds=S` sets when an unused lease goes back to its home (see `leases.py`);
`read_timeout=S` and `connect_timeout=S` bound each DynamoDB call (defaults 2 s and 1 s)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapters.sigv4 import Credentials
from adapters.store.dynamo_client import DynamoDBClient
from handler.ports import Store, StoreError


def dynamodb_client(
    region: str | None, endpoint_url: str | None, read_timeout: float = 2.0, connect_timeout: float = 1.0
) -> Any:
    """The DynamoDB client for the hot path: the gateway's own (adapters/store/dynamo_client.py) when the
    environment carries credentials and a region is known, as on Lambda; else boto3's, tuned the same way
    (short timeouts, few retries, kept-alive sockets). boto3 is imported only then, not at module import,
    so a gateway that does not need it never pays its ~0.2 s import."""
    credentials = Credentials.from_environ(os.environ)
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if credentials is not None and region:
        return DynamoDBClient(region, credentials, endpoint_url, connect_timeout, read_timeout)
    return boto3_dynamodb_client(region, endpoint_url, read_timeout, connect_timeout)


def boto3_dynamodb_client(
    region: str | None, endpoint_url: str | None, read_timeout: float = 2.0, connect_timeout: float = 1.0
) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
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
        from adapters.store.leases import IDLE_SECONDS

        if not parts.netloc:
            raise StoreError(f"store URL '{url}' names no table: use dynamodb://TABLE?region=R")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        timeouts = {
            "read_timeout": float(query.get("read_timeout", 2.0)),
            "connect_timeout": float(query.get("connect_timeout", 1.0)),
        }
        owned: list[Any] = []
        if client is None:
            client = dynamodb_client(query.get("region"), query.get("endpoint_url"), **timeouts)
            owned.append(client)
        endpoints = {k.removeprefix("home_endpoint_"): v for k, v in query.items() if k.startswith("home_endpoint_")}
        clients: dict[str, Any] = {}

        def client_for(region: str) -> Any:
            if region not in clients:
                clients[region] = dynamodb_client(region, endpoints.get(region), **timeouts)
                owned.append(clients[region])
            return clients[region]

        idle = float(query.get("lease_idle_seconds", IDLE_SECONDS))
        return DynamoDBStore(
            client,
            parts.netloc,
            region=query.get("region"),
            client_for=client_for,
            lease_idle_seconds=idle,
            owned=owned,
        )
    raise StoreError(f"unknown store URL '{url}': use sqlite:///PATH or dynamodb://TABLE?region=R")
