"""Web searches charged only at an attempt that is sent the provider's search tool or option: the searches a request
allows (Anthropic's `web_search_*`, the Responses API's hosted `web_search`) in the worst case of a deployment that
gets the request as written, none in a translation's; Chat Completions' `web_search_options` at an attempt whose
request carried it, as that request was built."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from adapters.providers.bedrock.adapter import reset_credentials
from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.budgets import Reservation
from handler.pipeline.exchange import Controls, Exchange
from handler.pipeline.gateway import build_adapters
from handler.pipeline.pipeline import Pipeline
from handler.pipeline.routing import Attempt, RouteControls, Router, any_model
from handler.ports import MESSAGES_API, RESPONSES_API, KeyRecord
from handler.schemas import DEFAULT_SEARCHES, ChatRequest, Usage, WebSearch

SEARCH_USD = 0.01


def pipeline_and_plan() -> tuple[Pipeline, list[Attempt]]:
    """A plan of one model on Anthropic, on OpenAI's Responses API, then on a Chat Completions server; searches
    priced at SEARCH_USD."""
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {
            # (Anthropic's API, as a local address stands for it: its `web_search` says it runs the search tool)
            "anthropic": {
                "type": "anthropic",
                "api_key": "sk-ant-test",
                "base_url": "http://127.0.0.1:9",
                "web_search": True,
            },
            "openai": {
                "type": "openai",
                "api_key": "sk-test",
                "base_url": "http://127.0.0.1:9/v1",
                "responses_api": "native",
            },
            "chat": {"type": "openai", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"},
        },
        "models": {
            "m": {
                "deployments": [
                    {"provider": "anthropic", "model": "claude-x"},
                    {"provider": "openai", "model": "gpt-x"},
                    {"provider": "chat", "model": "gpt-x"},
                ],
                "price": {"input": 1.0, "output": 2.0},
            }
        },
    }
    return planned(data, "m")


def planned(data: dict[str, Any], model: str) -> tuple[Pipeline, list[Attempt]]:
    """A `Pipeline` of the config `data` with no store nor server behind it (what pricing an attempt reads), and the
    plan of `model` in it."""
    config = parse_config(data, set(REGISTRY))
    router = Router(config, build_adapters(config, REGISTRY, {}), "us-east-1")
    pipeline = Pipeline.__new__(Pipeline)
    pipeline.gateway = SimpleNamespace(config=config, router=router)  # type: ignore[assignment]
    pipeline.fee = config.gateway.fee
    pipeline.threads = None
    return pipeline, router.plan(model, RouteControls(), any_model)


def exchange(api: str = "") -> Exchange:
    ex = Exchange("req_1", KeyRecord(id="k", name="k", secret_hash="", created_at=0), "m", Controls())
    ex.native_api = api  # (as `_admit` leaves a request in a provider's own API)
    return ex


def reserved_searches(pipeline: Pipeline, gemini: Attempt, req: ChatRequest) -> tuple[Exchange, Usage]:
    """The exchange of `req` at `gemini` and its worst case (100 tokens in, 16 out), which holds ten searches (one
    grounded prompt before Gemini 3, which bills an answer's searches as one)."""
    ex = exchange()
    pipeline._price_options(ex, req, [gemini])
    reservation = Reservation(None, 1.0, 0)
    reservation.prompt_tokens, reservation.output_tokens = 100, 16
    worst = pipeline._worst(ex, reservation, gemini)
    assert worst.web_searches == (1 if "gemini-2" in gemini.target.model else DEFAULT_SEARCHES)
    return ex, worst


def test_the_searches_are_in_the_worst_case_of_the_attempts_sent_the_tool_alone() -> None:
    """Ten searches allowed: in the worst case (and its charge, cut unanswered) of the deployment that speaks the
    request's API, none in a translation's, which leaves the tool out: $0.100042 was charged such an attempt."""
    pipeline, (claude, responses, chat) = pipeline_and_plan()
    reservation = Reservation(None, 1.0, 0)
    reservation.prompt_tokens, reservation.output_tokens = 100, 16
    for api, sent in ((RESPONSES_API, responses), (MESSAGES_API, claude)):
        ex = exchange(api)
        pipeline.allow_searches(ex, 10, ["tools[web_search]"])
        for attempt in (claude, responses, chat):
            worst = pipeline._worst(ex, reservation, attempt)
            searches = 10 if attempt is sent else 0
            assert worst.web_searches == searches, (api, attempt.target.label)
            charged = pipeline._cost(ex, attempt, worst, reserved=True).provider_usd
            assert charged == pytest.approx((100 * 1.0 + 16 * 2.0) / 1e6 + searches * SEARCH_USD)


def test_web_search_options_is_charged_at_an_attempt_only_as_its_own_request_was_sent() -> None:
    """A Chat Completions request with `web_search_options`, its attempt at Claude (sent it as its own search tool,
    billed per search) timed out, then answered by the Chat Completions server (sent it, billed once): the missed
    attempt is charged its worst case with its searches and without the per-request fee, the answer with the fee.
    Only the answering attempt's dropped parameters were known (`Exchange.dropped`), and the missed Claude, when it
    left the option out, was charged the fee too."""
    pipeline, (claude, _, chat) = pipeline_and_plan()
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex = exchange()
    pipeline._price_options(ex, req, [claude, chat])
    for attempt in (claude, chat):  # (as `_failover` builds each)
        ex.dropped_at[id(attempt)] = attempt.adapter.chat_request(req, attempt.target, stream=False).dropped
    ex.dropped = ex.dropped_at[id(chat)]  # (the answer's)
    assert "web_search_options" not in ex.dropped_at[id(claude)] and "web_search_options" not in ex.dropped
    usage = Usage.of(100, 16)
    tokens = (100 * 1.0 + 16 * 2.0) / 1e6
    worst = Usage.of(100, 16)  # (its worst case, `Pipeline._worst`: the searches it may run at their limit)
    worst.set_count("web_searches", pipeline._searches_at(ex, claude))
    assert worst.web_searches == DEFAULT_SEARCHES
    searches = DEFAULT_SEARCHES * SEARCH_USD
    assert pipeline._cost(ex, claude, worst, reserved=True).provider_usd == pytest.approx(tokens + searches)
    assert pipeline._cost(ex, chat, usage).provider_usd == pytest.approx(tokens + SEARCH_USD)


def gemini_plan() -> tuple[Pipeline, list[Attempt]]:
    """A plan of one Gemini 3 model; searches priced at SEARCH_USD."""
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {"gemini": {"type": "gemini", "api_key": "AIza-test", "base_url": "http://127.0.0.1:9"}},
        "models": {
            "g": {
                "deployments": [{"provider": "gemini", "model": "gemini-3-pro-preview"}],
                "price": {"input": 1.0, "output": 2.0},
            },
        },
    }
    return planned(data, "g")


