"""The composition root: config, adapters, store, router and upstream client, built once per process.

On Lambda this runs at module import (init phase), so a warm invocation does no set-up work.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from handler import redaction
from handler.config import (
    Config,
    ConfigError,
    SecretFetcher,
    SecretUnreadableError,
    header_name_problem,
    header_value_problem,
    load_config,
    no_model_warning,
    reference_hint,
    reference_name,
    region_name,
    resolve_credential,
    responses_secret,
)
from handler.errors import GatewayError
from handler.pipeline.budgets import LazySpool
from handler.pipeline.keys import KeyService
from handler.pipeline.provider_keys import (
    NoStoredKeys,
    header_holder,
    header_secrets,
    header_unreadable,
    held_keys,
    install,
    is_stored,
    unreadable,
)
from handler.pipeline.routing import GLOBAL, Attempt, RouteControls, Router, any_model, unplaced_gateway
from handler.pipeline.upstream import UpstreamClient
from handler.ports import STORE_DEADLINE, WRITE_AT_ONCE, ProviderAdapter, Store, StoreError
from handler.telemetry import prometheus
from handler.telemetry.observability import logger

if TYPE_CHECKING:
    from handler.pipeline.budgets import Meter
    from handler.pipeline.spool import SettlementSpool
    from handler.pipeline.stored_keys import ProviderKeys
    from handler.ports import Settlement
    from handler.telemetry.tracing import RequestTracer

DEFAULT_STORE_URL = "sqlite:///.gateway/gateway.db"
# How long a server's shutdown waits for the settlements still in flight (`Gateway.settle_before_exit`); one the
# store has not taken by then is spooled, and re-driven at the next start. More than the meter's five attempts take
# against a store that refuses at once (about 2 s), so such a store still gets them all; well within the time a
# service manager gives a stopping process before it kills it (Docker 10 s, ECS and Kubernetes 30 s). Without it a
# stalled store held the shutdown for the store's every retry (77 s on DynamoDB), past those.
SHUTDOWN_SETTLE_S = 5.0
# How long a server's shutdown then waits to give back the shares of budgets homed in other regions that it drew on
# and did not spend (`Gateway.return_leases_before_exit`); a home that does not answer by then is left to take them
# back itself (a reclaim). With the grace and the settlements' bound, within the 30 s ECS and Kubernetes give.
SHUTDOWN_LEASES_S = 2.0
# How long a server's shutdown then waits for its store to close (`Gateway.close_store_before_exit`): the embedded
# store gives back the unused slices of budgets and rate limits the process holds, once another process's write lock
# is free, and its checkpoint thread ends. Left unclosed, each worker's slice stayed committed in the file until its
# row expired (some 17 minutes), refusing the key's requests early. With the grace, the settlements' and the leases'
# bounds, within the 30 s ECS and Kubernetes give.
SHUTDOWN_CLOSE_S = 2.0


class Gateway:
    """Everything a request needs, shared by all requests of the process."""

    def __init__(
        self,
        config: Config,
        region: str,
        store: Store,
        keys: KeyService,
        router: Router,
        upstream: UpstreamClient,
        tracer: RequestTracer | None = None,  # OTLP span export, when configured (handler/telemetry/tracing.py)
        provider_keys: ProviderKeys
        | NoStoredKeys
        | None = None,  # provider keys held in SSM or Secrets Manager, kept current
        responses_secret: str | None = None,  # `gateway.responses_secret`, read at start (`config.responses_secret`)
        shown_region: str | None = None,  # `region` as /health and /v1/route show it (`shown_region`)
    ) -> None:
        self.config = config
        self.region = region
        self.shown_region = shown_region or region
        self.store = store
        self.keys = keys
        self.router = router
        self.upstream = upstream
        self.tracer = tracer
        self.provider_keys = provider_keys or NoStoredKeys()
        self.responses_secret = responses_secret
        self.background: set[asyncio.Task[None]] = set()
        # While a buffered invocation runs (`Settling`): what `spawn` was given, run after the answer by
        # `settle_now`.
        self.deferred: list[Coroutine[Any, Any, None]] | None = None
        # Settlements `settle_soon` was given: how many wait for their loop callback, and the store's futures of
        # those queued in its batch.
        self.queued = 0
        self.landing: set[asyncio.Future[None]] = set()
        # Admissions that run on past their request's deadline (a 503 answered): their outcome, on which a written
        # one is released (`Meter._release_once_written`). Nothing on a request's path waits for them; what ends
        # with them does, within its bound (`answered_within`): a shutdown, a Lambda invocation.
        self.awaiting: set[asyncio.Future[Any]] = set()
        # Deployment label -> the output ceiling its provider named when refusing a larger cap
        # (handler/pipeline/output_caps.py); bounded by the config's deployments.
        self.ceilings: dict[str, int] = {}
        # Set when the server begins to stop (`gateway serve` on SIGTERM: handler/entry/server.py): a request cut
        # after the shutdown's grace is answered the server's 503 (`shut_down_before`), not a client's 499.
        self.stopping = False

    @property
    def spooled(self) -> LazySpool:
        """Where settlements the store refused wait until they land (handler/pipeline/spool.py), made when first
        needed (`LazySpool`)."""
        return LazySpool.of(self.store)

    @property
    def spool(self) -> SettlementSpool:
        """The settlement spool itself, made (its module imported, its file read) if it was not."""
        return self.spooled.made()

    def start(self) -> None:
        """At start-up, on the serving event loop: re-drive the settlements an earlier run spooled (if its file holds
        any: a stat of it, not a read, when it is empty)."""
        self.spooled.watch(self.store, at_once=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that must finish even if the request that started it is cancelled. A failure is logged
        here: no background exception goes unretrieved (a settlement's own failures reach the spool). While
        `deferred` is set, the work waits there instead, for `settle_now`."""
        if self.deferred is not None:
            self.deferred.append(coro)
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self._reap)

    def settle_soon(self, meter: Meter, settlement: Settlement) -> None:
        """Settle after this step of the request's task (its answer written first), as `spawn(meter.settle(...))`
        would, but without a task: the settlement joins the store's batch from a plain loop callback and the
        store's future says when it is written (`Meter.settle_soon`); only a failed first attempt takes a task."""
        if self.deferred is not None:
            self.deferred.append(meter.settle(settlement))
            return
        self.queued += 1
        asyncio.get_running_loop().call_soon(self._settle_soon, meter, settlement)

    def _settle_soon(self, meter: Meter, settlement: Settlement) -> None:
        self.queued -= 1
        done = meter.settle_soon(settlement)
        if done is None:
            self.spawn(meter.settle(settlement))
            return
        self.landing.add(done)
        done.add_done_callback(functools.partial(self._landed, meter, settlement))

    def _landed(self, meter: Meter, settlement: Settlement, done: asyncio.Future[None]) -> None:
        self.landing.discard(done)
        meter.landed(settlement, done, self.spawn)

    async def settle_now(self, work: list[Coroutine[Any, Any, None]]) -> None:
        """Run `work` (deferred from `spawn`) here, one after another, each written by the store at once
        (`WRITE_AT_ONCE`): no other request is coming to share its write. A buffered invocation's settlements run so
        after its answer, without a task, a done callback and the loop turns that waiting for them would cost. A
        failure is logged as a background task's is."""
        at_once = WRITE_AT_ONCE.set(True)
        try:
            for coro in work:
                try:
                    await coro
                except Exception as exc:  # noqa: BLE001 - logged, as `_reap` logs a task's; the spool has the rest
                    logger.error("a background task failed", exc_info=exc)
        finally:
            WRITE_AT_ONCE.reset(at_once)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self.background.discard(task)
        if task.cancelled():
            return
        failure = task.exception()
        if failure is not None:
            logger.error("a background task failed", exc_info=failure, extra={"task": task.get_name()})

    @property
    def unsettled(self) -> bool:
        """Whether settlements are on their way: tasks, queued for the loop, or in the store's batch."""
        return bool(self.background or self.queued or self.landing)

    async def drain(self) -> None:
        """Wait for background settlements (tests, shutdown, end of a Lambda invocation), without the
        store holding them back for company: no other request is coming to share their write."""
        while self.unsettled:
            await asyncio.sleep(0)  # tasks spawned and settlements queued just now reach the store
            self.store.hurry()
            if self.landing:  # (not awaited as such: this drain must not cancel them, nor raise their errors)
                await asyncio.wait(list(self.landing))
            pending = list(self.background)  # (now: a failed first attempt's retry is one of them)
            for task in pending:  # each awaited as it is: no gathering future and its callbacks
                try:
                    await task
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise  # this drain was cancelled, not only the task
                except Exception:  # noqa: BLE001 - the task's failure is logged where it ends (`_reap`)
                    pass

    async def settle_before_exit(self, timeout_s: float | None = None) -> None:
        """Shutdown's `drain`, bounded by `timeout_s` (`SHUTDOWN_SETTLE_S`) as `settle_late_within` bounds it, to be
        re-driven at the next start: the process exits without losing a settlement."""
        timeout_s = SHUTDOWN_SETTLE_S if timeout_s is None else timeout_s
        if await self.settle_late_within(timeout_s, "the server stopped"):
            logger.warning(
                "shutdown: settlements the store did not take within %.1f s are spooled, re-driven at the next start "
                "(each in a `settlement spooled` line)",
                timeout_s,
            )

    async def return_leases_before_exit(self, timeout_s: float | None = None) -> None:
        """Shutdown's, after the settlements: the unspent shares of budgets homed in other regions that this process
        drew on, given back to their homes (`Store.return_leases`). Left held, each would stay out of its home's reach
        until its idle time had passed and the home was about to refuse a request, while the stopped process could
        never spend it. Bounded by `timeout_s` (`SHUTDOWN_LEASES_S`): a home that cannot be reached does not hold
        the exit; what it did not take back is logged, and comes home as an idle lease does."""
        timeout_s = SHUTDOWN_LEASES_S if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.return_leases()
        except (TimeoutError, StoreError) as exc:
            logger.warning(
                "shutdown: budget leases not given back to their home regions within %.1f s (%s); each comes home "
                "once idle, when its home needs it",
                timeout_s,
                redaction.redact_message(str(exc)) or type(exc).__name__,
            )

    async def close_store_before_exit(self, timeout_s: float | None = None) -> None:
        """Shutdown's last store work, after the settlements and the leases: the store closed (`Store.close`), which
        gives back what the process holds of the shared counters and did not use (the embedded store's slices: kept,
        its workers' each stay committed, refusing the key's requests before its budget is spent, until the slice's
        row expires). Bounded by `timeout_s` (`SHUTDOWN_CLOSE_S`), its store calls by the same deadline
        (`STORE_DEADLINE`): another process holding the file's write lock does not hold the exit; what was not
        given back is logged, and released by the first refusal it would cover once this process has ended."""
        timeout_s = SHUTDOWN_CLOSE_S if timeout_s is None else timeout_s
        bound = STORE_DEADLINE.set(asyncio.get_running_loop().time() + timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                await self.store.close()
        except (TimeoutError, StoreError) as exc:
            logger.warning(
                "shutdown: the store did not close within %.1f s (%s)",
                timeout_s,
                redaction.redact_message(str(exc)) or type(exc).__name__,
            )
        finally:
            STORE_DEADLINE.reset(bound)

    async def answered_within(self, timeout_s: float, by: float | None = None) -> None:
        """Wait at most `timeout_s`, and not past the loop's time `by` where given, for the admissions that ran on
        past their request's deadline (`awaiting`): a written one's release is spawned as its answer comes
        (`Meter._written_late`), for the settlements' drain to write. One still unanswered then is left to run, not
        cancelled: its release comes with its answer, whenever that is (on Lambda, in the environment's next
        invocation, after a thaw)."""
        if not self.awaiting:
            return
        if by is not None:
            timeout_s = min(timeout_s, by - asyncio.get_running_loop().time())
        if timeout_s > 0:
            await asyncio.wait(list(self.awaiting), timeout=timeout_s)

    async def settle_late_within(self, timeout_s: float, reason: str, by: float | None = None) -> bool:
        """`settle_within`, the late admissions' answers waited for first (`answered_within`, until `by` where
        given), all within the one bound `timeout_s`: the releases they spawn are among the settlements it waits
        for. Cut at the exit (`gateway serve`'s shutdown) or the response's end (the streaming function's), a
        written one would hold the key's budget and its minute's counts until its reservation expires. Returns
        whether any settlement was spooled (`settle_within`)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.answered_within(timeout_s, by)
        return await self.settle_within(max(0.0, timeout_s - (loop.time() - started)), reason)

    async def settle_within(self, timeout_s: float, reason: str) -> bool:
        """`drain`, bounded by `timeout_s`: each settlement the store has not taken by then has its attempt
        cancelled with `reason` (its spool line gives it), which spools it (`Meter.settle`, `Meter.landed`), and the
        spool's re-drive is started. A write cut off may have landed; its re-drive then changes nothing. Returns
        whether any was spooled so. What a settlement the store takes at once pays for the bound: one timer."""
        loop = asyncio.get_running_loop()
        cut: list[asyncio.TimerHandle] = []
        fired: list[bool] = []

        def cut_short() -> None:
            fired.append(True)
            for done in list(self.landing):
                done.cancel()  # (the store skips a cancelled one; `_landed` spools it)
            for task in self.background:
                if not task.cancelling():  # (once each: a cancel's own clean-up is left to end)
                    task.cancel(reason)
            if self.unsettled:  # (until they have ended, and any queued just now, which reach the store next turn)
                cut.append(loop.call_later(0.01, cut_short))

        cut.append(loop.call_later(timeout_s, cut_short))
        try:
            await self.drain()  # (the tasks cut end cancelled: that ends no drain)
        finally:
            cut[-1].cancel()
        if not fired:
            return False
        self.spooled.watch(self.store)
        return True

    def nearest(self) -> dict[str, Attempt]:
        """Each model's nearest deployment, by model: where its first requests will go. A model that cannot be
        served as configured (a provider without its key) is left out: its requests will say why."""
        found: dict[str, Attempt] = {}
        for model, spec in self.config.models.items():
            try:
                attempts = self.router.plan(model, RouteControls(), any_model, kind=spec.kind)
            except GatewayError:
                continue
            if attempts:
                found[model] = attempts[0]
        return found

    def origins(self) -> list[str]:
        """The base URL of every model's nearest deployment (`nearest`), each once."""
        return list(dict.fromkeys(attempt.target.base_url for attempt in self.nearest().values()))

    async def warm(self, limit: int = 16) -> None:
        """Open connections to the nearest deployments ahead of the first request (Lambda init)."""
        await asyncio.gather(*(self.upstream.warm(url) for url in self.origins()[:limit]))

    async def reopen(self) -> None:
        """After a SnapStart restore: sockets in the snapshot are dead; cached keys, provider keys read from a secret
        store and AWS credentials from a role may be stale."""
        from adapters.aws import renew_process_credentials

        await asyncio.to_thread(renew_process_credentials)
        await self.upstream.aclose()
        self.upstream = UpstreamClient(self.config.gateway.timeouts, limits=self.config.gateway.limits)
        await self.store.reconnect()
        self.keys.forget()
        await asyncio.gather(self.provider_keys.reread(), self.warm())

    async def aclose(self) -> None:
        await self.settle_before_exit()
        await self.spooled.close()  # what is still pending stays in the spool's file for the next start
        await self.upstream.aclose()
        await self.store.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)


