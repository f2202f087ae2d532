"""Nearest-region routing across clouds: the regions' places, the gateway's own region, and Bedrock's geographic
inference profiles, each called only from a region of its geography."""

from __future__ import annotations

from typing import Any

import botocore.loaders
import pytest

from adapters.providers.bedrock.adapter import INFERENCE_GEOGRAPHIES, BedrockAdapter, aws_region
from adapters.providers.registry import REGISTRY
from handler.config import ConfigError, parse_config
from handler.errors import ServiceUnavailableError
from handler.pipeline.gateway import build_adapters, build_gateway, check_routes, gateway_region_warning
from handler.pipeline.routing import (
    AWS_PLACES,
    AZURE_PLACES,
    GOOGLE_CLOUD_PLACES,
    UNKNOWN_KM,
    RouteControls,
    Router,
    any_model,
    distance_km,
    place,
    places,
)
from handler.ports import region_area

AWS_REGIONS, REGION_COORDINATES = places(AWS_PLACES), places()

PROVIDERS = {
    "oa": {"type": "openai", "api_key": "env:A"},
    "az_eu": {"type": "azure", "api_key": "env:A", "base_url": "https://eu.openai.azure.com"},
    "az_us": {"type": "azure", "api_key": "env:A", "base_url": "https://us.openai.azure.com"},
    "br": {"type": "bedrock"},
}
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET = "anthropic.claude-3-7-sonnet-20250219-v1:0"


def router(region: str, deployments: list[dict[str, Any]], **gateway: Any) -> Router:
    data = {
        "gateway": gateway,
        "providers": PROVIDERS,
        "models": {"m": {"deployments": deployments, "price": {"input": 1, "output": 2}}},
    }
    config = parse_config(data, set(REGISTRY))
    return Router(config, build_adapters(config, REGISTRY, {"A": "x"}), region)


def order(r: Router) -> list[str]:
    return [f"{e['provider']}@{e['region']}" for e in r.explain("m", RouteControls(), any_model)]


def test_azure_and_google_cloud_regions_are_placed_and_ordered_by_distance() -> None:
    """Only AWS's regions had a place: `eastus` and `westeurope` (the docs' own examples) were 40,000 km from any
    gateway, ranked after a `global` deployment (placed at us-east-1) and among themselves in the config's order.
    A gateway in Ireland sent its requests to api.openai.com and Azure's East US before its Azure resource in West
    Europe (review)."""
    azure = [
        {"provider": "az_us", "model": "gpt-4o", "region": "eastus"},
        {"provider": "az_eu", "model": "gpt-4o", "region": "westeurope"},
    ]
    assert order(router("eu-west-1", [{"provider": "oa", "model": "gpt-4o"}, *azure])) == [
        "az_eu@westeurope",
        "oa@global",
        "az_us@eastus",
    ]
    assert order(router("eu-central-1", azure)) == ["az_eu@westeurope", "az_us@eastus"]
    assert order(router("us-east-2", azure)) == ["az_us@eastus", "az_eu@westeurope"]
    google = [
        {"provider": "oa", "model": "gpt-4o", "region": "us-central1"},
        {"provider": "oa", "model": "gpt-4o", "region": "europe-west4"},
        {"provider": "oa", "model": "gpt-4o", "region": "asia-northeast1"},
    ]
    assert order(router("ap-southeast-1", google)) == ["oa@asia-northeast1", "oa@europe-west4", "oa@us-central1"]
    assert order(router("us-west-2", google)) == ["oa@us-central1", "oa@europe-west4", "oa@asia-northeast1"]
    assert order(router("westeurope", google))[0] == "oa@europe-west4"  # (a gateway on Azure: GATEWAY_REGION)


