"""The one AWS layer of the process: credentials and endpoints for Bedrock, DynamoDB, SSM and Secrets Manager.

Credentials: the environment's keys when it holds them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`: Lambda always sets them), with no botocore import at all; else botocore's credential
chain (profiles, container role via `AWS_CONTAINER_CREDENTIALS_*`, instance role), resolved once, off the
hot path. A request signs with a snapshot of them, read without I/O; every `SNAPSHOT_EVERY_S` a thread takes
a new snapshot, and botocore's refreshable credentials fetch new keys inside that thread once they are within
botocore's refresh window of their expiry (15 minutes), so a request never waits on a credentials endpoint.

Endpoints, as botocore chooses them: the endpoint given for a client (a store URL's `endpoint_url`, a
provider's `base_url`), else `AWS_ENDPOINT_URL_<SERVICE>` (`AWS_ENDPOINT_URL_DYNAMODB`,
`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_ENDPOINT_URL_SSM`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`), else
`AWS_ENDPOINT_URL` (both ignored under `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else the service's
endpoint in the region's partition (`dynamodb.cn-north-1.amazonaws.com.cn`). Regions of the `aws`
partition are named without botocore; any other comes from botocore's endpoint data.

SSM and Secrets Manager are read through boto3 (`boto3_client`), with the same region and endpoints: at start, and
again for provider keys while the process runs (handler/pipeline/provider_keys.py).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from adapters.sigv4 import Credentials
from handler import redaction

SNAPSHOT_EVERY_S = 60.0
# After botocore's chain found no credentials, how long a request is refused at once before the chain is walked
# again: walking it is blocking I/O (files, and the instance role's endpoint, which waits a second or two where
# there is none), and without this every request to Bedrock on a machine with no credentials paid it.
MISSING_RETRY_S = 5.0
# botocore's endpoint data (endpoints.json), partition `aws`: its `regionRegex` and `dnsSuffix`.
# tests/unit/adapters/test_aws.py checks them against botocore's, so they cannot drift apart.
AWS_REGION_REGEX = r"^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$"
AWS_DNS_SUFFIX = "amazonaws.com"
_STANDARD = re.compile(AWS_REGION_REGEX)
# A region of any partition, as botocore's partitions' `regionRegex`es name theirs (`aws`'s above; `cn-`, `us-gov-`,
# `us-iso-`, `us-isob-`, `us-isof-`, `eu-isoe-`, `eusc-de-`): an area, one or more words, a number. A pattern, not the
# list of regions, so that a region opened after this release is taken; tests/unit/adapters/test_aws.py holds every
# region botocore lists to it.
AWS_ANY_REGION = re.compile(r"(us|eu|ap|sa|ca|me|af|il|mx|cn|eusc)(-[a-z]+)+-\d+", re.ASCII)


def is_aws_region(name: str) -> bool:
    """Whether `name` can be an AWS region's (`eu-central-1`, `us-gov-west-1`, `cn-north-1`; not `narnia`)."""
    return AWS_ANY_REGION.fullmatch(name) is not None


# Signing names and endpoint prefixes differ from the environment's names for some services.
SERVICE_ENV_NAMES = {"bedrock-runtime": "BEDROCK_RUNTIME", "secretsmanager": "SECRETS_MANAGER"}


class NoCredentialsError(Exception):
    """Neither the environment nor botocore's chain holds AWS credentials."""


