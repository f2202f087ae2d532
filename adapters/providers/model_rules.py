"""What depends on the upstream model rather than the provider, declared in one table.

A provider's adapter asks `rules_for(model)` and acts on the flags; no adapter tests model names itself.
Each entry names the model family by a pattern on the upstream model id (Bedrock's inference profile and
version suffixes included) and what that family requires.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

from handler.records import Value


class ModelRules(Value):
    """`one_sampling_knob`: refuses `temperature` and `top_p` together (top_p is dropped, reported).
    `completion_tokens_field`: takes the output cap only as `max_completion_tokens`.
    `signed_function_calls`: refuses a function-call history whose calls lost their thought signature.
    `tools_with_json_mode`: takes function calling together with a JSON answer (a JSON response mime type), which
    Gemini before 3 refuses ("Function calling with a response mime type: 'application/json' is unsupported").
    `media_in_function_responses`: takes images and files a function returned inside its `functionResponse`.
    `search_beside_functions`: takes Google Search beside function declarations in its tool context
    (`toolConfig.includeServerSideToolInvocations`, Google's "Combine built-in tools and function calling"), which
    Gemini before 3 refuses ("Tool call context circulation is not enabled"), as it refuses the two together.
    `thinking_levels`: reasons at a `thinkingLevel` (Gemini 3's), not within a `thinkingBudget` (2.5's).
    `no_penalties`: refuses a non-zero `presencePenalty` or `frequencyPenalty` (0, their default, passes); through an
    OpenAI-compatible API (`openai.adapter.unsent_for_model`), neither is sent.
    `no_stop`: refuses `stop` (xAI's reasoning models: "presencePenalty, frequencyPenalty and stop parameters are not
    supported by reasoning models. Adding them in the request would result in an error", its reasoning guide).
    `forced_tool_choice`: takes Converse's forced `toolChoice` (`any`, `tool`) on Bedrock, which refuses either from
    other models with a 400 ValidationException (only the Bedrock adapter reads it).
    `tool_result_status`: takes Converse's `status` on a tool result (`error` for a tool that failed), which AWS's
    ToolResultBlock reference says "is only supported by Amazon Nova and Anthropic Claude 3 and 4 models"; the others
    refuse the request ("This model doesn't support the status field."), and the failure goes in the result's text
    (only the Bedrock adapter reads it).
    `no_streaming_tools`: refuses `toolConfig` in Bedrock's ConverseStream ("This model doesn't support tool use in
    streaming mode.") though Converse takes it: a streamed request with tools goes to Converse, and its whole answer
    is streamed to the client (only the Bedrock adapter reads it).
    `reasoning_on_off`: takes Mistral's `reasoning_effort` as a switch, `high` or `none` (Mistral Small 4 and
    Medium 3.5; the `mistral` profile drops it for every other Mistral model; only the Mistral adapter reads it).
    `openai_efforts`: the `reasoning_effort` values an OpenAI reasoning model takes (None where the table does not
    say: the level goes as `reasoning.LEVELS` has it); any other is a 400 ("Unsupported value: 'minimal' is not
    supported with the 'gpt-5.1' model"). Only the OpenAI adapter reads it (`reasoning.openai_effort`).
    `thinking_mode`: True where the model runs in DeepSeek's thinking mode whatever the request says (DeepSeek's
    reasoner), False where only when asked, `thinking: {"type": "enabled"}` (deepseek-chat, the name of DeepSeek's
    non-thinking mode), None where as its API runs it (DeepSeek's own API, `Profile.thinks_unasked`: unless the request
    turns it off, its current models, `deepseek-v4-flash`, `deepseek-v4-pro`, think by default). Thinking mode takes
    `temperature`, `top_p` and the penalties without effect and refuses `logprobs` and `top_logprobs`: the
    OpenAI-compatible adapters leave all six out and name those that asked for anything
    (`openai.adapter.unsent_in_thinking`).
    `takes_sampling`: a reasoning model that takes `temperature` and `top_p` as any model does: gpt-oss, which
    OpenAI's API does not serve ("These models are not served through the OpenAI API", OpenAI's help centre) and the
    compatible servers that host it (vLLM, Groq, Together, whose guide recommends `temperature` 1.0 for it) run with
    the sampling asked; only the OpenAI adapter reads it (`openai.adapter.unsent_sampling`)."""

    __slots__ = (
        "one_sampling_knob", "completion_tokens_field", "signed_function_calls", "tools_with_json_mode",
        "media_in_function_responses", "no_penalties", "forced_tool_choice", "no_streaming_tools",
        "reasoning_on_off", "openai_efforts", "thinking_mode", "tool_result_status", "takes_sampling",
        "thinking_levels", "search_beside_functions", "no_stop",
    )  # fmt: skip

    def __init__(
        self,
        one_sampling_knob: bool = False,
        completion_tokens_field: bool = False,
        signed_function_calls: bool = False,
        tools_with_json_mode: bool = False,
        media_in_function_responses: bool = False,
        no_penalties: bool = False,
        forced_tool_choice: bool = False,
        no_streaming_tools: bool = False,
        reasoning_on_off: bool = False,
        openai_efforts: tuple[str, ...] | None = None,
        thinking_mode: bool | None = None,
        tool_result_status: bool = False,
        takes_sampling: bool = False,
        thinking_levels: bool = False,
        search_beside_functions: bool = False,
        no_stop: bool = False,
    ) -> None:
        self.one_sampling_knob: Final = one_sampling_knob
        self.completion_tokens_field: Final = completion_tokens_field
        self.signed_function_calls: Final = signed_function_calls
        self.tools_with_json_mode: Final = tools_with_json_mode
        self.media_in_function_responses: Final = media_in_function_responses
        self.no_penalties: Final = no_penalties
        self.forced_tool_choice: Final = forced_tool_choice
        self.no_streaming_tools: Final = no_streaming_tools
        self.reasoning_on_off: Final = reasoning_on_off
        self.openai_efforts: Final = openai_efforts
        self.thinking_mode: Final = thinking_mode
        self.tool_result_status: Final = tool_result_status
        self.takes_sampling: Final = takes_sampling
        self.thinking_levels: Final = thinking_levels
        self.search_beside_functions: Final = search_beside_functions
        self.no_stop: Final = no_stop


NO_RULES = ModelRules()
LOW_TO_HIGH = ("low", "medium", "high")
LOW_TO_XHIGH = (*LOW_TO_HIGH, "xhigh")

# First match wins. Sources: Anthropic's "migrating to Claude 4.5" notes (sampling), OpenAI's reasoning
# guide (max_completion_tokens), Gemini's thought-signatures, structured-output and function-calling pages
# (multimodal function responses, and structured outputs with function calling: Gemini 3; before it, Gemini's 400
# "Function calling with a response mime type: 'application/json' is unsupported": symfony/ai#803,
# google/adk-python#5735 on 2.5 Pro, openai/openai-agents-python#236 on 1.5 Pro), Gemini's 400 "Penalty is not
# enabled for models/gemini-2.5-flash" (2.5 and 3 refuse a non-zero penalty: vercel/ai#8943,
# google-gemini/cookbook#1290, mnfst/modelparams.dev#16),
# AWS's ToolResultBlock reference (a result's `status`: "only supported by Amazon Nova and Anthropic Claude 3 and 4
# models"; Llama, Mistral, Cohere and Palmyra answer "This model doesn't support the status field."),
# AWS's ToolChoice reference (a forced `toolChoice`: "only supported by Anthropic Claude 3 and Amazon Nova models";
# Llama, Mistral and DeepSeek on Bedrock answer "This model doesn't support the toolConfig.toolChoice.any field"),
# AWS's "Supported models and model features" table for Converse (its "Tool use" and "Streaming tool use" columns:
# Meta Llama, Mistral AI's models and Writer's Palmyra have the first and not the second; Cohere Command R/R+, AI21
# Jamba 1.5, Nova and Claude have both; Bedrock's answer to Llama 4 with tools in a stream, "This model doesn't support
# tool use in streaming mode.", is in earendil-works/pi#3739), Mistral's reasoning page
# ("adjustable reasoning is available on mistral-small-latest and mistral-medium-3-5 via the reasoning_effort
# parameter": `high` or `none`; mistral-small-latest is Mistral Small 4, mistral-small-2603), OpenAI's API reference
# for `reasoning_effort` ("The supported reasoning values for gpt-5.1 are none, low, medium, and high"; models before
# gpt-5.1 "do not support none"; "gpt-5-pro ... only supports high"; "xhigh is supported for all models after
# gpt-5.1-codex-max"; the o-series takes low, medium and high) and its 400s for the Codex models, which take no
# `none` ("Supported values are: 'low', 'medium', and 'high'" for gpt-5-codex and gpt-5.1-codex, openai/codex#6647),
# gpt-oss's model card (low, medium, high), and DeepSeek's reasoning-model and thinking-mode guides (its thinking mode's
# "Not Supported Parameters: temperature, top_p, presence_penalty, frequency_penalty, logprobs, top_logprobs ... setting
# temperature, top_p, presence_penalty, frequency_penalty will not trigger an error but will also have no effect.
# Setting logprobs, top_logprobs will trigger an error.").
# Gemini 3 and later, and Google's aliases without a version (`gemini-flash-latest`, `gemini-flash-lite-latest`,
# `gemini-pro-latest`), which point at its newest release ("the latest release of a specific model variation", its
# models page): Gemini 3 since its Flash and Pro came out. Taken for 2.5, they would be sent what Gemini 3 refuses
# (a history call without its thought signature, a penalty) and lose what it takes (a JSON answer beside tools, a
# function's images, a `thinkingLevel`). An alias with a version (`gemini-1.5-flash-latest`) is that version's.
GEMINI_CURRENT = r"gemini-(?:[3-9]|[1-9]\d)|gemini-[a-z][a-z-]*-latest"
MODEL_RULES: tuple[tuple[str, ModelRules], ...] = (
    (
        r"claude-(sonnet|haiku|opus)-4-5|claude-opus-4",
        ModelRules(one_sampling_knob=True, forced_tool_choice=True, tool_result_status=True),
    ),
    (r"^gpt-5-pro", ModelRules(completion_tokens_field=True, openai_efforts=("high",))),
    (r"^gpt-5\.1-codex-max", ModelRules(completion_tokens_field=True, openai_efforts=LOW_TO_XHIGH)),
    (r"^gpt-5(\.1)?-codex", ModelRules(completion_tokens_field=True, openai_efforts=LOW_TO_HIGH)),
    (r"^gpt-5\.\d+-codex", ModelRules(completion_tokens_field=True, openai_efforts=LOW_TO_XHIGH)),
    (r"^gpt-5\.1", ModelRules(completion_tokens_field=True, openai_efforts=("none", *LOW_TO_HIGH))),
    (r"^gpt-5\.", ModelRules(completion_tokens_field=True, openai_efforts=("none", *LOW_TO_XHIGH))),
    (r"^gpt-5", ModelRules(completion_tokens_field=True, openai_efforts=("minimal", *LOW_TO_HIGH))),
    (r"^o\d", ModelRules(completion_tokens_field=True, openai_efforts=LOW_TO_HIGH)),
    (r"^gpt-oss", ModelRules(openai_efforts=LOW_TO_HIGH, takes_sampling=True)),
    (
        GEMINI_CURRENT,
        ModelRules(
            signed_function_calls=True,
            media_in_function_responses=True,
            no_penalties=True,
            tools_with_json_mode=True,
            thinking_levels=True,
            search_beside_functions=True,
        ),
    ),
    (r"gemini-2\.5", ModelRules(no_penalties=True)),
    (r"claude-(3|(sonnet|haiku|opus)-\d)|amazon\.nova-", ModelRules(forced_tool_choice=True, tool_result_status=True)),
    (r"meta\.llama|mistral\.|writer\.palmyra", ModelRules(no_streaming_tools=True)),
    (r"^(mistral-small-(latest|2603)|mistral-medium-3-5)", ModelRules(reasoning_on_off=True)),
    (
        r"^grok-(3-mini|4(?!.*non-reasoning)|code-fast)",
        ModelRules(no_penalties=True, no_stop=True),
    ),  # (xAI's reasoning)
    (r"^deepseek-reasoner", ModelRules(thinking_mode=True)),
    (r"^deepseek-chat", ModelRules(thinking_mode=False)),
)


@functools.cache
def compiled_rules() -> tuple[tuple[re.Pattern[str], ModelRules], ...]:
    """`MODEL_RULES` compiled, on first use: at import, the patterns cost every Lambda cold start some 2 million
    instructions, for the adapters (Gemini, Bedrock, Anthropic's translation, Mistral) that read them."""
    return tuple((re.compile(pattern), rules) for pattern, rules in MODEL_RULES)


@functools.lru_cache(maxsize=1024)
def rules_for(model: str) -> ModelRules:
    """The rules of the model family `model` belongs to (none for a model the table does not name). Remembered by
    name: the translations ask on every request, and the table's sixteen patterns took 3 to 6 µs to scan."""
    name = model.rsplit("/", 1)[-1]
    for pattern, rules in compiled_rules():
        if pattern.search(name):
            return rules
    return NO_RULES


def keep_one_sampling_knob(params: dict[str, Any], model: str, top_p: str = "top_p") -> list[str]:
    """For a model that takes `temperature` or `top_p` but not both, keep the temperature (the knob
    clients reach for first) and report the top_p dropped; `params` is changed in place."""
    if not rules_for(model).one_sampling_knob or "temperature" not in params or top_p not in params:
        return []
    del params[top_p]
    return ["top_p"]