@pytest.mark.parametrize(
    "region", ["ap-southeast-7", "ap-east-2", "ap-southeast-6", "mx-central-1", "us-gov-west-1", "cn-north-1"]
)
def test_a_gateway_in_a_newer_aws_region_routes_to_its_own_bedrock_region_first(region: str) -> None:
    """AWS regions missing from the table: a gateway running there (AWS_REGION) estimated every deployment at
    40,000 km, its own region's Bedrock too, and tried them in the config's order: api.openai.com first (review)."""
    r = router(region, [{"provider": "oa", "model": "gpt-4o"}, {"provider": "br", "model": HAIKU}])
    explained = r.explain("m", RouteControls(), any_model)
    assert (explained[0]["provider"], explained[0]["region"], explained[0]["distance_km"]) == ("br", region, 0)
    assert explained[1]["distance_km"] < UNKNOWN_KM


def test_a_region_is_no_distance_from_itself_known_or_not() -> None:
    assert distance_km("eastus", "eastus") == distance_km("global", "global") == 0
    assert distance_km("ap-southeast-99", "ap-southeast-99") == 0  # (a gateway's own region, newer than the table)
    assert distance_km("ap-southeast-99", "us-east-1") == UNKNOWN_KM
    assert 5_000 < distance_km("us-east-1", "eu-west-1") < 5_600


def test_the_table_holds_every_cloud_s_regions_once_and_only_real_aws_names() -> None:
    """Every AWS region in the table is one botocore knows (a misspelt name would place nothing), and the three
    clouds' names never collide (one would have moved another's region)."""
    data = botocore.loaders.create_loader().load_data("endpoints")
    known = {region for partition in data["partitions"] for region in partition["regions"]}
    assert set(AWS_REGIONS) <= known
    # The regions botocore named as this release was made, but the isolated partitions' (their places are not public).
    assert {"ap-southeast-6", "ap-southeast-7", "ap-east-2", "mx-central-1", "eusc-de-east-1"} <= set(AWS_REGIONS)
    assert {"us-gov-east-1", "us-gov-west-1", "cn-north-1", "cn-northwest-1"} <= set(AWS_REGIONS)
    assert len(REGION_COORDINATES) == len(AWS_REGIONS) + len(places(AZURE_PLACES)) + len(places(GOOGLE_CLOUD_PLACES))
    assert all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in REGION_COORDINATES.values())
    assert all(place(name) == where for name, where in REGION_COORDINATES.items())  # (each line read as a whole)
    assert place("us-east") is None and place("east") is None and place("") is None and place("us-east-1 38.9") is None


def test_a_region_the_gateway_cannot_place_is_a_config_error_naming_the_nearest_name() -> None:
    """A misspelt `westeuorpe` (or any region the table lacks) was ranked last unsaid, its requests sent across an
    ocean first. Refused at load, with the name meant; a place of the operator's own is taken once the config gives
    its round trip (`region_latency_ms`)."""
    typo = [{"provider": "az_eu", "model": "gpt-4o", "region": "westeuorpe"}]
    with pytest.raises(ConfigError) as refused:
        router("eu-west-1", typo)
    assert refused.value.problems == [
        "models.m.deployments[0].region: 'westeuorpe' is not a region the gateway knows the place of (did you mean "
        "'westeurope'?): name an AWS, Azure or Google Cloud region, or give the round trip to it from the gateway's "
        "region in gateway.region_latency_ms (a place of your own)"
    ]
    own = [{"provider": "oa", "model": "llama", "region": "dc-paris"}, {"provider": "oa", "model": "gpt-4o"}]
    measured = router("eu-west-3", own, region_latency_ms={"eu-west-3": {"dc-paris": 2}})
    assert order(measured) == ["oa@dc-paris", "oa@global"]
    elsewhere = router("us-east-1", own, region_latency_ms={"eu-west-3": {"dc-paris": 2}})  # (measured elsewhere)
    assert order(elsewhere) == ["oa@global", "oa@dc-paris"]


