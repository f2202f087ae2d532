"""One client request on its way through the gateway (`Exchange`): who sent it, what it asked, which attempt
answered, what it cost, how long each part took; and the request-control headers it came with (`Controls`).
Every route builds one, the pipeline fills it in, and the answer's headers, its ledger line and its log line
are read from it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from handler.errors import RateLimitError, ServiceUnavailableError, UpstreamTimeoutError
from handler.pipeline.budgets import Counted, RateHeaders, Reservation, remaining_usd
from handler.pipeline.keys import kept_unkeyed, without_own_secret
from handler.pipeline.output_caps import OutputCap
from handler.pipeline.pricing import Cost, PromptEstimate, usd
from handler.pipeline.routing import Attempt, RouteControls
from handler.ports import KeyRecord, LedgerItem
from handler.records import Value
from handler.redaction import NAME_CHARS
from handler.telemetry.prometheus import REGISTRY

if TYPE_CHECKING:
    from handler.schemas import ChatRequest, Usage
    from handler.telemetry.tracing import Trace  # (imported only when OTLP export is on: handler/pipeline/gateway.py)


NO_ROUTE_CONTROLS = RouteControls()  # the config's routing, as the client left it


class Controls(Value):
    """The client's request-control headers, parsed."""

    __slots__ = ("route", "deadline_s", "max_cost_usd", "strict", "enforce_schema", "tags", "session")

    def __init__(
        self,
        route: RouteControls = NO_ROUTE_CONTROLS,
        deadline_s: float | None = None,
        max_cost_usd: float | None = None,
        strict: bool = False,
        enforce_schema: bool = False,
        tags: Mapping[str, str] = MappingProxyType({}),
        session: str | None = None,
    ) -> None:
        self.route: Final = route
        self.deadline_s: Final = deadline_s
        self.max_cost_usd: Final = max_cost_usd
        self.strict: Final = strict
        self.enforce_schema: Final = enforce_schema
        self.tags: Final = tags
        self.session: Final = session


