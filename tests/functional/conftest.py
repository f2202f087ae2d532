"""The whole gateway on a real socket, in front of fake upstreams on another, driven by the official SDKs."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from adapters.providers.registry import REGISTRY
from adapters.store import open_store
from handler.api.app import create_app
from handler.config import Config, parse_config
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService, split_key
from handler.ports import KeyRecord, LedgerItem, ThreadAnswer, UsageQuery
from tests.conftest import outlives_the_test
from tests.support.dynamo import DynamoServer
from tests.support.servers import ServerThread, refusing_port

FAKE_KEYS = {
    "OPENAI_API_KEY": "test-openai-key",
    "ANTHROPIC_API_KEY": "test-anthropic-key",
    "GEMINI_API_KEY": "test-gemini-key",
}
FAKES = {"openai": "tests.fakes.openai", "anthropic": "tests.fakes.anthropic", "gemini": "tests.fakes.gemini"}


def available_fakes() -> dict[str, Any]:
    """Fake upstream apps by provider, for the provider types the registry has."""
    apps = {}
    for name, module in FAKES.items():
        if name in REGISTRY:
            apps[name] = importlib.import_module(module).create_app()
    return apps


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once (`refusing_port`: held, never taken)."""
    return refusing_port()


def gateway_config(upstream_url: str, providers: set[str]) -> Config:
    """Models served by the fakes: one per provider, plus fault models and fallbacks."""
    data: dict[str, Any] = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {
            "openai": {  # OpenAI's own table, as api.openai.com gets (the fake's host would choose a compatible one)
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{upstream_url}/openai/v1",
                "profile": "openai",
            },
            "nokey": {"type": "openai", "api_key": "env:NOKEY_API_KEY", "base_url": f"{upstream_url}/openai/v1"},
            # A server the gateway has no profile for (the fake's host picks `compatible`), serving a `vllm-*` model.
            "vllm": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"},
            "deepseek": {"type": "deepseek", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"},
            "dead": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"http://127.0.0.1:{closed_port()}/v1",
            },
        },
        "models": {
            "gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "tools-model": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "deepseek-chat": {"deployments": [{"provider": "deepseek", "model": "deepseek-chat"}]},
            "deepseek-v4-pro": {"deployments": [{"provider": "deepseek", "model": "deepseek-v4-pro"}]},
            "vllm-llama": {
                "deployments": [{"provider": "vllm", "model": "vllm-llama"}],
                "price": {"input": 1, "output": 2},
            },
            "text-embedding-3-small": {
                "kind": "embedding",
                "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}],
            },
            "unconfigured": {"deployments": [{"provider": "nokey", "model": "gpt-4o-mini"}], "price": "unknown"},
            "unpriced": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": "unknown"},
            "flaky": {
                "deployments": [
                    {"provider": "openai", "model": "fail-500"},
                    {"provider": "openai", "model": "gpt-4o-mini"},
                ],
                "price": {"input": 1.0, "output": 2.0},
            },
            "broken": {
                "deployments": [{"provider": "openai", "model": "fail-500"}],
                "price": {"input": 1, "output": 2},
            },
            "rejects": {
                "deployments": [{"provider": "openai", "model": "fail-400"}],
                "price": {"input": 1, "output": 2},
            },
            "slow": {"deployments": [{"provider": "openai", "model": "slow"}], "price": {"input": 1, "output": 2}},
            "cut": {"deployments": [{"provider": "openai", "model": "stream-cut"}], "price": {"input": 1, "output": 2}},
            "cut-call": {
                "deployments": [{"provider": "openai", "model": "cut-call"}],
                "price": {"input": 1, "output": 2},
            },
            "drip": {"deployments": [{"provider": "openai", "model": "drip"}], "price": {"input": 1, "output": 2}},
            "garbled": {
                "deployments": [{"provider": "openai", "model": "garbled"}],
                "price": {"input": 1, "output": 2},
            },
            "cut-then-ok": {
                "deployments": [
                    {"provider": "openai", "model": "stream-cut"},
                    {"provider": "openai", "model": "gpt-4o-mini"},
                ],
                "price": {"input": 1, "output": 2},
            },
            "limited": {
                "deployments": [{"provider": "openai", "model": "fail-429"}],
                "price": {"input": 1, "output": 2},
                "fallbacks": ["gpt-4o-mini"],
            },
            "slow-then-ok": {
                "deployments": [{"provider": "openai", "model": "slow"}],
                "price": {"input": 1, "output": 2},
                "fallbacks": ["gpt-4o-mini"],
            },
            "refused": {
                "deployments": [
                    {"provider": "dead", "model": "gpt-4o-mini"},
                    {"provider": "openai", "model": "gpt-4o-mini"},
                ],
                "price": {"input": 1, "output": 2},
            },
            "garbage": {
                "deployments": [{"provider": "openai", "model": "bad-json"}],
                "price": {"input": 1, "output": 2},
                "fallbacks": ["gpt-4o-mini"],
            },
            "regional": {
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o-mini", "region": "us-east-1"},
                    {"provider": "openai", "model": "gpt-4o-mini", "region": "eu-central-1"},
                ],
                "price": {"input": 1, "output": 2},
            },
            "json-model": {
                "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}],
                "price": {"input": 1, "output": 2},
                "enforce_schema": True,
            },
            "json-twice": {
                "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}] * 2,
                "price": {"input": 1, "output": 2},
                "enforce_schema": True,
            },
        },
    }
    if "anthropic" in providers:
        data["providers"]["anthropic"] = {
            "type": "anthropic",
            "api_key": "env:ANTHROPIC_API_KEY",
            "base_url": f"{upstream_url}/anthropic",
        }
        data["models"]["claude-haiku-4-5"] = {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]}
        data["models"]["broken"]["fallbacks"] = ["claude-haiku-4-5"]
        data["models"]["claude-or-openai"] = {
            "deployments": [
                {"provider": "anthropic", "model": "claude-haiku-4-5"},
                {"provider": "openai", "model": "gpt-4o-mini"},
            ]
        }
    if "gemini" in providers:
        data["providers"]["gemini"] = {
            "type": "gemini",
            "api_key": "env:GEMINI_API_KEY",
            "base_url": f"{upstream_url}/gemini",
        }
        data["models"]["gemini-2.5-flash"] = {"deployments": [{"provider": "gemini", "model": "gemini-2.5-flash"}]}
    return parse_config(data, set(REGISTRY))