def test_a_measured_round_trip_orders_a_deployment_whose_region_is_written_in_another_case() -> None:
    """A gateway in Ireland (eu-west-1), an Azure resource in North Europe (Dublin, 0 km away) whose round trip the
    operator measured at 40 ms, and one in UK South (~460 km, estimated 6.9 ms). The config writes the deployment's
    region as ARM templates and the portal do, `NorthEurope` (which configuration.md and interface.md say is taken in
    any case), and the measurement as Azure's CLI names it, `northeurope`. Ordered by the measurement, UK South comes
    first. The measurement was looked up by the name exactly as written, missed, and North Europe was ranked first on
    its estimate (0.1 ms), `rtt: estimated` (review); so was it with the gateway's own region in another case than
    the table's."""
    deployments = [
        {"provider": "az_eu", "model": "gpt-4o", "region": "northeurope"},
        {"provider": "az_us", "model": "gpt-4o", "region": "uksouth"},
    ]
    same_case = router("eu-west-1", deployments, region_latency_ms={"eu-west-1": {"northeurope": 40}})
    assert order(same_case) == ["az_us@uksouth", "az_eu@northeurope"]
    other_case = [{**deployments[0], "region": "NorthEurope"}, deployments[1]]
    for gateway, latency in [
        ("eu-west-1", {"eu-west-1": {"northeurope": 40}}),
        ("eu-west-1", {"eu-west-1": {"NorthEurope": 40}}),
        ("EU-West-1", {"eu-west-1": {"northeurope": 40}}),
        ("eu-west-1", {"EU-WEST-1": {"northeurope": 40}}),
    ]:
        explained = router(gateway, other_case, region_latency_ms=latency).explain("m", RouteControls(), any_model)
        rtts = [(e["region"], e["rtt"], e["rtt_ms"]) for e in explained]
        assert rtts == [("uksouth", "estimated", pytest.approx(6.9, abs=0.5)), ("NorthEurope", "measured", 40)], (
            gateway,
            latency,
        )
    own = [{"provider": "oa", "model": "llama", "region": "DC-Paris"}, {"provider": "oa", "model": "gpt-4o"}]
    assert order(router("eu-west-3", own, region_latency_ms={"eu-west-3": {"dc-paris": 2}})) == [
        "oa@DC-Paris",
        "oa@global",
    ]


