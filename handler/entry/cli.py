"""The `gateway` command: serve, keys, usage, dashboard, config check."""

from __future__ import annotations

import argparse
import asyncio
import errno
import ipaddress
import math
import os
import re
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from handler.api.key_routes import key_view, no_such_key
from handler.config import Config, ConfigError, region_name, responses_secret
from handler.pipeline.attribution import parse_tags
from handler.pipeline.gateway import DEFAULT_STORE_URL
from handler.pipeline.key_admin import KeyAdmin, family_of, key_names
from handler.pipeline.keys import NOT_THE_KEY, KeyService, is_key_id, may_hold_a_secret, split_key
from handler.ports import KeyRecord, LedgerItem, Store, StoreError
from handler.redaction import redact_message, unkeyed
from handler.telemetry.prometheus import SHARED_ENV
from handler.telemetry.tracing import otlp_settings

if TYPE_CHECKING:
    import uvicorn
    from pydantic import ValidationError

    from handler.dashboard.line_items import LineListing
    from handler.errors import InvalidRequestError

STORE_HELP = f"the server's store URL (default: GATEWAY_STORE, else {DEFAULT_STORE_URL})"
DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"  # (`gateway dashboard --url`'s default: `gateway serve`'s own)
DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
ZERO = re.compile(r"^0+(?:\.0*)?$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# `serve --shutdown-grace`: with the settlements' own bound after it (`SHUTDOWN_SETTLE_S`, 5 s), within the 30 s
# ECS and Kubernetes give a process between SIGTERM and SIGKILL.
SHUTDOWN_GRACE_S = 20.0


def parse_duration(text: str) -> float:
    """`30m`, `12h`, `7d` (or `s`) in seconds; a bare `0` is none at all (`--grace 0` ends an old secret at once,
    as the docs say, though it has no unit)."""
    if ZERO.match(text.strip()):
        return 0.0
    match = DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 30m, 12h or 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


def parse_grace(text: str) -> float:
    """`keys rotate --grace`: a duration, whose error offers the `0` a grace may be. (Said by `--expires-in` too,
    the `0` was offered where it is then refused: `--expires-in: at least 1s`.)"""
    try:
        return parse_duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration like 30m, 12h or 7d (or 0)") from None


def duration_text(seconds: float) -> str:
    """`seconds` as the flags write a duration: in the largest unit it is a whole number of (`604800`: `7d`)."""
    for unit, size in sorted(UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


# The flag that sets each field of the key API's bodies (`POST /admin/keys`, `.../rotate`), which `keys create` and
# `keys rotate` check their values with: an error names the flag the user typed, not the API's field.
FLAGS = {
    "name": "--name",
    "models": "--models",
    "budget_usd": "--budget-usd",
    "budget_period": "--budget-period",
    "expires_in_seconds": "--expires-in",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "allow_ips": "--allow-ip",
    "tags": "--tags",
    "admin": "--admin",
    "grace_seconds": "--grace",
}
DURATION_FIELDS = frozenset({"expires_in_seconds", "grace_seconds"})
BOUNDS = {"gt": "more than", "ge": "at least", "lt": "less than", "le": "at most"}


class MissingStoreError(Exception):
    """A read-only command named a SQLite store that does not exist (it must not create an empty one)."""


def _store_url(url: str | None) -> str:
    return url or os.environ.get("GATEWAY_STORE") or DEFAULT_STORE_URL


def _require_store(url: str | None) -> None:
    """A read-only command must find the server's store: a SQLite file that is not there is an error naming the
    path looked at, never a new empty database."""
    chosen = _store_url(url)
    if chosen.startswith("sqlite:///"):
        path = Path(chosen.removeprefix("sqlite:///")).resolve()
        if not path.exists():
            default = "" if url or os.environ.get("GATEWAY_STORE") else " (the default, relative to this folder)"
            raise MissingStoreError(
                f"no store at {path}{default}: run this where `gateway serve` runs, or name the server's store: "
                "add `--store URL` to this command, or set GATEWAY_STORE=URL"
            )


def _store(url: str | None, *, must_exist: bool = False) -> Store:
    """The store the command names: `--store`, else `GATEWAY_STORE`, else the default."""
    from adapters.store import check_store_url, open_store

    check_store_url(_store_url(url))
    if must_exist:
        _require_store(url)
    return open_store(_store_url(url))


def _read_config(path: str | None) -> Config:
    """The config at `path` (None: the shipped default), every error of the file named at once (`read_config`)."""
    from adapters.providers.registry import REGISTRY
    from handler.pipeline.gateway import read_config

    return read_config(path, REGISTRY)


def _start_up_checks(config: Config) -> list[str]:
    """What the gateway's start-up refuses, said before serving: the `OTEL_*` environment, `gateway.responses_secret`
    resolved, each provider's `headers` resolved (a reference to nothing; one whose store cannot be read now is read
    again once serving, as a key is), an option no adapter reads (a misspelt `base_ulr`) or one it cannot take, and
    what building the router refuses (an Azure provider without its endpoint, a region it cannot place). Returns what
    it would serve without (`unkeyed_providers`): a provider whose key is not found, warned of, not refused."""
    from adapters.providers.registry import REGISTRY
    from handler.pipeline.gateway import check_routes, gateway_region, provider_headers, unkeyed_providers

    otlp_settings(config.observability.otlp, os.environ)
    responses_secret(config.gateway, os.environ)
    for name, provider in config.providers.items():
        headers = provider.options().get("headers")
        if headers is not None:
            provider_headers(name, headers, os.environ, None)
    adapters = check_routes(config, REGISTRY, gateway_region(os.environ))
    return unkeyed_providers(config, adapters, os.environ, None)


def _start_up_warnings(config: Config) -> list[str]:
    """What start-up logs and does not refuse: a gateway's own region it does not know the place of
    (`gateway_region_warning`), and providers with no model (`no_model_warning`)."""
    from handler.config import no_model_warning
    from handler.pipeline.gateway import gateway_region_warning

    warnings = (gateway_region_warning(config, os.environ), no_model_warning(config))
    return [warning for warning in warnings if warning]


def _counted(count: int, thing: str) -> str:
    """`1 provider`, `2 providers` (`config check` said `1 providers`)."""
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        sys.stderr.write(f"warning: {warning}\n")


def _print_json(payload: Any) -> None:
    sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")


async def ensure_admin_key(store: Store) -> str | None:
    """On first start (no key at all: a page of one key is empty), create an admin key and return its secret to
    print once."""
    if await store.list_keys_page(None, 1):
        return None
    service = KeyAdmin(KeyService(store, 0))
    minted = await service.mint(KeyRecord(id="", name="admin", secret_hash="", created_at=0, admin=True))
    return minted.key


async def has_live_admin_key(store: Store, now: float) -> bool:
    """Whether the store holds an admin key that signs in to the dashboard now (as `gateway dashboard` picks one)."""
    from handler.dashboard.routes import live_admin

    return any(r.parent_id is None and live_admin(r, now) for r in await store.list_keys())


def admin_key_notice(store_url: str, has_admin: bool) -> str:
    """What `gateway serve` says of the admin key when it mints none: only hashes are kept, so never a secret, but
    how to make one; a store with keys and no live admin key (a `keys create` before the first start) says so."""
    store = "" if store_url == DEFAULT_STORE_URL else f" --store {shlex.quote(store_url)}"
    create = f"`gateway keys create --name admin --admin{store}`"
    if has_admin:
        return f"Admin key: the one printed when this store was new (it keeps only a hash); another: {create}\n"
    return (
        "\nThis store has keys but no live admin key, so none was printed and nobody can use the dashboard or "
        f"/admin: create one with {create} (its secret is printed once)\n\n"
    )


def dashboard_command(url: str, store_url: str) -> str:
    """The `gateway dashboard` that signs in to the server at `url` on the store `store_url`: with `--url` and
    `--store` where they are not the command's defaults (it said `gateway dashboard` of a server on port 9000, whose
    link then went to port 8080, or on another store, which has none of the server's keys)."""
    command = "gateway dashboard"
    if url != DEFAULT_GATEWAY_URL:
        command += f" --url {shlex.quote(url)}"
    if store_url != DEFAULT_STORE_URL:
        command += f" --store {shlex.quote(store_url)}"
    return command


async def _admin_key_at_start(store: Store) -> tuple[str | None, bool]:
    try:
        secret = await ensure_admin_key(store)
        return secret, secret is not None or await has_live_admin_key(store, time.time())
    finally:
        await store.close()


def _listen(host: str, port: int) -> socket.socket:
    """The gateway's listening socket, bound before anything says the gateway listens (as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # uvicorn's default backlog: connections wait from here on, none is refused
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)  # for --workers, whose processes share it
    return listener


# The files a `gateway serve` process holds besides its clients' and upstreams' connections: the listening socket, the
# store and its journal, the spool, the event loop's own.
OTHER_FILES = 64


def _open_files_for(connections: int) -> list[str]:
    """`gateway.limits.connections` against the process's open-file limit: a client's connection takes a file
    descriptor, and the upstream connection its request opens another. A soft limit short of them (1024 is a common
    default) is raised to fit, within the hard limit, as a service manager's `LimitNOFILE` would; one still short is
    warned of: past it, the server cannot accept a connection, nor open one to a provider or its store, though the
    limit's 503 `server_busy` is not reached."""
    import resource

    needed = 2 * connections + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return []
    raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):  # (a system whose own cap is below the hard limit: macOS's)
        raised = soft
    if raised >= needed:
        return []
    return [
        f"gateway.limits.connections: {connections} connections need about {needed} open files (one each, one for "
        f"its upstream, {OTHER_FILES} more), and this process may open {raised} (`ulimit -n`): lower "
        f"limits.connections to {max(1, (raised - OTHER_FILES) // 2)}, or raise the limit"
    ]


def _listen_advice(host: str, exc: OSError) -> str:
    """Why `gateway serve` could not listen, and what to change: the host where the host is the problem (a name
    that does not resolve, an address not this machine's), else the port. (It said "Stop what holds that port" of
    `--host no.such.host.invalid`.)"""
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        what = "names no address" if isinstance(exc, socket.gaierror) else "is no address of this machine"
        return (
            f"{exc.strerror or exc}: {host} {what}. Give --host an address of this machine: 127.0.0.1 (this machine "
            "only), 0.0.0.0 (every interface) or one of its interfaces"
        )
    if exc.errno == errno.EACCES:
        return f"{exc.strerror}: a port below 1024 needs privileges. Choose another: `gateway serve --port N`"
    return (
        f"{exc.strerror or exc}. Stop what holds that port, or choose another: `gateway serve --port N` "
        "(`make serve ARGS='--port N'`)"
    )


def _within(parse: Callable[[str], float], low: float, high: float, what: str) -> Callable[[str], float]:
    """An argparse type: the value `parse` reads, from `low` to `high`, else an error saying it is not `what` (a
    port of 70000 would be an OverflowError traceback; `--workers 0` and `--shutdown-grace -1` or `nan` are refused)."""

    def within(value: str) -> float:
        try:
            number = parse(value)
        except ValueError:
            number = math.nan  # (never within)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"'{value}' is not {what}")
        return number

    return within


# The most `--workers`: 10,000 would start some 650 processes before the machine runs out of memory, and outlive
# a SIGTERM. Past a process or two per core a worker only adds memory.
MAX_WORKERS = 64
_port = _within(int, 0, 65535, "a port (0 to 65535; 0: a free one, printed when bound)")
_processes = _within(int, 1, MAX_WORKERS, f"a number of processes (1 to {MAX_WORKERS})")
_grace_seconds = _within(float, 0, 3600, "a number of seconds (0 to 3600)")


def _host(value: str) -> str:
    """`serve --host`: an address or a name, never empty. `--host "$HOST"` with HOST unset bound every interface (the
    empty address is INADDR_ANY, where the default is this machine only) and printed `http://:8080`."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            f"'{value}' is no address: give 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of its "
            "interfaces"
        )
    return value


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_url(host: str, bound: str, port: int) -> str:
    """The URL a client on this machine reaches `gateway serve --host HOST` at, `bound` the address its socket is
    bound to: on every interface (`0.0.0.0`, `::`, `0`), this machine's loopback address. `http://0.0.0.0:8080` is no
    address to send to: macOS and Windows refuse it, and browsers block it (the dashboard's link)."""
    if ipaddress.ip_address(bound).is_unspecified:
        return _url("::1" if ":" in bound else "127.0.0.1", port)
    return _url(host, port)


def _run_server(config: uvicorn.Config, listener: socket.socket) -> None:
    """Serve on `listener` until a signal stops the server (its workers, with `--workers` above 1, each writing its
    figures to a folder of the server's, so that `/metrics` on any of them answers for all:
    handler/telemetry/prometheus.py)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if config.workers > 1:
        with tempfile.TemporaryDirectory(prefix="gateway-metrics-", ignore_cleanup_errors=True) as shared:
            os.environ[SHARED_ENV] = shared  # (the workers inherit it)
            try:
                Multiprocess(config, sockets=[listener]).run()
            finally:
                os.environ.pop(SHARED_ENV, None)
    else:
        os.environ.pop(SHARED_ENV, None)  # one process: its own figures are the server's
        uvicorn.Server(config).run(sockets=[listener])


def provider_variables_holding_gateway_keys(config: Config, environ: Mapping[str, str]) -> list[str]:
    """The environment variables providers take their keys from that hold one of this gateway's own keys: the
    client setup (`OPENAI_API_KEY=$GATEWAY_KEY`) exported in the shell that then starts the gateway."""
    from adapters.providers.registry import REGISTRY

    found: list[str] = []
    for provider in config.providers.values():
        reference = provider.key_reference(REGISTRY[provider.type].key_env_var) or ""
        name = reference.removeprefix("env:") if reference.startswith("env:") else ""
        if name and name not in found and split_key(environ.get(name, "").strip()) is not None:
            found.append(name)
    return found


def _warn_of_gateway_keys_as_provider_keys(config: Config, environ: Mapping[str, str]) -> None:
    for name in provider_variables_holding_gateway_keys(config, environ):
        sys.stderr.write(
            f"warning: {name} holds a gateway key (gwk_...), not the provider's: the gateway ignores it and the "
            f"models behind it answer 503 provider_not_configured. Set {name} to the provider's own key in the "
            f"shell that starts the gateway, or start it without: `env -u {name} make serve`\n"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.config:
        os.environ["GATEWAY_CONFIG"] = args.config
    if args.store:
        os.environ["GATEWAY_STORE"] = args.store
    from adapters.store import check_store_url

    check_store_url(_store_url(None))  # (a `StoreError`: `main` says it, exit 2, before anything starts)
    try:
        config = _read_config(os.environ.get("GATEWAY_CONFIG") or None)
        unkeyed = _start_up_checks(config)
        metrics_port = config.observability.metrics_port
        if metrics_port is not None and args.workers > 1:
            # Each worker counts its own requests, and workers share one port: no scrape can see them all.
            raise ConfigError(
                [
                    "observability.metrics_port: shows one process's figures, and --workers share one port, so no "
                    "scrape could see them all: run --workers 1 (for more processes, one `gateway serve` per port, "
                    "each with a config of its own metrics_port, each scraped)"
                ]
            )
        if metrics_port == args.port:
            raise ConfigError([f"observability.metrics_port: {metrics_port} is the gateway's own port (--port)"])
    except ConfigError as exc:
        sys.stderr.write(f"config error:\n{exc}\n")
        return 2
    try:
        listener = _listen(args.host, args.port)
    except OSError as exc:
        sys.stderr.write(f"gateway serve: cannot listen on {args.host}:{args.port}: {_listen_advice(args.host, exc)}\n")
        return 1
    with listener:
        port = listener.getsockname()[1]  # (`--port 0`: the free port the system chose)
        _warn(unkeyed + _start_up_warnings(config) + _open_files_for(config.gateway.limits.connections))
        _warn_of_gateway_keys_as_provider_keys(config, os.environ)
        secret, has_admin = asyncio.run(_admin_key_at_start(_store(None)))
        url = client_url(args.host, listener.getsockname()[0], port)
        if not secret:
            sys.stdout.write(admin_key_notice(_store_url(None), has_admin))
        else:
            sys.stdout.write(
                "\nCreated the first admin key. It is shown once; keep it somewhere safe:\n\n"
                f"    export GATEWAY_KEY={secret}\n\n"
                "Clients (the openai SDK, Codex, curl) then use, in their own shell:\n\n"
                f"    export OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=$GATEWAY_KEY\n\n"
                "and the anthropic SDK and Claude Code:\n\n"
                f"    export ANTHROPIC_BASE_URL={url} ANTHROPIC_API_KEY=$GATEWAY_KEY\n\n"
                "Not in the shell that starts the gateway: there OPENAI_API_KEY and ANTHROPIC_API_KEY are the "
                "gateway's own keys to OpenAI and Anthropic.\n"
                f"The dashboard ({url}/dashboard) asks for this admin key; "
                f"`{dashboard_command(url, _store_url(None))}` opens it signed in.\n\n"
            )
        source = os.environ.get("GATEWAY_CONFIG") or "the shipped default config"
        where = "" if url == _url(args.host, port) else f"on every interface ({args.host}); "
        sys.stdout.write(f"gateway listening on {url} ({where}store {_store_url(None)}, {source}); Ctrl-C stops it\n")
        sys.stdout.flush()
        server = uvicorn.Config(
            "handler.entry.asgi:app",
            host=args.host,
            port=port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
            # uvicorn would otherwise take X-Forwarded-For from loopback peers as the client's address and
            # let it pass an IP allowlist; the app trusts only `gateway.trusted_proxies`.
            proxy_headers=False,
            loop="uvloop" if _has("uvloop") else "asyncio",
            # Request headers are bounded (431 beyond `gateway.limits.request_header_bytes`): see
            # handler/entry/server.py.
            http="handler.entry.server:BoundedHttpToolsProtocol" if _has("httptools") else "h11",
            h11_max_incomplete_event_size=config.gateway.limits.request_header_bytes,
            # The gateway serves no WebSocket: with uvicorn's default (`auto`, `websockets` installed) an `Upgrade:
            # websocket` request is handed to uvicorn's WebSocket protocol, answered in plain text or an empty 403,
            # and its connection's place among `gateway.limits.connections` never given back. Its
            # offer is ignored as any other upgrade's is (handler/entry/server.py).
            ws="none",
            # On SIGTERM, answers still going (a stream can run for `timeouts.request`) get this long; then they are
            # cut and settled as a client that left is, their settlements written or spooled within
            # `SHUTDOWN_SETTLE_S`: all before a service manager's kill (Docker's 10 s, ECS's and Kubernetes' 30 s
            # by default). Without it a long stream held the shutdown until the kill, its settlement never written.
            timeout_graceful_shutdown=args.shutdown_grace,
        )
        try:
            _run_server(server, listener)
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
            pass
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def cmd_config_check(args: argparse.Namespace) -> int:
    """The config file checked as `gateway serve` checks it before it starts, and the store URL it would open
    (`--store`, else `GATEWAY_STORE`, else the default), opening nothing."""
    from adapters.store import check_store_url

    try:
        check_store_url(_store_url(args.store))
    except StoreError as exc:
        sys.stderr.write(f"gateway: the store cannot be used: {redact_message(str(exc))}\n")
        return 1
    try:
        config = _read_config(args.config or os.environ.get("GATEWAY_CONFIG") or None)
        unkeyed = _start_up_checks(config)
    except ConfigError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    _warn(unkeyed + _start_up_warnings(config))
    from handler.pipeline.pricing import ARN_UNPRICED, arn_model, builtin_prices, price_for

    problems = []
    for name, spec in config.models.items():
        for i, dep in enumerate(spec.deployments):
            if spec.price is None and price_for(name, spec, dep.model) is None:
                named = arn_model(dep.model) if dep.model.startswith("arn:") else dep.model
                profile = builtin_prices().unknown_profile(named) if named is not None else None
                why = (
                    f" (the built-in table prices its model, but not through the inference profile '{profile}', "
                    "which may cost otherwise)"
                    if profile
                    else f" (an ARN that {ARN_UNPRICED})"
                    if named is None
                    else ""
                )
                problems.append(
                    f"models.{name}.deployments[{i}]: no price known for '{dep.model}'{why}; "
                    "set models.{name}.price or mark it `price: unknown`".replace("{name}", name)
                )
    if problems:
        sys.stderr.write("\n".join(problems) + "\n")
        return 1
    without = f" ({len(unkeyed)} without a key: warned of above)" if unkeyed else ""
    sys.stdout.write(f"ok: {_counted(len(config.providers), 'provider')}{without}, ")
    sys.stdout.write(f"{_counted(len(config.models), 'model')}\n")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    return asyncio.run(_keys(args))


async def _keys(args: argparse.Namespace) -> int:
    from handler.errors import GatewayError

    try:
        store = _store(args.store, must_exist=args.keys_command != "create")
    except MissingStoreError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    try:
        return await _key_command(args, store)
    except GatewayError as exc:  # a bad --tags or --allow-ip: the message, not a traceback
        sys.stderr.write(f"{exc.message}\n")
        return 2
    finally:
        await store.close()


async def _key_command(args: argparse.Namespace, store: Store) -> int:
    from handler.errors import NotFoundError

    service = KeyAdmin(KeyService(store, 0))
    if args.keys_command == "create":
        minted = await service.mint(_created_record(args))
        if args.json:
            _print_json({**key_view(minted.record), "key": minted.key})
        else:
            sys.stdout.write(f"created key {minted.record.id} ({args.name}); shown once:\n{minted.key}\n")
        return 0
    if args.keys_command == "list":
        return await _listed_keys(store, args.limit, args.cursor)
    grace = _rotation_grace(args.grace) if args.keys_command == "rotate" else 0.0
    if args.keys_command == "show":
        existing = await store.get_key(args.id) if is_key_id(args.id) else None
        if existing is None:
            sys.stderr.write(f"{no_such_key(args.id)}\n")
            return 1
        _print_json(key_view(existing))
        return 0

    async def latest() -> KeyRecord:
        """The key as its home region has it, for a write (`KeyAdmin.change`), as the admin routes read it."""
        held = await store.get_key_latest(args.id) if is_key_id(args.id) else None
        if held is None:
            raise NotFoundError(no_such_key(args.id), code="not_found")
        return held

    try:
        if args.keys_command == "revoke":
            _print_json(key_view(await service.change(latest, service.revoke, "revoking")))
        elif args.keys_command == "tag":
            tags = parse_tags(args.tags, "tags")
            _print_json(key_view(await service.change(latest, lambda held: service.retag(held, tags), "tagging")))
        elif args.keys_command == "rotate":
            minted = await service.change(latest, lambda held: service.rotate(held, grace), "rotating")
            _print_json({**key_view(minted.record), "key": minted.key})
    except NotFoundError as exc:
        sys.stderr.write(f"{exc.message}\n")
        return 1
    return 0


def flag_error(exc: ValidationError) -> InvalidRequestError:
    """The key API's validation error as the command line's: its first problem, under the flag that set the field
    (`--grace: at most 7d`, where it said `grace_seconds: Input should be less than or equal to 604800`)."""
    from handler.errors import InvalidRequestError

    error = exc.errors()[0]
    field, *within = error["loc"]
    flag = FLAGS.get(str(field), str(field))
    where = "".join(f" (item {part + 1})" if isinstance(part, int) else f".{part}" for part in within)
    message = error["msg"]
    bounds = {name: value for name, value in (error.get("ctx") or {}).items() if name in BOUNDS}
    if field in DURATION_FIELDS and bounds:
        [(name, value)] = bounds.items()
        message = f"{BOUNDS[name]} {duration_text(float(value))}"
    return InvalidRequestError(f"{flag}{where}: {message}", param=flag)


def _rotation_grace(seconds: float) -> float:
    """`keys rotate --grace`, checked as `POST /admin/keys/{id}/rotate` checks `grace_seconds` (at most 7 days):
    `--grace 99999999d` kept the old secret working for 270,000 years. Raises `GatewayError`."""
    from pydantic import ValidationError

    from handler.api.key_routes import RotateSpec

    try:
        return RotateSpec.model_validate({"grace_seconds": seconds}).grace_seconds
    except ValidationError as exc:
        raise flag_error(exc) from None


def _created_record(args: argparse.Namespace) -> KeyRecord:
    """`keys create`'s key, checked as `POST /admin/keys` checks one (a budget of nan or below zero, an rpm of 0,
    an expiry of 0 s, no model: refused, never a key that means something else); raises `GatewayError`."""
    from pydantic import ValidationError

    from handler.api.key_routes import AdminKeySpec, record_from
    from handler.errors import InvalidRequestError

    if args.budget_period is not None and args.budget_usd is None:
        # (Stored as asked, it would mean nothing: a key without a budget has no period.)
        raise InvalidRequestError(
            "--budget-period: the period of a budget: give --budget-usd too (a key without one spends freely)",
            param="--budget-period",
        )
    fields = {
        "name": args.name,
        "models": [m.strip() for m in args.models.split(",")] if args.models is not None else None,
        "budget_usd": args.budget_usd,
        "budget_period": args.budget_period,
        "expires_in_seconds": args.expires_in,
        "rpm": args.rpm,
        "tpm": args.tpm,
        # (An empty `--allow-ip`, `"$OFFICE_CIDRS"` unset, is `['']`, refused as `--models ''` is: as no value, it
        # minted a key any address could use.)
        "allow_ips": args.allow_ip.split(",") if args.allow_ip is not None else None,
        "tags": parse_tags(args.tags, "--tags") or None,
        "admin": args.admin,
    }
    try:
        spec = AdminKeySpec.model_validate({name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        raise flag_error(exc) from None
    try:
        return record_from(spec, [], admin=spec.admin, now=time.time())  # (the operator's: made by no key)
    except InvalidRequestError as exc:  # (what only the record's making refuses: a range of `--allow-ip`)
        flag = FLAGS.get(exc.param or "")
        if flag is None:
            raise
        raise InvalidRequestError(f"{flag}: {exc.message}", param=flag) from None


def _whole_key_given(key_id: str | None) -> bool:
    """Whether `--key`, which takes a key's id, was given a key, secret and all: then said so, without the key (not
    printed back), and no store asked for it."""
    if key_id and may_hold_a_secret(key_id):
        sys.stderr.write(f"--key takes {NOT_THE_KEY}\n")
        return True
    return False


async def _listed_keys(store: Store, limit: str | None, cursor: str | None) -> int:
    """`gateway keys list`: a page of the keys, `--limit` of them (100 unless told), from `--cursor` on, read as
    `GET /admin/keys` reads it (the store reads the page and the key after it, which says there are more:
    `Store.list_keys_page`); the next page's `--cursor` is said on stderr, as `usage` says its own. It read the whole
    listing (on DynamoDB its whole key index) and printed every key at once, whatever the store held."""
    from handler.api.key_routes import key_cursor, parse_key_cursor
    from handler.dashboard.line_items import MAX_LIMIT, parse_limit
    from handler.errors import InvalidRequestError

    try:
        count = parse_limit(limit)
    except InvalidRequestError:
        sys.stderr.write(f"--limit: a whole number from 1 to {MAX_LIMIT}\n")
        return 2
    try:
        after = parse_key_cursor(cursor, None)
    except InvalidRequestError:
        sys.stderr.write("--cursor: the cursor a page before said (`more keys: add --cursor ...`)\n")
        return 2
    records = await store.list_keys_page(None, count + 1, after)
    _print_json([key_view(record) for record in records[:count]])
    if len(records) > count:
        sys.stderr.write(f"more keys: add --cursor {key_cursor(records[count - 1])}\n")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from handler.dashboard.line_items import LineListing, parse_page
    from handler.dashboard.reports import (
        REPORT_ONCE,
        aggregate,
        columns,
        latency,
        latency_table,
        parse_report,
        report_json,
        to_csv,
        to_table,
    )
    from handler.errors import GatewayError
    from handler.ports import UsageQuery

    if args.json and args.format not in (None, "json"):
        sys.stderr.write(f"--json is --format json: not with --format {args.format}\n")
        return 2
    output = "json" if args.json else args.format or "table"
    for name in ("key", *REPORT_ONCE):
        given = getattr(args, name)
        if given is not None and len(given) > 1:
            # (Read as its last, `--tag team=a --tag env=prod` reported every team's `env=prod` spend; as over HTTP, a
            # filter is given once: found by review, mergerevb37.)
            flag = "--" + name.replace("_", "-")
            sys.stderr.write(f"{flag} is given {len(given)} times: give it once\n")
            return 2
        setattr(args, name, None if given is None else given[0])
    for flag, value in (("--key", args.key), ("--tag", args.tag)):
        if value is not None and not value.strip():
            # (Read as no filter, `--key "$KEY_ID"` with the variable unset reported every key's spend as that key's;
            # an empty `--user` is refused the same way.)
            sys.stderr.write(f"{flag} is empty, which would filter nothing: give its value, or leave {flag} out\n")
            return 2
    try:
        spec = parse_report(args.since, args.until, args.group_by, args.tag, args.user, args.session, args.request_id)
        page = parse_page(spec, args.limit, args.cursor)
    except GatewayError as exc:
        sys.stderr.write(f"{exc.message}\n")
        return 2
    if _whole_key_given(args.key):
        return 1

    try:
        _require_store(args.store)
    except MissingStoreError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    if page is not None:
        return _listed_usage(args, LineListing(spec, page), output)

    async def fetch() -> tuple[list[LedgerItem], dict[str, str] | None] | None:
        store = _store(args.store)
        try:
            record, family = await family_of(store, args.key) if args.key else (None, None)
            lines = await store.usage(UsageQuery(family, spec.since, spec.until))
            # A key the store has never heard of (a typo) is said, as `keys show` says it, not an empty report; a
            # purged key is known by its lines in the window or its children's links (with_descendants).
            if args.key and not lines and family == [args.key] and record is None:
                return None
            items = spec.select(lines)
            by_key = "key" in spec.group_by
            return items, await key_names(store.get_key, (i.key_id for i in items)) if by_key else None
        finally:
            await store.close()

    found = asyncio.run(fetch())
    if found is None:
        sys.stderr.write(f"{no_such_key(args.key)} (nor any usage of it in the window)\n")
        return 1
    items, names = found
    rows = aggregate(items, spec.group_by, names)
    if output == "json":  # as `GET /v1/usage` answers
        _print_json(report_json(spec, items, rows))
    elif output == "csv":
        sys.stdout.write(to_csv(rows, columns(spec.group_by, names)))
    else:
        sys.stdout.write(to_table(rows))
        if items:
            sys.stdout.write(latency_table(latency(items)))
    return 0


def _listed_usage(args: argparse.Namespace, listing: LineListing, output: str) -> int:
    """`gateway usage --group-by request`: a page of the lines, newest first, read as `GET /v1/usage` reads it (a
    batch at a time, the page alone kept); in a table or CSV, the `--cursor` of the next page is said on stderr."""
    from handler.dashboard.line_items import listing_table

    async def fetch() -> dict[str, str] | None:
        store = _store(args.store)
        try:
            record, family = await family_of(store, args.key) if args.key else (None, None)
            await listing.fill(store, family)
            if args.key and not listing.read and family == [args.key] and record is None:
                return None  # (as the report says it: `cmd_usage`)
            return await key_names(store.get_key, listing.key_ids)
        finally:
            await store.close()

    names = asyncio.run(fetch())
    if names is None:
        sys.stderr.write(f"{no_such_key(args.key)} (nor any usage of it in the window)\n")
        return 1
    if output == "json":  # as `GET /v1/usage?group_by=request` answers, `next_cursor` in it
        _print_json(listing.answer(names, "json"))
        return 0
    sys.stdout.write(str(listing.answer(names, "csv")) if output == "csv" else listing_table(listing.rows(names)))
    following = listing.next_cursor()
    if following is not None:
        sys.stderr.write(f"older lines match too: add --cursor {following}\n")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Open the dashboard signed in as an admin key: a one-time link (its token in the URL's fragment, which
    browsers never send to a server), good for a minute; never the key itself."""
    from handler.dashboard.routes import SIGN_IN_SECONDS, issue_sign_in, live_admin

    if _whole_key_given(args.key):
        return 1
    try:
        _require_store(args.store)
    except MissingStoreError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2

    async def link() -> str | None:
        store = _store(args.store)
        try:
            now = time.time()
            if args.key:
                admin = await store.get_key(args.key)
                if not live_admin(admin, now):
                    sys.stderr.write(f"'{args.key[:64]}' is not a live admin key of this store\n")
                    return None
            else:
                admins = sorted(
                    (r for r in await store.list_keys() if r.parent_id is None and live_admin(r, now)),
                    key=lambda r: r.created_at,
                )
                if not admins:
                    sys.stderr.write(
                        "this store has no live admin key: create one with "
                        "`gateway keys create --name admin --admin`, then run this again\n"
                    )
                    return None
                admin = admins[0]
            return await issue_sign_in(store, admin, now)
        finally:
            await store.close()

    token = asyncio.run(link())
    if token is None:
        return 1
    base = (args.url or os.environ.get("GATEWAY_URL") or DEFAULT_GATEWAY_URL).rstrip("/")
    url = f"{base}/dashboard#sign-in={token}"
    sys.stdout.write(f"Dashboard, signed in (this link works once, within {SIGN_IN_SECONDS} seconds):\n\n    {url}\n")
    sys.stdout.flush()
    if not args.no_open:
        import webbrowser

        webbrowser.open(url)
    return 0


