"""A fake Azure OpenAI Service: Azure's URLs, credentials, content filter and errors around the fake OpenAI API.

It serves `POST /openai/deployments/{deployment}/chat/completions` and `/embeddings` at a known dated
`api-version`, and the versionless v1 API's `POST /openai/v1/chat/completions`, `/embeddings` and `/responses`, whose
`model` is the deployment, with no `api-version` (or `preview`); it requires the `api-key` header (or, for a resource
using Microsoft Entra ID, `authorization: Bearer ENTRA_TOKEN`), and answers as the fake OpenAI API does for the base
model the deployment runs, in Azure's format:

- a deployment is one of `DEPLOYMENTS` (an operator's own name, `gpt-4o-prod`, for the model it runs, reported by
  its version, `gpt-4o-2024-11-20`, as Azure reports it) or names one of the fake OpenAI API's behaviours
  (`SCRIPTED`: `fail-500`, `bad-json`, ...); any other is Azure's 404 `DeploymentNotFound`;
- a whole answer carries the prompt's `prompt_filter_results` and each choice's `content_filter_results`; a stream
  opens with a choice-less `prompt_filter_results` chunk, and its chunks carry `content_filter_results` (empty on
  the role and finish chunks, the verdicts on the text's), none of OpenAI's `service_tier`;
- `fail-429` is Azure's rate limit: `{"error": {"code": "429", "message": "... retry after 60 seconds ..."}}`
  with `retry-after` and `retry-after-ms`;
- `content-filter` refuses the prompt with Azure's content-filter 400;
- `async-filter...` deployments stream as a deployment whose content filter is the Asynchronous Filter does
  (Azure's "Content streaming" document): the text's chunks carry no verdict, annotations follow the text they
  vetted (choices with `content_filter_offsets` and no delta). `async-filter` passes; `async-filter-blocked`
  blocks the answer mid-stream (an annotation with `finish_reason: content_filter`, then `[DONE]`, no usage);
  `async-filter-late` blocks it after the `stop` chunk (an annotation whose verdict is `filtered: true`, with no
  finish reason), then the usage;
- an argument newer than the request's api-version, one of OpenAI's that no dated version defines (`OPENAI_ONLY`:
  `verbosity`, `prompt_cache_key`, ...) and a `tool_choice` of OpenAI's newer types (`allowed_tools`) are refused as
  Azure refuses what its version does not define; the v1 API takes them, as OpenAI's does, and refuses a dated
  `api-version` (or `v1`) in its query;
- the Responses API's encrypted reasoning is the resource's own (`AZURE_ORGANIZATION`): a blob OpenAI sealed is
  refused here, and this resource's at OpenAI.

Every request is recorded on `app.state.requests`.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes import openai as openai_fake
from tests.fakes.openai_responses import ORGANIZATION_HEADER

API_KEY = "test-azure-key"
AZURE_ORGANIZATION = "azure-resource"  # what the fake OpenAI API it forwards to seals this resource's reasoning as
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-entra-id-token.sig"  # a Microsoft Entra ID access token
API_VERSIONS = {"2024-10-21", "2024-06-01", "2025-01-01-preview"}
# Arguments newer than an api-version, which that version refuses as Azure does (an older version's spec lacks
# them): by the first version that has each, from Azure's API version history.
ARGUMENTS_SINCE = {
    "max_completion_tokens": "2024-09-01-preview",
    "stream_options": "2024-09-01-preview",
    "parallel_tool_calls": "2024-09-01-preview",
    "reasoning_effort": "2024-12-01-preview",
    "store": "2024-12-01-preview",
    "metadata": "2024-12-01-preview",
    "modalities": "2025-01-01-preview",
    "audio": "2025-01-01-preview",
    "prediction": "2025-01-01-preview",
}
JSON_SCHEMA_SINCE = "2024-08-01-preview"
# OpenAI's members that no dated api-version defines (added after the last, 2025-04-01-preview, or never taken by
# Azure's Chat Completions): refused by every version the fake serves.
OPENAI_ONLY = ("verbosity", "prompt_cache_key", "safety_identifier", "service_tier", "web_search_options")
# A dated version's `tool_choice`: none, auto, required or a named function (OpenAI's `allowed_tools` came after).
TOOL_CHOICES = ("none", "auto", "required")
# The resource's deployments: name -> (the base model it runs, the model version its answers name).
DEPLOYMENTS = {
    "gpt-4o-prod": ("gpt-4o", "gpt-4o-2024-11-20"),
    "gpt-4o-mini": ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    "prod-reasoner": ("o3", "o3-2025-04-16"),
    "embed-small": ("text-embedding-3-small", "text-embedding-3-small"),
}
# Deployments named for a behaviour of the fake OpenAI API (which runs a model of that name), or of this fake's own.
SCRIPTED = ("fail-", "content-filter", "async-filter", "bad-json", "malformed-call", "slow", "drip", "stream-cut")
SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_RESULTS = {**FILTER_RESULTS, "jailbreak": {"filtered": False, "detected": False}}
ANSWER_RESULTS = {
    **FILTER_RESULTS,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": PROMPT_RESULTS}]
PROMPT_FILTER_CHUNK = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": PROMPT_FILTER_RESULTS,
}
# The Asynchronous Filter's verdicts that block an answer: mid-stream (with `finish_reason: content_filter`), and
# after its `stop` chunk (`filtered: true`, no finish reason).
BLOCKED_MID_STREAM = {"protected_material_text": {"detected": True, "filtered": True}}
BLOCKED_LATE = {**FILTER_RESULTS, "violence": {"filtered": True, "severity": "high"}}
CONTENT_FILTER_ERROR = {
    "error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {**FILTER_RESULTS, "violence": {"filtered": True, "severity": "high"}},
        },
    }
}
DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment within the "
        "last 5 minutes, please wait a moment and try again.",
    }
}
RATE_LIMIT_WAIT_S = 60


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


def deployed(deployment: str) -> tuple[str, str] | None:
    """The base model a deployment runs and the version its answers name, or None: no such deployment."""
    if deployment in DEPLOYMENTS:
        return DEPLOYMENTS[deployment]
    return (deployment, deployment) if deployment.startswith(SCRIPTED) else None


def rate_limited(operation: str, version: str) -> Response:
    """Azure's 429, in its words: the wait in the message and in both headers."""
    message = (
        f"Requests to the {operation} Operation under Azure OpenAI API version {version} have exceeded token rate "
        f"limit of your current OpenAI S0 pricing tier. Please retry after {RATE_LIMIT_WAIT_S} seconds. Please go "
        "here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
    )
    headers = {"retry-after": str(RATE_LIMIT_WAIT_S), "retry-after-ms": str(RATE_LIMIT_WAIT_S * 1000)}
    return _json(429, {"error": {"code": "429", "message": message}}, headers)


