"""AWS Signature Version 4 for one JSON POST, as the AWS docs specify it, without botocore.

https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html. The signing key depends only on
the secret, the day, the region and the service, so it is derived once a day per region and service.
tests/unit/adapters/test_sigv4.py checks every signature against botocore's `SigV4Auth` for the same request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Mapping
from typing import Final

from handler.records import Value
from handler.redaction import REDACTED

ALGORITHM = "AWS4-HMAC-SHA256"


class Credentials(Value):
    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self.access_key: Final = access_key
        self.secret_key: Final = secret_key
        self.token: Final = token

    def __repr__(self) -> str:
        """The access key id only: the secret and the session token never reach a log or a traceback."""
        token = None if self.token is None else REDACTED
        return f"Credentials(access_key={self.access_key!r}, secret_key={REDACTED!r}, token={token!r})"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Credentials | None:
        """The credentials Lambda (and most runners) put in the environment, if all are there."""
        access, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            return None
        return cls(access, secret, environ.get("AWS_SESSION_TOKEN") or None)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.digest(key, text.encode(), "sha256")  # (the one-shot digest: no HMAC object built per call)


@functools.lru_cache(maxsize=64)
def _canonical_path(path: str) -> str:
    """Every service but S3 signs the path as sent, encoded once more (`%2F` is signed as `%252F`)."""
    return urllib.parse.quote(path or "/", safe="/~")


@functools.lru_cache(maxsize=1)
def _stamp(second: int) -> str:
    """`x-amz-date` for a second: formatted once, for every request signed within it."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))


class Signer:
    """Signs requests to one service in one region with one set of credentials."""

    __slots__ = ("credentials", "region", "service", "_keys")

    def __init__(self, credentials: Credentials, region: str, service: str) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._keys: dict[str, bytes] = {}

    def _key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = _hmac(("AWS4" + self.credentials.secret_key).encode(), day)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            self._keys = {day: key}
        return key

    def headers(
        self, host: str, path: str, headers: Mapping[str, str], body: bytes, now: float | None = None
    ) -> dict[str, str]:
        """`headers` plus `host`, `x-amz-date`, the session token and `authorization`, for a POST of `body`
        to `path` (as sent, percent-encoded; no query string), signed over every one of them, as botocore
        signs a DynamoDB or Bedrock call."""
        stamp = _stamp(int(time.time() if now is None else now))
        day = stamp[:8]
        payload = hashlib.sha256(body).hexdigest()
        signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
        signed["host"] = host
        signed["x-amz-date"] = stamp
        if self.credentials.token:
            signed["x-amz-security-token"] = self.credentials.token
        names = sorted(signed)
        listed = ";".join(names)
        lines = "".join([f"{name}:{signed[name]}\n" for name in names])
        canonical = f"POST\n{_canonical_path(path)}\n\n{lines}\n{listed}\n{payload}"
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._key(day), to_sign.encode(), "sha256").hex()
        signed["authorization"] = (
            f"{ALGORITHM} Credential={self.credentials.access_key}/{scope}, "
            f"SignedHeaders={listed}, Signature={signature}"
        )
        return signed
