"""Prices, the cost of one request, the gateway's fee, and the worst case reserved before a call."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from functools import cache, lru_cache
from importlib import resources
from typing import Any, Final

import orjson

from handler.config import PRICE_OPTIONS, SERVICE_TIER, FeeConfig, ModelConfig, Price, load_yaml
from handler.ports import MESSAGES_API, NativeCall, Served
from handler.records import Value
from handler.schemas import ChatRequest, FilePart, ImagePart, TextPart, Usage

PRICE_TABLE_RESOURCE = "prices.yaml"
IMAGE_TOKEN_ALLOWANCE = 1600
MESSAGE_OVERHEAD_TOKENS = 8


# What may follow an alias's prefix: a release of the same model, by its date (`2024-07-18`, `20250929`) and or its
# version (`v1`, `v1:0`, as Bedrock names them), or `latest`, the provider's name for its newest release
# (`claude-3-5-haiku-latest`, Anthropic's own alias: unpriced, a config deploying it would fail `config check`, and
# every key with a budget be refused the model and the models it is a fallback of). A variant of another price
# (`gpt-4o-mini-audio-preview`, `-search-preview`, `-realtime-preview`, `-tts`) names itself in words, so no family
# alias can take it. Compiled on the first alias looked up, not at a cold start whose models are all priced by name.
@cache
def release_tag() -> re.Pattern[str]:
    return re.compile(r"latest|(?:\d{4}-\d{2}-\d{2}|\d{8})?(?:-?v\d+(?::\d+)?)?")


class PriceTable(Value):
    """The shipped table: exact ids and prefix aliases, with the date it was checked."""

    __slots__ = ("as_of", "prices", "aliases")

    def __init__(self, as_of: str, prices: dict[str, Price], aliases: list[tuple[str, str]]) -> None:
        self.as_of: Final = as_of
        self.prices: Final = prices
        self.aliases: Final = aliases

    def find(self, *names: str) -> Price | None:
        """The price of the first of `names` the table knows (`entry`): the names in order of preference, so a public
        name that is itself an entry never wins over the upstream model's alias (`gpt-4o` serving
        `gpt-4o-mini-2024-07-18` costs what the mini costs)."""
        for name in names:
            entry = self.entry(name)
            if entry is not None:
                return self.prices[entry]
        return None

    def entry(self, name: str) -> str | None:
        """The entry that prices `name` (an upstream id): its own, or the one an alias of it names (a dated release
        of it: the prefix followed by a `release_tag` alone). None: the table does not know it."""
        if name in self.prices:
            return name
        for prefix, target in self.aliases:
            if name.startswith(prefix) and len(name) > len(prefix) and release_tag().fullmatch(name, len(prefix)):
                return target
        return None

    def unknown_profile(self, name: str) -> str | None:
        """The inference profile prefix of `name` (`us-gov.` of `us-gov.anthropic.claude-sonnet-4-5-...`: Bedrock's
        `geography.provider.model`) where the table prices the model but not through that profile; None for any
        other id. A profile costs what its own price says (a geographic one 1.1 times the `global.` one, GovCloud
        its own), so such an id has no price: priced by the public name (`price_for`), Sonnet 4.5 through `apac.`
        would be charged the global $3/$15 instead of $3.30/$16.50, 10% short, and `config check` would say
        nothing."""
        prefix, dot, model = name.partition(".")
        if not dot or "." not in model or self.entry(model) is None or self.entry(name) is not None:
            return None
        return f"{prefix}."


@lru_cache(maxsize=1024)
def priced_as(upstream_model: str) -> str | None:
    """The built-in table's entry for `upstream_model` (`PriceTable.entry`), remembered by id: `runs_as` asks it of
    every deployment the config has."""
    return builtin_prices().entry(upstream_model)


@lru_cache(maxsize=1)
def builtin_prices() -> PriceTable:
    raw: dict[str, Any] = load_yaml(resources.files("handler.pipeline").joinpath(PRICE_TABLE_RESOURCE).read_text())
    prices = {name: Price.model_validate(spec) for name, spec in raw["models"].items()}
    aliases = sorted(
        ((prefix, target) for target, prefixes in raw.get("aliases", {}).items() for prefix in prefixes),
        key=lambda pair: -len(pair[0]),
    )
    return PriceTable(str(raw["as_of"]), prices, aliases)


def price_for(model: str, spec: ModelConfig, upstream_model: str) -> Price | None:
    """The config's price, else the table's for the upstream model, else for the public name; but none for an
    upstream id through an inference profile the table does not price (`PriceTable.unknown_profile`), which
    `gateway config check` names."""
    if isinstance(spec.price, Price):
        return spec.price
    if spec.price == "unknown":
        return None
    table = builtin_prices()
    if upstream_model.startswith("arn:"):
        named = arn_model(upstream_model)
        if named is None:
            return None  # (`ARN_UNPRICED`)
        upstream_model = named
    price = table.find(upstream_model)
    if price is not None or table.unknown_profile(upstream_model) is not None:
        return price
    return table.find(model)


# A Bedrock ARN that names a model or a system inference profile is priced as that id; one that names none (an
# application inference profile, which copies a system profile's routing and price, `us.` say, 1.1 times `global.`;
# provisioned throughput, billed by the hour; a custom or imported model) has no built-in price: priced by the public
# name, Claude Sonnet 4.5 through an application profile copied from `us.` was charged $3/$15 for $3.30/$16.50, and
# `config check` said nothing. Its model's `price:` says what it costs.
ARN_PRICED = ("foundation-model/", "inference-profile/")
ARN_UNPRICED = "names no model the built-in table can price (an application inference profile, provisioned throughput)"


def arn_model(arn: str) -> str | None:
    """The model or system inference profile a Bedrock ARN names (`...:foundation-model/<id>`,
    `...:inference-profile/<id>`), else None (`ARN_UNPRICED`)."""
    parts = arn.split(":", 5)  # (arn:partition:service:region:account:resource; a model id holds `:0` itself)
    resource = parts[5] if len(parts) == 6 else ""
    for kind in ARN_PRICED:
        if resource.startswith(kind):
            return resource[len(kind) :]
    return None


def upstream_price(models: Mapping[str, ModelConfig], upstream_model: str) -> Price | None:
    """The price of a provider's own model, by its id (`upstream_model`: one an answer names, as Anthropic's advisor
    tool's): the config's, of a model that runs it (`runs_as`), else the built-in table's."""
    for name in runs_as(models, upstream_model):
        price = price_for(name, models[name], upstream_model)
        if price is not None:
            return price
    return builtin_prices().find(upstream_model)


