"""The overhead benchmark: the gateway against a direct call to the same static upstream, in one run.

    python -m tests.bench.run [--duration 10] [--smoke] [--json FILE]

nginx (Debian's package) answers a fixed OpenAI chat completion (and a fixed SSE stream); the gateway
runs as `gateway serve` (one uvicorn worker, the embedded store, a key with a budget and rate limits
so every feature is on); wrk (Debian's package) drives both at 1, 8 and 64 connections, and at 1 and 8
also issue 9's reference, a bare Starlette + aiohttp proxy, in interleaved rounds (medians reported), so the
targets scaled to its speed compare figures taken under the same load on the machine. Reported:
requests/s and their ratio, latency p50/p99/p99.9 and the gateway's added latency, for Chat Completions,
the Messages pass-through and the Responses API; `gateway serve --workers 2` beside one worker; added
time to first byte for a stream, the gateway's RSS, warm Lambda invocations (in-process Mangum, upstream
mocked: the gateway's own work, beside the bare proxy's under Mangum), DynamoDB calls per request (moto's
server counts them), and cold import time; then issue 9's and issue 22's targets, met or not.
`--smoke` runs a few seconds in all and fails only on errors, never on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.bench import telemetry
from tests.support.serve import printed_url
from tests.support.servers import listening_socket

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "bench-upstream-key"
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
# The same request in the Responses API, as Codex sends it (nothing kept), translated to the chat upstream.
RESPONSES_BODY = {"model": "bench", "input": "Say hello.", "max_output_tokens": 16, "store": False}
COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1764000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20},
    "system_fingerprint": "fp_bench",
}


# The Messages API: a body as the anthropic SDK sends it, and Anthropic's answer to it.
MESSAGES_BODY = {"model": "bench-claude", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello."}]}
MESSAGE = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 9},
}


def sse_transcript() -> str:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764000000, "model": "gpt-4o-mini"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for word in ["Hello", "!", " How", " can", " I", " help", "?"]:
        events.append({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events.append({**base, "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def nginx_server(port: int, workdir: Path, locations: str) -> str:
    """An nginx config for the benchmarks: one worker in the foreground, files under `workdir`, long
    keep-alive, `locations` on 127.0.0.1:`port`."""
    return f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
"""


def nginx_conf(port: int, workdir: Path) -> str:
    """nginx answering a fixed completion and a fixed SSE stream, as OpenAI would."""

    def quoted(text: str) -> str:
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    return nginx_server(
        port,
        workdir,
        f"""        location = /v1/chat/completions {{
            default_type application/json;
            return 200 {quoted(json.dumps(COMPLETION))};
        }}
        location = /stream/v1/chat/completions {{
            default_type text/event-stream;
            return 200 {quoted(sse_transcript())};
        }}
        location = /anthropic/v1/messages {{
            default_type application/json;
            return 200 {quoted(json.dumps(MESSAGE))};
        }}""",
    )


def bench_config(upstream: str) -> dict[str, Any]:
    price = {"input": 0.15, "output": 0.60}
    return {
        "providers": {
            "static": {"type": "openai", "api_key": "env:BENCH_UPSTREAM_KEY", "base_url": f"{upstream}/v1"},
            "static-stream": {
                "type": "openai",
                "api_key": "env:BENCH_UPSTREAM_KEY",
                "base_url": f"{upstream}/stream/v1",
            },
            "static-anthropic": {
                "type": "anthropic",
                "api_key": "env:BENCH_UPSTREAM_KEY",
                "base_url": f"{upstream}/anthropic",
            },
        },
        "models": {
            "bench": {"deployments": [{"provider": "static", "model": "gpt-4o-mini"}], "price": price},
            "bench-claude": {
                "deployments": [{"provider": "static-anthropic", "model": "claude-haiku-4-5"}],
                "price": price,
            },
            "bench-stream": {"deployments": [{"provider": "static-stream", "model": "gpt-4o-mini"}], "price": price},
        },
    }


def bench_files(workdir: Path, upstream_port: int) -> dict[str, str]:
    """nginx's and the gateway's config in `workdir`, and the environment that serves the gateway from them
    (the embedded store in `workdir`)."""
    upstream = f"http://127.0.0.1:{upstream_port}"
    (workdir / "nginx.conf").write_text(nginx_conf(upstream_port, workdir))
    (workdir / "config.yaml").write_text(json.dumps(bench_config(upstream)))
    return {
        "GATEWAY_CONFIG": str(workdir / "config.yaml"),
        "GATEWAY_STORE": f"sqlite:///{workdir / 'bench.db'}",
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "GATEWAY_REGION": "us-east-1",
    }


