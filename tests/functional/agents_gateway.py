"""A gateway with one model on each provider type, in front of the fakes: for the coding-agent clients.

`claude` is served by the anthropic type (natively), `gpt` and `o4` by the openai type (`gpt-native` too, its
Responses API passed through), `azure-gpt` by azure,
`gemini` by the gemini type, `bedrock-claude` by bedrock; `claude-then-gpt` fails over from Anthropic to OpenAI,
`claude-or-gpt` does when a request picks a fault of the fake Anthropic (`metadata.user_id`), `claude-cut`
(`gpt-cut`) is an Anthropic (OpenAI) stream that stops half-way, `escaping-claude` (`escaping-gpt`) an Anthropic
(OpenAI) that escapes every `/` in the JSON it writes, and `claude-overloaded` an Anthropic that answers
every request with its 529 `overloaded_error`; `throttled-bedrock` is a Bedrock that throttles the first request it
gets (a 429 `ThrottlingException`, which names no wait) and serves the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from tests.fakes import anthropic as fake_anthropic
from tests.fakes import azure as fake_azure
from tests.fakes import bedrock as fake_bedrock
from tests.fakes import gemini as fake_gemini
from tests.fakes import openai as fake_openai
from tests.functional.conftest import FAKE_KEYS, Running, serve_gateway
from tests.support.servers import ServerThread

CLAUDE = "claude-sonnet-4-5-20250929"
BEDROCK_CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
THROTTLED_ONCE = "us.anthropic.claude-sonnet-4-5-throttle-once-v1:0"
CLAUDE_PRICE = {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
PRICE = {"input": 1.0, "output": 2.0}


@contextmanager
def agents_gateway(directory: Path) -> Iterator[Running]:
    """A gateway with a model on each provider type, in front of the fakes, its store in `directory`."""
    fakes = {
        "anthropic": fake_anthropic.create_app(),
        "openai": fake_openai.create_app(),
        "gemini": fake_gemini.create_app(),
        "azure": fake_azure.create_app(),
    }
    upstream = ServerThread(Starlette(routes=[Mount(f"/{n}", app=a) for n, a in fakes.items()])).start()
    bedrock_app = fake_bedrock.create_app()
    bedrock = ServerThread(bedrock_app).start()
    fakes["bedrock"] = bedrock_app
    url = upstream.url
    data = {
        "gateway": {"timeouts": {"connect": 2, "first_byte": 1.5, "between_chunks": 1.5}},
        "providers": {
            "anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_API_KEY", "base_url": f"{url}/anthropic"},
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{url}/openai/v1"},
            "openai-native": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{url}/openai/v1",
                "responses_api": "native",
            },
            "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{url}/gemini"},
            "bedrock": {"type": "bedrock", "base_url": bedrock.url},
            "azure": {"type": "azure", "base_url": f"{url}/azure", "region": "eastus"},
        },
        "models": {
            "claude": {
                "deployments": [{"provider": "anthropic", "model": CLAUDE}],
                "price": CLAUDE_PRICE,
                "max_output_tokens": 3000,
            },
            "claude-then-gpt": {
                "deployments": [
                    {"provider": "anthropic", "model": "fail-500"},
                    {"provider": "openai", "model": "gpt-4o-mini"},
                ],
                "price": PRICE,
            },
            "claude-or-gpt": {
                "deployments": [
                    {"provider": "anthropic", "model": CLAUDE},
                    {"provider": "openai", "model": "gpt-4o-mini"},
                ],
                "price": PRICE,
            },
            "gpt": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": PRICE},
            "azure-gpt": {"deployments": [{"provider": "azure", "model": "gpt-4o-mini"}], "price": PRICE},
            "claude-cut": {"deployments": [{"provider": "anthropic", "model": "stream-cut"}], "price": CLAUDE_PRICE},
            "claude-overloaded": {
                "deployments": [{"provider": "anthropic", "model": "fail-529"}],
                "price": CLAUDE_PRICE,
            },
            "gpt-cut": {"deployments": [{"provider": "openai", "model": "stream-cut"}], "price": PRICE},
            "escaping-claude": {
                "deployments": [{"provider": "anthropic", "model": "slashes-escaped"}],
                "price": CLAUDE_PRICE,
            },
            "gpt-native": {"deployments": [{"provider": "openai-native", "model": "gpt-4o-mini"}], "price": PRICE},
            "escaping-gpt": {
                "deployments": [{"provider": "openai-native", "model": "gpt-4o-mini-slashes-escaped"}],
                "price": PRICE,
            },
            "o4": {"deployments": [{"provider": "openai", "model": "o4-mini"}], "price": PRICE},
            "gemini": {"deployments": [{"provider": "gemini", "model": "gemini-2.5-flash"}], "price": PRICE},
            "gemini-3": {"deployments": [{"provider": "gemini", "model": "gemini-3-pro-preview"}], "price": PRICE},
            "bedrock-claude": {
                "deployments": [{"provider": "bedrock", "model": BEDROCK_CLAUDE, "region": fake_bedrock.REGION}],
                "price": CLAUDE_PRICE,
            },
            "throttled-bedrock": {
                "deployments": [
                    {"provider": "bedrock", "model": THROTTLED_ONCE, "region": fake_bedrock.REGION},
                ],
                "price": CLAUDE_PRICE,
            },
        },
    }
    store_url = f"sqlite:///{directory / 'gateway.db'}"
    environ = {**FAKE_KEYS, "AZURE_OPENAI_API_KEY": fake_azure.API_KEY}
    running, server = serve_gateway(parse_config(data, set(REGISTRY)), store_url, upstream, fakes, environ)
    try:
        yield running
    finally:
        server.stop()
        upstream.stop()
        bedrock.stop()