def runs_as(models: Mapping[str, ModelConfig], upstream_model: str) -> list[str]:
    """The config's models that run a provider's own model, by its id (`upstream_model`: one an answer or Anthropic's
    advisor tool names): those that deploy that id or are named so, then those that deploy (or are named) another id
    the built-in table prices as the same model (`priced_as`: an alias and its dated releases, which Anthropic takes
    alike, `claude-opus-4-6` and `claude-opus-4-6-20260205`). Matched by the exact id alone, an advisor named by its
    dated id would run Opus counted on no limit of the `opus` that deploys its alias, and outside the scopes that
    hold it."""
    exact = [
        name
        for name, spec in models.items()
        if name == upstream_model or any(deployment.model == upstream_model for deployment in spec.deployments)
    ]
    entry = priced_as(upstream_model)
    if entry is None:
        return exact
    alike = [
        name
        for name, spec in models.items()
        if name not in exact
        and (priced_as(name) == entry or any(priced_as(deployment.model) == entry for deployment in spec.deployments))
    ]
    return exact + alike


def exact(value: float) -> float:
    """`value` without the noise of the float arithmetic that made it (its 16th and 17th significant digits):
    11 prompt tokens at $0.15 and 9 completion tokens at $0.60 per million come to 7.0499999999999986e-06 in
    floats, billed as 7.05e-06. Fifteen digits are more than any price or token count carries. (Nothing, a free
    request's or no fee's, is itself: formatting it would cost some 5,000 instructions.)"""
    return float(format(value, ".15g")) if value else float(value)


def dollars(total: float) -> float:
    """A sum or difference of costs, rounded to 1e-12 USD (costs are `exact` to 15 digits, but adding them
    leaves noise at the sum's own 16th digit, and a difference of equal sums can be 5.9e-17 instead of 0)."""
    return exact(round(total, 12))


def own_sampling(usage: Usage, samplings: Iterable[Usage]) -> Usage:
    """What `usage` counts of the answer's own sampling: less the samplings the provider priced each on its own
    (`Served.samplings`, Anthropic's compaction), which it counts in."""
    for sampling in samplings:
        usage = usage.less(sampling)
    return usage