def cmd_store_migrate(args: argparse.Namespace) -> int:
    """Bring what the store holds to this version's layout (SQLite files migrate when opened; DynamoDB moves
    line items written before reports read index shards, links children minted before family links and keys below
    a root's children to their root, sets each root's family count, and homes keys without a home region in the
    store's region), and, on every store, index the items of stored responses an older release kept (so that an
    `item_reference` finds them: `Store.index_held`) and revoke the live keys under a key an older gateway revoked
    alone (`KeyAdmin.finish_revocations`). Safe beside serving gateways; a second run changes nothing."""
    from handler.api.responses_routes import held_in

    async def run() -> tuple[int, int]:
        store = _store(args.store)
        try:
            revoked = await KeyAdmin(KeyService(store, 0)).finish_revocations()
            migrate = getattr(store, "migrate", None)
            moved: int = await migrate() if migrate is not None else 0
            moved += await store.index_held(held_in)
            return moved, revoked
        finally:
            await store.close()

    moved, revoked = asyncio.run(run())
    sys.stdout.write(f"ok: {moved} items moved, {revoked} keys revoked with a revoked or purged ancestor\n")
    return 0


def cmd_store_retire_region(args: argparse.Namespace) -> int:
    """Before a region's replica is deleted (docs/deploying.md, "Retiring a region"), once its functions are gone:
    bring home the budget leases it holds of keys homed elsewhere, and name the live keys homed in it, which need
    its replica. Exit 0 when the replica may go, 1 while keys need it."""
    region = args.region

    async def run() -> tuple[int, float, list[KeyRecord]]:
        store = _store(args.store, must_exist=True)
        try:
            retire = getattr(store, "retire_region", None)
            if retire is None:
                raise StoreError("regions are a DynamoDB store's (dynamodb://TABLE?region=R): this store has none")
            found: tuple[int, float, list[KeyRecord]] = await retire(region)
            return found
        finally:
            await store.close()

    leases, returned, homed = asyncio.run(run())
    sys.stdout.write(f"{region}: {leases} budget leases brought home (${returned:.6f} of budget back at their homes)\n")
    if not homed:
        sys.stdout.write(
            f"no live key is homed in {region}: its replica may go:\n    aws dynamodb update-table --region "
            f"<a region that stays> --table-name <table> --replica-updates 'Delete={{RegionName={region}}}'\n"
        )
        return 0
    sys.stdout.write(
        f"{len(homed)} live keys are homed in {region}: their records and budgets are written through its replica "
        "alone, and deleted with it no region could revoke them or grant another region their budget. Keep the "
        "replica (it needs no stack) until they are revoked or have expired, then run this again:\n"
    )
    for record in homed:
        sys.stdout.write(f"    {record.id}  {unkeyed(record.name)}\n")
    return 1


