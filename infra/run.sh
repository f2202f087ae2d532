#!/bin/bash
# The streaming function's handler: the Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap) runs this
# once per execution environment, waits for GET /health on AWS_LWA_PORT, then streams each invocation to it.
# uvicorn ignores X-Forwarded-For (its peer is the adapter on loopback); the app trusts only
# gateway.trusted_proxies from the config.
export PYTHONPATH="${LAMBDA_TASK_ROOT:-/var/task}${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m uvicorn handler.entry.asgi:app \
  --host 127.0.0.1 --port "${AWS_LWA_PORT:-8000}" \
  --no-proxy-headers --no-access-log --log-level warning --timeout-keep-alive 900