def test_gemini_is_charged_no_more_searches_than_were_reserved() -> None:
    """Gemini's search takes no limit, and Gemini 3 bills each query it ran: an answer that ran 14 was charged 14
    searches where 10 (`DEFAULT_SEARCHES`) were reserved, past the budget the reservation held. Charged at most the
    searches reserved."""
    pipeline, [gemini] = gemini_plan()
    req = ChatRequest.model_validate(
        {"model": "g", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex, worst = reserved_searches(pipeline, gemini, req)
    reserved = pipeline._cost(ex, gemini, worst, reserved=True).provider_usd
    ex.dropped_at[id(gemini)] = gemini.adapter.chat_request(req, gemini.target, stream=False).dropped
    answered = Usage.of(100, 16)
    answered.set_count("web_searches", DEFAULT_SEARCHES + 4)
    charged = pipeline._cost(ex, gemini, answered).provider_usd
    assert charged == pytest.approx(reserved) and reserved == pytest.approx(132 / 1e6 + DEFAULT_SEARCHES * SEARCH_USD)


AZURE = {"type": "azure", "api_key": "azure-test", "base_url": "https://res.openai.azure.com"}


def test_azure_at_a_dated_api_version_is_reserved_no_per_request_search_fee() -> None:
    """Azure's Chat Completions at a dated api-version has no `web_search_options`: it is left out and named, and no
    fee is charged. The reservation, made before the request is built, still held OpenAI's per-request fee ($0.01
    for a request of $0.000132, a 402 under `x-gateway-max-cost-usd: 0.005`). Its versionless API takes it."""
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {"azure": AZURE, "v1": {**AZURE, "api_version": "v1"}},
        "models": {
            "m": {
                "deployments": [{"provider": "azure", "model": "gpt-4o"}, {"provider": "v1", "model": "gpt-4o"}],
                "price": {"input": 1.0, "output": 2.0},
            }
        },
    }
    pipeline, (dated, versionless) = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex = exchange()
    pipeline._price_options(ex, req, [dated, versionless])
    reserved = [pipeline._per_request_usd(ex, attempt) for attempt in (dated, versionless)]
    for attempt in (dated, versionless):  # (as `_failover` builds each)
        ex.dropped_at[id(attempt)] = attempt.adapter.chat_request(req, attempt.target, stream=False).dropped
    assert ex.dropped_at[id(dated)] == ["web_search_options"] and ex.dropped_at[id(versionless)] == []
    assert reserved == [pipeline._per_request_usd(ex, attempt) for attempt in (dated, versionless)] == [0, SEARCH_USD]


@pytest.fixture
def example_aws_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """AWS keys for a Bedrock deployment's request to be built, the process's credentials (read once, cached) reset
    before and after: left cached, a later test's Bedrock deployments in the same process signed as AKIDEXAMPLE."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    reset_credentials()
    yield
    reset_credentials()


# A deployment of each provider type and profile (OpenAI's model the one of its own that searches), for the tests
# that check a prediction made before a request is built against the request built.
EVERY_PROVIDER: list[tuple[dict[str, Any], str]] = [
    ({"type": "openai", "api_key": "sk-test"}, "gpt-4o-search-preview"),
    ({"type": "openai", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1"}, "llama"),
    ({"type": "openai", "api_key": "sk-test", "base_url": "http://127.0.0.1:9/v1", "profile": "ollama"}, "llama"),
    ({"type": "deepseek", "api_key": "sk-test"}, "deepseek-chat"),
    ({"type": "mistral", "api_key": "test"}, "mistral-large-latest"),
    (AZURE, "gpt-4o"),
    ({**AZURE, "api_version": "v1"}, "gpt-4o"),
    ({"type": "anthropic", "api_key": "sk-ant-test"}, "claude-sonnet-4-5"),
    ({"type": "gemini", "api_key": "AIza-test"}, "gemini-2.5-flash"),
    ({"type": "bedrock", "region": "us-east-1"}, "us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
]


@pytest.mark.parametrize(("provider", "model"), EVERY_PROVIDER)
@pytest.mark.usefixtures("example_aws_keys")
def test_the_search_fee_is_reserved_where_web_search_options_is_sent_as_written(
    provider: dict[str, Any], model: str
) -> None:
    """Whether a deployment is sent Chat Completions' `web_search_options` as written, and billed OpenAI's fee for it,
    is decided before its request is built (`ProviderAdapter.takes_search_options`), and agrees with the request
    built: reserved the fee exactly where it is charged."""
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {"p": provider},
        "models": {"m": {"deployments": [{"provider": "p", "model": model}], "price": {"input": 1.0, "output": 2.0}}},
    }
    pipeline, [attempt] = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex = exchange()
    pipeline._price_options(ex, req, [attempt])
    reserved = pipeline._per_request_usd(ex, attempt)
    built = attempt.adapter.chat_request(req, attempt.target, stream=False)
    ex.dropped_at[id(attempt)] = built.dropped
    sent = "web_search_options" in orjson.loads(built.request.body)
    assert reserved == pipeline._per_request_usd(ex, attempt) == (SEARCH_USD if sent else 0.0)
    assert attempt.adapter.takes_search_options(attempt.target) is sent


def test_a_requests_search_is_built_once_however_often_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """`ChatRequest.web_search` is read at each attempt's reservation, body and costing (at Gemini, whose search goes
    only beside no function tools, each time it is asked whether it hosts the search): it is read from the options
    once (each read built a `WebSearch` anew, 4 for this request of one attempt at Gemini). A copy that sets other
    options has their search, and a copy its own."""
    built: list[dict[str, Any]] = []
    asked = WebSearch.asked.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(WebSearch, "asked", classmethod(lambda cls, *args: built.append(args[0]) or asked(cls, *args)))
    provider = {"type": "gemini", "api_key": "AIza-test", "base_url": "http://127.0.0.1:9"}
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {"gemini": provider},
        "models": {"m": {"deployments": [{"provider": "gemini", "model": "gemini-2.5-flash"}]}},
    }
    pipeline, [gemini] = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex, worst = reserved_searches(pipeline, gemini, req)
    pipeline._cost(ex, gemini, worst, reserved=True)
    gemini.adapter.chat_request(req, gemini.target, stream=False)
    gemini.adapter.stream_parser(req, gemini.target)
    pipeline._cost(ex, gemini, Usage.of(100, 16))
    assert built == [{}]
    near = {"user_location": {"approximate": {"city": "Paris"}}}
    copied = req.model_copy(update={"web_search_options": near})
    assert copied.web_search is not None and copied.web_search.location == {"city": "Paris"}
    assert req.web_search is not None and req.web_search.location is None
    assert req.model_copy().web_search is not req.web_search


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.groq.com/openai/v1",
        "https://api.together.xyz/v1",
        "https://api.x.ai/v1",
        "https://generativelanguage.googleapis.com/v1beta/openai",
    ],
)
def test_apis_without_web_search_options_are_not_sent_it_nor_reserved_its_fee(base_url: str) -> None:
    """Groq's, Together's, xAI's and Gemini's OpenAI-compatible Chat Completions document no `web_search_options`
    (Groq's compound models search unasked, with `search_settings`; xAI answers its Live Search's
    `search_parameters` 410 Gone, its searches are the Responses API's tools; Gemini grounds on its own API's
    `google_search`): the option is left out and named, and no per-request fee is reserved or charged. Their
    profiles sent it as written and held OpenAI's fee ($0.01 for a request of cents' worth of tokens)."""
    data = {
        "gateway": {"priced_options": {"web_search_usd": SEARCH_USD}},
        "providers": {"p": {"type": "openai", "api_key": "sk-test", "base_url": base_url}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "x"}], "price": {"input": 1.0, "output": 2.0}}},
    }
    pipeline, [attempt] = planned(data, "m")
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "web_search_options": {}}
    )
    ex = exchange()
    pipeline._price_options(ex, req, [attempt])
    assert pipeline._per_request_usd(ex, attempt) == 0.0
    built = attempt.adapter.chat_request(req, attempt.target, stream=False)
    assert "web_search_options" not in orjson.loads(built.request.body)
    assert "web_search_options" in built.dropped
