"""`GET /openapi.json`: an OpenAPI 3.1 description of the gateway's HTTP API, served without auth.

Request bodies come from the same pydantic models that parse them (`model_json_schema`), so the
document cannot drift from what the routes accept; error answers are described in the two shapes of
`INTERFACE.md` (OpenAI's everywhere, Anthropic's on `/v1/messages`). The document holds nothing
about this deployment (no model names, no providers), so serving it unauthenticated reveals nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from handler.dashboard import SignIn
from handler.key_routes import AdminKeySpec, KeySpec, KeyUpdateSpec, RotateSpec
from handler.messages_api import MessagesCountRequest, MessagesRequest
from handler.responses_api import ResponsesRequest
from handler.schemas import ChatCompletion, ChatRequest, EmbeddingsRequest, EmbeddingsResponse

JSON = "application/json"
REF = "#/components/schemas/{model}"
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIError"}
ANTHROPIC_ERROR = {"$ref": "#/components/schemas/AnthropicError"}
# Statuses by what a route does: every authenticated route, routes that parse a body, proxied routes.
AUTH_ERRORS = {
    "400": "invalid_request",
    "401": "invalid_api_key, key_expired, key_revoked",
    "403": "model_not_allowed, ip_not_allowed, admin_only",
    "429": "rate_limit_exceeded (with retry-after)",
    "503": "store_unavailable",
}
BODY_ERRORS = {"413": "request_too_large"}
PROXY_ERRORS = {
    "402": "budget_exceeded, cost_limit_exceeded",
    "404": "model_not_found",
    "502": "upstream_error (the provider's status and message inside), schema_violation",
    "503": "provider_not_configured, no_deployment_available, store_unavailable",
    "504": "upstream_timeout",
}
TEXT: dict[str, Any] = {"type": "string"}
FLAG: dict[str, Any] = {"type": "string", "enum": ["true", "false"]}
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
            "expires_at": {"type": ["number", "null"]},
            "admin": {"type": "boolean"},
            "created_at": {"type": "number"},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "key": {"type": "string", "description": "the secret, shown once, on creation and rotation only"},
        },
    },
    "List": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array"}},
    },
}
MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ChatRequest, "validation"),
    (EmbeddingsRequest, "validation"),
    (MessagesRequest, "validation"),
    (MessagesCountRequest, "validation"),
    (ResponsesRequest, "validation"),
    (KeySpec, "validation"),
    (AdminKeySpec, "validation"),
    (RotateSpec, "validation"),
    (KeyUpdateSpec, "validation"),
    (SignIn, "validation"),
    (ChatCompletion, "serialization"),
    (EmbeddingsResponse, "serialization"),
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(statuses: dict[str, str], schema: dict[str, Any]) -> dict[str, Any]:
    return {status: _json(schema, codes) for status, codes in statuses.items()}


def _operation(
    summary: str,
    ok: dict[str, Any],
    *,
    ok_status: str = "200",
    body: dict[str, Any] | None = None,
    body_required: bool = True,
    errors: dict[str, str] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    error_schema: dict[str, Any] = OPENAI_ERROR,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    statuses = {**AUTH_ERRORS, **(BODY_ERRORS if body else {}), **(errors or {})}
    operation: dict[str, Any] = {"summary": summary, "responses": {ok_status: ok, **_errors(statuses, error_schema)}}
    if body is not None:
        operation["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    if parameters:
        operation["parameters"] = parameters
    if security is not None:
        operation["security"] = security
    return operation


def _query(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    schema = {"type": "string", "minLength": 1} if required else TEXT
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _controls() -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "header", "required": False, "description": text, "schema": schema}
        for name, (text, schema) in CONTROL_HEADERS.items()
    ]


USAGE_PARAMETERS = [
    _query("since", "start: YYYY-MM-DD, an ISO 8601 time or epoch seconds (default: 30 days ago)"),
    _query("until", "end, exclusive (default: now)"),
    _query("group_by", "comma-separated: key, model, day, user, session, tag:NAME"),
    _query("tag", "only lines carrying every one of these tags: team=search,env=prod"),
    _query("user", "only this end user's lines"),
    _query("session", "only this agent session's lines"),
    {"name": "format", "in": "query", "required": False, "schema": {"enum": ["json", "csv"]}},
]
KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
RESPONSE_ID = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
BEARER_OR_X_API_KEY: list[dict[str, list[str]]] = [{"bearer": []}, {"x-api-key": []}]


def _usage_ok() -> dict[str, Any]:
    return {
        "description": "cost line items, grouped",
        "content": {JSON: {"schema": ERROR_SCHEMAS["List"]}, "text/csv": {"schema": {"type": "string"}}},
    }


def _stream_or(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": schema}, "text/event-stream": {"schema": {"type": "string"}}},
    }


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once per process."""
    _, definitions = models_json_schema(MODELS, ref_template=REF)
    schemas = {**definitions.get("$defs", {}), **ERROR_SCHEMAS}
    key_view = {"$ref": "#/components/schemas/KeyView"}
    listing = {"$ref": "#/components/schemas/List"}
    any_object = {"type": "object"}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness; no auth. With an admin key, also `pending_settlements`: settlements the store "
                "refused, waiting in the spool to land",
                "security": [{}, {"bearer": []}],
                "responses": {
                    "200": _json(any_object, "the gateway is up"),
                    **_errors({s: AUTH_ERRORS[s] for s in ("401", "403", "503")}, OPENAI_ERROR),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Request metrics in Prometheus' text format (admin key)",
                "responses": {
                    "200": {
                        "description": "counters and histograms by model, provider and region",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors({s: AUTH_ERRORS[s] for s in ("401", "403", "503")}, OPENAI_ERROR),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document; no auth",
                "security": [],
                "responses": {"200": _json(any_object, "the OpenAPI document")},
            }
        },
        "/v1/chat/completions": {
            "post": _operation(
                "OpenAI Chat Completions, stream and not",
                _stream_or(_ref(ChatCompletion), "a completion, or an SSE stream ending in `data: [DONE]`"),
                body=_ref(ChatRequest),
                errors=PROXY_ERRORS,
                parameters=_controls(),
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "OpenAI embeddings",
                _json(_ref(EmbeddingsResponse), "the embeddings"),
                body=_ref(EmbeddingsRequest),
                errors=PROXY_ERRORS,
                parameters=_controls(),
            )
        },
        "/v1/messages": {
            "post": _operation(
                "Anthropic Messages API, stream and not, to any model",
                _stream_or(any_object, "an Anthropic message, or its SSE event sequence"),
                body=_ref(MessagesRequest),
                errors=PROXY_ERRORS,
                parameters=_controls(),
                error_schema=ANTHROPIC_ERROR,
                security=BEARER_OR_X_API_KEY,
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "Anthropic token counting, to any model: the provider's own count (Anthropic, Gemini) or an "
                "estimate marked `x-gateway-estimate: true`; free, not metered",
                _json({"type": "object", "required": ["input_tokens"]}, "`{input_tokens}`"),
                body=_ref(MessagesCountRequest),
                errors=PROXY_ERRORS,
                parameters=_controls(),
                error_schema=ANTHROPIC_ERROR,
                security=BEARER_OR_X_API_KEY,
            )
        },
        "/v1/models": {
            "get": _operation(
                "The models this key may use (Anthropic's list shape when the request carries `anthropic-version`)",
                _json(listing, "the models"),
            )
        },
        "/v1/responses": {
            "post": _operation(
                "OpenAI Responses API, stream and not, to any model",
                _stream_or(any_object, "a `response` object, or its SSE event sequence"),
                body=_ref(ResponsesRequest),
                errors={**PROXY_ERRORS, "404": "not_found (previous_response_id), model_not_found"},
                parameters=_controls(),
            )
        },
        "/v1/responses/{response_id}": {
            "get": _operation(
                "A stored response (made by this key or one of its descendants)",
                _json(any_object, "the response"),
                errors={"404": "not_found"},
                parameters=[RESPONSE_ID],
            ),
            "delete": _operation(
                "Delete a stored response",
                _json(any_object, "`{id, object: response, deleted: true}`"),
                errors={"404": "not_found"},
                parameters=[RESPONSE_ID],
            ),
        },
        "/v1/responses/{response_id}/input_items": {
            "get": _operation(
                "A stored response's input items",
                _json(listing, "the items"),
                errors={"404": "not_found"},
                parameters=[
                    RESPONSE_ID,
                    {"name": "order", "in": "query", "required": False, "schema": {"enum": ["asc", "desc"]}},
                ],
            )
        },
        "/v1/route": {
            "get": _operation(
                "The deployments a request for `model` would try, in order",
                _json(any_object, "the plan"),
                errors={"404": "model_not_found", "503": "no_deployment_available, provider_not_configured"},
                parameters=[_query("model", "a public model name", required=True), *_controls()],
            )
        },
        "/v1/key": {
            "get": _operation(
                "This key: scopes, budget, spent, remaining, expiry",
                _json(key_view, "the key"),
                security=BEARER_OR_X_API_KEY,
            )
        },
        "/v1/keys": {
            "post": _operation(
                "Mint a child key: narrower models, budget within the remaining, expiry within this key's",
                _json(key_view, "the child key, with its secret (shown once)"),
                ok_status="201",
                body=_ref(KeySpec),
            )
        },
        "/v1/usage": {
            "get": _operation(
                "This key's cost line items",
                _usage_ok(),
                parameters=USAGE_PARAMETERS,
                security=BEARER_OR_X_API_KEY,
            )
        },
        "/admin/usage": {
            "get": _operation(
                "Every key's cost line items (admin key only)",
                _usage_ok(),
                parameters=[*USAGE_PARAMETERS, _query("key", "one key id")],
            )
        },
        "/admin/keys": {
            "get": _operation(
                "List keys (admin key only)",
                _json(listing, "the keys"),
                parameters=[_query("parent_id", "only the children of this key")],
            ),
            "post": _operation(
                "Create a key (admin key only)",
                _json(key_view, "the key, with its secret (shown once)"),
                ok_status="201",
                body=_ref(AdminKeySpec),
            ),
        },
        "/admin/keys/{key_id}": {
            "get": _operation(
                "Show a key (admin key only)",
                _json(key_view, "the key"),
                errors={"404": "not_found"},
                parameters=[KEY_ID],
            ),
            "patch": _operation(
                "Replace a key's default attribution tags (admin key only)",
                _json(key_view, "the key"),
                body=_ref(KeyUpdateSpec),
                errors={"404": "not_found"},
                parameters=[KEY_ID],
            ),
        },
        "/admin/keys/{key_id}/rotate": {
            "post": _operation(
                "A new secret for a key; the old one works for `grace_seconds` (admin key only)",
                _json(key_view, "the key, with its new secret (shown once)"),
                body=_ref(RotateSpec),
                body_required=False,
                errors={"404": "not_found"},
                parameters=[KEY_ID],
            )
        },
        "/dashboard/sign-in": {
            "post": _operation(
                "Trade a one-time sign-in token from `gateway dashboard` for a dashboard session (a short-lived "
                "admin key); no auth",
                _json(any_object, "the session: `key`, `key_id`, `expires_at`, `signed_in_as`"),
                body=_ref(SignIn),
                errors={"401": "sign_in_link_expired (used already or expired), key_revoked"},
                security=[{}],
            )
        },
        "/admin/keys/{key_id}/revoke": {
            "post": _operation(
                "Revoke a key and, through it, its children (admin key only)",
                _json(key_view, "the revoked key"),
                errors={"404": "not_found"},
                parameters=[KEY_ID],
            )
        },
    }
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
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a gateway key, `gwk_...`"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`."""
    return Response(orjson.dumps(openapi_document()), media_type=JSON)