def test_a_region_latency_table_naming_a_region_twice_in_two_cases_is_refused_at_load() -> None:
    """Lowercased at load, `NorthEurope` and `northeurope` are one region: which figure holds could not be told."""
    for latency, named in [
        ({"eu-west-1": {"NorthEurope": 40, "northeurope": 2}}, "'eu-west-1.NorthEurope' and 'eu-west-1.northeurope'"),
        ({"eu-west-1": {"northeurope": 40}, "EU-WEST-1": {"uksouth": 9}}, "'eu-west-1' and 'EU-WEST-1'"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_config({"gateway": {"region_latency_ms": latency}}, set(REGISTRY))
        assert refused.value.problems == [
            f"gateway.region_latency_ms: {named} name one region, in two cases: write it once"
        ]
    config = parse_config({"gateway": {"region_latency_ms": {"EU-West-1": {"NorthEurope": 40}}}}, set(REGISTRY))
    assert config.gateway.region_latency_ms == {"eu-west-1": {"northeurope": 40}}


def test_a_providers_region_the_gateway_cannot_place_is_named_once_on_the_provider() -> None:
    data = {
        "providers": {"az": {**PROVIDERS["az_eu"], "region": "west-europe"}},
        "models": {
            "m": {"deployments": [{"provider": "az", "model": "a"}, {"provider": "az", "model": "b"}]},
            "n": {"deployments": [{"provider": "az", "model": "c"}]},
        },
    }
    config = parse_config(data, set(REGISTRY))
    with pytest.raises(ConfigError) as refused:
        Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "eu-west-1")
    assert len(refused.value.problems) == 1
    assert refused.value.problems[0].startswith("providers.az.region: 'west-europe' is not a region")


def test_a_gateway_in_a_region_it_cannot_place_is_warned_of_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """Not refused (the gateway runs where it is started, a region opened after this release), but said: its
    deployments elsewhere are tried in the config's order."""
    config = parse_config({"providers": PROVIDERS, "models": {}}, set(REGISTRY))
    warned = gateway_region_warning(config, {"AWS_REGION": "ap-southeast-99"})
    assert warned is not None and "'ap-southeast-99' (AWS_REGION)" in warned
    assert "gateway.region_latency_ms.ap-southeast-99" in warned
    assert gateway_region_warning(config, {"GATEWAY_REGION": "westeurope"}) is None
    assert gateway_region_warning(config, {}) is None  # (us-east-1)
    measured = parse_config({"gateway": {"region_latency_ms": {"dc1": {"us-east-1": 9}}}}, set(REGISTRY))
    assert gateway_region_warning(measured, {"GATEWAY_REGION": "dc1"}) is None
    with caplog.at_level("WARNING"):
        gateway = build_gateway(config=config, store_url="sqlite://", environ={"GATEWAY_REGION": "dc1"})
    assert "the gateway's region 'dc1' (GATEWAY_REGION) is not one it knows the place of" in caplog.text
    assert gateway.region == "dc1"


@pytest.mark.parametrize(
    ("gateway", "profile", "home"),
    [
        ("us-east-1", "eu", "eu-west-1"),
        ("eu-west-1", "us", "us-east-1"),
        ("eu-central-1", "apac", "ap-south-1"),  # (not me-central-1, nearer: opt-in, not in every account)
        ("us-west-2", "jp", "ap-northeast-1"),
        ("eu-west-1", "au", "ap-southeast-2"),
        ("us-east-1", "us-gov", "us-gov-east-1"),
        ("us-gov-west-1", "global", "us-west-2"),
        ("eu-south-2", "eu", "eu-south-2"),  # the gateway's own, of the geography
        ("ap-southeast-7", "apac", "ap-southeast-7"),
        ("ca-central-1", "us", "ca-central-1"),
        ("sa-east-1", "global", "sa-east-1"),
    ],
)
def test_a_geographic_inference_profile_without_a_region_runs_in_its_geography(
    gateway: str, profile: str, home: str
) -> None:
    """A Bedrock deployment of `eu.anthropic...` with no region "ran in the gateway's region": a gateway in us-east-1
    sent it to bedrock-runtime.us-east-1, which refuses it (a profile is called only from a source region of its
    geography), and ranked it first, at 0 km: a refused attempt each request until its breaker opened (review). It
    runs in the gateway's region where that is of its geography, else in the nearest of the geography's regions
    every account has."""
    explained = router(gateway, [{"provider": "br", "model": f"{profile}.{SONNET}"}]).explain(
        "m", RouteControls(), any_model
    )
    # (A global profile runs wherever AWS routes it: `home` is the source region it is called in.)
    assert explained[0].get("source_region", explained[0]["region"]) == home
    assert explained[0]["region"] == ("global" if profile == "global" else home)


@pytest.mark.parametrize("region", [None, "us-east-1", "eu-west-1"])
def test_a_global_inference_profile_runs_in_global_and_only_a_global_pin_selects_it(region: str | None) -> None:
    """A `global.` profile is called in a source region and AWS routes it to any commercial region: it runs in
    `global` (`x-gateway-region`, `route explain`), and a pin to a region, which asks for requests to run there, does
    not select it (it did, by its source region); `x-gateway-region: global` does. A geographic profile (`us.`) runs
    in its region, pinned by it."""
    deployments = [
        {"provider": "br", "model": f"global.{SONNET}", **({"region": region} if region else {})},
        {"provider": "br", "model": f"us.{HAIKU}", "region": "us-east-1"},
    ]
    r = router("us-east-1", deployments)
    explained = r.explain("m", RouteControls(), any_model)
    by_model = {entry["upstream_model"]: entry for entry in explained}
    assert by_model[f"global.{SONNET}"]["region"] == "global"
    assert by_model[f"global.{SONNET}"]["source_region"] == (region or "us-east-1")
    assert "source_region" not in by_model[f"us.{HAIKU}"]
    for pin, upstream in [("us-east-1", f"us.{HAIKU}"), ("Global", f"global.{SONNET}")]:
        plan = r.plan("m", RouteControls(region=pin), any_model)
        assert [a.target.model for a in plan] == [upstream], pin
    with pytest.raises(ServiceUnavailableError):
        r.plan("m", RouteControls(region="eu-west-1"), any_model)


@pytest.mark.parametrize(
    ("profile", "region", "on_provider"),
    [
        ("eu", "us-east-1", False),
        ("us", "eu-west-1", True),
        ("apac", "eu-central-1", False),
        ("jp", "ap-south-1", False),
    ],
)
def test_a_geographic_inference_profile_in_a_region_outside_its_geography_is_a_config_error(
    profile: str, region: str, on_provider: bool
) -> None:
    """Named with a region AWS refuses it from (its own, or its provider's): refused at load, naming both."""
    model = f"{profile}.{SONNET}"
    data = {
        "providers": {"br": {"type": "bedrock", **({"region": region} if on_provider else {})}},
        "models": {
            "m": {"deployments": [{"provider": "br", "model": model, **({} if on_provider else {"region": region})}]}
        },
    }
    config = parse_config(data, set(REGISTRY))
    with pytest.raises(ConfigError) as refused:
        Router(config, build_adapters(config, REGISTRY, {}), "us-east-1")
    (problem,) = refused.value.problems
    assert problem.startswith(f"models.m.deployments[0]: '{model}' is an inference profile of geography '{profile}'")
    assert f"from region '{region}'" in problem and INFERENCE_GEOGRAPHIES[profile].sources[0] in problem
    assert ("its provider's, providers.br.region" in problem) is on_provider


def test_the_geographies_name_aws_regions_and_take_those_opened_since() -> None:
    """Each geography's regions are AWS's, its defaults among them; a region of its area opened after this release
    is taken (`ap-southeast-99` for `apac.`), one of another area or partition is not."""
    for geography in INFERENCE_GEOGRAPHIES.values():
        assert set(geography.sources) <= set(AWS_REGIONS) and set(geography.defaults) <= set(AWS_REGIONS)
        assert not geography.sources or set(geography.defaults) <= set(geography.sources)
        assert all(geography.takes(region) for region in geography.defaults)
    apac, eu, global_ = INFERENCE_GEOGRAPHIES["apac"], INFERENCE_GEOGRAPHIES["eu"], INFERENCE_GEOGRAPHIES["global"]
    assert apac.takes("ap-southeast-99") and apac.takes("me-central-1") and not apac.takes("me-south-1")
    assert eu.takes("eu-west-9") and not eu.takes("eu-isoe-west-1") and not eu.takes("eusc-de-east-1")
    assert global_.takes("af-south-1") and not global_.takes("us-gov-west-1") and not global_.takes("cn-north-1")
    assert (region_area("us-gov-west-1"), region_area("eu-south-2"), region_area("westeurope")) == (
        "us-gov",
        "eu",
        None,
    )
    assert BedrockAdapter.geography(f"eu.{SONNET}") is eu and BedrockAdapter.geography(SONNET) is None
    assert BedrockAdapter.geography(f"arn:aws:bedrock:eu-west-1:1:inference-profile/eu.{SONNET}") is None


def test_a_region_written_in_capitals_is_placed_as_its_lowercase_name() -> None:
    """Azure takes its regions' names in any case, and ARM templates and the portal write `WestEurope`: such a
    deployment was refused at load once unknown regions were (found by review), the whole config with it."""
    assert place("WestEurope") == place("westeurope") is not None and place("EastUS") == place("eastus")
    config = parse_config(
        {
            "providers": {"az": {"type": "azure", "api_key": "env:A", "base_url": "https://eu.openai.azure.com"}},
            "models": {"m": {"deployments": [{"provider": "az", "model": "gpt-4o-mini", "region": "WestEurope"}]}},
        },
        set(REGISTRY),
    )
    assert Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "eu-west-1") is not None


