"""The gateway's routes, declared once: path, method, handler, who may call it, its OpenAPI operation and
whether the direct lane serves it.

The Starlette routes (`starlette_routes`), the direct lane's table (`direct_lane`, the proxied POSTs that skip
Starlette's router, see `handler.api.app.GatewayApp`) and `GET /openapi.json` (`openapi_document`) are all read
from `ROUTES`; `tests/unit/handler/api/test_route_table.py` checks that the three agree and that each route's
handler checks the auth its row states. To add a route: add its row here, and a line to the interface
reference's table of endpoints (docs/interface.md; `tests/unit/test_docs.py` checks it lists every row).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Final

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from handler.records import Value

if TYPE_CHECKING:
    from types import ModuleType

    from handler.api.app import Api
    from handler.api.info_routes import InfoRoutes
    from handler.api.key_routes import KeyRoutes
    from handler.api.messages_routes import MessagesRoutes
    from handler.api.reasoning_seal import Seals
    from handler.api.responses_routes import ResponsesRoutes
    from handler.dashboard.routes import Dashboard

Handler = Callable[[Request], Awaitable[Response]]


Security = list[dict[str, list[str]]]  # an OpenAPI operation's `security`


class Auth:
    """Who may call a route (one of the five below, each its own: compared by identity, as an enum's members). The
    route's handler checks it; the OpenAPI document states it (`security`: the operation's, None for the document's
    default, a bearer key). A plain class: as a `StrEnum`, it cost every Lambda cold start 0.7 million instructions
    to make (callgrind)."""

    __slots__ = ("name", "security")

    PUBLIC: ClassVar[Auth]
    OPTIONAL_KEY: ClassVar[Auth]
    KEY: ClassVar[Auth]
    KEY_OR_X_API_KEY: ClassVar[Auth]
    ADMIN: ClassVar[Auth]

    def __init__(self, name: str, security: Security | None = None) -> None:
        self.name: Final = name
        self.security: Final = security

    def __str__(self) -> str:
        return self.name


Auth.PUBLIC = Auth("public", [])
Auth.OPTIONAL_KEY = Auth("public; a key adds to the answer", [{}, {"bearer": []}])
Auth.KEY = Auth("key")  # `Authorization: Bearer gwk_...`
Auth.KEY_OR_X_API_KEY = Auth("key, or x-api-key", [{"bearer": []}, {"x-api-key": []}])  # as Anthropic's SDK sends it
Auth.ADMIN = Auth("admin key")


# The modules `Endpoints` imports on first use.
FRONT_ENDS = (
    "handler.api.info_routes",
    "handler.api.key_routes",
    "handler.api.messages_routes",
    "handler.api.responses_routes",
    "handler.dashboard.routes",
)


def import_front_ends() -> None:
    """Import every front-end `Endpoints` leaves to first use: where no request should wait for one (a server's
    start-up, the state a SnapStart snapshot captures)."""
    for module in FRONT_ENDS:
        importlib.import_module(module)


class Endpoints:
    """The objects whose methods answer the routes, one set per app (`handler.api.app.create_app`). Each but the
    `Api` is built, and its module imported, when a route first needs it: a process imports only the front-ends
    its requests use (a Lambda serving Chat Completions never imports the Messages or Responses API, the read
    routes, the key routes or the dashboard)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    @cached_property
    def info(self) -> InfoRoutes:
        from handler.api.info_routes import InfoRoutes

        return InfoRoutes(self.api)

    @cached_property
    def keys(self) -> KeyRoutes:
        from handler.api.key_routes import KeyRoutes

        return KeyRoutes(self.api)

    @cached_property
    def messages(self) -> MessagesRoutes:
        from handler.api.messages_routes import MessagesRoutes

        return MessagesRoutes(self.api, self.seals)

    @cached_property
    def responses(self) -> ResponsesRoutes:
        from handler.api.responses_routes import ResponsesRoutes

        return ResponsesRoutes(self.api, self.seals)

    @cached_property
    def seals(self) -> Seals:
        """The gateway's seal, which the routes that seal share (`handler.api.reasoning_seal`)."""
        from handler.api.reasoning_seal import Seals

        gateway = self.api.gateway
        return Seals(gateway.responses_secret, gateway.store)

    @cached_property
    def dashboard(self) -> Dashboard:
        from handler.dashboard.routes import Dashboard
        from handler.pipeline.key_admin import KeyAdmin

        gateway = self.api.gateway
        return Dashboard(self.api.parse, self.api.client_ip, gateway.store, KeyAdmin(gateway.keys))