REGION_VARIABLES = ("AWS_REGION", "GATEWAY_REGION")


def gateway_region(environ: Mapping[str, str]) -> str:
    """The gateway's own region: `AWS_REGION` (Lambda sets it), else `GATEWAY_REGION`, else us-east-1, where a
    gateway with neither is placed (shown as `global`: `shown_region`). One that can
    name no region is a `ConfigError` naming its variable, as a config's `region:` is (taken, `eu central` would be the
    gateway's region in `route explain` and `/v1/route`, and deployments ordered from nowhere)."""
    for variable in REGION_VARIABLES:
        value = environ.get(variable)
        if value:
            try:
                return region_name(value)
            except ValueError as exc:
                raise ConfigError([f"{variable}: {exc}"]) from None
    return "us-east-1"


def known_region(environ: Mapping[str, str]) -> str | None:
    """The region the gateway runs in, where a variable names it (`gateway_region`), else None: the us-east-1 it
    routes from then is no place it runs in (a gateway run locally exported `cloud.region: us-east-1` with its
    traces, as if it ran there)."""
    return gateway_region(environ) if any(environ.get(name) for name in REGION_VARIABLES) else None


def shown_region(environ: Mapping[str, str]) -> str:
    """The gateway's region as `/health`, `/v1/route` and `route explain` show it: `global` where no variable names
    one, as `x-gateway-region` says of a deployment with no region (both are placed at us-east-1, which such a
    gateway routes from and runs a Bedrock deployment with no region in). A gateway run locally said us-east-1 in
    `/health` and `global` in every answer."""
    return known_region(environ) or GLOBAL


