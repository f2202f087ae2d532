"""Session-wide test set-up: fake AWS credentials (no test may reach AWS) and the DynamoDB server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.dynamo import CREDENTIALS, DynamoServer

os.environ.update(CREDENTIALS)
for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
    os.environ.pop(name, None)


@pytest.fixture(scope="session")
def dynamo() -> Iterator[DynamoServer]:
    """moto's DynamoDB server, shared by the session; each user creates its own table."""
    server = DynamoServer().start()
    yield server
    server.stop()
