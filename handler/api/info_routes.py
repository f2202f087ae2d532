"""The gateway's read routes: `GET /health`, `GET /metrics`, `GET /v1/models` (OpenAI's list shape, or Anthropic's
for a client that sends `anthropic-version`), `GET /v1/models/{id}` and `GET /v1/route`.

A front-end of its own (`handler.api.route_table.Endpoints`), imported on the first such request: a Lambda serving
Chat Completions never imports it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from handler.api.app import parse_controls
from handler.config import ModelConfig
from handler.errors import GatewayError, InvalidRequestError, NotFoundError
from handler.pipeline.keys import allows_model
from handler.ports import StoreError
from handler.redaction import clipped
from handler.telemetry import prometheus

if TYPE_CHECKING:
    from handler.api.app import Api


def openai_model(name: str, spec: ModelConfig) -> dict[str, Any]:
    """A model as OpenAI's `/v1/models` shows one."""
    return {"id": name, "object": "model", "created": 0, "owned_by": "gateway", "kind": spec.kind}


class InfoRoutes:
    """The read routes' handlers, bound to the gateway's `Api`."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.gateway = api.gateway

    async def health(self, request: Request) -> Response:
        """Liveness for anyone, whatever credentials it carries; with a valid admin key, also the settlements
        waiting in the spool to land. (A header that is no valid key, a revoked or rotated-away one or a proxy's
        `Basic` credentials, answered 401: the probe that sent it reported a live gateway down.)"""
        body: dict[str, Any] = {"status": "ok", "region": self.gateway.shown_region}
        if request.headers.get("authorization"):
            try:
                key = await self.api.authenticate(request, administers=True)  # (a rotated-out secret is told no count)
            except (GatewayError, StoreError):
                return self.api.json(body)
            if key.admin:
                body["pending_settlements"] = self.gateway.spooled.count()
        return self.api.json(body)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format, for an admin key (`handler/telemetry/prometheus.py`)."""
        key = await self.api.authenticate(request, administers=True)
        self.gateway.keys.require_admin(key)
        return Response(await prometheus.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(self, request: Request) -> Response:
        anthropic = "anthropic-version" in request.headers
        await self.api.authenticate(request, allow_x_api_key=anthropic)
        lineage = self.api.lineage(request)
        if anthropic:
            from handler.api.messages_routes import allowed_models, anthropic_models

            models = self.gateway.config.models
            return self.api.json(anthropic_models(request, allowed_models(self.api, lineage, "chat"), models))
        data = [
            openai_model(name, spec) for name, spec in self.gateway.config.models.items() if allows_model(lineage, name)
        ]
        return self.api.json({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        """One model of `GET /v1/models`, in the shape the caller's list has. A model the key (or an ancestor) may
        not use is as unknown as one the config does not name: a scoped key learns of no other."""
        anthropic = "anthropic-version" in request.headers
        await self.api.authenticate(request, allow_x_api_key=anthropic)
        name = request.path_params["model_id"]
        spec = self.gateway.config.models.get(name)
        if spec is None or not allows_model(self.api.lineage(request), name) or (anthropic and spec.kind != "chat"):
            raise NotFoundError(
                f"The model '{clipped(name)}' does not exist or you do not have access to it.", param="model"
            )
        if anthropic:
            from handler.api.messages_routes import anthropic_model

            return self.api.json(anthropic_model(name, spec))
        return self.api.json(openai_model(name, spec))

    async def route(self, request: Request) -> Response:
        await self.api.authenticate(request)
        model = request.query_params.get("model")
        if not model:
            raise InvalidRequestError("the query parameter 'model' is required", param="model")
        lineage = self.api.lineage(request)
        self.gateway.keys.check_model(lineage, model, self.gateway.router.spec)
        controls = parse_controls(request)
        allowed = partial(allows_model, lineage)
        return self.api.json(
            {
                "model": model,
                "gateway_region": self.gateway.shown_region,
                "attempts": self.gateway.router.explain(model, controls.route, allowed),
            }
        )