def cmd_store_replay_logs(args: argparse.Namespace) -> int:
    """Land the settlements that log lines say were spooled (`settlement spooled: ...`), from a spool that is gone
    with its machine (a recycled Lambda environment's `/tmp`). A settlement the store already has changes nothing:
    every store applies one once per reservation id, so the same logs can be replayed again."""
    from handler.pipeline.spool import logged_settlements

    texts = []
    for name in args.logs:
        try:
            texts.append(sys.stdin.read() if name == "-" else Path(name).read_text(errors="replace"))
        except OSError as exc:
            sys.stderr.write(f"gateway: {name}: {exc.strerror or exc}\n")
            return 1
    settlements, unreadable = logged_settlements("\n".join(texts))
    if unreadable:
        sys.stderr.write(f"gateway: {unreadable} 'settlement spooled' log lines could not be read (cut short?)\n")

    async def run() -> list[str]:
        store = _store(args.store, must_exist=True)
        failed = []
        try:
            for settlement in settlements:
                try:
                    await store.settle(settlement)
                except StoreError as exc:
                    failed.append(settlement.reservation_id)
                    sys.stderr.write(f"{settlement.reservation_id}: {redact_message(str(exc))}\n")
        finally:
            await store.close()
        return failed

    try:
        failed = asyncio.run(run()) if settlements else []
    except MissingStoreError as exc:
        sys.stderr.write(f"gateway: {exc}\n")
        return 1
    landed = len(settlements) - len(failed)
    sys.stdout.write(f"ok: {landed} of {len(settlements)} spooled settlements landed (each at most once)\n")
    if failed:
        sys.stderr.write(f"{len(failed)} did not land; run the same command again once the store takes writes\n")
    return 1 if failed or unreadable else 0


