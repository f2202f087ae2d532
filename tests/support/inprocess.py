"""The gateway in-process: its app over ASGI on an in-memory store, the upstream an `httpx.MockTransport`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from adapters.providers.registry import REGISTRY
from handler.api.app import create_app
from handler.config import parse_config
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin, MintedKey
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, LedgerItem, Store, UsageQuery
from tests.support.asgi import post_scope

Upstream = Callable[[httpx.Request], httpx.Response]
PROVIDER_KEYS = {"OPENAI_API_KEY": "sk-test-000000000000", "AZURE_OPENAI_API_KEY": "azkey-0000000000000000"}


class Served:
    def __init__(self, gateway: Gateway, http: httpx.AsyncClient, key: MintedKey) -> None:
        self.gateway, self.http, self.key = gateway, http, key

    async def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.http.post(path, json=body, headers={"authorization": f"Bearer {self.key.key}"})

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers={"authorization": f"Bearer {self.key.key}"})

    async def left(self, path: str, body: dict[str, Any], after_s: float) -> list[bytes]:
        """`body` posted to `path` by a client that leaves (its connection gone, as a server tells the app) `after_s`
        seconds in: the pieces of the answer's body it had by then."""
        raw = orjson.dumps(body)
        headers = [
            (b"authorization", f"Bearer {self.key.key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ]
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": raw, "more_body": False}]
        pieces: list[bytes] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not gone.is_set():
                pieces.append(message.get("body", b""))

        asyncio.get_running_loop().call_later(after_s, gone.set)
        await asyncio.wait_for(
            create_app(self.gateway)(post_scope(path, headers, ("127.0.0.1", 5555)), receive, send), 10
        )
        return pieces

    async def ledger(self) -> list[LedgerItem]:
        await self.gateway.drain()
        return await self.gateway.store.usage(UsageQuery([self.key.record.id], 0, time.time() + 3600))


async def serve(
    upstream: Upstream,
    models: dict[str, Any],
    budget_usd: float = 10.0,
    provider: dict[str, Any] | None = None,
    environ: Mapping[str, str] = PROVIDER_KEYS,
    store_url: str = "sqlite://",
    store: Store | None = None,
    **settings: Any,
) -> Served:
    """The gateway on an in-memory store (or `store_url`'s, or `store`), its `openai` provider (`provider`, else an
    OpenAI-compatible one) answered by `upstream` with the keys of `environ`, and a key with a monthly budget of
    `budget_usd`."""
    data = {
        "gateway": settings,
        "providers": {
            "openai": provider or {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}
        },
        "models": models,
    }
    gateway = build_gateway(
        config=parse_config(data, set(REGISTRY)),
        store=store,
        store_url=store_url,
        environ=dict(environ),
        transport=httpx.MockTransport(upstream),
    )
    record = KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=budget_usd, budget_period="month")
    key = await KeyAdmin(KeyService(gateway.store, 0)).mint(record)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")
    return Served(gateway, http, key)
