"""The AWS layer: endpoints as botocore resolves them, credentials refreshed off the hot path, and the
DynamoDB store with no keys in the environment (container credentials, as on ECS or SnapStart's restore)."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import botocore.loaders
import botocore.regions
import botocore.session
import pytest
from botocore.credentials import Credentials as BotoCredentials

from adapters import aws
from adapters.store import open_store
from handler.ports import KeyRecord
from tests.support.dynamo import DynamoServer

KEY_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(autouse=True)
def fresh_credentials() -> Iterator[None]:
    aws.reset_process_credentials()
    yield
    aws.reset_process_credentials()


@pytest.mark.parametrize(
    ("service", "region", "url"),
    [
        ("dynamodb", "eu-central-1", "https://dynamodb.eu-central-1.amazonaws.com"),
        ("bedrock-runtime", "us-east-1", "https://bedrock-runtime.us-east-1.amazonaws.com"),
        ("dynamodb", "cn-north-1", "https://dynamodb.cn-north-1.amazonaws.com.cn"),
        ("secretsmanager", "cn-northwest-1", "https://secretsmanager.cn-northwest-1.amazonaws.com.cn"),
        ("dynamodb", "us-gov-west-1", "https://dynamodb.us-gov-west-1.amazonaws.com"),
        ("ssm", "us-iso-east-1", "https://ssm.us-iso-east-1.c2s.ic.gov"),
    ],
)
def test_endpoints_follow_the_region_s_partition(service: str, region: str, url: str) -> None:
    assert aws.endpoint(service, region, environ={}) == url


def test_the_aws_partition_shortcut_is_botocore_s_own_data() -> None:
    data = botocore.loaders.create_loader().load_data("endpoints")
    partition = next(p for p in data["partitions"] if p["partition"] == "aws")
    assert (partition["regionRegex"], partition["dnsSuffix"]) == (aws.AWS_REGION_REGEX, aws.AWS_DNS_SUFFIX)
    resolver = botocore.regions.EndpointResolver(data)
    for region in ("us-east-1", "eu-west-3", "ap-southeast-2", "sa-east-1", "me-central-1", "il-central-1"):
        for service in ("dynamodb", "ssm", "secretsmanager"):
            expected = resolver.construct_endpoint(service, region)
            assert f"https://{expected['hostname']}" == aws.endpoint(service, region, environ={})


def test_configured_endpoints_as_botocore_reads_them() -> None:
    both = {"AWS_ENDPOINT_URL": "http://all:1/", "AWS_ENDPOINT_URL_DYNAMODB": "http://ddb:2/"}
    assert aws.endpoint("dynamodb", "us-east-1", environ=both) == "http://ddb:2"
    assert aws.endpoint("bedrock-runtime", "us-east-1", environ=both) == "http://all:1"
    assert aws.endpoint("bedrock-runtime", "us-east-1", environ={"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "http://b"}) == (
        "http://b"
    )
    assert aws.endpoint("secretsmanager", "us-east-1", environ={"AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://s"}) == (
        "http://s"
    )
    ignored = {**both, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert aws.endpoint("dynamodb", "us-east-1", environ=ignored) == "https://dynamodb.us-east-1.amazonaws.com"
    assert aws.endpoint("dynamodb", "us-east-1", "http://given/", environ=both) == "http://given"


def test_environment_keys_need_no_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.session, "get_session", lambda: pytest.fail("botocore's chain consulted"))
    keys = aws.AwsCredentials({"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"})
    assert (keys.current().access_key, keys.current().token) == ("A", "T") and not keys.from_chain


@pytest.mark.usefixtures("no_gc_pauses")
def test_chain_credentials_are_refreshed_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request signs with the snapshot it has, at once; a thread takes the next snapshot, in which
    botocore's refreshable credentials fetch new keys near their expiry (slowly, here)."""
    keys = iter(["FIRST", "SECOND", "THIRD"])

    class Rotating(BotoCredentials):
        def get_frozen_credentials(self) -> Any:
            if self.access_key != "NONE":
                time.sleep(0.3)  # a credentials endpoint's round trip
            return BotoCredentials(next(keys), "secret", "token").get_frozen_credentials()

    class Session:
        def get_credentials(self) -> BotoCredentials:
            return Rotating("NONE", "x")

    monkeypatch.setattr(botocore.session, "get_session", Session)
    credentials = aws.AwsCredentials({}, snapshot_every_s=0.05)
    assert credentials.current().access_key == "FIRST" and credentials.from_chain
    time.sleep(0.1)
    started = time.perf_counter()
    assert credentials.current().access_key == "FIRST"  # the refresh runs on a thread meanwhile
    assert time.perf_counter() - started < 0.2  # not the refresh's 0.3 s
    deadline = time.monotonic() + 5
    while credentials.current().access_key == "FIRST" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert credentials.current().access_key == "SECOND"