def gateway_region_warning(config: Config, environ: Mapping[str, str]) -> str | None:
    """The warning of a gateway started in a region it does not know the place of (`routing.unplaced_gateway`)."""
    named_by = "AWS_REGION" if environ.get("AWS_REGION") else "GATEWAY_REGION"
    return unplaced_gateway(gateway_region(environ), named_by, config.gateway.region_latency_ms)


def read_config(path: str | None, registry: Mapping[str, type[ProviderAdapter]]) -> Config:
    """`load_config`, its error naming every problem of the file at once: where the file fails its own checks, the
    options of the providers and deployments that did pass them are checked too (`unread_options`), else said only
    once the rest is fixed (a misspelt setting, then a misnamed provider, then an option: a round each, on Lambda a
    deploy each)."""
    try:
        return load_config(path, set(registry))
    except ConfigError as exc:
        if exc.validated is None:
            raise
        later = [problem for problem in unread_options(exc.validated, registry) if problem not in exc.problems]
        raise ConfigError(exc.problems + later) from None


def unread_options(config: Config, registry: Mapping[str, type[ProviderAdapter]]) -> list[str]:
    """Each option of the config's providers and deployments that their adapter does not read
    (`ProviderAdapter.provider_options`, `deployment_options`): taken and ignored, a misspelt `base_ulr` or `regoin`
    would send requests to the default endpoint or region; each value of one it reads that it cannot take
    (`ProviderAdapter.option_problem`: `max_output_tokens: abc` would fail every request that needs it); and each
    deployment of an embedding model on a provider type that serves no embeddings (`supports_embeddings`: Anthropic,
    Bedrock, DeepSeek), which would be listed to keys and fail every request as the client's 400."""
    problems = []
    for name, provider in config.providers.items():
        if provider.type not in registry:
            continue  # (named by the config's own check)
        cls = registry[provider.type]
        reads = {"base_url", "region", *cls.provider_options} | ({"api_key"} if cls.requires_key else set())
        known = ", ".join(sorted(reads))
        if provider.api_key is not None and not cls.requires_key:  # (Bedrock signs with the AWS credentials)
            problems.append(f"providers.{name}.api_key: provider type {provider.type} reads no key ({known})")
        for option in sorted(set(provider.model_extra or {}) - cls.provider_options):
            problems.append(f"providers.{name}.{option}: not an option of provider type {provider.type} ({known})")
        problems += _option_values(f"providers.{name}", cls, provider.model_extra)
    for model, spec in config.models.items():
        for i, deployment in enumerate(spec.deployments):
            serving = config.providers.get(deployment.provider)
            if serving is None or serving.type not in registry:
                continue  # (named by the config's own check)
            cls = registry[serving.type]
            if spec.kind == "embedding" and not cls.supports_embeddings:
                problems.append(
                    f"models.{model}.deployments[{i}]: provider {deployment.provider} is of type {serving.type}, "
                    "which serves no embeddings: an embedding model's deployments need a provider that does"
                )
            readable = cls.deployment_options
            for option in sorted(set(deployment.model_extra or {}) - readable):
                known = ", ".join(
                    sorted({"provider", "model", "region", "base_url", "reasoning", "default_service_tier", *readable})
                )
                problems.append(f"models.{model}.deployments[{i}].{option}: not an option of a deployment ({known})")
            problems += _option_values(f"models.{model}.deployments[{i}]", cls, deployment.model_extra)
    return problems


