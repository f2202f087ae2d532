"""Deployment order by distance from the gateway's region, pins and fallbacks."""

from __future__ import annotations

import operator
import time
from functools import partial
from types import SimpleNamespace

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import ConfigError, parse_config
from handler.errors import (
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ServiceUnavailableError,
    UpstreamError,
)
from handler.pipeline.exchange import CUT_SLACK_S, Controls, Exchange
from handler.pipeline.gateway import build_adapters, check_routes
from handler.pipeline.pipeline import RETRY_ANSWER_S, Pipeline
from handler.pipeline.routing import Attempt, RouteControls, Router, any_model
from handler.ports import MESSAGES_API, KeyRecord, NativeCall
from handler.schemas import ChatRequest

CONFIG = {
    "providers": {
        "a": {"type": "openai", "api_key": "env:A"},
        "b": {"type": "openai", "api_key": "env:B"},
    },
    "models": {
        "m": {
            "deployments": [
                {"provider": "a", "model": "m-us", "region": "us-east-1"},
                {"provider": "a", "model": "m-eu", "region": "eu-central-1"},
                {"provider": "b", "model": "m-ap", "region": "ap-northeast-1"},
            ],
            "fallbacks": ["n"],
        },
        "n": {"deployments": [{"provider": "b", "model": "n-global"}]},
    },
}


def router(region: str, env: dict[str, str] | None = None) -> Router:
    config = parse_config(CONFIG, set(REGISTRY))
    return Router(config, build_adapters(config, REGISTRY, env if env is not None else {"A": "x", "B": "y"}), region)


@pytest.mark.parametrize(
    ("region", "order"),
    [
        ("eu-west-1", ["m-eu", "m-us", "m-ap", "n-global"]),
        ("us-west-2", ["m-us", "m-ap", "m-eu", "n-global"]),
        ("ap-southeast-1", ["m-ap", "m-eu", "m-us", "n-global"]),
    ],
)
def test_nearest_deployment_first_then_fallbacks(region: str, order: list[str]) -> None:
    assert [a.target.model for a in router(region).plan("m", RouteControls(), any_model)] == order


def test_pins_and_fallback_override() -> None:
    r = router("eu-west-1")
    assert [a.target.model for a in r.plan("m", RouteControls(provider="b"), any_model)] == ["m-ap", "n-global"]
    assert [a.target.model for a in r.plan("m", RouteControls(region="us-east-1", fallbacks=[]), any_model)] == ["m-us"]
    with pytest.raises(ServiceUnavailableError):
        r.plan("m", RouteControls(region="sa-east-1", fallbacks=[]), any_model)
    with pytest.raises(NotFoundError):
        r.plan("ghost", RouteControls(), any_model)


def test_unconfigured_provider_is_skipped_or_named() -> None:
    r = router("eu-west-1", {"B": "y"})
    assert [a.target.provider for a in r.plan("m", RouteControls(), any_model)] == ["b", "b"]
    with pytest.raises(ServiceUnavailableError, match="environment variable A") as info:
        router("eu-west-1", {}).plan("m", RouteControls(provider="a"), any_model)
    assert info.value.code == "provider_not_configured"


def test_explaining_a_route_needs_no_provider_key_and_marks_the_deployments_without_one() -> None:
    """`gateway route explain` exited 1 `provider_not_configured` in a shell without the provider's key, and a
    deployment without a key was left out of the answer unsaid."""
    explained = router("eu-west-1", {"B": "y"}).explain("m", RouteControls(), any_model)
    assert [(e["upstream_model"], e.get("skipped")) for e in explained] == [
        ("m-eu", "provider_not_configured"),
        ("m-us", "provider_not_configured"),
        ("m-ap", None),
        ("n-global", None),
    ]
    assert explained[0]["hint"] == "set the environment variable A"
    nothing = router("eu-west-1", {}).explain("m", RouteControls(provider="a"), any_model)
    assert {e["skipped"] for e in nothing} == {"provider_not_configured"} and len(nothing) == 2