class Exchange:
    """One client request on its way through the gateway: who, what, where it went, how long it took."""

    __slots__ = (
        "request_id", "key", "model", "controls", "started", "route", "dropped", "inbound_dropped", "store_ms",
        "upstream_ms", "attempt", "reservation", "cost", "budget_remaining", "wasted_usd", "limit_headers",
        "lineage", "inflight", "inflight_at", "inflight_status", "answered", "missed", "extra", "prompt", "user",
        "service_tier", "plain_tier", "per_request_usd", "search_usd", "searches", "searched", "trace", "output_cap",
        "rejected", "client_left", "fallbacks", "counted", "stream", "native_api", "native_options", "anthropic",
        "audio_output", "ledger_item", "ends_at", "lifetime_s", "wasted_usage", "unsent_counts", "sent_to", "reserving",
        "advisors", "advised", "dropped_at", "advisor_models", "unsent_advisors", "advisor_params", "advisor_counts",
        "advisor_sent", "cap_param", "waste_estimated",
    )  # fmt: skip

    def __init__(
        self,
        request_id: str,
        key: KeyRecord,
        model: str,
        controls: Controls,
        inbound_dropped: list[str] | None = None,  # what the inbound API's translation could not carry
        lineage: list[KeyRecord] | None = None,  # the key and its ancestors (the key alone when not given)
        stream: bool = False,  # the client asked for a stream (its log line says so, even if refused before one)
        anthropic: bool = False,  # the client speaks Anthropic's API: an error's status is its (`status_for`)
        arrived: float | None = None,  # when the request arrived (`time.perf_counter`), if before now
        lifetime_s: float | None = None,  # the gateway's bound on a whole request (`timeouts.request`), if any
    ) -> None:
        self.request_id = request_id
        self.stream = stream
        self.anthropic = anthropic
        self.key = key
        self.model = model
        self.controls = controls
        self.started = time.perf_counter()
        # When the request's deadline passes (`time.perf_counter`), counted from its arrival: its key lookup and
        # body took part of it. The client's (`controls.deadline_s`: its header, the Lambda invocation's time left)
        # or the gateway's bound on any request (`lifetime_s`), whichever is sooner. None: neither.
        deadline = controls.deadline_s
        self.lifetime_s = lifetime_s
        if lifetime_s is not None and (deadline is None or lifetime_s < deadline):
            deadline = lifetime_s
        self.ends_at = None if deadline is None else (arrived or self.started) + deadline
        self.route: list[str] = []
        self.dropped: list[str] = []  # what the attempt that answered was not sent (`BuiltRequest.dropped`)
        # The same for each attempt built, by `id(attempt)`: an attempt charged unanswered (cut in flight, timed out)
        # is charged only the options it was sent (`Charges._per_request_usd`).
        self.dropped_at: dict[int, list[str]] = {}
        self.inbound_dropped = [] if inbound_dropped is None else inbound_dropped
        self.store_ms = 0.0
        self.upstream_ms = 0.0
        self.attempt: Attempt | None = None
        self.reservation: Reservation | None = None
        self.cost: Cost | None = None
        self.budget_remaining: float | None = None
        self.wasted_usd = 0.0
        self.limit_headers: dict[str, str] = {}
        self.lineage = lineage or [key]
        # The attempt whose request went out and has no answer yet: if the request is cut now (deadline, Lambda
        # time cap, client gone), the provider may still run it to the end and bill it.
        self.inflight: Attempt | None = None
        self.inflight_at = 0.0  # when it went out (`time.perf_counter`); 0.0 while no attempt has
        self.inflight_status = 0  # its answer's status once its head came, while its body is read
        # The last attempt the provider answered with an error (the request reached it; nothing to bill).
        self.answered: tuple[Attempt, int] | None = None
        # Attempts sent whole that gave no usable answer (a first-byte timeout, a stall, a broken answer): the
        # provider may have run them to the end, so each is charged the reserved worst case.
        self.missed: list[Attempt] = []
        # Answers the provider billed and the gateway threw away (they broke the response schema, or the model wrote
        # a call the provider could not parse): their cost is in `wasted_usd`, their counts in `wasted_usage` (the
        # line of a request that ends with no answer carries them), and each is covered like a missed attempt before
        # the next attempt goes out.
        self.rejected = 0
        self.wasted_usage: Usage | None = None
        self.waste_estimated = False  # (counts of them the gateway estimated: an unusable embeddings batch's)
        # A worst case more reserved for each of them before the next attempt went out (`Meter.reserve_again`).
        self.extra: list[Reservation] = []
        self.prompt: PromptEstimate | None = None
        self.output_cap: OutputCap | None = None  # the cap on each attempt's output (`_admit`)
        # The client's name for that cap, as a refusal for the worst case tells it to lower it (a Responses request
        # has no `max_tokens`, and OpenAI refuses one it is sent).
        self.cap_param = "max_tokens"
        # While a reservation is being written, a client that leaves does not cancel the request (the write may
        # land with nobody to release it): it is marked, and the request ends once the reservation is known.
        self.reserving = False
        self.client_left = False
        # The fallback models counted on their own per-model limits before their first attempt (None), or refused
        # by one of them (the 429): the request was admitted on the model it named (`Meter.admit_fallback`).
        self.fallbacks: dict[str, RateLimitError | None] = {}
        # What the request was counted on beyond its admission (a token count's requests a minute, a fallback's own
        # limits), for the `x-ratelimit-*` of an answer a fallback served (`Meter.served_headers`).
        self.counted: list[Counted] = []
        # What a model's own limits counted while nothing has been sent to it, by model (a fallback's, among `counted`;
        # a token count's, on the model asked for): given back when the request settles (`Meter.given_back`), but for
        # the limits that bind a model an attempt went out to.
        self.unsent_counts: dict[str, Counted] = {}
        self.sent_to: set[str] = set()  # the models an attempt went out to
        self.user: str | None = None  # the end user the client named, for attribution
        self.service_tier: str | None = None  # the OpenAI service tier asked, one priced apart from the plain price
        # The client asked `service_tier: "default"`: OpenAI runs and bills it at the plain price, whatever tier the
        # deployment runs a request that names none (or `auto`) at (`Router.unasked_tiers`).
        self.plain_tier = False
        # The API of a request in a provider's own format (`NativeCall.api`; none for the internal form): passed
        # through as written to each deployment that speaks it, with what only that API carries (the options below,
        # Anthropic's advisor tool), and translated, without them, for any other.
        self.native_api = ""
        # Options that change the model's price (`pricing.PRICED_PER_MODEL`) of a request passed through as written
        # in `native_api`: priced at each deployment that speaks that API (`pricing.with_options`).
        self.native_options: dict[str, str] = {}
        self.per_request_usd = 0.0  # options billed per request (web search)
        self.search_usd = 0.0  # the price of a search a provider's own search tool runs (`allow_searches`)
        self.searches = 0  # the most searches the request allows (reserved for)
        # Its translation, where that carries the search too (`ChatRequest.web_search`): a deployment whose provider
        # takes it as its own search tool (`ProviderAdapter.hosts_search`, asked of this request: Gemini before 3
        # takes none beside function tools) runs those searches, and is reserved and charged them.
        self.searched: ChatRequest | None = None
        # Anthropic's advisor tools the request offers (`allow_advisors`), or a thread's `continue` its thread holds
        # (`ThreadAnswer.advisors`, kept with the answer it continues): each one's model (its upstream id), the most
        # calls it may make and the most it writes per call, reserved for.
        self.advisors: tuple[tuple[str, int, int], ...] = ()
        # Where the client named each of `advisors` (`tools.<i>.model`; `thread` for those its thread holds): the
        # `param` of the 403 for one whose model the key may not use (`Charges._advisors_allowed`).
        self.advisor_params: tuple[str, ...] = ()
        # The advisor calls a stream cut before its final usage showed (`UpstreamStream.metered`): each charged its
        # reserved bound, as the provider bills them and its usage never said (`Charges._cost`).
        self.advised = 0
        # The config's models the `advisors` run as, counted on their own per-model limits before the first attempt
        # sent the tool (None: not yet; `Pipeline._count_advisors`), and what they counted while no such attempt has
        # gone out: given back when the request settles (`Meter.given_back`), as a fallback's unsent counts are.
        self.advisor_models: tuple[str, ...] | None = None
        self.unsent_advisors: list[Counted] = []
        # What each of `advisor_models` counted on its own limits (none: it has none), by model: once an attempt that
        # is sent the tool goes out, its tokens a minute are settled to the tokens the advisor used (`Meter.used`).
        self.advisor_counts: dict[str, Counted] = {}
        # An attempt that is sent the tool went out: its advisors may run, and the tokens the key chain's own `tpm`
        # counted for them (`Reservation.advice`) settle to those they ran (`Pipeline._advice_ran`), else none.
        self.advisor_sent = False
        self.audio_output = False  # it asks for audio output: priced at each model's `audio_output`, else not sent
        self.trace: Trace | None = None  # what its OpenTelemetry spans need, when OTLP export is on (tracing.py)
        # Its ledger line, once settled: the buffered Lambda function marks it when the answer cannot be delivered
        # (handler/api/answer_size.py), before its settlement is written.
        self.ledger_item: LedgerItem | None = None

    @property
    def named_model(self) -> str:
        """The model the client asked for as its log line and spans carry it: a name the config does not name as
        `ModelRegistry.model_named` writes it (cut, without a key in it), and without the secret alone of the
        request's key or an ancestor (`without_own_secret`): beside `key_id` on the line, it would be the key."""
        if self.model in REGISTRY.models:
            return self.model
        return without_own_secret(REGISTRY.model_named(self.model), self.lineage)

    @property
    def tier_unnamed(self) -> bool:
        """The request named no service tier (or `auto`): it runs at the tier its deployment runs such requests at
        (`Router.unasked_tiers`)."""
        return self.service_tier is None and not self.plain_tier

    @property
    def attempts(self) -> int:
        """The tries sent (or set out to be: a refused connection is one) among `route`'s entries, not those passed over
        with nothing sent: the EMF `fallbacks`, one less, counted every entry, so deployments passed over for their
        open breakers, as a request every one of whose breakers was open, counted as failovers."""
        return sum(not entry.endswith(PASSED_OVER) for entry in self.route)

    def headers(self) -> dict[str, str]:
        """The gateway's headers for this answer, as far as they are known."""
        headers = {"x-request-id": self.request_id}
        if self.attempt is not None:
            target = self.attempt.target
            headers["x-gateway-provider"] = target.provider
            headers["x-gateway-model"] = target.model
            headers["x-gateway-region"] = target.runs_in
        if self.route:
            headers["x-gateway-route"] = ", ".join(self.route)
        if self.dropped or self.inbound_dropped:
            # The names come from the client's body: redacted and clipped as any name it chose (a field named by
            # its key would be echoed whole, on a 200; by its key's secret alone, beside a log's key id), then
            # percent-encoded, so a header value stays Latin-1 with no CR/LF and the list's commas stay separators;
            # the brackets of `tools[web_search]` are kept as written.
            names = [kept_unkeyed(name, self.lineage, NAME_CHARS) for name in (*self.inbound_dropped, *self.dropped)]
            headers["x-gateway-dropped-params"] = ",".join(urllib.parse.quote(n, safe="[]") for n in names)
        if self.cost is not None:
            provider = self.cost.provider_usd
            headers["x-gateway-cost-usd"] = "unknown" if provider is None else usd(provider)
            headers["x-gateway-fee-usd"] = usd(self.cost.fee_usd)
        if self.budget_remaining is not None:
            headers["x-gateway-budget-remaining-usd"] = usd(self.budget_remaining)
        elif self.reservation is not None and self.reservation.budget_limit is not None:
            # Before the cost is known (a stream's head): what is left with the worst case held, the least it
            # can be once the request is settled; the exact figure rides in the stream's last `cost`.
            # (A worst case more for each attempt the provider may bill beside the answer.)
            held = remaining_usd(self.reservation, self.reservation.amount_usd * (1 + len(self.missed)))
            if held is not None:
                headers["x-gateway-budget-remaining-usd"] = usd(held)
        limits = self.limit_headers
        if limits:  # (as they hold now: an answer that outlived the minute they count in tells none)
            if isinstance(limits, RateHeaders):
                limits.tell(headers)
            else:
                headers.update(limits)
        total = (time.perf_counter() - self.started) * 1000
        gateway = max(0.0, total - self.store_ms - self.upstream_ms)
        headers["server-timing"] = (
            f"gateway;dur={gateway:.3f}, store;dur={self.store_ms:.3f}, upstream;dur={self.upstream_ms:.3f}"
        )
        return headers


