"""The buffered function's Mangum builds each invocation's scope once, and answers as Mangum does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mangum import Mangum
from mangum.handlers import alb, api_gateway
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from handler.entry.adapter import lambda_adapter
from handler.entry.priming import Context

EVENTS = Path(__file__).parents[4] / "events"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "body": body.decode(),
            "agent": request.headers.get("user-agent"),
        },
        headers={"x-one": "1", "x-two": "2"},
    )


APP = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


def v1_event() -> dict[str, Any]:
    return {
        "version": "1.0",
        "resource": "/{proxy+}",
        "path": "/v1/models",
        "httpMethod": "GET",
        "headers": {"user-agent": "curl/8", "host": "api.example.com"},
        "multiValueHeaders": {"user-agent": ["curl/8"], "host": ["api.example.com"]},
        "queryStringParameters": {"a": "1"},
        "multiValueQueryStringParameters": {"a": ["1"]},
        "requestContext": {"identity": {"sourceIp": "203.0.113.9"}},
        "body": None,
        "isBase64Encoded": False,
    }


def alb_event() -> dict[str, Any]:
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-central-1:1:targetgroup/gw/1"}},
        "httpMethod": "POST",
        "path": "/v1/chat/completions",
        "queryStringParameters": {},
        "headers": {"user-agent": "OpenAI/Python 1.0", "host": "gw.example.com", "content-type": "application/json"},
        "body": '{"model": "m"}',
        "isBase64Encoded": False,
    }


@pytest.fixture
def scopes_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Counts the scopes Mangum's handlers build (each reads the server from the headers once)."""
    built: list[str] = []
    for module in (api_gateway, alb):
        real = module.get_server_and_port

        def counting(headers: dict[str, Any], real: Any = real) -> Any:
            built.append("scope")
            return real(headers)

        monkeypatch.setattr(module, "get_server_and_port", counting)
    yield built


@pytest.mark.parametrize(
    "event",
    [json.loads((EVENTS / "chat-completions-ok.json").read_text()), v1_event(), alb_event()],
    ids=["http-api-2.0", "http-api-1.0", "alb"],
)
def test_each_invocation_builds_its_scope_once_and_answers_as_mangum_does(
    event: dict[str, Any], scopes_built: list[str]
) -> None:
    asyncio.set_event_loop(asyncio.new_event_loop())
    plain = Mangum(APP, lifespan="off")(event, Context())  # type: ignore[arg-type]
    assert len(scopes_built) == 2  # Mangum's own: once for the app, once more to shape the answer
    scopes_built.clear()
    ours = lambda_adapter(APP)(event, Context())  # type: ignore[arg-type]
    assert len(scopes_built) == 1
    assert ours == plain and ours["statusCode"] == 200
    assert json.loads(ours["body"])["agent"] in ("curl/8", "OpenAI/Python 1.0")
    asyncio.get_event_loop().close()
