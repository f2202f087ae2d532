"""A DynamoDB-compatible server for the tests: moto's server mode in a child process, over HTTP.

moto serves one request at a time here (werkzeug `threaded=False`): its threaded mode has no lock
around condition checks, so two concurrent conditional writes could both pass, which DynamoDB never
allows on one item. Tables are created from `template.yaml`, the one source of the table's schema.

Run as `python -m tests.support.dynamo PORT` to serve on that port.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.servers import listening_socket

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: short-form intrinsics (`!Ref`, `!Sub`, ...) become `{Fn::...: ...}`."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = ROOT / "template.yaml") -> dict[str, Any]:
    with path.open() as file:
        template: dict[str, Any] = yaml.load(file, Loader=CloudFormationLoader)  # noqa: S506 - a safe loader
    return template


def table_spec(template: dict[str, Any] | None = None) -> dict[str, Any]:
    """`create_table` arguments for the gateway's table, from the template's `GatewayTable`."""
    resource = (template or load_template())["Resources"]["GatewayTable"]["Properties"]
    spec: dict[str, Any] = {
        "AttributeDefinitions": resource["AttributeDefinitions"],
        "KeySchema": resource["KeySchema"],
        "BillingMode": resource["BillingMode"],
    }
    if resource.get("GlobalSecondaryIndexes"):
        spec["GlobalSecondaryIndexes"] = resource["GlobalSecondaryIndexes"]
    return spec


def ttl_attribute(template: dict[str, Any] | None = None) -> str:
    resource = (template or load_template())["Resources"]["GatewayTable"]["Properties"]
    name: str = resource["TimeToLiveSpecification"]["AttributeName"]
    return name


class DynamoServer:
    """moto's DynamoDB on a loopback port, in a child process."""

    def __init__(self) -> None:
        self.listener = listening_socket()  # the child serves on it (`servers.listening_socket`)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DynamoServer:
        env = {**os.environ, **CREDENTIALS}
        with self.listener:  # (the child's copy serves; this one closes once it is passed on)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.dynamo", str(self.listener.fileno())],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=[self.listener.fileno()],
            )
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_tables()
                return self
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the DynamoDB test server did not start") from None
                time.sleep(0.1)

    def client(self, region: str = "us-east-1") -> Any:
        """A boto3 client of `region`'s tables: moto keeps tables per region, as DynamoDB does."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
        ).client(
            "dynamodb",
            endpoint_url=self.url,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=128),
        )

    def create_table(self, name: str | None = None, region: str = "us-east-1") -> str:
        """A new, empty gateway table named after the template's schema, in `region`; returns its name."""
        name = name or f"gateway-{uuid.uuid4().hex[:8]}"
        client = self.client(region)
        client.create_table(TableName=name, **table_spec())
        client.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"AttributeName": ttl_attribute(), "Enabled": True}
        )
        return name

    def store_url(self, table: str, region: str = "us-east-1") -> str:
        # moto serves one call at a time, so under load a call can wait far longer than on DynamoDB.
        return f"dynamodb://{table}?region={region}&endpoint_url={self.url}&read_timeout=15"

    def calls(self) -> int:
        """DynamoDB calls served so far."""
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/__calls", timeout=5) as answer:  # noqa: S310 - loopback
            return int(answer.read())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def clear_of_minute_end(needed: float) -> None:
    """Wait, if need be, until the current minute has `needed` seconds left: a test that reads a key's per-minute
    counts after its request reads the request's own window only if the minute has not turned meanwhile (a
    counter of an ended minute reads as none)."""
    left = 60 - time.time() % 60
    if left < needed:
        await asyncio.sleep(left + 0.05)


class SlowAnswers(httpx.AsyncBaseTransport):
    """moto behind the gateway's DynamoDB client; the next `slowed` admissions (`UpdateItem`) land at once, their
    answers `delay` s later, as from a DynamoDB slowed down."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.slowed = 0
        self.delay = 1.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await response.aread()
        if self.slowed and request.headers["x-amz-target"].endswith(".UpdateItem"):
            self.slowed -= 1
            await asyncio.sleep(self.delay)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def normalize_sums() -> None:
    """moto writes a sum the way Python prints its decimal: 0.000001234 - 0.000001234 is `0E-9`, which its next
    addition to the same attribute fails to parse (a 500). DynamoDB stores numbers normalized (zero is `0`):
    so do sums here, wherever Python would print an exponent."""
    from decimal import Decimal

    from moto.dynamodb.models.dynamo_type import DynamoType

    def normalized(operation: Any) -> Any:
        def apply(self: Any, other: Any) -> Any:
            result = operation(self, other)
            number = result.value if isinstance(result.value, str) else ""
            if result.is_number() and "E" in number:
                result.value = format(Decimal(number).normalize(), "f")
            return result

        return apply

    DynamoType.__add__ = normalized(DynamoType.__add__)  # type: ignore[method-assign]
    DynamoType.__sub__ = normalized(DynamoType.__sub__)  # type: ignore[method-assign]


def main(listener: int) -> None:
    """moto's DynamoDB on the listening socket of file descriptor `listener`, which the parent bound."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    normalize_sums()
    moto = DomainDispatcherApplication(create_backend_app)
    served = [0]

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        # GET /__calls answers how many DynamoDB calls were served: the benchmark counts store round trips.
        if environ.get("PATH_INFO") == "/__calls" and environ.get("REQUEST_METHOD") == "GET":
            start_response("200 OK", [("content-type", "text/plain")])
            return [str(served[0]).encode()]
        served[0] += 1
        return moto(environ, start_response)

    make_server("127.0.0.1", 0, app, threaded=False, fd=listener).serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
