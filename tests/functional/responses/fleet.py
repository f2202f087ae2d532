"""The config of a gateway with a model on each provider type, in front of the fakes (see conftest.py)."""

from __future__ import annotations

from typing import Any

# A model served by each provider type (deepseek: an OpenAI-compatible API; gpt and azure-gpt get the
# Responses API natively, gpt-chat is OpenAI's Chat Completions translated).
PROVIDER_MODELS = ["gpt", "azure-gpt", "gpt-chat", "claude", "gemini", "bedrock-claude", "deepseek"]
NATIVE = {"gpt", "azure-gpt"}
PRICE = {"input": 1, "output": 2}
SEARCH_USD = 0.01
THROTTLED_ONCE = "us.anthropic.claude-3-5-haiku-throttle-once-v1:0"
ORG_B = "org-b"  # the organisation of the provider `openai-org-b` (the key's default one is `openai`'s)


def fleet_config(upstream: str, azure: str, bedrock: str) -> dict[str, Any]:
    return {
        "gateway": {
            "timeouts": {"connect": 2, "first_byte": 5, "between_chunks": 5},
            "priced_options": {"web_search_usd": SEARCH_USD},  # hosted web search passes through, priced
        },
        "providers": {
            # The fake stands for api.openai.com: its own /responses gets the Responses API's requests.
            "openai": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{upstream}/openai/v1",
                "responses_api": "native",
            },
            "openai-keeps": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{upstream}/openai/v1",
                "responses_api": "native",
                "responses_store": True,
            },
            # The same API as another OpenAI organisation of the same key (the fake seals reasoning per organisation).
            "openai-org-b": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{upstream}/openai/v1",
                "responses_api": "native",
                "headers": {"OpenAI-Organization": ORG_B},
            },
            "openai-chat": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream}/openai/v1"},
            # OpenAI's own Chat Completions (its profile, as api.openai.com's host would pick it).
            "openai-chat-own": {
                "type": "openai",
                "api_key": "env:OPENAI_API_KEY",
                "base_url": f"{upstream}/openai/v1",
                "profile": "openai",
            },
            "anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{upstream}/anthropic",
                "web_search": True,  # (the fake runs Anthropic's web search tool, as Anthropic's own API does)
            },
            "gemini": {"type": "gemini", "api_key": "env:GEMINI_API_KEY", "base_url": f"{upstream}/gemini"},
            "deepseek": {"type": "deepseek", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream}/openai/v1"},
            "azure": {"type": "azure", "base_url": azure, "region": "eastus"},
            "bedrock": {"type": "bedrock", "base_url": bedrock},
        },
        "models": {
            "gpt": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": PRICE},
            "azure-gpt": {"deployments": [{"provider": "azure", "model": "gpt-4o-prod"}], "price": PRICE},
            "claude": {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5"}], "price": PRICE},
            "gemini": {"deployments": [{"provider": "gemini", "model": "gemini-2.5-flash"}], "price": PRICE},
            "bedrock-claude": {
                "deployments": [
                    {
                        "provider": "bedrock",
                        "model": "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                        "region": "us-east-1",
                    }
                ],
                "price": PRICE,
            },
            "deepseek": {"deployments": [{"provider": "deepseek", "model": "deepseek-chat"}], "price": PRICE},
            # A Bedrock that throttles the first request it gets (a ThrottlingException names no wait).
            "bedrock-throttled": {
                "deployments": [{"provider": "bedrock", "model": THROTTLED_ONCE, "region": "us-east-1"}],
                "price": PRICE,
            },
            "reasoner": {"deployments": [{"provider": "deepseek", "model": "deepseek-reasoner"}], "price": PRICE},
            "gemini-thinker": {"deployments": [{"provider": "gemini", "model": "gemini-3-thinker"}], "price": PRICE},
            "gemini-3": {"deployments": [{"provider": "gemini", "model": "gemini-3-flash"}], "price": PRICE},
            "claude-thinker": {"deployments": [{"provider": "anthropic", "model": "claude-thinker"}], "price": PRICE},
            "claude-interleaved": {
                "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5-interleaved"}],
                "price": PRICE,
            },
            "bedrock-redacting": {
                "deployments": [
                    {
                        "provider": "bedrock",
                        "model": "us.anthropic.claude-sonnet-4-5-thinker-redacts-v1:0",
                        "region": "us-east-1",
                    }
                ],
                "price": PRICE,
            },
            "bedrock-thinker": {
                "deployments": [
                    {"provider": "bedrock", "model": "us.anthropic.claude-sonnet-4-thinker-v1:0", "region": "us-east-1"}
                ],
                "price": PRICE,
            },
            "cut": {"deployments": [{"provider": "openai-chat", "model": "stream-cut"}], "price": PRICE},
            "native-cut": {"deployments": [{"provider": "openai", "model": "stream-cut"}], "price": PRICE},
            "native-slow": {"deployments": [{"provider": "openai", "model": "slow-mini"}], "price": PRICE},
            "gpt-chat": {"deployments": [{"provider": "openai-chat", "model": "gpt-4o-mini"}], "price": PRICE},
            "o4-chat": {"deployments": [{"provider": "openai-chat-own", "model": "o4-mini"}], "price": PRICE},
            "claude-opus": {"deployments": [{"provider": "anthropic", "model": "claude-opus-4-7"}], "price": PRICE},
            # Claude at the built-in table's prices: a cache read at a tenth of the input price, a write at 1.25 times.
            "claude-listed": {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]},
            "bedrock-listed": {
                "deployments": [
                    {
                        "provider": "bedrock",
                        "model": "us.anthropic.claude-3-5-haiku-20241022-v1:0",
                        "region": "us-east-1",
                    }
                ]
            },
            "gpt-keeps": {"deployments": [{"provider": "openai-keeps", "model": "gpt-4o-mini"}], "price": PRICE},
            "keeps-reasoner": {"deployments": [{"provider": "openai-keeps", "model": "o4-reasoner"}], "price": PRICE},
            "gpt-reasoner": {"deployments": [{"provider": "openai", "model": "o4-reasoner"}], "price": PRICE},
            # The same, its stream breaking off mid-answer.
            "reasoner-cut": {
                "deployments": [{"provider": "openai", "model": "o4-reasoner-stream-cut"}],
                "price": PRICE,
            },
            # A reasoning model at two OpenAI organisations: the first serves while it is up (`-a-down`: a 500).
            "gpt-orgs": {
                "deployments": [
                    {"provider": "openai", "model": "o4-reasoner"},
                    {"provider": "openai-org-b", "model": "o4-reasoner"},
                ],
                "price": PRICE,
            },
            "gpt-orgs-a-down": {
                "deployments": [
                    {"provider": "openai", "model": "o4-reasoner-fail-500"},
                    {"provider": "openai-org-b", "model": "o4-reasoner"},
                ],
                "price": PRICE,
            },
            # OpenAI and an Azure resource (pinned by `x-gateway-provider`).
            "gpt-or-azure-reasoner": {
                "deployments": [
                    {"provider": "openai", "model": "o4-reasoner"},
                    {"provider": "azure", "model": "prod-reasoner"},
                ],
                "price": PRICE,
            },
            "gpt-cache-write": {"deployments": [{"provider": "openai", "model": "gpt-5-cache-write"}], "price": PRICE},
            "gpt-or-claude": {
                "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}],
                "fallbacks": ["claude"],
                "price": PRICE,
            },
            "claude-or-gpt": {
                "deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5"}],
                "fallbacks": ["gpt"],
                "price": PRICE,
            },
            # A prompt past the model's window, in each provider's words.
            "claude-full": {"deployments": [{"provider": "anthropic", "model": "fail-context"}], "price": PRICE},
            "gemini-full": {
                "deployments": [{"provider": "gemini", "model": "gemini-2.5-fail-context"}],
                "price": PRICE,
            },
        },
    }
