"""A fake Azure OpenAI Service: Azure's URLs, `api-key` header and content filter around the fake OpenAI API.

It serves `POST /openai/deployments/{deployment}/chat/completions` and `/embeddings` (and the v1 API's
`POST /openai/v1/responses`, whose `model` is the deployment), requires the
`api-key` header and a known `api-version`, and answers as the fake OpenAI API does for a model named
like the deployment (so `fail-429`, `fail-500`, ... work here too), adding what Azure adds: a stream opens
with a choice-less `prompt_filter_results` chunk. A deployment named `content-filter` refuses the prompt
with Azure's content-filter error; one named `deleted-...` answers Azure's 404 `DeploymentNotFound`, as Azure does
for a deployment deleted (or created minutes ago, not yet in the region). An argument newer than the request's
api-version is refused as Azure refuses it. A deployment runs the base model `DEPLOYMENTS` names for it (an
operator's own name, `prod-reasoner`, for OpenAI's o3), else the model its name is. Every request is recorded on
`app.state.requests`.
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

API_KEY = "test-azure-key"
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
DEPLOYMENTS = {"prod-reasoner": "o3"}  # deployment -> the base model it runs, where its name does not say
SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER_CHUNK = {
    "choices": [],
    "created": 0,
    "id": "",
    "model": "",
    "object": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}],
}
DEPLOYMENT_NOT_FOUND = {
    "error": {
        "code": "DeploymentNotFound",
        "message": "The API deployment for this resource does not exist. If you created the deployment within the "
        "last 5 minutes, please wait a moment and try again.",
    }
}
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


def _json(status: int, body: Any) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


def unsupported(body: dict[str, Any], version: str) -> Response | None:
    """Azure's 400 for an argument `version` does not define, or None."""
    for name in body:
        if version < ARGUMENTS_SINCE.get(name, ""):
            message = f"Unrecognized request argument supplied: {name}"
            return _json(
                400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
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


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []
    upstream = openai_fake.create_app()

    async def received(request: Request) -> tuple[dict[str, Any], Response | None]:
        """The request's body, recorded; and Azure's refusal of a wrong `api-key`."""
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        record = {"path": request.url.path, "query": dict(request.query_params), "headers": dict(request.headers)}
        requests.append({**record, "json": body})
        if request.headers.get("api-key") != API_KEY:
            message = "Access denied due to invalid subscription key or wrong API endpoint."
            return body, _json(401, {"error": {"code": "401", "message": message}})
        return body, None

    async def forward(path: str, body: dict[str, Any]) -> httpx.Response:
        """What the fake OpenAI API answers to the same body (Azure runs OpenAI's models)."""
        headers = {"authorization": f"Bearer {openai_fake.API_KEY}", "content-type": "application/json"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=upstream), base_url="http://openai") as client:
            return await client.post(path, content=orjson.dumps(body), headers=headers)

    def relayed(answer: httpx.Response, content: bytes) -> Response:
        passed = {k: v for k, v in answer.headers.items() if k in ("content-type", "retry-after")}
        return Response(content, answer.status_code, headers=passed)

    async def operation(request: Request) -> Response:
        deployment, name = request.path_params["deployment"], request.path_params["operation"]
        body, refused = await received(request)
        if refused is not None:
            return refused
        version = request.query_params.get("api-version", "")
        if version not in API_VERSIONS:
            return _json(404, {"error": {"code": "404", "message": "Resource not found"}})
        if deployment.startswith("deleted-"):
            return _json(404, DEPLOYMENT_NOT_FOUND)
        refused = unsupported(body, version)
        if refused is not None:
            return refused
        if "content-filter" in deployment:
            return _json(400, CONTENT_FILTER_ERROR)
        body["model"] = DEPLOYMENTS.get(deployment, deployment)
        answer = await forward(f"/v1/{name}", body)
        content = answer.content
        if body.get("stream") and answer.status_code == 200:
            content = b"data: " + orjson.dumps(PROMPT_FILTER_CHUNK) + b"\n\n" + content
        return relayed(answer, content)

    async def responses(request: Request) -> Response:
        """The v1 API's Responses endpoint: the deployment is the body's `model`, no api-version needed."""
        body, refused = await received(request)
        if refused is not None:
            return refused
        answer = await forward("/v1/responses", body)
        return relayed(answer, answer.content)

    app = Starlette(
        routes=[
            Route("/openai/v1/responses", responses, methods=["POST"]),
            Route("/openai/deployments/{deployment:str}/{operation:path}", operation, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