class Cost(Value):
    """What one request cost: the provider's charge, the gateway's fee, and what they were computed from. Both
    amounts are kept `exact`, so the headers, the ledger and the budgets carry the same figure."""

    __slots__ = ("provider_usd", "fee_usd", "usage", "unit_prices", "budget_remaining_usd", "samplings")

    def __init__(
        self,
        provider_usd: float | None,
        fee_usd: float,
        usage: Usage,
        unit_prices: dict[str, float] | None,
        budget_remaining_usd: float | None = None,  # what the key's chain has left once this is spent
        samplings: tuple[tuple[Usage, dict[str, float]], ...] = (),
    ) -> None:
        self.provider_usd: Final = provider_usd if not provider_usd else exact(provider_usd)
        self.fee_usd: Final = fee_usd if not fee_usd else exact(fee_usd)
        self.usage: Final = usage
        # The unit prices of the answer's own sampling; those `usage` holds that were priced each on its own
        # (`Served.samplings`, Anthropic's compaction) are in `samplings`, each with the unit prices of its own tier.
        self.unit_prices: Final = unit_prices
        self.budget_remaining_usd: Final = budget_remaining_usd
        self.samplings: Final = samplings

    @property
    def total_usd(self) -> float | None:
        if self.provider_usd is None:
            return None
        return exact(self.provider_usd + self.fee_usd) if self.fee_usd else self.provider_usd

    @property
    def cache_savings_usd(self) -> float:
        """What prompt caching saved: the cache reads at the full input price minus what they cost, less the
        premium paid for cache writes (negative when the writes cost more than the reads saved); 0 unpriced. `exact`,
        as a cost is: kept raw, 22 cached tokens' saving would be 1.6499999999999999e-06 on the line and in every
        report. Each sampling priced on its own (`samplings`) saves at the prices of its own tier, as it was charged:
        valued at the answer's tier, the cache reads of a compaction past the long-context tier would count half what
        they saved."""
        if self.unit_prices is None:
            return 0.0
        saved = 0.0
        for usage, unit in self.parts():
            saved += _saved(usage, unit or self.unit_prices)  # (every part priced here: `or` for the type checker)
        return exact(saved / 1_000_000) if saved else 0.0

    def parts(self) -> list[tuple[Usage, dict[str, float] | None]]:
        """The samplings the cost was priced on, each with its unit prices, in the order they ran: those priced on
        their own (`samplings`), then the answer's own, what is left of `usage`."""
        own = own_sampling(self.usage, (sampling for sampling, _ in self.samplings))
        return [*self.samplings, (own, self.unit_prices)]

    def as_event(self) -> dict[str, Any]:
        """The `cost` object of a stream's last event (and of a whole answer's body), with the budget left where
        the key's chain has one: a stream's `x-gateway-budget-remaining-usd` went out before its cost was known."""
        event: dict[str, Any] = {
            "provider_usd": self.provider_usd,
            "fee_usd": self.fee_usd,
            "total_usd": self.total_usd,
            "currency": "USD",
            "input_tokens": self.usage.prompt_tokens,
            "cached_tokens": self.usage.cached_tokens,
            "cache_write_tokens": self.usage.cache_write_tokens,
            "output_tokens": self.usage.completion_tokens,
            "unit_prices_per_million": self.unit_prices,
        }
        if self.samplings:  # (each sampling at the unit prices of its own tier: the top level's are the answer's)
            event["samplings"] = [_counted(usage) | {"unit_prices_per_million": unit} for usage, unit in self.parts()]
        if self.budget_remaining_usd is not None:
            event["budget_remaining_usd"] = self.budget_remaining_usd
        return event


def _saved(usage: Usage, unit: dict[str, float]) -> float:
    """What prompt caching saved on the tokens of `usage` at `unit` prices (`Cost.cache_savings_usd`), in USD per
    million."""
    saved = usage.cached_tokens * (unit["input"] - unit["cached_input"])
    saved -= usage.cache_write_tokens * (unit["cache_write"] - unit["input"])
    if usage.has_counts() and usage.cache_write_1h_tokens:  # an hour's writes: the premium at their own rate
        saved -= usage.cache_write_1h_tokens * (hour_rate(unit) - unit["cache_write"])
    return saved