def _option_values(where: str, cls: type[ProviderAdapter], options: Mapping[str, Any] | None) -> list[str]:
    """Each option's value its adapter cannot take (`ProviderAdapter.option_problem`), under its path."""
    found = ((option, cls.option_problem(option, value)) for option, value in (options or {}).items())
    return [f"{where}.{option}: {problem}" for option, problem in found if problem]


def new_adapter(name: str, cls: type[ProviderAdapter], options: dict[str, Any]) -> ProviderAdapter:
    """Provider `name`'s adapter, with no key yet; an option's value it cannot take (`profile: bogus`) is a
    `ConfigError` naming the provider (not a traceback after `gateway serve` said it listened)."""
    try:
        return cls(name, None, options)
    except ValueError as exc:
        raise ConfigError([f"providers.{name}: {exc}"]) from None


def check_routes(
    config: Config, registry: Mapping[str, type[ProviderAdapter]], region: str
) -> dict[str, ProviderAdapter]:
    """Raise the `ConfigError` building the gateway's adapters and router would (an option no adapter reads, one it
    cannot take, an Azure provider with no endpoint), reading no secret: what `gateway config check` and `serve` say
    before anything starts. The adapters built, without their keys."""
    problems = unread_options(config, registry)
    if problems:
        raise ConfigError(problems)
    adapters = {name: new_adapter(name, registry[p.type], p.options()) for name, p in config.providers.items()}
    Router(config, adapters, region)
    return adapters