# The outcomes `x-gateway-route` names a deployment or fallback passed over with, nothing sent to it: its open
# breaker, a request it cannot take, a fallback's own limit or one out of the key's scope.
PASSED_OVER = ("=breaker-open", "=unsupported", "=rate_limited", "=model_not_allowed")

# How near the request's deadline a timeout of its upstream read must come to be taken for the deadline's: a timer may
# run a little before its time.
CUT_SLACK_S = 0.01


def _bound(ex: Exchange) -> str:
    """The request's deadline (`Exchange.ends_at`), named: the client's (`x-gateway-deadline-ms`, or the Lambda
    invocation's time left), or the gateway's bound on a whole request (`gateway.timeouts.request`), the sooner."""
    asked, lifetime = ex.controls.deadline_s, ex.lifetime_s
    if lifetime is not None and (asked is None or lifetime < asked):
        return (
            f"the gateway's bound on a whole request, {lifetime:g} s (gateway.timeouts.request: every attempt, "
            "retries and fallbacks, a stream to its end),"
        )
    assert asked is not None
    return f"the deadline of {asked * 1000:.0f} ms (x-gateway-deadline-ms, or the Lambda invocation's remaining time)"


def deadline_passed(ex: Exchange, before: str) -> UpstreamTimeoutError:
    """The request's deadline passed (`_bound`) before `before`."""
    return UpstreamTimeoutError(f"{_bound(ex)} passed before {before}")


