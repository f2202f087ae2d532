"""Which deployments a request may try, in which order: nearest region first, then fallbacks.

The order is a pure function of the config, the gateway's region, the client's pins and the
breakers' state, so `GET /v1/route` can show it without sending anything.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from handler.config import Config, ConfigError, DeploymentConfig, ModelConfig, Price, reference_hint
from handler.errors import (
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UpstreamRateLimitedError,
    model_not_allowed,
)
from handler.pipeline.breakers import Breakers, CountBreakers
from handler.pipeline.pricing import price_for, tier_rates
from handler.pipeline.provider_keys import RETRY_S
from handler.ports import Geography, ProviderAdapter, Target
from handler.records import Value
from handler.redaction import clipped, echoed

# Where the clouds' regions are, for ordering deployments by their distance from the gateway's region.
#
# A deployment's round trip is estimated from the great-circle distance between its region and the gateway's where the
# config measured none (`gateway.region_latency_ms`). The places are those the clouds publish: AWS's regions (every
# partition but the isolated ones, whose places are not public), Azure's (`az account list-locations`'s coordinates,
# a newer region's city from Microsoft's list of regions) and Google Cloud's (the city each of its regions is in).
# A region the table does not know is refused in a deployment (`unplaced`) and warned of as the gateway's own: its
# distance could only be guessed, and every deployment in it would be ranked last, the gateway's own Bedrock region
# too.
# (Here, not in a module of their own: a module more costs every cold start some 0.34 million instructions.)

# AWS: botocore's endpoint data names them (each partition's `regions`); the places are AWS's own names for them.
AWS_PLACES = """
us-east-1 38.9 -77.4 N. Virginia
us-east-2 40.0 -83.0 Ohio
us-west-1 37.4 -121.9 N. California
us-west-2 45.8 -119.7 Oregon
ca-central-1 45.5 -73.6 Montréal
ca-west-1 51.0 -114.1 Calgary
mx-central-1 20.6 -100.4 Querétaro
sa-east-1 -23.5 -46.6 São Paulo
eu-west-1 53.3 -6.3 Ireland
eu-west-2 51.5 -0.1 London
eu-west-3 48.9 2.4 Paris
eu-central-1 50.1 8.7 Frankfurt
eu-central-2 47.4 8.5 Zurich
eu-north-1 59.3 18.1 Stockholm
eu-south-1 45.5 9.2 Milan
eu-south-2 41.6 -0.9 Spain (Aragón)
me-south-1 26.1 50.6 Bahrain
me-central-1 24.5 54.4 UAE
il-central-1 32.1 34.8 Tel Aviv
af-south-1 -33.9 18.4 Cape Town
ap-east-1 22.3 114.2 Hong Kong
ap-east-2 25.0 121.5 Taipei
ap-south-1 19.1 72.9 Mumbai
ap-south-2 17.4 78.5 Hyderabad
ap-northeast-1 35.7 139.7 Tokyo
ap-northeast-2 37.6 127.0 Seoul
ap-northeast-3 34.7 135.5 Osaka
ap-southeast-1 1.3 103.8 Singapore
ap-southeast-2 -33.9 151.2 Sydney
ap-southeast-3 -6.2 106.8 Jakarta
ap-southeast-4 -37.8 145.0 Melbourne
ap-southeast-5 3.1 101.7 Malaysia (Kuala Lumpur)
ap-southeast-6 -36.8 174.8 New Zealand (Auckland)
ap-southeast-7 13.8 100.5 Thailand (Bangkok)
cn-north-1 39.9 116.4 Beijing
cn-northwest-1 37.5 105.2 Ningxia
us-gov-east-1 40.0 -83.0 GovCloud (US-East): Ohio
us-gov-west-1 45.6 -121.2 GovCloud (US-West): Oregon
eusc-de-east-1 52.4 13.1 European Sovereign Cloud: Brandenburg
"""

AZURE_PLACES = """
eastus 37.3719 -79.8164 Virginia
eastus2 36.6681 -78.3889 Virginia
centralus 41.5908 -93.6208 Iowa
northcentralus 41.8819 -87.6278 Illinois
southcentralus 29.4167 -98.5 Texas
westcentralus 40.89 -110.234 Wyoming
westus 37.783 -122.417 California
westus2 47.233 -119.852 Washington
westus3 33.448 -112.074 Phoenix
canadacentral 43.653 -79.383 Toronto
canadaeast 46.817 -71.217 Quebec
mexicocentral 20.59 -100.39 Querétaro State
brazilsouth -23.55 -46.633 Sao Paulo State
brazilsoutheast -22.903 -43.208 Rio
chilecentral -33.45 -70.67 Santiago
northeurope 53.3478 -6.2597 Ireland
westeurope 52.3667 4.9 Netherlands
uksouth 50.941 -0.799 London
ukwest 53.427 -3.084 Cardiff
francecentral 46.3772 2.373 Paris
francesouth 43.8345 2.1972 Marseille
germanywestcentral 50.111 8.682 Frankfurt
germanynorth 53.074 8.806 Berlin
switzerlandnorth 47.452 8.565 Zurich
switzerlandwest 46.204 6.143 Geneva
norwayeast 59.914 10.752 Oslo
norwaywest 58.97 5.733 Stavanger
swedencentral 60.675 17.141 Gävle
swedensouth 55.6 13.0 Malmö
polandcentral 52.23 21.01 Warsaw
italynorth 45.46 9.19 Milan
spaincentral 40.42 -3.7 Madrid
austriaeast 48.21 16.37 Vienna
belgiumcentral 50.85 4.35 Brussels
denmarkeast 55.68 12.57 Copenhagen
israelcentral 32.1 34.8 Israel
qatarcentral 25.551 51.439 Doha
uaenorth 25.267 55.317 Dubai
uaecentral 24.467 54.367 Abu Dhabi
southafricanorth -25.731 28.218 Johannesburg
southafricawest -34.076 18.843 Cape Town
centralindia 18.5822 73.9197 Pune
southindia 12.9822 80.1636 Chennai
westindia 19.088 72.868 Mumbai
jioindiacentral 21.147 79.089 Nagpur
jioindiawest 22.471 70.058 Jamnagar
eastasia 22.267 114.188 Hong Kong
southeastasia 1.283 103.833 Singapore
japaneast 35.68 139.77 Tokyo, Saitama
japanwest 34.6939 135.5022 Osaka
koreacentral 37.5665 126.978 Seoul
koreasouth 35.1796 129.0756 Busan
australiaeast -33.86 151.2094 New South Wales
australiasoutheast -37.8136 144.9631 Victoria
australiacentral -35.3075 149.1244 Canberra
australiacentral2 -35.3075 149.1244 Canberra
newzealandnorth -36.85 174.76 Auckland
indonesiacentral -6.2 106.85 Jakarta
malaysiawest 3.14 101.69 Kuala Lumpur
usgovvirginia 37.37 -79.82 Azure Government: Virginia
usgovarizona 33.45 -112.07 Azure Government: Arizona
usgovtexas 29.42 -98.49 Azure Government: Texas
"""

GOOGLE_CLOUD_PLACES = """
us-central1 41.26 -95.86 Council Bluffs, Iowa
us-east1 33.2 -80.0 Moncks Corner, South Carolina
us-east4 39.0 -77.5 Ashburn, Virginia
us-east5 40.0 -83.0 Columbus, Ohio
us-south1 32.8 -96.8 Dallas, Texas
us-west1 45.6 -121.2 The Dalles, Oregon
us-west2 34.05 -118.24 Los Angeles, California
us-west3 40.76 -111.89 Salt Lake City, Utah
us-west4 36.17 -115.14 Las Vegas, Nevada
northamerica-northeast1 45.5 -73.6 Montréal
northamerica-northeast2 43.7 -79.4 Toronto
northamerica-south1 20.6 -100.4 Querétaro
southamerica-east1 -23.5 -46.8 Osasco, São Paulo
southamerica-west1 -33.4 -70.7 Santiago
europe-west1 50.47 3.82 St. Ghislain, Belgium
europe-west2 51.5 -0.1 London
europe-west3 50.1 8.7 Frankfurt
europe-west4 53.44 6.83 Eemshaven, Netherlands
europe-west6 47.4 8.5 Zurich
europe-west8 45.5 9.2 Milan
europe-west9 48.9 2.4 Paris
europe-west10 52.5 13.4 Berlin
europe-west12 45.1 7.7 Turin
europe-southwest1 40.4 -3.7 Madrid
europe-central2 52.2 21.0 Warsaw
europe-north1 60.57 27.2 Hamina, Finland
europe-north2 59.3 18.1 Stockholm
me-west1 32.1 34.8 Tel Aviv
me-central1 25.3 51.5 Doha
me-central2 26.4 50.1 Dammam
africa-south1 -26.2 28.0 Johannesburg
asia-south1 19.1 72.9 Mumbai
asia-south2 28.6 77.2 Delhi
asia-southeast1 1.34 103.7 Jurong West, Singapore
asia-southeast2 -6.2 106.8 Jakarta
asia-east1 24.07 120.54 Changhua County, Taiwan
asia-east2 22.3 114.2 Hong Kong
asia-northeast1 35.7 139.7 Tokyo
asia-northeast2 34.7 135.5 Osaka
asia-northeast3 37.6 127.0 Seoul
australia-southeast1 -33.9 151.2 Sydney
australia-southeast2 -37.8 145.0 Melbourne
"""

# Every known region, a line each: its name, its place (latitude, longitude), where it is. The clouds' names do not
# overlap (AWS's `us-east-1`, Google Cloud's `us-east1`, Azure's `eastus`). Text, read a region at a time as the
# config names them (`place`): as dicts, the three tables took 1.1 million instructions of every cold start.
PLACES = AWS_PLACES + AZURE_PLACES[1:] + GOOGLE_CLOUD_PLACES[1:]
GLOBAL = "global"
# What a region's name is written with (the config's `region` rule): any other character names no region.
NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_."
# Provider-global endpoints (api.openai.com and the like) mostly serve from the US east coast.
GLOBAL_LOCATION = "us-east-1"
# The distance of a region the table does not know (half the Earth's circumference and more: farther than any).
UNKNOWN_KM = 40_000.0


@functools.cache
def place(region: str) -> tuple[float, float] | None:
    """Where `region` is (latitude, longitude), or None for a region the table does not know. In any case, as Azure
    takes its names (ARM templates and the portal write `WestEurope`, which the table's lowercase names refused)."""
    region = region.lower()
    at = PLACES.find(f"\n{region} ") if region and not region.strip(NAME_CHARACTERS) else -1
    if at < 0:
        return None
    latitude, longitude = PLACES[at + len(region) + 2 : PLACES.index("\n", at + 1)].split(" ", 2)[:2]
    return float(latitude), float(longitude)


def places(table: str = PLACES) -> dict[str, tuple[float, float]]:
    """Every region of `table` and its place (the tests', and a misspelt region's nearest name)."""
    found: dict[str, tuple[float, float]] = {}
    for line in table.strip().splitlines():
        name, latitude, longitude = line.split(" ", 3)[:3]
        found[name] = float(latitude), float(longitude)
    return found


def distance_km(a: str, b: str) -> float:
    """Great-circle distance between two regions: none from a region to itself (known or not: a gateway in a region
    the table lacks ranked its own Bedrock region last), in any case, `UNKNOWN_KM` to a region the table does not
    know."""
    if a == b or a.lower() == b.lower():
        return 0.0
    pa = place(GLOBAL_LOCATION if a == GLOBAL else a)
    pb = place(GLOBAL_LOCATION if b == GLOBAL else b)
    if pa is None or pb is None:
        return UNKNOWN_KM
    lat1, lon1, lat2, lon2 = map(math.radians, (*pa, *pb))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 12_742 * math.asin(math.sqrt(h))


def placed(region: str, latency_ms: Mapping[str, Mapping[str, float]]) -> bool:
    """Whether the gateway can place `region` among the others: `global`, a region of the table, or one the config
    measures round trips from or to (`gateway.region_latency_ms`: a place of the operator's own, as a data centre)."""
    lowered = region.lower()  # (the table's regions are, at load: `config.latency_table`)
    if region == GLOBAL or place(region) is not None or lowered in latency_ms:
        return True
    return any(lowered in measured for measured in latency_ms.values())


def unplaced(region: str) -> str:
    """What is wrong with a deployment's region the gateway cannot place (`placed`), the nearest known name offered:
    ranked last whatever its distance, a misspelt `westeuorpe` sent the requests it should have served across an
    ocean, and nothing said so."""
    import difflib  # (a config's error alone needs it: not imported at every start)

    near = difflib.get_close_matches(region, places(), n=1, cutoff=0.75)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return (
        f"'{region}' is not a region the gateway knows the place of{hint}: name an AWS, Azure or Google Cloud region, "
        f"or give the round trip to it from the gateway's region in gateway.region_latency_ms (a place of your own)"
    )


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
    if place(region) is not None or region.lower() in latency_ms:
        return None
    return (
        f"the gateway's region '{region}' ({named_by}) is not one it knows the place of: deployments in other regions "
        f"are tried in the config's order, not nearest first; measure their round trips from it in "
        f"gateway.region_latency_ms.{region}"
    )


def endpoint_names(urls: set[str]) -> dict[str, str]:
    """What tells apart deployments of one provider, model and region at each of `urls` (`Target.endpoint`): their
    hosts (with the port) where those differ, else the URLs but their scheme, else the URLs. From the config alone,
    so the same in every process and after a restart, as a breaker's key and a ledger's route must be."""
    for name in (lambda url: urlsplit(url).netloc, lambda url: url.partition("://")[2]):
        names = {url: name(url) for url in urls}
        if len(set(names.values())) == len(urls):
            return names
    return {url: url for url in urls}


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
        self.count_breakers = CountBreakers(self.breakers)  # (token counts': `Pipeline.count_tokens`)
        self._latency = config.gateway.region_latency_ms.get(region.lower(), {})  # (lowercase: `latency_table`)
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
        self._endpoints = self._named_apart()
        self._targets = {model: self._build(model, spec, problems) for model, spec in config.models.items()}
        if problems:
            raise ConfigError(list(dict.fromkeys(problems)))  # (a provider's region, once for all its deployments)

    def _region(self, dep: DeploymentConfig) -> str:
        """The region `dep` is called in: its own, its provider's, else where it runs unnamed (the gateway's own for a
        regional API, a geographic inference profile's nearest, else `global`)."""
        region = dep.region or self.config.providers[dep.provider].region
        if region is not None:
            return region
        adapter = self.adapters[dep.provider]
        geography = adapter.geography(dep.model)
        # (An AWS region in lowercase, as AWS signs and addresses it: `GATEWAY_REGION=EU-Central-1` was taken as
        # written, and each request signed for a region AWS does not know.)
        return self._home(geography) if geography else (self.region.lower() if adapter.regional else GLOBAL)

    def _named_apart(self) -> dict[tuple[str, str], str]:
        """`Target.endpoint` of each deployment (by its `provider/model@region` and its base URL) that shares that name
        with one at another base URL; the same deployment listed twice, at one URL, is one deployment."""
        urls: dict[str, set[str]] = {}
        for spec in self.config.models.values():
            for dep in spec.deployments:
                region = self._region(dep)
                base_url = self.adapters[dep.provider].base_url(region, dep.base_url)
                urls.setdefault(f"{dep.provider}/{dep.model}@{region}", set()).add(base_url)
        return {
            (label, url): name
            for label, shared in urls.items()
            if len(shared) > 1
            for url, name in endpoint_names(shared).items()
        }

    def _build(self, model: str, spec: ModelConfig, problems: list[str]) -> list[Attempt]:
        """`model`'s attempts, nearest first. One of `problems`: an AWS region not in lowercase, a deployment's region
        the gateway cannot place (its distance unknown, it would be ranked last unsaid), a geographic inference
        profile's region outside its geography (AWS refuses it there), a `default_service_tier` its model has no price
        for."""
        attempts = []
        gateway_tiers = self.config.gateway.priced_options.service_tier
        latency = self.config.gateway.region_latency_ms
        for i, dep in enumerate(spec.deployments):
            adapter = self.adapters[dep.provider]
            provider = self.config.providers[dep.provider]
            where = f"models.{model}.deployments[{i}]" if dep.region else f"providers.{dep.provider}"
            geography = adapter.geography(dep.model)
            region = self._region(dep)
            named = dep.region or provider.region  # (None: the gateway's own, warned of: `unplaced_gateway`)
            if named is not None and adapter.regional and region != region.lower():
                # (Placed in any case, it passed, and was signed and addressed as written: refused by AWS each time.)
                problems.append(
                    f"{where}.region: '{region}' is an AWS region, which AWS names in lowercase: write it "
                    f"'{region.lower()}'"
                )
            elif named is not None and not placed(region, latency):
                problems.append(f"{where}.region: {unplaced(region)}")
            elif named is not None and geography is not None and not geography.takes(region):
                problems.append(outside(f"models.{model}.deployments[{i}]", dep.model, region, geography, where))
            base_url = adapter.base_url(region, dep.base_url)
            options = dict(dep.model_extra or {})
            if dep.reasoning is not None:
                options["reasoning"] = dep.reasoning
            # (A global inference profile runs wherever AWS routes it, whichever region it is called in.)
            runs_in = GLOBAL if geography is not None and geography.name == GLOBAL else None
            endpoint = self._endpoints.get((f"{dep.provider}/{dep.model}@{region}", base_url), "")
            target = Target(dep.provider, provider.type, dep.model, region, base_url, options, runs_in, endpoint)
            km = distance_km(self.region, region)
            measured = self._latency.get(region.lower())
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
        if geography.takes(self.region.lower()):
            return self.region.lower()
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
        `no_deployment_available`, on Anthropic's API an `overloaded_error` where every one opened on its provider
        saying it was overloaded (`Breakers.overloaded`), else an `api_error`: deployments that broke (500s, no
        connection) are not overloaded, and Claude Code switches to its fallback model on an `overloaded_error`."""
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
        if all(breakers.overloaded(a.target.label) for a in plan):
            return OverloadedError(
                "every deployment's circuit breaker is open, opened by its provider saying it was overloaded: nothing "
                f"was sent; retry after {wait} s",
                code="no_deployment_available",
                headers={"retry-after": wait},
            )
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
                    f"fallback model {echoed(name)} in x-gateway-fallbacks does not exist on this gateway",
                    param="x-gateway-fallbacks",
                )
            if (other := self.config.models[name].kind) != kind:  # (the config's own are of its kind: checked at load)
                raise InvalidRequestError(
                    f"fallback model {echoed(name)} in x-gateway-fallbacks is {a_model(other)}, not {a_model(kind)}",
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
                "region": a.target.runs_in,
                "distance_km": round(a.distance_km, 1),
                "rtt_ms": round(a.rtt_ms, 1),
                "rtt": "measured" if a.measured else "estimated",
                "breaker": self.breakers.shown(a.target.label),
                "role": "primary" if a.model == model else "fallback",
                "pinned": bool(controls.provider or controls.region),
            }
            if a.target.runs_in != a.target.region:  # (a global inference profile: the region it is called in)
                entry["source_region"] = a.target.region
            if a.target.endpoint:  # (named alike but for it: the name `x-gateway-route` gives it)
                entry["deployment"] = a.target.label
            if not self._keyed(a):
                entry |= {"skipped": "provider_not_configured", "hint": self._key_hint(a)}
            explained.append(entry)
        skipped = [{"model": name, "role": "fallback", "skipped": "model_not_allowed"} for name in candidates.skipped]
        return explained + skipped

    @staticmethod
    def _pinned(attempt: Attempt, controls: RouteControls) -> bool:
        """Whether the attempt keeps the request's pins: its provider as named, its region in any case (`westeurope`
        is Azure's own spelling of a deployment configured as `WestEurope`, `US-EAST-1` AWS's us-east-1, as the
        region table reads them: `place`), where it runs (`Target.runs_in`): a Bedrock global inference profile only
        by `global`, not by the region it is called in, which is not where AWS may run it."""
        if controls.provider and attempt.target.provider != controls.provider:
            return False
        return not (controls.region and attempt.target.runs_in.lower() != controls.region.lower())