def unsendable_key(provider: str, reference: str, secret: str | None) -> str | None:
    """The config error of provider `provider`'s key `secret`, read from `reference`, where no HTTP header can carry it
    (`header_value_problem`): naming the reference, never the key. None where it can be sent."""
    problem = header_value_problem(secret) if secret else None
    if problem is None:
        return None
    source = reference_name(reference)
    shown = f"the key in {source}" if source == reference else "the key"
    return f"providers.{provider}.api_key: {shown} {problem}"


def unkeyed_providers(
    config: Config, adapters: Mapping[str, ProviderAdapter], environ: Mapping[str, str], fetch: SecretFetcher | None
) -> list[str]:
    """One line for each provider whose key start-up would not find, worded as a header's reference to nothing is
    (`providers.NAME.api_key: env:NAME resolves to nothing: ...`), never with a value: what `gateway config check`
    and `serve` warn of. Not refused, as a header's is: the gateway serves without such a provider (its deployments
    answer 503 `provider_not_configured`, a fallback serving where one has its key), as the shipped config, naming
    five providers' variables, is served with one or two set; a key stored later in SSM or Secrets Manager is read
    within `provider_key_refresh_seconds`. A key found that no HTTP header can carry is refused (a `ConfigError`), as
    start-up refuses it (`build_adapters`)."""
    warnings = []
    unsendable = []
    for name, provider in config.providers.items():
        adapter = adapters[name]
        reference = provider.key_reference(adapter.key_env_var)
        if not adapter.requires_key or reference is None:
            continue  # (Bedrock's AWS credentials, `auth: none`, an Azure resource's Entra ID header)
        shown = reference if provider.api_key else f"{reference} (its type's variable: no api_key is set)"
        try:
            secret = resolve_credential(reference, environ, fetch)
        except SecretUnreadableError as failure:
            warnings.append(f"providers.{name}.api_key: {failure}; the server reads it again while it serves")
            continue
        if problem := unsendable_key(name, reference, secret):
            unsendable.append(problem)
        if secret is None:
            when = (
                f"read again every {config.gateway.provider_key_refresh_seconds:g} s"
                if is_stored(reference)
                else "where the gateway runs; read at start"
            )
            warnings.append(
                f"providers.{name}.api_key: {shown} resolves to nothing: its deployments are passed over "
                f"(503 provider_not_configured where no other serves the model); {reference_hint(reference)} ({when})"
            )
    if unsendable:
        raise ConfigError(unsendable)
    return warnings