def unsupported(body: dict[str, Any], version: str) -> Response | None:
    """Azure's 400 for an argument `version` does not define (one newer than it, or one of OpenAI's no dated version
    has), or for a `tool_choice` it does not define (`allowed_tools`), or None."""
    for name in body:
        if version < ARGUMENTS_SINCE.get(name, "") or name in OPENAI_ONLY:
            message = f"Unrecognized request argument supplied: {name}"
            return _json(
                400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
            )
    choice = body.get("tool_choice")
    named = isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict)
    if choice is not None and choice not in TOOL_CHOICES and not named:
        message = f"Invalid value for 'tool_choice': {orjson.dumps(choice).decode()}."
        return _json(
            400,
            {"error": {"message": message, "type": "invalid_request_error", "param": "tool_choice", "code": None}},
        )
    response_format = body.get("response_format")
    if (
        version < JSON_SCHEMA_SINCE
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_schema"
    ):
        message = f"response_format value as json_schema is enabled only for api versions {JSON_SCHEMA_SINCE} and later"
        return _json(400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})
    return None


def whole_answer(answer: dict[str, Any], version: str) -> dict[str, Any]:
    """The fake OpenAI API's answer as Azure gives it: the model's version, the prompt's and each choice's
    content-filter results."""
    answer.pop("service_tier", None)
    for choice in answer.get("choices") or ():
        choice["content_filter_results"] = ANSWER_RESULTS
    return {**answer, "model": version, "prompt_filter_results": PROMPT_FILTER_RESULTS}


