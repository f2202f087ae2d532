"""Replays events through the Lambda handler in a fresh interpreter, as one warm execution environment.

Usage: python -m tests.support.lambda_replay EVENT.json [EVENT.json ...] — prints one JSON line per
invocation: {"event", "status", "headers", "body", "ms", "payload_bytes", "request_lines", "unsettled", "awaiting",
"ledger_lines"}. The
environment (GATEWAY_CONFIG, GATEWAY_STORE, provider keys) comes from the caller; `ledger_lines` is counted for an
embedded store's sqlite:/// URL only (None for another). `LAMBDA_FREEZE_S`, if set, is a pause between invocations
during which nothing runs in the process, no thread either, as Lambda freezes an environment between them: the
process is stopped (SIGSTOP) and continued by a helper (the event loop does not run, so nothing reads what peers send
or notices that they closed; an export the OTLP exporter's thread has in flight stays in flight). `LAMBDA_TIMEOUT_MS`,
if set, is the function's timeout: each invocation's context then tells its remaining time, running down from it, as
Lambda's does. `LAMBDA_SNAPSTART=1` runs SnapStart's hooks as Lambda's runtime does (`snapshot_restore_py`'s
registries) after init: those before the snapshot, then, `LAMBDA_RESTORE_AFTER_S` later (the process stopped, as
a snapshot is), those after a restore, before the first invocation.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO


class Context:
    function_name = "GatewayFunction"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:eu-central-1:123456789012:function:GatewayFunction"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


class TimedContext(Context):
    """A context with the invocation's remaining time, as Lambda's: `timeout_ms` from its making, running down."""

    def __init__(self, timeout_ms: float) -> None:
        self.deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def ledger_lines(store_url: str) -> int | None:
    """The ledger's lines in the embedded store's file, read as another process would: what has committed."""
    if not store_url.startswith("sqlite:///"):
        return None
    db = sqlite3.connect(store_url.removeprefix("sqlite:///"))
    try:
        return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])
    finally:
        db.close()


class LineCounter:
    """`sys.stdout` for the handler: passes everything to `out`, counting the request log lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.buffer = self
        self.requests = 0

    def write(self, data: str | bytes) -> int:
        text = data if isinstance(data, str) else data.decode()
        self.requests += text.count('"message":"request"')
        self.out.write(text)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def freeze(seconds: float) -> None:
    """Stop the whole process for `seconds`, every thread of it, as Lambda's freeze does."""
    helper = subprocess.Popen(["sh", "-c", f"sleep {seconds}; kill -CONT {os.getpid()}"])
    os.kill(os.getpid(), signal.SIGSTOP)
    helper.wait()


def main(paths: list[str]) -> None:
    results = sys.stdout
    logged = LineCounter(sys.stderr)
    sys.stdout = logged  # the handler's log lines go to stderr here, leaving stdout to the results
    from handler.entry.lambda_handler import gateway, handler

    if os.environ.get("LAMBDA_SNAPSTART") == "1":
        import snapshot_restore_py

        for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
            hook(*args, **kwargs)
        freeze(float(os.environ.get("LAMBDA_RESTORE_AFTER_S", "0.1")))
        for hook, args, kwargs in snapshot_restore_py.get_after_restore():
            hook(*args, **kwargs)
    freeze_s = float(os.environ.get("LAMBDA_FREEZE_S", "0"))
    timeout_ms = os.environ.get("LAMBDA_TIMEOUT_MS")
    for number, path in enumerate(paths):
        if number and freeze_s:
            freeze(freeze_s)
        event = json.loads(Path(path).read_text())
        started = time.perf_counter()
        before = logged.requests
        lines_before = ledger_lines(os.environ["GATEWAY_STORE"])
        response = handler(event, TimedContext(float(timeout_ms)) if timeout_ms else Context())
        elapsed = (time.perf_counter() - started) * 1000
        lines_after = ledger_lines(os.environ["GATEWAY_STORE"])
        body = response.get("body", "")
        if response.get("isBase64Encoded"):
            import base64

            body = base64.b64decode(body).decode()
        line = {
            "event": Path(path).stem,
            "status": response["statusCode"],
            "headers": response.get("headers", {}),
            "multi_value_headers": response.get("multiValueHeaders", {}),  # (REST APIs', ALBs' that send them)
            "body": body,
            "ms": elapsed,
            # What the runtime posts to Lambda (awslambdaric's JSON, `ensure_ascii=False`), which takes at most 6 MB.
            "payload_bytes": len(json.dumps(response, ensure_ascii=False).encode()),
            "request_lines": logged.requests - before,  # written before the handler returned
            "unsettled": len(gateway.background),  # settlements still running when it returned
            "awaiting": len(gateway.awaiting),  # admissions past a request's deadline still unanswered then
            # committed before it returned
            "ledger_lines": None if lines_before is None or lines_after is None else lines_after - lines_before,
        }
        results.write(json.dumps(line) + "\n")
        results.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