def build_adapters(
    config: Config,
    registry: Mapping[str, type[ProviderAdapter]],
    environ: Mapping[str, str],
    fetch: SecretFetcher | None = None,
) -> dict[str, ProviderAdapter]:
    """Each provider's adapter, with its key and headers resolved (a key or a header's value in a store that could not
    be read is read again later: handler/pipeline/provider_keys.py). A key no HTTP header can carry is a
    `ConfigError` naming its reference (`unsendable_key`): it would fail every request."""
    problems = unread_options(config, registry)
    if problems:
        raise ConfigError(problems)
    adapters: dict[str, ProviderAdapter] = {}
    unsendable = []
    for name, provider in config.providers.items():
        cls = registry[provider.type]
        options = provider.options()
        unread: dict[str, SecretUnreadableError] = {}
        if "headers" in options:
            options["headers"], unread = provider_headers(name, options["headers"], environ, fetch)
        adapter = adapters[name] = new_adapter(name, cls, options)
        for header, failure in unread.items():  # (read again later, as a key is)
            header_unreadable(adapter, header, failure)
        ref = provider.key_reference(cls.key_env_var)
        try:
            secret = resolve_credential(ref, environ, fetch)
        except SecretUnreadableError as failure:  # (read again later: handler/pipeline/provider_keys.py)
            unreadable(adapter, failure)
            continue
        if ref is not None and (problem := unsendable_key(name, ref, secret)):
            unsendable.append(problem)
            continue
        install(adapter, ref, secret)
    if unsendable:
        raise ConfigError(unsendable)
    return adapters


