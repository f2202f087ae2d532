"""The client requests the conformance suite sends through every adapter.

Every field the gateway's `ChatRequest` names (and a few it only passes on), alone and in the combinations
providers treat specially, plus `/v1/messages` requests (the Anthropic `MessagesRequest` model) as the
gateway translates them. A case may pin the upstream model for a provider where a rule depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

USER = {"role": "user", "content": "What is the weather in Paris?"}
SYSTEM = {"role": "system", "content": "Be brief."}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
TOOL_TURNS = [
    USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": "18 degrees and sunny"},
]
PNG = "data:image/png;base64,iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}

# The upstream model each provider's deployment names, unless a case pins another.
MODELS = {
    "openai": "gpt-4o-mini",
    "azure": "gpt-4o-prod",
    "deepseek": "deepseek-chat",
    "mistral": "mistral-small-latest",
    "anthropic": "claude-sonnet-4-5",
    "bedrock": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "gemini": "gemini-2.5-flash",
}


@dataclass(frozen=True)
class Case:
    """One client request: an OpenAI Chat Completions body, or an Anthropic Messages body (`messages_api`)."""

    name: str
    body: dict[str, Any]
    messages_api: bool = False
    models: dict[str, str] = field(default_factory=dict)
    stream: bool = False


def chat(name: str, messages: list[dict[str, Any]] | None = None, **fields: Any) -> Case:
    models = fields.pop("models", {})
    stream = bool(fields.get("stream"))
    return Case(name, {"model": "public", "messages": messages or [USER], **fields}, models=models, stream=stream)


def messages(name: str, turns: list[dict[str, Any]] | None = None, **fields: Any) -> Case:
    body = {"model": "public", "max_tokens": 256, "messages": turns or [{"role": "user", "content": "Hello"}], **fields}
    return Case(name, body, messages_api=True, stream=bool(fields.get("stream")))


CHAT_CASES = [
    chat("minimal"),
    chat("system", [SYSTEM, USER]),
    chat("developer", [{"role": "developer", "content": "Be brief."}, USER]),
    chat("user-name", [{"role": "user", "content": "Hi", "name": "alice"}]),
    chat("assistant-name", [USER, {"role": "assistant", "content": "Sunny.", "name": "bot"}, USER]),
    chat(
        "multi-turn", [SYSTEM, USER, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}]
    ),
    chat("assistant-first", [{"role": "assistant", "content": "Hello! How can I help?"}, USER]),
    chat(
        "empty-first-user",
        [{"role": "user", "content": ""}, {"role": "assistant", "content": "Hi!"}, USER],
    ),
    chat("text-parts", [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
    chat(
        "empty-text-part", [{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]}]
    ),
    chat("empty-system", [{"role": "system", "content": ""}, USER]),
    chat(
        "image-data",
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What?"}, {"type": "image_url", "image_url": {"url": PNG}}],
            }
        ],
    ),
    chat(
        "image-url-detail",
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}],
            }
        ],
    ),
    chat(
        "audio",
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}],
    ),
    chat(
        "file-pdf",
        [
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
                ],
            }
        ],
    ),
    chat("tools", tools=[WEATHER]),
    chat(
        "tool-no-description",
        tools=[{"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}],
    ),
    chat("tool-no-parameters", tools=[{"type": "function", "function": {"name": "ping", "description": "Ping."}}]),
    chat("tool-strict", tools=[{"type": "function", "function": {**WEATHER["function"], "strict": True}}]),
    chat("tool-choice-auto", tools=[WEATHER], tool_choice="auto"),
    chat("tool-choice-none", tools=[WEATHER], tool_choice="none"),
    chat("tool-choice-required", tools=[WEATHER], tool_choice="required"),
    chat("tool-choice-named", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    chat("parallel-off", tools=[WEATHER], parallel_tool_calls=False),
    chat("tool-history", TOOL_TURNS, tools=[WEATHER]),
    chat("tool-history-no-tools", [*TOOL_TURNS, {"role": "user", "content": "Summarise."}]),
    chat("tool-history-choice-none", TOOL_TURNS, tools=[WEATHER], tool_choice="none"),
    chat(
        "tool-history-text",
        [USER, {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}, TOOL_TURNS[2]],
        tools=[WEATHER],
    ),
    chat("function-role", [USER, {"role": "function", "name": "get_weather", "content": "18 degrees"}]),
    chat(
        "reasoning-history",
        [USER, {"role": "assistant", "content": "Sunny.", "reasoning_content": "Looked it up."}, USER],
    ),
    chat("temperature", temperature=0.3),
    chat("top-p", top_p=0.9),
    chat("temperature-and-top-p", temperature=0.3, top_p=0.9),
    chat("max-tokens", max_tokens=100),
    chat("max-completion-tokens", max_completion_tokens=100),
    chat("both-token-limits", max_tokens=50, max_completion_tokens=100),
    chat("n-1", n=1),
    chat("n-2", n=2),
    chat("stop-string", stop="END"),
    chat("stop-list", stop=["END", "STOP"]),
    chat("stop-many", stop=["a", "b", "c", "d", "e", "f"]),
    chat("penalties", presence_penalty=0.5, frequency_penalty=0.5),
    chat("seed", seed=42),
    chat("format-text", response_format={"type": "text"}),
    chat("format-json-object", response_format={"type": "json_object"}),
    chat(
        "format-json-schema",
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
    ),
    chat(
        "json-schema-and-tools",
        tools=[WEATHER],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}},
    ),
    chat("json-object-and-tools", tools=[WEATHER], response_format={"type": "json_object"}),
    chat("user", user="user-42"),
    chat("logprobs", logprobs=True, top_logprobs=3),
    chat("metadata-store", metadata={"team": "a"}, store=True),
    chat("reasoning-effort", reasoning_effort="low"),
    chat("thinking", thinking={"type": "enabled", "budget_tokens": 2048}),
    chat("stream", stream=True),
    chat("stream-usage", stream=True, stream_options={"include_usage": True}),
    chat("logit-bias", logit_bias={"50256": -100}),
    chat("service-tier", service_tier="auto"),
    chat("unknown-field", frobnicate=True),
    chat("reasoning-model-max-tokens", max_tokens=100, models={"openai": "o3-mini"}),
    chat(
        "reasoning-model-sampling",
        temperature=0.3,
        top_p=0.9,
        models={"openai": "gpt-5", "deepseek": "deepseek-reasoner"},
    ),
    chat(
        "image-data-url-parameters",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpg;name=a.jpg;base64,/9j/4AAQ"}},
                ],
            }
        ],
    ),
    chat(
        "gemini-3-tool-history",
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**CALL, "extra_content": {"google": {"thought_signature": "CikB0e2Kb7Qw"}}}],
            },
            TOOL_TURNS[2],
        ],
        tools=[WEATHER],
        models={"gemini": "gemini-3-pro-preview"},
    ),
    chat(
        "gemini-3-search-history",
        [
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**CALL, "extra_content": {"google": {"thought_signature": "CikB0e2Kb7Qw"}}}],
                # (Gemini 3's own search parts, as its answer gave them: sent back to Gemini 3 alone)
                "reasoning_tool_context": [
                    {"toolCall": {"toolType": "GOOGLE_SEARCH_WEB", "args": {"queries": ["weather Paris"]}, "id": "s1"}},
                    {"toolResponse": {"toolType": "GOOGLE_SEARCH_WEB", "response": {}, "id": "s1"}},
                ],
            },
            TOOL_TURNS[2],
        ],
        tools=[WEATHER],
        models={"gemini": "gemini-3-pro-preview"},
    ),
    chat("gemini-3-foreign-tool-history", TOOL_TURNS, tools=[WEATHER], models={"gemini": "gemini-3-pro-preview"}),
    chat(
        "opus-4-sampling",
        temperature=0.3,
        top_p=0.9,
        models={"anthropic": "claude-opus-4-1", "bedrock": "anthropic.claude-opus-4-1-20250805-v1:0"},
    ),
    chat(
        "everything",
        [SYSTEM, USER, {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}, TOOL_TURNS[2]],
        tools=[WEATHER],
        tool_choice="auto",
        temperature=0.5,
        max_tokens=300,
        stop=["END"],
        seed=7,
        user="u",
        stream=True,
        stream_options={"include_usage": True},
    ),
]

MESSAGES_CASES = [
    messages("messages-minimal"),
    messages("messages-system", system="Be brief."),
    messages("messages-system-blocks", system=[{"type": "text", "text": "Be brief."}]),
    messages("messages-stop", stop_sequences=["END"], temperature=0.2),
    messages("messages-top-p", top_p=0.9, stream=True),
    messages(
        "messages-tools",
        tools=[{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto"},
    ),
    messages("messages-tool-no-description", tools=[{"name": "ping", "input_schema": {"type": "object"}}]),
    messages(
        "messages-tool-turns",
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call the tool.", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"}]},
        ],
        tools=[{"name": "get_weather", "input_schema": {"type": "object"}}],
    ),
    messages(
        "messages-image",
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "text", "text": "What?"},
                ],
            }
        ],
    ),
    messages(
        "messages-documents",
        [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="},
                        "context": "Q3 figures",
                        "citations": {"enabled": True},
                    },
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "The sky is green."},
                        "title": "Facts.txt",
                        "citations": {"enabled": True},
                    },
                    {"type": "text", "text": "What colour is the sky?"},
                ],
            }
        ],
    ),
    messages("messages-metadata", metadata={"user_id": "u-1"}),
    messages("messages-stream", stream=True),
    messages("messages-thinking", max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 2048}),
    messages("messages-adaptive-effort", thinking={"type": "adaptive"}, output_config={"effort": "high"}),
]

CASES = CHAT_CASES + MESSAGES_CASES
