"""Tests marked `both_loops` run once on asyncio's own event loop and once on uvloop's. `only_secrets`: the
secrets the gateway knows, for one test. Every test gives back the secrets it registered (`secrets_kept_apart`).
`store_url`: a test run once on each store, SQLite and DynamoDB (moto's server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop

from handler import redaction
from tests.support.dynamo import DynamoServer


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    # `gateway serve` runs on uvloop; Lambda, and most tests, on asyncio's loop.
    if item.get_closest_marker("both_loops"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}  # (the hook must name a loop for every test it sees)


@pytest.fixture
def only_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`redaction.register` for a test that must know which secrets are known: those it registers, none that other
    tests of the process registered (a stream's text is held back by the first letters of every one), and the
    process's own again after it."""
    monkeypatch.setattr(redaction, "_fixed", set())
    monkeypatch.setattr(redaction, "_current", {})
    yield redaction.register
    monkeypatch.undo()
    redaction._rebuild()


@pytest.fixture(autouse=True)
def secrets_kept_apart() -> Iterator[None]:
    """The secrets a unit test registers (a provider's headers resolved, a config checked) are forgotten after it: the
    redactor holds back a stream's text that ends with the first letters of any secret it knows, so one left behind
    (`now-it-is-set-...`) held back each " implementation" of a functional test's stream run after it in the same
    process, by its last `n`, and that test's client, waiting for a word that never came, read the whole stream."""
    fixed, current = set(redaction._fixed), dict(redaction._current)
    yield
    if redaction._fixed != fixed or redaction._current != current:
        redaction._fixed.clear()
        redaction._fixed.update(fixed)
        redaction._current.clear()
        redaction._current.update(current)
        redaction._rebuild()


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: DynamoServer = request.getfixturevalue("dynamo")
    return server.store_url(server.create_table())