def key_references(config: Config, registry: Mapping[str, type[ProviderAdapter]]) -> dict[str, str | None]:
    """Each provider's key reference (`env:NAME`, `ssm:/path`, a literal), by provider name."""
    return {name: p.key_reference(registry[p.type].key_env_var) for name, p in config.providers.items()}


def header_references(config: Config) -> dict[str, dict[str, str]]:
    """Each provider's `headers` whose value is held in SSM or Secrets Manager: header -> reference, by provider
    name (the values `ProviderKeys` reads again)."""
    found: dict[str, dict[str, str]] = {}
    for name, provider in config.providers.items():
        headers = provider.options().get("headers")
        if isinstance(headers, dict):
            stored = {str(h): str(ref) for h, ref in headers.items() if isinstance(ref, str) and is_stored(ref)}
            if stored:
                found[name] = stored
    return found


# A header whose name says it carries a credential: its value is a secret even when written in the config.
CREDENTIAL_HEADER = r"(?i)auth|key|token|secret|password|signature|cookie|session"  # (compiled when used)


def provider_headers(
    provider: str, headers: Any, environ: Mapping[str, str], fetch: SecretFetcher | None
) -> tuple[dict[str, str], dict[str, SecretUnreadableError]]:
    """A provider's extra `headers`, each value a literal or a reference (`env:NAME`, `ssm:/path`,
    `secretsmanager:NAME`) as `api_key` takes; and those held in a store that could not be read (throttled,
    unreachable), each given no value (`""`) until it is (handler/pipeline/provider_keys.py), as a provider's key is.
    A value from a reference, or under a credential's name (`authorization`, `x-api-key`, ...), is registered as a
    secret: redacted from everything relayed (one from a store in place of the one it replaces, when read again).
    A name that is no HTTP token (`x title`), or a value no header can carry (`Café app`, a line break), is a
    `ConfigError` naming the header, never the value: it would fail every request (a 500, or the provider
    unreachable)."""
    if not isinstance(headers, dict) or any(isinstance(v, dict | list) for v in headers.values()):
        raise ConfigError([f"providers.{provider}.headers: a mapping of header names to values"])
    resolved: dict[str, str] = {}
    unread: dict[str, SecretUnreadableError] = {}
    for header, raw in headers.items():
        if problem := header_name_problem(str(header)):
            raise ConfigError([f"providers.{provider}.headers.{header}: {problem}"])
        # (A number or a flag, written as YAML reads it: as before; the whitespace around a value is no part of it.)
        value = "" if raw is None else str(raw).strip()
        try:
            secret = resolve_credential(value, environ, fetch) if value else value
        except SecretUnreadableError as failure:
            resolved[str(header)], unread[str(header)] = "", failure
            continue
        if secret is None:
            raise ConfigError([f"providers.{provider}.headers.{header}: {reference_name(value)} resolves to nothing"])
        if problem := header_value_problem(secret):
            shown = f"the value in {value}" if reference_name(value) == value else "its value"
            raise ConfigError([f"providers.{provider}.headers.{header}: {shown} {problem}"])
        if is_stored(value):
            redaction.register_current(header_holder(provider, str(header)), *header_secrets(secret))
        elif secret != value or re.search(CREDENTIAL_HEADER, str(header)):
            redaction.register(*header_secrets(secret))
        resolved[str(header)] = secret
    return resolved, unread