def test_a_gateway_key_as_a_literal_provider_key_is_ignored_and_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """A literal `api_key` that is one of this gateway's own keys is never sent upstream, and neither the
    warning nor the client's 503 repeats it (any client allowed the model would read another key)."""
    secret = "S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tX"
    data = {
        "providers": {"p": {"type": "openai", "api_key": f"gwk_abcdefghijkm_{secret}"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "m"}]}},
    }
    config = parse_config(data, set(REGISTRY))
    with caplog.at_level("WARNING"):
        adapters = build_adapters(config, REGISTRY, {})
    assert adapters["p"].secret is None and "the literal api_key holds a gateway key" in caplog.text
    with pytest.raises(ServiceUnavailableError, match="literal api_key") as info:
        Router(config, adapters, "us-east-1").plan("m", RouteControls(), any_model)
    assert secret not in caplog.text and secret not in info.value.message


async def test_warm_up_origins_skip_what_cannot_be_served() -> None:
    """Lambda's init opens connections to `origins()`: embedding models count, and a model whose provider has
    no key (its requests answer 503 saying so) must not stop the function from starting."""
    from handler.pipeline.gateway import build_gateway
    from tests.functional.conftest import FAKE_KEYS, gateway_config

    config = gateway_config("http://127.0.0.1:9", {"openai"})
    assert any(spec.kind == "embedding" for spec in config.models.values())
    gateway = build_gateway(config=config, store_url="sqlite://", environ=FAKE_KEYS)
    origins = gateway.origins()
    assert "http://127.0.0.1:9/openai/v1" in origins
    await gateway.warm()  # nothing listens there: the warm-up gives up quietly
    await gateway.aclose()


def test_a_fallback_outside_the_scope_is_skipped_and_named() -> None:
    r = router("eu-west-1")
    plan = r.plan("m", RouteControls(), lambda model: model == "m")
    assert [a.model for a in plan] == ["m", "m", "m"]
    assert plan.skipped == ["n"]
    # A header's fallbacks are held to the same scope, and a pin cannot reach around it.
    pinned = r.plan("m", RouteControls(provider="b", fallbacks=["n"]), lambda model: model == "m")
    assert [a.target.model for a in pinned] == ["m-ap"]
    assert pinned.skipped == ["n"]
    explained = r.explain("m", RouteControls(fallbacks=["n"]), lambda model: model == "m")
    assert {"model": "n", "role": "fallback", "skipped": "model_not_allowed"} in explained
    assert all(entry.get("upstream_model") != "n-global" for entry in explained)


def test_a_fallback_of_another_kind_in_the_header_is_refused_not_dropped() -> None:
    """The header's fallbacks that exist passed, and one of another kind (an embedding model for a chat request) was
    then left out unsaid: the client asked for a fallback and had none, nothing in the answer saying so (review)."""
    data = {
        "providers": {"a": {"type": "openai", "api_key": "env:A"}},
        "models": {
            "m": {"deployments": [{"provider": "a", "model": "m"}]},
            "e": {"kind": "embedding", "deployments": [{"provider": "a", "model": "e"}]},
        },
    }
    config = parse_config(data, set(REGISTRY))
    r = Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "eu-west-1")
    for model, fallback, said in (("m", "e", "an embedding model, not a chat model"), ("e", "m", "a chat model")):
        kind = config.models[model].kind
        with pytest.raises(InvalidRequestError, match=said) as refused:
            r.plan(model, RouteControls(fallbacks=[fallback]), any_model, kind)
        assert refused.value.param == "x-gateway-fallbacks"
    with pytest.raises(InvalidRequestError):
        r.explain("m", RouteControls(fallbacks=["e"]), any_model)


def test_the_requested_model_outside_the_scope_is_refused() -> None:
    with pytest.raises(PermissionDeniedError):
        router("eu-west-1").plan("m", RouteControls(), lambda model: model == "n")


