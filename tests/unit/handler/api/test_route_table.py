"""The route table drives the routes, the direct lane and `/openapi.json`: the three agree, and each route's
handler checks the auth its row states."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from handler.api import route_table
from handler.api.app import GatewayApp, create_app
from handler.api.openapi import openapi_path
from handler.api.route_table import ROUTES, Auth, RouteSpec, openapi_document
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.ports import KeyRecord
from tests.support.dynamo import DynamoServer

ROWS = {(spec.method, spec.path): spec for spec in ROUTES}


@pytest.fixture(scope="module")
def app() -> Iterator[GatewayApp]:
    gateway = build_gateway(store_url="sqlite://", environ={})
    yield create_app(gateway)
    asyncio.run(gateway.store.close())  # (tests/unit/handler/conftest.py closes those of a single test)


@pytest.fixture(scope="module")
def keys(app: GatewayApp) -> Iterator[tuple[TestClient, str, str, str]]:
    """A client of the app, an admin key, a plain key, and the previous secret of another admin key, rotated with
    the default grace (an hour)."""
    gateway = app.state.gateway
    with TestClient(app) as client:
        admin, rotated = (
            client.portal.call(
                KeyAdmin(gateway.keys).mint, KeyRecord(id="", name=name, secret_hash="", created_at=0, admin=True)
            )
            for name in ("a", "r")
        )
        plain = client.post("/admin/keys", json={"name": "p"}, headers={"authorization": f"Bearer {admin.key}"})
        assert plain.status_code == 201
        rotation = client.post(
            f"/admin/keys/{rotated.record.id}/rotate", json={}, headers={"authorization": f"Bearer {admin.key}"}
        )
        assert rotation.status_code == 200
        yield client, admin.key, plain.json()["key"], rotated.key


def served(app: GatewayApp) -> dict[tuple[str, str], Any]:
    """(method, path) → endpoint, for every route Starlette serves (HEAD comes with GET)."""
    routes = [route for route in app.starlette.routes if isinstance(route, Route)]
    assert len(routes) == len(app.starlette.routes), "every route is a plain Route"
    return {
        (method, route.path): route.endpoint for route in routes for method in route.methods or () if method != "HEAD"
    }


def test_the_table_has_one_row_per_method_and_path() -> None:
    assert len(ROWS) == len(ROUTES)


def test_starlette_serves_exactly_the_table(app: GatewayApp) -> None:
    assert set(served(app)) == set(ROWS)


def test_the_openapi_document_describes_exactly_the_table(app: GatewayApp) -> None:
    paths = openapi_document()["paths"]
    described = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert set(ROWS) == set(served(app))
    assert described == {(method, openapi_path(path)) for method, path in ROWS}
    for (method, path), spec in ROWS.items():
        operation = paths[openapi_path(path)][method.lower()]
        assert operation["summary"] == spec.summary
        assert operation.get("security") == spec.auth.security
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == {segment[1:-1] for segment in openapi_path(path).split("/") if segment.startswith("{")}


def test_the_direct_lane_serves_exactly_the_tables_direct_posts(app: GatewayApp) -> None:
    direct = {spec.path for spec in ROUTES if spec.direct}
    assert set(app.direct) == direct
    assert direct >= {"/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses"}
    routes = served(app)
    for path, handler in app.direct.items():
        assert handler == routes[("POST", path)], path  # the same bound method as the router's


def test_a_direct_row_must_be_a_post(monkeypatch: pytest.MonkeyPatch) -> None:
    row = RouteSpec("/v1/x", "GET", lambda e: e.info.health, Auth.KEY, "x", {}, direct=True)
    monkeypatch.setattr(route_table, "ROUTES", (row,))
    with pytest.raises(ValueError, match="GET /v1/x: the direct lane serves POSTs only"):
        route_table.direct_lane({})


def concrete(path: str) -> str:
    return "/".join("unknown" if segment.startswith("{") else segment for segment in path.split("/"))


@pytest.mark.parametrize(("method", "path"), sorted(ROWS), ids=[f"{m} {p}" for m, p in sorted(ROWS)])
def test_each_route_checks_the_auth_its_row_states(
    method: str, path: str, keys: tuple[TestClient, str, str, str]
) -> None:
    """Each route's auth as its row states it; and an admin key's rotated-out secret, which serves the key's requests
    through its grace, on no route that uses the key's admin powers or mints a key under it (it rotated its key away
    from the operator's new secret, and created an admin key of its own: found by review)."""
    client, admin, plain, rotated_out = keys
    auth = ROWS[(method, path)].auth

    def status(headers: dict[str, str]) -> tuple[int, str | None]:
        answer = client.request(method, concrete(path), headers={"content-type": "application/json", **headers})
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        error = body.get("error") if isinstance(body, dict) else None
        return answer.status_code, error.get("code") if isinstance(error, dict) else None

    needs_key = auth in (Auth.KEY, Auth.KEY_OR_X_API_KEY, Auth.ADMIN)
    assert (status({})[0] == 401) is needs_key
    as_plain = status({"authorization": f"Bearer {plain}"})
    assert (as_plain == (403, "admin_only")) is (auth is Auth.ADMIN), as_plain
    assert as_plain[0] != 401
    if needs_key:
        assert status({"authorization": f"Bearer {admin}"})[0] not in (401, 403)
        assert (status({"x-api-key": plain})[0] == 401) is (auth is not Auth.KEY_OR_X_API_KEY)
        as_rotated_out = status({"authorization": f"Bearer {rotated_out}"})
        administers = auth is Auth.ADMIN or (method, path) == ("POST", "/v1/keys")
        assert (as_rotated_out == (403, "admin_only")) is administers, as_rotated_out
        assert as_rotated_out[0] != 401


