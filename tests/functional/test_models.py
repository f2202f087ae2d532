"""`GET /v1/models/{model_id}` through both official SDKs' `models.retrieve`: each caller's shape, and a 404 alike
for a model the config does not name and one the key may not use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.functional.conftest import Running, openai_client, serving


@pytest.fixture(scope="module")
def models_gateway(upstream: tuple[Any, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A gateway whose model names include one with a `/` (as aggregators name theirs) and an embedding model."""
    url = upstream[0].url
    config = {
        "providers": {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{url}/openai/v1"}},
        "models": {
            "gpt-4o-mini": {
                "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}],
                "context_window": 128_000,
                "max_output_tokens": 16_384,
            },
            "meta/llama-3": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": "unknown"},
            "secret-model": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "text-embedding-3-small": {
                "kind": "embedding",
                "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}],
            },
        },
    }
    store = f"sqlite:///{Path(tmp_path_factory.mktemp('models')) / 'gateway.db'}"
    yield from serving(parse_config(config, set(REGISTRY)), store, upstream)


def test_openai_callers_get_openais_model_object(models_gateway: Running) -> None:
    sdk = openai_client(models_gateway, models_gateway.mint(name="models"))
    model = sdk.models.retrieve("gpt-4o-mini")
    assert (model.id, model.object, model.owned_by) == ("gpt-4o-mini", "model", "gateway")
    assert model.model_dump() == next(m for m in sdk.models.list() if m.id == "gpt-4o-mini").model_dump()
    assert sdk.models.retrieve("meta/llama-3").id == "meta/llama-3"  # the SDK sends the `/` as %2F
    assert sdk.models.retrieve("text-embedding-3-small").id == "text-embedding-3-small"


def test_anthropic_callers_get_anthropics_model_object(models_gateway: Running) -> None:
    key = models_gateway.mint(name="models")
    with anthropic.Anthropic(base_url=models_gateway.url, api_key=key, max_retries=0) as sdk:
        model = sdk.models.retrieve("gpt-4o-mini")
        assert (model.type, model.id, model.display_name) == ("model", "gpt-4o-mini", "gpt-4o-mini")
        assert model.model_dump() == next(m for m in sdk.models.list() if m.id == "gpt-4o-mini").model_dump()
        # Claude Code's model discovery reads the window and the output ceiling; `lifecycle` is required.
        assert (model.max_input_tokens, model.max_tokens, model.lifecycle) == (128_000, 16_384, "active")
        unknown = sdk.models.retrieve("meta/llama-3")
        assert (unknown.max_input_tokens, unknown.max_tokens) == (None, None)
        with pytest.raises(anthropic.NotFoundError) as embedding:  # the Anthropic list holds chat models only
            sdk.models.retrieve("text-embedding-3-small")
    assert embedding.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": embedding.value.body["error"]["message"]},  # type: ignore[index]
    }


@pytest.mark.parametrize("model", ["no-such-model", "secret-model"])
def test_a_model_unknown_or_not_the_keys_is_404_in_the_callers_shape(models_gateway: Running, model: str) -> None:
    key = models_gateway.mint(name="scoped", models=["gpt-*", "meta/*", "text-*"])
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client(models_gateway, key).models.retrieve(model)
    error: Any = caught.value.body
    assert caught.value.code == "model_not_found" and error["type"] == "invalid_request_error"
    assert (
        error["param"] == "model"
        and error["message"] == f"The model '{model}' does not exist or you do not have access to it."
    )
    assert caught.value.response.headers["x-request-id"] and caught.value.response.headers["x-should-retry"] == "false"
    with anthropic.Anthropic(base_url=models_gateway.url, api_key=key, max_retries=0) as sdk:
        with pytest.raises(anthropic.NotFoundError) as anthropic_caught:
            sdk.models.retrieve(model)
    body: Any = anthropic_caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert body["error"]["message"] == error["message"]  # the same words for both: nothing tells them apart


def test_retrieving_a_model_takes_a_key(models_gateway: Running) -> None:
    answer = httpx.get(f"{models_gateway.url}/v1/models/gpt-4o-mini")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    anthropic_style = httpx.get(
        f"{models_gateway.url}/v1/models/gpt-4o-mini", headers={"anthropic-version": "2023-06-01"}
    )
    assert anthropic_style.status_code == 401 and anthropic_style.json()["type"] == "error"


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/gpt-4o-mini"])
def test_a_key_sent_as_x_api_key_without_anthropic_version_is_told_what_is_missing(
    models_gateway: Running, path: str
) -> None:
    """`x-api-key` is Anthropic's header, read here with `anthropic-version` (as Anthropic's SDK sends both). Without
    it the 401 said to send a key, to a client that had sent one: it names the header missing, and never the key."""
    key = models_gateway.mint(name="x-api-key")
    answer = httpx.get(f"{models_gateway.url}{path}", headers={"x-api-key": key})
    assert answer.status_code == 401
    message = answer.json()["error"]["message"]
    assert "anthropic-version" in message and "Authorization: Bearer" in message and key not in answer.text
    assert key.split("_")[1] not in answer.text  # (not even its id)
    versioned = httpx.get(f"{models_gateway.url}{path}", headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    assert versioned.status_code == 200


def test_a_key_sent_as_x_api_key_where_only_a_bearer_key_is_read_is_told_so(models_gateway: Running) -> None:
    key = models_gateway.mint(name="x-api-key-chat")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(f"{models_gateway.url}/v1/chat/completions", json=body, headers={"x-api-key": key})
    assert answer.status_code == 401 and key not in answer.text
    assert answer.json()["error"]["message"] == (
        "this route does not read x-api-key: send the key as Authorization: Bearer <key>"
    )