def test_a_measured_round_trip_and_an_unmeasured_regions_are_compared_in_one_unit() -> None:
    """`region_latency_ms` naming some regions only: the others were ordered by their kilometres against the
    measured milliseconds, so a gateway in us-east-1 that measured eu-west-1 (75 ms) sent its requests to Ireland
    before Ohio (496 km, read as 496 ms). The unmeasured region's round trip is estimated from its distance, and
    `/v1/route` says which is which."""
    data = {
        "gateway": {"region_latency_ms": {"us-east-1": {"eu-west-1": 75}}},
        "providers": {"a": {"type": "openai", "api_key": "env:A"}},
        "models": {
            "m": {
                "deployments": [
                    {"provider": "a", "model": "m-ie", "region": "eu-west-1"},
                    {"provider": "a", "model": "m-oh", "region": "us-east-2"},
                ]
            }
        },
    }
    config = parse_config(data, set(REGISTRY))
    r = Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "us-east-1")
    assert [a.target.model for a in r.plan("m", RouteControls(), any_model)] == ["m-oh", "m-ie"]
    explained = r.explain("m", RouteControls(), any_model)
    assert [(e["upstream_model"], e["rtt"]) for e in explained] == [("m-oh", "estimated"), ("m-ie", "measured")]
    assert explained[0]["distance_km"] == 496 and 5 < explained[0]["rtt_ms"] < 15
    assert explained[1]["rtt_ms"] == 75


def tiered(provider_type: str, tier: object, price: object = None) -> dict[str, object]:
    """A config whose one deployment says its project runs requests that name no tier at `tier`."""
    deployment = {"provider": "up", "model": "gpt-4o", "default_service_tier": tier}
    return {
        "gateway": {"priced_options": {"service_tier": {"flex": 1.0}}},
        "providers": {"up": {"type": provider_type, "base_url": "https://res.openai.azure.com"}},
        "models": {"m": {"deployments": [deployment]} | ({"price": price} if price else {})},
    }


