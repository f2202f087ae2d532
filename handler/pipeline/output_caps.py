"""The cap on generated tokens each attempt is sent.

A client's cap may be more than the model it reaches can write: Claude Code asks 32,000 of every model, and
gpt-4o-mini refuses more than 16,384 with a 400, as does every OpenAI-compatible API past its own limit. A cap
past the attempt's ceiling is lowered to it: the model's `max_output_tokens` where configured, else the ceiling
its provider named in an earlier refusal (learned once per deployment, then sent within it from the start).

What an attempt could write bounds the estimate of an answer without usage (`written_at_most`): the cap it was sent,
else that ceiling, else the one the gateway ships for its upstream model (`shipped_ceiling`), which is never sent.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from handler.config import DEFAULT_CONFIG_RESOURCE, load_yaml
from handler.pipeline.pricing import priced_as

if TYPE_CHECKING:
    from handler.pipeline.routing import Attempt
    from handler.schemas import ChatRequest

logger = logging.getLogger("gateway")

# A provider's 400 for a cap past its model's ceiling, naming the ceiling: OpenAI's (and Azure's, and most
# OpenAI-compatible servers'), DeepSeek's, Anthropic's, Bedrock's. Compiled on the first refusal (`re`'s cache keeps
# it): compiled at import, it would cost every Lambda cold start 2.0 million instructions (callgrind).
CEILING_NAMED: Final = (
    r"supports at most (\d+) completion tokens"
    r"|valid range of max_tokens is \[1, (\d+)\]"
    r"|> (\d+), which is the maximum allowed number of output tokens"
    r"|maximum tokens you requested exceeds the model limit of (\d+)"
)


def ceiling_named(message: str) -> int | None:
    """The output ceiling a provider's refusal names, if it is one."""
    found = re.search(CEILING_NAMED, message)
    if found is None:
        return None
    return int(next(group for group in found.groups() if group is not None))


@cache
def shipped_ceilings() -> dict[str, int]:
    """The output ceilings the gateway ships: the `max_output_tokens` of each model of its default config
    (handler/default_config.yaml), by the upstream model id each of its deployments names. An operator's config
    replaces that file whole, so these are read apart, on the first estimate that needs one (`shipped_ceiling`):
    read with the config at start, the file cost every Lambda cold start 5.2 million instructions (callgrind)."""
    raw: dict[str, Any] = load_yaml(resources.files("handler").joinpath(DEFAULT_CONFIG_RESOURCE).read_text())
    ceilings: dict[str, int] = {}
    for spec in raw["models"].values():
        if spec.get("max_output_tokens"):
            for deployment in spec["deployments"]:
                ceilings.setdefault(deployment["model"], spec["max_output_tokens"])
    return ceilings


@cache
def shipped_ceiling(upstream_model: str) -> int | None:
    """The output ceiling the gateway ships for `upstream_model` (a deployment's model id, of a model the operator
    may name as they please): its own, else that of the model the built-in price table takes it for (`priced_as`: a
    dated release of it, `gpt-4o-mini-2024-07-18`; a variant that names itself in words, `gpt-4o-mini-tts`, is
    another model); None where the gateway ships none. Remembered by id: one per deployment of the config."""
    ceilings = shipped_ceilings()
    if upstream_model in ceilings:
        return ceilings[upstream_model]
    entry = priced_as(upstream_model)
    return ceilings.get(entry) if entry is not None else None


# Members an OpenAI-compatible server may read as a cap on its output of its own, before or beside `max_tokens`:
# llama.cpp's `n_predict` (read first, -1 for no end), `max_new_tokens` (Hugging Face's generation parameters),
# Ollama's `num_predict`, `max_length`, and the Responses API's `max_output_tokens`; and `best_of` (vLLM, TGI,
# OpenAI's legacy completions), which has a server write that many sequences and return `n` of them, each to the cap:
# billed for all it wrote, past the `n` sequences the worst case covers. A bounded request sends none
# (`OutputCap.left_out`): beside a cap of 5 its worst case covered, `n_predict: 100000` had llama.cpp write 100,000
# tokens, charged in full past the key's budget.
OUTPUT_LENGTH_MEMBERS: Final = (
    "n_predict",
    "max_new_tokens",
    "num_predict",
    "max_length",
    "max_output_tokens",
    "best_of",
)


