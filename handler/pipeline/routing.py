"""Which deployments a request may try, in which order: nearest region first, then fallbacks.

The order is a pure function of the config, the gateway's region, the client's pins and the
breakers' state, so `GET /v1/route` can show it without sending anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from handler.config import Config, ConfigError, ModelConfig, Price, reference_hint
from handler.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UpstreamRateLimitedError,
    model_not_allowed,
)
from handler.pipeline.breakers import Breakers
from handler.pipeline.pricing import price_for, tier_rates
from handler.pipeline.provider_keys import RETRY_S
from handler.pipeline.regions import GLOBAL, REGION_COORDINATES, distance_km, placed, unplaced
from handler.ports import Geography, ProviderAdapter, Target
from handler.records import Value
from handler.redaction import clipped

# How long a service tier dearer than the default, said by an answer to a request that named none, stays the tier
# such requests on its deployment are reserved at (`Router.ran_unasked`) once answers say a cheaper one: OpenAI
# serves some of a priority project's requests at the default tier past its ramp limits, between priority ones.
TIER_REMEMBERED_S = 600.0

# The round trip estimated per kilometre of great-circle distance: light in fibre goes 100 km and back in 1 ms, and
# the routes run longer than the great circle (us-east-1 to eu-west-1, 5,470 km: 82 ms estimated, 70-75 measured;
# to us-east-2, 496 km: 7 ms, about 11 measured). Measured times and estimates order the deployments together.
ESTIMATED_RTT_MS_PER_KM = 0.015


def outside(where: str, model: str, region: str, geography: Geography, set_at: str) -> str:
    """The config error of a deployment of a geographic inference profile in a region outside its geography."""
    regions = ", ".join(geography.sources) or "any commercial AWS region"
    inherited = "" if set_at == where else f" (its provider's, {set_at}.region)"
    return (
        f"{where}: '{model}' is an inference profile of geography '{geography.name}', which AWS refuses from region "
        f"'{region}'{inherited}: give the deployment a region of its geography ({regions})"
    )


def unplaced_gateway(region: str, named_by: str, latency_ms: Mapping[str, Mapping[str, float]]) -> str | None:
    """The warning of a gateway whose own region (`named_by`: `AWS_REGION` or `GATEWAY_REGION`) it does not know the
    place of, else None. Not refused: the gateway runs where it is started (a region opened after this release), and
    its deployments in that same region are still tried first; the others are tried in the config's order, not
    nearest first."""
    if region in REGION_COORDINATES or region in latency_ms:
        return None
    return (
        f"the gateway's region '{region}' ({named_by}) is not one it knows the place of: deployments in other regions "
        f"are tried in the config's order, not nearest first; measure their round trips from it in "
        f"gateway.region_latency_ms.{region}"
    )


def a_model(kind: str) -> str:
    """A kind of model with its article: `a chat model`, `an embedding model`."""
    return f"{'an' if kind[:1] in ('a', 'e', 'i', 'o', 'u') else 'a'} {kind} model"


class Attempt(Value):
    """One deployment to try: the public model it serves and how to reach it."""

    __slots__ = ("model", "spec", "target", "adapter", "distance_km", "rtt_ms", "measured", "tiers", "taken")

    def __init__(
        self,
        model: str,
        spec: ModelConfig,
        target: Target,
        adapter: ProviderAdapter,
        distance_km: float,
        rtt_ms: float,
        measured: bool,
        tiers: Mapping[str, float] = MappingProxyType({}),
        taken: frozenset[str] = frozenset(),
    ) -> None:
        self.model: Final = model
        self.spec: Final = spec
        self.target: Final = target
        self.adapter: Final = adapter
        self.distance_km: Final = distance_km
        # The round trip from the gateway's region, which orders the deployments: `measured` (the config's), else
        # estimated from the distance.
        self.rtt_ms: Final = rtt_ms
        self.measured: Final = measured
        # The multiplier of each OpenAI service tier its model is billed at, and the tiers a request may ask it for
        # (`pricing.tier_rates`), resolved once with the router: a tier not taken is refused.
        self.tiers: Final = tiers
        self.taken: Final = taken


class Plan(list[Attempt]):
    """The attempts to make, in order, and the fallback models left out because the key (or an ancestor)
    may not use them: `skipped`, and `skipped_at`, each one's place among the attempts (before the attempt at that
    index; after the last at `len`), where `x-gateway-route` names it."""

    skipped: list[str]
    skipped_at: dict[int, list[str]]
    chain: list[str]

    def __init__(self, attempts: list[Attempt], skipped: list[str], chain: list[str] | None = None) -> None:
        """`chain`: the models planned, in order, with the skipped ones among them."""
        super().__init__(attempts)
        self.skipped = skipped
        self.chain = chain or []
        self.skipped_at = {}
        if skipped and chain:
            for name in skipped:
                before = chain[: chain.index(name)]
                self.skipped_at.setdefault(sum(a.model in before for a in attempts), []).append(name)


def any_model(model: str) -> bool:
    """The scope of the gateway itself (no key): every configured model."""
    return True


def unpriced_default_tier(where: str, tier: str, model: str, rates: Mapping[str, float]) -> str:
    """The config error of a deployment's `default_service_tier` that its model has no multiplier for: its requests
    would be reserved, and billed, at the plain price."""
    priced = ", ".join(sorted(rates)) or "none"
    return (
        f"{where}.default_service_tier: '{tier}' has no price for model '{model}' (the tiers it has a multiplier "
        f"for: {priced}; from its price's `options.service_tier`, the built-in table's, or "
        "gateway.priced_options.service_tier)"
    )


class RouteControls(Value):
    """The client's routing headers."""

    __slots__ = ("fallbacks", "provider", "region")

    def __init__(
        self, fallbacks: list[str] | None = None, provider: str | None = None, region: str | None = None
    ) -> None:
        self.fallbacks: Final = fallbacks
        self.provider: Final = provider
        self.region: Final = region