@contextmanager
def process(
    args: list[str], env: dict[str, str] | None = None, log: Path | None = None, pass_fds: tuple[int, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=pass_fds)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def bare_proxy(client: str, upstream: str) -> Iterator[str]:
    """tests/bench/bare_proxy.py served by uvicorn as the gateway is (one worker, uvloop, httptools)."""
    with uvicorn_app("tests.bench.bare_proxy:app", {"UPSTREAM": upstream, "CLIENT": client}) as (url, _):
        yield url


# uvicorn serving an app (`argv[1]`) as `uvicorn APP --loop uvloop --http httptools --log-level warning
# --no-access-log` does, on the listening TCP socket of descriptor `argv[2]` (`uvicorn_app`).
UVICORN_ON_FD = (
    "import socket, sys, uvicorn; "
    "sock = socket.socket(fileno=int(sys.argv[2])); "
    "config = uvicorn.Config(sys.argv[1], loop='uvloop', http='httptools', log_level='warning', access_log=False); "
    "uvicorn.Server(config).run(sockets=[sock])"
)


@contextmanager
def uvicorn_app(app: str, environ: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The ASGI app `app` (`module:name`) served by uvicorn as the gateway is (one worker, uvloop, httptools), with
    `environ` added to the environment: its chat completions URL and its process id. It serves on a socket bound
    here (no other process can take the port before it starts, tests/support/servers.py), handed to uvicorn as a
    TCP socket (`UVICORN_ON_FD`): uvicorn's own `--fd` takes any descriptor for a Unix socket's, and serves its
    connections without `TCP_NODELAY`, so each answer waited on Nagle's algorithm and the peer's delayed ACK (the
    bare proxy measured 44 ms a request, 183 requests a second at 8 connections)."""
    listener = listening_socket()
    serve = [sys.executable, "-c", UVICORN_ON_FD, app, str(listener.fileno())]
    with listener, process(serve, {**os.environ, **environ}, pass_fds=(listener.fileno(),)) as served:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"
        wait_ready(url)  # any answer will do (a GET here is a 405)
        yield url, served.pid


@contextmanager
def nginx_on(listener: socket.socket, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with `workdir`'s nginx.conf, whose `listen` names `listener`'s address, serving on `listener`, which it
    inherits (the `NGINX` variable of its binary upgrades names the descriptor): no other process can take a port the
    benchmark holds bound, where one chosen in advance could be taken before nginx bound it. (Another nginx may serve
    on the same socket once the first has gone.)"""
    fd = listener.fileno()
    nginx = ["nginx", "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "nginx-error.log")]
    with process(nginx, {**os.environ, "NGINX": f"{fd};"}, pass_fds=(fd,)) as proc:
        yield proc


@contextmanager
def nginx_upstream(workdir: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """nginx answering as in the benchmark, with the gateway's files in `workdir` (`bench_files`): the URL of its
    chat completions, and the environment that serves the gateway in front of it."""
    with listening_socket() as listener:
        upstream_port = listener.getsockname()[1]
        env = {**os.environ, **bench_files(workdir, upstream_port)}
        direct = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        with nginx_on(listener, workdir):
            wait_ready(direct)
            yield direct, env


@contextmanager
def gateway_serve(env: dict[str, str], log: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`gateway serve` (with `args`) on a free port it binds itself (`--port 0`: one chosen here could be taken before
    it binds it, tests/support/servers.py): the process and its base URL, as it prints it."""
    serve = [sys.executable, "-m", "handler.entry.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
    with process(serve, env, log) as proc:
        yield proc, printed_url(log, proc)


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
done = function(summary, latency, requests)
    io.write(string.format("p99.9 %d us\\n", latency:percentile(99.9)))
end
"""


def parse_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, key: str, body: dict[str, Any], connections: int, duration: float, workdir: Path) -> dict[str, Any]:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(body)), key=key))
    threads = 1 if connections == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        result[f"p{pct}_ms"] = parse_ms(re.search(rf"\s{pct}(?:\.000)?%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    result["p999_ms"] = int(re.search(r"p99\.9 (\d+) us", out).group(1)) / 1000  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = (int(errors.group(1)) if errors else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    result["requests"] = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return result


def time_to_first_byte(url: str, key: str, body: dict[str, Any], n: int) -> list[float]:
    """ms from sending a request to the first byte of the answer's body, `n` times on one kept-alive
    connection. A raw socket, not an HTTP client: a client's own parsing (h11's, per chunk) would add more
    than the gateway does, and differently for the gateway's chunked stream and nginx's fixed-length one."""
    target = httpx.URL(url)
    payload = json.dumps(body).encode()
    request = (
        f"POST {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    samples = []
    with socket.create_connection((target.host, target.port or 80), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            started = time.perf_counter()
            sock.sendall(request)
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            head, _, rest = received.partition(b"\r\n\r\n")
            while not rest:
                rest += sock.recv(65536)
            samples.append((time.perf_counter() - started) * 1000)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"stream answered {head.splitlines()[0]!r}")
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            if fields.get(b"transfer-encoding") == b"chunked":
                while not rest.endswith(b"0\r\n\r\n"):
                    rest += sock.recv(65536)
            else:
                while len(rest) < int(fields[b"content-length"]):
                    rest += sock.recv(65536)
    return samples


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def gateway_pid(serve: subprocess.Popen[bytes]) -> int:
    return serve.pid


def new_environments_store(workdir: Path) -> str:
    """The URL of a copy of the benchmark's store as it is before any load: its key, no ledger. The cold start is
    counted on it, as a Lambda cold start (a new execution environment, its /tmp empty) opens a new store; on the
    store the load left behind, SQLite's own work opening it (its write-ahead log of the last run's 40,000 lines)
    added up to 3 million instructions that no Lambda cold start does."""
    import sqlite3

    copy = workdir / "cold-start.db"
    with closing(sqlite3.connect(workdir / "bench.db")) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
    return f"sqlite:///{copy}"


def mint_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "handler.entry.cli",
            "keys",
            "create",
            "--name",
            "bench",
            "--budget-usd",
            "1000000",
            "--rpm",
            "10000000",
            "--tpm",
            "1000000000",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    key: str = json.loads(out)["key"]
    return key


# What the card's packages cost to import, before any of the gateway's own code: the floor of a cold start. Each
# is imported as the gateway imports it: httpx without its command-line client (handler/__init__.py skips it),
# pydantic with its model machinery. `from pydantic import BaseModel` alone leaves nearly all of that machinery to
# the first model an application defines and validates (pydantic.fields, pydantic.types, annotated_types and the
# validator builder: 20–35 ms on the development machine), so the floor defines a one-field model and validates
# one value, which any pydantic application does; the time of the imports alone is printed beside it.
LIBRARIES_IMPORTED = (
    "import sys; sys.modules.setdefault('httpx._main', None); "
    "import asyncio, ssl, orjson, yaml, httptools, httpx, mangum, starlette.applications; "
    "from pydantic import BaseModel; from aws_lambda_powertools import Logger, Metrics"
)
LIBRARIES = (
    "import os; os.environ.setdefault('PYDANTIC_DISABLE_PLUGINS', '__all__'); "  # as handler/entry/lambda_handler.py
    + LIBRARIES_IMPORTED
    + "; exec('class First(BaseModel):\\n    x: int'); First(x=1)"
)


# After the cold import: the first invocation (a chat completion, upstream answering at once), which builds
# what the import left to first use.
FIRST_INVOCATION = "from tests.bench.lambda_warm import first_invocation_ms; then = first_invocation_ms()"
RESTORED = "from tests.bench.lambda_warm import restored_first_invocation_ms as r; then = r()"


class ColdStart:
    """One measurement of a cold start: `statement` timed in a new interpreter, then `after` run (untimed), which
    sets `then` (0.0 by default)."""

    def __init__(self, env: dict[str, str], statement: str, after: str = "then = 0.0") -> None:
        self.env = env
        self.code = (
            f"import time; t = time.perf_counter(); {statement}; i = (time.perf_counter() - t) * 1000; "
            f"{after}; print(i, then)"
        )


def cold_starts(measures: dict[str, ColdStart], runs: int) -> dict[str, tuple[float, float]]:
    """Per measure, the median ms its statement took and the median of what its `after` set `then` to, with
    bytecode compiled beforehand (as the deployed package ships it: infra/Makefile compiles it, and Lambda's
    /var/task is read-only). The measures take turns, round by round: this machine's speed drifts by a fifth
    over a minute, and a gateway measured after its floor would carry the drift into their ratio."""
    with tempfile.TemporaryDirectory(prefix="gateway-pyc-") as pyc:

        def once(measure: ColdStart) -> tuple[float, float]:
            env = {**measure.env, "PYTHONPYCACHEPREFIX": pyc}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            returncode, out, log = measured_child([sys.executable, "-c", measure.code], env)
            if returncode:
                raise RuntimeError(f"import failed: {log[-2000:]}")
            imported, then = map(float, out.strip().splitlines()[-1].split())
            return imported, then

        for measure in measures.values():
            once(measure)  # compiles and caches the bytecode
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in measures}
        for _ in range(runs):
            for name, measure in measures.items():
                samples[name].append(once(measure))
        return {
            name: (statistics.median(i for i, _ in taken), statistics.median(t for _, t in taken))
            for name, taken in samples.items()
        }


# The same cold start counted in instructions (valgrind's callgrind, a fixed hash seed, the interpreter left before
# its shutdown), which the machine's speed cannot move: on the two-vCPU VM consecutive interpreters ran the same
# import up to a third faster or slower than each other, so an 11-run median of the time still swung the ratio
# by a quarter between `make bench` runs. The first invocation's count is the difference between the import with
# the harness's own import (tests/bench/lambda_warm.py brings uvicorn and this module) and the same followed by
# the invocation.
LAMBDA_HANDLER = "import handler.entry.lambda_handler"
HARNESS_ONLY = "import tests.bench.lambda_warm"
# Once the handler is imported, the embedded store's checkpoint thread is held off (its rounds follow the wall
# clock, every `CHECKPOINT_EVERY_S`: under callgrind, which runs the process some fifty times slower, the harness's
# import made a different number of them each time, and the first invocation's count moved by a million
# instructions between runs). The thread makes one more round, in the harness's import (seconds under callgrind),
# which the difference takes out; its checkpoints, a copy of the write-ahead log off the request's path, are not
# counted. The import alone is counted as it is run: its rounds move it less (993.99 to 994.46 million over five
# runs), and setting the interval before it would import the store's module ahead of the handler's
# own start-up settings, which counted 13 to 21 million instructions more. (tests/bench/warm_instructions.py holds it
# off before the import: the difference of its two counts takes the import out.)
NO_CHECKPOINTS = "import adapters.store.sqlite as embedded; embedded.CHECKPOINT_EVERY_S = 1e9; "
COUNTED = {
    "libraries": LIBRARIES,
    "import": LAMBDA_HANDLER,
    "harness": LAMBDA_HANDLER + "; " + NO_CHECKPOINTS + HARNESS_ONLY,
    "invoked": LAMBDA_HANDLER + "; " + NO_CHECKPOINTS + HARNESS_ONLY + "; " + FIRST_INVOCATION,
}


def instructions(code: str, env: dict[str, str]) -> int:
    """Instructions the interpreter runs for `code` in a fresh process, its bytecode compiled beforehand."""
    env = {**env, "PYTHONHASHSEED": "0"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    statement = f"{code}; import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", statement], cwd=ROOT, env=env, capture_output=True, check=True)
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", statement],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    counted = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or counted is None:
        raise RuntimeError(f"callgrind failed: {done.stderr[-2000:]}")
    return int(counted.group(1))


def cold_instructions(env: dict[str, str]) -> dict[str, float] | None:
    """Millions of instructions: the card's libraries' import, the Lambda handler's import, its first
    invocation. None where valgrind is missing."""
    if shutil.which("valgrind") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="gateway-pyc-") as pyc:
        counts = {name: instructions(code, {**env, "PYTHONPYCACHEPREFIX": pyc}) for name, code in COUNTED.items()}
    return {
        "libraries": counts["libraries"] / 1e6,
        "import": counts["import"] / 1e6,
        "first_invocation": (counts["invoked"] - counts["harness"]) / 1e6,
    }


def cold_count_line(counted: dict[str, float] | None) -> str:
    if counted is None:
        return "the cold start in instructions: not counted (a smoke run, or valgrind missing)"
    total = counted["import"] + counted["first_invocation"]
    return (
        f"the cold start in instructions (callgrind): the handler's import {counted['import']:,.1f} million, its first "
        f"invocation {counted['first_invocation']:,.1f} million; the card's libraries {counted['libraries']:,.1f} "
        f"million ({total / counted['libraries']:.3f}×)"
    )


def measured_child(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run a measuring child: its exit status, what it printed, and its log. The log (a request line per
    invocation) goes to a file, as `gateway serve`'s does above, not to a pipe: on this two-vCPU VM every line
    through a pipe woke its reader, and that wake-up cost the writer 20 to 70 µs of its own time, depending on
    how long the reader had slept (measured with a bare loop writing such lines), which is the harness's cost,
    not the gateway's. The write itself is still timed."""
    with tempfile.TemporaryFile() as log:
        done = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        log.seek(0)
        return done.returncode, done.stdout, log.read().decode(errors="replace")


def child_result(module: str, *arguments: str, env: dict[str, str]) -> str:
    """The last line `python -m MODULE ARGUMENTS` prints: a measurement taken in a fresh interpreter."""
    returncode, out, log = measured_child([sys.executable, "-m", module, *arguments], env)
    if returncode:
        raise RuntimeError(f"python -m {module} {' '.join(arguments)} failed: {log[-3000:]}")
    return out.strip().splitlines()[-1]


def lambda_warm_us(env: dict[str, str], invocations: int, route: str = "chat") -> dict[str, float]:
    """Medians of a warm invocation of `route` (tests/bench/lambda_warm.py): in all, in its store calls, its own
    work, and the bare Mangum proxy's invocation, timed in turns with it in the same process."""
    figures = child_result("tests.bench.lambda_warm", str(invocations), route, env=env).split()
    total, store, own, bare = map(float, figures)
    return {"total": total, "store": store, "own": own, "bare": bare}


def run(duration: float, smoke: bool) -> dict[str, Any]:
    if not shutil.which("nginx") or not shutil.which("wrk"):
        raise SystemExit("the benchmark needs nginx and wrk: `make bench-tools` installs them")
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {sys.version.split()[0]}", "runs": []}
    connections = [1, 8] if smoke else [1, 8, 64]
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, listening_socket() as upstream_listener:
        workdir = Path(tmp)
        upstream_port = upstream_listener.getsockname()[1]
        upstream = f"http://127.0.0.1:{upstream_port}"
        env = {**os.environ, **bench_files(workdir, upstream_port)}
        key = mint_key(env)
        cold_store = new_environments_store(workdir)
        direct = f"{upstream}/v1/chat/completions"
        with (
            nginx_on(upstream_listener, workdir),
            gateway_serve(env, workdir / "gateway.log") as (served, gateway),
            bare_proxy("aiohttp", direct) as ref,
        ):
            wait_ready(direct)
            wait_ready(f"{gateway}/health")
            chat = f"{gateway}/v1/chat/completions"
            for url in (chat, ref):
                wrk(url, key, BODY, 8, 1, workdir)  # warm up
            rounds = 1 if smoke else ROUNDS
            reference: dict[int, dict[str, Any]] = {}
            for c in connections:
                # The issue's reference proxy is measured in the same rounds at 1 and 8 connections.
                targets = {"direct": direct, "gateway": chat, **({"reference": ref} if c in (1, 8) else {})}
                measured = interleaved(targets, key, c, duration, workdir, rounds)
                results["runs"].append({"connections": c, "direct": measured["direct"], "gateway": measured["gateway"]})
                if "reference" in measured:
                    direct_figures = {f"direct_{figure}": measured["direct"][figure] for figure in PERCENTILES}
                    reference[c] = {**measured["reference"], **direct_figures}
            results["reference"] = {
                "rps_8": reference[8]["rps"],
                "added_p50_1_ms": reference[1]["p50_ms"] - reference[1]["direct_p50_ms"],
                "added_p99_1_ms": reference[1]["p99_ms"] - reference[1]["direct_p99_ms"],
                "added_p999_1_ms": reference[1]["p999_ms"] - reference[1]["direct_p999_ms"],
                "errors": reference[1]["errors"] + reference[8]["errors"],
            }
            ttfb_n = 50 if smoke else 500
            stream_body = {**BODY, "model": "bench-stream", "stream": True}
            direct_ttfb = time_to_first_byte(f"{upstream}/stream/v1/chat/completions", key, stream_body, ttfb_n)
            gateway_ttfb = time_to_first_byte(chat, key, stream_body, ttfb_n)
            results["stream"] = {
                "direct_ttfb_p50_ms": statistics.median(direct_ttfb),
                "gateway_ttfb_p50_ms": statistics.median(gateway_ttfb),
            }
            # The Messages API beside Chat Completions: passed through to an Anthropic deployment, and translated
            # for an OpenAI one; each against the same upstream called directly.
            messages = f"{gateway}/v1/messages"
            native_direct = f"{upstream}/anthropic/v1/messages"
            results["messages"] = {
                "pass_through": interleaved(
                    {"direct": native_direct, "gateway": messages}, key, 8, duration, workdir, rounds, MESSAGES_BODY
                ),
                "pass_through_1": interleaved(
                    {"direct": native_direct, "gateway": messages}, key, 1, duration, workdir, rounds, MESSAGES_BODY
                ),
                "translated": interleaved(
                    {"direct": direct, "gateway": messages},
                    key,
                    8,
                    duration,
                    workdir,
                    rounds,
                    {**MESSAGES_BODY, "model": "bench"},
                ),
            }
            # The Responses API as Codex sends it, translated for the chat upstream it is compared with.
            responses = {"direct": direct, "gateway": f"{gateway}/v1/responses"}
            results["responses"] = interleaved(responses, key, 8, duration, workdir, rounds, RESPONSES_BODY)
            results["responses_1"] = interleaved(responses, key, 1, duration, workdir, rounds, RESPONSES_BODY)
            results["rss_mb"] = rss_mb(served.pid)
            log = (workdir / "gateway.log").read_text()
            results["gateway_5xx_or_tracebacks"] = log.count("Traceback")
            results["workers"] = workers_scaling(workdir, env, chat, key, duration, rounds)
        results["lambda_warm_us"] = lambda_warm_us({**env, "BENCH_GATEWAY_KEY": key}, 300 if smoke else 3000)
        results["lambda_routes_us"] = {
            route: lambda_warm_us({**env, "BENCH_GATEWAY_KEY": key}, 300 if smoke else 3000, route=route)
            for route in ("messages", "responses")
        }
        results["telemetry_us"] = telemetry.measure({**env, "BENCH_GATEWAY_KEY": key}, smoke)
        cold = {**env, "GATEWAY_STORE": cold_store, "BENCH_GATEWAY_KEY": key}
        starts = cold_starts(
            {
                "gateway": ColdStart(cold, LAMBDA_HANDLER, FIRST_INVOCATION),
                "libraries": ColdStart(env, LIBRARIES),
                "imported": ColdStart(env, LIBRARIES_IMPORTED),
                "restored": ColdStart(cold, LAMBDA_HANDLER, RESTORED),
            },
            1 if smoke else 11,
        )
        results["cold_import_ms"], results["first_invocation_ms"] = starts["gateway"]
        results["libraries_import_ms"] = starts["libraries"][0]
        results["libraries_imported_ms"] = starts["imported"][0]
        results["restored_invocation_ms"] = starts["restored"][1]
        results["cold_instructions_m"] = None if smoke else cold_instructions(cold)
        results["dynamodb"] = dynamodb_calls(workdir, upstream_listener, 20 if smoke else 200)
    return results


# Issue 9's figures for the bare Starlette + aiohttp proxy on its machine: this run measures the same proxy,
# so the issue's targets can be read at this run's speed (a slower or busier machine scales both alike).
ISSUE_BARE_RPS_8 = 8188.0
ISSUE_BARE_ADDED_P50_MS = 0.20
TARGETS = {"rps_8": 3500.0, "added_p50_ms": 0.5, "added_p99_ms": 2.0, "ttfb_ms": 1.0, "lambda_us": 300.0}


ROUNDS = 3
PERCENTILES = ("p50_ms", "p99_ms", "p999_ms")


def workers_scaling(
    workdir: Path, env: dict[str, str], one: str, key: str, duration: float, rounds: int
) -> dict[str, dict[str, Any]]:
    """`gateway serve --workers 2` beside the one-worker gateway at 8 connections, in the same rounds. The
    two workers share one store file (and a key of their own on it), so their budgets stay exact across
    both processes as they would in production."""
    store = workdir / "workers.db"
    workers_env = {**env, "GATEWAY_STORE": f"sqlite:///{store}"}
    workers_key = mint_key(workers_env)
    with gateway_serve(workers_env, workdir / "gateway-workers.log", "--workers", "2") as (_, url):
        wait_ready(f"{url}/health")
        two = f"{url}/v1/chat/completions"
        since = time.time()
        warmed = wrk(two, workers_key, BODY, 8, 1, workdir)  # warm up both workers' connections
        targets = {"one worker": one, "two workers": two}
        scaling = interleaved(targets, key, 8, duration, workdir, rounds, keys={"two workers": workers_key})
        served = warmed["requests"] + scaling["two workers"]["requests"]
        scaling["budget"] = budget_after(url, workers_env, workers_key, since, served)
        return scaling


def budget_after(url: str, env: dict[str, str], key: str, since: float, served: int) -> dict[str, Any]:
    """Whether the key's budget came out exact after the load: once the workers' unused slices have gone back,
    its spend (`GET /v1/key`, from a worker) is the sum of its ledger lines (read from the file), nothing stays
    reserved, and there is a line for every request wrk saw answered (and at most one more per connection wrk
    cut at the end of a run, which the gateway still answered)."""
    from adapters.store import open_store
    from adapters.store.slices import IDLE_S
    from handler.pipeline.keys import split_key
    from handler.ports import UsageQuery

    parts = split_key(key)
    assert parts is not None, "the bench's key is one the gateway minted"

    async def ledger() -> list[Any]:
        store = open_store(env["GATEWAY_STORE"])
        try:
            return await store.usage(UsageQuery([parts[0]], since - 1, time.time() + 60))
        finally:
            await store.close()

    deadline = time.monotonic() + 4 * IDLE_S + 5
    while True:  # the workers return unused slices after IDLE_S without requests; settlements land meanwhile
        time.sleep(IDLE_S / 2)
        me = httpx.get(f"{url}/v1/key", headers={"authorization": f"Bearer {key}"}, timeout=10).json()
        if me["reserved_usd"] < 1e-12 or time.monotonic() > deadline:
            break
    lines = asyncio.run(ledger())
    ledger_usd = sum(line.cost_usd or 0.0 for line in lines)
    exact = (
        abs(me["spent_usd"] - ledger_usd) < 1e-9
        and abs(me["reserved_usd"]) < 1e-9
        and served <= len(lines) <= served + 8 * (ROUNDS + 1)
    )
    return {
        "served": served,
        "lines": len(lines),
        "ledger_usd": ledger_usd,
        "spent_usd": me["spent_usd"],
        "reserved_usd": me["reserved_usd"],
        "exact": exact,
    }


def interleaved(
    targets: dict[str, str],
    key: str,
    connections: int,
    duration: float,
    workdir: Path,
    rounds: int,
    body: dict[str, Any] = BODY,
    keys: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """wrk on each target in turn, `rounds` times (`duration` shared out among the rounds), so that a
    machine slowing down mid-run slows every target alike; per target, the medians of its rounds.
    `keys`: a target's own key, where it is not `key`."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, url in targets.items():
            runs[name].append(wrk(url, (keys or {}).get(name, key), body, connections, duration / rounds, workdir))
    return {
        name: {
            **{figure: statistics.median(r[figure] for r in results) for figure in ("rps", *PERCENTILES)},
            "errors": sum(r["errors"] for r in results),
            "requests": sum(r["requests"] for r in results),
        }
        for name, results in runs.items()
    }


def dynamodb_calls(workdir: Path, upstream_listener: socket.socket, requests: int) -> dict[str, Any]:
    """Requests through a gateway on moto's DynamoDB server, which counts the calls it serves (nginx on the
    benchmark's upstream socket again, `upstream_listener`)."""
    from tests.support.dynamo import DynamoServer

    server = DynamoServer().start()
    try:
        table = server.create_table()
        upstream = f"http://127.0.0.1:{upstream_listener.getsockname()[1]}"
        (workdir / "config.yaml").write_text(json.dumps(bench_config(upstream)))
        env = {
            **os.environ,
            "GATEWAY_CONFIG": str(workdir / "config.yaml"),
            "GATEWAY_STORE": server.store_url(table),
            "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        key = mint_key(env)
        with nginx_on(upstream_listener, workdir), gateway_serve(env, workdir / "gateway-ddb.log") as (_, url):
            wait_ready(f"{url}/health")
            wait_ready(f"{upstream}/v1/chat/completions")
            statuses = asyncio.run(fire(f"{url}/v1/chat/completions", key, 1))  # key now cached
            before = server.calls()
            statuses += asyncio.run(fire(f"{url}/v1/chat/completions", key, requests))
            time.sleep(0.5)  # settlements run after the answer
            calls = server.calls() - before
            log = (workdir / "gateway-ddb.log").read_text().splitlines()
            failures = [line for line in log if '"status":2' not in line]
        return {
            "requests": requests,
            "calls_per_request": calls / requests,
            "non_200": sum(1 for s in statuses if s != 200),
            "failures": failures[:5],
        }
    finally:
        server.stop()


async def fire(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=8)) as client:
        semaphore = asyncio.Semaphore(8)

        async def one() -> int:
            async with semaphore:
                response = await client.post(url, json=BODY, headers={"authorization": f"Bearer {key}"})
                return response.status_code

        return list(await asyncio.gather(*(one() for _ in range(n))))


def table(results: dict[str, Any]) -> str:
    lines = [
        f"machine: {results['machine']}",
        "| conns | direct req/s | gateway req/s | ratio | direct p50/p99/p99.9 ms | gateway p50/p99/p99.9 ms "
        "| added p50/p99/p99.9 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        d, g = run["direct"], run["gateway"]
        lines.append(
            f"| {run['connections']} | {d['rps']:,.0f} | {g['rps']:,.0f} | {g['rps'] / d['rps']:.2f} "
            f"| {percentiles(d)} | {percentiles(g)} | {added(g, d)} | {d['errors'] + g['errors']} |"
        )
    lines += [
        "",
        "Other routes, each beside its upstream called directly in the same rounds:",
        "| route | conns | direct req/s | gateway req/s | gateway p50/p99/p99.9 ms | added p50/p99/p99.9 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in (
        ("/v1/messages pass-through", results["messages"]["pass_through_1"]),
        ("/v1/messages pass-through", results["messages"]["pass_through"]),
        ("/v1/messages translated", results["messages"]["translated"]),
        ("/v1/responses translated", results["responses_1"]),
        ("/v1/responses translated", results["responses"]),
    ):
        d, g = run["direct"], run["gateway"]
        conns = 1 if run is results["responses_1"] or run is results["messages"]["pass_through_1"] else 8
        lines.append(f"| {label} | {conns} | {d['rps']:,.0f} | {g['rps']:,.0f} | {percentiles(g)} | {added(g, d)} |")
    w = results["workers"]
    one, two, budget = w["one worker"], w["two workers"], w["budget"]
    s = results["stream"]
    lam = results["lambda_warm_us"]
    lines += [
        "",
        f"`gateway serve --workers 2` at 8 connections: {two['rps']:,.0f} req/s against one worker's "
        f"{one['rps']:,.0f} in the same rounds ({two['rps'] / one['rps']:.2f}×), p50/p99/p99.9 {percentiles(two)} ms; "
        f"its key's budget {'exact' if budget['exact'] else 'NOT exact'}: spent ${budget['spent_usd']:.9f}, ledger "
        f"${budget['ledger_usd']:.9f} over {budget['lines']:,} lines for {budget['served']:,} answers wrk saw, "
        f"reserved ${budget['reserved_usd']:.9f}",
        f"stream: time to first byte p50 direct {s['direct_ttfb_p50_ms']:.3f} ms, "
        f"gateway {s['gateway_ttfb_p50_ms']:.3f} ms, added {s['gateway_ttfb_p50_ms'] - s['direct_ttfb_p50_ms']:.3f} ms",
        f"gateway RSS after load: {results['rss_mb']:.0f} MB",
        f"warm Lambda invocation (Mangum, upstream mocked): {lam['total']:.0f} µs, of which store calls "
        f"{lam['store']:.0f} µs and the gateway's own work {lam['own']:.0f} µs; the bare proxy under Mangum "
        f"on the same client, in turns with it: {lam['bare']:.0f} µs",
        *(
            f"warm Lambda invocation, {label}: {r['total']:.0f} µs, of which store calls {r['store']:.0f} µs and "
            f"the gateway's own work {r['own']:.0f} µs (the bare proxy in turns with it: {r['bare']:.0f} µs)"
            for label, r in (
                ("/v1/messages passed through", results["lambda_routes_us"]["messages"]),
                ("/v1/responses translated", results["lambda_routes_us"]["responses"]),
            )
        ),
        f"cold import of the Lambda handler (config, store and app built): {results['cold_import_ms']:.0f} ms, "
        f"then the first invocation {results['first_invocation_ms']:.0f} ms; "
        f"the card's libraries alone: {results['libraries_import_ms']:.0f} ms (imported only, pydantic's first "
        f"model left out: {results['libraries_imported_ms']:.0f} ms); after a SnapStart restore (Lambda's "
        f"hooks run) the first invocation's own work {results['restored_invocation_ms'] * 1000:.0f} µs against a "
        f"warm one's {lam['own']:.0f} µs",
        cold_count_line(results.get("cold_instructions_m")),
        f"DynamoDB store: {results['dynamodb']['calls_per_request']:.2f} calls per request "
        f"over {results['dynamodb']['requests']} requests ({results['dynamodb']['non_200']} not 200)",
    ]
    lines += telemetry.rows(results["telemetry_us"])
    ref = results["reference"]
    speed = ref["rps_8"] / ISSUE_BARE_RPS_8  # < 1: this run is slower than the issue's machine
    lag = max(ref["added_p50_1_ms"], 0.001) / ISSUE_BARE_ADDED_P50_MS  # > 1: latencies here are longer
    runs = {r["connections"]: r for r in results["runs"]}
    one, eight = runs[1], runs[8]
    measured = {
        "rps_8": eight["gateway"]["rps"],
        "added_p50_ms": one["gateway"]["p50_ms"] - one["direct"]["p50_ms"],
        "added_p99_ms": one["gateway"]["p99_ms"] - one["direct"]["p99_ms"],
        "ttfb_ms": s["gateway_ttfb_p50_ms"] - s["direct_ttfb_p50_ms"],
        "lambda_us": lam["own"],
    }
    scaled = {
        "rps_8": TARGETS["rps_8"] * speed,
        "added_p50_ms": TARGETS["added_p50_ms"] * lag,
        "added_p99_ms": TARGETS["added_p99_ms"] * lag,
        "ttfb_ms": TARGETS["ttfb_ms"] * lag,
        "lambda_us": TARGETS["lambda_us"] / speed,
    }
    lines += [
        "",
        f"reference, a bare Starlette + aiohttp proxy, in the same rounds: {ref['rps_8']:,.0f} req/s at 8 connections "
        f"(issue: {ISSUE_BARE_RPS_8:,.0f}), added p50 {ref['added_p50_1_ms']:.3f} ms at 1 (issue: "
        f"{ISSUE_BARE_ADDED_P50_MS} ms); issue 9's targets at this run's speed:",
        "| target | issue | at this run's speed | measured | met |",
        "|---|---|---|---|---|",
    ]
    for name, label in (
        ("rps_8", "req/s at 8 connections (at least)"),
        ("added_p50_ms", "added p50 ms at 1 connection (at most)"),
        ("added_p99_ms", "added p99 ms at 1 connection (at most)"),
        ("ttfb_ms", "added time to first byte ms (at most)"),
        ("lambda_us", "warm Lambda µs of the gateway's own work (at most)"),
    ):
        met = measured[name] >= scaled[name] if name == "rps_8" else measured[name] <= scaled[name]
        verdict = "yes" if met else "no"
        lines.append(f"| {label} | {TARGETS[name]:,.1f} | {scaled[name]:,.2f} | {measured[name]:,.2f} | {verdict} |")
    return "\n".join(lines + ["", *issue22_targets(results)])


def percentiles(run: dict[str, Any]) -> str:
    return " / ".join(f"{run[figure]:.3f}" for figure in PERCENTILES)


def added(gateway: dict[str, Any], direct: dict[str, Any]) -> str:
    return " / ".join(f"{gateway[figure] - direct[figure]:.3f}" for figure in PERCENTILES)


def issue22_targets(results: dict[str, Any]) -> list[str]:
    """Issue 22's targets, each against a figure of the same run (the bare proxy's, one worker's, the card's
    libraries')."""
    ref = results["reference"]
    runs = {r["connections"]: r for r in results["runs"]}
    one, eight = runs[1], runs[8]
    workers = results["workers"]
    rows = []
    # Per API (the prefix names it; none for Chat Completions): added p99 over its own upstream, req/s, warm Lambda.
    for prefix, at_1, at_8, lam in (
        ("", one, eight, results["lambda_warm_us"]),
        (
            "/v1/messages pass-through: ",
            results["messages"]["pass_through_1"],
            results["messages"]["pass_through"],
            results["lambda_routes_us"]["messages"],
        ),
        ("/v1/responses: ", results["responses_1"], results["responses"], results["lambda_routes_us"]["responses"]),
    ):
        rows += [
            (
                f"{prefix}added p99 ms at 1 connection, at most 1.5 × the bare proxy's",
                at_1["gateway"]["p99_ms"] - at_1["direct"]["p99_ms"],
                1.5 * ref["added_p99_1_ms"],
                False,
            ),
            (
                f"{prefix}req/s at 8 connections, at least 0.8 × the bare proxy's",
                at_8["gateway"]["rps"],
                0.8 * ref["rps_8"],
                True,
            ),  # fmt: skip
            (
                f"{prefix}warm Lambda µs of own work, at most the bare Mangum proxy's + 250",
                lam["own"],
                lam["bare"] + 250,  # the bare proxy timed in turns with this API's invocations
                False,
            ),
        ]
    counted = results.get("cold_instructions_m")
    if counted is not None:
        rows.append(
            (
                "Lambda cold import and first invocation, in millions of instructions, at most 1.15 × the libraries'",
                counted["import"] + counted["first_invocation"],
                1.15 * counted["libraries"],
                False,
            )
        )
    rows += [
        (
            "req/s of --workers 2 at 8 connections, at least 1.6 × one worker's",
            workers["two workers"]["rps"],
            1.6 * workers["one worker"]["rps"],
            True,
        ),
        (
            "Lambda cold import and first invocation ms, at most 1.15 × the card's libraries' import",
            results["cold_import_ms"] + results["first_invocation_ms"],
            1.15 * results["libraries_import_ms"],
            False,
        ),
    ]
    lines = [
        f"issue 22's targets (the bare proxy's added p99/p99.9 at 1 connection: {ref['added_p99_1_ms']:.3f} / "
        f"{ref['added_p999_1_ms']:.3f} ms):",
        "| target | bound in this run | measured | met |",
        "|---|---|---|---|",
    ]
    for label, measured, bound, at_least in rows:
        met = measured >= bound if at_least else measured <= bound
        lines.append(f"| {label} | {bound:,.2f} | {measured:,.2f} | {'yes' if met else 'no'} |")
    return lines


# The most a bare proxy on loopback may add at p50 before its figures are taken for a fault (`errors_in`).
REFERENCE_P50_MS = 20.0


def errors_in(results: dict[str, Any]) -> list[str]:
    found = []
    for run in results["runs"]:
        for side in ("direct", "gateway"):
            if run[side]["errors"] or not run[side]["requests"]:
                found.append(f"{side} at {run['connections']} connections: {run[side]['errors']} errors")
    routes = {
        **{f"/v1/messages {name}": run for name, run in results["messages"].items()},
        "/v1/responses": results["responses"],
        "/v1/responses at 1 connection": results["responses_1"],
        "--workers 2": {name: results["workers"][name] for name in ("one worker", "two workers")},
    }
    if not results["workers"]["budget"]["exact"]:
        found.append(f"--workers 2: the key's budget is not exact after the load: {results['workers']['budget']}")
    for name, run in routes.items():
        for side, figures in run.items():
            if figures["errors"] or not figures["requests"]:
                found.append(f"{name}, {side}: {figures['errors']} errors")
    if results["reference"]["errors"]:
        found.append(f"the reference proxy: {results['reference']['errors']} errors")
    # Not a timing target: a proxy on loopback answers in a millisecond or two, and one taking tens waits on something
    # other than its work (Nagle's algorithm: `uvicorn_app`), which makes every ratio against it meaningless.
    if results["reference"]["added_p50_1_ms"] > REFERENCE_P50_MS:
        found.append(f"the reference proxy added {results['reference']['added_p50_1_ms']:.1f} ms at p50: not its work")
    if results["gateway_5xx_or_tracebacks"]:
        found.append("the gateway logged tracebacks")
    if results["dynamodb"]["non_200"]:
        found.append(f"{results['dynamodb']['non_200']} DynamoDB-store requests failed")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--smoke", action="store_true", help="a few seconds in all; fails only on errors")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = run(1.0 if args.smoke else args.duration, args.smoke)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    problems = errors_in(results)
    for problem in problems:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
