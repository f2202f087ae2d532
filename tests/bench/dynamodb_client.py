"""CPU per DynamoDB call: the gateway's own client against boto3's, on the same kept-alive upstream.

    python -m tests.bench.dynamodb_client [--calls 2000]

nginx answers every POST with a fixed `UpdateItem` answer, so what is measured is the client's own work
(serialize, sign, send, parse) and not a DynamoDB server's. boto3 runs as the store ran it before, on a
thread (`asyncio.to_thread`), and inline for comparison; the gateway's client on the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.bench.run import nginx_on, nginx_server, wait_ready
from tests.support.servers import listening_socket

ANSWER = '{"Attributes":{"n":{"N":"2"}}}'
REQUEST: dict[str, Any] = {
    "TableName": "t",
    "Key": {"pk": {"S": "METER#k"}, "sk": {"S": "METER"}},
    "UpdateExpression": "ADD n :one",
    "ExpressionAttributeValues": {":one": {"N": "1"}},
    "ReturnValues": "ALL_NEW",
}


def nginx_conf(port: int, workdir: Path) -> str:
    return nginx_server(
        port, workdir, f"        location / {{ default_type application/x-amz-json-1.0; return 200 '{ANSWER}'; }}"
    )


async def per_call(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    for _ in range(calls // 10):
        await call()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


async def measure(url: str, calls: int) -> list[tuple[str, float, float]]:
    import boto3
    from botocore.config import Config as BotoConfig

    from adapters.sigv4 import Credentials
    from adapters.store.dynamo_client import DynamoDBClient

    # boto3 tuned as the store once tuned it: short timeouts, few retries, kept-alive sockets.
    tuned = BotoConfig(
        connect_timeout=1.0,
        read_timeout=2.0,
        retries={"max_attempts": 3, "mode": "standard"},
        tcp_keepalive=True,
        max_pool_connections=64,
    )
    boto = boto3.session.Session().client("dynamodb", region_name="us-east-1", endpoint_url=url, config=tuned)
    native = DynamoDBClient("us-east-1", Credentials("bench", "bench"), url)

    async def on_thread() -> Any:
        return await asyncio.to_thread(boto.update_item, **REQUEST)

    async def inline() -> Any:
        return boto.update_item(**REQUEST)

    async def own() -> Any:
        return await native.update_item(**REQUEST)

    try:
        return [
            ("boto3 on a thread (the store before)", *await per_call(on_thread, calls)),
            ("boto3 inline", *await per_call(inline, calls)),
            ("the gateway's client", *await per_call(own, calls)),
        ]
    finally:
        await native.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "bench")  # boto3 signs too; nginx checks nothing
    with tempfile.TemporaryDirectory(prefix="gateway-ddb-client-") as tmp, listening_socket() as listener:
        workdir = Path(tmp)
        port = listener.getsockname()[1]
        (workdir / "nginx.conf").write_text(nginx_conf(port, workdir))
        with nginx_on(listener, workdir):
            url = f"http://127.0.0.1:{port}"
            wait_ready(url)
            rows = asyncio.run(measure(url, args.calls))
    print("| client | CPU µs per UpdateItem | wall µs per UpdateItem |\n|---|---|---|")
    for name, cpu, wall in rows:
        print(f"| {name} | {cpu:,.0f} | {wall:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
