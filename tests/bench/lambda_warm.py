"""Warm Lambda invocations in-process: µs of the gateway's own work per invocation.

    python -m tests.bench.lambda_warm N    (environment: GATEWAY_CONFIG, GATEWAY_STORE, a key in the store)

The upstream is an httpx MockTransport answering at once, so what is timed is Mangum, the app, auth,
admission and settlement on the embedded store, translation and serialization. Prints the median µs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import httpx

from tests.bench.run import BODY, COMPLETION
from tests.support.events import event


class Context:
    function_name = "GatewayFunction"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:GatewayFunction"
    aws_request_id = "bench"


def main(invocations: int) -> None:
    results = sys.stdout
    sys.stdout = sys.stderr
    from handler import lambda_handler
    from handler.upstream import UpstreamClient

    answer = json.dumps(COMPLETION).encode()
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=answer, headers={"content-type": "application/json"})
    )
    gateway = lambda_handler.gateway
    gateway.upstream = UpstreamClient(gateway.config.gateway.timeouts, transport)
    invoke = event("POST", "/v1/chat/completions", BODY, key=os.environ["BENCH_GATEWAY_KEY"])
    samples = []
    for i in range(invocations):
        started = time.perf_counter()
        response = lambda_handler.handler(invoke, Context())
        elapsed = time.perf_counter() - started
        if response["statusCode"] != 200:
            raise SystemExit(f"invocation {i} answered {response['statusCode']}: {response.get('body')}")
        if i >= invocations // 10:  # the first tenth warms caches
            samples.append(elapsed * 1e6)
    results.write(f"{statistics.median(samples):.1f}\n")


if __name__ == "__main__":
    main(int(sys.argv[1]))
