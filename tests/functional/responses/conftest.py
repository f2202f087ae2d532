"""The Responses API tests' gateway: a model on each provider type, each in front of its fake, on one socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import azure as azure_fake
from tests.fakes import bedrock as bedrock_fake
from tests.functional.conftest import FAKE_KEYS, Running, serve_gateway
from tests.functional.responses.fleet import fleet_config
from tests.support.dynamo import DynamoServer
from tests.support.servers import ServerThread


def serve_fleet(upstream: tuple[ServerThread, dict[str, Any]], store_url: str) -> Iterator[Running]:
    """The gateway on `store_url` with the fakes of every provider type behind it."""
    missing = {"azure", "bedrock", "deepseek", "gemini", "anthropic"} - set(REGISTRY)
    if missing:
        pytest.skip(f"provider types not registered: {sorted(missing)}")
    server, fakes = upstream
    azure_app, bedrock_app = azure_fake.create_app(), bedrock_fake.create_app()
    azure, bedrock = ServerThread(azure_app).start(), ServerThread(bedrock_app).start()
    config = parse_config(fleet_config(server.url, azure.url, bedrock.url), set(REGISTRY))
    environ = {**FAKE_KEYS, "AZURE_OPENAI_API_KEY": azure_fake.API_KEY}
    running, gateway = serve_gateway(
        config, store_url, server, {**fakes, "azure": azure_app, "bedrock": bedrock_app}, environ
    )
    yield running
    gateway.stop()
    azure.stop()
    bedrock.stop()


@pytest.fixture(scope="package")
def fleet(upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The gateway (embedded store) with the fakes of every provider type behind it."""
    store_url = f"sqlite:///{Path(tmp_path_factory.mktemp('responses-store')) / 'gateway.db'}"
    yield from serve_fleet(upstream, store_url)


@pytest.fixture(scope="package")
def fleet_dynamodb(upstream: tuple[ServerThread, dict[str, Any]], dynamo: DynamoServer) -> Iterator[Running]:
    """The same on DynamoDB (moto's server over HTTP)."""
    yield from serve_fleet(upstream, dynamo.store_url(dynamo.create_table()))


@pytest.fixture(params=["sqlite", "dynamodb"])
def fleet_on_each_store(request: pytest.FixtureRequest) -> Running:
    """The fleet on each store in turn, for tests that must hold on both."""
    running: Running = request.getfixturevalue("fleet" if request.param == "sqlite" else "fleet_dynamodb")
    return running


@pytest.fixture(scope="package")
def fleet_key(fleet: Running) -> str:
    return fleet.mint(name="responses")
