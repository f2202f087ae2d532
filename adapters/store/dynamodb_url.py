"""A DynamoDB store's URL (`dynamodb://TABLE?region=R&endpoint_url=URL`, see `adapters.store`): its parameters, its
region, the client and the store it opens. Imported only for such a URL: a process on the embedded store (and its
Lambda cold start) never needs it."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from handler.ports import Store, StoreError

if TYPE_CHECKING:
    from adapters.store.dynamo_client import DynamoDBClient


# Where a store URL without `?region=` finds its region, in order: the DynamoDB client's own variables, then (with no
# AWS variable) the gateway's `GATEWAY_REGION`; never before them: a table found through `AWS_DEFAULT_REGION` stays
# found on an upgrade whatever region the gateway routes from (without it, the URL would be refused, "set
# AWS_REGION", with only `GATEWAY_REGION` set).
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION", "GATEWAY_REGION")
NO_REGION = "no AWS region for DynamoDB: set AWS_REGION (or GATEWAY_REGION), or add ?region=R to the store URL"


def aws_region(value: str, source: str, endpoint: bool = False) -> str:
    """`value`, the store's region as `source` names it (`the store URL's region=`, `AWS_REGION=`), if it can be an
    AWS region's; else a `StoreError` saying so: taken, `region=narnia` would send every call to
    `dynamodb.narnia.amazonaws.com` ("DynamoDB query failed: ConnectionError"). Where the URL names the `endpoint`
    (DynamoDB Local, which takes any region, `local` as often as not), a name of letters, digits and '-'."""
    from adapters.aws import is_aws_region

    if endpoint and 0 < len(value) <= 64 and value.isascii() and all(c.isalnum() or c == "-" for c in value):
        return value
    if not is_aws_region(value):
        raise StoreError(
            f"{source}{value[:40]} is not an AWS region name (an area, a word or two and a number, as eu-central-1, "
            "us-gov-west-1 or cn-north-1)"
        )
    return value


def environment_region(names: tuple[str, ...] = REGION_VARIABLES, endpoint: bool = False) -> str | None:
    """The region a store URL without `?region=` takes from the first of `names` set, checked (`aws_region`); None
    where none is set."""
    for name in names:
        if os.environ.get(name):
            return aws_region(os.environ[name], f"{name}=", endpoint)
    return None


def dynamodb_client(
    region: str | None, endpoint_url: str | None, read_timeout: float = 2.0, connect_timeout: float = 1.0
) -> DynamoDBClient:
    """The DynamoDB client (adapters/store/dynamo_client.py), with the process's AWS credentials and the
    region's endpoint from the AWS layer (adapters/aws.py): `region`, else the environment's
    (`environment_region`). Imported here: a process on the embedded store imports neither (with the mixins' own,
    3.2 million instructions of its cold start, callgrind)."""
    from adapters.aws import process_credentials
    from adapters.store.dynamo_client import DynamoDBClient

    region = region or environment_region(endpoint=endpoint_url is not None)
    if not region:
        raise StoreError(NO_REGION)
    return DynamoDBClient(region, process_credentials(), endpoint_url, connect_timeout, read_timeout)


def seconds_parameter(query: dict[str, str], name: str, default: float) -> float:
    """The store URL's `name=S`, a number of seconds above 0; anything else is a `StoreError` naming it (`abc` would
    be a ValueError's traceback from the CLI and at a Lambda function's start)."""
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


def url_parameters(text: str) -> dict[str, str]:
    """A store URL's query as a mapping, each parameter given once (a `StoreError` naming one given more often:
    `region=a&region=b` took the last, without a word); one left empty (`region=`) is as if left out."""
    pairs = parse_qsl(text, keep_blank_values=True)
    names = [name for name, _ in pairs]
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            given = ", ".join(f"{name}={value[:40]}" for named, value in pairs if named == name)
            raise StoreError(f"the store URL's {name}= is given {names.count(name)} times ({given}): give it once")
    return {name: value for name, value in pairs if value}


def dynamodb_query(url: str) -> tuple[dict[str, str], dict[str, float]]:
    """A DynamoDB store URL's parameters, each checked (`StoreError` naming the first that is wrong): a table, no
    parameter but `URL_PARAMETERS` and `home_endpoint_REGION`, each given once (`url_parameters`), a region that can
    be AWS's (`aws_region`); and its numbers of seconds (above 0), each else its default."""
    from adapters.store.region_leases import IDLE_SECONDS

    parts = urlsplit(url)
    if not parts.netloc:
        raise StoreError(f"store URL '{url}' names no table: use dynamodb://TABLE?region=R")
    query = url_parameters(parts.query)
    # A misspelt parameter ignored would mislead: `endpoint=` for `endpoint_url=` would send a local run to AWS's
    # own endpoint (and with credentials, to a real table of that name); `regoin=` take the environment's region.
    unknown = sorted(k for k in query if k not in URL_PARAMETERS and not k.startswith("home_endpoint_"))
    if unknown:
        raise StoreError(
            f"the store URL's {unknown[0]}= is not a parameter of a DynamoDB store URL "
            f"(one of: {', '.join(URL_PARAMETERS)}, home_endpoint_REGION)"
        )
    if "region" in query:
        aws_region(query["region"], "the store URL's region=", "endpoint_url" in query)
    for name in query:
        if name.startswith("home_endpoint_"):
            aws_region(name.removeprefix("home_endpoint_"), "the store URL's home_endpoint_", "endpoint_url" in query)
    defaults = {"read_timeout": 2.0, "connect_timeout": 1.0, "lease_idle_seconds": IDLE_SECONDS}
    return query, {name: seconds_parameter(query, name, default) for name, default in defaults.items()}


def check_dynamodb_url(url: str) -> None:
    """`adapters.store.check_store_url` for a DynamoDB store's URL."""
    query = dynamodb_query(url)[0]
    if not query.get("region") and not environment_region(endpoint="endpoint_url" in query):
        raise StoreError(NO_REGION)


def open_dynamodb(url: str, client: Any = None) -> Store:
    """The DynamoDB store `url` names (`adapters.store.open_store`); `client` injects a DynamoDB client."""
    parts = urlsplit(url)
    from adapters.store.dynamodb import DynamoDBStore

    query, seconds = dynamodb_query(url)
    timeouts = {name: seconds[name] for name in ("read_timeout", "connect_timeout")}
    owned: list[Any] = []
    # The region the client signs for is the store's: a store left without one homed its keys nowhere, and
    # every region then wrote the one meter item of a key (1.83x its budget spent from two regions); so did one
    # whose client took `GATEWAY_REGION` (its region was None).
    region = query.get("region") or environment_region(REGION_VARIABLES[:2], "endpoint_url" in query)
    region = region or getattr(client, "region", None)
    if client is None:
        client = dynamodb_client(region, query.get("endpoint_url"), **timeouts)
        owned.append(client)
    region = region or getattr(client, "region", None)
    endpoints = {k.removeprefix("home_endpoint_"): v for k, v in query.items() if k.startswith("home_endpoint_")}
    clients: dict[str, Any] = {}

    def client_for(other: str) -> Any:
        if other not in clients:
            clients[other] = dynamodb_client(other, endpoints.get(other), **timeouts)
            owned.append(clients[other])
        return clients[other]

    store = DynamoDBStore(
        client,
        parts.netloc,
        region=region,
        client_for=client_for,
        lease_idle_seconds=seconds["lease_idle_seconds"],
        owned=owned,
    )
    if "region" not in query:  # settlements spooled under the name used before the region was taken
        store.spool_path = store.spool_path.replace(f"-{region}.jsonl", ".jsonl")
    return store
