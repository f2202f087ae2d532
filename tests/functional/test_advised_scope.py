"""Anthropic's advisor tool names a model by its upstream id (`claude-opus-4-6`), which Anthropic runs inside the
answer, billed at that model's prices: a key may call it only where its whole chain may use a model of the config's
that deploys it, and a call is counted on that model's per-model limits. Before, a key limited to `sonnet` was refused
`opus` by name (403), and the same key's Sonnet request with an advisor tool naming `claude-opus-4-6` was sent on and
answered 200: charged $0.037709, nearly all of it Opus (Sonnet alone about $0.0002), and counted on no limit of Opus's
(found by review). A thread's `continue` calls the advisor its thread holds, which its body does not show: the store
keeps it with the thread's owner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import ThreadNotFoundError

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.budgets import period_of
from handler.pipeline.charges import DEFAULT_ADVICE_TOKENS, DEFAULT_ADVISOR_USES
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService, split_key
from handler.ports import KeyRecord
from tests.functional.conftest import Running, anthropic_client, fresh_minute, param_store_url, serving
from tests.functional.test_search_and_cache_prices import (
    ADVISOR_BETA,
    HI,
    THREADS_BETA,
    advised_settings,
    config,
    continue_of,
    gateway_pricing,
)
from tests.support.inprocess import serve
from tests.support.servers import ServerThread

OPUS = "claude-opus-4-6"  # the upstream id the config's `opus` deploys
OPUS_DATED = "claude-opus-4-6-20260205"  # the same model by a dated id, which Anthropic takes as it takes the alias


@pytest.fixture(scope="module")
def priced(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """The gateway of the advisor's prices: `sonnet`, `opus` (deploying `claude-opus-4-6`) and `advisor` (deploying
    `claude-advisor-x`) on Anthropic's fake."""
    yield from gateway_pricing(upstream, tmp_path_factory, None)


