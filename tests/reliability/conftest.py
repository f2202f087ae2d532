"""The functional suite's gateway fixtures (a real socket, fake upstreams, both stores), shared here."""

from __future__ import annotations

from tests.functional.conftest import key, mint, running, running_dynamodb, upstream  # noqa: F401
