"""One table for reasoning controls across providers.

A client asks for reasoning in one of three ways: Chat Completions' `reasoning_effort`, a Messages request's
`thinking` (`enabled` with `budget_tokens`, or `adaptive`) and its `output_config.effort`. Each adapter reads
the request's wish as a `Reasoning` (an effort level and, if given, a token budget) and looks its own
control up in `LEVELS`: OpenAI's `reasoning_effort`, Anthropic's (and Bedrock Claude's) `thinking` budget,
Gemini 2.5's `thinkingConfig.thinkingBudget` and Gemini 3's `thinkingConfig.thinkingLevel`, Amazon Nova's
`reasoningConfig.maxReasoningEffort`. docs/messages-api.md prints the same table for users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from adapters.providers.model_rules import rules_for
from handler.records import Value
from handler.schemas import ChatRequest

if TYPE_CHECKING:
    from handler.ports import Target

# Anthropic refuses a thinking budget below this, and one not below `max_tokens`.
MIN_THINKING_BUDGET = 1024
# The room a Claude answer keeps beside a thinking budget the gateway sets: this, or half of a smaller cap.
ANSWER_ROOM = 4096


class Level(Value):
    """One effort level and what each provider's control is set to for it."""

    __slots__ = ("effort", "openai", "budget", "gemini_level", "nova")

    def __init__(self, effort: str, openai: str, budget: int, gemini_level: str, nova: str) -> None:
        self.effort: Final = effort
        self.openai: Final = openai  # `reasoning_effort` of OpenAI reasoning models (o-series, gpt-5)
        self.budget: Final = budget  # Anthropic / Bedrock Claude `thinking.budget_tokens`, Gemini 2.5 `thinkingBudget`
        self.gemini_level: Final = gemini_level  # Gemini 3 `thinkingLevel`
        self.nova: Final = nova  # Amazon Nova `reasoningConfig.maxReasoningEffort`


LEVELS: tuple[Level, ...] = (
    Level("none", openai="none", budget=0, gemini_level="minimal", nova="low"),
    Level("minimal", openai="minimal", budget=1024, gemini_level="minimal", nova="low"),
    Level("low", openai="low", budget=2048, gemini_level="low", nova="low"),
    Level("medium", openai="medium", budget=8192, gemini_level="medium", nova="medium"),
    Level("high", openai="high", budget=16384, gemini_level="high", nova="high"),
    Level("xhigh", openai="xhigh", budget=32768, gemini_level="high", nova="high"),
    Level("max", openai="xhigh", budget=32768, gemini_level="high", nova="high"),
)
BY_EFFORT = {level.effort: level for level in LEVELS}
# OpenAI's `reasoning_effort` values, shallowest first.
OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

# Model families with a reasoning control, by upstream model name. A model outside them gets no reasoning
# parameter (sending one is a 400 at OpenAI and Anthropic), and the request's wish is reported as dropped.
OPENAI_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5", "gpt-oss", "codex")
CLAUDE_THINKING_FRAGMENTS = ("claude-3-7", "claude-sonnet-4", "claude-opus-4", "claude-haiku-4", "claude-4")
# (Gemini's before 3: Gemini 3 and later, and the `-latest` aliases, reason at a level, `ModelRules.thinking_levels`.)
GEMINI_THINKING_FRAGMENTS = ("gemini-2.5",)
NOVA_REASONING_FRAGMENTS = ("nova-2", "nova-premier")


class Reasoning(Value):
    """What the client asked for: off, or a level; `budget` when it named a token budget; `adaptive` when
    it left the depth to the model (then `level` is its effort, or None for the provider's default)."""

    __slots__ = ("off", "level", "budget", "adaptive")

    def __init__(
        self, off: bool = False, level: Level | None = None, budget: int | None = None, adaptive: bool = False
    ) -> None:
        self.off: Final = off
        self.level: Final = level
        self.budget: Final = budget
        self.adaptive: Final = adaptive


