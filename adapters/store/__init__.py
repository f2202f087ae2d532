"""The stores behind the `Store` contract, chosen by URL (`--store` or `GATEWAY_STORE`):
`sqlite:///PATH` (the embedded default) or `dynamodb://TABLE?region=R&endpoint_url=URL`.

`region` is this replica's region: the URL's `?region=`, else the one the DynamoDB client takes (`AWS_REGION`,
else `AWS_DEFAULT_REGION`), else the gateway's `GATEWAY_REGION`; a URL whose region cannot be known is refused. A
key is homed in the region of the store that creates it. For a global table, the home meters of keys homed in
another region are reached through that region's standard endpoint, or `home_endpoint_<region>=URL` where given
(tests, local servers); `lease_idle_seconds=S` sets when an unused lease goes back to its home (see `region_leases.py`);
`read_timeout=S` and `connect_timeout=S` bound each attempt of a DynamoDB call (defaults 2 s and 1 s; three attempts at
most), all of a request's calls ending by its deadline besides (`handler.ports.STORE_DEADLINE`)."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from handler.ports import Store, StoreError

if TYPE_CHECKING:
    from adapters.store.dynamo_client import DynamoDBClient


def dynamodb_client(
    region: str | None, endpoint_url: str | None, read_timeout: float = 2.0, connect_timeout: float = 1.0
) -> DynamoDBClient:
    """The DynamoDB client (adapters/store/dynamo_client.py), with the process's AWS credentials and the
    region's endpoint from the AWS layer (adapters/aws.py). Imported here: a process on the embedded store
    imports neither (with the mixins' own, 3.2 million instructions of its cold start, callgrind)."""
    from adapters.aws import process_credentials, region_of
    from adapters.store.dynamo_client import DynamoDBClient

    # With no AWS variable, the gateway's own `GATEWAY_REGION` (it was refused, "set AWS_REGION"); never before them:
    # a table found through `AWS_DEFAULT_REGION` stays found on an upgrade whatever region the gateway routes from.
    region = region or region_of() or os.environ.get("GATEWAY_REGION")
    if not region:
        raise StoreError(
            "no AWS region for DynamoDB: set AWS_REGION (or GATEWAY_REGION), or add ?region=R to the store URL"
        )
    return DynamoDBClient(region, process_credentials(), endpoint_url, connect_timeout, read_timeout)


def seconds_parameter(query: dict[str, str], name: str, default: float) -> float:
    """The store URL's `name=S`, a number of seconds above 0; anything else is a `StoreError` naming it (`abc` was
    a ValueError's traceback from the CLI and at a Lambda function's start)."""
    text = query.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StoreError(f"the store URL's {name}={text[:40]} is not a number of seconds above 0 (default {default:g})")
    return value


URL_PARAMETERS = ("region", "endpoint_url", "read_timeout", "connect_timeout", "lease_idle_seconds")


def region_name_ok(value: str) -> bool:
    """Whether `value` can name an AWS region (letters, digits and '-', as eu-central-1)."""
    return 0 < len(value) <= 64 and value.isascii() and all(c.isalnum() or c == "-" for c in value)


def open_store(url: str, client: Any = None) -> Store:
    """The store a URL names; `client` injects a DynamoDB client (this package's, or boto3's)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from adapters.store.sqlite import SQLiteStore

        # As in SQLAlchemy: `sqlite:///rel/path`, `sqlite:////abs/path`, `sqlite://` in memory.
        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    if parts.scheme == "dynamodb":
        from adapters.aws import region_of
        from adapters.store.dynamodb import DynamoDBStore
        from adapters.store.region_leases import IDLE_SECONDS

        if not parts.netloc:
            raise StoreError(f"store URL '{url}' names no table: use dynamodb://TABLE?region=R")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        # A misspelt parameter was ignored: `endpoint=` for `endpoint_url=` sent a local run to AWS's own endpoint
        # (and with credentials, to a real table of that name); `regoin=` took the environment's region.
        unknown = sorted(k for k in query if k not in URL_PARAMETERS and not k.startswith("home_endpoint_"))
        if unknown:
            raise StoreError(
                f"the store URL's {unknown[0]}= is not a parameter of a DynamoDB store URL "
                f"(one of: {', '.join(URL_PARAMETERS)}, home_endpoint_REGION)"
            )
        if "region" in query and not region_name_ok(query["region"]):
            raise StoreError(f"the store URL's region={query['region'][:40]} is not a region name (eu-central-1)")
        timeouts = {
            "read_timeout": seconds_parameter(query, "read_timeout", 2.0),
            "connect_timeout": seconds_parameter(query, "connect_timeout", 1.0),
        }
        idle = seconds_parameter(query, "lease_idle_seconds", IDLE_SECONDS)
        owned: list[Any] = []
        # The region the client signs for is the store's: a store left without one homed its keys nowhere, and
        # every region then wrote the one meter item of a key (1.83x its budget spent from two regions).
        region = query.get("region") or region_of() or getattr(client, "region", None)
        if client is None:
            client = dynamodb_client(region, query.get("endpoint_url"), **timeouts)
            owned.append(client)
        endpoints = {k.removeprefix("home_endpoint_"): v for k, v in query.items() if k.startswith("home_endpoint_")}
        clients: dict[str, Any] = {}

        def client_for(other: str) -> Any:
            if other not in clients:
                clients[other] = dynamodb_client(other, endpoints.get(other), **timeouts)
                owned.append(clients[other])
            return clients[other]

        store = DynamoDBStore(
            client, parts.netloc, region=region, client_for=client_for, lease_idle_seconds=idle, owned=owned
        )
        if "region" not in query:  # settlements spooled under the name used before the region was taken
            store.spool_path = store.spool_path.replace(f"-{region}.jsonl", ".jsonl")
        return store
    raise StoreError(f"unknown store URL '{url}': use sqlite:///PATH or dynamodb://TABLE?region=R")
