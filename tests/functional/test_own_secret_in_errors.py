"""An error that quotes what a client sent never gives back the secret alone of the request's key or an ancestor
(docs/observability.md): no shape tells it apart from any other 43 characters, so it is found by its hash, as the log
line and the ledger find it (`GatewayError.without_own_secrets`, in `error_response`)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.inprocess import serve

MODELS = {"gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}}
HI = [{"role": "user", "content": "hi"}]


def upstream(request: httpx.Request) -> httpx.Response:
    raise AssertionError("nothing is sent for a model the config does not name")


def unknown_model_bodies(model: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/v1/chat/completions", {"model": model, "messages": HI}),
        ("/v1/messages", {"model": model, "max_tokens": 5, "messages": HI}),
        ("/v1/messages/count_tokens", {"model": model, "messages": HI}),
        ("/v1/responses", {"model": model, "input": "hi"}),
        ("/v1/embeddings", {"model": model, "input": "hi"}),
    ]


@pytest.mark.parametrize("shape", ["{}", "team-{}", "{}-v2"])
async def test_a_model_named_by_the_keys_secret_is_answered_without_it(shape: str) -> None:
    # The 404 quoted the name back whole on every route and on `GET /v1/models/{id}`, where the log line had it
    # `[REDACTED]`: a proxy's log of the answer, beside the key's id, held the key.
    served = await serve(upstream, MODELS)
    secret = served.key.key.split("_", 2)[2]
    try:
        answers = [(path, await served.post(path, body)) for path, body in unknown_model_bodies(shape.format(secret))]
        answers.append(("/v1/models/{id}", await served.get(f"/v1/models/{shape.format(secret)}")))
        for path, answer in answers:
            assert answer.status_code == 404, (path, answer.text)
            assert secret not in answer.text and "[REDACTED]" in answer.text, (path, answer.text)
    finally:
        await served.gateway.drain()
        await served.http.aclose()


async def test_another_keys_secret_in_a_name_is_quoted_as_it_came() -> None:
    served = await serve(upstream, MODELS)
    other = "A" * 20 + "b" * 23  # (43 characters of a secret's alphabet that are no key's secret here)
    try:
        answer = await served.post("/v1/chat/completions", {"model": other, "messages": HI})
        assert answer.status_code == 404 and other in answer.text
    finally:
        await served.gateway.drain()
        await served.http.aclose()


async def test_a_page_asked_of_a_stored_response_quotes_a_long_order_cut() -> None:
    # `order=` (and `after=`) were quoted back whole: 50 KB of query in the 400 (`limit=` was cut to 20 characters).
    served = await serve(upstream, MODELS)
    try:
        answer = await served.get(f"/v1/responses/resp_{'0' * 32}001/input_items?order={'x' * 50_000}")
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "order", answer.text
        assert len(answer.text) < 2_000
    finally:
        await served.gateway.drain()
        await served.http.aclose()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/models/{}", 404),
        ("/v1/models/team-{}", 404),
        ("/v1/responses/resp_{}", 404),
        ("/admin/keys/{}", 403),
        ("/v1/files/{}", 404),  # (a route the gateway has not: its key is never read)
        ("/v1/chat/completions/{}", 404),
    ],
)
async def test_a_path_holding_the_keys_secret_is_answered_and_logged_without_it(
    path: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 404 of `GET /v1/models/<secret>` answered `[REDACTED]`, but its log line kept the path whole beside the
    key's id, which made the key whole for whoever reads the log; and a route the gateway has not echoed the secret
    in its 404 (`GET /v1/files/<secret>: Not Found`). Found by review."""
    served = await serve(upstream, MODELS)
    secret = served.key.key.split("_", 2)[2]
    try:
        answer = await served.get(path.format(secret))
    finally:
        await served.gateway.aclose()
        await served.http.aclose()
    assert answer.status_code == status and secret not in answer.text, answer.text
    logged = capsys.readouterr()
    lines = [line for line in (logged.out + logged.err).splitlines() if path.format("")[:8] in line]
    assert lines and not [line for line in lines if secret in line], lines
    if status == 404 and path.startswith("/v1/models"):
        assert any(served.key.record.id in line and "[REDACTED]" in line for line in lines), lines


def answered(request: httpx.Request) -> httpx.Response:
    completion = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    return httpx.Response(200, json=completion)


def dropped_by(secret: str) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        "responses include": ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "include": [secret]}),
        "messages field": ("/v1/messages", {"model": "gpt-4o-mini", "max_tokens": 5, "messages": HI, f"x-{secret}": 1}),
    }


@pytest.mark.parametrize("how", ["responses include", "messages field"])
async def test_a_dropped_field_named_by_the_keys_secret_is_named_without_it(how: str) -> None:
    """`x-gateway-dropped-params` on a 200 named a field the translation left out as the client wrote it, its key's
    secret alone kept (a proxy's log of the answer's headers, beside the key's id, held the key), where the same name
    in a strict 400 is `[REDACTED]`. Found by review."""
    served = await serve(answered, {"gpt-4o-mini": {**MODELS["gpt-4o-mini"], "price": {"input": 1, "output": 2}}})
    secret = served.key.key.split("_", 2)[2]
    path, body = dropped_by(secret)[how]
    try:
        answer = await served.post(path, body)
    finally:
        await served.gateway.aclose()
        await served.http.aclose()
    assert answer.status_code == 200, answer.text
    dropped = answer.headers["x-gateway-dropped-params"]
    assert secret not in dropped and "[REDACTED]" in dropped, dropped