def sse(events: list[Any]) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\n\n" for e in events)


def stream_events(content: bytes) -> list[Any]:
    """The fake OpenAI API's stream as its events: each chunk's JSON, `[DONE]` as bytes."""
    events: list[Any] = []
    for block in content.split(b"\n\n"):
        data = block.removeprefix(b"data: ").strip()
        if data:
            events.append(data if data == b"[DONE]" else orjson.loads(data))
    return events


def annotation(results: dict[str, Any], start: int, end: int, finish: str | None = None) -> dict[str, Any]:
    """The Asynchronous Filter's annotation of the text from `start` to `end` (offsets from the prompt's start)."""
    offsets = {"check_offset": start, "start_offset": start, "end_offset": end}
    choice = {"content_filter_offsets": offsets, "content_filter_results": results, "finish_reason": finish, "index": 0}
    return {"choices": [choice], "created": 0, "id": "", "model": "", "object": ""}


def azure_stream(content: bytes, deployment: str, version: str, prompt_chars: int) -> bytes:
    """The fake OpenAI API's stream as Azure streams it: the prompt's results first, the model's version, each
    chunk's content-filter results as the deployment's filter gives them (`async-filter...`: annotations)."""
    events: list[Any] = [PROMPT_FILTER_CHUNK]
    asynchronous = deployment.startswith("async-filter")
    offset = prompt_chars
    for event in stream_events(content):
        if isinstance(event, bytes):
            events.append(event)
            continue
        event.pop("service_tier", None)
        event["model"] = version
        choice = event["choices"][0] if event.get("choices") else None
        if choice is None:  # the usage
            events.append(event)
            continue
        text = choice["delta"].get("content") or ""
        if choice["finish_reason"] and "blocked" in deployment:
            events += [annotation(BLOCKED_MID_STREAM, prompt_chars, offset, "content_filter"), b"[DONE]"]
            break
        if not asynchronous:
            choice["content_filter_results"] = FILTER_RESULTS if text else {}
        events.append(event)
        if asynchronous and text and offset == prompt_chars:  # the first words vetted as the rest streams
            events.append(annotation(FILTER_RESULTS, prompt_chars, prompt_chars + len(text)))
        offset += len(text)
        if asynchronous and choice["finish_reason"]:  # the rest vetted after the answer's end
            events.append(annotation(BLOCKED_LATE if "late" in deployment else FILTER_RESULTS, prompt_chars, offset))
    return sse(events)


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []
    upstream = openai_fake.create_app()

    async def received(request: Request) -> tuple[dict[str, Any], Response | None]:
        """The request's body, recorded; and Azure's refusal of a wrong `api-key` or Entra ID token."""
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        record = {"path": request.url.path, "query": dict(request.query_params), "headers": dict(request.headers)}
        requests.append({**record, "json": body})
        if request.headers.get("api-key") == API_KEY or request.headers.get("authorization") == f"Bearer {ENTRA_TOKEN}":
            return body, None
        if "authorization" in request.headers and "api-key" not in request.headers:
            message = (
                "Unauthorized. Access token is missing, invalid, audience is incorrect "
                "(https://cognitiveservices.azure.com), or have expired."
            )
        else:
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource."
            )
        return body, _json(401, {"error": {"code": "401", "message": message}})

    async def forward(path: str, body: dict[str, Any]) -> httpx.Response:
        """What the fake OpenAI API answers to the same body (Azure runs OpenAI's models), as an organisation of its
        own: Azure's encrypted reasoning is the resource's, and OpenAI's is refused there (and Azure's at OpenAI)."""
        headers = {
            "authorization": f"Bearer {openai_fake.API_KEY}",
            "content-type": "application/json",
            ORGANIZATION_HEADER: AZURE_ORGANIZATION,
        }
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream), base_url="http://openai") as client:
            return await client.post(path, content=orjson.dumps(body), headers=headers)

    def relayed(answer: httpx.Response, content: bytes) -> Response:
        passed = {k: v for k, v in answer.headers.items() if k in ("content-type", "retry-after")}
        return Response(content, answer.status_code, headers=passed)

    def in_azure_format(answer: httpx.Response, body: dict[str, Any], deployment: str, version: str) -> bytes:
        content = answer.content
        if answer.status_code != 200 or not answer.headers.get("content-type", "").startswith(
            ("application/json", "text/event-stream")
        ):
            return content
        if body.get("stream"):
            prompt_chars = len(orjson.dumps(body.get("messages", [])))
            return azure_stream(content, deployment, version, prompt_chars)
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            return content  # (`bad-json`: as the fake OpenAI API wrote it)
        if isinstance(data, dict) and "choices" in data:
            return orjson.dumps(whole_answer(data, version))
        if isinstance(data, dict) and data.get("object") == "list":
            return orjson.dumps({**data, "model": version})
        return content

    async def operation(request: Request) -> Response:
        deployment, name = request.path_params["deployment"], request.path_params["operation"]
        body, refused = await received(request)
        if refused is not None:
            return refused
        version = request.query_params.get("api-version", "")
        if version not in API_VERSIONS:
            return _json(404, {"error": {"code": "404", "message": "Resource not found"}})
        model = deployed(deployment)
        if model is None:
            return _json(404, DEPLOYMENT_NOT_FOUND)
        refused = unsupported(body, version)
        if refused is not None:
            return refused
        return await answered(deployment, model, name, body, version)

    async def versionless(request: Request) -> Response:
        """The v1 API's Chat Completions and embeddings: the deployment is the body's `model`, no api-version (or
        `preview`, its preview features); OpenAI's members and tool choices go as OpenAI's API takes them."""
        body, refused = await received(request)
        if refused is not None:
            return refused
        if request.query_params.get("api-version", "preview") != "preview":
            return _json(400, {"error": {"code": "BadRequest", "message": "API version not supported"}})
        deployment = str(body.get("model", ""))
        model = deployed(deployment)
        if model is None:
            return _json(404, DEPLOYMENT_NOT_FOUND)
        return await answered(deployment, model, request.path_params["operation"], body, "v1")

    async def answered(
        deployment: str, model: tuple[str, str], name: str, body: dict[str, Any], version: str
    ) -> Response:
        """The deployment's answer to a request Azure took: its scripted refusals, else the fake OpenAI API's."""
        if deployment.startswith("fail-429"):
            operations: dict[str, str] = {"chat/completions": "ChatCompletions_Create"}
            return rate_limited(operations.get(name, "Embeddings_Create"), version)
        if "content-filter" in deployment:
            return _json(400, CONTENT_FILTER_ERROR)
        base, model_version = model
        body = {**body, "model": base}  # (the request as recorded keeps the deployment it named)
        answer = await forward(f"/v1/{name}", body)
        return relayed(answer, in_azure_format(answer, body, deployment, model_version))

    async def responses(request: Request) -> Response:
        """The v1 API's Responses endpoint: the deployment is the body's `model`, no api-version (or `preview`)."""
        body, refused = await received(request)
        if refused is not None:
            return refused
        if request.query_params.get("api-version", "preview") != "preview":
            return _json(400, {"error": {"code": "BadRequest", "message": "API version not supported"}})
        if deployed(str(body.get("model", ""))) is None:
            return _json(404, DEPLOYMENT_NOT_FOUND)
        answer = await forward("/v1/responses", body)
        return relayed(answer, answer.content)

    app = Starlette(
        routes=[
            Route("/openai/v1/responses", responses, methods=["POST"]),
            Route("/openai/v1/{operation:path}", versionless, methods=["POST"]),
            Route("/openai/deployments/{deployment:str}/{operation:path}", operation, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