class RouteSpec(Value):
    """One row of the route table."""

    __slots__ = ("path", "method", "endpoint", "auth", "summary", "operation", "direct", "counted")

    def __init__(
        self,
        path: str,
        method: str,
        endpoint: Callable[[Endpoints], Handler],
        auth: Auth,
        summary: str,
        operation: Callable[[ModuleType], dict[str, Any]],
        direct: bool = False,
        counted: bool | None = None,
    ) -> None:
        self.path: Final = path
        self.method: Final = method
        self.endpoint: Final = endpoint
        self.auth: Final = auth
        self.summary: Final = summary
        # The OpenAPI operation's answers, body and parameters (`handler.api.openapi.operation`), made from the
        # `handler.api.openapi` module it is given when `/openapi.json` is first asked for: a cold start that serves
        # requests never imports it (about 1.9 million instructions).
        self.operation: Final = operation
        self.direct: Final = direct  # served by the direct lane: a proxied POST, past Starlette's router (POSTs only)
        # A request to a model (the proxied routes, and token counting): in the request metrics, a failure before
        # its model was known as well; the key, admin and usage routes are not (their successes are not either).
        self.counted: Final = direct if counted is None else counted


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of `ROUTES`, built once per process (`handler.api.openapi` is imported then: a
    Lambda cold start that never describes the API does not build the helpers the operations are written with)."""
    from handler.api.openapi import describe

    return describe(ROUTES)


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`."""
    return Response(orjson.dumps(openapi_document()), media_type="application/json")


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "/health",
        "GET",
        lambda e: e.info.health,
        Auth.OPTIONAL_KEY,
        "Liveness; no auth. With an admin key, also `pending_settlements`: settlements the store refused, "
        "waiting in the spool to land",
        lambda o: o.operation(o.json_answer(o.ANY_OBJECT, "the gateway is up"), auth_errors=o.KEY_ERRORS),
    ),
    RouteSpec(
        "/metrics",
        "GET",
        lambda e: e.info.metrics,
        Auth.ADMIN,
        "Request metrics in Prometheus' text format (admin key)",
        lambda o: o.operation(
            o.text_answer("counters and histograms by model, provider and region", "text/plain"),
            auth_errors=o.KEY_ERRORS,
        ),
    ),
    RouteSpec(
        "/openapi.json",
        "GET",
        lambda e: openapi_json,
        Auth.PUBLIC,
        "This document; no auth",
        lambda o: o.operation(o.json_answer(o.ANY_OBJECT, "the OpenAPI document"), auth_errors={}),
    ),
    RouteSpec(
        "/v1/models",
        "GET",
        lambda e: e.info.models,
        Auth.KEY,
        "The models this key may use (Anthropic's list shape when the request carries `anthropic-version`)",
        lambda o: o.operation(o.json_answer(o.LISTING, "the models")),
    ),
    RouteSpec(
        "/v1/models/{model_id:path}",
        "GET",
        lambda e: e.info.model,
        Auth.KEY,
        "A model this key may use (Anthropic's shape when the request carries `anthropic-version`)",
        lambda o: o.operation(
            o.json_answer(o.ANY_OBJECT, "the model"),
            errors={"404": "model_not_found (unknown, or not this key's)"},
            parameters=[o.path_parameter("model_id")],
        ),
    ),
    RouteSpec(
        "/v1/route",
        "GET",
        lambda e: e.info.route,
        Auth.KEY,
        "The deployments a request for `model` would try, in order",
        lambda o: o.operation(
            o.json_answer(o.ANY_OBJECT, "the plan"),
            errors={"404": "model_not_found", "503": "no_deployment_available"},
            parameters=[o.query("model", "a public model name", required=True), *o.CONTROLS],
        ),
    ),
    RouteSpec(
        "/v1/chat/completions",
        "POST",
        lambda e: e.api.chat_completions,
        Auth.KEY,
        "OpenAI Chat Completions, stream and not",
        lambda o: o.proxied(
            o.stream_or(o.ref("ChatCompletion"), "a completion, or an SSE stream ending in `data: [DONE]`"),
            o.ref("ChatRequest"),
        ),
        direct=True,
    ),
    RouteSpec(
        "/v1/embeddings",
        "POST",
        lambda e: e.api.embeddings,
        Auth.KEY,
        "OpenAI embeddings",
        lambda o: o.proxied(o.json_answer(o.ref("EmbeddingsResponse"), "the embeddings"), o.ref("EmbeddingsRequest")),
        direct=True,
    ),
    RouteSpec(
        "/v1/messages",
        "POST",
        lambda e: e.messages.messages,
        Auth.KEY_OR_X_API_KEY,
        "Anthropic Messages API, stream and not, to any model",
        lambda o: o.proxied(
            o.stream_or(o.ANY_OBJECT, "an Anthropic message, or its SSE event sequence"),
            o.ref("MessagesRequest"),
            errors={"404": "model_not_found, thread_not_found (thread.previous_message_id)"},
            error_schema=o.ANTHROPIC_ERROR,
        ),
        direct=True,
    ),
    RouteSpec(
        "/v1/messages/count_tokens",
        "POST",
        lambda e: e.messages.count_tokens,
        Auth.KEY_OR_X_API_KEY,
        "Anthropic token counting, to any model: the provider's own count (Anthropic, Gemini) or an estimate "
        "marked `x-gateway-estimate: true`; a fallback's count says whose (`counted_by`); free, not metered",
        lambda o: o.proxied(
            o.json_answer(
                {"type": "object", "required": ["input_tokens"]},
                "`{input_tokens}`, with `estimate: true` or `counted_by` (a fallback's count) where they apply",
            ),
            o.ref("MessagesCountRequest"),
            errors={"404": "model_not_found, thread_not_found (thread.previous_message_id)"},
            error_schema=o.ANTHROPIC_ERROR,
        ),
        counted=True,
    ),
    RouteSpec(
        "/v1/responses",
        "POST",
        lambda e: e.responses.create,
        Auth.KEY,
        "OpenAI Responses API, stream and not, to any model",
        lambda o: o.proxied(
            o.stream_or(o.ANY_OBJECT, "a `response` object, or its SSE event sequence"),
            o.ref("ResponsesRequest"),
            errors={
                "400": "invalid_request, previous_response_not_found (previous_response_id)",
                "404": "model_not_found",
            },
        ),
        direct=True,
    ),
    RouteSpec(
        "/v1/responses/{response_id}",
        "GET",
        lambda e: e.responses.get,
        Auth.KEY,
        "A stored response (made by this key or one of its descendants)",
        lambda o: o.operation(
            o.json_answer(o.ANY_OBJECT, "the response"),
            errors={"404": "not_found"},
            parameters=[o.path_parameter("response_id")],
        ),
    ),
    RouteSpec(
        "/v1/responses/{response_id}",
        "DELETE",
        lambda e: e.responses.delete,
        Auth.KEY,
        "Delete a stored response",
        lambda o: o.operation(
            o.json_answer(o.ANY_OBJECT, "`{id, object: response, deleted: true}`"),
            errors={"404": "not_found"},
            parameters=[o.path_parameter("response_id")],
        ),
    ),
    RouteSpec(
        "/v1/responses/{response_id}/input_items",
        "GET",
        lambda e: e.responses.input_items,
        Auth.KEY,
        "A stored response's input items",
        lambda o: o.operation(
            o.json_answer(o.LISTING, "the items"),
            errors={"400": "invalid_request", "404": "not_found"},
            parameters=[
                o.path_parameter("response_id"),
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "description": "items per page",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                },
                {
                    "name": "order",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": ["asc", "desc"], "default": "desc"},
                },
                o.query("after", "the id of the item the page follows (the last item of the page before)"),
            ],
        ),
    ),
    RouteSpec(
        "/v1/key",
        "GET",
        lambda e: e.keys.whoami,
        Auth.KEY_OR_X_API_KEY,
        "This key: scopes, budget, spent, remaining, expiry",
        lambda o: o.operation(o.json_answer(o.KEY_VIEW, "the key")),
    ),
    RouteSpec(
        "/v1/keys",
        "POST",
        lambda e: e.keys.mint_child,
        Auth.KEY,
        "Mint a child key: narrower models, budget within the remaining, expiry within this key's",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the child key, with its secret (shown once)"),
            ok_status="201",
            body=o.ref("KeySpec"),
        ),
    ),
    RouteSpec(
        "/v1/usage",
        "GET",
        lambda e: e.keys.usage,
        Auth.KEY_OR_X_API_KEY,
        "This key's cost line items",
        lambda o: o.operation(o.USAGE_OK, parameters=o.USAGE_PARAMETERS),
    ),
    RouteSpec(
        "/admin/usage",
        "GET",
        lambda e: e.keys.admin_usage,
        Auth.ADMIN,
        "Every key's cost line items (admin key only)",
        lambda o: o.operation(
            o.USAGE_OK,
            parameters=[*o.USAGE_PARAMETERS, o.query("key", "one key id (its family included)")],
            errors={"404": "not_found (a key id the store never had, with no usage in the window)"},
        ),
    ),
    RouteSpec(
        "/admin/keys",
        "GET",
        lambda e: e.keys.admin_list,
        Auth.ADMIN,
        "List keys (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.LISTING, "a page of the keys, with `limit`, `has_more` and `next_cursor`"),
            parameters=[
                o.query("parent_id", "only the children of this key"),
                o.limit_parameter("keys a page (default 100; a page ends early past 4 MB)"),
                o.query("cursor", "the page after the one whose `next_cursor` this is"),
            ],
        ),
    ),
    RouteSpec(
        "/admin/keys",
        "POST",
        lambda e: e.keys.admin_create,
        Auth.ADMIN,
        "Create a key (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the key, with its secret (shown once)"),
            ok_status="201",
            body=o.ref("AdminKeySpec"),
        ),
    ),
    RouteSpec(
        "/admin/keys/{key_id}",
        "GET",
        lambda e: e.keys.admin_show,
        Auth.ADMIN,
        "Show a key (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the key"), errors={"404": "not_found"}, parameters=[o.path_parameter("key_id")]
        ),
    ),
    RouteSpec(
        "/admin/keys/{key_id}",
        "PATCH",
        lambda e: e.keys.admin_update,
        Auth.ADMIN,
        "Replace a key's default attribution tags (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the key"),
            body=o.ref("KeyUpdateSpec"),
            errors={"404": "not_found", "409": "key_changed"},
            parameters=[o.path_parameter("key_id")],
        ),
    ),
    RouteSpec(
        "/admin/keys/{key_id}/rotate",
        "POST",
        lambda e: e.keys.admin_rotate,
        Auth.ADMIN,
        "A new secret for a key; the old one works for `grace_seconds` (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the key, with its new secret (shown once)"),
            body=o.ref("RotateSpec"),
            body_required=False,
            errors={"404": "not_found", "409": "key_changed"},
            parameters=[o.path_parameter("key_id")],
        ),
    ),
    RouteSpec(
        "/admin/keys/{key_id}/revoke",
        "POST",
        lambda e: e.keys.admin_revoke,
        Auth.ADMIN,
        "Revoke a key and, through it, its children (admin key only)",
        lambda o: o.operation(
            o.json_answer(o.KEY_VIEW, "the revoked key"),
            errors={"404": "not_found", "409": "key_changed"},
            parameters=[o.path_parameter("key_id")],
        ),
    ),
    RouteSpec(
        "/dashboard",
        "GET",
        lambda e: e.dashboard.index,
        Auth.PUBLIC,
        "The spend dashboard's page: static, it holds no data; its figures come from the admin routes, "
        "called with the admin key typed into it",
        lambda o: o.operation(o.text_answer("the page", "text/html"), auth_errors={}),
    ),
    RouteSpec(
        "/dashboard/sign-in",
        "POST",
        lambda e: e.dashboard.sign_in,
        Auth.PUBLIC,
        "Trade a one-time sign-in token from `gateway dashboard` for a dashboard session (a short-lived admin key)",
        lambda o: o.operation(
            o.json_answer(o.ANY_OBJECT, "the session: `key`, `key_id`, `expires_at`, `signed_in_as`"),
            body=o.ref("SignIn"),
            errors={
                "401": "sign_in_link_expired (used already or expired), key_revoked",
                "429": "rate_limit_exceeded (10 failed sign-ins from the address within a minute)",
            },
            auth_errors={"400": "invalid_request", "503": "store_unavailable"},
        ),
    ),
    RouteSpec(
        "/dashboard/static/{name}",
        "GET",
        lambda e: e.dashboard.asset,
        Auth.PUBLIC,
        "The dashboard's script, style sheet and icon",
        lambda o: asset_operation(o),
    ),
)
# The POSTs counted in the request metrics (`RouteSpec.counted`), by path.
COUNTED_PATHS = frozenset(spec.path for spec in ROUTES if spec.counted and spec.method == "POST")


def asset_operation(o: ModuleType) -> dict[str, Any]:
    """The OpenAPI operation of the dashboard's files, which it names: the dashboard's package is imported with the
    document, not at every cold start (about 0.2 million instructions, two modules)."""
    from handler.dashboard.assets import ASSETS

    return o.operation(  # type: ignore[no-any-return]
        o.text_answer("the asset", *sorted({media.split(";")[0] for media in ASSETS.values()})),
        errors={"404": "not_found"},
        parameters=[{**o.path_parameter("name"), "schema": {"enum": sorted(ASSETS)}}],
        auth_errors={},
    )


def handlers(endpoints: Endpoints) -> dict[tuple[str, str], Handler]:
    """(method, path) → each row's handler. A row whose endpoint object is built already (the `Api`'s) gets its
    bound method; the others a function that binds it on the first request (see `Endpoints`)."""
    built = vars(endpoints)  # the `Api` and every object a cached property has built so far
    return {
        (spec.method, spec.path): (
            spec.endpoint(endpoints) if binds_to(spec) in (None, *built) else bind_on_first_call(spec, endpoints)
        )
        for spec in ROUTES
    }


class _Names:
    """Records the attribute names read from it (see `binds_to`)."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def __getattr__(self, name: str) -> _Names:
        self.read.append(name)
        return self


def binds_to(spec: RouteSpec) -> str | None:
    """The `Endpoints` attribute whose object answers `spec` (`lambda e: e.keys.whoami`: "keys"), read without
    building it; None for a plain function."""
    names = _Names()
    spec.endpoint(names)  # type: ignore[arg-type]
    return names.read[0] if names.read else None


def bind_on_first_call(spec: RouteSpec, endpoints: Endpoints) -> Handler:
    bound: list[Handler] = []

    async def handler(request: Request) -> Response:
        if not bound:
            bound.append(spec.endpoint(endpoints))
        return await bound[0](request)

    return handler


class TableRoute(Route):
    """A row as a Starlette route, whose 405 names every method its path takes (`allow`). Starlette's own named
    only the methods of the first row of the path: `DELETE /admin/keys` answered `allow: HEAD, GET`, though the
    path takes POST too."""

    def __init__(self, path: str, endpoint: Handler, method: str, allow: str) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.allow = allow

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            raise HTTPException(status_code=405, headers={"Allow": self.allow})
        await self.app(scope, receive, send)


def allowed_methods() -> dict[str, str]:
    """Path → the `Allow` header of a 405 on it: every method its rows take, HEAD with GET (Starlette answers it)."""
    methods: dict[str, set[str]] = {}
    for spec in ROUTES:
        methods.setdefault(spec.path, set()).update([spec.method, "HEAD"] if spec.method == "GET" else [spec.method])
    return {path: ", ".join(sorted(taken)) for path, taken in methods.items()}


def starlette_routes(table: dict[tuple[str, str], Handler]) -> list[Route]:
    """Every row as a Starlette route (the direct lane's too: they answer other methods with a 405 there)."""
    allow = allowed_methods()
    return [TableRoute(spec.path, table[spec.method, spec.path], spec.method, allow[spec.path]) for spec in ROUTES]


def direct_lane(table: dict[tuple[str, str], Handler]) -> dict[str, Handler]:
    """The direct lane's table: a POST's path to its handler, for the rows the direct lane serves."""
    lane = {}
    for spec in ROUTES:
        if spec.direct:
            if spec.method != "POST":
                raise ValueError(f"{spec.method} {spec.path}: the direct lane serves POSTs only")
            lane[spec.path] = table[spec.method, spec.path]
    return lane
