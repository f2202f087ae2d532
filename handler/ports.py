"""The two ports of the hexagon: what a provider adapter and a store backend must provide.

The application (`handler/`) depends only on these; `adapters/providers/<name>/` and `adapters/store/`
implement them. The provider registry (`adapters.providers.registry.REGISTRY`) is the one place mapping a config
`type:` to an adapter class.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol

from handler.errors import InvalidRequestError, UpstreamError
from handler.records import FrozenRecord, Record, Value, stored
from handler.schemas import ChatCompletion, ChatRequest, PlainCompletion, Usage
from handler.wire import SSEDecoder, StreamEvent

if TYPE_CHECKING:
    from handler.schemas import ChatCompletionChunk, EmbeddingsRequest, EmbeddingsResponse, WebSearch

# --- providers -----------------------------------------------------------------------------------


class Target(Value):
    """One deployment resolved for a request: provider instance, upstream model, the region it is called in (its
    endpoint's, the one its requests are signed for) and where it runs (`runs_in`: what `x-gateway-region` says of
    it, and what a region pin matches). Both are its region, but for a Bedrock global inference profile
    (`global.anthropic...`), which is called in a source region and which AWS routes to any commercial region:
    `global`. Reported and pinned by its source region, one called from us-east-1 said it ran there, and a pin to
    us-east-1, asked so as to keep requests in that region, sent them to it. `endpoint` tells it apart from another
    deployment of the same provider, model and region at another base URL (`Router`): empty where none is."""

    __slots__ = ("provider", "provider_type", "model", "region", "base_url", "options", "runs_in", "endpoint")

    def __init__(
        self,
        provider: str,
        provider_type: str,
        model: str,
        region: str,
        base_url: str,
        options: Mapping[str, Any] = MappingProxyType({}),
        runs_in: str | None = None,
        endpoint: str = "",
    ) -> None:
        self.provider: Final = provider
        self.provider_type: Final = provider_type
        self.model: Final = model
        self.region: Final = region
        self.base_url: Final = base_url
        self.options: Final = options
        self.runs_in: Final = runs_in or region
        self.endpoint: Final = endpoint

    @property
    def label(self) -> str:
        """`provider/model@region`, as `x-gateway-route` names an attempt and its breaker is keyed, with
        `[endpoint]` after it where another deployment has the same name at another base URL: named alike, two
        Azure resources or two vLLM servers shared one breaker, the healthy one's answers clearing the failures of
        the dead one, whose breaker never opened."""
        if self.endpoint:
            return f"{self.provider}/{self.model}@{self.region}[{self.endpoint}]"
        return f"{self.provider}/{self.model}@{self.region}"

    @property
    def issuer(self) -> str:
        """What stands for the provider account behind this deployment, for the encrypted reasoning it issues
        (`handler.wire.issued`): a short hash of the provider's name and the deployment's base URL (two `openai`
        providers with keys of two organisations are two names; an Azure resource is its own endpoint). Never the
        key, nor anything secret; the same in every gateway process that has the same config."""
        return reasoning_issuer(self.provider, self.base_url)


class Geography(Value):
    """The regions a deployment's model may be called from, where that is not every region: a Bedrock geographic
    inference profile's (`eu.anthropic...`), which AWS refuses from outside its geography
    (`ProviderAdapter.geography`). Checked, and a deployment that names no region placed in it, as the router is
    built."""

    __slots__ = ("name", "sources", "areas", "defaults")

    def __init__(self, name: str, sources: tuple[str, ...], areas: frozenset[str], defaults: tuple[str, ...]) -> None:
        self.name: Final = name
        # The regions its provider documents it may be called from (which of them a model is served in varies).
        self.sources: Final = sources
        # The areas of its regions (`region_area`): a region opened after this release is taken where its area is one.
        self.areas: Final = areas
        # Those of `sources` every account has (not opt-in regions): where a deployment naming no region runs, the
        # nearest to the gateway, when the gateway's own region is not of the geography.
        self.defaults: Final = defaults

    def takes(self, region: str) -> bool:
        return region in self.sources or region_area(region) in self.areas


def region_area(region: str) -> str | None:
    """An AWS region's area, its name without its last two words (`eu` of `eu-south-2`, `us-gov` of
    `us-gov-west-1`, `eu-isoe` of `eu-isoe-west-1`); None for a name not so made."""
    words = region.split("-")
    if len(words) < 3 or not words[-1].isdigit() or not words[-2].isalpha():
        return None
    return "-".join(words[:-2])


@functools.lru_cache(maxsize=1024)
def reasoning_issuer(provider: str, base_url: str) -> str:
    """`Target.issuer`, computed once per deployment."""
    return hashlib.sha256(f"{provider}\x00{base_url}".encode()).hexdigest()[:12]


class UpstreamRequest:
    """An HTTP request ready to send: the adapter has applied auth, URL and body."""

    __slots__ = ("method", "url", "headers", "body", "written")

    def __init__(self, method: str, url: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        # Whether it went out: on a connection to the provider (the gateway's own client says once it wrote it; any
        # other transport is taken to have sent it as it was handed over). One cut before is charged nothing.
        self.written = False


class BuiltRequest:
    """An upstream request plus the client parameters the provider cannot honour."""

    __slots__ = ("request", "dropped")

    def __init__(self, request: UpstreamRequest, dropped: list[str] | None = None) -> None:
        self.request = request
        self.dropped = [] if dropped is None else dropped


class FrameDecoder(Protocol):
    """Layer 1 of streaming: turns raw upstream bytes into events."""

    def feed(self, chunk: bytes) -> list[StreamEvent]: ...

    def finish(self) -> list[StreamEvent]: ...


class StreamParser(Protocol):
    """Layer 2 of streaming: one provider's events into OpenAI chunks.

    `feed` raises `UpstreamError` for an in-stream error event. `finish` returns any chunks still held
    (a final usage chunk with `choices=[]` among them). After `finish`, `usage` holds the totals, and `served`
    what the usage so far says of how the answer was served (`Served`; None where its API says nothing of it, or
    where, as OpenAI's service tier, its chunks carry it). `opening_usage`: the counts a stream gives as it opens,
    before its `usage`, where its API gives any (Anthropic's `message_start`: the input's, exact), which a stream
    cut short is charged its input by. `searches`: the searches the provider's own search tool has run so far (a
    translation's web search: `ChatRequest.web_search`), each billed, the stream cut or not.
    """

    usage: Any
    served: Served | None
    opening_usage: Usage | None
    searches: int

    def feed(self, event: StreamEvent) -> list[ChatCompletionChunk]: ...

    def finish(self) -> list[ChatCompletionChunk]: ...


# `NativeCall.api` of the front-ends' requests: Anthropic's Messages API and OpenAI's Responses API.
MESSAGES_API = "anthropic.messages"
RESPONSES_API = "openai.responses"
# A parameter a provider cannot honour is named in `x-gateway-dropped-params` as the client wrote it: what the
# internal (Chat Completions) form calls it, in each front-end's words where they differ (a Messages client
# sending `metadata.user_id` is told `metadata.user_id` was dropped, not `user`).
CLIENT_NAMES: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        MESSAGES_API: {
            "user": "metadata.user_id",
            "stop": "stop_sequences",
            "reasoning_effort": "output_config.effort",
            "thinking.effort": "output_config.effort",  # (`adapters.providers.reasoning.EFFORT`)
            "response_format": "output_config.format",
            # (`output_config.format` always asks for an answer that fits its schema: the `strict` a provider that
            # cannot guarantee one leaves out is the format itself.)
            "response_format.json_schema.strict": "output_config.format",
            "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
            "reasoning_summary": "thinking.display",
            "messages.reasoning_content": "messages.thinking",
            "messages.image_url": "messages.image",
            # What a tool message cannot carry: the blocks of a `tool_result` (images, documents).
            "messages.tool.image_url": "messages.tool_result.image",
            "messages.tool.file": "messages.tool_result.document",
        },
        RESPONSES_API: {
            "max_completion_tokens": "max_output_tokens",
            "reasoning_effort": "reasoning.effort",
            "response_format": "text.format",
            "verbosity": "text.verbosity",
            "reasoning_summary": "reasoning.summary",
            # An earlier turn's reasoning: what a reasoning item carried (its text, Claude's signed thinking).
            "messages.reasoning_content": "input[reasoning]",
            "messages.reasoning_details": "input[reasoning]",
            "messages.thinking": "input[reasoning]",
            # What a tool message cannot carry: the parts of a `function_call_output`'s `output`.
            "messages.tool.image_url": "input[function_call_output].input_image",
            "messages.tool.file": "input[function_call_output].input_file",
            # A content part, or its field, the provider cannot take: an input item's.
            "messages.image_url": "input_image",
            "messages.image_url.detail": "input_image.detail",
            "messages.file": "input_file",
        },
    }
)
# The members of a renamed field, by prefix (`response_format.json_schema.strict`, DeepSeek's, is a Responses
# client's `text.format.strict`; Gemini's `response_format.json_schema.schema[pattern]`, `text.format.schema[pattern]`):
# renamed by exact name alone, they reached the client in Chat Completions' words.
CLIENT_PREFIXES: Final[Mapping[str, tuple[tuple[str, str], ...]]] = MappingProxyType(
    {
        MESSAGES_API: (("response_format.json_schema.", "output_config.format."),),
        RESPONSES_API: (("response_format.json_schema.", "text.format."),),
    }
)


def as_client_named(api: str, names: list[str]) -> list[str]:
    """`names` (dropped parameters, as the internal form calls them) as the clients of `api` call them."""
    words = CLIENT_NAMES.get(api)
    if not words or not names:
        return names
    prefixes = CLIENT_PREFIXES[api]
    return list(dict.fromkeys(words.get(name) or _prefix_renamed(name, prefixes) for name in names))


def _prefix_renamed(name: str, prefixes: tuple[tuple[str, str], ...]) -> str:
    for internal, client in prefixes:
        if name.startswith(internal):
            return client + name[len(internal) :]
    return name


class NativeCall(Value):
    """A request in one provider API's own wire format (`api`, e.g. `anthropic.messages`), to be sent upstream
    as the client wrote it when the deployment speaks that API.

    `body` is the client's parsed body and `headers` the client headers that API forwards (Anthropic's
    `anthropic-beta` and `anthropic-version`). `untranslated` names the client's fields the internal form
    could not carry: reported for a deployment that gets the translated request, irrelevant for a native one;
    `dropped` names what the passed-through body leaves out of the client's (reported for a native one).
    `query` is what of the client's query string the API's provider reads (`handler.wire.forwarded_query`:
    Anthropic's `beta`), for a deployment that speaks the API to get on its URL; empty when there was none.
    `lost_headers` names what of the client's `headers` a translation loses (a Messages client's betas whose
    feature the request uses, `anthropic-beta[NAME]`: `handler.api.messages_api.lost_betas`), reported by a
    deployment that gets the translated request unless its adapter sends some of them itself (Bedrock, for Claude).
    `native_only` is the client's 400 for a deployment that does not speak `api`, when the request carries what only
    one that does can take (a Messages `thread`: its conversation is held by Anthropic, and a translation would send
    a part of it as the whole); None for any other request. `held`: the provider holds earlier turns that the body
    leaves out (a thread's `continue`), whose size the body does not show. `visible`: the provider's own ids of the
    body's input items that the client's key may see (of items answered to it or to a key under it:
    `handler.api.responses_routes.StoredItems.answered_of`), the only ids a provider that keeps answers itself
    (`ProviderAdapter.keeps_responses`) is sent: it reads an item sent with its id from its account's store, where
    every key's answers are.
    """

    __slots__ = (
        "api",
        "body",
        "headers",
        "untranslated",
        "dropped",
        "query",
        "lost_headers",
        "native_only",
        "held",
        "visible",
    )

    def __init__(
        self,
        api: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] = MappingProxyType({}),
        untranslated: tuple[str, ...] = (),
        dropped: tuple[str, ...] = (),
        query: str = "",
        lost_headers: tuple[str, ...] = (),
        native_only: InvalidRequestError | None = None,
        held: bool = False,
        visible: frozenset[str] = frozenset(),
    ) -> None:
        self.api: Final = api
        self.body: Final = body
        self.headers: Final = headers
        self.untranslated: Final = untranslated
        self.dropped: Final = dropped
        self.query: Final = query
        self.lost_headers: Final = lost_headers
        self.native_only: Final = native_only
        self.held: Final = held
        self.visible: Final = visible


class Served(Value):
    """What an answer's usage says beyond its counts that changes what it costs. `options`: the value it was served
    at of options that change its model's prices (`config.PRICE_OPTIONS`): Anthropic's `usage.speed`, as fast mode
    asked for may be served at standard speed, and is billed at the speed served. `others`: the tokens other models
    ran for it, by model (Anthropic's advisor tool: each of its sub-inferences on the advisor model, which the
    answer's top-level counts leave out), each billed at its own model's prices. `samplings`: the samplings of the
    answer's own model that its usage counts in but the provider prices each on its own (Anthropic's server-side
    compaction, which reads the whole conversation before the answer's sampling reads the summary): each is priced at
    the tier its own input reaches (`pricing.cost_of`), never at the tier of their sum."""

    __slots__ = ("options", "others", "samplings")

    def __init__(
        self,
        options: Mapping[str, str] = MappingProxyType({}),
        others: tuple[tuple[str, Usage], ...] = (),
        samplings: tuple[Usage, ...] = (),
    ) -> None:
        self.options: Final = options
        self.others: Final = others
        self.samplings: Final = samplings


class NativeMeter(Protocol):
    """Reads the usage out of a native stream's events without changing them.

    `feed` raises `UpstreamError` for an in-stream error event. `usage` is the best count so far (the
    provider's, once it gave one; an estimate for a stream cut short), or None before any; `output_chars`
    the characters of generated output seen, for an estimate when there is no usage; `final` whether `usage`
    is the provider's final count (Anthropic's `message_delta`, a Responses stream's terminal event), which
    may come before the stream's last event; `searches` the web searches the provider has run so far (billed
    per search, even in a stream cut short); `advised` the calls to an advisor tool that started (Anthropic's,
    billed at its model's prices in the final usage alone); `served` what the usage so far says of how it was served
    (`Served`), None where the API says nothing of it; `answer_id` the id the provider gave the answer, once its
    stream said it (Anthropic's `message_start`: a message thread's `continue` names it), else None.
    """

    output_chars: int
    final: bool
    answer_id: str | None
    searches: int
    advised: int

    @property
    def usage(self) -> Usage | None: ...

    @property
    def served(self) -> Served | None: ...

    def feed(self, event: StreamEvent) -> None: ...


class ProviderAdapter(ABC):
    """One provider type's translation, the LiteLLM `BaseConfig` idea with typed edges.

    An adapter is built once per provider instance at start-up with its resolved secret (which it
    must never put in an error, a log line or a header other than the upstream's auth header).
    """

    type_name: ClassVar[str]
    # OpenTelemetry's `gen_ai.provider.name` for this API, where it differs from `type_name`.
    semconv_provider: ClassVar[str | None] = None
    default_base_url: ClassVar[str] = ""
    key_env_var: ClassVar[str | None] = None
    # The config options it reads beyond `type`, `api_key`, `base_url` and `region`: on its provider
    # (`providers.NAME.OPTION`) and on a deployment of it (`models.M.deployments[i].OPTION`). Any other is a
    # mistake the config check names: taken and ignored, a misspelt `base_ulr` would send requests elsewhere.
    provider_options: ClassVar[frozenset[str]] = frozenset()
    deployment_options: ClassVar[frozenset[str]] = frozenset()
    requires_key: bool = True
    # Signed with the process's own credentials (Bedrock: the function's AWS keys), not a key of its own: its
    # deployments are passed over while `missing_credentials` says there are none, as those of a provider without
    # its key are.
    process_credentials: ClassVar[bool] = False
    # The reference (`env:OPENAI_API_KEY`) that held one of this gateway's own keys, refused as the provider's.
    refused_reference: str | None = None
    # Why its key, held in SSM or Secrets Manager, could not be read (the store's error code), while it has none
    # (handler/pipeline/provider_keys.py).
    unread: str | None = None
    # Each of its `headers` held in SSM or Secrets Manager that could not be read, while it has no value for it: why
    # (`ssm:/path could not be read (ThrottlingException)`), by header. Its requests are not sent meanwhile: the
    # header may be the credential (an Entra ID token). Replaced whole, never changed in place.
    unread_headers: Mapping[str, str] = MappingProxyType({})
    supports_embeddings: ClassVar[bool] = False
    # The most inputs the API embeds in one call, where it takes fewer than OpenAI's 2,048 (Gemini: 100): a request
    # with more is sent as several calls to the one deployment, their answers joined (`Pipeline.embeddings`).
    embedding_batch: ClassVar[int | None] = None
    # Whether its embeddings answer counts the tokens it bills (Gemini's `batchEmbedContents` counts none: the adapter
    # estimates them, and the ledger line says `estimate`).
    counts_embedding_tokens: ClassVar[bool] = True
    # A regional API (Bedrock): a deployment that names no region runs in the gateway's own region.
    regional: ClassVar[bool] = False
    # The top-level Chat Completions fields beyond OpenAI's that it reads or sends on (its provider's own dialect:
    # Claude's `top_k`, Mistral's `safe_prompt`): fields `x-gateway-strict` knows (`handler.api.request_fields`).
    chat_fields: ClassVar[frozenset[str]] = frozenset()
    # The same for an embeddings request (Mistral's `output_dtype`, `metadata`).
    embedding_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, secret: str | None, options: Mapping[str, Any]) -> None:
        self.name = name
        self.secret = secret
        self.options = dict(options)

    @classmethod
    def option_problem(cls, option: str, value: Any) -> str | None:
        """What is wrong with the value of one of its options (`provider_options`, `deployment_options`), said when
        the config is checked at start-up; None when it can be taken. A value read only once a request comes (an
        output cap of `abc`) failed that request instead."""
        return None

    def missing_credentials(self) -> str | None:
        """Why its requests cannot be signed now (`process_credentials`), else None."""
        return None

    @classmethod
    def geography(cls, model: str) -> Geography | None:
        """Where a deployment of `model` may be called from, where not from every region (Bedrock's geographic
        inference profiles); None for anywhere."""
        return None

    def base_url(self, region: str, override: str | None) -> str:
        """The upstream's base URL for a region; adapters with regional endpoints override it."""
        return (override or self.options.get("base_url") or self.default_base_url).rstrip("/")

    def hosts_search(self, target: Target, req: ChatRequest) -> bool:
        """Whether `req`'s web search (`ChatRequest.web_search`) goes to the deployment's provider as its own search
        tool (Anthropic's `web_search_*`, Gemini's `google_search`), billed per search: where the provider runs web
        searches itself and takes one beside what else `req` asks (Gemini before 3 takes none beside function
        tools). Decided before the request is built, so that an attempt is reserved only the searches it may run. A
        translated request's search goes to no other: left out, and named."""
        return False

    def billed_searches_at_most(self, target: Target, searches: int) -> int:
        """The most searches the provider bills an answer that may run `searches` (the request's limit): each, but
        where it bills an answer's searches as one (Gemini before 3, per grounded prompt). The worst case reserved."""
        return searches

    def sent_search(self, target: Target, req: ChatRequest) -> tuple[WebSearch | None, list[str]]:
        """`req`'s web search (`ChatRequest.web_search`) where it goes to the provider as its own search tool
        (`hosts_search`), else None, with the search named dropped by the client's name for it (`WebSearch.unsent`):
        every translation's one rule, whether its adapter sends a search tool or has none (`Pipeline._native_build`
        names it for those)."""
        search = req.web_search
        if search is None or self.hosts_search(target, req):
            return search, []
        return None, search.unsent()

    def takes_search_options(self, target: Target) -> bool:
        """Whether a Chat Completions request's `web_search_options` goes to the deployment as written, where OpenAI's
        search models run it, billed once per request (`Charges._per_request_usd`). Decided before the request is
        built, so that an attempt is reserved the fee only where it may be billed it: Azure's Chat Completions at a
        dated api-version, Mistral and Bedrock leave it out and name it, and were reserved it all the same; a provider
        with a search tool of its own runs it as that tool (`hosts_search`), billed per search instead."""
        return False

    def takes_service_tier(self, target: Target) -> bool:
        """Whether a translated request's OpenAI `service_tier` goes to the deployment (a request passed through as
        written goes with it, whatever this says): where OpenAI's API and those that follow it take it, and may bill
        by it. Decided before the request is built, so that a tier the gateway does not price is refused before
        anything is reserved only where a deployment would be sent it (`Charges._price_options`): every other
        translation leaves it out and names it, and cannot be billed by it."""
        return False

    @abstractmethod
    def chat_request(self, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        """Build the upstream request for a chat completion."""

    @abstractmethod
    def chat_response(self, body: bytes, req: ChatRequest, target: Target) -> ChatCompletion:
        """Parse a successful (2xx) non-streaming answer."""

    def chat_answer(self, body: bytes, req: ChatRequest, target: Target) -> tuple[ChatCompletion, Served | None]:
        """`chat_response`, and what the answer says of how it was served (`Served`), read in the same parse; None
        where its API says nothing of it, or where, as OpenAI's service tier, the completion carries it."""
        return self.chat_response(body, req, target), None

    def plain_answer(
        self, body: bytes, req: ChatRequest, target: Target
    ) -> tuple[ChatCompletion | PlainCompletion, Served | None]:
        """`chat_answer`, for the chat route, which writes the answer back as it came: where the adapter reads it as a
        `PlainCompletion` (OpenAI's, in the plain shape most are), that, not the model."""
        return self.chat_answer(body, req, target)

    def reasons_unasked(self, target: Target, turned_off: bool = False) -> bool:
        """Whether the deployment's model reasons, and bills its reasoning, on a request that names no reasoning
        effort (OpenAI's reasoning models do, at their default effort): reasoning it may never show. `turned_off`:
        the request turns reasoning off (`pricing.reasoning_off`), which a model that can turn it off honours."""
        return False

    @abstractmethod
    def stream_parser(self, req: ChatRequest, target: Target) -> StreamParser:
        """A fresh parser for one streaming answer."""

    def frame_decoder(self) -> FrameDecoder:
        """How this provider frames a stream; SSE unless the adapter says otherwise."""
        return SSEDecoder()

    @abstractmethod
    def error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        """Map a non-2xx answer to `UpstreamError` (the provider's message, never a secret)."""

    # --- native pass-through: the client's own wire format, when the provider speaks it ---------

    native_apis: ClassVar[frozenset[str]] = frozenset()

    def speaks(self, api: str, target: Target) -> bool:
        """Whether the deployment takes requests in `api`'s own format (then they pass through)."""
        return api in self.native_apis

    def native_request(
        self, call: NativeCall, target: Target, *, stream: bool, output_limit: int | None
    ) -> BuiltRequest:
        """The client's body for `target`: its model substituted, its output capped at `output_limit`."""
        raise NotImplementedError(f"provider type '{self.type_name}' does not speak {call.api}")

    def keeps_responses(self) -> bool:
        """Whether the provider keeps the Responses API answers it serves natively, for the gateway's one account (the
        operator's `responses_store: true` on an OpenAI or Azure provider): it then reads an input item sent with its
        id from its own store, whichever key the item was answered to (`NativeCall.visible`)."""
        return False

    def native_names(self, call: NativeCall) -> Mapping[str, str]:
        """The client's tool names of a request passed through, by the names the provider was sent them as where
        they differ (a name it refuses goes as an alias): for the relay to name the answer's calls back."""
        return {}

    def translated_request(self, call: NativeCall, req: ChatRequest, target: Target, *, stream: bool) -> BuiltRequest:
        """The upstream request for a client's request in an API the deployment does not speak (`call`): its
        translation `req`, built as a Chat Completions request is, and what of the client's headers it loses
        (`NativeCall.lost_headers`). An adapter whose API carries more of the client's own request than the internal
        form does (Bedrock: Claude's betas, from `anthropic-beta`) reads it from `call`."""
        built = self.chat_request(req, target, stream=stream)
        if not call.lost_headers:
            return built
        return BuiltRequest(built.request, [*built.dropped, *call.lost_headers])

    def native_usage(self, call: NativeCall, body: dict[str, Any]) -> Usage | None:
        """The usage of a native non-streaming answer (`body`, parsed: a JSON object), None when it has none (a
        malformed answer is an `UpstreamError`)."""
        raise NotImplementedError(f"provider type '{self.type_name}' does not speak {call.api}")

    def native_served(self, call: NativeCall, body: Mapping[str, Any]) -> Served | None:
        """What a native non-streaming answer (its parsed `body`) says of how it was served (`Served`), None where
        the API says nothing of it (a malformed answer is an `UpstreamError`)."""
        return None

    def native_meter(self, call: NativeCall) -> NativeMeter:
        """A fresh meter for one native stream."""
        raise NotImplementedError(f"provider type '{self.type_name}' does not speak {call.api}")

    # --- token counting -----------------------------------------------------------------------

    def counts_tokens(self, target: Target) -> bool:
        """Whether the provider counts a prompt's tokens for this deployment's model."""
        return False

    def count_tokens_request(self, call: NativeCall, req: ChatRequest, target: Target) -> BuiltRequest:
        """The provider's own token-counting request for a prompt (where `counts_tokens`)."""
        raise NotImplementedError(f"provider type '{self.type_name}' does not count tokens")

    def count_tokens_response(self, body: bytes) -> int:
        """The input-token count of a counting answer."""
        raise NotImplementedError(f"provider type '{self.type_name}' does not count tokens")

    def embeddings_request(self, req: EmbeddingsRequest, target: Target) -> BuiltRequest:
        raise InvalidRequestError(f"provider type '{self.type_name}' does not serve embeddings", param="model")

    def embeddings_response(self, body: bytes, req: EmbeddingsRequest, target: Target) -> EmbeddingsResponse:
        raise InvalidRequestError(f"provider type '{self.type_name}' does not serve embeddings", param="model")


# --- store ---------------------------------------------------------------------------------------


class StoreError(Exception):
    """The store could not be reached or failed; budgeted requests fail closed on it."""


class ResponseTooLarge(StoreError):
    """A response past what the store can keep; the message says by how much, for the client."""


class StoreDeadlineError(StoreError):
    """A store call that could not end by its context's deadline (`STORE_DEADLINE`): cut there, not retried.

    An admission a store lets run on past it (`Store.admit`) has its outcome in `landing`, as it comes: the
    admission's snapshot once written (its reservation then held until it is released), or its refusal or failure."""

    def __init__(self, message: str, landing: asyncio.Future[MeterSnapshot] | None = None) -> None:
        super().__init__(message)
        self.landing = landing


# The event loop's time by which a store call made in this context must have ended, every retry of every layer
# included: the request's deadline (`x-gateway-deadline-ms`, on Lambda the invocation's remaining time less its
# margin), set as the request arrives (handler/api/app.py), so that its key lookup, admission and stored responses
# end there; a settlement's own while it settles (`budgets.SETTLE_BY`, after which it is spooled). A call past it
# is a `StoreDeadlineError`. None: no bound but the store's own timeouts (a server's request with no deadline, and
# background work, which clears it).
STORE_DEADLINE: ContextVar[float | None] = ContextVar("store_deadline", default=None)
# True while a buffered Lambda invocation writes the settlements it deferred, its answer built (`Gateway.settle_now`):
# no other request is coming to share a write, so a store that holds writes back to batch them (the embedded store)
# writes them at once, with no wait for company and no turn of the event loop.
WRITE_AT_ONCE: ContextVar[bool] = ContextVar("write_at_once", default=False)


class ConflictError(StoreError):
    """A conditional write lost: the item exists already, or changed since it was read."""


class ChildLimitReached(Exception):
    """A child key refused: its family (the keys under its root key `root_id`, at every depth) holds
    `max_children` live keys already (`Store.create_child`)."""

    def __init__(self, root_id: str, max_children: int) -> None:
        super().__init__(root_id)
        self.root_id = root_id
        self.max_children = max_children


class BudgetRefused(Exception):
    """Admission refused: `key_id`'s budget has less than the reservation left."""

    def __init__(self, key_id: str, remaining_usd: float | None) -> None:
        super().__init__(key_id)
        self.key_id = key_id
        self.remaining_usd = remaining_usd


class RateRefused(Exception):
    """Admission refused: a rate-limit counter is full for this window; or, with `requested`, the request alone
    needs more than the limit (no window will ever admit it). `key_id` is the key whose limit it is: the
    admission's own, or the ancestor whose counter its descendants share."""

    def __init__(
        self, limit_name: str, limit: int, retry_after: float, requested: int | None = None, *, key_id: str
    ) -> None:
        super().__init__(limit_name)
        self.key_id = key_id
        self.limit_name = limit_name
        self.limit = limit
        self.retry_after = retry_after
        self.requested = requested


# --- records ----------------------------------------------------------------------------------------
#
# The stored records are dataclasses for the protocol (orjson writes them, `dataclasses.replace` and `fields`
# work on them) with nothing generated, their fields in `__slots__`: see `handler.records.stored`.


@stored
class KeyRecord(Record):
    """A gateway key as stored. The secret itself is never stored, only its hash."""

    __slots__ = (
        "id",
        "name",
        "secret_hash",
        "created_at",
        "models",
        "budget_usd",
        "budget_period",
        "expires_at",
        "rpm",
        "tpm",
        "model_limits",
        "allow_ips",
        "admin",
        "parent_id",
        "ancestors",
        "revoked_at",
        "prev_secret_hash",
        "prev_valid_until",
        "version",
        "home_region",
        "tags",
        "revoked_by",
    )

    id: str
    name: str
    secret_hash: str
    created_at: float
    models: list[str]
    budget_usd: float | None
    budget_period: str
    expires_at: float | None
    rpm: int | None
    tpm: int | None
    model_limits: dict[str, dict[str, int]]
    allow_ips: list[str]
    admin: bool
    parent_id: str | None
    ancestors: list[str]
    revoked_at: float | None
    prev_secret_hash: str | None
    prev_valid_until: float | None
    version: int
    # The region whose store item is the budget's ledger of record (None: records from before regions, which
    # keep one meter item in whichever region serves them). See `adapters/store/region_leases.py`.
    home_region: str | None
    # Default attribution tags for the key's ledger lines (see `handler/pipeline/attribution.py` for how they combine
    # with its ancestors' and the request's).
    tags: dict[str, str]
    # The ancestor whose revocation revoked this key with it (`revoked_at` is then that revocation's time).
    revoked_by: str | None

    def __init__(
        self,
        id: str,
        name: str,
        secret_hash: str,
        created_at: float,
        models: list[str] | None = None,  # None: every model (`["*"]`)
        budget_usd: float | None = None,
        budget_period: str = "total",
        expires_at: float | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        model_limits: dict[str, dict[str, int]] | None = None,
        allow_ips: list[str] | None = None,
        admin: bool = False,
        parent_id: str | None = None,
        ancestors: list[str] | None = None,
        revoked_at: float | None = None,
        prev_secret_hash: str | None = None,
        prev_valid_until: float | None = None,
        version: int = 1,
        home_region: str | None = None,
        tags: dict[str, str] | None = None,
        revoked_by: str | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.secret_hash = secret_hash
        self.created_at = created_at
        self.models = ["*"] if models is None else models
        self.budget_usd = budget_usd
        self.budget_period = budget_period
        self.expires_at = expires_at
        self.rpm = rpm
        self.tpm = tpm
        self.model_limits = {} if model_limits is None else model_limits
        self.allow_ips = [] if allow_ips is None else allow_ips
        self.admin = admin
        self.parent_id = parent_id
        self.ancestors = [] if ancestors is None else ancestors
        self.revoked_at = revoked_at
        self.prev_secret_hash = prev_secret_hash
        self.prev_valid_until = prev_valid_until
        self.version = version
        self.home_region = home_region
        self.tags = {} if tags is None else tags
        self.revoked_by = revoked_by


def family_root(record: KeyRecord) -> str | None:
    """The id of the root key of `record`'s family (the first of its ancestors), None for a root key."""
    return record.ancestors[0] if record.ancestors else record.parent_id


class KeyPlace(Value):
    """Where a key stands in a listing of keys (`Store.list_keys_page`): its parent's id (None for a root key) and its
    own. Neither ever changes, so a page that starts past a key's place starts at the same place whether the key is
    still there or gone since (purged), and a key minted meanwhile falls on one side of it for good."""

    __slots__ = ("parent_id", "key_id")

    def __init__(self, parent_id: str | None, key_id: str) -> None:
        self.parent_id: Final = parent_id
        self.key_id: Final = key_id

    @classmethod
    def of(cls, record: KeyRecord) -> KeyPlace:
        return cls(record.parent_id, record.id)


@functools.lru_cache(maxsize=256)
def period_end(period: str) -> float | None:
    """When a budget period ends (epoch seconds, UTC): `day:YYYY-MM-DD` at the next midnight, `month:YYYY-MM` at
    the first of the next month; None for `total` (or a name it cannot read), which never ends."""
    kind, _, when = period.partition(":")
    try:
        if kind == "day":
            start = datetime.strptime(when, "%Y-%m-%d").replace(tzinfo=UTC)
            return (start + timedelta(days=1)).timestamp()
        if kind == "month":
            start = datetime.strptime(when, "%Y-%m").replace(tzinfo=UTC)
            year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
            return start.replace(year=year, month=month).timestamp()
    except ValueError:
        return None
    return None


@stored
class BudgetCharge(FrozenRecord):
    """Reserve `amount_usd` on `key_id`'s counter for `period` (`total`, `day:YYYY-MM-DD` or `month:YYYY-MM`, UTC:
    `period_end`) if it stays within `limit_usd`.

    `home_region` is the key's (`KeyRecord.home_region`): a store in another region spends from its own
    lease of the budget instead of the key's counter (None: the counter is local)."""

    __slots__ = ("key_id", "period", "limit_usd", "amount_usd", "home_region")

    key_id: str
    period: str
    limit_usd: float
    amount_usd: float
    home_region: str | None

    def __init__(
        self, key_id: str, period: str, limit_usd: float, amount_usd: float, home_region: str | None = None
    ) -> None:
        assign = object.__setattr__
        assign(self, "key_id", key_id)
        assign(self, "period", period)
        assign(self, "limit_usd", limit_usd)
        assign(self, "amount_usd", amount_usd)
        assign(self, "home_region", home_region)


@stored
class RateCharge(FrozenRecord):
    """Count against one rate limit for the window `window` (epoch minute).

    `name` is `rpm`, `tpm`, `rpm:<pattern>` or `tpm:<pattern>` (a `model_limits` entry); the counter must stay
    `<= limit` after adding `amount` (for `rpm` the amount is 1).
    """

    __slots__ = ("name", "window", "limit", "amount", "key_id", "home_region")

    name: str
    window: int
    limit: int
    amount: int
    key_id: str | None
    home_region: str | None

    def __init__(
        self,
        name: str,
        window: int,
        limit: int,
        amount: int,
        key_id: str | None = None,
        home_region: str | None = None,
    ) -> None:
        assign = object.__setattr__
        assign(self, "name", name)
        assign(self, "window", window)
        assign(self, "limit", limit)
        assign(self, "amount", amount)
        assign(self, "key_id", key_id)
        assign(self, "home_region", home_region)

    @property
    def counter(self) -> str:
        """The counter's name in a `MeterSnapshot`: `name` for the admission's own key, `name@key_id` for an
        ancestor's limit."""
        return self.name if self.key_id is None else f"{self.name}@{self.key_id}"


class Admission(Value):
    """Everything checked and counted before the upstream call, in one store round trip."""

    __slots__ = ("reservation_id", "key_id", "budgets", "rates", "expires_at", "home_region")

    def __init__(
        self,
        reservation_id: str,
        key_id: str,
        budgets: list[BudgetCharge],
        rates: list[RateCharge],
        expires_at: float,
        home_region: str | None = None,
    ) -> None:
        self.reservation_id: Final = reservation_id
        self.key_id: Final = key_id
        self.budgets: Final = budgets
        self.rates: Final = rates
        self.expires_at: Final = expires_at
        self.home_region: Final = home_region  # `key_id`'s home region: where its rate counters live (None: local)


@stored
class MeterSnapshot(Record):
    """A key's counters: per budget period, `committed_usd` (spent plus live reservations) and
    `spent_usd` (settled only); per rate-limit name, the count in the current window. An admission's also names,
    in `rate_windows`, each counter it counted in a later window than its own, the one another gateway's clock
    began first (`RateCharge.window` and `counter`): that count lasts to its window's end, not to the admission's."""

    __slots__ = ("committed_usd", "spent_usd", "rates", "rate_windows")

    committed_usd: dict[str, float]
    spent_usd: dict[str, float]
    rates: dict[str, int]
    rate_windows: dict[str, int]

    def __init__(
        self,
        committed_usd: dict[str, float] | None = None,
        spent_usd: dict[str, float] | None = None,
        rates: dict[str, int] | None = None,
        rate_windows: dict[str, int] | None = None,
    ) -> None:
        self.committed_usd = {} if committed_usd is None else committed_usd
        self.spent_usd = {} if spent_usd is None else spent_usd
        self.rates = {} if rates is None else rates
        self.rate_windows = {} if rate_windows is None else rate_windows


@stored
class LedgerItem(Record):
    """One line item: a request that reached a provider."""

    __slots__ = (
        "request_id",
        "ts",
        "key_id",
        "ancestors",
        "model",
        "provider",
        "region",
        "upstream_model",
        "input_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "output_tokens",
        "cost_usd",
        "fee_usd",
        "status",
        "gateway_ms",
        "store_ms",
        "upstream_ms",
        "route",
        "cost_source",
        "tags",
        "user",
        "session",
        "reasoning_tokens",
        "cache_savings_usd",
    )

    request_id: str
    ts: float
    key_id: str
    ancestors: list[str]
    model: str
    provider: str
    region: str
    upstream_model: str
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost_usd: float | None
    fee_usd: float
    status: int
    gateway_ms: float
    store_ms: float
    upstream_ms: float
    route: str
    cost_source: str
    # Attribution: the client's `x-gateway-tags`, its end user (`user`, `metadata.user_id`, `safety_identifier`)
    # and the agent session it named (Claude Code's `x-claude-code-session-id`, Codex's `session-id`).
    tags: dict[str, str]
    user: str | None
    session: str | None
    # Output tokens spent reasoning (within `output_tokens`; 0 where the provider does not count them apart),
    # and what prompt caching saved on this request (see `Cost.cache_savings_usd`). Lines written before these
    # fields existed read back as 0.
    reasoning_tokens: int
    cache_savings_usd: float

    def __init__(
        self,
        request_id: str,
        ts: float,
        key_id: str,
        ancestors: list[str],
        model: str,
        provider: str,
        region: str,
        upstream_model: str,
        input_tokens: int,
        cached_tokens: int,
        cache_write_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        fee_usd: float,
        status: int,
        gateway_ms: float = 0.0,
        store_ms: float = 0.0,
        upstream_ms: float = 0.0,
        route: str = "",
        cost_source: str = "provider",
        tags: dict[str, str] | None = None,
        user: str | None = None,
        session: str | None = None,
        reasoning_tokens: int = 0,
        cache_savings_usd: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.ts = ts
        self.key_id = key_id
        self.ancestors = ancestors
        self.model = model
        self.provider = provider
        self.region = region
        self.upstream_model = upstream_model
        self.input_tokens = input_tokens
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.output_tokens = output_tokens
        self.cost_usd = cost_usd
        self.fee_usd = fee_usd
        self.status = status
        self.gateway_ms = gateway_ms
        self.store_ms = store_ms
        self.upstream_ms = upstream_ms
        self.route = route
        self.cost_source = cost_source
        self.tags = {} if tags is None else tags
        self.user = user
        self.session = session
        self.reasoning_tokens = reasoning_tokens
        self.cache_savings_usd = cache_savings_usd

    @property
    def day(self) -> str:
        """The UTC day the line falls on (`YYYY-MM-DD`): reports group by it, stores keep daily totals by it."""
        return datetime.fromtimestamp(self.ts, UTC).strftime("%Y-%m-%d")


@stored
class Settlement(FrozenRecord):
    """After the answer: turn the reservation into the actual cost and record the line item.

    Idempotent: settling the same `reservation_id` twice changes nothing the second time.
    `budgets` carries the same (key, period) pairs as the admission with `amount_usd` now the
    actual cost; `reserved_usd` is what the admission reserved on each. `rates` adds the token
    difference (actual minus estimated) to the `tpm` counters of the admission's window, each naming
    the key whose counter it is (`key_id`), line item or not: a request that reached no provider has
    none, and gives back all it reserved.
    """

    __slots__ = ("reservation_id", "budgets", "reserved_usd", "rates", "item", "home_region", "expires_at")

    reservation_id: str
    budgets: list[BudgetCharge]
    reserved_usd: float
    rates: list[RateCharge]
    item: LedgerItem | None
    home_region: str | None  # the admission's `home_region`
    expires_at: float | None  # the admission's `expires_at` (a store may file reservations by their expiry)

    def __init__(
        self,
        reservation_id: str,
        budgets: list[BudgetCharge],
        reserved_usd: float,
        rates: list[RateCharge],
        item: LedgerItem | None,
        home_region: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        assign = object.__setattr__
        assign(self, "reservation_id", reservation_id)
        assign(self, "budgets", budgets)
        assign(self, "reserved_usd", reserved_usd)
        assign(self, "rates", rates)
        assign(self, "item", item)
        assign(self, "home_region", home_region)
        assign(self, "expires_at", expires_at)


class UsageQuery(Value):
    __slots__ = ("key_ids", "since", "until")

    def __init__(self, key_ids: list[str] | None, since: float, until: float) -> None:
        self.key_ids: Final = key_ids
        self.since: Final = since
        self.until: Final = until


# Lines a store hands a report at a time (`Store.scan_usage`): few enough that the garbage collector seldom finds
# them alive (5,000 promoted enough of a 60,000-line report to set off two full collections, each holding every
# thread of the process).
LEDGER_BATCH = 500
# How much newer than a line handed before it a line `Store.scan_usage_newest` may hand: DynamoDB reads lines in the
# order of sort keys holding their times rounded to the microsecond (`{ts:017.6f}`), so two lines a microsecond apart
# may come in either order; a line comes at most half a microsecond either side of its key's time (2: a float's
# rounding spared).
NEWEST_FIRST_SLACK_S = 2e-6


# The most responses `Store.responses_holding` names for one item id.
MAX_HOLDERS = 4


class StoredResponse(Value):
    """A Responses API answer kept for `previous_response_id` and `GET /v1/responses/{id}`: `body` is
    the JSON of the conversation's input items and the response; only `key_id` and its `ancestors`
    may read or delete it, until `expires_at`."""

    __slots__ = ("id", "key_id", "ancestors", "created_at", "expires_at", "body")

    def __init__(
        self, id: str, key_id: str, ancestors: list[str], created_at: float, expires_at: float, body: bytes
    ) -> None:
        self.id: Final = id
        self.key_id: Final = key_id
        self.ancestors: Final = ancestors
        self.created_at: Final = created_at
        self.expires_at: Final = expires_at
        self.body: Final = body


class ThreadAnswer(Value):
    """An answer of an Anthropic message thread the gateway relayed, by its message id (`id`, which a `continue`
    names as `previous_message_id`): Anthropic keeps every key's threads under the one account, so only `key_id`,
    the key it was answered to, and that key's `ancestors` may continue it, until `expires_at` (as a stored
    response may be read). `advisors`: the advisor tools the thread holds after it (as `Exchange.advisors` holds
    them: each one's model, its calls, its bound per call), which a `continue`, sending no `tools`, may call again."""

    __slots__ = ("id", "key_id", "ancestors", "expires_at", "advisors")

    def __init__(
        self,
        id: str,
        key_id: str,
        ancestors: list[str],
        expires_at: float,
        advisors: tuple[tuple[str, int, int], ...] = (),
    ) -> None:
        self.id: Final = id
        self.key_id: Final = key_id
        self.ancestors: Final = ancestors
        self.expires_at: Final = expires_at
        self.advisors: Final = advisors


class Store(ABC):
    """Keys, meters and the ledger. Every method is one round trip to the backend at most, except an
    admission in a region that must first top up its lease of a budget homed in another region (two more:
    the home region's conditional write and the lease's credit; see `adapters/store/region_leases.py`), and a
    settlement that takes more from such a lease than it reserved (a read of the lease; where it then owes, the
    home's charge and the lease's credit: `RegionLeases.cover_debt`)."""

    @abstractmethod
    async def create_key(self, record: KeyRecord) -> None:
        """Insert a new key; `ConflictError` if the id exists. A record without `home_region` is homed in
        the store's own region, if the store has one (set on `record`). A key with a `parent_id` is linked to its
        parent for `child_ids`, in the same write."""

    @abstractmethod
    async def create_child(self, record: KeyRecord, max_children: int, root_home: str | None = None) -> None:
        """Insert a new key under `record.parent_id` if its family, the keys under its root (`family_root`) at
        every depth, holds fewer than `max_children` live keys (not yet purged: see
        `adapters.store.records.key_purge_after`; one under a purged key is not live either), else
        `ChildLimitReached`; the count and the insert are one atomic step, whatever runs beside it, in every
        region (a replicated store counts in the root's home region, `root_home`). Counted per parent, a key's
        30 children minted 30 each: 930 keys in 3.5 s, each child's place free. `ConflictError` if the id exists.
        Like `create_key`, it records the parent-child link `child_ids` reads."""

    @abstractmethod
    async def child_ids(self, parent_id: str, root_home: str | None = None) -> list[str]:
        """The ids of every key created under `parent_id`, purged ones included, for as long as their ledger lines
        may live: a report on a parent's family must not lose a child's spend when the child's record goes. With
        `root_home` (the home region of the family's root, where a replicated store writes the family: see
        `create_child`), read there, consistently: a revocation must find a child minted a moment ago."""

    async def end_links(self, record: KeyRecord, root_home: str | None = None) -> None:
        """Give the links `create_child` wrote for `record` the end its record has now (a revocation, just written:
        `adapters.store.records.key_purge_after`), where a store lets links go after their child's lines; in the
        root's home region `root_home`, where they were written. A store that keeps its links for good (SQLite)
        has nothing to do."""
        return None

    async def family_ids(self, key_id: str, root_home: str | None = None) -> list[str] | None:
        """`key_id` and every key created under it, at any depth, as `child_ids` links them, in one call where the
        store can; None where it cannot (`handler.pipeline.key_admin.with_descendants` then walks `child_ids`)."""
        return None

    @abstractmethod
    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def get_key_latest(self, key_id: str, written_in: str | None = None) -> KeyRecord | None:
        """`get_key` as the key's home region has it, where the store spans regions: a write made in this region
        to a key homed in another lands there first, and reaches this region's replica only with replication. A
        key this region's replica does not have yet is read in `written_in`, where the caller knows it written
        (a key of a family, in its root's home region: `create_child`). For rechecks and writes, never the hot
        path (a read in another region)."""
        return await self.get_key(key_id)

    @abstractmethod
    async def update_key(self, record: KeyRecord) -> None:
        """Write `record` if the stored version is `record.version - 1`; else `ConflictError`."""

    @abstractmethod
    async def list_keys(self, parent_id: str | None = None) -> list[KeyRecord]:
        """Every live key (not yet purged), or every live child of `parent_id`, sorted by id: for what needs them all
        (`gateway keys list`, the migration's repairs); a listing a client pages through reads `list_keys_page`."""

    async def list_keys_page(self, parent_id: str | None, limit: int, after: KeyPlace | None = None) -> list[KeyRecord]:
        """At most `limit` of `list_keys(parent_id)`'s keys, those past `after` (the place of the last key of the page
        before) in the store's listing order: a page of `GET /admin/keys`. The order is the store's own, made of what
        a key never changes (`KeyPlace`), so pages read one after another list each key that lives through them
        once, whatever is minted or purged between them. A store reads the page and no more: read whole, the listing
        would answer every key at once (20,000 keys are 7.4 MB, past the 6 MB the buffered Lambda function can
        return) and DynamoDB read its whole key index for each call. Here, for a store with no order of its own to
        read them in, `list_keys`'s keys by id."""
        listed = await self.list_keys(parent_id)
        if after is not None:
            listed = [record for record in listed if record.id > after.key_id]
        return listed[:limit]

    @abstractmethod
    async def admit(self, admission: Admission) -> MeterSnapshot:
        """Reserve the budgets and count the rates atomically, or change nothing and raise
        `BudgetRefused` / `RateRefused`. Under a deadline (`STORE_DEADLINE`) an admission the store cannot end
        there is a `StoreDeadlineError`: either not applied, or, where its call runs on, with its `landing` for the
        caller to release what it wrote."""

    def admit_held(self, admission: Admission) -> MeterSnapshot | None:
        """`admit` at once from what this process holds of the counters, with no write and no wait, where the store
        can (the embedded store's slices of them: adapters/store/slices.py); None: it takes `admit`. An admission
        written may land with its request cancelled meanwhile, which must then wait for it (`Pipeline._reserve`);
        one admitted here has nothing to wait for, and costs no task."""
        return None

    async def admit_at(self, admission: Admission, region: str | None) -> MeterSnapshot:
        """`admit`, counted in `region` as a process there counts it, where the store spans regions: for a count
        that must hold in all regions at once, kept in one (a family's mints, in its root's home). A store in
        one region (or `region` None) admits here."""
        return await self.admit(admission)

    @abstractmethod
    async def settle(self, settlement: Settlement) -> None:
        """Apply a settlement exactly once (see `Settlement`)."""

    async def settle_at(self, settlement: Settlement, region: str | None) -> None:
        """`settle`, in `region` as a process there settles it, where the store spans regions: for what an
        `admit_at` counted there. A store in one region (or `region` None) settles here."""
        await self.settle(settlement)

    @abstractmethod
    async def release_expired(self, key_id: str, now: float) -> float:
        """Release reservations on `key_id`'s counters written in this store's region whose expiry passed;
        returns USD released."""

    async def release_held(self, charge: BudgetCharge, now: float) -> float:
        """Before a refusal of `charge` for want of budget stands: free what holds that budget and serves no
        request, and return the USD freed (the admission is then tried again): reservations whose expiry
        passed (`release_expired`) and, on a store spanning regions, leases idle in other regions."""
        return await self.release_expired(charge.key_id, now)

    @abstractmethod
    async def meter(self, key_id: str, period: str) -> MeterSnapshot:
        """The key's committed spend (spent plus live reservations) for `period`, summed over every region
        (as far as replication has brought the other regions' counters here)."""

    @abstractmethod
    async def usage(self, query: UsageQuery) -> list[LedgerItem]:
        """Ledger items in `[since, until)`, for the given keys (None: all)."""

    async def scan_usage(self, query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
        """`usage`'s lines handed to `consume` a batch at a time (at most `LEDGER_BATCH` lines), off the event loop:
        for a report that keeps their sums, not the lines (`handler.dashboard.reports.ReportBuilder`). `consume` may
        run on a worker thread (one batch after another, never two at once); here it runs once, on a thread, on all
        of `usage`'s lines (a store whose ledger can grow past what a process holds reads it a batch at a time)."""
        lines = await self.usage(query)
        await asyncio.to_thread(consume, lines)

    async def scan_usage_newest(
        self, query: UsageQuery, consume: Callable[[list[LedgerItem]], bool], batch: int = LEDGER_BATCH
    ) -> None:
        """`usage`'s lines newest first, handed to `consume` about `batch` at a time (off the event loop, as
        `scan_usage`'s), until it returns True (it has what it needs): a listing's page (`group_by=request`) reads the
        lines it answers and few more, where a scan read every line of the window older than its cursor (paging a
        month through cost lines² / limit reads). Newest first by time within `NEWEST_FIRST_SLACK_S`; lines of one
        time in any order. Here `usage`'s lines sorted, for a store with no order of its own to read them in."""
        lines = await self.usage(query)

        def feed() -> None:
            lines.sort(key=lambda line: line.ts, reverse=True)
            for start in range(0, len(lines), batch):
                if consume(lines[start : start + batch]):
                    return

        await asyncio.to_thread(feed)

    @abstractmethod
    async def put_response(self, stored: StoredResponse, held: Sequence[str] = (), *, newer_only: bool = False) -> None:
        """Keep a response until its `expires_at`, unless one kept under its id still lives: the first write
        stands (read it back to learn which did). `ResponseTooLarge` past what the store can keep. `held`: ids of
        items the response holds that do not name it (a provider's own), indexed for `responses_holding` until
        the response expires. `newer_only`: a record the release before this one must not read (it would fail on
        it), kept where that release does not look (it answers 404, as for a response it could not have kept)."""

    @abstractmethod
    async def get_response(self, response_id: str) -> StoredResponse | None:
        """The response, or None when unknown, deleted or expired."""

    @abstractmethod
    async def responses_holding(self, item_id: str) -> list[str]:
        """The ids of the responses kept with `item_id` among their `held` items, the newest first, at most
        `MAX_HOLDERS`. A hint, to be read: one may since have been deleted, or (where the index is written before the
        response) be another write's, whose id was taken (the first write stands)."""

    @abstractmethod
    async def delete_response(self, response_id: str) -> bool:
        """Delete the response; whether it existed."""

    @abstractmethod
    async def index_held(self, held_in: Callable[[StoredResponse], Sequence[str]]) -> int:
        """`gateway store migrate`: index the items every live stored response holds (`held_in` says which, as
        `put_response`'s `held`) where their entries are missing (responses kept before the index, or by an older
        release beside this one); returns how many entries it wrote. A second run writes nothing."""

    @abstractmethod
    async def put_thread_answer(self, answer: ThreadAnswer) -> None:
        """Keep whose a thread's answer is, and the advisors its thread holds, until its `expires_at` (its message id
        is the provider's, and unique: a write of the same id again, a call sent again, writes the same)."""

    @abstractmethod
    async def get_thread_answer(self, message_id: str) -> ThreadAnswer | None:
        """The thread's answer of `message_id`, or None when unknown or expired."""

    @abstractmethod
    async def put_sign_in(self, token_hash: str, key_id: str, expires_at: float) -> None:
        """Keep a one-time dashboard sign-in token (its hash) for the admin key `key_id` until `expires_at`."""

    @abstractmethod
    async def take_sign_in(self, token_hash: str) -> str | None:
        """Delete the token and return its key id, in one step (of two racing takers only one gets it); None when
        unknown, taken before or expired."""

    async def return_leases(self) -> float:
        """Give back to their home regions the shares of budgets homed elsewhere that this process drew on and has
        not spent (a stopping server's), where the store spans regions, but those another process of its region
        drew on since (a sibling worker: it gives them back once idle, or as it stops); returns the USD given back.
        A store in one region holds none."""
        return 0.0

    async def reconnect(self) -> None:
        """Drop the store's open connections (after a SnapStart restore they are dead); the next call opens
        new ones."""
        return None

    def settle_soon(self, settlement: Settlement) -> asyncio.Future[None] | None:
        """Queue `settlement` with writes the store is batching, without a task to wait for it: the future
        resolves as `settle` would return or raise. None: this store has no such queue for it (then `settle`)."""
        return None

    def hurry(self) -> None:
        """Write now what the store holds back to batch with later calls (a Lambda invocation is ending)."""
        return None

    async def close(self) -> None:
        return None
