"""What a request is charged beyond its tokens' prices, and at which prices: the options that change what a provider
bills (a service tier, web search, audio output, Anthropic's fast mode and US-only inference, stored completions),
priced as the operator configured them or refused, and the price and cost of an attempt's answer as it was served.
A mixin of `Pipeline` (handler/pipeline/pipeline.py), which the routes call these through.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from handler.config import OPENAI_TIERS, PLAIN_TIERS, SERVICE_TIER, Price
from handler.errors import InvalidRequestError, PermissionDeniedError, StrictParamsError
from handler.pipeline.keys import allows_model
from handler.pipeline.pricing import (
    Cost,
    as_served,
    asked_options,
    cost_of,
    fee_for,
    option_rate,
    plausible,
    price_for,
    runs_as,
    scaled,
    upstream_price,
    with_options,
    worst_case_usd,
)
from handler.ports import Served
from handler.redaction import clipped, echoed, redact_message
from handler.schemas import DEFAULT_SEARCHES

if TYPE_CHECKING:
    from collections.abc import Collection

    from handler.config import FeeConfig
    from handler.pipeline.exchange import Exchange
    from handler.pipeline.gateway import Gateway
    from handler.pipeline.routing import Attempt
    from handler.ports import NativeCall
    from handler.schemas import ChatRequest, Usage

log = logging.getLogger("gateway")

# The provider types whose own search tool the built-in table's `web_search` prices (Anthropic's web search, Gemini's
# Grounding with Google Search).
OWN_SEARCH_TOOLS = frozenset({"anthropic", "gemini"})

# The calls to Anthropic's advisor tool a request may make when the tool sets no `max_uses` (Anthropic's own default is
# no limit): the limit sent, and the worst case reserved. The advisor is consulted at the few moments a plan matters.
DEFAULT_ADVISOR_USES = 3
# The most an advisor writes per call (its thinking and its advice) when the tool sets no `max_tokens` and the config
# names no `max_output_tokens` of its model: the limit sent (Anthropic's tool bounds the advisor's output per call
# with it), and the worst case reserved. Anthropic's advisor typically writes 1,400 to 1,800 tokens.
DEFAULT_ADVICE_TOKENS = 8_192


class Charges:
    """The request's priced options and its attempts' prices and costs (see the module docstring)."""

    gateway: Gateway
    fee: FeeConfig

    def _price_options(
        self, ex: Exchange, req: ChatRequest, plan: list[Attempt], native: Collection[Attempt] = ()
    ) -> None:
        """Options that change what the provider bills: priced as configured, else refused; `store: true`
        (the tenant's data kept in the operator's provider account) dropped unless the operator allows it. A
        service tier is priced by each deployment's model (`Attempt.tiers`): refused here where every deployment of
        the plan would be sent it (`native`: those a request passed through as written goes to; the rest as their
        adapter says, `ProviderAdapter.takes_service_tier`) and no model of the plan prices it, and at each
        deployment that would be sent it unpriced (`_tier_priced`). A plan none of whose deployments is sent it
        (Claude, Gemini, DeepSeek, Bedrock) is served at its own prices, the tier left out and named, `priority` as
        `flex`. A tier OpenAI's API does not take (`OPENAI_TIERS`) and no model of the plan prices is refused as
        OpenAI refuses it, whichever deployment would serve the request: the same request gets the same answer from
        every one."""
        extra = req.model_extra
        if not extra:
            return
        options = self.gateway.config.gateway.priced_options
        tier = extra.get("service_tier")
        ex.plain_tier = tier == "default"
        if tier is not None and tier not in PLAIN_TIERS:
            if tier not in OPENAI_TIERS and not any(tier in attempt.taken for attempt in plan):
                raise unknown_tier(tier)  # (a tier of another API's, Groq's `performance`, where the config prices it)
            sent = [
                attempt for attempt in plan if attempt in native or attempt.adapter.takes_service_tier(attempt.target)
            ]
            if len(sent) == len(plan) and not any(tier in attempt.taken for attempt in sent):
                raise unpriced_tier(tier, ex.model)
            ex.service_tier = tier
        if extra.get("web_search_options") is not None:
            if options.web_search_usd is None:
                raise InvalidRequestError(
                    "web search is not priced on this gateway (gateway.priced_options.web_search_usd)",
                    param="web_search_options",
                )
            ex.per_request_usd += options.web_search_usd  # (OpenAI's search models: per request)
            # (Claude and Gemini run it as their own search tool, billed per search instead: `_searches_at`)
            ex.search_usd, ex.searches, ex.searched = options.web_search_usd, DEFAULT_SEARCHES, req
        modalities = extra.get("modalities")
        wants_audio = extra.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities)
        if wants_audio and not options.audio_output:
            raise InvalidRequestError(
                "audio output is not priced on this gateway (gateway.priced_options.audio_output)", param="modalities"
            )
        ex.audio_output = wants_audio
        if extra.get("store") is True and not options.provider_store:
            del extra["store"]
            if ex.controls.strict:
                raise StrictParamsError(
                    "store: true would keep this request in the provider's account; this gateway does not allow it",
                    param="store",
                )
            ex.inbound_dropped.append("store")
            if extra.pop("metadata", None) is not None:
                # The stored completion's tags: OpenAI refuses `metadata` unless `store` is on ("The 'metadata'
                # parameter is only allowed when 'store' is enabled"), so it goes with it.
                ex.inbound_dropped.append("metadata")

    @staticmethod
    def _price_native_options(ex: Exchange, plan: list[Attempt], call: NativeCall) -> None:
        """Options of a request passed through as written that change what its model costs (`asked_options`:
        Anthropic's fast mode, US-only inference): priced at every deployment in the plan that it passes through
        to, by that model's price, else refused. A deployment that gets the translation is sent none of them (the
        route names them dropped), so they do not change its price."""
        asked = asked_options(call)
        if not asked:
            return
        for attempt in plan:
            if not attempt.adapter.speaks(call.api, attempt.target):
                continue
            price = price_for(attempt.model, attempt.spec, attempt.target.model)
            for name, value in asked.items():
                if option_rate(price, name, value) is None:
                    raise InvalidRequestError(
                        f"{name} '{value}' is not priced for model '{attempt.model}' on this gateway (no multiplier "
                        f"for it in the model's `price.options.{name}`)",
                        param=name,
                    )
        ex.native_options = asked

    @staticmethod
    def search_limit(value: Any, param: str) -> int:
        """A web search tool's limit as the client set it (Anthropic's `max_uses`, the Responses API's
        `max_tool_calls`): `DEFAULT_SEARCHES` when unset or null (the SDKs' types allow null), else a positive
        integer or the client's 400."""
        return DEFAULT_SEARCHES if value is None else positive(value, param)

    def allow_searches(self, ex: Exchange, most: int, names: list[str]) -> bool:
        """A provider's own web search tool (`names`, as `x-gateway-dropped-params` would name them) in a
        request that may run up to `most` searches: priced per search at `priced_options.web_search_usd`, the
        worst case reserved (True); else not to be sent (False; a 400 under `x-gateway-strict`)."""
        price = self.gateway.config.gateway.priced_options.web_search_usd
        if price is None:
            if ex.controls.strict:
                raise StrictParamsError(
                    "web search is not priced on this gateway (gateway.priced_options.web_search_usd)", param=names[0]
                )
            return False
        ex.search_usd, ex.searches = price, most
        return True

    @staticmethod
    def _sent_as_written(ex: Exchange, attempt: Attempt) -> bool:
        """Whether `attempt` gets the request as its client wrote it, with what only the request's own API carries (a
        provider's own tools: Anthropic's web search and advisor, the Responses API's hosted web search; the options
        `_price_native_options` prices): a deployment that speaks that API (`Exchange.native_api`). Any other gets the
        translation, which leaves them out and names them dropped: its model runs none of them, and is billed none."""
        return attempt.adapter.speaks(ex.native_api, attempt.target)

    @staticmethod
    def _searches_at(ex: Exchange, attempt: Attempt) -> int:
        """The most searches `attempt` may run (`Exchange.searches`, the limit `allow_searches` sent): none where it
        gets the request translated (`_sent_as_written`), which leaves the provider's search tool out and names it
        dropped (`tools[web_search]`, `tools.web_search_*`), so that no search can run there. Counted at every attempt,
        a Responses request with the hosted tool (Codex sends it) to Claude, Gemini, DeepSeek or a Chat Completions
        server would be held ten searches at $0.01, $0.100042 for its own $0.00004: a 402 under
        `x-gateway-max-cost-usd: 0.01` and on a key with $0.05 left, and $0.100042 charged once cut unanswered.
        A translation that carries the search (`Exchange.searched`) runs them where the provider takes it as
        its own search tool (`ProviderAdapter.hosts_search`: Claude on Anthropic, Gemini 3, Gemini before 3 beside
        no function tools), sent the same limit."""
        if not ex.searches:
            return 0
        if Charges._sent_as_written(ex, attempt) or Charges._searched_at(ex, attempt):
            return attempt.adapter.billed_searches_at_most(attempt.target, ex.searches)
        return 0

    @staticmethod
    def _searched_at(ex: Exchange, attempt: Attempt) -> bool:
        """Whether `attempt` gets the request's search translated to its provider's own search tool: asked of the
        request, not of the provider alone. Gemini before 3 is sent none beside function tools (Codex offers both on
        every turn): held and charged ten searches there all the same, a request whose own worst case is $0.000192 would
        be held $0.100192, a 402 under `x-gateway-max-cost-usd: 0.05`, and charged it once cut unanswered."""
        return ex.searched is not None and attempt.adapter.hosts_search(attempt.target, ex.searched)

    def allow_advisors(self, ex: Exchange, tools: list[Any]) -> None:
        """Anthropic's advisor tool (`advisor_*` among `tools`) runs another model inside the answer, billed at that
        model's prices: a model the key's chain may use where an attempt is sent the tool (`_advisors_allowed`, once
        the plan is known), each tool's worst case reserved (`_advisors_usd`). It is called at most `max_uses` times
        (`DEFAULT_ADVISOR_USES`, sent, when the tool sets none or null), each writing at most its `max_tokens`, else
        its model's `max_output_tokens` where the config names one, else `DEFAULT_ADVICE_TOKENS` (either sent as the
        tool's `max_tokens`). A limit that is not a positive integer is the client's 400."""
        advisors = []
        params = []
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not str(tool.get("type") or "").startswith("advisor_"):
                continue
            uses = tool.get("max_uses")
            tool["max_uses"] = uses = DEFAULT_ADVISOR_USES if uses is None else positive(uses, f"tools.{i}.max_uses")
            model = tool.get("model")
            model = model if isinstance(model, str) else ""  # (Anthropic's 400, which costs nothing)
            written = tool.get("max_tokens")
            if written is not None:
                written = positive(written, f"tools.{i}.max_tokens")
            else:
                # The bound reserved is the one sent, the config's ceiling too: untold, Anthropic's advisor could
                # write past what the budget holds for it.
                tool["max_tokens"] = written = self._advisor_ceiling(model) or DEFAULT_ADVICE_TOKENS
            advisors.append((model, uses, written))
            params.append(f"tools.{i}.model")
        ex.advisors, ex.advisor_params = tuple(advisors), tuple(params)

    def _advisor_models(self, model: str) -> list[str]:
        """The config's models an advisor's model (`model`: its upstream id) runs as (`runs_as`: those that deploy it
        or are named so, by that id or by another the price table takes for the same model), as its price is found
        (`upstream_price`)."""
        return runs_as(self.gateway.config.models, model)

    def _advisor_allowed(self, ex: Exchange, model: str, param: str) -> None:
        """Refuses an advisor whose model (`model`: its upstream id) the key may not use: Anthropic runs it inside
        the answer, billed at its prices, so the key and every ancestor must allow a model of the config's that it
        runs as (`_advisor_models`); under scoped `models`, an id the config deploys as none is refused too (the
        scopes name the gateway's models: nothing says whether they hold it). A chain with every model (`*`) may
        call any advisor. A key limited to Sonnet would reach Opus through the tool, charged $0.037709 where Sonnet
        alone is about $0.0002."""
        if all("*" in holder.models for holder in ex.lineage):
            return
        names = self._advisor_models(model)
        if not any(allows_model(ex.lineage, name) for name in names):
            raise advisor_not_allowed(model, param, deployed=bool(names))

    def _advisors_allowed(self, ex: Exchange) -> None:
        """Refuses a request whose advisors (`Exchange.advisors`) run a model the key may not use (`_advisor_allowed`),
        each named where the client named it (`Exchange.advisor_params`). Asked only where an attempt of the plan is
        sent the tool (`_sent_as_written`: `Pipeline._admit`, as `Pipeline._count_advisors` counts them): a translation
        leaves it out and names it dropped, and its model calls no advisor, so a plan of translations alone is held to
        nothing for it. Asked of every request, a key limited to `gpt` (on OpenAI) would be refused 403 for an Opus
        advisor nothing would run, where a key with every model is answered, the tool named dropped. A
        thread's `continue` is held to the advisors its thread holds (as the answer it continues keeps them:
        `ThreadAnswer.advisors`): it sends no `tools`, and Anthropic calls the thread's advisor again. The key that
        made the thread was allowed it, and the continuing key is that one or an ancestor, whose chain holds no more;
        but the config's models, which the scopes name, may have changed since (another instance's config, or before
        a rollout)."""
        for (model, _, _), param in zip(ex.advisors, ex.advisor_params, strict=True):
            if model:
                self._advisor_allowed(ex, model, param)

    def _advisor_ceiling(self, model: str) -> int | None:
        """The `max_output_tokens` the config names for an advisor's model (`model`: its upstream id), of a model it
        runs as (`_advisor_models`)."""
        models = self.gateway.config.models
        for name in self._advisor_models(model):
            if models[name].max_output_tokens:
                return models[name].max_output_tokens
        return None

    def _advisors_usd(
        self, ex: Exchange, attempt: Attempt, prompt: int, written: int, calls: int | None = None
    ) -> float:
        """The most the advisors of a request (`Exchange.advisors`) can be billed at `attempt`, before the fee, whose
        worst case reads `prompt` and writes `written` tokens: each call reads the conversation as the executor has
        it then (the prompt, what the executor wrote so far, and the advice before it) and writes its bound, at the
        dearest input and output prices of the advisor's model (`upstream_price`), else of the executor's, as its
        tokens are charged once they are known (`_others_usd`). `calls`: only that many calls, those a stream cut
        before its usage showed, each tool's in turn, at most all their `max_uses`; a request with no advisor known
        (none sent, none its thread's record holds) at the default's bound, each call shown, which Anthropic billed
        all the same. Nothing at an attempt that is not sent
        the tool: only a deployment the request passes through to as written (Anthropic's Messages API) runs it; a
        translation leaves it out and names it dropped (`tools.advisor_*`), and its model calls no advisor. Reserved
        there too, an advised Sonnet request behind a fallback at $150/$600 a million would be held $3.46 for the
        fallback's $2.47, and that fallback, cut unanswered, charged $0.94 for its own $0.07."""
        if not self._sent_as_written(ex, attempt):
            return 0.0
        from handler.config import FeeConfig  # (only a request with the advisor tool gets here)

        no_fee = FeeConfig()
        total = 0.0
        advisors = ex.advisors or (("", DEFAULT_ADVISOR_USES, DEFAULT_ADVICE_TOKENS),)
        left = calls
        if left is not None and ex.advisors:
            # A call past the tools' `max_uses` is refused by Anthropic (`max_uses_exceeded`), not run nor billed,
            # though a stream shows its block: charged, a cut stream would pass its reserve.
            left = min(left, sum(most for _, most, _ in advisors))
        for i, (model, most, advice) in enumerate(advisors):
            uses = most
            if left is not None:
                uses = left if i == len(advisors) - 1 else min(most, left)
                left -= uses
                if uses < 1:
                    continue
            price = upstream_price(self.gateway.config.models, model) or self._price(ex, attempt, worst=True)
            read = uses * (prompt + written) + advice * uses * (uses - 1) // 2
            total += worst_case_usd(read, uses * advice, price, no_fee) or 0.0
        return total

    @staticmethod
    def refuse_unpriced_tools(ex: Exchange, names: list[str]) -> None:
        """Tools the provider runs and bills beyond tokens, which this gateway cannot price (`names`, as
        `x-gateway-dropped-params` would name them): the route leaves them out; under `x-gateway-strict`, a 400."""
        if names and ex.controls.strict:
            raise StrictParamsError(
                f"{names[0]} is billed by the provider beyond tokens, which this gateway does not price", param=names[0]
            )

    @staticmethod
    def _tier_priced(ex: Exchange, attempt: Attempt, dropped: list[str]) -> None:
        """Refuses the service tier asked to a deployment that would be sent it (`dropped`: what it is not sent) and
        that this gateway does not take for its model (`Attempt.taken`): the next may."""
        tier = ex.service_tier
        if tier is not None and tier not in attempt.taken and SERVICE_TIER not in dropped:
            raise unpriced_tier(tier, attempt.model)

    @staticmethod
    def _audio_priced(attempt: Attempt) -> None:
        """Refuses audio output to a deployment whose model's price has no `audio_output`: its audio tokens would be
        billed (and reserved) at the text price, a tenth or less of what the provider charges for them."""
        price = price_for(attempt.model, attempt.spec, attempt.target.model)
        if price is not None and price.audio_output is None:
            raise InvalidRequestError(
                f"audio output is not priced for model '{attempt.model}' on this gateway (no `audio_output` in "
                "its price)",
                param="modalities",
            )

    def _price(self, ex: Exchange, attempt: Attempt, served: Served | None = None, worst: bool = False) -> Price | None:
        """`attempt`'s price for this request: with the options it passes through (at the values the answer was
        `served` at, once it says), times its model's multiplier for the service tier (`Attempt.tiers`). `worst`:
        the most it can be billed at, for the worst case reserved before anything is sent: a request that names no
        tier (or `auto`: the project's default) at the tier its deployment runs such requests at
        (`Router.unasked_tiers`); one that names `default` at the plain price, as OpenAI bills it."""
        price = price_for(attempt.model, attempt.spec, attempt.target.model)
        asked = ex.native_options if ex.native_options and self._sent_as_written(ex, attempt) else {}
        if served is not None and served.options:  # (the answer says how it ran: as asked or not, billed so)
            price = with_options(price, as_served(price, asked, served.options))
        elif asked:
            price = with_options(price, asked)
        tier = ex.service_tier
        if tier is None and served is None:
            unasked = self._learned_tier(ex, attempt) if worst else None
            return price if unasked is None else scaled(price, max(attempt.tiers.get(unasked, 1.0), 1.0))
        # A service tier the deployment was not sent (dropped and named, as its own request was built: a fallback
        # that served and dropped it says nothing of an attempt cut unanswered that was sent it) is not billed; one
        # the answer says it ran at is billed at that tier, as OpenAI bills it (`priority` is served at `default`
        # past its ramp limits).
        dropped = ex.dropped_at.get(id(attempt), ex.dropped)
        multiplier = attempt.tiers.get(tier, 1.0) if tier is not None and SERVICE_TIER not in dropped else 1.0
        ran = served.options.get(SERVICE_TIER) if served is not None else None
        if ran is not None:
            multiplier = 1.0 if ran == "default" else attempt.tiers.get(ran, multiplier)
        if worst:
            # Before it is sent, whether the deployment takes the tier is not known: one that drops it (Azure,
            # another provider) is billed at the model's own prices, so a tier below them (flex) reserves those.
            multiplier = max(multiplier, 1.0)
        return scaled(price, multiplier)

    def _ran_unasked(self, ex: Exchange, attempt: Attempt | None, served: Served | None, answered: bool) -> None:
        """The tier a request that named no service tier ran at, as its answer says (`served`; None and `answered`: an
        answer that said nothing beyond the default tier): the tier its deployment's such requests are reserved at
        follows it (`Router.ran_unasked`). An OpenAI project whose default tier is priority runs and bills every such
        request at priority; reserved at the plain price, requests in flight at once could pass a budget by the
        difference. Until the first answer says so (or the config does, `default_service_tier`), they still can."""
        if not ex.tier_unnamed or attempt is None:
            return
        ran = served.options.get(SERVICE_TIER) if served is not None else "default" if answered else None
        if ran is not None:
            self.gateway.router.ran_unasked(attempt, ran)

    def _unanswered_tier(self, ex: Exchange, attempt: Attempt) -> Served | None:
        """How an attempt the provider may bill but never answered is taken to have been served, for the worst case
        it is charged: a request that names no service tier (or `auto`) at the tier its deployment runs such requests
        at (`Router.unasked_tiers`), as its worst case was reserved; else as asked (None)."""
        tier = self._learned_tier(ex, attempt)
        return None if tier is None else Served({SERVICE_TIER: tier})

    def _learned_tier(self, ex: Exchange, attempt: Attempt) -> str | None:
        """The tier `attempt`'s deployment runs `ex` at, where `ex` named none (`Exchange.tier_unnamed`) and the
        config or an answer said a dearer one than the default (`Router.unasked_tiers`)."""
        return self.gateway.router.unasked_tiers.get(id(attempt)) if ex.tier_unnamed else None

    def _cost(
        self,
        ex: Exchange,
        attempt: Attempt,
        usage: Usage,
        served: Served | None = None,
        reserved: bool = False,
        advised: int = 0,
    ) -> Cost:
        """What `usage` at `attempt` costs, with the options billed per request; `served`: what the answer says of
        how it was served (the speed it ran at, the tokens other models ran for it). `reserved`: `usage` is the
        attempt's worst case (`Pipeline._worst`), charged for an answer never seen, with its advisors' worst case
        too, which the provider may have billed beside it. `advised`: the advisor calls the answer showed before it
        was cut (`Exchange.advised`), the answer's own: never an earlier attempt's. The samplings the answer's
        usage holds (`Served.samplings`) are priced each at its own tier, with the rest of `usage` at the tier of
        the answer's own sampling."""
        samplings = served.samplings if served is not None and not reserved else ()
        cost = cost_of(usage, self._price(ex, attempt, served), self.fee, samplings)
        # (At most the searches reserved, `Exchange.searches`: Gemini's search takes no limit, and Gemini 3 bills each
        # query it ran, past the reservation's.)
        searches = min(usage.web_searches, ex.searches)
        searched = searches * self._search_usd(ex, attempt) if searches else 0.0
        apart = self._per_request_usd(ex, attempt) + searched
        if served is not None and served.others:
            apart += self._others_usd(ex, attempt, served)
        if reserved and ex.advisors:
            apart += self._advisors_usd(ex, attempt, usage.prompt_tokens, usage.completion_tokens)
        elif advised:  # (a stream cut before its usage: the advisor calls it showed)
            apart += self._advisors_usd(ex, attempt, usage.prompt_tokens, usage.completion_tokens, advised)
        if apart and cost.provider_usd is not None:
            provider = cost.provider_usd + apart
            cost = cost._replace(provider_usd=provider, fee_usd=fee_for(provider, self.fee))
        return cost

    @staticmethod
    def _search_usd(ex: Exchange, attempt: Attempt) -> float:
        """The price of a search `attempt` runs: its model's own (`price.web_search`: the config's, else the built-in
        table's at the provider whose search tool it prices, Claude's on Anthropic, $10 a thousand searches, and
        Gemini's, $35 a thousand grounded prompts for 2.5), else the gateway's (`priced_options.web_search_usd`,
        `Exchange.search_usd`). One price for every provider billed at least one of them wrong: at $0.01 a Gemini 2.5
        grounded prompt was charged $0.01 for Google's $0.035."""
        price = attempt.spec.price
        if not isinstance(price, Price):
            # The built-in table's is the price of the provider's own search tool, where that provider runs it: a
            # compatible server serving Claude (LiteLLM, OpenRouter) bills its own (found by review, mergerev36).
            if attempt.target.provider_type not in OWN_SEARCH_TOOLS:
                return ex.search_usd
            price = price_for(attempt.model, attempt.spec, attempt.target.model)
        own = None if price is None else price.web_search
        return ex.search_usd if own is None else own

    @staticmethod
    def _per_request_usd(ex: Exchange, attempt: Attempt) -> float:
        """The options billed per request (web search), unless `attempt` is not sent them: where its deployment does
        not take `web_search_options` as written (`ProviderAdapter.takes_search_options`, decided before the request
        is built, so that the reservation holds the fee only where it may be billed), or its request, as built, left
        it out (dropped and named: `Exchange.dropped_at`). Azure's Chat Completions at a dated api-version, Mistral
        and Bedrock have no `web_search_options`, and were reserved the fee ($0.010132 for $0.000132, a 402 under a
        $0.005 cap); nor has a translation for Claude or Gemini, which runs the search as its own tool, each search
        charged instead (`_searches_at`), or, on Gemini before 3 beside function tools, none."""
        if ex.per_request_usd and (
            not attempt.adapter.takes_search_options(attempt.target)
            or "web_search_options" in ex.dropped_at.get(id(attempt), ex.dropped)
        ):
            return 0.0
        return Charges._search_usd(ex, attempt) if ex.per_request_usd else 0.0

    def _others_usd(self, ex: Exchange, attempt: Attempt, served: Served) -> float:
        """What the tokens other models ran for the answer cost (Anthropic's advisor), each at its own model's price
        (`upstream_price`: the config's, else the built-in table's). A model with none is never free: its tokens are
        priced at the answer's own model's (the least an advisor costs: Anthropic pairs a model only with an advisor
        at least as capable), and the gap is logged."""
        total = 0.0
        for model, usage in served.others:
            if not plausible(usage):
                log.warning("another model's usage refused as impossible", extra={"request_id": ex.request_id})
                continue
            price = upstream_price(self.gateway.config.models, model)
            if price is None:
                log.warning(
                    "a model with no price served part of this answer, priced at the answer's own model's",
                    extra={"request_id": ex.request_id, "unpriced_model": redact_message(model)[:100]},
                )
                price = self._price(ex, attempt, served)
            total += cost_of(usage, price, self.fee).provider_usd or 0.0
        return total


def positive(value: Any, param: str) -> int:
    """A limit the client set (`param`): a positive integer, else the client's 400."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{param} must be a positive integer", param=param)
    return value


def advisor_not_allowed(model: str, param: str, deployed: bool) -> PermissionDeniedError:
    """The 403 for an advisor whose model (`model`, its upstream id) is outside the scopes of the key (or an
    ancestor), as a model named so is (`errors.model_not_allowed`); `deployed`: the config has a model that runs it."""
    why = "the models that deploy it are" if deployed else "it is none this gateway deploys, so it is"
    return PermissionDeniedError(
        f"this key may not use model '{clipped(model)}' (the advisor tool's, which Anthropic runs for the answer): "
        f"the key is valid, {why} outside its scopes (GET /v1/models lists the models it may use)",
        code="model_not_allowed",
        param=param,
    )


def unknown_tier(tier: object) -> InvalidRequestError:
    """The refusal of a `service_tier` OpenAI's API does not take, in its words (the value echoed only if short: a key
    pasted there is not)."""
    said = (
        f"Invalid value for 'service_tier': {echoed(tier)}."
        if isinstance(tier, str)
        else "Invalid type for 'service_tier': expected a string."
    )
    return InvalidRequestError(
        f"{said} Supported values are: {', '.join(map(repr, OPENAI_TIERS))}", param="service_tier"
    )


def unpriced_tier(tier: object, model: str) -> InvalidRequestError:
    """The refusal of a service tier that `model` has no price for on this gateway."""
    return InvalidRequestError(
        f"service_tier '{tier}' is not priced for model '{model}' on this gateway (no multiplier for it in the "
        "model's `price.options.service_tier`, nor in gateway.priced_options.service_tier)",
        param="service_tier",
    )