@pytest.fixture(params=["sqlite", "dynamodb"])
def any_app(request: pytest.FixtureRequest) -> GatewayApp:
    """The app on each store (a 405 is answered before the store is read: the same on both)."""
    if request.param == "sqlite":
        return create_app(build_gateway(store_url="sqlite://", environ={}))
    server: DynamoServer = request.getfixturevalue("dynamo")
    return create_app(build_gateway(store_url=server.store_url(server.create_table()), environ={}))


def test_a_405_names_every_method_its_path_takes(any_app: GatewayApp) -> None:
    """Starlette's 405 named only the methods of the path's first row: `DELETE /admin/keys` answered
    `allow: HEAD, GET` though it takes POST, and `PUT /admin/keys/{id}` left PATCH out."""
    taken: dict[str, set[str]] = {}
    for method, path in ROWS:
        taken.setdefault(path, set()).update({method, "HEAD"} if method == "GET" else {method})
    with TestClient(any_app) as client:
        for path, methods in sorted(taken.items()):
            for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - methods):
                answer = client.request(method, concrete(path))
                assert answer.status_code == 405, (method, path, answer.status_code)
                assert set(answer.headers["allow"].split(", ")) == methods, (method, path, answer.headers["allow"])
                error = answer.json()["error"]  # Anthropic's shape on /v1/messages
                assert error.get("code", error["type"]) in ("method_not_allowed", "invalid_request_error")
    assert taken["/admin/keys"] == {"GET", "HEAD", "POST"}
    assert taken["/admin/keys/{key_id}"] == {"GET", "HEAD", "PATCH"}


def test_the_documented_tags_header_is_the_one_the_app_parses() -> None:
    from handler.api.openapi import CONTROL_HEADERS, TAG_PAIR
    from handler.pipeline.attribution import MAX_TAGS, TAG, parse_tags

    assert TAG_PAIR == f"{TAG}={TAG}"
    pattern = CONTROL_HEADERS["x-gateway-tags"][1]["pattern"]
    assert f"{{0,{MAX_TAGS - 1}}}" in pattern
    most = ",".join(f"t{n}=v" for n in range(MAX_TAGS))
    assert re.fullmatch(pattern, most) and len(parse_tags(most)) == MAX_TAGS
    assert not re.fullmatch(pattern, most + ",one=more")


def test_a_front_end_is_built_on_its_first_request_and_bound_once() -> None:
    from starlette.requests import Request

    from handler.api.app import Api
    from handler.api.route_table import Endpoints, handlers
    from handler.errors import AuthenticationError

    endpoints = Endpoints(Api(build_gateway(store_url="sqlite://", environ={})))
    table = handlers(endpoints)
    assert table["POST", "/v1/chat/completions"] == endpoints.api.chat_completions  # built already: bound at once
    assert not {"keys", "messages", "responses", "dashboard"} & set(vars(endpoints))  # the others: not yet
    messages = table["POST", "/v1/messages"]
    headers = [(b"x-api-key", b"gwk_unknown0key_secret"), (b"content-type", b"application/json")]
    scope = {"type": "http", "method": "POST", "path": "/v1/messages", "headers": headers, "state": {}}
    for _ in range(2):
        with pytest.raises(AuthenticationError):  # the Messages front-end's own check (it takes x-api-key)
            asyncio.run(messages(Request(scope)))
    # Built on its first request, and only it (with the seal it shares with the Responses routes, its key unread).
    assert set(vars(endpoints)) == {"api", "messages", "seals"}


def test_the_router_is_built_on_the_first_request_off_the_direct_lane() -> None:
    app = create_app(build_gateway(store_url="sqlite://", environ={}))
    client = TestClient(app)  # outside a `with`: no lifespan, as on Lambda
    chat = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert chat.status_code == 401 and chat.headers["x-request-id"]
    assert app._starlette is None  # the direct lane answered: no route pattern compiled
    health = client.get("/health")
    assert health.status_code == 200 and health.headers["x-request-id"]
    assert app._starlette is not None and app.starlette.state is app.state  # one state, set before and after
    assert app.starlette.state.gateway is app.state.gateway
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"


def test_openapi_names_previous_response_not_found_as_a_400() -> None:
    """A `previous_response_id` that cannot be continued is OpenAI's 400 `previous_response_not_found`, as the
    document says now (it said a 404 `not_found`). Found by review (mergerev36c)."""
    answers = openapi_document()["paths"]["/v1/responses"]["post"]["responses"]
    said = {status: str(answer) for status, answer in answers.items()}
    assert "previous_response_id" not in said.get("404", ""), said.get("404")
    assert "previous_response_not_found" in said.get("400", ""), said.get("400")


def test_post_responses_400_still_names_invalid_request() -> None:
    """Its 400 `previous_response_not_found` named beside the `invalid_request` every authenticated route answers
    (it had replaced it). Found by review (mergerev36d)."""
    said = openapi_document()["paths"]["/v1/responses"]["post"]["responses"]["400"]["description"]
    assert "previous_response_not_found" in said, said
    assert "invalid_request" in said, f"POST /v1/responses' 400 no longer names invalid_request: {said!r}"
