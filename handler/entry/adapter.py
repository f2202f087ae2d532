"""Mangum for the buffered function, with each invocation's ASGI scope built once.

Mangum's handlers for API Gateway HTTP APIs (payload 1.0 and 2.0, `HTTPGateway`) and for ALB build the scope as a
property, and their `__call__` reads `self.scope["aws.event"]` to shape the answer: the whole scope, every request
header lowered and encoded, was built a second time per invocation just to read the event back: about 6 µs of a
warm invocation's own work (`python -m tests.bench.lambda_warm 3000 responses`, three alternated pairs: 298, 296,
301 against 304, 302, 307 µs). These subclasses build it once; Mangum tries them before its own.
"""

from __future__ import annotations

import binascii
import functools
from typing import Any

from mangum import Mangum
from mangum.handlers import ALB, HTTPGateway
from mangum.types import ASGI, LambdaContext, LambdaEvent, LambdaHandler, Scope


class UnreadableEventError(Exception):
    """An event that is no HTTP request the function can read: the Lambda console's default test event
    (`{"key1": "value1", ...}`), `{}`, a body marked base64 that is not. Mangum raised a `RuntimeError` (or
    `binascii.Error`) out of the handler: an invocation error, behind API Gateway a bare 500."""


class HTTPGatewayOnce(HTTPGateway):
    @functools.cached_property
    def scope(self) -> Scope:
        return super().scope

    @property
    def body(self) -> bytes:
        try:
            return super().body
        except binascii.Error:
            raise UnreadableEventError("the event's body is marked isBase64Encoded but is not base64") from None


class ALBOnce(ALB):
    @functools.cached_property
    def scope(self) -> Scope:
        return super().scope


class GatewayMangum(Mangum):
    def infer(self, event: LambdaEvent, context: LambdaContext) -> LambdaHandler:
        try:
            return super().infer(event, context)
        except RuntimeError:  # (Mangum's word for an event none of its handlers takes)
            raise UnreadableEventError(
                "the Lambda event is no HTTP request: the gateway takes API Gateway (HTTP API or REST API), Function "
                "URL and ALB events (samples: events/*.json, as `sam local invoke -e` sends them), not the Lambda "
                "console's default test event"
            ) from None


def lambda_adapter(app: ASGI | Any) -> Mangum:
    """The app under Mangum as the buffered function runs it: no lifespan (Mangum would run it every invocation).
    An event it cannot read raises `UnreadableEventError`."""
    return GatewayMangum(app, lifespan="off", custom_handlers=[HTTPGatewayOnce, ALBOnce])
