"""Mangum for the buffered function, with each invocation's ASGI scope built once.

Mangum's handlers for API Gateway HTTP APIs (payload 1.0 and 2.0, `HTTPGateway`) and for ALB build the scope as a
property, and their `__call__` reads `self.scope["aws.event"]` to shape the answer: the whole scope, every request
header lowered and encoded, was built a second time per invocation just to read the event back: about 6 µs of a
warm invocation's own work (`python -m tests.bench.lambda_warm 3000 responses`, three alternated pairs: 298, 296,
301 against 304, 302, 307 µs). These subclasses build it once; Mangum tries them before its own.
"""

from __future__ import annotations

import functools
from typing import Any

from mangum import Mangum
from mangum.handlers import ALB, HTTPGateway
from mangum.types import ASGI, Scope


class HTTPGatewayOnce(HTTPGateway):
    @functools.cached_property
    def scope(self) -> Scope:
        return super().scope


class ALBOnce(ALB):
    @functools.cached_property
    def scope(self) -> Scope:
        return super().scope


def lambda_adapter(app: ASGI | Any) -> Mangum:
    """The app under Mangum as the buffered function runs it: no lifespan (Mangum would run it every invocation)."""
    return Mangum(app, lifespan="off", custom_handlers=[HTTPGatewayOnce, ALBOnce])