# One connection pool for every SDK client of the session: an SDK client left to the garbage collector
# leaves its sockets open, which pytest (warnings are errors) reports.
SDK_HTTP = httpx.Client(timeout=30)
ANTHROPIC_HTTP = anthropic.DefaultHttpxClient(timeout=30)  # the Anthropic SDK brings its own httpx


def fresh_minute() -> None:
    """Rate windows are calendar minutes: start a rate test early enough in one to stay in it."""
    into = time.time() % 60
    if into > 50:
        time.sleep(60.5 - into)


def openai_client(running: Running, key: str) -> openai.OpenAI:
    """The official OpenAI SDK pointed at the gateway, as users configure it."""
    return openai.OpenAI(base_url=f"{running.url}/v1", api_key=key, max_retries=0, http_client=SDK_HTTP)


def anthropic_client(running: Running, key: str, *, bearer: bool = False) -> anthropic.Anthropic:
    """The official Anthropic SDK pointed at the gateway (`x-api-key`, or `authorization: Bearer`)."""
    if bearer:
        return anthropic.Anthropic(base_url=running.url, auth_token=key, max_retries=0, http_client=ANTHROPIC_HTTP)
    return anthropic.Anthropic(base_url=running.url, api_key=key, max_retries=0, http_client=ANTHROPIC_HTTP)