def test_a_deployments_default_service_tier_is_checked_when_the_config_is() -> None:
    """`default_service_tier` (the tier an OpenAI project runs a request that names none at, reserved at its price)
    names a tier of OpenAI's API that costs more than the default and that the model has a price for: anything else
    is a config error naming the deployment, not a reservation at the plain price."""
    for data, problem in (
        (tiered("anthropic", "priority"), "only for a deployment of OpenAI's API (openai, azure), not of 'anthropic'"),
        (tiered("openai", "default"), "'default' is the model's own prices, which need no setting: leave it out"),
        (tiered("openai", 2), "Input should be a valid string"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config(data, set(REGISTRY))
        assert any(
            p.startswith("models.m.deployments[0].default_service_tier") and problem in p for p in caught.value.problems
        ), caught.value.problems
    # (The built-in table prices gpt-4o at priority; a price the operator wrote with no tiers does not.)
    unpriced = parse_config(tiered("openai", "priority", {"input": 1.0, "output": 2.0}), set(REGISTRY))
    with pytest.raises(ConfigError) as caught:
        check_routes(unpriced, REGISTRY, "us-east-1")
    assert caught.value.problems == [
        "models.m.deployments[0].default_service_tier: 'priority' has no price for model 'm' (the tiers it has a "
        "multiplier for: flex; from its price's `options.service_tier`, the built-in table's, or "
        "gateway.priced_options.service_tier)"
    ]
    keys = {"OPENAI_API_KEY": "x", "AZURE_OPENAI_API_KEY": "y"}
    for kind in ("openai", "azure"):
        priced = parse_config(tiered(kind, "priority"), set(REGISTRY))
        check_routes(priced, REGISTRY, "us-east-1")
        routes = Router(priced, build_adapters(priced, REGISTRY, keys), "us-east-1")
        [attempt] = routes.plan("m", RouteControls(), any_model)
        assert routes.unasked_tiers == {id(attempt): "priority"} and attempt.tiers["priority"] == 1.7


@pytest.mark.parametrize("pin", ["US-EAST-1", "Us-East-1"])
def test_a_region_pin_names_its_region_in_any_case(pin: str) -> None:
    """`x-gateway-region: US-EAST-1` on a `us-east-1` deployment, or Azure's `westeurope` on one configured as
    `WestEurope`, was `503 no_deployment_available` (found by review): only the config's exact spelling matched."""
    plan = router("eu-west-1").plan("m", RouteControls(region=pin, fallbacks=[]), any_model)
    assert [a.target.model for a in plan] == ["m-us"]
    azure = parse_config(
        {
            "providers": {"az": {"type": "azure", "api_key": "env:A", "base_url": "https://r.openai.azure.com"}},
            "models": {"g": {"deployments": [{"provider": "az", "model": "g", "region": "WestEurope"}]}},
        },
        set(REGISTRY),
    )
    routed = Router(azure, build_adapters(azure, REGISTRY, {"A": "x"}), "eu-west-1")
    assert [a.target.region for a in routed.plan("g", RouteControls(region="westeurope"), any_model)] == ["WestEurope"]


COUNTED = {
    "providers": {
        "a": {"type": "anthropic", "api_key": "sk-ant-a", "base_url": "http://127.0.0.1:9"},
        "b": {"type": "anthropic", "api_key": "sk-ant-b", "base_url": "http://127.0.0.1:9"},
    },
    "models": {
        "down": {"deployments": [{"provider": "a", "model": "claude-down"}], "fallbacks": ["secret", "open"]},
        "secret": {"deployments": [{"provider": "a", "model": "claude-secret"}]},
        "open": {"deployments": [{"provider": "a", "model": "claude-a"}, {"provider": "b", "model": "claude-b"}]},
    },
}


@pytest.mark.parametrize(
    ("fallbacks", "route"),
    [
        # (the deadline too short to send the count: the counting deployment passed over named in its place, after
        # the fallback the key may not use, as a request's route names it; it came first, the fallback unnamed)
        (
            ["secret", "open"],
            "a/claude-down@global=breaker-open, secret=model_not_allowed, a/claude-a@global=breaker-open",
        ),
        # (every fallback one the key may not use: named after the model's own, passed over; they went unnamed)
        (["secret"], "a/claude-down@global=breaker-open, secret=model_not_allowed"),
    ],
)
async def test_a_count_names_the_deployments_passed_over_as_a_requests_route_does(
    fallbacks: list[str], route: str
) -> None:
    """`Pipeline.count_tokens` with the model's own deployment's breaker open: what it passes over for open breakers
    is named as `_failover` names it, the fallbacks the key may not use in their places, whichever way the count
    ends unsent (every counting deployment's breaker open, or the deadline too short to send one)."""
    config = parse_config(COUNTED, set(REGISTRY))
    routes = Router(config, build_adapters(config, REGISTRY, {}), "us-east-1")
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.gateway = SimpleNamespace(router=routes)  # type: ignore[assignment]
    allowed = partial(operator.ne, "secret")
    plan = routes.plan("down", RouteControls(fallbacks=fallbacks), allowed)

    async def planned(*_: object, **__: object) -> list[Attempt]:
        return plan

    pipeline._plan = planned  # type: ignore[method-assign]
    for _ in range(routes.breakers.threshold):
        routes.breakers.failure("a/claude-down@global")
        routes.count_breakers.failure("a/claude-a@global")
    key = KeyRecord(id="k", name="k", secret_hash="", created_at=0)
    ex = Exchange("req_1", key, "down", Controls(deadline_s=0.0))
    req = ChatRequest.model_validate({"model": "down", "messages": [{"role": "user", "content": "Hi"}]})
    assert await pipeline.count_tokens(NativeCall(MESSAGES_API, {}, {}), req, ex) is None
    assert ", ".join(ex.route) == route


def test_deployments_named_alike_but_for_their_base_url_are_named_apart_by_it() -> None:
    """Two deployments of one provider, model and region at two base URLs had one name, `provider/model@region`,
    which keys their breaker and names them in `x-gateway-route`: each is named by its host, the same in every
    router built from the config, while a name only one deployment has (or one deployment listed twice, at one
    URL) stays as it was. Found by review (routerev36)."""
    deployments = [
        {"provider": "a", "model": "llama", "base_url": "http://vllm-b:8000/v1"},
        {"provider": "a", "model": "llama", "base_url": "http://vllm-a:8000/v1"},
        {"provider": "a", "model": "llama", "base_url": "http://vllm-a:8000/v1"},
        {"provider": "a", "model": "other"},
    ]
    same_host = [
        {"provider": "a", "model": "qwen", "base_url": "http://vllm:8000/one/v1"},
        {"provider": "a", "model": "qwen", "base_url": "http://vllm:8000/two/v1"},
    ]
    data = {
        "providers": {"a": {"type": "openai", "api_key": "env:A"}},
        "models": {"m": {"deployments": deployments}, "n": {"deployments": same_host}},
    }
    config = parse_config(data, set(REGISTRY))
    for _ in range(2):
        built = Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "us-east-1")
        labels = [a.target.label for a in built.plan("m", RouteControls(), any_model)]
        assert labels == [
            "a/llama@global[vllm-b:8000]",
            "a/llama@global[vllm-a:8000]",
            "a/llama@global[vllm-a:8000]",
            "a/other@global",
        ]
        assert [a.target.label for a in built.plan("n", RouteControls(), any_model)] == [
            "a/qwen@global[vllm:8000/one/v1]",
            "a/qwen@global[vllm:8000/two/v1]",
        ]
        explained = built.explain("m", RouteControls(), any_model)
        assert [entry.get("deployment") for entry in explained] == [*labels[:3], None]


def test_a_429_wait_that_leaves_no_time_for_the_retrys_answer_is_not_waited() -> None:
    """A 429's `retry-after` was waited out when it ended anywhere before the deadline: ending in its last 10 ms
    (`CUT_SLACK_S`), the retry was never sent and the request was a 504, its next deployment never tried; ending
    half a second before it, the retry went out with too little time for a provider's answer. Found by review
    (routerev36)."""
    err = UpstreamError("Rate limit reached", upstream_status=429, retryable=True, retry_after=1.0)
    now = time.perf_counter()
    for left in (CUT_SLACK_S / 2, 0.5, RETRY_ANSWER_S):
        assert Pipeline._retry_wait(SimpleNamespace(ends_at=now + 1.0 + left), err) is None, left  # type: ignore[arg-type]
    assert Pipeline._retry_wait(SimpleNamespace(ends_at=now + 3.0), err) == 1.0  # type: ignore[arg-type]
    assert Pipeline._retry_wait(SimpleNamespace(ends_at=None), err) == 1.0  # type: ignore[arg-type]


def test_explain_says_probing_while_a_half_open_breakers_probe_is_under_way() -> None:
    """While a half-open breaker's one probe is under way, every request passes the deployment over and one with
    nothing else to try is refused; `route explain` and `/v1/route` said `half-open`, that one request may probe
    it. Found by review (routerev36)."""
    config = parse_config(
        {
            "providers": {"openai": {"type": "openai", "api_key": "env:A"}},
            "models": {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        },
        set(REGISTRY),
    )
    now = [1000.0]
    built = Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "us-east-1")
    built.breakers.clock = lambda: now[0]
    label = "openai/gpt-4o-mini@global"
    for _ in range(built.breakers.threshold):
        built.breakers.failure(label)
    now[0] += built.breakers.cooldown + 1
    [entry] = built.explain("m", RouteControls(), any_model)
    assert entry["breaker"] == "half-open"
    assert built.breakers.allow(label)  # a request takes the probe
    refusal = built.shed(built.plan("m", RouteControls(), any_model))
    assert refusal is not None and refusal.code == "no_deployment_available"
    [entry] = built.explain("m", RouteControls(), any_model)
    assert entry["breaker"] == "probing"
