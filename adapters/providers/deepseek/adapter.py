"""DeepSeek's chat API: OpenAI's shape with reasoning passed both ways and cache-hit usage.

An answer's `reasoning_content` (message and stream delta) reaches the client, and a client's earlier
assistant turns keep theirs on the way back: DeepSeek's thinking mode refuses a conversation whose
tool-calling turns lost their reasoning. Usage reports cache hits as `prompt_cache_hit_tokens`, which
the OpenAI adapter folds into `prompt_tokens_details.cached_tokens` for pricing.
"""

from __future__ import annotations

from adapters.providers.openai.adapter import OpenAIAdapter
from adapters.providers.openai.profiles import PROFILES, Profile
from handler.ports import Target

_OPENAI_COMPATIBLE = PROFILES["deepseek"]
PROFILE = _OPENAI_COMPATIBLE._replace(
    # `reasoning_effort` selects the thinking depth of DeepSeek's reasoning models.
    rules={name: rule for name, rule in _OPENAI_COMPATIBLE.rules.items() if name != "reasoning_effort"},
    strip_message_fields=(),
    thinking=True,
)


class DeepSeekAdapter(OpenAIAdapter):
    """The `deepseek` provider type."""

    type_name = "deepseek"
    default_base_url = "https://api.deepseek.com"
    key_env_var = "DEEPSEEK_API_KEY"

    def profile(self, target: Target) -> Profile:
        name = self.options.get("profile")
        return PROFILES[name] if name else PROFILE