def _counted(usage: Usage) -> dict[str, Any]:
    """The token counts of a `cost` object (`Cost.as_event`)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.completion_tokens,
    }


# An hour's cache write costs twice the input price at Anthropic; Anthropic and Bedrock (Claude's models) report them.
HOUR_WRITE_TIMES_INPUT = 2.0


def _effective(price: Price, prompt_tokens: int) -> dict[str, float]:
    """The unit prices that apply: `cache_write_1h`, `audio_input` and `audio_output` only where the price names
    them (else `hour_rate`, `audio_rate` and `audio_output_rate` give Anthropic's rule and the text prices); the long
    tier names none of them."""
    long = price.long_context
    if long is not None and prompt_tokens > long.threshold:
        return {
            "input": long.input,
            "output": long.output,
            "cached_input": long.cached_input if long.cached_input is not None else long.input,
            "cache_write": long.cache_write if long.cache_write is not None else long.input,
        }
    unit = {
        "input": price.input,
        "output": price.output,
        "cached_input": price.cached_input if price.cached_input is not None else price.input,
        "cache_write": price.cache_write if price.cache_write is not None else price.input,
    }
    if price.cache_write_1h is not None:
        unit["cache_write_1h"] = price.cache_write_1h
    if price.audio_input is not None:
        unit["audio_input"] = price.audio_input
    if price.audio_output is not None:
        unit["audio_output"] = price.audio_output
    return unit


def hour_rate(unit: dict[str, float]) -> float:
    return unit.get("cache_write_1h", unit["input"] * HOUR_WRITE_TIMES_INPUT)


def audio_rate(unit: dict[str, float]) -> float:
    return unit.get("audio_input", unit["input"])


def audio_output_rate(unit: dict[str, float]) -> float:
    return unit.get("audio_output", unit["output"])


def fee_for(provider_usd: float | None, fee: FeeConfig) -> float:
    if fee.percent == 0 and fee.per_request_usd == 0:
        return 0.0
    return (provider_usd or 0.0) * fee.percent / 100 + fee.per_request_usd


def cost_of(usage: Usage, price: Price | None, fee: FeeConfig, samplings: tuple[Usage, ...] = ()) -> Cost:
    """The cost of an answer; `provider_usd` is None (unknown, never 0) without a price. `samplings`: samplings of
    the model that `usage` counts in and the provider prices each on its own (`Served.samplings`, Anthropic's
    compaction): each at the tier its own input reaches, the rest of `usage` at the tier of what is left, the
    answer's own sampling (a long-context tier is chosen per sampling, never on their sum)."""
    if price is None:
        return Cost(None, fee_for(None, fee), usage, None)
    own = own_sampling(usage, samplings)
    unit = _effective(price, own.prompt_tokens)
    provider = _tokens_usd(own, unit)
    apart = tuple((sampling, _effective(price, sampling.prompt_tokens)) for sampling in samplings)
    for sampling, its_unit in apart:
        provider += _tokens_usd(sampling, its_unit)
    provider /= 1_000_000
    return Cost(provider, fee_for(provider, fee), usage, unit, samplings=apart)


def _tokens_usd(usage: Usage, unit: dict[str, float]) -> float:
    """What the tokens of `usage` cost at `unit` prices, in USD per million."""
    cached, written = usage.cached_tokens, usage.cache_write_tokens
    uncached = max(0, usage.prompt_tokens - cached - written)
    hour = audio = 0
    if usage.has_counts():
        hour = usage.cache_write_1h_tokens
        audio = min(usage.audio_prompt_tokens, uncached)  # (read from a cache, audio is priced as any cache read)
    # Audio output (`completion_tokens_details.audio_tokens`, within the completion tokens) at its own rate.
    spoken = min(usage.audio_completion_tokens, usage.completion_tokens)
    provider = (
        uncached * unit["input"]
        + cached * unit["cached_input"]
        + written * unit["cache_write"]
        + usage.completion_tokens * unit["output"]
    )
    if hour or audio or spoken:  # (few answers have any)
        provider += hour * (hour_rate(unit) - unit["cache_write"]) + audio * (audio_rate(unit) - unit["input"])
        provider += spoken * (audio_output_rate(unit) - unit["output"])
    return provider


class PromptEstimate(Value):
    """A prompt's input tokens: its text, its images, whose price depends on who reads them, and the allowance for
    documents the provider fetches itself (by URL or file id), whose size the request does not show. Its text is
    known two ways: `text_tokens`, an estimate (about two bytes a token), and `text_bound`, the most it can be (a
    token a byte, which no tokenizer priced exceeds). The budget's worst case holds the bound and the allowance
    (`tokens`); the rate limits count the estimate (`seen`: a token a byte counted a 100 KB English prompt, some
    25,000 tokens, as 100,000 on a key's `tpm`), corrected to the provider's count at settlement. The allowance is
    never billed: an answer without usage is billed on what the gateway saw, its estimate, not on 100 pages it did
    not (a file id would bill 460,000 tokens)."""

    __slots__ = ("text_tokens", "images", "referenced", "text_bound")

    def __init__(
        self,
        text_tokens: int,
        images: tuple[tuple[str, str | None], ...],
        referenced: int = 0,
        text_bound: int | None = None,
    ) -> None:
        self.text_tokens: Final = text_tokens
        self.images: Final = images  # (url, detail)
        self.referenced: Final = referenced
        # (None: the estimate is one. Never below it: an empty text's estimate is a token its bytes do not bound, and
        # the worst case must hold what an answer without usage is billed on, `seen`.)
        self.text_bound: Final = text_tokens if text_bound is None else max(text_bound, text_tokens)

    def tokens(self, provider_type: str, model: str) -> int:
        """The worst case for `model` of `provider_type`, each image by that provider's formula: what `seen`
        estimates, and what it does not (`unseen`)."""
        return self.seen(provider_type, model) + self.unseen

    @property
    def unseen(self) -> int:
        """What the worst case holds past `seen`, whoever reads the prompt: the text's bound past its estimate and the
        documents the provider fetches itself."""
        return self.text_bound - self.text_tokens + self.referenced

    def seen(self, provider_type: str, model: str) -> int:
        """The estimate of what the request shows (its text and images), for an answer that came without usage."""
        if not self.images:
            return self.text_tokens
        from handler.pipeline.images import image_tokens  # (with the first image: a cold start imports none of it)

        return self.text_tokens + sum(image_tokens(url, detail, provider_type, model) for url, detail in self.images)

    def holding(self, tokens: int) -> PromptEstimate:
        """This estimate with `tokens` more the provider reads and the request does not show (a thread's conversation
        it holds), reserved as a document it fetches is, never billed without the provider's own count."""
        return PromptEstimate(self.text_tokens, self.images, self.referenced + tokens, self.text_bound)


# A PDF the provider fetches itself (a URL, an uploaded file): its size is not in the request. Anthropic reads at most
# 100 pages a request, each as its text (1,500-3,000 tokens) and its picture (at most 1,600).
REFERENCED_DOCUMENT_TOKENS = 100 * (3_000 + 1_600)


# The most input a model without a configured `context_window` can hold: Claude's largest window (a million tokens,
# with the `context-1m` beta), for a thread's `continue` whose conversation only Anthropic knows the size of.
UNKNOWN_CONTEXT_WINDOW = 1_000_000


def held_window(spec: ModelConfig) -> int:
    """The most a conversation the provider holds for `spec`'s model can read: the model's context window."""
    return spec.context_window or UNKNOWN_CONTEXT_WINDOW


def prompt_estimate(req: ChatRequest) -> PromptEstimate:
    """The prompt's tokens, cheap enough for the hot path: each part of the body that goes to the provider read
    from its UTF-8 bytes, at half of them for the estimate (English runs about four characters a token, CJK about
    one character of three bytes) and all of them for the bound. Half is no worst case: byte-level BPE (cl100k,
    o200k) reads digits and letters mixed (`1a1a`, ids, hashes, some code) a token a byte, as SentencePiece's byte
    fallback reads what its vocabulary lacks, and two requests of 8,000 such bytes, each reserved for about 4,000
    tokens, would spend twice a key's budget. A token a byte is the bound of every tokenizer priced (none has a
    token of less than a byte)."""
    total = bound = referenced = 0
    images: list[tuple[str, str | None]] = []
    for message in req.messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.content
        if isinstance(content, str):
            size = len(content.encode())
            total += size // 2 + 1
            bound += size
        elif content is not None:
            for part in content:
                if isinstance(part, ImagePart):
                    images.append((part.image_url["url"], part.image_url.get("detail")))
                    continue
                if type(part) is TextPart and not part.__pydantic_extra__:
                    # As its JSON (`{"type":"text","text":...}`, 23 bytes around the text's JSON string) without
                    # pydantic's serializer: a Messages request's every turn is such parts, 2 µs each.
                    size = len(orjson.dumps(part.text)) + 23
                    total += size // 2 + 1
                    bound += size
                    continue
                size = len(part.model_dump_json().encode())
                total += size // 2 + 1
                bound += size
                if isinstance(part, FilePart) and not part.file.get("file_data"):
                    # An uploaded file (`file_id`): the provider reads and bills all of it, 20 bytes here.
                    referenced += REFERENCED_DOCUMENT_TOKENS
        for call in message.tool_calls or ():
            size = len(call.function.arguments.encode()) + len(call.function.name.encode())
            total += size // 2 + 4
            bound += size + 4
        if message.reasoning_content:
            size = len(message.reasoning_content.encode())
            total += size // 2 + 1
            bound += size
        if message.model_extra:  # a legacy `function_call`, a `refusal`, ...: sent on, so read
            size = len(orjson.dumps(message.model_extra))
            total += size // 2
            bound += size
    for tool in req.tools or ():
        size = len(tool.function.model_dump_json().encode())
        total += size // 2 + 4
        bound += size + 4
    if req.response_format is not None and req.response_format.json_schema is not None:
        size = len(req.response_format.model_dump_json().encode())
        total += size // 2
        bound += size
    extra = req.model_extra
    if extra:
        # Whatever else is sent on is read by the provider: counted, so that no member rides free (the legacy
        # `functions` tool list went unreserved). A `prediction` is output (`predicted_tokens`); option values
        # add a few tokens.
        sent = {name: value for name, value in extra.items() if name != "prediction"}
        size = len(orjson.dumps(sent))
        total += size // 2
        bound += size
    bound += MESSAGE_OVERHEAD_TOKENS * len(req.messages)
    return PromptEstimate(total, tuple(images), referenced, bound)


def sent_as_written(estimate: PromptEstimate, body: Mapping[str, Any]) -> PromptEstimate:
    """The estimate for a body passed through as the client wrote it (`estimate`: its translation's): at least
    half the bytes of all of it but its inline pictures (priced by formula, as in `estimate`), bounded by all of
    those bytes (a token a byte, `prompt_estimate`), with a picture or
    a PDF the provider fetches itself at the most it can cost. The translation leaves out what the internal
    form cannot carry (content blocks and fields only the provider's API has), which the provider still reads
    and bills: unreserved, a budget could be overspent by all of it."""
    images = list(estimate.images)
    pictures = 0  # the bytes of inline pictures, in `images` already
    referenced = 0
    turns = body.get("messages", body.get("input"))
    blocks = [
        block
        for turn in (turns if isinstance(turns, list) else ())
        if isinstance(turn, dict) and isinstance(turn.get("content"), list)
        for block in turn["content"]
    ]
    while blocks:
        block = blocks.pop()
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result" and isinstance(block.get("content"), list):
            blocks.extend(block["content"])
        elif kind in ("image", "input_image"):
            inline = _inline_picture(block)
            if inline is None:
                images.append(("", None))  # an uploaded picture (not translated): the most one can cost
            else:
                pictures += inline
        elif kind in ("document", "input_file") and not _inline_document(block):
            referenced += REFERENCED_DOCUMENT_TOKENS
    size = len(orjson.dumps(dict(body), default=str)) - pictures
    return PromptEstimate(
        max(estimate.text_tokens, size // 2),
        tuple(images),
        max(estimate.referenced, referenced),
        max(estimate.text_bound, size),
    )


def _inline_picture(block: dict[str, Any]) -> int | None:
    """The bytes of a picture's data in the request (0 for one by URL, which the translation has as an image
    too), or None for an uploaded one (by file id)."""
    source = block.get("source")  # Messages
    if isinstance(source, dict):
        kind = source.get("type")
        data = source.get("data")
        return len(data) if kind == "base64" and isinstance(data, str) else 0 if kind == "url" else None
    url = block.get("image_url")  # Responses
    if isinstance(url, str):
        return len(url) if url.startswith("data:") else 0
    return None


def _inline_document(block: dict[str, Any]) -> bool:
    """Whether a document's content is in the request (its bytes counted with the body's)."""
    source = block.get("source")
    if isinstance(source, dict):
        return source.get("type") in ("base64", "text", "content")
    return "file_data" in block


def predicted_tokens(req: ChatRequest) -> int:
    """An upper bound of a `prediction`'s tokens (OpenAI's Predicted Outputs): those the answer does not use are
    billed at the completion rate, beyond the tokens it generates and its output cap. A token a byte of its JSON, as
    a prompt's bound (`prompt_estimate`): half of them is none for a prediction of code or ids."""
    prediction = (req.model_extra or {}).get("prediction")
    return 0 if prediction is None else len(orjson.dumps(prediction))


def estimate_prompt_tokens(req: ChatRequest) -> int:
    """The prompt estimate with each image at a typical allowance (for display, not for reservations)."""
    estimate = prompt_estimate(req)
    return estimate.text_tokens + IMAGE_TOKEN_ALLOWANCE * len(estimate.images)


def scaled(price: Price | None, multiplier: float) -> Price | None:
    """`price` with every token price times `multiplier` (a service tier's, a priced option's)."""
    if price is None or multiplier == 1.0:
        return price
    fields = ("input", "output", "cached_input", "cache_write", "cache_write_1h", "audio_input", "audio_output")
    scaled_fields = {f: getattr(price, f) * multiplier for f in fields if getattr(price, f) is not None}
    long = price.long_context
    if long is not None:
        long = long.model_copy(
            update={f: getattr(long, f) * multiplier for f in fields if getattr(long, f, None) is not None}
        )
    return price.model_copy(update={**scaled_fields, "long_context": long})


# The options of a request passed through as written (by its API) that change what its model costs at the provider,
# each with its value at the standard price: any other value is priced by a multiplier in the model's price
# (`Price.options`) or refused. A deployment that gets the request translated is sent none of them.
PRICED_PER_MODEL: dict[str, tuple[tuple[str, str], ...]] = {MESSAGES_API: tuple(PRICE_OPTIONS.items())}


def asked_options(call: NativeCall) -> dict[str, Any]:
    """The options of `PRICED_PER_MODEL` that `call` sets to other than their standard value (null is unset)."""
    body = call.body
    return {
        name: body[name]
        for name, standard in PRICED_PER_MODEL.get(call.api, ())
        if body.get(name) is not None and body[name] != standard
    }


def option_rate(price: Price | None, name: str, value: Any) -> float | None:
    """The multiplier `price` sets for option `name` at `value` (see `PRICED_PER_MODEL`); None where it sets none."""
    rates = (price.options or {}).get(name, {}) if price is not None else {}
    return rates.get(value) if isinstance(value, str) else None


def as_served(price: Price | None, asked: Mapping[str, str], served: Mapping[str, str]) -> dict[str, str]:
    """The options `asked` (each priced, `option_rate`) at the values the answer says it was served at: fast mode
    served at standard speed is billed at standard speed. A value served that `price` does not know (neither the
    option's standard value nor one it sets a multiplier for) leaves the option as asked. An option served that
    was not asked, at a value `price` sets a multiplier for, is billed too: a workspace whose default inference geo
    is `us` runs a request that sets none US-only, and Anthropic bills it so (`usage.inference_geo`)."""
    options = dict(asked)
    for name, value in served.items():
        if name in asked:
            if value == PRICE_OPTIONS.get(name) or option_rate(price, name, value) is not None:
                options[name] = value
        elif name in PRICE_OPTIONS and value != PRICE_OPTIONS[name] and option_rate(price, name, value) is not None:
            options[name] = value  # (a service tier is priced apart, by `Attempt.tiers`)
    return options


def tier_rates(
    price: Price | None, gateway: Mapping[str, float], configured: bool
) -> tuple[dict[str, float], frozenset[str]]:
    """The multipliers a deployment's model is billed at per OpenAI service tier, and the tiers a request may ask it
    for. The rates: its price's own (`options.service_tier`: OpenAI's prices differ by model, priority 2x for
    gpt-5's and 1.7x for gpt-4o's, as the built-in table carries them), else the gateway's
    (`priced_options.service_tier`); an answer that says it ran at a tier is billed at its rate whether asked or not
    (a project whose default tier is priority bills every request so). The tiers taken: the gateway's, and those a
    price the operator wrote in the config (`configured`) names; the built-in table's only price them: a tier costs
    more, and the operator says which a key may ask for (else priority would be taken at twice the price once the table
    priced it). A tier not taken is refused."""
    own = (price.options or {}).get(SERVICE_TIER) if price is not None else None
    rates = {**gateway, **own} if own else dict(gateway)
    return rates, frozenset(rates if configured else gateway)


def tier_served(answer: Mapping[str, Any] | None, asked: str | None) -> Served | None:
    """The service tier an OpenAI answer (a completion, a chunk, a response: `answer`'s members) says it ran at,
    where it may be billed otherwise than the tier `asked` (None: none, or one at the plain price); None for the
    usual answer, served at the default tier as asked."""
    tier = answer.get("service_tier") if answer else None
    if not isinstance(tier, str) or (tier == "default" and asked is None):
        return None
    return Served({"service_tier": tier})


def with_options(price: Price | None, options: Mapping[str, str]) -> Price | None:
    """`price` for a request with `options` (each priced, `option_rate`): their multipliers stack, as Anthropic's
    do (US-only inference on top of fast mode)."""
    for name, value in options.items():
        rate = option_rate(price, name, value)
        price = scaled(price, 1.0 if rate is None else rate)
    return price


MAX_PLAUSIBLE_TOKENS = 50_000_000
MAX_PLAUSIBLE_SEARCHES = 10_000


def plausible(usage: Usage) -> bool:
    """Counts a provider could have billed: none negative or absurd, cache reads and writes within the prompt, audio
    output within the output."""
    prompt, cached, written = usage.prompt_tokens, usage.cached_tokens, usage.cache_write_tokens
    return (
        0 <= prompt <= MAX_PLAUSIBLE_TOKENS
        and 0 <= usage.completion_tokens <= MAX_PLAUSIBLE_TOKENS
        and 0 <= cached <= MAX_PLAUSIBLE_TOKENS
        and 0 <= written <= MAX_PLAUSIBLE_TOKENS
        and cached + written <= prompt
        and 0 <= usage.audio_completion_tokens <= usage.completion_tokens
        and (
            not usage.has_counts()
            or (
                0 <= usage.cache_write_1h_tokens <= written
                and 0 <= usage.audio_prompt_tokens <= prompt
                and 0 <= usage.web_searches <= MAX_PLAUSIBLE_SEARCHES
            )
        )
    )


def counts_output(usage: Usage, output_chars: Callable[[], int]) -> bool:
    """Whether `usage` counts what the answer wrote (`output_chars`, read only for a count of 0): 0 tokens out for an
    answer that wrote something is no count a provider bills (3,000 characters under `"completion_tokens": 0` would
    be billed 0 tokens out as the provider's count). A whole answer's (`Pipeline._checked`) and a stream's alike."""
    return bool(usage.completion_tokens) or not output_chars()


def reasoning_off(req: ChatRequest) -> bool:
    """Whether the request turns reasoning off: `reasoning_effort: "none"` (a Responses request's `reasoning.effort`
    becomes it), Anthropic's `thinking: {"type": "disabled"}`."""
    return req.reasoning_effort == "none" or (req.thinking is not None and req.thinking.type == "disabled")


def wants_reasoning(req: ChatRequest, reasons_unasked: bool) -> bool:
    """Whether the answer to the request may hold reasoning the provider bills without showing it: the request asks
    for reasoning, or its model reasons unasked (`reasons_unasked`: the serving deployment's
    `ProviderAdapter.reasons_unasked` for this request, OpenAI's reasoning models at their default effort). By the
    request alone, o4 asked with no effort (as the Agents SDK and most clients ask), its stream cut short, would be
    charged the 15 tokens of text it relayed, where the same request naming an effort is charged the 4,000
    reserved. A request that turns reasoning off (`reasoning_off`) asks for none: with `"none"` counted as an effort
    named, a Gemini 2.5 Flash stream sent thinking budget 0, cut after 5 characters, would be charged its 4,000
    reserved tokens."""
    if reasons_unasked:
        return True
    if reasoning_off(req):
        return False
    extra = req.model_extra or {}
    thinking = req.thinking is not None and req.thinking.type != "disabled"
    return bool(req.reasoning_effort or thinking or extra.get("reasoning"))


def worst_case_usd(
    prompt_tokens: int, max_output: int, price: Price | None, fee: FeeConfig, audio_output: bool = False
) -> float | None:
    """The most a request can cost: estimated prompt at its dearest input price plus every output token at the
    dearest output price the request can produce (`audio_output`: it asks for audio, which the price's
    `audio_output` may price above text). An hour's cache write is among the input prices where the model bills
    cache writes (the price names `cache_write` or `cache_write_1h`: Claude's models); the estimate is not always
    enough to cover it at the 5-minute rate (CJK text runs about 1.5 times its tokens). (Audio input, dearer at some
    providers, is estimated from its base64 text: thousands of times its tokens.) Infinite where it is more than a
    float holds (a fee of 1e300 USD, finite, is past it in nano-dollars), which its caller refuses."""
    if price is None:
        return None
    unit = _effective(price, prompt_tokens)
    input_rate = max(unit["input"], unit["cache_write"])
    if price.cache_write_1h is not None or price.cache_write is not None:
        input_rate = max(input_rate, hour_rate(unit))
    output_rate = max(unit["output"], audio_output_rate(unit)) if audio_output else unit["output"]
    provider = (prompt_tokens * input_rate + max_output * output_rate) / 1_000_000
    nanos = (provider + fee_for(provider, fee)) * 1e9
    # (No ceiling of an infinity, nor of a NaN, an infinity times a fee's 0 percent: either raised out of the request.)
    return math.ceil(nanos) / 1e9 if math.isfinite(nanos) else math.inf


def usd(value: float) -> str:
    """A USD amount as a header or CSV value: the float's exact shortest form, never exponent notation,
    so summing the headers gives back the ledger's figures; a whole amount without a fraction (`0`, not
    `0.0`: no fee is `x-gateway-fee-usd: 0`)."""
    text = repr(float(value))
    if not text[-1].isdigit():  # inf, nan
        return format(Decimal(text), "f")
    if "e" not in text:  # already plain
        return text.removesuffix(".0")
    # Exponent notation (a request's cost is often ~1e-06): move the point, digits unchanged.
    mantissa, _, exponent = text.partition("e")
    sign = "-" if mantissa.startswith("-") else ""
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent)
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"
