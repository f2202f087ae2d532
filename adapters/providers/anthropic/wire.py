"""The parts of Anthropic's answer the gateway reads, as pydantic models.

No `from __future__ import annotations` here: pydantic would evaluate every field's annotation from its string
when the class is made, in the cold start (see handler/schemas.py)."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictInt

from handler.ports import Served
from handler.schemas import Usage, reported
from handler.wire import usage_count


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", defer_build=True)


# The usage fields a `message_delta` may bring besides the output count.
FOLDED = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
# Also read, from the extras (each field declared costs a Lambda cold start about 0.3 million instructions): the
# writes by how long they are kept (`cache_creation.ephemeral_1h_input_tokens`), what Anthropic's own tools did
# (`server_tool_use.web_search_requests`, billed per search), the samplings of the request (`iterations`), and the
# speed it was served at (`speed`, should a delta bring it).
FOLDED_EXTRA = ("cache_creation", "server_tool_use", "iterations", "speed")
# The `iterations` whose tokens the top-level counts leave out, billed besides them at the model's prices: a
# server-side compaction ("A `compaction` entry's tokens are not included in the top-level `usage` fields", the
# SDK's `BetaUsage.iterations`; Anthropic's compaction docs: 180,000 in and 3,500 out beside a top level of 23,000
# and 1,000). The other entries (`message`, each turn of a server tool loop) are in the top level already. Each is a
# sampling of its own ("an additional sampling step"), priced at the tier its own input reaches (`Served.samplings`):
# summed with the answer's, the docs' example would be charged Sonnet 4.5's long-context prices on 203,000 input
# tokens, $1.31925, where no sampling passes 200,000 and Anthropic bills $0.6765.
BILLED_APART = ("compaction",)
# The `iterations` of another model's sampling, which the top-level counts leave out too, billed at that model's
# prices: the advisor tool's sub-inferences (`advisor_message`, with the advisor's `model`: "usage is billed at the
# advisor model's rates", the SDKs' `BetaAdvisorMessageIterationUsage`).
BILLED_AT_THEIR_MODEL = ("advisor_message",)
# The usage fields saying what an option that changes the model's prices was served at: `speed` ("The inference
# speed mode used for this request", `standard` or `fast`): fast mode asked for may run at standard speed, and is
# billed at it; `inference_geo` (`global` or `us`): a workspace's default geo applies to a request that sets none,
# and is billed.
SERVED_OPTIONS = ("speed", "inference_geo")
# The usage fields `WireUsage.served` reads.
SAYS_SERVED = (*SERVED_OPTIONS, "iterations")
# The counts without which a usage (or a sampling of its `iterations`) says nothing of what it cost (`counted`).
MAIN_COUNTS = ("input_tokens", "output_tokens")


def _entries(iterations: Any, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """The entries of `usage.iterations` of the `kinds` named (none when absent or null); another shape is a
    malformed answer."""
    if iterations is None:
        return []
    if not isinstance(iterations, list) or not all(isinstance(entry, dict) for entry in iterations):
        raise ValueError("usage iterations is not a list of objects")
    return [entry for entry in iterations if entry.get("type") in kinds]


def _sampling(counts: dict[str, Any]) -> Usage:
    """The counts of one sampling (the top level, an iteration `BILLED_APART` or `BILLED_AT_THEIR_MODEL`) as the
    gateway's usage: Anthropic's input leaves out cache reads and writes, which OpenAI counts in."""
    fresh, output = usage_count(counts, "input_tokens"), usage_count(counts, "output_tokens")
    read, write = usage_count(counts, "cache_read_input_tokens"), usage_count(counts, "cache_creation_input_tokens")
    hour = usage_count(counts.get("cache_creation"), "ephemeral_1h_input_tokens")
    return Usage.of(fresh + read + write, output, cached=read, cache_write=write, cache_write_1h=min(write, hour))


def _their_model(entry: dict[str, Any]) -> tuple[str, Usage]:
    """An iteration of another model's (`BILLED_AT_THEIR_MODEL`): that model, and its counts."""
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"usage iteration {entry.get('type')} names no model")
    return model, _sampling(entry)


