"""`store_url`: a test of the dashboard run once on each store, SQLite and DynamoDB (moto's server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dynamo import DynamoServer


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: DynamoServer = request.getfixturevalue("dynamo")
    return server.store_url(server.create_table())
