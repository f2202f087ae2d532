"""Our SigV4 signatures are byte for byte botocore's, for the requests the DynamoDB client sends."""

from __future__ import annotations

import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from adapters.sigv4 import Credentials, Signer

NOW = 1_764_300_000.0  # 2025-11-28T03:20:00Z


def botocore_headers(
    credentials: Credentials, region: str, url: str, headers: dict[str, str], body: bytes, service: str = "dynamodb"
) -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    boto = BotoCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    auth = SigV4Auth(boto, service, region)
    request.context["timestamp"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(NOW))
    auth._modify_request_before_signing(request)  # what add_auth does before it signs: host, date, token
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return {
        "signed_headers": auth.signed_headers(auth.headers_to_sign(request)),
        "signature": signature,
        "canonical": canonical,
    }


@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEBYaDH+session/token=="])
@pytest.mark.parametrize(
    ("url", "host", "path"),
    [
        ("https://dynamodb.eu-west-1.amazonaws.com/", "dynamodb.eu-west-1.amazonaws.com", "/"),
        ("http://127.0.0.1:8123/", "127.0.0.1:8123", "/"),
        (
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/eu.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
            "bedrock-runtime.eu-west-1.amazonaws.com",
            "/model/eu.anthropic.claude-3-5-haiku-20241022-v1:0/converse",
        ),
        (
            "https://bedrock-runtime.eu-west-1.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3A"
            "inference-profile%2Fmy%20profile/converse-stream",
            "bedrock-runtime.eu-west-1.amazonaws.com",
            "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A1%3Ainference-profile%2Fmy%20profile/converse-stream",
        ),
    ],
)
def test_signature_matches_botocore(token: str | None, url: str, host: str, path: str) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    headers = {"content-type": "application/x-amz-json-1.0", "x-amz-target": "DynamoDB_20120810.UpdateItem"}
    body = b'{"TableName":"t","Key":{"pk":{"S":"METER#k"}}}'
    service = "bedrock" if "bedrock" in host else "dynamodb"
    ours = Signer(credentials, "eu-west-1", service).headers(host, path, headers, body, now=NOW)
    theirs = botocore_headers(credentials, "eu-west-1", url, headers, body, service)
    authorization = ours["authorization"]
    assert f"SignedHeaders={theirs['signed_headers']}," in authorization
    assert authorization.endswith(f"Signature={theirs['signature']}")
    scope = f"20251128/eu-west-1/{service}/aws4_request"
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{scope}")
    assert ours.get("x-amz-security-token") == token
    assert ours["host"] == host and ours["x-amz-date"] == "20251128T032000Z"


def test_signing_key_is_derived_once_a_day() -> None:
    signer = Signer(Credentials("AKID", "secret"), "us-east-1", "dynamodb")
    signer.headers("h", "/", {}, b"{}", now=NOW)
    first = dict(signer._keys)
    signer.headers("h", "/", {}, b"{}", now=NOW + 60)
    assert signer._keys == first
    signer.headers("h", "/", {}, b"{}", now=NOW + 86_400)
    assert signer._keys != first and len(signer._keys) == 1


def test_each_second_is_stamped_as_itself() -> None:
    """The date stamp is formatted once a second: the next second, or an earlier one, is its own."""
    signer = Signer(Credentials("AKID", "secret"), "us-east-1", "dynamodb")
    stamps = [signer.headers("h", "/", {}, b"{}", now=NOW + dt)["x-amz-date"] for dt in (0, 0.5, 1, -3600, 0)]
    assert stamps == [
        "20251128T032000Z",
        "20251128T032000Z",
        "20251128T032001Z",
        "20251128T022000Z",
        "20251128T032000Z",
    ]


def test_credentials_come_from_the_environment_only_when_complete() -> None:
    assert Credentials.from_environ({"AWS_ACCESS_KEY_ID": "a"}) is None
    assert Credentials.from_environ({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}) == Credentials("a", "s")
    lambda_env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
    assert Credentials.from_environ(lambda_env) == Credentials("a", "s", "t")


def test_credentials_show_their_key_id_but_never_the_secret_or_the_token() -> None:
    shown = repr(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", "FwoGZXIvYXdzEJr//session"))
    assert "AKIDEXAMPLE" in shown and "[REDACTED]" in shown
    assert "wJalrXUtnFEMI" not in shown and "FwoGZXIvYXdz" not in shown
    assert "token=None" in repr(Credentials("AKIDEXAMPLE", "secret"))
