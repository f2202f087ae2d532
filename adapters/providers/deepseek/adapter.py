"""DeepSeek's chat API: OpenAI's shape with reasoning passed both ways and cache-hit usage.

An answer's `reasoning_content` (message and stream delta) reaches the client, and a client's earlier
assistant turns keep theirs on the way back: DeepSeek's thinking mode refuses a conversation whose
tool-calling turns lost their reasoning (a tool-calling turn with none of DeepSeek's, another model's say, goes with
an empty one: `with_reasoning_on_calls`). Usage reports cache hits as `prompt_cache_hit_tokens`, which
the OpenAI adapter folds into `prompt_tokens_details.cached_tokens` for pricing. A Messages client's prefill is
DeepSeek's Chat Prefix Completion, a beta served on its beta URL alone (`https://api.deepseek.com/beta`): a
deployment whose `base_url` is that one continues it (the final assistant message marked `prefix: true`; the answer
is the continuation alone), any other names it as dropped.
"""

from __future__ import annotations

from typing import Any

from adapters.providers.openai.adapter import OpenAIAdapter, runs_in_thinking
from adapters.providers.openai.profiles import CONTINUES, PROFILES, Profile
from adapters.providers.params import STRICT_SCHEMA, json_schema_instruction, strict_schema
from handler.ports import ProviderAdapter, Target
from handler.schemas import ChatRequest

_OPENAI_COMPATIBLE = PROFILES["deepseek"]
PROFILE = _OPENAI_COMPATIBLE._replace(
    # `reasoning_effort` selects the thinking depth of DeepSeek's reasoning models.
    rules={name: rule for name, rule in _OPENAI_COMPATIBLE.rules.items() if name != "reasoning_effort"},
    strip_message_fields=("reasoning_details",),  # (DeepSeek takes a turn's `reasoning_content` back, no other)
    thinking=True,
)
# On DeepSeek's beta URL: Chat Prefix Completion ("set base_url to https://api.deepseek.com/beta to enable it").
BETA_PROFILE = PROFILE._replace(prefix=CONTINUES)


def beta(base_url: str) -> bool:
    """Whether `base_url` is DeepSeek's beta URL (its path `/beta`), where its beta features are served."""
    return base_url.rstrip("/").endswith("/beta")


class DeepSeekAdapter(OpenAIAdapter):
    """The `deepseek` provider type."""

    type_name = "deepseek"
    default_base_url = "https://api.deepseek.com"
    key_env_var = "DEEPSEEK_API_KEY"
    provider_options = OpenAIAdapter.compatible_options  # (it has no Responses API: `/v1/responses` is translated)
    # Nor an embeddings API: OpenAI's, inherited, passed `config check` for an embedding model on DeepSeek and sent
    # each request to `/embeddings`, which answered 404. An embedding model's deployment here is refused at load, as
    # Anthropic's and Bedrock's are, and a request is the interface's 400 before anything is built or sent.
    supports_embeddings = False
    embeddings_request = ProviderAdapter.embeddings_request
    embeddings_response = ProviderAdapter.embeddings_response

    def profile(self, target: Target) -> Profile:
        name = self.options.get("profile")
        if name:
            return PROFILES[name]
        return BETA_PROFILE if beta(target.base_url) else PROFILE

    def chat_body(self, req: ChatRequest, target: Target, *, stream: bool) -> tuple[dict[str, Any], list[str]]:
        """OpenAI's body, but a `json_schema` response format (DeepSeek takes only `json_object`, and answers 400
        to the other) as JSON mode with the schema in a system instruction (DeepSeek's JSON mode also wants the
        word "json" in the prompt); the gateway's `enforce_schema` checks the answer where the model asks it. A strict
        format is named (`STRICT_SCHEMA`): nothing on DeepSeek constrains the answer to the schema."""
        body, dropped = super().chat_body(req, target, stream=stream)
        own = self.options.get("profile") is None  # (DeepSeek's own API, not a profile named in its place)
        if own and runs_in_thinking(body, PROFILE.thinks_unasked):
            with_reasoning_on_calls(body["messages"])
        fmt = body.get("response_format")
        if own and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            body["response_format"] = {"type": "json_object"}
            instruction = json_schema_instruction(spec.get("schema") if isinstance(spec, dict) else None)
            body["messages"] = [{"role": "system", "content": instruction}, *body["messages"]]
            if strict_schema(req.response_format):
                dropped.append(STRICT_SCHEMA)  # JSON mode holds the answer to JSON, not to the schema
        return body, dropped


def with_reasoning_on_calls(messages: list[dict[str, Any]]) -> None:
    """Give each tool-calling assistant turn of `messages` that has no `reasoning_content` an empty one, in place.
    DeepSeek's thinking mode refuses a conversation whose tool-calling turn comes back without the field ("The
    reasoning_content in the thinking mode must be passed back to the API", its 400; its guide: "for turns that do
    perform tool calls, the reasoning_content must be fully passed back"), and takes it empty: such a turn has no
    reasoning of DeepSeek's to pass back where another model made it (a conversation that changed model mid-task,
    as an agent's `/model` does) or where a client's sealed reasoning did not open (named dropped there)."""
    for message in messages:
        if message.get("role") == "assistant" and message.get("tool_calls"):
            if not isinstance(message.get("reasoning_content"), str):
                message["reasoning_content"] = ""