def build_gateway(
    *,
    config: Config | None = None,
    config_path: str | None = None,
    store: Store | None = None,
    store_url: str | None = None,
    environ: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    fetch: SecretFetcher | None = None,
) -> Gateway:
    """Build the process's gateway from explicit parts or the environment."""
    from adapters.providers.registry import REGISTRY
    from adapters.store import open_store

    env = os.environ if environ is None else environ
    if config is None:
        config = read_config(config_path or env.get("GATEWAY_CONFIG") or None, REGISTRY)
    if store is None:
        store = open_store(store_url or env.get("GATEWAY_STORE") or DEFAULT_STORE_URL)
    region = gateway_region(env)
    if (unplaced := gateway_region_warning(config, env)) is not None:
        logger.warning(unplaced)
    if (modelless := no_model_warning(config)) is not None:
        logger.warning(modelless)
    redaction.register(env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN"))
    adapters = build_adapters(config, REGISTRY, env, fetch)
    sealing = responses_secret(config.gateway, env, fetch)
    redaction.register(sealing)
    refresh_s = config.gateway.provider_key_refresh_seconds
    return Gateway(
        config=config,
        region=region,
        store=store,
        keys=KeyService(store, config.gateway.key_cache_seconds),
        router=Router(config, adapters, region),
        upstream=UpstreamClient(config.gateway.timeouts, transport, config.gateway.limits),
        tracer=build_tracer(config, env, known_region(env), fetch),
        provider_keys=held_keys(
            adapters, key_references(config, REGISTRY), refresh_s, env, fetch, headers=header_references(config)
        ),
        responses_secret=sealing,
        shown_region=shown_region(env),
    )


def build_tracer(
    config: Config, environ: Mapping[str, str], region: str | None, fetch: SecretFetcher | None = None
) -> RequestTracer | None:
    """The OTLP span exporter, where an endpoint is configured, its spans' `cloud.region` the gateway's `region`
    where one is known (`known_region`; None: left out). Without an endpoint (`observability.otlp` absent, no
    `OTEL_EXPORTER_OTLP_*ENDPOINT`) handler/telemetry/tracing.py is not even imported: a cold start pays
    nothing for it."""
    named = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if config.observability.otlp is None and not any(environ.get(name) for name in named):
        return None
    from handler.telemetry import tracing

    settings = tracing.otlp_settings(config.observability.otlp, environ, fetch)
    for value in settings.headers.values() if settings else ():
        # A collector's token is a secret like any other, with its scheme (`Bearer <token>`) and without it: a log line
        # or an error may echo the token alone.
        redaction.register(*header_secrets(value))
    return tracing.build_tracer(settings, region, on_drop=prometheus.REGISTRY.spans_dropped)
