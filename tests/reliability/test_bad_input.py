"""Hostile and malformed input on the real socket: every answer a 4xx in the shape of the interface reference
(docs/interface.md), never a 5xx, never a traceback (in the answer or in what the server logged)."""

from __future__ import annotations

import gzip
import socket
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Running

CHAT = "/v1/chat/completions"


def post(running: Running, key: str, body: bytes, path: str = CHAT, **headers: str) -> httpx.Response:
    sent = {"authorization": f"Bearer {key}", "content-type": "application/json", **headers}
    return httpx.post(f"{running.url}{path}", content=body, headers=sent, timeout=30)


def assert_error(answer: httpx.Response, status: int | tuple[int, ...], path: str = CHAT) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in statuses, (answer.status_code, answer.text[:300])
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    body: dict[str, Any] = answer.json()
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}
    else:
        assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body


def raw_request(running: Running, data: bytes) -> bytes:
    """Send bytes as they are (httpx refuses to send malformed requests) and read the whole answer."""
    host, port = running.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture(autouse=True)
def no_traceback_logged(capfd: pytest.CaptureFixture[str]) -> Any:
    yield
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "unhandled error" not in out + err


def test_oversized_bodies_are_413(running: Running, key: str) -> None:
    limit = running.gateway.config.gateway.max_body_bytes
    big = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * (limit + 10) + b'"}]}'
    assert assert_error(post(running, key, big), 413)["error"]["code"] == "request_too_large"
    assert_error(post(running, key, big, "/v1/messages"), 413, "/v1/messages")

    def chunks() -> Any:  # no content-length: the limit holds on the stream too
        yield b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    answer = httpx.post(
        f"{running.url}{CHAT}", content=chunks(), headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert_error(answer, 413)
    lying = raw_request(
        running,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + key.encode() + b"\r\n"
        b"content-type: application/json\r\ncontent-length: 99999999999999999999\r\n\r\n{}",
    )
    assert lying.split(b" ", 2)[1] in (b"400", b"413"), lying[:200]


@pytest.mark.parametrize("depth", [100, 1_000, 100_000])
def test_deep_nesting_is_400(running: Running, key: str, depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"x_vendor_field":' + nested + b"}"
    answer = post(running, key, body)
    if depth <= 100:
        assert answer.status_code == 200, answer.text[:200]  # an unknown field, passed on to OpenAI
    else:  # deeper than the gateway forwards: refused up front (regression: was a 500 at ~255 levels)
        assert_error(answer, 400)
    content = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":' + nested + b"}]}"
    assert_error(post(running, key, content), 400)
    assert_error(post(running, key, content, "/v1/messages"), 400, "/v1/messages")


def test_invalid_utf8_is_400(running: Running, key: str) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff\xfe\xc3\x28"}]}'
    assert_error(post(running, key, body), 400)
    assert_error(post(running, key, body, "/v1/messages"), 400, "/v1/messages")
    lone_surrogate = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}'
    answer = post(running, key, lone_surrogate)
    assert answer.status_code in (200, 400)
    if answer.status_code == 400:
        assert_error(answer, 400)


@pytest.mark.parametrize(
    "field",
    [
        b'"max_tokens":1e400',
        b'"max_tokens":123456789012345678901234567890',
        b'"temperature":1e308',
        b'"seed":99999999999999999999999999999999999',
        b'"n":-1',
        b'"temperature":NaN',
        b'"top_p":Infinity',
    ],
)
def test_huge_numbers_are_400(running: Running, key: str, field: bytes) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],' + field + b"}"
    assert_error(post(running, key, body), 400)


@pytest.mark.parametrize(
    ("path", "field", "param"),
    [
        (CHAT, b'"stream":"true"', "stream"),
        (CHAT, b'"stream":1', "stream"),
        (CHAT, b'"max_tokens":"10"', "max_tokens"),
        (CHAT, b'"n":2.0', "n"),
        (CHAT, b'"temperature":"0.5"', "temperature"),
        (CHAT, b'"seed":"1"', "seed"),
        (CHAT, b'"stop":5', "stop"),  # (its param was "stop.str": a union member's name from pydantic)
        (
            CHAT,
            b'"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{},"strict":"yes"}}',
            "response_format.json_schema.strict",
        ),
        (
            "/v1/responses",
            b'"text":{"format":{"type":"json_schema","name":"x","schema":{},"strict":1}}',
            "text.format.strict",
        ),
        ("/v1/responses", b'"stream":"true"', "stream"),
        ("/v1/responses", b'"max_output_tokens":"10"', "max_output_tokens"),
        ("/v1/messages", b'"stream":"yes"', "stream"),
        ("/v1/messages", b'"max_tokens":"10"', "max_tokens"),
        ("/v1/embeddings", b'"dimensions":"3"', "dimensions"),
    ],
)
def test_a_field_of_the_wrong_json_type_is_400_not_converted(
    running: Running, key: str, path: str, field: bytes, param: str
) -> None:
    """As at OpenAI and Anthropic: `"stream": "true"` streamed, and `"max_tokens": "10"` went on as 10."""
    bodies = {
        CHAT: b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],',
        "/v1/responses": b'{"model":"gpt-4o-mini","input":"hi",',
        "/v1/messages": b'{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"hi"}],',
        "/v1/embeddings": b'{"model":"text-embedding-3-small","input":"hi",',
    }
    body = assert_error(post(running, key, bodies[path] + field + b"}", path), 400, path)
    if path != "/v1/messages":
        assert body["error"]["param"] == param, body
    else:
        assert body["error"]["message"].startswith(param), body


