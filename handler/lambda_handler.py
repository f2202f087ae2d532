"""The buffered Lambda entry point: Mangum over the same app, built once per execution environment.

Everything is built at import (Lambda's init phase); Mangum runs with `lifespan="off"` because it
would otherwise run the ASGI lifespan on every invocation. Mangum keeps one event loop for the life
of the environment, so the upstream connections opened by one invocation serve the next.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mangum import Mangum

from handler.app import create_app
from handler.gateway import build_gateway

gateway = build_gateway()
app = create_app(gateway)
_mangum = Mangum(app, lifespan="off")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer one API Gateway event; settlements finish before the environment can be frozen."""
    response: dict[str, Any] = _mangum(event, context)
    if gateway.background:
        asyncio.get_event_loop().run_until_complete(gateway.drain())
    return response