@pytest.mark.parametrize(
    ("environ", "shown", "routed_from"),
    [({}, "global", "us-east-1"), ({"AWS_REGION": "eu-central-1"}, "eu-central-1", "eu-central-1")],
)
def test_health_and_route_show_the_gateway_s_region_as_answers_show_a_deployment_s(
    environ: dict[str, str], shown: str, routed_from: str
) -> None:
    """A gateway run with no region named said `"region": "us-east-1"` in `/health` (where it routes from), and
    `x-gateway-region: global` in every answer of a deployment with no region: a newcomer's first two looks
    disagreed. Both are `global` now, placed at us-east-1. Found by review."""
    from starlette.testclient import TestClient

    from handler.api.app import create_app

    gateway = build_gateway(store_url="sqlite://", environ=environ)
    assert gateway.region == gateway.router.region == routed_from
    with TestClient(create_app(gateway)) as client:
        assert client.get("/health").json() == {"status": "ok", "region": shown}


@pytest.mark.parametrize(
    "model", ["anthropic.claude-haiku-4-5-20251001-v1:0", "eu.anthropic.claude-haiku-4-5-20251001-v1:0"]
)
@pytest.mark.parametrize("on", ["deployment", "provider"])
def test_an_aws_region_in_another_case_is_refused_at_load_naming_its_field(model: str, on: str) -> None:
    """A Bedrock `region: EU-Central-1` passed `config check` and start (regions are placed in any case), then was
    signed and addressed as written, which AWS refuses for every request; on an `eu.` profile it was refused as
    outside the profile's geography, which it is not. Refused for its case, at load, naming the field, as `config
    check` and start both build the router. Found by review (routerev36)."""
    deployment = {"provider": "bedrock", "model": model} | ({"region": "EU-Central-1"} if on == "deployment" else {})
    provider = {"type": "bedrock"} | ({"region": "EU-Central-1"} if on == "provider" else {})
    config = parse_config(
        {"providers": {"bedrock": provider}, "models": {"m": {"deployments": [deployment]}}}, set(REGISTRY)
    )
    field = "models.m.deployments[0].region" if on == "deployment" else "providers.bedrock.region"
    said = f"{field}: 'EU-Central-1' is an AWS region, which AWS names in lowercase: write it 'eu-central-1'"
    with pytest.raises(ConfigError) as checked:  # (`gateway config check`)
        check_routes(config, REGISTRY, "eu-central-1")
    with pytest.raises(ConfigError) as started:
        Router(config, build_adapters(config, REGISTRY, {}), "eu-central-1")
    assert checked.value.problems == started.value.problems == [said]


def test_the_gateways_own_region_in_another_case_is_signed_and_addressed_in_lowercase() -> None:
    """`GATEWAY_REGION=EU-Central-1` and a Bedrock deployment that names no region: it ran in `EU-Central-1`, signed
    and addressed as written. Found by review (routerev36)."""
    model = "anthropic.claude-haiku-4-5-20251001-v1:0"
    config = parse_config(
        {
            "providers": {"bedrock": {"type": "bedrock"}},
            "models": {"m": {"deployments": [{"provider": "bedrock", "model": model}]}},
        },
        set(REGISTRY),
    )
    [attempt] = Router(config, build_adapters(config, REGISTRY, {}), "EU-Central-1").plan(
        "m", RouteControls(), any_model
    )
    assert (attempt.target.region, aws_region(attempt.target.region)) == ("eu-central-1", "eu-central-1")
    assert "bedrock-runtime.eu-central-1.amazonaws.com" in attempt.target.base_url
