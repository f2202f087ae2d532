"""Start-up in a fresh interpreter, as Lambda's init phase and `gateway serve`'s workers run it."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bench.run import mint_key
from tests.support.servers import SocketServer
from tests.support.tls import self_signed

ROOT = Path(__file__).resolve().parents[4]


def start_up_environment(tmp_path: Path, **environ: str) -> dict[str, str]:
    """An environment's start-up: the embedded store in `tmp_path`, no connection warming, not on Lambda;
    `environ` added (over those)."""
    env = {**os.environ, "GATEWAY_STORE": f"sqlite:///{tmp_path / 'gateway.db'}", "GATEWAY_WARM": "off"}
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    return {**env, **environ}


def started(code: str, tmp_path: Path, **environ: str) -> Any:
    """What `code` prints last (as JSON), run in a fresh interpreter in `start_up_environment`."""
    env = start_up_environment(tmp_path, **environ)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# Counts the collections start-up runs (those before its `gc.freeze()`), then says how the collector is left.
PROBE = """
import gc, json
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and not gc.get_freeze_count() and collections.append(1))
import {module}
print(json.dumps({{"collections": len(collections), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""


@pytest.mark.parametrize("module", ["handler.entry.lambda_handler", "handler.entry.asgi"])
def test_start_up_runs_no_collection_of_its_own_and_leaves_the_collector_on(module: str, tmp_path: Path) -> None:
    state = started(PROBE.format(module=module), tmp_path)
    # None of its own (without turning the collector off: about a hundred); one young collection may fall in
    # importing the packages above the entry module, before it can turn the collector off.
    assert state["collections"] <= 1
    assert state["enabled"] is True
    assert state["frozen"] > 10_000  # what start-up built is out of later collections' sight


# Runs SnapStart's hooks as Lambda's runtime does (`snapshot_restore_py`'s registries), around the snapshot.
SNAPSTART = """
import asyncio, contextlib, io, json, sys
import snapshot_restore_py
from pydantic import BaseModel
import handler.entry.lambda_handler as entry
import handler.entry.priming as priming
from handler.ports import UsageQuery
from handler.telemetry import prometheus

primed = []
prime = priming.prime
priming.prime = lambda *args, **kwargs: primed.append(prime(*args, **kwargs))

def models():
    pending, found = [BaseModel], []
    while pending:
        for model in pending.pop().__subclasses__():
            if model.__module__.startswith(("handler.", "adapters.")):
                found.append(model)
            pending.append(model)
    return found

def left_to_first_use():
    return [model.__name__ for model in models() if not model.__pydantic_complete__]

router_at_init = entry.app._starlette is not None
wire_at_init = "adapters.providers.anthropic.wire" in sys.modules
built_at_init = sorted(f"{model.__module__}.{model.__name__}" for model in models() if model.__pydantic_complete__)
at_init = left_to_first_use()
snapshot_client = entry.gateway.upstream
metrics = prometheus.REGISTRY.render()
written = io.StringIO()
with contextlib.redirect_stdout(written):
    for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
        hook(*args, **kwargs)
in_snapshot = left_to_first_use()
router_in_snapshot = entry.app._starlette is not None
later = sorted(name for name in ("handler.chunks", "handler.embeddings", "adapters.providers.anthropic.wire")
               if name in sys.modules)
from adapters.http import parsed_url

def parsed_before(url):
    hits = parsed_url.cache_info().hits
    parsed_url(url)
    return parsed_url.cache_info().hits > hits

urls = {url: parsed_before(url) for url in ("http://127.0.0.1:9/v1/chat/completions", "http://127.0.0.1:9/v1/messages")}
store = entry.gateway.store
left = {
    "stdout": written.getvalue(),
    "metrics_changed": prometheus.REGISTRY.render() != metrics,
    "keys": len(entry._loop.run_until_complete(store.list_keys())),
    "ledger": len(entry._loop.run_until_complete(store.usage(UsageQuery(None, 0, 2e9)))),
}
for hook, args, kwargs in snapshot_restore_py.get_after_restore():
    hook(*args, **kwargs)
new_client = entry.gateway.upstream is not snapshot_client
print(json.dumps({"at_init": len(at_init), "built_at_init": built_at_init, "in_snapshot": in_snapshot,
                  "router": [router_at_init, router_in_snapshot], "later": later, "wire_at_init": wire_at_init,
                  "new_client": new_client, "primed": primed, "urls": urls, "left": left}))
"""


def test_a_snapstart_snapshot_holds_every_validator_and_a_primed_request_path_and_nothing_else(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers:\n  local: {type: openai, api_key: env:LOCAL_KEY, base_url: 'http://127.0.0.1:9/v1'}\n"
        "  claude: {type: anthropic, api_key: env:LOCAL_KEY, base_url: 'http://127.0.0.1:9'}\n"
        "models:\n  m: {deployments: [{provider: local, model: m}], price: {input: 1, output: 1}}\n"
        "  c: {deployments: [{provider: claude, model: c}], price: {input: 1, output: 1}}\n"
    )
    state = started(SNAPSTART, tmp_path, GATEWAY_CONFIG=str(config), LOCAL_KEY="sk-local")
    # The cold start builds one validator, the config's (which holds its parts'; each part's own would be a
    # second build of the same schema)...
    assert state["built_at_init"] == ["handler.config.Config"]
    assert state["at_init"] > 20
    assert state["router"] == [False, True]  # (the router too: left to first use, built before the snapshot)
    # (the models made on first use: made, Anthropic's answer models too, which the import left out)
    assert state["later"] == ["adapters.providers.anthropic.wire", "handler.chunks", "handler.embeddings"]
    assert state["wire_at_init"] is False
    assert state["in_snapshot"] == []  # ...a restored environment's first invocation builds nothing
    assert state["new_client"]  # and the restore hook gave it a fresh upstream client
    # Before the snapshot, each API's requests ran through the request path (handler/entry/priming.py)...
    rounds = 24
    assert state["primed"] == [
        {"/v1/chat/completions 200": rounds, "/v1/messages 200": rounds, "/v1/responses 200": rounds}
    ]
    # ...the real deployments' endpoints were parsed, as their adapters build them (the throwaway gateway's
    # are not the real ones)...
    assert state["urls"] == {"http://127.0.0.1:9/v1/chat/completions": True, "http://127.0.0.1:9/v1/messages": True}
    # ...and left nothing: no request line or metric written, no key or ledger line in the gateway's store.
    assert state["left"] == {"stdout": "", "metrics_changed": False, "keys": 0, "ledger": 0}


# Two execution environments restored from one snapshot, as SnapStart restores it (the interpreter's memory, `random`'s
# state with it): each runs the after-restore hooks, then draws.
RESTORED_TWICE = """
import json, random
import snapshot_restore_py
import handler.entry.lambda_handler as entry
for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
    hook(*args, **kwargs)
snapshot = random.getstate()
draws = []
for environment in range(2):
    random.setstate(snapshot)
    for hook, args, kwargs in snapshot_restore_py.get_after_restore():
        hook(*args, **kwargs)
    draws.append([random.random() for _ in range(4)])
print(json.dumps(draws))
"""


def test_environments_restored_from_one_snapshot_draw_different_random_numbers(tmp_path: Path) -> None:
    """`random` drives the retry jitter and the store's periodic sweeps: environments restored from one snapshot drew
    the same numbers (the same jitter, sweeps within 0.21 s of each other where they should spread over 120 s) until
    the restore hook seeded it afresh, as AWS's SnapStart guide asks."""
    first, second = started(RESTORED_TWICE, tmp_path)
    assert first != second


# On Lambda (init opens a connection to each model's nearest deployment), SnapStart's hooks before the snapshot, run
# as Lambda's runtime runs them; then the process's sockets connected to the provider's port (its descriptors'
# inodes looked up in the kernel's TCP tables), and the timers the environment's loop holds.
SNAPSHOT_SOCKETS = """
import json, os
import snapshot_restore_py
import handler.entry.lambda_handler as entry

def to_provider(port):
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    found += 1
    return found

port = int(os.environ["PROVIDER_PORT"])
at_init = to_provider(port)
for hook, args, kwargs in snapshot_restore_py.get_before_snapshot():
    hook(*args, **kwargs)
timers = [repr(timer) for timer in entry._loop._scheduled if not timer.cancelled()]
print(json.dumps({"at_init": at_init, "in_snapshot": to_provider(port), "timers": timers}))
"""


def idle_provider(tls: ssl.SSLContext | None, ended: threading.Event) -> Callable[[socket.socket], None]:
    """A provider that takes a connection (over TLS with `tls`) and holds it, saying nothing, until `ended`: a TLS
    close from its client waits on it for the peer's close_notify."""

    def serve(raw: socket.socket) -> None:
        try:
            conn = tls.wrap_socket(raw, server_side=True) if tls is not None else raw
        except OSError:
            raw.close()
            return
        with conn:
            ended.wait()

    return serve


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_snapstart_snapshot_holds_no_connection_to_a_provider_nor_its_timer(scheme: str, tmp_path: Path) -> None:
    """The hook before the snapshot closed the connections init opened with `run_until_complete(aclose())`: a TLS
    close only starts the TLS shutdown (close_notify, then the peer's, under a 30 s timer), and the loop stopped
    before it ran, so the snapshot held the socket to an https provider and the shutdown's timer, and every
    environment restored from it inherited them. Found by review."""
    certificate = self_signed(tmp_path)
    ended = threading.Event()
    provider = SocketServer(idle_provider(certificate.server_context() if scheme == "https" else None, ended))
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"providers:\n  p: {{type: openai, api_key: env:P_KEY, base_url: '{scheme}://127.0.0.1:{provider.port}/v1'}}\n"
        "models:\n  m: {deployments: [{provider: p, model: m}], price: {input: 1, output: 1}}\n"
    )
    try:
        state = started(
            SNAPSHOT_SOCKETS,
            tmp_path,
            AWS_LAMBDA_FUNCTION_NAME="GatewayFunction",  # on Lambda: init opens the connections
            GATEWAY_WARM="on",
            GATEWAY_CONFIG=str(config),
            P_KEY="sk-test",
            SSL_CERT_FILE=str(certificate.cert),
            PROVIDER_PORT=str(provider.port),
        )
    finally:
        ended.set()
        provider.close()
    assert state["at_init"] == 1, state  # init opened one connection to the provider...
    assert state["in_snapshot"] == 0, state  # ...which the hook closed before the snapshot
    assert state["timers"] == [], state


# Which front-ends (handler.api.route_table.FRONT_ENDS) an entry point's start-up imports.
IMPORTED = """
import json, sys
import {module}
from handler.api.route_table import FRONT_ENDS
print(json.dumps(sorted(name for name in FRONT_ENDS if name in sys.modules)))
"""


@pytest.mark.parametrize(
    ("module", "front_ends"),
    [
        ("handler.entry.lambda_handler", []),  # the cold start: each on its first request
        (
            "handler.entry.asgi",  # a server's start-up: all, so no first request waits
            [
                "handler.api.info_routes",
                "handler.api.key_routes",
                "handler.api.messages_routes",
                "handler.api.responses_routes",
                "handler.dashboard.routes",
            ],
        ),
    ],
)
def test_the_lambda_cold_start_imports_no_front_end_a_server_imports_them_all(
    module: str, front_ends: list[str], tmp_path: Path
) -> None:
    assert started(IMPORTED.format(module=module), tmp_path) == front_ends


# After `import_front_ends`, building every front-end `Endpoints` leaves to first use imports none of the gateway's
# modules (a library may still load a part of its own on first use: the dashboard reads its files).
EVERY_FRONT_END = """
import functools, json, sys
import handler.entry.lambda_handler as entry
from handler.api.route_table import Endpoints, import_front_ends
import_front_ends()
before = set(sys.modules)
endpoints = Endpoints(entry.app.direct["/v1/chat/completions"].__self__)
lazy = [name for name, value in vars(Endpoints).items() if isinstance(value, functools.cached_property)]
for name in lazy:
    getattr(endpoints, name)
own = sorted(name for name in set(sys.modules) - before if name.startswith(("handler.", "adapters.")))
print(json.dumps({"lazy": sorted(lazy), "imported": own}))
"""


def test_import_front_ends_imports_every_front_end_endpoints_builds_on_first_use(tmp_path: Path) -> None:
    state = started(EVERY_FRONT_END, tmp_path)
    assert state == {"lazy": ["dashboard", "info", "keys", "messages", "responses", "seals"], "imported": []}


# The classes the cold start makes whose code is generated or whose annotations are evaluated: the gateway's own
# dataclasses (`@dataclass` writes each method it generates as source and compiles it: about 2 million
# instructions for an `__init__`, 4 million for a frozen record's methods) and pydantic models' string annotations;
# and its enums (an `Enum` class's members cost some 0.14 million instructions each to make).
GENERATED = """
import dataclasses, enum, json, sys
import handler.entry.lambda_handler
from pydantic import BaseModel
classes = [
    value
    for name, module in list(sys.modules.items()) if name.startswith(("handler.", "adapters."))
    for value in vars(module).values() if isinstance(value, type) and value.__module__ == name
]
own = sorted(
    [
        c.__module__ + "." + c.__qualname__,
        # (a dataclass by `@dataclass`: what it generated; by `handler.records.stored`: nothing but its fields' table)
        [k for k in ("init", "repr", "eq", "order", "unsafe_hash", "frozen") if getattr(c.__dataclass_params__, k)]
        if hasattr(c, "__dataclass_params__")
        else "stored",
    ]
    for c in classes
    if dataclasses.is_dataclass(c)
)
strings = sorted(
    c.__module__ + "." + c.__qualname__ + "." + field
    for c in classes if issubclass(c, BaseModel) and c.__module__ in ("handler.schemas", "handler.config")
    for field, annotation in vars(c).get("__annotations__", {}).items() if isinstance(annotation, str)
)
named_tuples = sorted(c.__module__ + "." + c.__qualname__ for c in classes if issubclass(c, tuple))
enums = sorted(c.__module__ + "." + c.__qualname__ for c in classes if issubclass(c, enum.Enum))
print(json.dumps({"dataclasses": own, "named_tuples": named_tuples, "string_annotations": strings, "enums": enums}))
"""

# Immutable values are `handler.records.Value`s (a class with `__slots__`, nothing generated), except those orjson
# writes (the spool's settlements, the ledger's lines, keys), which it serializes as dataclasses: those, and a
# meter's snapshot, are dataclasses for the protocol alone (orjson, `replace`, `fields`), with their `__init__`
# written out and their equality, repr and frozenness from `handler.records`, made dataclasses by
# `handler.records.stored` (no `@dataclass`: its processing of a class cost the cold start even with nothing to
# generate). An object holding state (a request's exchange, the store's slices, a breaker,
# a metric family) is a plain class with `__slots__`.
RECORDS = {
    "handler.ports.BudgetCharge",
    "handler.ports.KeyRecord",
    "handler.ports.LedgerItem",
    "handler.ports.MeterSnapshot",
    "handler.ports.RateCharge",
    "handler.ports.Settlement",
}


def test_the_lambda_cold_start_generates_no_code_for_its_records(tmp_path: Path) -> None:
    found = started(GENERATED, tmp_path)
    assert {name for name, _ in found["dataclasses"]} == RECORDS
    assert {name: options for name, options in found["dataclasses"]} == dict.fromkeys(RECORDS, "stored")
    assert found["named_tuples"] == []  # the immutable values are `handler.records.Value`s
    assert found["string_annotations"] == []  # no postponed annotations for pydantic to evaluate
    assert found["enums"] == []  # (the route table's `Auth` was a `StrEnum`: 0.7 million instructions)


# What a Lambda's cold start and its first invocation, a chat completion that does not stream, leave unmade (or
# unimported: a Messages client's prefill's module; with no provider key in a secret store, their re-reading; the
# keys' administration, which only the key routes, the dashboard and the CLI use; the native pass-through's and every
# stream's module; the response schema's enforcement, which a request asks for; Claude's cache breakpoints and web
# search, which a request asks for too; the dashboard's files' names, which only the OpenAPI document gives; the
# settlement spool, which only a settlement the store refused or a spool file found at start needs), and
# the regular expressions of the gateway's own they compile (`re._cache`, Python 3.11's cache of compiled patterns:
# those the card's libraries compile, imported as the benchmark counts them, are compiled before it is read).
FIRST_CHAT = """
import json, re, sys
from tests.bench.run import LIBRARIES
exec(LIBRARIES)
LATER = (
    "handler.chunks", "handler.embeddings", "adapters.providers.prefill", "handler.pipeline.stored_keys",
    "handler.pipeline.key_admin", "handler.pipeline.passthrough", "handler.pipeline.schema_check",
    "handler.pipeline.schema_patterns", "adapters.providers.prompt_cache", "adapters.providers.anthropic.search",
    "handler.dashboard.assets", "handler.pipeline.spool",
)
compiled = set(re._cache)
import handler.entry.lambda_handler
at_import = sorted(name for name in LATER if name in sys.modules)
patterns = set(re._cache) - compiled
from tests.bench.lambda_warm import first_invocation_ms  # (the benchmark's harness: it counts what it imports apart)
held, compiled = set(sys.modules), set(re._cache)
first_invocation_ms()
after = sorted(name for name in LATER if name in sys.modules and name not in held)
patterns |= set(re._cache) - compiled
print(json.dumps([at_import, after, sorted(key[1] for key in patterns)]))
"""


def test_a_chat_completion_that_does_not_stream_makes_no_chunk_or_embeddings_model(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers:\n  local: {type: openai, api_key: env:LOCAL_KEY, base_url: 'http://127.0.0.1:9/v1'}\n"
        "  claude: {type: anthropic, api_key: env:LOCAL_KEY, base_url: 'http://127.0.0.1:9'}\n"
        "models:\n  bench: {deployments: [{provider: local, model: m}], price: {input: 1, output: 1}}\n"
    )
    key = mint_key(start_up_environment(tmp_path, GATEWAY_CONFIG=str(config)))  # as the benchmark mints its own
    state = started(FIRST_CHAT, tmp_path, GATEWAY_CONFIG=str(config), LOCAL_KEY="sk-local", BENCH_GATEWAY_KEY=key)
    # (No pattern compiled either: a refusal's output ceiling's and the tags' were compiled at import, 2.0 and 0.2
    # million instructions of every cold start, though a request that carries no tags and is not refused needs
    # neither.)
    assert state == [[], [], []]


# The store modules a cold start imports, of those only one of the two stores needs.
STORES = """
import json, sys
import handler.entry.lambda_handler
print(json.dumps(sorted(name for name in (
    "adapters.aws", "adapters.sigv4", "adapters.store.dynamo_client", "adapters.store.dynamodb",
    "adapters.store.dynamo_responses", "adapters.store.sqlite",
) if name in sys.modules)))
"""


def test_a_cold_start_on_the_embedded_store_imports_no_dynamodb_client(tmp_path: Path) -> None:
    """The store package and the stored responses' and sign-ins' mixins imported the DynamoDB client, the AWS layer
    and SigV4 at every start-up: 3.2 million instructions of a Lambda's cold start on SQLite (callgrind); and the
    stored responses' DynamoDB mixin, once it kept records in parts, about a million more."""
    assert started(STORES, tmp_path) == ["adapters.store.sqlite"]


def test_a_cold_start_on_dynamodb_imports_no_sqlite(tmp_path: Path) -> None:
    """The stored responses' and sign-ins' SQLite mixins imported `sqlite3` at every start-up: 4.6 million
    instructions of a Lambda's cold start on DynamoDB, the card's store (callgrind)."""
    store = "dynamodb://gateway?region=us-east-1&endpoint_url=http://127.0.0.1:9"
    probe = STORES.replace('"adapters.store.sqlite",', '"adapters.store.sqlite", "sqlite3",')
    imported = started(probe, tmp_path, GATEWAY_STORE=store, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    assert "sqlite3" not in imported and "adapters.store.dynamodb" in imported


# The stream parsers and web searches a cold start imports, with a Bedrock and a Gemini deployment configured.
STREAM_PARSERS = """
import json, sys
import handler.entry.lambda_handler
print(json.dumps(sorted(name for name in (
    "adapters.providers.bedrock.adapter", "adapters.providers.bedrock.stream", "adapters.providers.anthropic.stream",
    "adapters.providers.gemini.adapter", "adapters.providers.gemini.stream", "adapters.providers.prefill",
    "adapters.providers.gemini.search", "adapters.providers.anthropic.search",
) if name in sys.modules)))
"""


def test_a_cold_start_with_bedrock_and_gemini_deployments_imports_no_stream_parser_nor_search(tmp_path: Path) -> None:
    """The Bedrock and Gemini adapters' modules held their stream parsers (Bedrock's built on Anthropic's): a cold
    start with their deployments imported them all, though a Lambda's buffered function answers whole. Gemini's
    adapter imported its search's module too, its pattern (`GENERATION`) compiled, though few requests search."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "providers:\n  aws: {type: bedrock}\n  google: {type: gemini, api_key: env:LOCAL_KEY}\n"
        "models:\n  claude: {deployments: [{provider: aws, model: anthropic.claude-3-haiku-20240307-v1:0,"
        " region: us-east-1}]}\n  flash: {deployments: [{provider: google, model: gemini-2.5-flash}]}\n"
    )
    imported = started(
        STREAM_PARSERS,
        tmp_path,
        GATEWAY_CONFIG=str(config),
        LOCAL_KEY="k",
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="y",
    )
    assert imported == ["adapters.providers.bedrock.adapter", "adapters.providers.gemini.adapter"]


# The pydantic models of the gateway's own a cold start makes (each class costs 0.5 to 3 million instructions to make,
# its validator unbuilt), and whether it imported the trace export's modules.
MODELS_MADE = """
import json, sys
import handler.entry.lambda_handler
from pydantic import BaseModel
pending, made = [BaseModel], []
while pending:
    for model in pending.pop().__subclasses__():
        made.append(model.__name__)
        pending.append(model)
tracing = ("handler.otlp_config", "handler.telemetry.tracing")
print(json.dumps({"otlp": "OtlpConfig" in made, "imported": sorted(name for name in tracing if name in sys.modules)}))
"""


def test_a_cold_start_whose_config_has_no_otlp_section_makes_no_model_of_it(tmp_path: Path) -> None:
    """`observability.otlp`'s model was made in handler/config.py at every cold start (3 million instructions,
    callgrind), though only a config with the section validates one."""
    assert started(MODELS_MADE, tmp_path) == {"otlp": False, "imported": []}
