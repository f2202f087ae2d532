"""A bounded request's output cap holds in every member a server may read as one (handler/pipeline/output_caps.py).

The upstream here writes as many tokens as the cap it reads allows, as Hugging Face TGI's chat route does with
`max_tokens` (the only cap it knows) and llama.cpp's server with `n_predict` (read before `max_tokens`), and bills
each of `best_of` sequences written to it, as servers that take `best_of` do: what the
gateway reserved for must be what such a server can write, or a child key spends past its chain's budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import FAKE_KEYS, Running, serve_gateway
from tests.support.servers import ServerThread

SEEN: list[dict[str, Any]] = []
UNCAPPED = 2000  # what the server writes where it reads no cap


async def writes_to_its_cap(request: Request) -> JSONResponse:
    body = await request.json()
    SEEN.append(body)
    cap = body.get("n_predict")
    if not isinstance(cap, int) or cap < 0:
        cap = body.get("max_tokens") or UNCAPPED
    best_of = body.get("best_of")
    written = cap * best_of if isinstance(best_of, int) and best_of > 1 else cap  # (each sequence, billed)
    return JSONResponse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": written, "total_tokens": 9 + written},
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    upstream = ServerThread(Starlette(routes=[Route("/v1/chat/completions", writes_to_its_cap, methods=["POST"])]))
    upstream.start()
    config = parse_config(
        {
            "providers": {
                "local": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream.url}/v1"}
            },
            "models": {
                "local-llama": {
                    "deployments": [{"provider": "local", "model": "local-llama"}],
                    "price": {"input": 1.0, "output": 1000.0},  # $0.001 an output token
                },
                "oss": {
                    "deployments": [{"provider": "local", "model": "openai/gpt-oss-20b"}],
                    "price": {"input": 1.0, "output": 1000.0},
                },
                "o3-behind-a-proxy": {
                    "deployments": [{"provider": "local", "model": "o3-mini"}],
                    "price": {"input": 1.0, "output": 1000.0},
                },
            },
        },
        set(REGISTRY),
    )
    store_url = f"sqlite:///{tmp_path_factory.mktemp('caps') / 'gateway.db'}"
    running, server = serve_gateway(config, store_url, upstream, {}, FAKE_KEYS)
    try:
        yield running
    finally:
        server.stop()
        upstream.stop()


def chat(served: Running, key: str, model: str = "local-llama", **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return httpx.post(
        f"{served.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def spent(served: Running, key: str) -> float:
    return float(httpx.get(f"{served.url}/v1/key", headers={"authorization": f"Bearer {key}"}).json()["spent_usd"])


@pytest.mark.parametrize(
    "caps",
    [{"max_completion_tokens": 5, "max_tokens": 100_000}, {"max_tokens": 100_000, "max_completion_tokens": 5}],
    ids=["completion first", "max_tokens first"],
)
def test_a_child_that_sends_both_caps_spends_within_its_parents_budget(served: Running, caps: dict[str, int]) -> None:
    # Reserved for `max_completion_tokens: 5`, the request went on with `max_tokens: 100000`: the server wrote
    # 100,000 tokens, $100 charged on a $0.05 budget, no 402.
    parent = served.mint(budget_usd=0.05)
    child = httpx.post(f"{served.url}/v1/keys", headers={"authorization": f"Bearer {parent}"}, json={"name": "c"})
    answer = chat(served, child.json()["key"], **caps)
    assert answer.status_code == 200, answer.text
    assert {SEEN[-1].get("max_tokens"), SEEN[-1].get("max_completion_tokens")} <= {None, 5}, SEEN[-1]
    assert spent(served, parent) <= 0.05


def test_both_caps_go_as_one_with_openais_precedence_to_such_a_server(served: Running) -> None:
    answer = chat(served, served.mint(budget_usd=10.0), max_completion_tokens=50, max_tokens=7)
    assert answer.status_code == 200, answer.text
    assert SEEN[-1]["max_tokens"] == 50 and "max_completion_tokens" not in SEEN[-1]  # (OpenAI's: the newer field's)


@pytest.mark.parametrize(
    "member", ["n_predict", "max_new_tokens", "num_predict", "max_length", "max_output_tokens", "best_of"]
)
def test_a_member_a_server_reads_as_its_own_cap_is_not_sent_on_a_bounded_request(served: Running, member: str) -> None:
    key = served.mint(budget_usd=0.05)
    answer = chat(served, key, max_tokens=5, **{member: 100_000})
    assert answer.status_code == 200, answer.text
    assert member not in SEEN[-1] and SEEN[-1]["max_tokens"] == 5
    assert answer.headers["x-gateway-dropped-params"] == member
    assert spent(served, key) <= 0.05


def test_such_a_member_goes_as_written_where_the_request_is_not_bounded(served: Running) -> None:
    answer = chat(served, served.mint(), n_predict=-1)  # (no budget: the key's owner may ask llama.cpp for no end)
    assert answer.status_code == 200, answer.text
    assert SEEN[-1]["n_predict"] == -1 and "x-gateway-dropped-params" not in answer.headers


def test_under_strict_such_a_member_is_the_clients_400(served: Running) -> None:
    key = served.mint(budget_usd=1.0)
    body = {"model": "local-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "n_predict": 9}
    answer = httpx.post(
        f"{served.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}", "x-gateway-strict": "true"},
        timeout=30,
    )
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "n_predict", answer.text


def test_a_server_the_gateway_knows_no_better_gets_the_cap_as_max_tokens(served: Running) -> None:
    # With no cap of the client's, a budgeted request's went as `max_completion_tokens` alone, which TGI (and
    # llama.cpp before it took both) ignores: the answer ran on to the server's own end, past the reservation.
    key = served.mint(budget_usd=10.0)
    answer = chat(served, key)
    assert answer.status_code == 200, answer.text
    assert "max_completion_tokens" not in SEEN[-1] and SEEN[-1]["max_tokens"] == 4096, SEEN[-1]  # (the default cap)
    assert spent(served, key) < 4.2
    chat(served, key, max_completion_tokens=3)
    assert SEEN[-1]["max_tokens"] == 3 and "max_completion_tokens" not in SEEN[-1]


@pytest.mark.parametrize("model", ["local-llama", "oss"])
def test_a_cap_written_null_beside_max_tokens_does_not_take_its_place(served: Running, model: str) -> None:
    # `max_completion_tokens: null` beside `max_tokens: 5`, renamed to `max_tokens` for such a server, took the cap's
    # place: `max_tokens: null`, 2,000 tokens written, $2.00 charged on a $0.05 budget.
    key = served.mint(budget_usd=0.05)
    answer = chat(served, key, model, max_tokens=5, max_completion_tokens=None)
    assert answer.status_code == 200, answer.text
    assert SEEN[-1]["max_tokens"] == 5 and "max_completion_tokens" not in SEEN[-1], SEEN[-1]
    assert spent(served, key) <= 0.05


@pytest.mark.parametrize("fields", [{"max_tokens": 5}, {"max_completion_tokens": 5}], ids=["max_tokens", "completion"])
def test_gpt_oss_served_by_such_a_server_gets_its_cap_as_max_tokens(served: Running, fields: dict[str, int]) -> None:
    # gpt-oss is one of OpenAI's reasoning models by name, and OpenAI's reasoning models take `max_completion_tokens`
    # alone; but OpenAI's API does not serve it: the servers that do (TGI's chat route) read `max_tokens`.
    key = served.mint(budget_usd=0.05)
    answer = chat(served, key, "oss", **fields)
    assert answer.status_code == 200, answer.text
    assert SEEN[-1]["max_tokens"] == 5 and "max_completion_tokens" not in SEEN[-1], SEEN[-1]
    assert spent(served, key) <= 0.05


def test_one_of_openais_own_reasoning_models_keeps_max_completion_tokens(served: Running) -> None:
    # (Such a server may be a proxy of OpenAI's API, which refuses `max_tokens` for them.)
    answer = chat(served, served.mint(budget_usd=1.0), "o3-behind-a-proxy", max_tokens=5)
    assert answer.status_code == 200, answer.text
    assert SEEN[-1]["max_completion_tokens"] == 5 and "max_tokens" not in SEEN[-1], SEEN[-1]