class AwsCredentials:
    """The process's AWS credentials (see the module docstring); `current()` is what a request signs with."""

    def __init__(self, environ: Mapping[str, str] | None = None, snapshot_every_s: float = SNAPSHOT_EVERY_S) -> None:
        self.environ = os.environ if environ is None else environ
        self.snapshot_every_s = snapshot_every_s
        self._snapshot: Credentials | None = None
        self._source: Any = None  # botocore's credentials object, when they came from its chain
        self._taken = 0.0
        self._lock = threading.Lock()
        self._refreshing = False
        self._missing_until = 0.0  # (monotonic) the chain found none: refused at once until then

    @property
    def from_chain(self) -> bool:
        return self._source is not None

    def current(self) -> Credentials:
        """The credentials to sign with now, without I/O once resolved (the first call resolves them)."""
        snapshot = self._snapshot
        if snapshot is None:
            if time.monotonic() < self._missing_until:
                raise NoCredentialsError("no AWS credentials: not in the environment, a profile or a role")
            return self.resolve()
        if self._source is not None and time.monotonic() - self._taken > self.snapshot_every_s:
            self._refresh_in_background()
        return snapshot

    def ready(self) -> bool:
        """Whether there are credentials to sign with now, without I/O: the environment's keys are read at once;
        botocore's chain (files, and an instance role's endpoint, which may take seconds to answer or never) is
        walked on a thread, and until it has found some there are none. Walked on the event loop, it stood every
        request of the process still for 2.2 s every `MISSING_RETRY_S`, for a Bedrock deployment never tried."""
        if self._snapshot is not None:
            return True
        if time.monotonic() < self._missing_until:
            return False
        if Credentials.from_environ(self.environ) is not None:
            self.resolve()  # (the environment's keys: no I/O)
            return True
        self._missing_until = time.monotonic() + MISSING_RETRY_S  # (one walk at a time; its failure sets it again)
        threading.Thread(target=self._walk, name="aws-credentials", daemon=True).start()
        return False

    def _walk(self) -> None:
        try:
            self.resolve()
        except Exception:  # noqa: BLE001 - none found (or the chain failed): looked for again after MISSING_RETRY_S
            self._missing_until = time.monotonic() + MISSING_RETRY_S

    def resolve(self) -> Credentials:
        """Resolve the credentials now (blocking: at start, or the first use)."""
        with self._lock:
            if self._snapshot is None:
                environment = Credentials.from_environ(self.environ)
                if environment is not None:
                    self._snapshot = environment
                else:
                    import botocore.session  # deferred: only a process without keys in its environment

                    source = botocore.session.get_session().get_credentials()
                    if source is None:
                        self._missing_until = time.monotonic() + MISSING_RETRY_S
                        raise NoCredentialsError("no AWS credentials: not in the environment, a profile or a role")
                    self._source = source
                    self._take_snapshot()
            assert self._snapshot is not None
            return self._snapshot

    def renew(self) -> None:
        """Fetch new credentials now, blocking (after a SnapStart restore: the ones in the snapshot may be hours old,
        their keys expired or revoked, however far from its expiry botocore thinks them): botocore's chain is
        resolved afresh, which asks the role's endpoint again. Keys from the environment stay as they are; if the
        chain now finds none, the ones held stay in use."""
        if self._source is None:
            return
        import botocore.session  # (imported when the chain was resolved)

        with self._lock:
            source = botocore.session.get_session().get_credentials()
            if source is not None:
                self._source = source
            self._take_snapshot()

    def _take_snapshot(self) -> None:
        frozen = self._source.get_frozen_credentials()  # botocore refreshes here when near expiry
        # Keys from a profile or a role: an AWS error that quotes the request (a signature mismatch does) must
        # not carry them to a client, as the environment's keys never are (see handler.redaction).
        redaction.register_current("aws-credentials", frozen.secret_key, frozen.token)
        self._snapshot = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        self._taken = time.monotonic()

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="aws-credentials", daemon=True).start()

    def _refresh(self) -> None:
        try:
            self._take_snapshot()
        except Exception:  # noqa: BLE001 - the old keys stay in use; the next request's check tries again
            self._taken = time.monotonic() - self.snapshot_every_s / 2
        finally:
            self._refreshing = False


_process_credentials: AwsCredentials | None = None


def process_credentials() -> AwsCredentials:
    """The credentials of this process, one object shared by every AWS client."""
    global _process_credentials
    if _process_credentials is None:
        _process_credentials = AwsCredentials()
    return _process_credentials


def renew_process_credentials() -> None:
    """`AwsCredentials.renew` for the process's credentials, if they were resolved."""
    if _process_credentials is not None:
        _process_credentials.renew()


def reset_process_credentials() -> None:
    """Forget the process's credentials (tests, or after the environment changed)."""
    global _process_credentials
    _process_credentials = None


def endpoint(service: str, region: str, given: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The base URL for `service` (its endpoint prefix: `dynamodb`, `bedrock-runtime`, `ssm`,
    `secretsmanager`) in `region`, without a trailing slash (see the module docstring)."""
    if given:
        return given.rstrip("/")
    env = os.environ if environ is None else environ
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        configured = env.get(f"AWS_ENDPOINT_URL_{SERVICE_ENV_NAMES.get(service, service.upper())}") or env.get(
            "AWS_ENDPOINT_URL"
        )
        if configured:
            return configured.rstrip("/")
    return f"https://{hostname(service, region)}"


@functools.cache
def hostname(service: str, region: str) -> str:
    """`service`'s host in `region`'s partition."""
    if _STANDARD.match(region):
        return f"{service}.{region}.{AWS_DNS_SUFFIX}"
    import botocore.loaders  # deferred: only regions outside the `aws` partition
    import botocore.regions

    data = botocore.loaders.create_loader().load_data("endpoints")
    found = botocore.regions.EndpointResolver(data).construct_endpoint(service, region)
    if found is not None:
        return str(found["hostname"])
    for partition in data["partitions"]:  # a service botocore lists nowhere in that partition yet
        if region in partition["regions"] or re.match(partition["regionRegex"], region):
            return f"{service}.{region}.{partition['dnsSuffix']}"
    return f"{service}.{region}.{AWS_DNS_SUFFIX}"


def region_of(environ: Mapping[str, str] | None = None) -> str | None:
    """The process's region: `AWS_REGION`, else `AWS_DEFAULT_REGION`."""
    env = os.environ if environ is None else environ
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None


def boto3_client(service: str, region: str | None = None) -> Any:
    """A boto3 client for `service` (`ssm`, `secretsmanager`), with this layer's region and endpoint; for
    calls made once per process (boto3's heavy import is paid only then)."""
    import boto3

    region = region or region_of()
    url = endpoint(service, region) if region else None
    session: Any = boto3.session.Session()  # (Any: the stubs type `client` per literal service name)
    return session.client(service, region_name=region, endpoint_url=url)