def test_a_snapstart_restore_renews_chain_credentials_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = iter(["SNAPSHOTTED", "RESTORED"])

    class Rotating(BotoCredentials):
        def get_frozen_credentials(self) -> Any:
            return BotoCredentials(next(keys), "secret", "token").get_frozen_credentials()

    class Session:
        def get_credentials(self) -> BotoCredentials:
            return Rotating("NONE", "x")

    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(botocore.session, "get_session", Session)
    assert aws.process_credentials().current().access_key == "SNAPSHOTTED"
    aws.renew_process_credentials()  # what `Gateway.reopen`, the restore hook, does first
    assert aws.process_credentials().current().access_key == "RESTORED"


def test_keys_from_a_role_are_never_relayed_the_latest_two_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys from a profile or a role (not the environment's, registered at start) are registered for redaction as
    each snapshot is taken: an AWS error quoting the request's headers must not carry the session token out. The
    previous ones stay (a token outlives its successor's arrival); older ones are forgotten."""
    from handler.redaction import redact_message

    tokens = iter([f"FwoGZXIvYXdzEJr//token{n}" * 2 for n in range(3)])

    class Rotating(BotoCredentials):
        def get_frozen_credentials(self) -> Any:
            token = next(tokens)
            return BotoCredentials("ASIAEXAMPLE", f"secret-of-{token}", token).get_frozen_credentials()

    class Session:
        def get_credentials(self) -> BotoCredentials:
            return Rotating("NONE", "x")

    monkeypatch.setattr(botocore.session, "get_session", Session)
    credentials = aws.AwsCredentials({})
    first = credentials.current().token
    assert first is not None and first not in redact_message(f"canonical request: x-amz-date {first}")
    credentials.renew()
    second = credentials.current().token
    assert second is not None and first not in redact_message(first) and second not in redact_message(second)
    credentials.renew()
    assert first in redact_message(first)  # two renewals ago: no longer tested for in every answer
    assert "[REDACTED]" in redact_message("x-amz-security-token:IQoJb3JpZ2luX2VjEAAa-whatever")


class ContainerCredentials:
    """The container credentials endpoint (ECS, and Lambda's `AWS_CONTAINER_CREDENTIALS_FULL_URI`) on loopback."""

    def __init__(self) -> None:
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.calls += 1
                expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=6)
                body = json.dumps(
                    {
                        "AccessKeyId": served.access_key,
                        "SecretAccessKey": "container-secret",
                        "Token": "container-token",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.calls = 0
        self.access_key = "ASIACONTAINER"  # (the role's keys as the endpoint hands them out now)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/credentials"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_store_without_keys_in_the_environment_uses_container_credentials(
    monkeypatch: pytest.MonkeyPatch, dynamo: DynamoServer, tmp_path: Any
) -> None:
    """No keys in the environment (SnapStart's restored functions, ECS tasks): the one AWS layer resolves a
    container role through botocore's chain, and the store works on it against the DynamoDB server."""
    container = ContainerCredentials()
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", container.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamo.url)
    table = dynamo.create_table()

    async def round_trip() -> KeyRecord | None:
        store = open_store(f"dynamodb://{table}?region=us-east-1")
        try:
            await store.create_key(KeyRecord(id="containerkey", name="c", secret_hash="h", created_at=0))
            return await store.get_key("containerkey")
        finally:
            await store.close()

    try:
        found = asyncio.run(round_trip())
    finally:
        container.stop()
    assert found is not None and found.name == "c"
    assert container.calls == 1
    assert aws.process_credentials().current().access_key == "ASIACONTAINER"


def test_a_snapstart_restore_fetches_credentials_from_a_role_afresh(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Credentials from a container role, hours from their expiry (botocore would not refresh them yet), are fetched
    again when a restore renews them: the snapshot may be older than they are valid, and they may have been revoked.
    `renew` only took botocore's snapshot of the same keys, asking the endpoint nothing."""
    container = ContainerCredentials()
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", container.url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    try:
        credentials = aws.AwsCredentials({})
        assert credentials.current().access_key == "ASIACONTAINER"
        container.access_key = "ASIARESTORED"  # the role's keys now, when the snapshot is restored
        credentials.renew()
        assert credentials.current().access_key == "ASIARESTORED"
        assert container.calls == 2
    finally:
        container.stop()


def test_every_region_botocore_knows_is_an_aws_region_name_and_a_made_up_one_is_not() -> None:
    """A DynamoDB store URL's `region=narnia` was taken (its calls went to dynamodb.narnia.amazonaws.com): the
    pattern holds every partition's regions (gov, iso, China, the sovereign cloud) without listing them."""
    data = botocore.loaders.create_loader().load_data("endpoints")
    regions = [region for partition in data["partitions"] for region in partition["regions"]]
    assert len(regions) > 30 and [r for r in regions if not aws.is_aws_region(r)] == []
    made_up = ("narnia", "local", "eu-central", "us_east_1", "US-EAST-1", "eu-central-1 ", "xx-east-1", "us-east-١")
    assert [name for name in made_up if aws.is_aws_region(name)] == []
