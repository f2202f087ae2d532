"""What an error echoes of a client's values, and which key a request presents (found by review, edgerev37): a
client's header or query value is echoed at most `ECHOED_CHARS` long (`handler.redaction.echoed`), never a token
templated into it whole, nor a 60 KB value as a 60 KB error; an empty `Authorization: Bearer` is no key, and hides no
`x-api-key` sent beside it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from handler.api.app import Api
from handler.errors import InvalidRequestError
from handler.pipeline.gateway import build_gateway

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2VjcmV0LXNpZ25hdHVyZQ"


def request(content_type: str) -> Request:
    body = b'{"model": "m", "messages": []}'
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return sent.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", content_type.encode("latin-1"))],
        "query_string": b"",
        "state": {},
    }
    return Request(scope, receive)


@pytest.mark.parametrize("value", [TOKEN, "text/" + "x" * 60_000])
async def test_a_content_type_400_does_not_echo_a_long_value(value: str) -> None:
    api = Api(build_gateway(store_url="sqlite://", environ={}))
    with pytest.raises(InvalidRequestError) as refused:
        await api.parse_json(request(value))
    message = str(refused.value.message if hasattr(refused.value, "message") else refused.value)
    assert value.lower() not in message, message[:200]
    assert len(message) < 300, len(message)


def test_a_dashboard_assets_404_does_not_echo_a_long_name() -> None:
    """The same for `GET /dashboard/static/{name}` (no key needed): `no dashboard asset '<name>'`, unclipped; a
    60,000-character name was a 60,337-byte answer, a token in it echoed whole (a gateway key is redacted)."""
    from starlette.testclient import TestClient

    from tests.unit.handler.api.test_app_requests import gateway_app

    with TestClient(gateway_app()) as client:
        for name in (TOKEN, "x" * 60_000):
            answer = client.get(f"/dashboard/static/{name}")
            assert answer.status_code == 404
            assert name not in answer.text and len(answer.content) < 1000, answer.text[:200]


def test_a_usage_reports_group_by_400_does_not_echo_a_long_value() -> None:
    """And for `GET /v1/usage`'s (and `/admin/usage`'s) `group_by` and `view`: each unknown group is echoed whole
    (`handler.dashboard.reports.parse_group_by`): `?view=<30,000 x>` was a 30,155-byte 400; `format` likewise
    (`handler.api.key_routes`: `format must be json or csv, not '<value>'`)."""
    from handler.dashboard.reports import parse_group_by

    for value in (TOKEN, "x" * 30_000):
        with pytest.raises(InvalidRequestError) as refused:
            parse_group_by(value)
        message = str(refused.value)
        assert value not in message and len(message) < 300, message[:200]


def keyed_request(headers: list[tuple[bytes, bytes]]) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "headers": headers,
        "query_string": b"",
        "state": {},
        "client": ("127.0.0.1", 1),
    }
    return Request(scope)


async def test_an_empty_bearer_does_not_shadow_the_x_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(build_gateway(store_url="sqlite://", environ={}))
    presented: list[str | None] = []

    async def authenticate_lineage(token: str | None, ip: str | None, administers: bool) -> list[Any]:
        presented.append(token)
        return [object()]

    monkeypatch.setattr(api.gateway.keys, "authenticate_lineage", authenticate_lineage)
    for bearer in (b"Bearer", b"Bearer ", b"bearer"):
        await api.authenticate(
            keyed_request([(b"authorization", bearer), (b"x-api-key", b"gwk_abcdefghijkm_secret")]),
            allow_x_api_key=True,
        )
    assert presented == ["gwk_abcdefghijkm_secret"] * 3, presented
