"""How each OpenAI-compatible API differs from OpenAI's, as data.

A profile is picked by the provider's `profile:` option, else by the host of its base URL. Adding an
OpenAI-compatible provider is a few lines here, never a code branch in the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from adapters.providers.params import Rule
from handler.records import Value

DROP = Rule(drop=True)
# An earlier assistant turn's reasoning as the Chat Completions APIs that return it name it: its text (DeepSeek's,
# vLLM's `reasoning_content`) and OpenRouter's `reasoning_details` (its reasoning blocks, `reasoning.encrypted` ones
# among them). OpenAI's own API defines neither on a message and refuses both ("Unknown parameter:
# 'messages[1].reasoning_details'."), as do DeepSeek's, Mistral's and Groq's.
EARLIER_REASONING = ("reasoning_content", "reasoning_details")


class Profile(Value):
    """`rules` rewrite top-level parameters; `stream_usage` says whether the API accepts
    `stream_options.include_usage` (otherwise it must not be sent, nor any of `stream_options`); `stream_members` the
    members of `stream_options` besides `include_usage` it takes (OpenAI's `include_obfuscation`), the client's others
    left out and named (`stream_options.<member>`), or None where the gateway knows the API no better and sends them
    as the client did (vLLM's `continuous_usage_stats`); `strip_message_fields` are
    message fields the API rejects in input (a previous turn's reasoning: its text, `reasoning_content`, and
    OpenRouter's `reasoning_details`, which may hold another provider's encrypted reasoning), left out and named
    (`messages.<field>`); `strip_tool_call_fields`
    the same for tool calls (another provider's state, such as Gemini's thought signature); `roles` maps
    message roles the API does not know to the one it reads the same way; `part_types`, when set, are the
    only content parts the API takes and `refused_roles` roles it has no equivalent for (either is the
    client's 400, named, rather than the provider's); `thinking` says whether the API takes a
    `thinking: {"type": "enabled" | "disabled"}` switch (DeepSeek's); `short_call_ids` whether tool call ids
    longer than OpenAI's 64 characters go as stand-ins (`call_ids.short_call_id`); `reasoning_shown` whether an
    answer carries the model's reasoning as text where it reasons (a compatible server's `reasoning_content`, or
    `reasoning` as vLLM 0.17+ and Ollama name it; OpenAI's Chat Completions never does, so a reasoning summary asked of
    it is named as dropped); `prefix` whether
    the API continues a final assistant message marked `"prefix": true` (a Messages client's prefill) and how its
    answer begins: `CONTINUES` with the continuation alone (DeepSeek's beta), `REPEATS` with the prefix again
    (Mistral's, "force the model to start its answer by the content of the message"), None where it cannot (the
    prefill is then named as dropped, `messages.prefill`); `allowed_tools` whether the API takes a `tool_choice` of
    type `allowed_tools` (where not, the tools it allows go alone, with its mode: the model can call no other, as it
    asks). Only OpenAI's own API (and Azure's versionless one; not its dated api-versions: `azure.dated_profile`) is
    known to take it, and only its profile says so: vLLM's request model refuses it, and Groq's, Mistral's and
    DeepSeek's APIs document a `tool_choice` of none, auto, required or a named function; a server the gateway knows no
    better is sent what all of them take. `signed_calls` whether the API is Gemini's, reading a tool call's thought
    signature back from its `extra_content.google.thought_signature` and handing it out there: a signature a call's id
    carries goes there too, the id without it, an empty one is left out, and a signing model's first call of a turn
    without one gets Gemini's stand-in (`signed_calls` in the adapter); an answer's calls carry theirs in their ids as
    well, as the Gemini adapter's do (`signature_in_id`). `gemini_thinking` whether the API serves Gemini's models as
    Gemini runs them: one that thinks by default (`reasoning.gemini_thinks_unasked`) thinks there on a request that
    names no reasoning, shows none of it and counts it in the final usage alone (`OpenAIAdapter.reasons_unasked`).
    `thinks_unasked` whether the API's models think unless the request turns thinking off (DeepSeek's: "Thinking mode
    is enabled by default"), where a model's rules do not say otherwise (`ModelRules.thinking_mode`): what its
    thinking mode does not take is left out and named (`unsent_in_thinking`). `media_after_tools` whether what a tool
    returned besides text (an image, a document) goes in a user message right after the turn's tool messages, which
    take text alone (`media_after_results` in the adapter): not where the API takes no image at all (DeepSeek's,
    `part_types`); there it is left out and named (`messages.tool.image_url`). `assistant_after_tools` whether the
    API takes nothing but an assistant or another tool message right after a tool message (Mistral's: "Unexpected
    role 'user' after role 'tool'", `invalid_request_message_order`): a short assistant message goes before a user
    message that follows one (`answered_tool_turns` in the adapter), the client's own and the one carrying what a tool
    returned besides text alike. `cap_as_max_tokens` whether the cap goes as `max_tokens` (a `max_completion_tokens`
    the request carries goes by that name) but to one of OpenAI's own API's reasoning models, which take
    `max_completion_tokens` alone (`reasoning.takes_max_tokens`: such a server may be a proxy of OpenAI's API; gpt-oss,
    served elsewhere, takes `max_tokens`): every OpenAI-compatible server reads `max_tokens`, and some read nothing
    else (TGI's chat route; llama.cpp before it took both), where a budgeted request's cap sent as
    `max_completion_tokens` was ignored and the answer ran on past the reservation.
    A provider's `stream_usage` option overrides the profile's (`OpenAIAdapter`)."""

    __slots__ = (
        "rules",
        "stream_usage",
        "stream_members",
        "strip_message_fields",
        "strip_tool_call_fields",
        "roles",
        "part_types",
        "refused_roles",
        "thinking",
        "short_call_ids",
        "reasoning_shown",
        "prefix",
        "allowed_tools",
        "signed_calls",
        "gemini_thinking",
        "thinks_unasked",
        "media_after_tools",
        "assistant_after_tools",
        "cap_as_max_tokens",
    )

    def __init__(
        self,
        rules: Mapping[str, Rule] = MappingProxyType({}),
        stream_usage: bool = True,
        stream_members: frozenset[str] | None = frozenset(),
        strip_message_fields: tuple[str, ...] = EARLIER_REASONING,
        strip_tool_call_fields: tuple[str, ...] = ("extra_content",),
        roles: Mapping[str, str] = MappingProxyType({}),
        part_types: tuple[str, ...] | None = None,
        refused_roles: tuple[str, ...] = (),
        thinking: bool = False,
        short_call_ids: bool = True,
        reasoning_shown: bool = True,
        prefix: str | None = None,
        allowed_tools: bool = False,
        signed_calls: bool = False,
        gemini_thinking: bool = False,
        thinks_unasked: bool = False,
        media_after_tools: bool = True,
        assistant_after_tools: bool = False,
        cap_as_max_tokens: bool = False,
    ) -> None:
        self.rules: Final = rules
        self.stream_usage: Final = stream_usage
        self.stream_members: Final = stream_members
        self.strip_message_fields: Final = strip_message_fields
        self.strip_tool_call_fields: Final = strip_tool_call_fields
        self.roles: Final = roles
        self.part_types: Final = part_types
        self.refused_roles: Final = refused_roles
        self.thinking: Final = thinking
        self.short_call_ids: Final = short_call_ids
        self.reasoning_shown: Final = reasoning_shown
        self.prefix: Final = prefix
        self.allowed_tools: Final = allowed_tools
        self.signed_calls: Final = signed_calls
        self.gemini_thinking: Final = gemini_thinking
        self.thinks_unasked: Final = thinks_unasked
        self.media_after_tools: Final = media_after_tools
        self.assistant_after_tools: Final = assistant_after_tools
        self.cap_as_max_tokens: Final = cap_as_max_tokens


# How an API that continues a final assistant message (`Profile.prefix`) begins its answer.
CONTINUES, REPEATS = "continues", "repeats"
OPENAI_STOPS = Rule(max_items=4)  # OpenAI's spec: "up to 4 sequences"


PROFILES: dict[str, Profile] = {
    # (`include_obfuscation: false`: OpenAI pads no delta with its `obfuscation` member, which a client on a trusted
    # link turns off to save bandwidth.)
    "openai": Profile(
        rules={"stop": OPENAI_STOPS},
        stream_members=frozenset({"include_obfuscation"}),
        reasoning_shown=False,
        allowed_tools=True,
    ),
    # A server the gateway does not know (vLLM, SGLang, LM Studio, OpenRouter, ...): OpenAI's bodies, none of OpenAI's
    # own bounds. OpenAI's four stop sequences, applied to them, refused a list vLLM takes. An earlier turn's
    # `reasoning_details` goes back as it came: OpenRouter, which returns it, wants it back (a Gemini or Claude turn's
    # signed reasoning is in it), and a server that does not know the field ignores it as any other.
    "compatible": Profile(stream_members=None, strip_message_fields=("reasoning_content",), cap_as_max_tokens=True),
    "deepseek": Profile(
        rules={
            "max_completion_tokens": Rule(rename="max_tokens"),
            "n": Rule(only=(1,)),
            "logit_bias": DROP,
            "parallel_tool_calls": DROP,
            "seed": DROP,
            "service_tier": DROP,
            "reasoning_effort": DROP,
            "store": DROP,
            "metadata": DROP,
            # (OpenAI's search models' option: DeepSeek's Chat Completions has none, ignores it as any member it does
            # not know, and runs no search for it; sent, it was held and charged OpenAI's per-request search fee.)
            "web_search_options": DROP,
            "stop": Rule(max_items=16),
        },
        roles={"developer": "system"},
        part_types=("text",),
        refused_roles=("function",),
        allowed_tools=False,  # (its `tool_choice`: none, auto, required or a named function)
        thinks_unasked=True,  # (`deepseek-v4-flash`, `deepseek-v4-pro`; deepseek-chat was its non-thinking mode)
        media_after_tools=False,  # (it takes no image: `part_types`)
    ),
    "mistral": Profile(
        rules={
            "seed": Rule(rename="random_seed"),
            "max_completion_tokens": Rule(rename="max_tokens"),
            "tool_choice": Rule(values={"required": "any"}),
            "logit_bias": DROP,
            "user": DROP,
            "logprobs": DROP,
            "top_logprobs": DROP,
            "service_tier": DROP,
            "store": DROP,
            "metadata": DROP,
            "reasoning_effort": DROP,
        },
        stream_usage=False,
        roles={"developer": "system", "function": "tool"},
        prefix=REPEATS,
        allowed_tools=False,  # (its `tool_choice`: none, auto, any, required or a named function)
        assistant_after_tools=True,  # (a user message right after a tool message is its 400)
    ),
    "groq": Profile(
        rules={
            "logit_bias": DROP,
            "logprobs": DROP,
            "top_logprobs": DROP,
            "n": Rule(only=(1,)),
            "store": DROP,
            "metadata": DROP,
            # (Its compound models search unasked, set by its own `search_settings`; its API reference has no
            # `web_search_options`, and no other model searches for it.)
            "web_search_options": DROP,
        },
    ),
    # (Together's Chat Completions has no `web_search_options`, nor a search of its own.)
    "together": Profile(
        rules={"max_completion_tokens": Rule(rename="max_tokens"), "store": DROP, "web_search_options": DROP}
    ),
    # Ollama's /v1 reads `max_tokens` only: `max_completion_tokens` (and every field it does not know) is accepted
    # and ignored (ollama/ollama#7125), which left a budgeted request's output uncapped past its reservation.
    "ollama": Profile(
        rules={
            "max_completion_tokens": Rule(rename="max_tokens"),
            "n": Rule(only=(1,)),
            "logit_bias": DROP,
            "store": DROP,
            "metadata": DROP,
            "service_tier": DROP,
            "web_search_options": DROP,  # (nor does Ollama search for it)
        },
    ),
    # (xAI's Chat Completions has no `web_search_options`: its Live Search, `search_parameters`, is answered 410 Gone,
    # and its searches are its Responses API's `web_search` and `x_search` tools.)
    "xai": Profile(rules={"logit_bias": DROP, "store": DROP, "metadata": DROP, "web_search_options": DROP}),
    # Gemini's OpenAI-compatible endpoint reads a tool call's `extra_content` (its thought signature), and refuses an
    # empty one ("Corrupted thought signature."), as Gemini does; a call's id goes as Gemini gave it, its signature
    # in `extra_content` (`signed_calls`): a conversation moves between this endpoint and Gemini's own API signed.
    # Its grounding is Gemini's own API's `google_search` (the `gemini` provider type): it takes no
    # `web_search_options`.
    "google": Profile(
        rules={"web_search_options": DROP},
        strip_tool_call_fields=(),
        short_call_ids=False,
        signed_calls=True,
        gemini_thinking=True,
    ),
}

HOST_PROFILES: dict[str, str] = {
    "api.openai.com": "openai",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral",
    "api.groq.com": "groq",
    "api.together.xyz": "together",
    "api.x.ai": "xai",
    "generativelanguage.googleapis.com": "google",
}


# A local server known by its default port (any host: it runs beside the gateway or on a machine of the LAN).
PORT_PROFILES: dict[str, str] = {"11434": "ollama"}


def profile_for(name: str | None, base_url: str) -> Profile:
    """The named profile, else the one its host (or a local server's default port) implies, else a compatible
    server's (OpenAI's bodies without OpenAI's own bounds)."""
    if name:
        return PROFILES[name]
    host, _, port = base_url.split("://", 1)[-1].split("/", 1)[0].partition(":")
    return PROFILES[HOST_PROFILES.get(host) or PORT_PROFILES.get(port, "compatible")]