@dataclass
class Running:
    """A running gateway and its fakes."""

    url: str
    gateway: Gateway
    store_url: str
    upstream: ServerThread
    fakes: dict[str, Any]

    def mint(self, **fields: Any) -> str:
        """A new key (stored through a separate store connection, as another process would)."""

        async def go() -> str:
            store = open_store(self.store_url)
            try:
                record = KeyRecord(id="", name=fields.pop("name", "test"), secret_hash="", created_at=0, **fields)
                return (await KeyAdmin(KeyService(store, 0)).mint(record)).key
            finally:
                await store.close()

        return asyncio.run(go())

    def answered_elsewhere(self, key: str, message_id: str, advisors: tuple[tuple[str, int, int], ...] = ()) -> None:
        """`message_id` kept as an answer of a message thread to `key`, as another instance that relayed it keeps it
        (through a separate store connection): the thread is the key's, and holds `advisors` (`ThreadAnswer`); this
        instance knows nothing more of it (not its size: `HeldThreads`)."""
        key_id = (split_key(key) or ("", ""))[0]

        async def go() -> None:
            store = open_store(self.store_url)
            try:
                record = await store.get_key(key_id)
                assert record is not None, key_id
                answer = ThreadAnswer(message_id, key_id, list(record.ancestors), time.time() + 3600, advisors)
                await store.put_thread_answer(answer)
            finally:
                await store.close()

        asyncio.run(go())

    def key_pages(self, admin: str, query: str = "limit=1000") -> Iterator[httpx.Response]:
        """The pages of `GET /admin/keys?{query}` in turn, each answered 200, its `next_cursor` followed to the last
        (a page holds 100 unless asked: the suite's store holds more, and a key minted late is on a page past the
        first). The next page is asked for only when the caller has taken this one, so it may change keys between."""
        cursor = ""
        while True:
            asked = f"{self.url}/admin/keys?{query}{cursor}"
            page = httpx.get(asked, headers={"authorization": f"Bearer {admin}"}, timeout=10)
            assert page.status_code == 200, page.text
            yield page
            if not page.json()["has_more"]:
                return
            cursor = f"&cursor={page.json()['next_cursor']}"

    def ledger(self, key: str) -> list[LedgerItem]:
        """The key's ledger lines once every settlement has landed, read as another process would."""
        key_id = (split_key(key) or ("", ""))[0]

        async def read() -> list[LedgerItem]:
            store = open_store(self.store_url)
            try:
                return await store.usage(UsageQuery([key_id], 0, time.time() + 60))
            finally:
                await store.close()

        gateway = self.gateway
        deadline = time.monotonic() + 5
        seen: list[LedgerItem] | None = None
        while True:
            settling = gateway.unsettled  # (an error's settles after its answer)
            items = asyncio.run(read())
            # Settled, and the same twice over a poll: a full run once read the lines while an error's
            # settlement had yet to be handed to the gateway, and missed its line.
            if (items and not settling and seen is not None and len(seen) == len(items)) or time.monotonic() > deadline:
                return items
            seen = None if settling else items
            time.sleep(0.05)


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[ServerThread, dict[str, Any]]]:
    fakes = available_fakes()
    app = Starlette(routes=[Mount(f"/{name}", app=fake) for name, fake in fakes.items()])
    server = ServerThread(app).start()
    yield server, fakes
    server.stop()
    SDK_HTTP.close()
    ANTHROPIC_HTTP.close()


def serve_gateway(
    config: Config,
    store_url: str,
    upstream: ServerThread,
    fakes: dict[str, Any],
    environ: Mapping[str, str] = FAKE_KEYS,
    http: str = "auto",
) -> tuple[Running, ServerThread]:
    """A gateway for `config` on its own socket, in region us-east-1 (`http`: uvicorn's protocol); stop the
    returned server after use."""
    gateway = build_gateway(config=config, store_url=store_url, environ={**environ, "GATEWAY_REGION": "us-east-1"})
    gateway_server = ServerThread(create_app(gateway), cleanup=gateway.aclose, http=http).start()
    outlives_the_test(gateway.store)  # (closed by the server's stop, whichever test set up the fixture serving it)
    return Running(gateway_server.url, gateway, store_url, upstream, fakes), gateway_server


def param_store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """A store for a fixture parametrized `sqlite` or `dynamodb`: a file of its own under `name`, or a table of its
    own on the session's moto server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp(name) / 'gateway.db'}"
    dynamo: DynamoServer = request.getfixturevalue("dynamo")
    return dynamo.store_url(dynamo.create_table())


def serving(
    config: Config,
    store_url: str,
    upstream: tuple[ServerThread, dict[str, Any]],
    environ: Mapping[str, str] = FAKE_KEYS,
) -> Iterator[Running]:
    """A fixture's body: the gateway for `config` in front of the shared fakes, stopped once the fixture ends."""
    server, fakes = upstream
    running, gateway_server = serve_gateway(config, store_url, server, fakes, environ)
    try:
        yield running
    finally:
        gateway_server.stop()


def start_gateway(upstream: tuple[ServerThread, dict[str, Any]], store_url: str) -> tuple[Running, ServerThread]:
    server, fakes = upstream
    return serve_gateway(gateway_config(server.url, set(fakes)), store_url, server, fakes)


@pytest.fixture(scope="session")
def running(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The gateway on the embedded store."""
    running, server = start_gateway(upstream, f"sqlite:///{Path(tmp_path_factory.mktemp('store')) / 'gateway.db'}")
    yield running
    server.stop()


@pytest.fixture(scope="session")
def running_dynamodb(upstream: tuple[ServerThread, dict[str, Any]], dynamo: DynamoServer) -> Iterator[Running]:
    """The same gateway on DynamoDB (moto's server over HTTP)."""
    running, server = start_gateway(upstream, dynamo.store_url(dynamo.create_table()))
    yield running
    server.stop()


@pytest.fixture(params=["sqlite", "dynamodb"])
def on_each_store(request: pytest.FixtureRequest) -> Running:
    """The gateway on each store in turn, for tests that must hold on both."""
    fixture = "running" if request.param == "sqlite" else "running_dynamodb"
    gateway: Running = request.getfixturevalue(fixture)
    return gateway


@pytest.fixture
def key(running: Running) -> str:
    return running.mint(name="functional")


@pytest.fixture
def mint(running: Running) -> Callable[..., str]:
    return running.mint
