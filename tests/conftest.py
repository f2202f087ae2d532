"""Session-wide test set-up: fake AWS credentials (no test may reach AWS) and the DynamoDB server."""

from __future__ import annotations

import gc
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


@pytest.fixture
def no_gc_pauses() -> Iterator[None]:
    """For a test that bounds the time of its own work: the heap collected first, the collector off while it
    runs. Late in a run, a full collection of the suite's heap stops the process for as long as such a bound
    (0.35 s measured after tests/unit alone, over a second late in the whole suite), and the test cannot tell
    that from the wait it is about."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