class WireUsage(_Wire):
    """Anthropic's usage: `input_tokens` excludes cache reads and writes, which OpenAI counts in."""

    # Strict: a count that is not a plain integer (`"12"`, `true`, which pydantic would take as 12 and 1) is no
    # usage the gateway can read (`handler.wire.usage_count`); a null one is none (the input's, absent from a
    # `message_delta` that does not repeat them; the output's, no final usage: `counted`).
    input_tokens: StrictInt | None = None
    output_tokens: StrictInt | None = None
    cache_creation_input_tokens: StrictInt | None = None
    cache_read_input_tokens: StrictInt | None = None

    def counted(self) -> bool:
        """Whether it gives both main counts, the input's and the output's, and so does each sampling billed beside
        them (`BILLED_APART`, `BILLED_AT_THEIR_MODEL`): a usage without one (null, left out or negative: `reported`)
        is none, so a whole answer is estimated and a stream metered as one without its final usage. (Read as 0,
        `"output_tokens": null` would bill a stream's 3,000 characters as 0 tokens out, the provider's count; a
        compaction without its input count billed the 180,000 tokens it read as none; and an advisor's sampling
        without it was charged at the advisor's price as counted, 0 tokens in.)"""
        iterations = _entries(
            (self.__pydantic_extra__ or {}).get("iterations"), (*BILLED_APART, *BILLED_AT_THEIR_MODEL)
        )
        return all(reported(counts, *MAIN_COUNTS) for counts in (self.__dict__, *iterations))

    def to_usage(self) -> Usage:
        """The counts the request is billed for: the top level's, and a compaction's beside them (the line's token
        counts; each sampling is priced apart, `served`). A count it lacks is 0 here (`counted` says whether it
        has both)."""
        extra = self.__pydantic_extra__ or {}
        usage = self._top_level()
        for entry in _entries(extra.get("iterations"), BILLED_APART):
            usage = usage.plus(_sampling(entry))
        searches = usage_count(extra.get("server_tool_use"), "web_search_requests")
        if searches:
            usage.set_count("web_searches", searches)
        return usage

    def input_alone(self) -> Usage | None:
        """The input counts of a usage not `counted`, 0 tokens out (a stream's, whose output is then estimated from
        what it relayed: `UpstreamStream.metered`): the top level's, where it gives its input count (exact, as
        `message_start`'s are); None else, and the prompt's estimate stands for the input. (Read whole, the counts
        of a compaction without its input count would be the provider's final usage.)"""
        if not reported(self.__dict__, "input_tokens"):
            return None
        usage = self._top_level()
        return usage.counted_as(usage.prompt_tokens, 0)

    def _top_level(self) -> Usage:
        """The top level's counts: its declared fields, its writes kept an hour among the extras."""
        return _sampling({**self.__dict__, "cache_creation": (self.__pydantic_extra__ or {}).get("cache_creation")})

    def served(self) -> Served | None:
        """How the answer says it was served, beyond its counts: its speed and geo (`SERVED_OPTIONS`), the tokens
        its advisor's model ran (`BILLED_AT_THEIR_MODEL`), and the samplings its counts hold that are priced each on
        its own (`BILLED_APART`); None where it says none of them. The advisor's tokens only where the usage is
        `counted`: else the answer is estimated, and each advisor call it shows is charged its reserved bound, as a
        stream's cut before its usage is (`Exchange.advised`), not counts the provider did not give, nor those
        beside them twice."""
        extra = self.__pydantic_extra__
        if not extra or extra.keys().isdisjoint(SAYS_SERVED):  # (the common answer: nothing more to read)
            return None
        options = {name: extra[name] for name in SERVED_OPTIONS if isinstance(extra.get(name), str)}
        iterations = extra.get("iterations")
        others = tuple(_their_model(entry) for entry in _entries(iterations, BILLED_AT_THEIR_MODEL))
        if others and not self.counted():
            others = ()
        samplings = tuple(_sampling(entry) for entry in _entries(iterations, BILLED_APART))
        return Served(options, others, samplings) if options or others or samplings else None

    def update(self, later: "WireUsage") -> None:
        """Fold in a `message_delta` usage: cumulative counts, input fields only when present."""
        self.output_tokens = later.output_tokens
        for name in FOLDED:
            if getattr(later, name) is not None:
                setattr(self, name, getattr(later, name))
        mine, theirs = self.model_extra, later.model_extra or {}
        for name in FOLDED_EXTRA:
            if theirs.get(name) is not None and mine is not None:
                mine[name] = theirs[name]


class WireBlock(_Wire):
    type: str
    text: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class WireMessage(_Wire):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[WireBlock]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: WireUsage