def _unread_secret(kind: str, name: str) -> str:
    """`route explain` reads no SSM parameter or Secrets Manager secret: a key kept there counts as present (only
    the server can tell); one from an unset environment variable is named missing in its answer."""
    return f"(not read: {kind}:{name})"


def cmd_route_explain(args: argparse.Namespace) -> int:
    from adapters.providers.registry import REGISTRY
    from handler.pipeline.gateway import build_adapters, gateway_region, gateway_region_warning, shown_region
    from handler.pipeline.routing import RouteControls, Router, any_model, unplaced_gateway

    try:
        config = _read_config(args.config or os.environ.get("GATEWAY_CONFIG") or None)
        # `--region` is checked and warned of as `AWS_REGION` is: taken as written, `eu central` was shown as the
        # gateway's region and every deployment ranked from nowhere, and `mars-1` was not said to be unknown.
        if args.region is None:
            region, unplaced = gateway_region(os.environ), gateway_region_warning(config, os.environ)
        else:
            try:
                region = region_name(args.region)
            except ValueError as exc:
                raise ConfigError([f"--region: {exc}"]) from None
            unplaced = unplaced_gateway(region, "--region", config.gateway.region_latency_ms)
        # (A key no HTTP header can carry, as start-up refuses it: a `ConfigError` here, not a traceback.)
        router = Router(config, build_adapters(config, REGISTRY, os.environ, _unread_secret), region)
    except ConfigError as exc:  # (the router's too: a region it cannot place, a profile outside its geography)
        sys.stderr.write(f"{exc}\n")
        return 1
    _warn([unplaced] if unplaced else [])
    from handler.errors import GatewayError

    try:
        attempts = router.explain(args.model, RouteControls(provider=args.provider, region=args.pin_region), any_model)
    except GatewayError as exc:
        sys.stderr.write(f"{exc.code}: {exc.message}\n")
        return 1
    _print_json({"model": args.model, "gateway_region": args.region or shown_region(os.environ), "attempts": attempts})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="One API key in front of many LLM providers.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway locally (uvicorn)")
    serve.add_argument("--config", help="config file (default: GATEWAY_CONFIG or the shipped default)")
    serve.add_argument("--store", help=f"store URL (default: GATEWAY_STORE or {DEFAULT_STORE_URL})")
    serve.add_argument(
        "--shutdown-grace",
        type=_grace_seconds,
        default=SHUTDOWN_GRACE_S,
        metavar="SECONDS",
        help=f"on SIGTERM, how long answers still going may finish before they are cut (default {SHUTDOWN_GRACE_S:g})",
    )
    serve.add_argument(
        "--host", type=_host, default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)"
    )
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (default: 8080; 0: a free one)")
    serve.add_argument(
        "--workers",
        type=_processes,
        default=1,
        help="processes sharing the port (default: 1; 1 with observability.metrics_port)",
    )
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage gateway keys")
    keys.add_argument("--store", help=STORE_HELP)
    # `--store` is read before the subcommand or after it (`keys create --store URL`, as the docs write it); the
    # subcommand's copy sets nothing when absent, so it never undoes one given before.
    store_after = argparse.ArgumentParser(add_help=False)
    store_after.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key; the secret is printed once", parents=[store_after])
    create.add_argument("--name", required=True)
    create.add_argument("--models", help="comma-separated model globs (default: all)")
    create.add_argument("--budget-usd", type=float)
    create.add_argument(
        "--budget-period",
        choices=["day", "month", "total"],
        help="the budget's period, with --budget-usd (default: total)",
    )
    create.add_argument("--expires-in", type=parse_duration, help="30m, 12h, 7d: the key ends then (default: never)")
    create.add_argument("--rpm", type=int)
    create.add_argument("--tpm", type=int)
    create.add_argument("--allow-ip", help="comma-separated CIDR ranges")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--tags", help="default attribution tags for its ledger lines: team=search,env=prod")
    create.add_argument("--json", action="store_true")
    # The other key commands print JSON always: `--json` is taken (a script writes it to every key command), and
    # changes nothing.
    json_always = argparse.ArgumentParser(add_help=False)
    json_always.add_argument("--json", action="store_true", help="taken and ignored: this command prints JSON always")
    listing = ksub.add_parser("list", help="list keys, a page at a time", parents=[store_after, json_always])
    listing.add_argument("--limit", help="keys a page (default 100, at most 1000)")
    listing.add_argument("--cursor", help="the page after the one whose stderr said this cursor")
    for name, help_text in (
        ("show", "a key's settings and state as JSON (never its secret)"),
        ("revoke", "revoke a key, and through it its children"),
    ):
        cmd = ksub.add_parser(name, help=help_text, parents=[store_after, json_always])
        cmd.add_argument("id")
    tag = ksub.add_parser(
        "tag", help="replace a key's default attribution tags ('' clears them)", parents=[store_after, json_always]
    )
    tag.add_argument("id")
    tag.add_argument("tags", help="team=search,env=prod")
    rotate = ksub.add_parser(
        "rotate", help="new secret; the old one works for --grace", parents=[store_after, json_always]
    )
    rotate.add_argument("id")
    rotate.add_argument(
        "--grace", type=parse_grace, default=3600.0, help="30m, 12h, at most 7d; 0 ends it at once (default: 1h)"
    )
    keys.set_defaults(func=cmd_keys)

    usage = sub.add_parser("usage", help="cost line items, grouped")
    usage.add_argument("--store", help="store URL")
    # (Each of these taken once: `append` here, refused given twice in `cmd_usage`, `REPORT_ONCE`.)
    usage.add_argument("--key", action="append", help="one key id (its children included)")
    usage.add_argument(
        "--since", action="append", help="YYYY-MM-DD, ISO time or epoch seconds, UTC (default: 30 days ago)"
    )
    usage.add_argument("--until", action="append", help="YYYY-MM-DD, ISO time or epoch seconds, UTC (default: now)")
    usage.add_argument(
        "--group-by",
        action="append",
        help="any of key,model,day,user,session,tag:NAME; or request alone: the lines, a row each",
    )
    usage.add_argument(
        "--tag", action="append", help="only lines carrying every one of these tags: team=search,env=prod"
    )
    usage.add_argument("--user", action="append", help="only this end user's lines")
    usage.add_argument("--session", action="append", help="only this agent session's lines")
    usage.add_argument("--request-id", action="append", help="only the line of this request (its x-request-id)")
    usage.add_argument(
        "--limit",
        action="append",
        help="with --group-by request: lines a page, newest first (default 100, at most 1000)",
    )
    usage.add_argument(
        "--cursor", action="append", help="with --group-by request: the page after the one whose next_cursor this is"
    )
    usage.add_argument("--format", choices=["table", "csv", "json"], help="default: table")
    usage.add_argument("--json", action="store_true", help="the same as --format json")
    usage.set_defaults(func=cmd_usage)

    dashboard = sub.add_parser("dashboard", help="open the dashboard signed in as an admin key (a one-time link)")
    dashboard.add_argument("--store", help="the server's store URL")
    dashboard.add_argument("--url", help=f"where the gateway listens (default: GATEWAY_URL or {DEFAULT_GATEWAY_URL})")
    dashboard.add_argument("--key", help="the admin key id to sign in as (default: the first admin key)")
    dashboard.add_argument("--no-open", action="store_true", help="print the link only")
    dashboard.set_defaults(func=cmd_dashboard)

    store = sub.add_parser("store", help="store tools")
    ssub = store.add_subparsers(dest="store_command", required=True)
    migrate = ssub.add_parser("migrate", help="bring the store's data to this version's layout (run once)")
    migrate.add_argument("--store", help="store URL")
    migrate.set_defaults(func=cmd_store_migrate)
    replay = ssub.add_parser(
        "replay-logs", help="land the settlements log lines say were spooled (a spool lost with its machine)"
    )
    replay.add_argument(
        "logs", nargs="+", help="log files: JSON lines, CloudWatch exports or `aws logs` output; - reads stdin"
    )
    replay.add_argument("--store", help="store URL")
    replay.set_defaults(func=cmd_store_replay_logs)
    retire = ssub.add_parser(
        "retire-region",
        help="once a region's functions are gone: bring home its budget leases, name the keys homed in it",
    )
    retire.add_argument("region", help="the region being retired (its replica still there)")
    retire.add_argument("--store", help="store URL, in a region that stays: dynamodb://TABLE?region=R")
    retire.set_defaults(func=cmd_store_retire_region)

    route = sub.add_parser("route", help="routing tools")
    rsub = route.add_subparsers(dest="route_command", required=True)
    explain = rsub.add_parser("explain", help="the order the gateway would try a model's deployments now")
    explain.add_argument("model")
    explain.add_argument("--config")
    explain.add_argument("--region", help="the gateway's region (default: AWS_REGION or GATEWAY_REGION)")
    explain.add_argument("--provider", help="pin a provider, as x-gateway-provider does")
    explain.add_argument("--pin-region", help="pin a region, as x-gateway-region does")
    explain.set_defaults(func=cmd_route_explain)

    config = sub.add_parser("config", help="config file tools")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a config file (and the store URL serve would open)")
    check.add_argument("--config")
    check.add_argument("--store", help=STORE_HELP)
    check.set_defaults(func=cmd_config_check)
    return parser


# The exit status of a command whose output's reader went (`gateway usage --format csv | head -1`): 128 + SIGPIPE,
# as a shell reports `git log | head -1` and coreutils, which the signal ends; a script's `set -o pipefail` knows it.
CLOSED_PIPE_EXIT = 141


def main(argv: Sequence[str] | None = None) -> int:
    from adapters.aws import NoCredentialsError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()  # (a reader gone is found here, not in the flush at exit, which prints its own trace)
    except (StoreError, NoCredentialsError) as exc:  # a store URL it cannot open or reach: one line, not a trace
        sys.stderr.write(f"gateway: the store cannot be used: {redact_message(str(exc))}\n")
        return 2
    except BrokenPipeError:
        # Its output's reader went (`| head -0`): nothing more to say, and no trace. What is still buffered goes to
        # devnull, or the flush at exit fails again (the Python docs' pattern, signal module, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_PIPE_EXIT
    return result


if __name__ == "__main__":
    raise SystemExit(main())
