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

from typing import Any
from urllib.parse import urlsplit

from handler.ports import Store, StoreError


def check_store_url(url: str) -> None:
    """Raise the `StoreError` opening the store `url` names would for what the URL and the environment say (its
    form, its parameters, its region), opening nothing: what `gateway config check` and `serve` say first."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            # (`sqlite:///`, `sqlite://` and `:memory:` open a store in memory, which keeps nothing past its process:
            # a key "shown once" kept nowhere, a server whose first admin key its own store did not have; `sqlite:gw.db`
            # made a file named `sqlite:gw.db`.)
            raise StoreError(f"the store URL '{url}' names no file: use sqlite:///PATH (sqlite:///gateway.db)")
        return
    if scheme != "dynamodb":
        raise unknown_store(url)
    from adapters.store.dynamodb_url import check_dynamodb_url

    check_dynamodb_url(url)


def unknown_store(url: str) -> StoreError:
    return StoreError(f"unknown store URL '{url}': use sqlite:///PATH or dynamodb://TABLE?region=R")


def open_store(url: str, client: Any = None) -> Store:
    """The store a URL names; `client` injects a DynamoDB client (this package's, or boto3's)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from adapters.store.sqlite import SQLiteStore

        # As in SQLAlchemy: `sqlite:///rel/path`, `sqlite:////abs/path`, `sqlite://` in memory.
        return SQLiteStore(url.removeprefix("sqlite://").removeprefix("/") or ":memory:")
    if parts.scheme == "dynamodb":
        from adapters.store.dynamodb_url import open_dynamodb

        return open_dynamodb(url, client)
    raise unknown_store(url)