def too_short_to_send(ex: Exchange, left_s: float) -> UpstreamTimeoutError:
    """The request's deadline (`_bound`) leaves less than the least the gateway sends a request with (`CUT_SLACK_S`):
    nothing is sent (nor reserved, where it is known before the admission), so nothing is charged. Said as a deadline
    that passed before an answer, it would read as a provider that had been too slow."""
    return UpstreamTimeoutError(
        f"{_bound(ex)} left {max(left_s, 0.0) * 1000:.1f} ms to send the request, less than the "
        f"{CUT_SLACK_S * 1000:.0f} ms the gateway needs at least to try one: nothing was sent, nothing is charged"
    )


def shut_down_before(ex: Exchange | None, streamed: bool = False) -> ServiceUnavailableError:
    """`gateway serve` stopped (SIGTERM, Ctrl-C) and its `--shutdown-grace` ran out before this request's answer
    (`streamed`: before its stream's end): the client's 503, retryable, saying what the request is charged. Its
    ledger line is the one a request whose client left leaves: status 499, the reserved worst case if the provider
    had not answered yet (it may still run the request and bill it), what a stream produced if it had begun."""
    said = "the gateway shut down (its --shutdown-grace for answers still going ran out)"
    cost = ex.cost if ex is not None else None
    if streamed:
        return ServiceUnavailableError(
            f"{said} before the provider finished this stream: what it produced is charged (the cost beside this "
            "error); the request may be sent again",
            code="server_shutting_down",
        )
    if cost is None or not (cost.total_usd or cost.usage.prompt_tokens or cost.usage.completion_tokens):
        return ServiceUnavailableError(
            f"{said} before this request was answered; nothing is charged: send it again", code="server_shutting_down"
        )
    usage = cost.usage
    tokens = f"{usage.prompt_tokens} input and {usage.completion_tokens} output tokens"
    total = cost.total_usd
    charged = f"${usd(total)} ({tokens})" if total is not None else f"{tokens}, at no known price"
    return ServiceUnavailableError(
        f"{said} before the provider answered: this request is charged its reserved worst case, {charged}, as the "
        "provider may still run it and bill it; it may be sent again",
        code="server_shutting_down",
    )