def test_an_integer_is_still_a_number(running: Running, key: str) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"temperature":1,"top_p":1}'
    assert post(running, key, body).status_code == 200


def test_huge_numbers_in_headers_and_queries(running: Running, key: str) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    for value in ("1e999", "nan", "-1", "0x10", "9" * 400):
        assert_error(post(running, key, body, **{"x-gateway-deadline-ms": value}), 400)
    huge = post(running, key, body, **{"x-gateway-max-cost-usd": "1" + "0" * 300})
    assert huge.status_code == 200
    for since in ("1e308", "-1e308", "nan", "inf", "9" * 400):
        answer = httpx.get(
            f"{running.url}/v1/usage", params={"since": since}, headers={"authorization": f"Bearer {key}"}
        )
        assert answer.status_code in (200, 400), (since, answer.status_code, answer.text[:200])
        if answer.status_code == 400:
            assert_error(answer, 400)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "xml"]
)
def test_wrong_content_types_are_400(running: Running, key: str, content_type: str) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    answer = post(running, key, body, **{"content-type": content_type})
    assert assert_error(answer, (400, 415))["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path", [CHAT, "/v1/messages", "/v1/responses", "/v1/embeddings"])
def test_a_body_in_a_content_coding_is_415_naming_it(running: Running, key: str, path: str) -> None:
    """A gzip-coded body was answered 400 "not valid JSON", as if the client had sent bad JSON: it is a 415 naming the
    coding, with `accept-encoding: identity` (RFC 9110 15.5.16)."""
    body = gzip.compress(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}')
    answer = post(running, key, body, path, **{"content-encoding": "gzip"})
    error = assert_error(answer, 415, path)["error"]
    assert "content-encoding 'gzip'" in error["message"] and answer.headers["accept-encoding"] == "identity"
    assert error.get("code", "unsupported_content_encoding") == "unsupported_content_encoding"


def test_a_body_declared_identity_is_read_as_it_is(running: Running, key: str) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    assert post(running, key, body, **{"content-encoding": "identity"}).status_code == 200


@pytest.mark.parametrize(
    "body", [b"", b"null", b"[]", b'"x"', b"{", b'{"model":"gpt-4o-mini"}', b'{"model":1,"messages":"x"}']
)
def test_malformed_json_is_400(running: Running, key: str, body: bytes) -> None:
    assert_error(post(running, key, body), 400)
    assert_error(post(running, key, body, "/v1/messages"), 400, "/v1/messages")
    assert_error(post(running, key, body, "/v1/embeddings"), 400)


def test_headers_with_control_characters(running: Running, key: str) -> None:
    for header in (b"x-gateway-fallbacks: a\x00b", b"x-gateway-provider: \x7f\x01", b"authorization: Bearer \x00"):
        answer = raw_request(
            running,
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
            + key.encode()
            + b"\r\n"
            + header
            + b"\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        )
        status = answer.split(b" ", 2)[1]
        assert status.startswith(b"4"), answer[:300]
        assert b"Traceback" not in answer
    latin1 = post(running, key, b"{}", **{"x-gateway-region": "r\u00e9gion".encode("latin-1")})  # type: ignore[arg-type]
    assert_error(latin1, 400)


def test_client_chosen_names_never_break_the_answer_headers(running: Running, key: str) -> None:
    """Regression: unknown Anthropic fields are echoed in `x-gateway-dropped-params`; a field name outside
    Latin-1 made the answer fail with a 500, and one with CR/LF could have split the header."""
    body = (
        b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}],'
        b'"\\udbff\\udfff\xf0\x9f\x98\x80":1,"a\\r\\nset-cookie: x=1":2,"top_k":3}'
    )
    answer = post(running, key, body, "/v1/messages")
    assert answer.status_code == 200, answer.text[:300]
    assert "set-cookie" not in answer.headers
    dropped = answer.headers["x-gateway-dropped-params"].split(",")
    assert "top_k" in dropped and all(name.isascii() and "\r" not in name for name in dropped)
    missing = post(running, key, body.replace(b"gpt-4o-mini", b"no-such-model"), "/v1/messages")
    assert_error(missing, 404, "/v1/messages")