# A Responses request's `reasoning.summary` (`ChatRequest.reasoning_summary`) as `x-gateway-dropped-params` names it
# inward (the Responses front-end names it back as its client wrote it, `reasoning.summary`).
SUMMARY = "reasoning_summary"
# Claude's models that cannot think (before 3.7): the others return their thinking when it is on.
UNTHINKING_CLAUDE_FRAGMENTS = ("claude-3-5", "claude-3-opus", "claude-3-sonnet", "claude-3-haiku", "claude-2")
# Bedrock's other models whose Converse answer carries their reasoning as text: DeepSeek-R1, OpenAI's gpt-oss. (Nova
# 2's comes back as "[REDACTED]"; Llama, Mistral's, Titan, Command and the rest do not reason.)
BEDROCK_SHOWN_FRAGMENTS = ("deepseek.r1", "gpt-oss")


def shows_claude_reasoning(model: str) -> bool:
    """Whether a Claude model returns its reasoning when it reasons: every one that can think."""
    return not reasons(model, UNTHINKING_CLAUDE_FRAGMENTS)


def summary_unshown(req: ChatRequest, shown: bool) -> list[str]:
    """`[SUMMARY]` when the request asks for a reasoning summary and the deployment's answers carry no reasoning
    (`shown` False: its model does not reason, or its API never returns the reasoning), else `[]`. One that shows
    its reasoning honours it, whether this request has the model reason or not (as OpenAI's answers no summary at
    effort `minimal`); a client that turned reasoning off has none to be summarised, as it asked. (Callers ask only
    for a request with a summary: `shown` is worked out for those alone.)"""
    if req.reasoning_summary is None or shown:
        return []
    wish = requested(req)
    return [] if wish is not None and wish.off else [SUMMARY]


# A Messages request's `output_config.effort`, which the internal form carries in `thinking` (`ThinkingConfig.effort`),
# as `x-gateway-dropped-params` names it inward (the Messages front-end names it back as its client wrote it).
EFFORT = "thinking.effort"


def asked_with(req: ChatRequest) -> list[str]:
    """The request's parameters that carried its reasoning wish, as `x-gateway-dropped-params` names them where the
    wish is left out whole: `thinking` where the client sent it, and the effort where it named one
    (`effort_asked_with`). Named by the wish alone, a Messages request's effort would be named `thinking`, a field its
    client never sent (`ThinkingConfig.sent`), and one with both have its effort left out unnamed."""
    thinking = req.thinking
    asked = ["thinking"] if thinking is not None and thinking.sent else []
    effort = effort_asked_with(req)
    return [*asked, effort] if effort is not None else asked


def effort_asked_with(req: ChatRequest) -> str | None:
    """The parameter that named the request's effort level, as `x-gateway-dropped-params` names it where the effort
    is left out or sent as another value: Chat Completions' (and a Responses request's) `reasoning_effort`, a
    Messages request's `output_config.effort` (`EFFORT`); None where it named none (a budget, `thinking` alone)."""
    if req.reasoning_effort:
        return "reasoning_effort"
    return EFFORT if req.thinking is not None and req.thinking.effort else None


def level_for_budget(budget: int) -> Level:
    """The smallest level whose budget covers `budget` tokens."""
    for level in LEVELS[1:]:
        if budget <= level.budget:
            return level
    return LEVELS[-1]


def requested(req: ChatRequest) -> Reasoning | None:
    """The request's reasoning wish, or None when it expressed none."""
    thinking = req.thinking
    named = req.reasoning_effort or (thinking.effort if thinking is not None else None)
    effort = BY_EFFORT.get(named) if named else None
    if thinking is not None:
        if thinking.type == "disabled":
            return Reasoning(off=True)
        if thinking.type == "enabled" and thinking.budget_tokens:
            return Reasoning(level=effort or level_for_budget(thinking.budget_tokens), budget=thinking.budget_tokens)
        return Reasoning(level=effort, adaptive=True)
    if effort is None:
        return None
    if effort.effort == "none":
        return Reasoning(off=True)
    return Reasoning(level=effort)


def openai_effort(effort: str, model: str) -> str:
    """The `reasoning_effort` to send `model` for `effort`: itself where the model takes it, else the nearest
    value it does take (`ModelRules.openai_efforts`), the deeper of two as near, so that a wish to think never
    becomes `none`. A value or a model the tables do not know goes as it is."""
    takes = rules_for(model).openai_efforts
    if takes is None or effort in takes or effort not in OPENAI_EFFORTS:
        return effort
    wanted = OPENAI_EFFORTS.index(effort)

    def distance(value: str) -> tuple[int, int]:
        depth = OPENAI_EFFORTS.index(value)
        return abs(depth - wanted), -depth

    return min(takes, key=distance)


