"""The streaming function (uvicorn behind the Lambda Web Adapter) runs with `Tracing: Active`, and docs/observability.md
promises X-Ray subsegments around upstream and store calls on Lambda. The X-Ray SDK finds a Lambda invocation's trace
through `_X_AMZN_TRACE_ID`, which Lambda's Python runtime sets per invocation; behind the adapter none runs (uvicorn
was started once, at init), and the adapter passes the invocation's trace in the `x-amzn-trace-id` header, which the
gateway did not read: every subsegment was discarded, each with a warning line in the function's log. Found by
review. (A child process: the tracer is chosen at import from the environment, as on Lambda.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOT_ID = "1-5759e988-bd862e3fe1be46a994272793"

CHILD = r"""
import asyncio, json, os, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(0.5)
os.environ["AWS_XRAY_DAEMON_ADDRESS"] = "127.0.0.1:%d" % sock.getsockname()[1]

import httpx, orjson
from adapters.providers.registry import REGISTRY
from handler.api.app import serving_app
from handler.config import parse_config
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord
from tests.support.asgi import post_scope

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}

def upstream(request):
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    body = {"id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    return httpx.Response(200, json={**body, "usage": USAGE})

trace = "Root=%s;Parent=53995c3f42cd8ad8;Sampled=1" % sys.argv[1]

async def main():
    model = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
    data = {"providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": "http://up/v1"}},
            "models": {"m": model}}
    gateway = build_gateway(config=parse_config(data, set(REGISTRY)),
                            environ={"OPENAI_API_KEY": "sk-test-000000000000"},
                            transport=httpx.MockTransport(upstream), store_url="sqlite://")
    record = KeyRecord(id="", name="k", secret_hash="", created_at=0, budget_usd=10.0)
    key = (await KeyAdmin(KeyService(gateway.store, 0)).mint(record)).key
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json"),
               # what the Web Adapter adds to each invocation's request: the trace header, and the Lambda context
               # (whose `xray_trace_id` is the same trace)
               (b"x-amzn-trace-id", trace.encode()),
               (b"x-amzn-lambda-context", orjson.dumps({
                   "request_id": "r1",
                   "deadline": int(time.time() * 1000) + 60_000,
                   "invoked_function_arn": "arn:aws:lambda:eu-central-1:1:function:f",
                   "xray_trace_id": trace,
               }))]
    scope = post_scope("/v1/chat/completions", headers, ("127.0.0.1", 5000))
    print("--- the invocation ---", file=sys.stderr, flush=True)  # (what init ran before it is not in a trace)
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
    statuses = []
    async def send(message):
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
    await serving_app(gateway)(scope, receive, send)
    await gateway.aclose()
    return statuses

statuses = asyncio.run(main())
datagrams = []
try:
    while True:
        datagrams.append(sock.recvfrom(65536)[0].decode())
except socket.timeout:
    pass
print(json.dumps({"statuses": statuses, "datagrams": datagrams}))
"""


def test_the_streaming_functions_upstream_and_store_calls_reach_x_ray_in_the_invocations_trace() -> None:
    environ = {
        **os.environ,
        # What the streaming function's uvicorn process has: Lambda's variables, the template's (AWS_LWA_*), and no
        # `_X_AMZN_TRACE_ID` (no Python runtime sets one per invocation behind the adapter).
        "AWS_LAMBDA_FUNCTION_NAME": "llm-gateway-GatewayStreamFunction-abc",
        "LAMBDA_TASK_ROOT": str(ROOT),
        "AWS_REGION": "eu-central-1",
        "AWS_LWA_INVOKE_MODE": "response_stream",
        "AWS_LWA_PORT": "8000",
        "PYTHONPATH": str(ROOT),
    }
    environ.pop("_X_AMZN_TRACE_ID", None)
    ran = subprocess.run(
        [sys.executable, "-c", CHILD, ROOT_ID], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    outcome = json.loads(ran.stdout.strip().splitlines()[-1])
    assert outcome["statuses"] == [200]
    invocation = ran.stderr.partition("--- the invocation ---")[2]
    assert "discarded due to Lambda worker still initializing" not in invocation, invocation
    names = [json.loads(d.split("\n", 1)[1]) for d in outcome["datagrams"]]
    assert any(n.get("name") == "upstream" and n.get("trace_id") == ROOT_ID for n in names), names