class Router:
    """Plans attempts for a public model."""

    def __init__(
        self,
        config: Config,
        adapters: dict[str, ProviderAdapter],
        region: str,
        breakers: Breakers | None = None,
    ) -> None:
        self.config = config
        self.adapters = adapters
        self.region = region
        self.breakers = breakers or Breakers()
        self._latency = config.gateway.region_latency_ms.get(region, {})
        # The OpenAI service tier each deployment runs a request that names none at, where it costs more than the
        # default: the dearest of the config's `default_service_tier` and the tiers answers to such requests said
        # they ran at lately (`ran_unasked`). Its requests that name none are reserved at that tier's price. By the
        # identity of its `Attempt`, which lives as long as the router: one dict read at an admission, no label
        # formatted.
        self.unasked_tiers: dict[int, str] = {}
        self._told_tiers: dict[int, str] = {}  # the config's `default_service_tier`s, which no answer lowers
        # By deployment, the tiers dearer than the default that its answers to such requests said, each with when
        # the last of them said it (`time.monotonic`): empty while none has, and settling reads nothing more.
        self.heard_tiers: dict[int, dict[str, float]] = {}
        problems: list[str] = []
        self._targets = {model: self._build(model, spec, problems) for model, spec in config.models.items()}
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))  # (a provider's region, once for all its deployments)

    def _build(self, model: str, spec: ModelConfig, problems: list[str]) -> list[Attempt]:
        """`model`'s attempts, nearest first. One of `problems`: a deployment's region the gateway cannot place (its
        distance unknown, it was ranked last unsaid), a geographic inference profile's region outside its geography
        (AWS refuses it there), a `default_service_tier` its model has no price for."""
        attempts = []
        gateway_tiers = self.config.gateway.priced_options.service_tier
        latency = self.config.gateway.region_latency_ms
        for i, dep in enumerate(spec.deployments):
            adapter = self.adapters[dep.provider]
            provider = self.config.providers[dep.provider]
            where = f"models.{model}.deployments[{i}]" if dep.region else f"providers.{dep.provider}"
            geography = adapter.geography(dep.model)
            region = dep.region or provider.region
            if region is None:  # (the gateway's own, warned of where unknown: `unplaced_gateway`)
                region = self._home(geography) if geography else (self.region if adapter.regional else GLOBAL)
            elif not placed(region, latency):
                problems.append(f"{where}.region: {unplaced(region)}")
            elif geography is not None and not geography.takes(region):
                problems.append(outside(f"models.{model}.deployments[{i}]", dep.model, region, geography, where))
            base_url = adapter.base_url(region, dep.base_url)
            options = dict(dep.model_extra or {})
            if dep.reasoning is not None:
                options["reasoning"] = dep.reasoning
            target = Target(dep.provider, provider.type, dep.model, region, base_url, options)
            km = distance_km(self.region, region)
            measured = self._latency.get(region)
            rtt = measured if measured is not None else km * ESTIMATED_RTT_MS_PER_KM
            price = price_for(model, spec, dep.model)
            rates, taken = tier_rates(price, gateway_tiers, configured=isinstance(spec.price, Price))
            tiers = MappingProxyType(rates)
            tier = dep.default_service_tier
            if tier is not None and tier not in rates:
                problems.append(unpriced_default_tier(f"models.{model}.deployments[{i}]", tier, model, rates))
            attempt = Attempt(model, spec, target, adapter, km, rtt, measured is not None, tiers, taken)
            if tier is not None:
                self.unasked_tiers[id(attempt)] = self._told_tiers[id(attempt)] = tier
            attempts.append(attempt)
        # One unit for all: a region the config measured and one it did not are compared in milliseconds (kilometres
        # against milliseconds served from Ireland a gateway in Virginia that had Ohio, 496 km away, beside it).
        return sorted(attempts, key=lambda a: a.rtt_ms)

    def _home(self, geography: Geography) -> str:
        """The region a deployment of `geography`'s model that names none runs in: the gateway's own where it is of
        the geography (as any Bedrock deployment's), else the nearest of its regions every account has."""
        if geography.takes(self.region):
            return self.region
        return min(geography.defaults, key=lambda region: distance_km(self.region, region))

    def ran_unasked(self, attempt: Attempt, tier: str) -> None:
        """An answer of `attempt`'s deployment to a request that named no service tier says it ran at `tier`: its
        such requests are reserved at the dearest tier its answers said within `TIER_REMEMBERED_S`, never below its
        `default_service_tier` (`unasked_tiers`). Learned for the process's life, a project that went back to the
        default tier had every such request reserved at priority: twice the worst case, refused with budget left."""
        key = id(attempt)
        heard = self.heard_tiers.get(key)
        dearer = attempt.tiers.get(tier, 1.0) > 1.0
        if heard is None and not dearer:
            return  # (nothing learned, and nothing to learn)
        now = time.monotonic()
        if heard is None:
            heard = self.heard_tiers[key] = {}
        if dearer:
            heard[tier] = now
        for name, said_at in list(heard.items()):
            if now - said_at > TIER_REMEMBERED_S:
                del heard[name]
        told = self._told_tiers.get(key)
        known = [*heard, told] if told is not None else list(heard)
        if known:
            self.unasked_tiers[key] = max(known, key=lambda name: attempt.tiers.get(name, 1.0))
        else:
            self.unasked_tiers.pop(key, None)
        if not heard:
            del self.heard_tiers[key]

    def spec(self, model: str) -> ModelConfig:
        spec = self.config.models.get(model)
        if spec is None:
            raise NotFoundError(f"model '{clipped(model)}' does not exist on this gateway", param="model")
        return spec

    def plan(self, model: str, controls: RouteControls, allowed: Callable[[str], bool], kind: str = "chat") -> Plan:
        """Attempts in order: the model's deployments nearest first, then its fallbacks'. Only models
        `allowed` (the key's scope along its whole chain) are planned: a forbidden fallback, from the config
        or the client's header, is skipped and named in `Plan.skipped`. A deployment whose provider has no key is
        left out (`503 provider_not_configured` when none is left). One whose breaker is open keeps its place: the
        failover passes it over, and `shed` refuses a request that has none left to try."""
        candidates = self._candidates(model, controls, allowed, kind)
        usable = [a for a in candidates if self._keyed(a)]
        if not usable:
            first = candidates[0]
            adapter = first.adapter
            unread = adapter.unread is not None or bool(adapter.unread_headers)  # (read later: the client may retry)
            header = next(iter(adapter.unread_headers), None)
            lacks = "API key" if header is None else f"value for its header {header}"
            if adapter.process_credentials and adapter.missing_credentials():
                lacks = "AWS credentials"
            raise ServiceUnavailableError(
                f"provider '{first.target.provider}' for model '{model}' has no {lacks}: {self._key_hint(first)}",
                code="provider_not_configured",
                retry=unread,
                headers={"retry-after": str(math.ceil(RETRY_S))} if unread else None,
            )
        return Plan(usable, candidates.skipped, candidates.chain)

    def shed(self, plan: list[Attempt]) -> GatewayError | None:
        """The refusal of a request none of whose `plan` may be tried now, every deployment's breaker open (or
        half-open with its one probe under way), else None; its `retry-after` is when the first may be tried again.
        Where every one of them opened on its provider's 429s, the providers are rate-limiting: a 429
        `upstream_rate_limited`, which the SDKs, Claude Code and Codex wait out and retry; else the 503
        `no_deployment_available` (on Anthropic's API an `overloaded_error`)."""
        breakers = self.breakers
        if any(breakers.available(a.target.label) for a in plan):
            return None
        wait = str(max(1, math.ceil(min(breakers.wait(a.target.label) for a in plan))))
        if all(breakers.rate_limited(a.target.label) for a in plan):
            limited = UpstreamRateLimitedError(
                f"every deployment of '{plan[0].model}' is rate-limiting the gateway (their circuit breakers opened "
                f"on their providers' 429s): nothing was sent; retry after {wait} s",
                upstream_status=429,
                headers={"retry-after": wait},
            )
            limited.should_retry = True
            return limited
        return ServiceUnavailableError(
            f"every deployment's circuit breaker is open: nothing was sent; retry after {wait} s",
            code="no_deployment_available",
            headers={"retry-after": wait},
        )

    @staticmethod
    def _keyed(attempt: Attempt) -> bool:
        adapter = attempt.adapter
        if adapter.requires_key and not adapter.secret or adapter.unread_headers:
            return False
        return not (adapter.process_credentials and adapter.missing_credentials())

    def _key_hint(self, attempt: Attempt) -> str:
        """Where the operator puts the key `attempt`'s provider lacks, or why a header's value in a store was not
        read; never a secret."""
        if attempt.adapter.process_credentials and (missing := attempt.adapter.missing_credentials()):
            return missing
        for failure in attempt.adapter.unread_headers.values():  # (the credential may be a header: Entra ID's)
            return f"{failure}; the gateway reads it again within {RETRY_S:g} s"
        if attempt.adapter.refused_reference:  # set, but to one of this gateway's own keys (a client's setup)
            return (
                f"{attempt.adapter.refused_reference} holds one of this gateway's own keys (gwk_...), not the "
                "provider's: set the provider's key there in the gateway's environment (a gateway key belongs "
                "in a client's)"
            )
        provider = self.config.providers[attempt.target.provider]
        reference = provider.key_reference(attempt.adapter.key_env_var)
        if attempt.adapter.unread and reference:  # (stored, but the store did not answer: not a missing key)
            return (
                f"{reference} could not be read ({attempt.adapter.unread}); the gateway reads it again within "
                f"{RETRY_S:g} s"
            )
        return reference_hint(reference)

    def _candidates(self, model: str, controls: RouteControls, allowed: Callable[[str], bool], kind: str) -> Plan:
        """`plan`'s attempts nearest first, those without a key included, and the fallbacks out of scope."""
        spec = self.spec(model)
        if not allowed(model):
            raise model_not_allowed(model)
        if spec.kind != kind:
            raise InvalidRequestError(f"model '{model}' is {a_model(spec.kind)}, not {a_model(kind)}", param="model")
        chain = [model]
        skipped: list[str] = []
        planned = [model]  # (the chain with the skipped ones in their places)
        fallbacks = spec.fallbacks if controls.fallbacks is None else controls.fallbacks
        for name in fallbacks:
            if name not in self.config.models:  # (the config's own are checked at load: the client's header named it)
                raise NotFoundError(
                    f"fallback model '{clipped(name)}' in x-gateway-fallbacks does not exist on this gateway",
                    param="x-gateway-fallbacks",
                )
            if (other := self.config.models[name].kind) != kind:  # (the config's own are of its kind: checked at load)
                raise InvalidRequestError(
                    f"fallback model '{clipped(name)}' in x-gateway-fallbacks is {a_model(other)}, not {a_model(kind)}",
                    param="x-gateway-fallbacks",
                )
            if name in chain or name in skipped:
                continue
            if allowed(name):
                chain.append(name)
            else:
                skipped.append(name)
            planned.append(name)
        attempts = [a for name in chain for a in self._targets[name] if self._pinned(a, controls)]
        if not attempts and any(self._pinned(a, controls) for name in skipped for a in self._targets[name]):
            raise PermissionDeniedError(
                f"the pinned provider/region serves '{model}' only through fallbacks this key may not use: "
                + ", ".join(skipped),
                code="model_not_allowed",
            )
        if not attempts:
            raise ServiceUnavailableError(
                f"no deployment of '{model}' matches the pinned provider/region",
                code="no_deployment_available",
                retry=False,
            )
        return Plan(attempts, skipped, planned)

    def explain(self, model: str, controls: RouteControls, allowed: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The order `plan` would try now, with the reason for each place. A deployment whose provider has no key
        keeps its place, marked skipped with where to put the key (explaining needs none); a fallback out of the
        key's scope comes last."""
        spec = self.spec(model)
        candidates = self._candidates(model, controls, allowed, spec.kind)
        explained: list[dict[str, Any]] = []
        for a in candidates:
            entry = {
                "model": a.model,
                "provider": a.target.provider,
                "type": a.target.provider_type,
                "upstream_model": a.target.model,
                "region": a.target.region,
                "distance_km": round(a.distance_km, 1),
                "rtt_ms": round(a.rtt_ms, 1),
                "rtt": "measured" if a.measured else "estimated",
                "breaker": self.breakers.state(a.target.label),
                "role": "primary" if a.model == model else "fallback",
                "pinned": bool(controls.provider or controls.region),
            }
            if not self._keyed(a):
                entry |= {"skipped": "provider_not_configured", "hint": self._key_hint(a)}
            explained.append(entry)
        skipped = [{"model": name, "role": "fallback", "skipped": "model_not_allowed"} for name in candidates.skipped]
        return explained + skipped

    @staticmethod
    def _pinned(attempt: Attempt, controls: RouteControls) -> bool:
        if controls.provider and attempt.target.provider != controls.provider:
            return False
        return not (controls.region and attempt.target.region != controls.region)