@pytest.fixture(scope="module", params=["sqlite", "dynamodb"])
def priced_on_each_store(
    request: pytest.FixtureRequest,
    upstream: tuple[ServerThread, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    """`priced`'s gateway on each store."""
    if "anthropic" not in REGISTRY:
        pytest.skip("the anthropic provider type is not registered")
    store_url = param_store_url(request, tmp_path_factory, "advised")
    yield from serving(parse_config(config(upstream[0].url, None), set(REGISTRY)), store_url, upstream)


def sent_since(running: Running, before: int) -> list[dict[str, Any]]:
    """The bodies Anthropic's fake was sent after its `before`th request."""
    return [request["json"] for request in running.fakes["anthropic"].state.requests[before:]]


def advisors_run(bodies: list[dict[str, Any]]) -> list[str]:
    """The models the advisor tools sent in `bodies` name, which Anthropic runs."""
    return [
        str(tool.get("model"))
        for body in bodies
        for tool in body.get("tools") or ()
        if str(tool.get("type")).startswith("advisor_")
    ]


def refused(running: Running, key: str, settings: Any, **headers: str) -> anthropic.APIStatusError:
    """The refusal of a request that sends nothing (none of its advisors runs)."""
    before = len(running.fakes["anthropic"].state.requests)
    with pytest.raises(anthropic.APIStatusError) as caught:
        anthropic_client(running, key).beta.messages.create(**settings, extra_headers=headers)
    assert sent_since(running, before) == []
    return caught.value


def key_id(key: str) -> str:
    return (split_key(key) or ("", ""))[0]


@pytest.mark.parametrize("strict", ["false", "true"], ids=["plain", "strict"])
def test_an_advisor_tool_cannot_reach_a_model_outside_the_keys_scope(priced: Running, strict: str) -> None:
    """A key limited to `sonnet` is refused `opus` by name, and an advisor naming `claude-opus-4-6` (which `opus`
    deploys) as well: Anthropic's `permission_error`, code `model_not_allowed`, naming the tool's model, before
    anything is reserved or sent, strict or not. A key whose chain may use `opus` calls it."""
    key = priced.mint(name=f"sonnet-only-{strict}", models=["sonnet"])
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "x-gateway-strict": strict}
    direct = httpx.post(
        f"{priced.url}/v1/messages", json={"model": "opus", "max_tokens": 50, "messages": HI}, headers=headers
    )
    assert direct.status_code == 403, direct.text  # the key may not use Opus
    error = refused(priced, key, advised_settings(OPUS), **{"x-gateway-strict": strict})
    assert error.status_code == 403 and isinstance(error, anthropic.PermissionDeniedError), error.body
    body: Any = error.body
    assert body["error"]["type"] == "permission_error", body
    assert f"may not use model '{OPUS}'" in body["error"]["message"] and "advisor" in body["error"]["message"], body

    # A key stored below a parent limited to `sonnet`, whose own models are every model: the chain is held to the
    # parent's (as a fallback is).
    parent = key_id(key)
    below = priced.mint(name=f"below-sonnet-only-{strict}", parent_id=parent, ancestors=[parent])
    assert refused(priced, below, advised_settings(OPUS), **{"x-gateway-strict": strict}).status_code == 403

    # The advisor's model in scope: called, as asked.
    allowed = priced.mint(name=f"sonnet-and-opus-{strict}", models=["sonnet", "opus"])
    before = len(priced.fakes["anthropic"].state.requests)
    sdk = anthropic_client(priced, allowed).beta.messages
    assert sdk.create(**advised_settings(OPUS), extra_headers={"x-gateway-strict": strict}).content
    assert advisors_run(sent_since(priced, before)) == [OPUS]


def test_an_advisor_is_in_scope_by_the_models_that_deploy_it(priced: Running) -> None:
    """The scopes name the gateway's models, not the providers' ids: an advisor is in a key's scope where a model
    the config deploys it as (`advisor`, for `claude-advisor-x`) is. Under scoped `models`, an id the config deploys
    as no model is refused, whatever the patterns match of the id itself (nothing says whether the scopes hold it);
    a key with every model may call any advisor, as before."""
    scoped = priced.mint(name="advisor-by-name", models=["sonnet", "advisor"])
    assert anthropic_client(priced, scoped).beta.messages.create(**advised_settings("claude-advisor-x")).content
    assert refused(priced, scoped, advised_settings(OPUS)).status_code == 403

    unknown = advised_settings("claude-nobody-prices")
    for models in (["sonnet"], ["sonnet", "claude-*"]):
        error = refused(priced, priced.mint(name="advisor-unknown", models=models), unknown)
        assert error.status_code == 403 and "none this gateway deploys" in str(error.body), error.body
    before = len(priced.fakes["anthropic"].state.requests)
    assert anthropic_client(priced, priced.mint(name="advisor-anyone")).beta.messages.create(**unknown).content
    assert advisors_run(sent_since(priced, before)) == ["claude-nobody-prices"]


def test_an_advisor_is_counted_on_its_models_own_limits(priced: Running) -> None:
    """A request whose advisor runs Opus is counted on Opus's per-model limits as a request for `opus` is: the key's
    one Opus request a minute goes to the advisor (and a direct request to the advisor's), and its tokens a minute
    count what the advisor's calls may read and write (three calls of 8,192 tokens, by default, are past 20,000)."""
    fresh_minute()
    key = priced.mint(name="opus-once-a-minute", model_limits={"opus": {"rpm": 1}})
    sdk = anthropic_client(priced, key).beta.messages
    assert sdk.create(**advised_settings(OPUS)).content
    with pytest.raises(anthropic.RateLimitError) as direct:
        sdk.create(model="opus", max_tokens=50, messages=HI)
    assert "rpm:opus=1" in str(direct.value.body), direct.value.body
    again = refused(priced, key, advised_settings(OPUS))
    assert again.status_code == 429 and "rpm:opus=1" in str(again.body), again.body

    spent_directly = priced.mint(name="opus-spent-directly", model_limits={"opus": {"rpm": 1}})
    assert anthropic_client(priced, spent_directly).messages.create(model="opus", max_tokens=50, messages=HI).content
    assert refused(priced, spent_directly, advised_settings(OPUS)).status_code == 429

    tokens = priced.mint(name="opus-tokens", model_limits={"opus": {"tpm": 20_000}})
    too_large = refused(priced, tokens, advised_settings(OPUS))
    assert too_large.status_code == 429 and "tpm:opus" in str(too_large.body), too_large.body
    limited = advised_settings(OPUS, max_uses=1, max_tokens=2048)
    assert anthropic_client(priced, tokens).beta.messages.create(**limited).content


def test_an_advisors_own_tokens_a_minute_settle_to_the_tokens_it_ran(priced: Running) -> None:
    """An advisor is counted on its model's own `tpm` for the most its calls may read and write (three calls of 8,192
    tokens by default: about 49,500 here), and once the tool was sent that count was never settled: with `opus` at
    100,000 tokens a minute, the third advised request was refused (429 `tpm:opus`) though each advisor call ran
    about 1,500 tokens. It settles to the tokens the advisor's model ran for the answer, as its usage says them."""
    fresh_minute()
    key = priced.mint(name="opus-tokens-settled", model_limits={"opus": {"tpm": 100_000}})
    sdk = anthropic_client(priced, key).beta.messages
    settings = advised_settings(OPUS)
    del settings["metadata"]  # (the fake's usual advice: 1,500 tokens)
    for _ in range(4):
        assert sdk.create(**settings).content
        time.sleep(0.3)  # (the settlement, in the background)


def ran(message: Any) -> int:
    """Every token run for an answer, its advisor's with its executor's (its usage's `iterations`)."""
    return sum(entry.input_tokens + entry.output_tokens for entry in message.usage.iterations or ())


def test_a_parents_tokens_a_minute_count_the_tokens_its_childs_advisor_runs(priced_on_each_store: Running) -> None:
    """A key's `tpm`, and every ancestor's, counts every token run for its requests, the advisor's model's with the
    executor's: the advisor's were counted on its model's own limits alone, and a parent with `tpm: 4000` let its
    child run three advised answers of ~7,650 tokens each in one minute (22,950), each told some 3,770 tokens
    remained (found by review). They are counted on it for the most the advisor's calls may run (three calls of 8,192
    tokens by default: a request too large for 4,000, which no minute admits), told in `x-ratelimit-remaining-tokens`,
    and settled, once, to the tokens it ran."""
    fresh_minute()
    running = priced_on_each_store
    parent = running.mint(name="tpm-4000", tpm=4_000)
    child = running.mint(name="advised-child", parent_id=key_id(parent), ancestors=[key_id(parent)])
    too_large = refused(running, child, advised_settings(OPUS))
    assert too_large.status_code == 429 and "advisor tool's calls" in str(too_large.body), too_large.body
    assert too_large.response.headers["x-should-retry"] == "false"

    parent = running.mint(name="tpm-100000", tpm=100_000)
    child = running.mint(name="advised-child", parent_id=key_id(parent), ancestors=[key_id(parent)])
    sdk = anthropic_client(running, child).beta.messages.with_raw_response
    first = sdk.create(**advised_settings(OPUS))
    counted = 100_000 - int(first.headers["x-ratelimit-remaining-tokens"])  # (the request's worst case, told)
    assert counted > 2 * DEFAULT_ADVISOR_USES * DEFAULT_ADVICE_TOKENS, counted  # its advisor's calls among them
    time.sleep(0.5)  # (the settlement, in the background)
    second = sdk.create(**advised_settings(OPUS))
    # The first counts what it ran, ~7,650 tokens (it counted the ~16 its executor ran), the second its worst case.
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 100_000 - ran(first.parse()) - counted


def test_an_advisor_named_by_its_dated_id_is_the_model_that_deploys_its_alias(priced: Running) -> None:
    """Anthropic takes a model by its alias and by its dated id, and the built-in price table prices both as one
    model (`claude-opus-4-6-20260205` as Opus 4.6). The scopes and per-model limits matched an advisor to the config's
    models by the exact id alone: named by its dated id, the Opus the config deploys as `opus` ran for a key with
    every model past that key's one Opus request a minute (spent: 200 and sent, where the alias is the 429), and a
    key whose scopes hold `opus` was refused it (403, an id "none this gateway deploys"), both found by review. It is
    matched as the price table matches ids: to every model deploying (or named) that id, its alias or another dated
    release of it."""
    fresh_minute()
    key = priced.mint(name="opus-once-dated", model_limits={"opus": {"rpm": 1}})
    sdk = anthropic_client(priced, key)
    assert sdk.messages.create(model="opus", max_tokens=50, messages=HI).content  # the key's one Opus request
    for advisor in (OPUS, OPUS_DATED):
        again = refused(priced, key, advised_settings(advisor))
        assert again.status_code == 429 and "rpm:opus=1" in str(again.body), (advisor, again.body)

    scoped = priced.mint(name="sonnet-and-opus-dated", models=["sonnet", "opus"])
    before = len(priced.fakes["anthropic"].state.requests)
    assert anthropic_client(priced, scoped).beta.messages.create(**advised_settings(OPUS_DATED)).content
    assert advisors_run(sent_since(priced, before)) == [OPUS_DATED]
    error = refused(priced, priced.mint(name="sonnet-only-dated", models=["sonnet"]), advised_settings(OPUS_DATED))
    assert error.status_code == 403 and "the models that deploy it are" in str(error.body), error.body


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_advisor_a_translation_leaves_out_is_no_403_for_a_key_without_its_model(
    priced: Running, stream: bool
) -> None:
    """A request whose every attempt gets it translated (`gpt`, on OpenAI) is sent no advisor tool: it is left out
    and named, and no advisor runs, so its model is not held to the key's scopes. A key limited to `gpt` (Claude Code
    with its model mapped to GPT) was refused 403 for an Opus advisor nothing would run, where a key with every model
    was answered, the tool named dropped (found by review). A plan with an attempt that is sent the tool is still
    held to them (`test_an_advisor_tool_cannot_reach_a_model_outside_the_keys_scope`)."""
    key = priced.mint(name=f"gpt-only-{stream}", models=["gpt"])
    tool = {"type": "advisor_20260301", "name": "advisor", "model": OPUS}
    body = {"model": "gpt", "max_tokens": 50, "messages": HI, "tools": [tool], "stream": stream}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": ADVISOR_BETA}
    before = len(priced.fakes["openai"].state.requests)
    answered = httpx.post(f"{priced.url}/v1/messages", json=body, headers=headers, timeout=15)
    assert answered.status_code == 200, answered.text
    assert len(priced.fakes["openai"].state.requests) == before + 1
    assert "tools.advisor_20260301" in answered.headers["x-gateway-dropped-params"]
    strict = httpx.post(
        f"{priced.url}/v1/messages", json=body, headers={**headers, "x-gateway-strict": "true"}, timeout=15
    )
    assert strict.status_code == 400 and "advisor" in strict.text, strict.text  # (the tool cannot be honoured)


def test_a_continue_is_held_to_the_continuing_keys_scope_for_its_threads_advisor(priced: Running) -> None:
    """A `continue` sends no `tools`: Anthropic keeps the thread's, and calls its advisor again. A key limited to
    `sonnet`, continuing a thread its parent started with an Opus advisor, reached Opus through it; now a child may
    not continue its parent's thread at all (Anthropic's 404, before anything else is checked). The thread's advisor,
    kept with its owner in the store, is still checked against the continuing key's chain, in any instance: the
    chain that made the thread allowed it, but the config's models, which the scopes name, may have changed since
    (another instance's config, or before a rollout). Such a record, written through the store: its key's
    `continue` is the 403 naming the advisor's model, nothing sent, whether or not it names the advisor's beta (a
    scoped key's `continue` of a thread another instance relayed was refused as a request Anthropic cannot thread
    with the beta, and sent on without it, its advisor checked against nothing)."""
    parent = priced.mint(name="advised-thread-parent")
    betas = [ADVISOR_BETA, THREADS_BETA]
    first = anthropic_client(priced, parent).beta.messages.create(
        **{**advised_settings(OPUS), "betas": betas}, thread={"type": "create"}
    )
    spec = {"name": "sonnet-only", "models": ["sonnet"]}
    minted = httpx.post(f"{priced.url}/v1/keys", json=spec, headers={"authorization": f"Bearer {parent}"})
    assert minted.status_code == 201, minted.text
    child = minted.json()["key"]
    following = continue_of(first.id, betas)
    assert isinstance(refused(priced, child, following), ThreadNotFoundError)

    priced.answered_elsewhere(child, "msg_01opusadvised", advisors=((OPUS, 3, 8192),))
    elsewhere = {**following, "thread": {"type": "continue", "previous_message_id": "msg_01opusadvised"}}
    for named in (betas, [THREADS_BETA]):
        error = refused(priced, child, {**elsewhere, "betas": named})
        assert isinstance(error, anthropic.PermissionDeniedError), error.body
        assert f"may not use model '{OPUS}'" in str(error.body), error.body

    before = len(priced.fakes["anthropic"].state.requests)
    continued = anthropic_client(priced, parent).beta.messages.create(**following)
    assert continued.content and len(sent_since(priced, before)) == 1


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return param_store_url(request, tmp_path_factory, "advscope")


def message(request: httpx.Request) -> httpx.Response:
    """Anthropic's answer to any Messages request."""
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "end_turn"}
    answer |= {"content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 10, "output_tokens": 5}}
    return httpx.Response(200, json=answer)


async def test_an_advisors_count_written_while_the_request_is_cancelled_twice_is_given_back(store_url: str) -> None:
    """The advisor's model is counted on its own limits before the attempt that is sent the tool goes out. A request
    cancelled while the store writes that count, and again before the store answers it, sends nothing: what it
    counted there is given back, as a fallback's is (`rpm:opus` 0, and `opus` serves the next request)."""
    price = {"input": 3.0, "output": 15.0}
    models = {
        "sonnet": {"deployments": [{"provider": "openai", "model": "claude-sonnet-x"}], "price": price},
        "opus": {"deployments": [{"provider": "openai", "model": "claude-opus-x"}], "price": price},
    }
    provider = {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": "http://up"}
    served = await serve(
        message, models, provider=provider, environ={"ANTHROPIC_API_KEY": "sk-ant-test-0000"}, store_url=store_url
    )
    store = served.gateway.store
    limited = KeyRecord(id="", name="l", secret_hash="", created_at=0, model_limits={"opus": {"rpm": 1}})
    served.key = await KeyAdmin(KeyService(store, 0)).mint(limited)
    written = store.admit
    admission_written, answer_due = asyncio.Event(), asyncio.Event()

    async def late_answer(admission: Any) -> Any:
        snapshot = await written(admission)
        if admission.reservation_id.endswith("@advisor:opus"):
            admission_written.set()
            await answer_due.wait()  # its answer on its way
        return snapshot

    store.admit = late_answer  # type: ignore[method-assign]
    tool = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-x"}
    body = {"model": "sonnet", "max_tokens": 50, "messages": HI, "tools": [tool]}
    request = asyncio.ensure_future(served.post("/v1/messages", body))
    await asyncio.wait_for(admission_written.wait(), 5)  # (never, while the advisor was counted on nothing)
    request.cancel()  # the first cancellation (the deadline's)
    for _ in range(5):
        await asyncio.sleep(0)
    request.cancel()  # the second (a server stopping past its grace), while the store has still to answer
    for _ in range(5):
        await asyncio.sleep(0)
    answer_due.set()
    with pytest.raises(asyncio.CancelledError):
        await request
    store.admit = written  # type: ignore[method-assign]
    await served.gateway.drain()
    meter = await store.meter(served.key.record.id, period_of("total", time.time()))
    assert meter.rates.get("rpm:opus", 0) == 0, meter
    direct = await served.post("/v1/messages", {"model": "opus", "max_tokens": 50, "messages": HI})
    assert direct.status_code == 200, direct.text
    await served.gateway.aclose()
