"""The pieces of `GET /openapi.json`, an OpenAPI 3.1 description of the gateway's HTTP API, served without auth.

Each route's operation is written beside the route, in the route table (`handler/api/route_table.py`), from the
helpers here; `describe` assembles the document from that table, so a route cannot be served undescribed.
Request bodies come from the same pydantic models that parse them (`model_json_schema`), so the document
cannot drift from what the routes accept; error answers are described in the two shapes of the interface
reference (docs/interface.md): OpenAI's everywhere, Anthropic's on `/v1/messages`. The document holds
nothing about this deployment (no model names, no providers), so serving it unauthenticated reveals nothing.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import BaseModel

    from handler.api.route_table import RouteSpec

JSON = "application/json"
REF = "#/components/schemas/{model}"
CONVERTER = re.compile(r"\{(\w+):\w+\}")
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
# Statuses by what a route does: every authenticated route, routes that parse a body, proxied routes.
AUTH_ERRORS = {
    "400": "invalid_request",
    "401": "invalid_api_key, key_expired, key_revoked",
    "403": "model_not_allowed, ip_not_allowed, admin_only",
    "429": "rate_limit_exceeded (with retry-after)",
    "503": "store_unavailable, server_shutting_down",
}
# What a route that checks a key but parses nothing may answer (`/health` with a key, `/metrics`).
KEY_ERRORS = {status: AUTH_ERRORS[status] for status in ("401", "403", "503")}
BODY_ERRORS = {"413": "request_too_large"}
PROXY_ERRORS = {
    "402": "budget_exceeded (a key's budget, or the request's own x-gateway-max-cost-usd: `param` says which)",
    "404": "model_not_found",
    "502": "upstream_error (the provider's status and message inside), schema_violation",
    "503": "provider_not_configured, no_deployment_available, store_unavailable, server_shutting_down",
    "504": "upstream_timeout",
}
TEXT: dict[str, Any] = {"type": "string"}
FLAG: dict[str, Any] = {"type": "string", "enum": ["true", "false"]}
TAG_PAIR = "[A-Za-z0-9_.:/@+-]{1,128}=[A-Za-z0-9_.:/@+-]{1,128}"  # as `attribution.parse_tags` takes them
CONTROL_HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "x-gateway-fallbacks": ("comma-separated fallback models, or `none`", TEXT),
    "x-gateway-deadline-ms": (
        "deadline for the whole request, retries included (positive number)",
        {"type": "string", "pattern": "^[1-9][0-9]{0,8}(\\.[0-9]{1,3})?$"},
    ),
    "x-gateway-max-cost-usd": (
        "refuse when the worst-case cost exceeds this (non-negative number)",
        {"type": "string", "pattern": "^[0-9]{1,6}(\\.[0-9]{1,9})?$"},
    ),
    "x-gateway-provider": ("pin a provider instance", TEXT),
    "x-gateway-region": ("pin a region", TEXT),
    "x-gateway-strict": ("`true`: refuse parameters the provider cannot honour", FLAG),
    "x-gateway-enforce-schema": ("`true`: check the answer against `response_format`'s JSON schema", FLAG),
    "x-gateway-tags": (
        "attribution on the ledger line: up to 16 `name=value` pairs, separated by commas",
        {"type": "string", "pattern": f"^{TAG_PAIR}(,{TAG_PAIR}){{0,15}}$"},
    ),
}
ERROR_SCHEMAS: dict[str, Any] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": "string"},
                    "upstream_status": {"type": "integer"},
                    "upstream_type": {"type": "string"},
                },
            }
        },
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "KeyView": {
        "type": "object",
        "required": ["id", "name", "models", "admin", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
            "budget_usd": {"type": ["number", "null"]},
            "spent_usd": {
                "type": ["number", "null"],
                "description": "what the key and its descendants spent in `period`: its own budget's, else the "
                "current UTC month",
            },
            "period": {"type": ["string", "null"], "description": "total, day:YYYY-MM-DD or month:YYYY-MM"},
            "remaining_usd": {
                "type": ["number", "null"],
                "description": "what the key may still spend: the least any budget of its chain leaves",
            },
            "remaining_bound_by": {"type": ["string", "null"], "description": "the id of the key whose budget that is"},
            "expires_at": {"type": ["number", "null"]},
            "admin": {"type": "boolean"},
            "created_at": {"type": "number"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "home_region": {
                "type": ["string", "null"],
                "description": "the region holding the key's record and budget (null: one shared meter)",
            },
            "key": {"type": "string", "description": "the secret, shown once, on creation and rotation only"},
        },
    },
    "List": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
    },
}
# The models whose schemas the document holds: name → (module, mode). They are imported when the document is first
# built (`GET /openapi.json`), not with the route table: a process imports a front-end (the Messages API, the
# Responses API, the key routes, the dashboard) when a request first needs it, and a cold start pays for none.
MODELS: dict[str, tuple[str, Literal["validation", "serialization"]]] = {
    "ChatRequest": ("handler.schemas", "validation"),
    "EmbeddingsRequest": ("handler.schemas", "validation"),
    "MessagesRequest": ("handler.api.messages_api", "validation"),
    "MessagesCountRequest": ("handler.api.messages_api", "validation"),
    "ResponsesRequest": ("handler.api.responses_api", "validation"),
    "KeySpec": ("handler.api.key_routes", "validation"),
    "AdminKeySpec": ("handler.api.key_routes", "validation"),
    "RotateSpec": ("handler.api.key_routes", "validation"),
    "KeyUpdateSpec": ("handler.api.key_routes", "validation"),
    "SignIn": ("handler.dashboard.routes", "validation"),
    "ChatCompletion": ("handler.schemas", "serialization"),
    "EmbeddingsResponse": ("handler.schemas", "serialization"),
}


def ref(model: str) -> dict[str, str]:
    """A reference to one of `MODELS`' schemas, by the model's name."""
    if model not in MODELS:
        raise ValueError(f"{model} is not one of the document's models (handler.api.openapi.MODELS)")
    return {"$ref": REF.format(model=model)}


def schema_models() -> list[tuple[type[BaseModel], Literal["validation", "serialization"]]]:
    """`MODELS`' classes, imported."""
    return [(getattr(importlib.import_module(module), name), mode) for name, (module, mode) in MODELS.items()]