def openai_reasons(target: Target) -> bool:
    """Whether a deployment of OpenAI's APIs serves a reasoning model (`max_completion_tokens`, not `max_tokens`;
    `reasoning_effort`; reasoning handed back encrypted): as its config says (`reasoning:`), else by its model's
    name. An Azure deployment is named by the operator (`prod-reasoner`), and its name may tell nothing."""
    declared = target.options.get("reasoning")
    if declared is not None:
        return bool(declared)
    return reasons(target.model, OPENAI_REASONING_PREFIXES, prefix=True)


# OpenAI's open-weight reasoning models, which OpenAI's own API does not serve: the servers that host them (vLLM,
# TGI, llama.cpp, Groq, Bedrock) take their cap as `max_tokens`.
OPEN_WEIGHT_PREFIXES = ("gpt-oss",)


def takes_max_tokens(target: Target) -> bool:
    """Whether a deployment of a server the gateway knows no better (`Profile.cap_as_max_tokens`) takes its cap as
    `max_tokens`: any model but one of OpenAI's own API's reasoning models (`openai_reasons`, by name or as declared
    with `reasoning: true`), which refuse it ("Use 'max_completion_tokens' instead"): such a server may be a proxy of
    OpenAI's API. gpt-oss, a reasoning model OpenAI's API does not serve, takes it."""
    return not openai_reasons(target) or (
        "reasoning" not in target.options and reasons(target.model, OPEN_WEIGHT_PREFIXES, prefix=True)
    )


def gemini_thinks_unasked(model: str) -> bool:
    """Whether a Gemini model thinks on a request that names no reasoning, and Google bills its thoughts as output:
    one that reasons at a level (`ModelRules.thinking_levels`: Gemini 3 and later, and the `-latest` aliases), and
    2.5's (`GEMINI_THINKING_FRAGMENTS`: dynamic thinking unless told otherwise, Pro always), but 2.5 Flash-Lite, whose
    thinking is off until asked for (Google's thinking guide)."""
    if rules_for(model).thinking_levels:
        return True
    return reasons(model, GEMINI_THINKING_FRAGMENTS) and not reasons(model, ("gemini-2.5-flash-lite",))


def gemini_thinks_regardless(model: str) -> bool:
    """Whether a Gemini model thinks however the request asks it not to: one that reasons at a level (Gemini 3: its
    least is `minimal` or `low`, not off), and 2.5 Pro, whose thinking cannot be turned off (Google's thinking
    guide)."""
    return bool(rules_for(model).thinking_levels) or reasons(model, ("gemini-2.5-pro",))


def reasons(model: str, families: tuple[str, ...], *, prefix: bool = False) -> bool:
    """Whether `model` (an upstream id, perhaps with a vendor or region prefix) is in one of `families`."""
    name = model.rsplit("/", 1)[-1].lower()
    if prefix:
        return name.startswith(families)
    return any(fragment in name for fragment in families)


def thinking_budget(wish: Reasoning, max_tokens: int) -> int | None:
    """A Claude `budget_tokens` for a wish and an output cap, or None when no valid budget fits (Anthropic
    wants at least 1024 and less than `max_tokens`).

    Claude's thinking and its answer both count against `max_tokens`. A budget the client named that Anthropic
    would take is sent as named: the client chose the split. A budget the gateway picks (from an effort level)
    or must lower to fit leaves the answer `ANSWER_ROOM` tokens, or half of a cap too small for that. A budget of
    `max_tokens - 1` (Codex on a budgeted key gets a cap of 4096 and asks for medium effort, 8192) left the
    answer one token, and it came back cut off; a tool call carrying a file's edit easily runs to a few thousand
    tokens. Half of a small cap keeps some thinking where a fixed room would leave none (below a cap of 2048 no
    budget fits beside the answer); a fixed room of a large cap keeps a high effort thinking deep.
    """
    if wish.budget is not None and MIN_THINKING_BUDGET <= wish.budget < max_tokens:
        return wish.budget
    thinking_room = max_tokens - min(ANSWER_ROOM, max_tokens // 2)
    budget = min(wish.budget or (wish.level or BY_EFFORT["medium"]).budget, thinking_room)
    return budget if budget >= MIN_THINKING_BUDGET else None