class OutputCap:
    """One request's cap, per attempt. A budgeted request (or one with `x-gateway-max-cost-usd`) always sends one:
    the client's own (lowered to the attempt's ceiling), else the ceiling (the gateway's default without one), never
    more than its worst case covers (`reserved`: each attempt's when it was admitted), and no other member a server
    could read as a cap of its own (`OUTPUT_LENGTH_MEMBERS`, left out and named: `left_out`). Any other request
    sends the client's own, lowered to the attempt's ceiling. The cap goes in the field the client used
    (`max_tokens` when it sent only that, else `max_completion_tokens`; an adapter renames it as its provider
    needs); a client that sent both has each held to the cap (a server reads one or the other: TGI's chat route
    knows `max_tokens` alone, and `max_tokens: 100000` beside a `max_completion_tokens: 5` its worst case covered
    was charged 100,000 tokens past the budget)."""

    __slots__ = ("req", "limit", "default", "legacy", "other", "learned", "reserved", "left_out")

    def __init__(self, req: ChatRequest, default: int, learned: dict[str, int]) -> None:
        self.req = req
        self.limit = req.output_limit()  # the client's, kept: `apply` overwrites the request's
        self.default = default
        self.legacy = req.max_tokens is not None and req.max_completion_tokens is None
        self.other = None if self.legacy else req.max_tokens  # the client's `max_tokens` beside its other cap
        self.learned = learned  # the gateway's: deployment label -> the ceiling its provider named
        # A bounded request's: the output tokens its worst case covers, by attempt (`id` of each of the plan's)
        self.reserved: dict[int, int] | None = None
        self.left_out: list[str] = []  # a bounded request's `OUTPUT_LENGTH_MEMBERS`, as the client sent them

    def ceiling(self, attempt: Attempt) -> int | None:
        """The most the attempt's model writes: the lower of its configured `max_output_tokens` and the ceiling
        its provider named (a configured one may be more than the provider allows)."""
        configured = attempt.spec.max_output_tokens
        learned = self.learned.get(attempt.target.label) if self.learned else None  # (no label built for none)
        if configured is None or learned is None:
            return configured or learned
        return min(configured, learned)

    def of(self, attempt: Attempt) -> int:
        """The most `attempt` may write on a bounded request: what its worst case covers. The client's own cap,
        lowered to the attempt's ceiling where one is known; without a cap of the client's, the ceiling, else the
        gateway's default. (The default is no ceiling: a client's 32,000 cut to 4,096 on a model whose ceiling the
        gateway does not know truncated Claude Code's answers on a budgeted key.)"""
        ceiling = self.ceiling(attempt)
        if self.limit:
            return min(self.limit, ceiling) if ceiling else self.limit
        return ceiling or self.default

    def sent(self, attempt: Attempt) -> int | None:
        """The cap `attempt` is sent (None: none, the provider's own default)."""
        if self.reserved is not None:  # (a ceiling learned since by another request may be larger)
            return min(self.of(attempt), self.reserved.get(id(attempt), min(self.reserved.values())))
        ceiling = self.ceiling(attempt)
        if self.limit is None or ceiling is None:
            return self.limit
        return min(self.limit, ceiling)

    def written_at_most(self, attempt: Attempt) -> int | None:
        """The most output `attempt` can have written, over all its choices: the cap it was sent (its own, not the
        request's as `apply` left it for the last attempt), else its model's ceiling (`ceiling`), else the one the
        gateway ships for its upstream model (`shipped_ceiling`); None where none is known, and the provider's own
        word, what it sent, is then the best there is. What the gateway's estimate of an answer's output never
        passes: relayed characters a third of a token each would charge 88 tokens for 40 written, past a budget and
        `x-gateway-max-cost-usd` checked for 40; and a stream of gpt-4o-mini that writes without end, sent no cap
        (no budget) by a config that names no `max_output_tokens`, cut by its client, would be charged 1,120,000
        output tokens of a model that writes 16,384 at most. (A request with a budget or `x-gateway-max-cost-usd` is
        always sent a cap, its reservation's: the shipped ceiling never reaches past what it reserved.)"""
        cap = self.sent(attempt) or self.ceiling(attempt) or shipped_ceiling(attempt.target.model)
        return cap * (self.req.n or 1) if cap else None

    def apply(self, attempt: Attempt) -> int | None:
        """Set the request's cap for `attempt`, before its upstream request is built (the client's own where it
        is within the ceiling: an earlier attempt may have lowered it); the cap set, if any."""
        cap = self.sent(attempt)
        if cap is None:
            return None
        req = self.req
        if self.legacy:
            req.max_tokens = cap
            # (A `max_completion_tokens` written null beside it goes unsent: renamed to `max_tokens` for a provider
            # that reads that, its null took the cap's place, and the answer ran to the server's own end.)
            req.model_fields_set.discard("max_completion_tokens")
        else:
            req.max_completion_tokens = cap
            if self.other is not None:  # (both sent: each held to the cap, the client's own on each attempt)
                req.max_tokens = min(self.other, cap)
        if self.reserved is not None and req.__pydantic_extra__:
            extra = req.__pydantic_extra__
            for name in OUTPUT_LENGTH_MEMBERS:
                if name in extra:
                    del extra[name]
                    self.left_out.append(name)
        return cap

    def lowered(self, attempt: Attempt, message: str) -> bool:
        """Whether `attempt`'s refusal (`message`) named a ceiling below the cap it was sent: then the ceiling is
        learned for its deployment and the request's cap lowered to it, to be sent again."""
        ceiling = ceiling_named(message)
        sent = self.sent(attempt)
        if ceiling is None or sent is None or sent <= ceiling:
            return False
        label = attempt.target.label
        if self.learned.get(label) != ceiling:  # once per deployment and instance (a refusal costs a round trip)
            logger.warning(
                "a model's output ceiling learned from its provider's refusal: set its max_output_tokens to spare "
                "each instance's first such request the refusal",
                extra={"model": attempt.model, "deployment": label, "max_output_tokens": ceiling, "sent": sent},
            )
        self.learned[label] = ceiling
        lowered = self.apply(attempt)
        return lowered is not None and lowered <= ceiling