def json_answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An answer (or a request body) in JSON."""
    return {"description": description, "content": {JSON: {"schema": schema}}}


def text_answer(description: str, *media_types: str) -> dict[str, Any]:
    """An answer that is text in one of `media_types` (a page, a script, Prometheus' format)."""
    return {"description": description, "content": {media: {"schema": {"type": "string"}} for media in media_types}}


def stream_or(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A JSON answer, or an SSE stream when the request asked for one."""
    return {
        "description": description,
        "content": {JSON: {"schema": schema}, "text/event-stream": {"schema": {"type": "string"}}},
    }


def operation(
    ok: dict[str, Any],
    *,
    ok_status: str = "200",
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    errors: dict[str, str] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    error_schema: dict[str, Any] = OPENAI_ERROR,
    auth_errors: dict[str, str] = AUTH_ERRORS,
) -> dict[str, Any]:
    """An operation's answers, body and parameters; its summary and security come from its route."""
    statuses = {**auth_errors, **(BODY_ERRORS if body else {}), **(errors or {})}
    answers = {status: json_answer(error_schema, codes) for status, codes in statuses.items()}
    described: dict[str, Any] = {"responses": {ok_status: ok, **answers}}
    if body is not None:
        described["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    if parameters:
        described["parameters"] = parameters
    return described


def proxied(
    ok: dict[str, Any],
    body: dict[str, Any],
    *,
    errors: dict[str, str] | None = None,
    error_schema: dict[str, Any] = OPENAI_ERROR,
) -> dict[str, Any]:
    """The operation of a route that calls a provider: a body, the request controls and what a call may fail with."""
    return operation(
        ok, body=body, errors={**PROXY_ERRORS, **(errors or {})}, parameters=CONTROLS, error_schema=error_schema
    )


def query(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    """A query parameter taking a string."""
    schema = {"type": "string", "minLength": 1} if required else TEXT
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def limit_parameter(description: str) -> dict[str, Any]:
    """A listing's `limit` (`handler.dashboard.line_items.parse_limit`: 1 to 1,000)."""
    schema = {"type": "integer", "minimum": 1, "maximum": 1000}
    return {"name": "limit", "in": "query", "required": False, "description": description, "schema": schema}


def path_parameter(name: str) -> dict[str, Any]:
    """A `{name}` segment of a route's path."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


CONTROLS = [
    {"name": name, "in": "header", "required": False, "description": text, "schema": schema}
    for name, (text, schema) in CONTROL_HEADERS.items()
]
USAGE_PARAMETERS = [
    query(
        "since",
        "start: YYYY-MM-DD (or YYYYMMDD), an ISO 8601 time or epoch seconds; UTC unless the time carries an offset "
        "(default: 30 days ago)",
    ),
    query("until", "end, exclusive (default: now)"),
    query(
        "group_by",
        "comma-separated: key, model, day (UTC), user, session, tag:NAME; or request alone: the lines themselves, a "
        "row each with its request_id and cost_source, newest first, `limit` a page",
    ),
    query("tag", "only lines carrying every one of these tags: team=search,env=prod"),
    query("user", "only this end user's lines"),
    query("session", "only this agent session's lines"),
    query("request_id", "only the line of this request (its x-request-id)"),
    limit_parameter("group_by=request: lines a page (default 100)"),
    query("cursor", "group_by=request: the page after the one whose `next_cursor` this is (TS:REQUEST_ID)"),
    {"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"]}},
    {
        "name": "view",
        "in": "query",
        "required": False,
        "description": "another grouping of the same lines, as group_by (empty: one row in all), answered in `views`; "
        "JSON only",
        "schema": {"type": "array", "items": TEXT, "maxItems": 8},
        "style": "form",
        "explode": True,
    },
    {
        "name": "top",
        "in": "query",
        "required": False,
        "description": "each grouping keeps its N groups of most spend (over the window, its days summed), the rest "
        "summed in `other` rows whose groups but `day` are null (one a day, or one), `folded` counting them; and "
        "`tag_names` lists the names it groups or filters by and N others, `tag_names_folded` counting the rest; JSON "
        "only",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
]
KEY_VIEW = {"$ref": "#/components/schemas/KeyView"}
LISTING = {"$ref": "#/components/schemas/List"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
USAGE_OK = {
    "description": "cost line items, grouped",
    "content": {JSON: {"schema": ERROR_SCHEMAS["List"]}, "text/csv": {"schema": {"type": "string"}}},
}


def openapi_path(path: str) -> str:
    """A route's path as OpenAPI writes it: `{name}` for Starlette's `{name:path}` (a segment that may hold `/`)."""
    return CONVERTER.sub(r"{\1}", path)


def describe(routes: Iterable[RouteSpec]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`: each one's operation, summary and security, in table order."""
    from pydantic.json_schema import models_json_schema

    _, definitions = models_json_schema(schema_models(), ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        described = {"summary": route.summary, **route.operation(sys.modules[__name__])}
        if route.auth.security is not None:
            described["security"] = route.auth.security
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = described
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LLM edge gateway",
            "version": "1",
            "description": "One API key in front of many LLM providers; OpenAI- and Anthropic-compatible.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": {**definitions.get("$defs", {}), **ERROR_SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a gateway key, `gwk_...`"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }
