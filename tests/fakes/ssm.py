"""A fake SSM Parameter Store `GetParameter`, speaking its JSON protocol (`application/x-amz-json-1.1`, the action in
`X-Amz-Target: AmazonSSM.GetParameter`) as botocore's client does, with SSM's own error shapes
(`{"__type": "ThrottlingException", "message": "Rate exceeded"}`, a 400).

Each call takes the next step of `script` (its last step repeats): a parameter's value, `THROTTLE` (SSM refusing a
burst above its rate, as it does when many environments start at once) or `ABSENT` (`ParameterNotFound`). The names
it was asked for are recorded on `calls`, in order.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

THROTTLE = "<throttle>"
ABSENT = "<absent>"
CONTENT_TYPE = "application/x-amz-json-1.1"


def create_app(script: list[str]) -> Starlette:
    """The fake, answering each `GetParameter` with the next step of `script` (see the module docstring)."""
    calls: list[str] = []

    def answer(status: int, body: dict[str, Any]) -> Response:
        return Response(orjson.dumps(body), status, media_type=CONTENT_TYPE)

    async def endpoint(request: Request) -> Response:
        if request.headers.get("x-amz-target") != "AmazonSSM.GetParameter":
            return answer(400, {"__type": "UnknownOperationException", "message": "not served by this fake"})
        name = orjson.loads(await request.body())["Name"]
        step = script[min(len(calls), len(script) - 1)]
        calls.append(name)
        if step == THROTTLE:
            return answer(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
        if step == ABSENT:
            return answer(400, {"__type": "ParameterNotFound", "message": ""})
        parameter = {
            "Name": name,
            "Type": "SecureString",
            "Value": step,
            "Version": len(calls),
            "ARN": f"arn:aws:ssm:eu-central-1:123456789012:parameter{name}",
            "DataType": "text",
        }
        return answer(200, {"Parameter": parameter})

    app = Starlette(routes=[Route("/", endpoint, methods=["POST"])])
    app.state.calls = calls
    return app
