"""Prices, costs, fees and worst cases."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.providers.registry import REGISTRY
from handler.config import FeeConfig, ModelConfig, Price, load_config
from handler.entry.cli import main as cli_main
from handler.pipeline.pricing import (
    PromptEstimate,
    as_served,
    asked_options,
    builtin_prices,
    cost_of,
    estimate_prompt_tokens,
    plausible,
    predicted_tokens,
    price_for,
    prompt_estimate,
    runs_as,
    sent_as_written,
    upstream_price,
    usd,
    with_options,
    worst_case_usd,
)
from handler.ports import MESSAGES_API, RESPONSES_API, NativeCall
from handler.schemas import ChatRequest, Usage

NO_FEE = FeeConfig()


def spec(price: object = None) -> ModelConfig:
    return ModelConfig.model_validate({"deployments": [{"provider": "p", "model": "m"}], "price": price})


def test_cost_splits_uncached_cached_and_cache_write() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    cost = cost_of(Usage.of(prompt=1000, completion=100, cached=600, cache_write=200), price, NO_FEE)
    expected = (200 * 3.0 + 600 * 0.3 + 200 * 3.75 + 100 * 15.0) / 1e6
    assert cost.provider_usd == pytest.approx(expected, abs=1e-15)
    assert cost.fee_usd == 0 and cost.total_usd == cost.provider_usd


def test_a_cost_carries_no_float_arithmetic_noise() -> None:
    """11 and 9 tokens at $0.15 and $0.60 per million come to 7.0499999999999986e-06 in float arithmetic; the
    header read `x-gateway-cost-usd: 0.0000070499999999999986`."""
    cost = cost_of(Usage.of(11, 9), Price(input=0.15, output=0.6), NO_FEE)
    assert cost.provider_usd == 7.05e-06 and usd(cost.total_usd or 0) == "0.00000705"
    fee = cost_of(Usage.of(11, 9), Price(input=0.15, output=0.6), FeeConfig(percent=3, per_request_usd=0.0001))
    assert (fee.fee_usd, fee.total_usd) == (0.0001002115, 0.0001072615)
    assert (usd(0.0), usd(3.0), usd(2.5)) == ("0", "3", "2.5")  # x-gateway-fee-usd: 0, as the interface writes it
    assert [usd(v or 0) for v in (fee.provider_usd, fee.fee_usd, fee.total_usd)] == [
        "0.00000705",
        "0.0001002115",
        "0.0001072615",
    ]


def test_long_context_tier_applies_above_threshold() -> None:
    table = builtin_prices()
    sonnet = table.find("claude-sonnet-4-5-20250929")
    assert sonnet is not None and sonnet.long_context is not None
    short = cost_of(Usage.of(200_000, 0), sonnet, NO_FEE).provider_usd
    long = cost_of(Usage.of(200_001, 0), sonnet, NO_FEE).provider_usd
    assert short == pytest.approx(0.6) and long == pytest.approx(200_001 * 6.0 / 1e6)


@pytest.mark.parametrize(
    ("compaction", "answer", "billed"),
    [
        # Anthropic's compaction docs' example: neither sampling past 200k, both at $3/$15 (was $1.31925, all of
        # it at $6/$22.50 on 203,000 input tokens).
        ((180_000, 3_500), (23_000, 1_000), (180_000 * 3.0 + 3_500 * 15.0 + 23_000 * 3.0 + 1_000 * 15.0) / 1e6),
        # A compaction past 200k at the long tier, the answer's sampling on the summary at the base tier.
        ((250_000, 3_500), (23_000, 1_000), (250_000 * 6.0 + 3_500 * 22.5 + 23_000 * 3.0 + 1_000 * 15.0) / 1e6),
        # The answer's own sampling past 200k at the long tier, the compaction under it at the base tier.
        ((180_000, 3_500), (210_000, 1_000), (180_000 * 3.0 + 3_500 * 15.0 + 210_000 * 6.0 + 1_000 * 22.5) / 1e6),
    ],
    ids=["neither-long", "compaction-long", "answer-long"],
)
def test_a_compaction_and_the_answers_sampling_are_each_priced_at_the_tier_of_their_own_input(
    compaction: tuple[int, int], answer: tuple[int, int], billed: float
) -> None:
    """A compacted request is two samplings of the model: the compaction reads the conversation, the answer's
    sampling the summary. Anthropic prices each on its own input: the usage summed them and priced all of it at the
    tier of the sum (review). The line's token counts are still both samplings'."""
    from adapters.providers.anthropic.wire import WireUsage

    wire = WireUsage.model_validate(
        {
            "input_tokens": answer[0],
            "output_tokens": answer[1],
            "iterations": [
                {"type": "compaction", "input_tokens": compaction[0], "output_tokens": compaction[1]},
                {"type": "message", "input_tokens": answer[0], "output_tokens": answer[1]},
            ],
        }
    )
    usage, served = wire.to_usage(), wire.served()
    assert served is not None and [s.prompt_tokens for s in served.samplings] == [compaction[0]]
    sonnet = builtin_prices().find("claude-sonnet-4-5-20250929")
    cost = cost_of(usage, sonnet, NO_FEE, served.samplings)
    assert cost.provider_usd == pytest.approx(billed, abs=1e-12)
    assert (cost.usage.prompt_tokens, cost.usage.completion_tokens) == (
        sum(p[0] for p in (compaction, answer)),
        sum(p[1] for p in (compaction, answer)),
    )


def test_fee_is_shown_apart_and_unknown_price_is_not_zero() -> None:
    fee = FeeConfig(percent=10, per_request_usd=0.001)
    cost = cost_of(Usage.of(1_000_000, 0), Price(input=1.0, output=2.0), fee)
    assert cost.provider_usd == pytest.approx(1.0) and cost.fee_usd == pytest.approx(0.101)
    unknown = cost_of(Usage.of(10, 10), None, NO_FEE)
    assert unknown.provider_usd is None and unknown.total_usd is None


def test_price_lookup_order() -> None:
    assert price_for("x", spec({"input": 9, "output": 9}), "gpt-4o-mini") == Price(input=9, output=9)
    assert price_for("x", spec("unknown"), "gpt-4o-mini") is None
    found = price_for("x", spec(), "gpt-4o-mini-2024-07-18")
    assert found is not None and found.input == 0.15
    assert price_for("gpt-4o", spec(), "my-azure-deployment") == builtin_prices().prices["gpt-4o"]


def test_worst_case_covers_the_actual_cost() -> None:
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "héllo wörld " * 50}]})
    estimate = estimate_prompt_tokens(req)
    assert estimate >= len("héllo wörld " * 50) // 4
    price = Price(input=1.0, output=4.0)
    worst = worst_case_usd(estimate, 100, price, NO_FEE)
    actual = cost_of(Usage.of(estimate, 100), price, NO_FEE).provider_usd
    assert worst is not None and actual is not None and worst >= actual
    assert worst_case_usd(10, 10, None, NO_FEE) is None


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_usd_is_the_floats_exact_shortest_decimal_without_exponent(value: float) -> None:
    text = usd(value)
    assert "e" not in text.lower()
    assert text == format(Decimal(repr(value)), "f").removesuffix(".0")  # (a whole amount: `0`, not `0.0`)
    assert float(text) == value


def test_caching_savings_are_reads_at_the_full_price_minus_their_cost_less_the_write_premium() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    cost = cost_of(Usage.of(prompt=1000, completion=100, cached=600, cache_write=200), price, NO_FEE)
    assert cost.cache_savings_usd == pytest.approx((600 * (3.0 - 0.3) - 200 * (3.75 - 3.0)) / 1e6, abs=1e-15)
    writes_only = cost_of(Usage.of(prompt=1000, completion=0, cache_write=1000), price, NO_FEE)
    assert writes_only.cache_savings_usd == pytest.approx(-1000 * 0.75 / 1e6)  # caching cost more than it saved
    assert cost_of(Usage.of(1000, 10), price, NO_FEE).cache_savings_usd == 0
    assert cost_of(Usage.of(1000, 10, cached=500), None, NO_FEE).cache_savings_usd == 0  # unpriced: unknown, not saved


def test_an_hours_cache_write_is_priced_apart_at_twice_the_input_unless_set() -> None:
    """Anthropic's hour-long writes (`ttl: 1h`) cost twice the input price, the 5-minute ones 1.25 times: both
    within `cache_write_tokens`, each at its own rate, and in the savings at its own premium."""
    usage = Usage.of(prompt=1000, completion=0, cache_write=300, cache_write_1h=100)
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    cost = cost_of(usage, price, NO_FEE)
    assert cost.provider_usd == pytest.approx((700 * 3.0 + 200 * 3.75 + 100 * 6.0) / 1e6, abs=1e-15)
    assert cost.cache_savings_usd == pytest.approx(-(200 * 0.75 + 100 * 3.0) / 1e6, abs=1e-15)
    named = Price(input=3.0, output=15.0, cache_write=3.75, cache_write_1h=7.0)
    assert cost_of(usage, named, NO_FEE).provider_usd == pytest.approx((700 * 3.0 + 200 * 3.75 + 100 * 7.0) / 1e6)
    sonnet = builtin_prices().find("claude-sonnet-4-5-20250929")
    assert sonnet is not None and sonnet.cache_write_1h == 6.0
    # The worst case holds the prompt at the dearest input rate the price names.
    assert worst_case_usd(1000, 0, named, NO_FEE) == pytest.approx(1000 * 7.0 / 1e6)


@pytest.mark.parametrize(
    "usage",
    [
        Usage.of(1000, 10, cache_write=100, cache_write_1h=101),  # more hour writes than writes
        Usage.of(1000, 10, cache_write=100, cache_write_1h=-1),
        Usage.model_validate({"prompt_tokens": 10, "completion_tokens": 1, "web_searches": -3}),
    ],
    ids=["hour-beyond-writes", "negative-hour", "negative-searches"],
)
def test_impossible_hour_writes_or_searches_are_not_credited(usage: Usage) -> None:
    assert not plausible(usage)


def test_audio_prompt_tokens_are_priced_at_the_audio_rate_unless_cached() -> None:
    usage = Usage.of(prompt=1000, completion=0, cached=100)
    assert usage.prompt_tokens_details is not None
    usage.prompt_tokens_details.audio_tokens = 300
    price = Price(input=0.3, output=2.5, cached_input=0.03, audio_input=1.0)
    cost = cost_of(usage, price, NO_FEE)
    assert cost.provider_usd == pytest.approx((600 * 0.3 + 300 * 1.0 + 100 * 0.03) / 1e6, abs=1e-15)
    # Without an audio price, audio is input like any other.
    plain = cost_of(usage, Price(input=0.3, output=2.5, cached_input=0.03), NO_FEE)
    assert plain.provider_usd == pytest.approx((900 * 0.3 + 100 * 0.03) / 1e6, abs=1e-15)
    assert builtin_prices().prices["gemini-2.5-flash"].audio_input == 1.0
    usage.prompt_tokens_details.audio_tokens = 1001
    assert not plausible(usage)  # more audio than prompt


def test_audio_output_tokens_are_charged_and_reserved_at_the_audio_output_rate() -> None:
    """gpt-4o-audio-preview at $2.50 in, $10 text out and $80 audio out (OpenAI's model page), 900 of 1,000 output
    tokens audio: $0.07325, charged $0.01025 at the text rate; the worst case of a request asking for audio holds
    every output token at the dearer rate (it held the text rate: a budget overspent about 7 times)."""
    usage = Usage.model_validate(
        {
            "prompt_tokens": 100,
            "completion_tokens": 1000,
            "total_tokens": 1100,
            "completion_tokens_details": {"audio_tokens": 900, "text_tokens": 100, "reasoning_tokens": 0},
        }
    )
    price = Price(input=2.5, output=10.0, audio_output=80.0)
    cost = cost_of(usage, price, NO_FEE)
    assert cost.provider_usd == 0.07325 and cost.unit_prices is not None and cost.unit_prices["audio_output"] == 80
    # Without an audio output price, audio is output like any other (such a request is not sent: pipeline).
    assert cost_of(usage, Price(input=2.5, output=10.0), NO_FEE).provider_usd == 0.01025
    assert worst_case_usd(100, 1000, price, NO_FEE, audio_output=True) == pytest.approx(0.08025)
    assert worst_case_usd(100, 1000, price, NO_FEE) == pytest.approx(0.01025)  # no audio asked: text at most
    assert with_options(price, {}) == price and plausible(usage)
    assert usage.completion_tokens_details is not None
    usage.completion_tokens_details.audio_tokens = 1001
    assert not plausible(usage)  # more audio than output


def test_an_alias_takes_the_releases_of_its_model_and_no_other_model() -> None:
    """A family alias took any id it began: `gpt-4o-mini-` priced gpt-4o-mini-audio-preview (audio in at $10 a
    million), -realtime-preview, -search-preview and -tts as gpt-4o-mini text ($0.15/$0.60), and `gpt-4o-2` priced
    gpt-4o-2024-05-13 ($5/$15, no cache discount) as gpt-4o ($2.50/$10). Now only a date or version follows a
    prefix; a model the table does not know has no price (`gateway config check` refuses it)."""
    table = builtin_prices()
    released = {
        "gpt-4o-mini-2024-07-18": "gpt-4o-mini",
        "gpt-4o-2024-08-06": "gpt-4o",
        "gpt-4o-2024-11-20": "gpt-4o",
        "gpt-4.1-2025-04-14": "gpt-4.1",
        "gpt-4.1-mini-2025-04-14": "gpt-4.1-mini",
        "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
        "claude-opus-4-6-20260205": "claude-opus-4-6",
        "global.anthropic.claude-opus-4-6-v1": "claude-opus-4-6",
        "anthropic.claude-3-5-haiku-20241022-v1:0": "claude-3-5-haiku",
        "gpt-4o-mini-audio-preview-2024-12-17": "gpt-4o-mini-audio-preview",
        "claude-3-5-haiku-latest": "claude-3-5-haiku",  # (Anthropic's alias of its newest release)
    }
    for upstream, entry in released.items():
        assert table.find(upstream) is table.prices[entry], upstream
    for other in (
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-mini-search-preview",
        "gpt-4o-mini-tts",
        "gpt-4o-mini-transcribe",
        "gpt-4o-audio-preview-2024-10-01",  # (its audio cost $100/$200 a million, not the current $40/$80)
        "gpt-4o-realtime-preview",
        "gpt-4.1-nano",
        "claude-sonnet-4-5-latest-preview",
        "claude-3-5-haiku-latest-v1",
    ):
        assert table.find(other) is None, other
    may = table.find("gpt-4o-2024-05-13")
    assert may is not None and (may.input, may.output, may.cached_input) == (5.0, 15.0, None)
    assert cost_of(Usage.of(1000, 100, cached=500), may, NO_FEE).provider_usd == (1000 * 5 + 100 * 15) / 1e6
    voice = table.find("gpt-4o-mini-audio-preview")
    assert voice is not None and (voice.input, voice.audio_input, voice.output, voice.audio_output) == (
        0.15,
        10.0,
        0.6,
        20.0,
    )
    heard = Usage.of(1000, 100, audio=900)
    assert cost_of(heard, voice, NO_FEE).provider_usd == (100 * 0.15 + 900 * 10 + 100 * 0.6) / 1e6  # 0.009075


EXAMPLE_CONFIG = """
providers:
  openai:    {type: openai,    api_key: env:OPENAI_API_KEY}
  deepseek:  {type: openai,    api_key: env:DEEPSEEK_API_KEY, base_url: https://api.deepseek.com/v1}
  anthropic: {type: anthropic, api_key: env:ANTHROPIC_API_KEY}
  gemini:    {type: gemini,    api_key: env:GEMINI_API_KEY}
  bedrock:   {type: bedrock}
models:
  gpt-4o-mini:
    deployments:
      - {provider: openai, model: gpt-4o-mini}
    price: {input: 0.15, output: 0.60, cached_input: 0.075}
    fallbacks: [claude-haiku]
  claude-haiku:
    deployments:
      - {provider: bedrock,   model: anthropic.claude-3-5-haiku-20241022-v1:0, region: eu-central-1}
      - {provider: bedrock,   model: anthropic.claude-3-5-haiku-20241022-v1:0, region: us-east-1}
      - {provider: anthropic, model: claude-3-5-haiku-latest}
"""


def test_every_deployment_of_the_readmes_kind_of_config_has_a_price(tmp_path: Path) -> None:
    """The configuration users start from, with no price for Claude Haiku (the table knows it): its Anthropic
    deployment, by Anthropic's alias `claude-3-5-haiku-latest`, had none, so `gateway config check` refused the file,
    and a key with a budget was refused `claude-haiku` (402) and `gpt-4o-mini`, whose fallback it is."""
    path = tmp_path / "gateway.yaml"
    path.write_text(EXAMPLE_CONFIG)
    config = load_config(str(path), set(REGISTRY))
    haiku = builtin_prices().prices["claude-3-5-haiku"]
    for i, deployment in enumerate(config.models["claude-haiku"].deployments):
        assert price_for("claude-haiku", config.models["claude-haiku"], deployment.model) is haiku, i
    assert cli_main(["config", "check", "--config", str(path)]) == 0


@pytest.mark.parametrize("geo", ["", "us.", "eu.", "jp.", "au.", "apac.", "ca."])
@pytest.mark.parametrize(
    ("family", "release"),
    [
        ("claude-sonnet-4-5", "20250929-v1:0"),
        ("claude-haiku-4-5", "20251001-v1:0"),
        ("claude-opus-4-5", "20251101-v1:0"),
        ("claude-opus-4-6", "v1"),
    ],
)
def test_bedrocks_regional_claude_costs_a_tenth_more_than_its_global_profile(
    geo: str, family: str, release: str
) -> None:
    """From Claude Sonnet 4.5, Haiku 4.5 and Opus 4.5 on, Bedrock charges 10% more through a regional endpoint (in
    one Region, or a `us.`/`eu.`/`jp.`/`au.`/`apac.`/`ca.` profile) than through the `global.` profile, which
    charges Anthropic's prices: the regional ids were priced as global, and the global profiles of Sonnet 4.5 and
    Haiku 4.5 had no price at all (`config check`: "no price known")."""
    table = builtin_prices()
    direct = table.prices[family]
    assert table.find(f"global.anthropic.{family}-{release}") is direct
    regional = table.find(f"{geo}anthropic.{family}-{release}")
    assert regional is not None and regional is not direct
    fields = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
    assert [getattr(regional, f) for f in fields] == pytest.approx([getattr(direct, f) * 1.1 for f in fields])
    if direct.long_context is not None:
        assert regional.long_context is not None
        tiers = ("threshold", "input", "output", "cached_input", "cache_write")
        assert [getattr(regional.long_context, f) for f in tiers] == pytest.approx(
            [direct.long_context.threshold] + [getattr(direct.long_context, f) * 1.1 for f in tiers[1:]]
        )
    sonnet = cost_of(Usage.of(100_000, 100_000), table.find("us.anthropic.claude-sonnet-4-5-20250929-v1:0"), NO_FEE)
    assert sonnet.provider_usd == 1.98  # $3.30 and $16.50 a million
    assert table.find("us.anthropic.claude-3-5-haiku-20241022-v1:0") is table.prices["claude-3-5-haiku"]  # one price


def bedrock_config(tmp_path: Path, upstream: str, region: str, price: str = "") -> Path:
    """A config deploying `upstream` on Bedrock in `region`, under the model's public name (`claude-sonnet-4-5`)."""
    path = tmp_path / "gateway.yaml"
    deployment = f"{{provider: bedrock, model: '{upstream}', region: {region}}}"
    path.write_text(
        "providers:\n  bedrock: {type: bedrock}\n"
        f"models:\n  claude-sonnet-4-5:\n    deployments: [{deployment}]\n{price}"
    )
    return path


@pytest.mark.parametrize(("geo", "region"), [("apac.", "ap-northeast-1"), ("ca.", "ca-central-1")])
def test_a_geographic_profile_the_gateway_routes_is_priced_regionally_whatever_the_model_is_named(
    tmp_path: Path, geo: str, region: str
) -> None:
    """docs/configuration.md#bedrock-inference-profiles routes `apac.` and `ca.` too, but the table's aliases named
    only `anthropic.`, `us.`, `eu.`, `jp.`, `au.`: such a deployment had no entry, fell back to the public name
    `claude-sonnet-4-5` and was priced at the global $3/$15, 10% short, and `config check` said nothing (review)."""
    upstream = f"{geo}anthropic.claude-sonnet-4-5-20250929-v1:0"
    config = load_config(str(bedrock_config(tmp_path, upstream, region)), set(REGISTRY))
    price = price_for("claude-sonnet-4-5", config.models["claude-sonnet-4-5"], upstream)
    assert price is not None and (price.input, price.output) == (3.30, 16.50)


def test_a_profile_the_table_does_not_price_has_no_price_and_config_check_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GovCloud's `us-gov.` profile has prices of its own, which the table does not carry: a deployment of it has no
    price, not the public name's, and `config check` names the profile; with `price: unknown` it is unpriced (a key
    with a budget is refused it). A profile the table prices, and an id it does not know at all, are as they were."""
    upstream = "us-gov.anthropic.claude-sonnet-4-5-20250929-v1:0"
    path = bedrock_config(tmp_path, upstream, "us-gov-west-1")
    config = load_config(str(path), set(REGISTRY))
    assert price_for("claude-sonnet-4-5", config.models["claude-sonnet-4-5"], upstream) is None
    assert builtin_prices().unknown_profile(upstream) == "us-gov."
    assert cli_main(["config", "check", "--config", str(path)]) == 1
    said = capsys.readouterr().err
    assert f"no price known for '{upstream}'" in said and "inference profile 'us-gov.'" in said
    unknown = bedrock_config(tmp_path, upstream, "us-gov-west-1", "    price: unknown\n")
    assert cli_main(["config", "check", "--config", str(unknown)]) == 0
    table = builtin_prices()
    for known in ("apac.anthropic.claude-sonnet-4-5-20250929-v1:0", "us.anthropic.claude-opus-4-1-20250805-v1:0"):
        assert table.unknown_profile(known) is None and table.find(known) is not None
    for other in ("us-gov.anthropic.claude-3-7-sonnet-20250219-v1:0", "anthropic.claude-sonnet-4-5-20250929-v1:0"):
        assert table.unknown_profile(other) is None
    assert price_for("claude-sonnet-4-5", spec(), "my-sonnet-deployment") is table.prices["claude-sonnet-4-5"]


def test_mistral_large_latest_is_mistral_large_3() -> None:
    """`mistral-large-latest` has been Mistral Large 3 (`mistral-large-2512`, $0.50/$1.50) since December 2025; it was
    priced as Mistral Large 2 ($2/$6), four times over."""
    table = builtin_prices()
    for name in ("mistral-large-latest", "mistral-large-2512"):
        large = table.find(name)
        assert large is not None and cost_of(Usage.of(100_000, 100_000), large, NO_FEE).provider_usd == 0.2


def test_the_worst_case_covers_an_hours_writes_wherever_the_model_bills_cache_writes() -> None:
    """A price naming `cache_write` but not `cache_write_1h` (a Claude price written before the hour rate) costs an
    hour's write at twice the input: the worst case must hold it (it held the 5-minute rate: $0.375 against a
    charge of $0.60 for 100k such tokens). A model that bills no cache writes keeps its input price."""
    claude = Price(input=3.0, output=15.0, cache_write=3.75)
    charged = cost_of(Usage.of(100_000, 0, cache_write=100_000, cache_write_1h=100_000), claude, NO_FEE).provider_usd
    worst = worst_case_usd(100_000, 0, claude, NO_FEE)
    assert charged == pytest.approx(0.6) and worst is not None and worst >= charged
    assert worst_case_usd(100_000, 0, Price(input=3.0, output=15.0), NO_FEE) == pytest.approx(0.3)


def test_fast_mode_multiplies_every_price_of_the_model_and_stacks_with_us_inference() -> None:
    """Opus 4.6 in fast mode: $30/$150 per million, cache reads and writes six times theirs too (Anthropic's cache
    multipliers apply on top of fast mode's prices); with US-only inference 1.1 times that."""
    opus = builtin_prices().find("claude-opus-4-6-20260205")
    fast = with_options(opus, {"speed": "fast"})
    assert fast is not None and (fast.input, fast.output, fast.cached_input, fast.cache_write_1h) == (30, 150, 3, 60)
    both = with_options(opus, {"speed": "fast", "inference_geo": "us"})
    assert both is not None and (both.input, both.output) == pytest.approx((33.0, 165.0))
    assert worst_case_usd(0, 1_000_000, fast, NO_FEE) == pytest.approx(150.0)


def test_options_are_priced_at_the_values_the_answer_was_served_at_where_the_price_knows_them() -> None:
    """Fast mode served at standard speed is billed at standard; a value served that the price knows nothing of
    (nor is the standard one) leaves the option as asked; an option not asked that the answer says it was served
    at is billed as served (a workspace's default inference geo, `us`), unless it is the standard value."""
    opus = builtin_prices().find("claude-opus-4-6")
    asked = {"speed": "fast", "inference_geo": "us"}
    assert as_served(opus, asked, {"speed": "standard"}) == {"speed": "standard", "inference_geo": "us"}
    assert as_served(opus, asked, {"speed": "fast", "inference_geo": "global"}) == {
        "speed": "fast",
        "inference_geo": "global",
    }
    assert as_served(opus, asked, {"speed": "turbo"}) == asked
    assert as_served(opus, {"inference_geo": "us"}, {"speed": "standard"}) == {"inference_geo": "us"}
    assert as_served(opus, {}, {"inference_geo": "us"}) == {"inference_geo": "us"}
    assert as_served(opus, {}, {"inference_geo": "mars"}) == {}
    served = with_options(opus, as_served(opus, {"speed": "fast"}, {"speed": "standard"}))
    assert served is not None and (served.input, served.output) == (5.0, 25.0)


def test_a_providers_own_model_is_priced_by_the_config_that_deploys_it_else_by_the_table() -> None:
    """How an advisor model an answer names is priced: the config's price of a model deploying it (or named so),
    else the built-in table's (by its aliases too), else none."""
    models = {
        "advisor": ModelConfig.model_validate(
            {"deployments": [{"provider": "p", "model": "claude-opus-4-6"}], "price": {"input": 7.0, "output": 35.0}}
        ),
        "unknown": ModelConfig.model_validate({"deployments": [{"provider": "p", "model": "x-1"}], "price": "unknown"}),
    }
    deployed = upstream_price(models, "claude-opus-4-6")
    assert deployed is not None and (deployed.input, deployed.output) == (7.0, 35.0)
    tabled = upstream_price(models, "claude-sonnet-4-5-20250929")
    assert tabled is not None and (tabled.input, tabled.output) == (3.0, 15.0)
    assert upstream_price(models, "x-1") is None and upstream_price({}, "claude-nobody-prices") is None
    dated = upstream_price(models, "claude-opus-4-6-20260205")  # (the model `advisor` deploys, by its dated id)
    assert dated is not None and (dated.input, dated.output) == (7.0, 35.0)


def test_a_providers_own_model_runs_as_the_models_deploying_it_by_any_id_the_table_takes_for_it() -> None:
    """An advisor's model (an upstream id) runs as the config's models that deploy it or are named so: by that id
    first, then by another the built-in table prices as the same model (an alias and its dated releases, as
    `PriceTable.find` takes them; Bedrock's global profile of it too). Matched by the exact id alone,
    `claude-opus-4-6-20260205` ran as none of them, and escaped the limits and scopes of `opus` (found by review).
    Another model of the family (a regional profile priced apart, a variant, another release) is none of them."""

    def deploying(model: str) -> ModelConfig:
        return ModelConfig.model_validate({"deployments": [{"provider": "p", "model": model}]})

    models = {
        "opus": deploying("claude-opus-4-6"),
        "opus-dated": deploying("claude-opus-4-6-20260205"),
        "opus-bedrock": deploying("global.anthropic.claude-opus-4-6-v1"),
        "opus-us": deploying("us.anthropic.claude-opus-4-6-v1"),  # (the regional price, 10% more: another entry)
        "opus-4-5": deploying("claude-opus-4-5"),
        "claude-opus-4-6": deploying("my-proxy-model"),  # (named so)
        "nameless": deploying("claude-advisor-x"),
    }
    assert runs_as(models, "claude-opus-4-6-20260205") == ["opus-dated", "opus", "opus-bedrock", "claude-opus-4-6"]
    assert runs_as(models, "claude-opus-4-6") == ["opus", "claude-opus-4-6", "opus-dated", "opus-bedrock"]
    assert runs_as(models, "claude-advisor-x") == ["nameless"]  # (an id the table does not know: itself alone)
    assert runs_as(models, "claude-opus-4-6-fast") == [] and runs_as(models, "claude-nobody") == []
    table = builtin_prices()
    assert table.entry("claude-opus-4-6-20260205") == "claude-opus-4-6" and table.entry("claude-opus-4-6-x") is None


def test_only_a_passed_through_apis_own_options_other_than_standard_are_asked() -> None:
    body = {"speed": "fast", "inference_geo": None, "service_tier": "auto"}
    assert asked_options(NativeCall(MESSAGES_API, body)) == {"speed": "fast"}
    assert asked_options(NativeCall(MESSAGES_API, {"speed": "standard", "inference_geo": "global"})) == {}
    assert asked_options(NativeCall(RESPONSES_API, body)) == {}


def test_a_body_sent_as_written_is_reserved_on_all_of_it_but_its_inline_pictures() -> None:
    """`sent_as_written`: half the bytes of the body, less its inline pictures' data (priced by formula from the
    translation's estimate), plus the most a picture or a PDF the provider fetches itself can cost."""
    picture = "A" * 40_000
    body = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": picture}},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
                    },  # fmt: skip
                    {
                        "type": "search_result",
                        "source": "s",
                        "title": "t",
                        "content": [{"type": "text", "text": "x" * 1000}],
                    },  # fmt: skip
                ],
            }
        ],
    }
    translated = PromptEstimate(10, (("data:image/png;base64," + picture, None),))
    sent = sent_as_written(translated, body)
    size = len(orjson.dumps(body))
    assert sent.text_tokens == (size - len(picture)) // 2
    assert sent.images == (*translated.images, ("", None))  # the uploaded picture, at the most one can cost
    # A PDF by URL is read and billed by the provider: its worst case is 100 pages'.
    by_url = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "u"}}]}],
    }
    assert sent_as_written(PromptEstimate(0, ()), by_url).tokens("anthropic", "m") >= 100 * 4_600
    # The Responses API's input: a data URL is a picture priced by formula, a file by id a PDF fetched.
    data_url = "data:image/png;base64," + picture
    items = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_image", "image_url": data_url}, {"type": "input_file", "file_id": "f"}],
        }
    ]
    responses = {"model": "m", "input": items}
    written = sent_as_written(PromptEstimate(0, ()), responses)
    assert written.text_tokens == (len(orjson.dumps(responses)) - len(data_url)) // 2
    assert written.referenced == 100 * 4_600  # reserved (`tokens`), never billed as seen (`seen`)
    # Never below the translation's own estimate.
    assert sent_as_written(PromptEstimate(10**6, ()), by_url).text_tokens == 10**6


@given(st.text(), st.booleans())
def test_a_text_part_is_estimated_as_its_json_whatever_its_characters(text: str, cached: bool) -> None:
    """A text part is estimated from its JSON as pydantic writes it (escapes, non-ASCII, control characters), read
    without pydantic's serializer where the part has no other field; one with others (`cache_control`) as before."""
    part: dict[str, object] = {"type": "text", "text": text}
    if cached:
        part["cache_control"] = {"type": "ephemeral"}
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [part]}]})
    [written] = req.messages[0].content  # type: ignore[misc]
    assert prompt_estimate(req).text_tokens == 8 + len(written.model_dump_json().encode()) // 2 + 1  # type: ignore[union-attr]


# Digits and letters mixed: a cl100k or o200k token a byte (review), 2,000 bytes.
A_TOKEN_A_BYTE = "1a" * 1_000


@pytest.mark.parametrize(
    "member",
    [
        {"messages": [{"role": "user", "content": A_TOKEN_A_BYTE}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": A_TOKEN_A_BYTE}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": A_TOKEN_A_BYTE, "cache_control": {}}]}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": A_TOKEN_A_BYTE}}
                    ],
                }
            ]
        },
        {"messages": [{"role": "assistant", "content": "ok", "reasoning_content": A_TOKEN_A_BYTE}]},
        {"messages": [{"role": "assistant", "content": "ok", "refusal": A_TOKEN_A_BYTE}]},
        {"tools": [{"type": "function", "function": {"name": "f", "description": A_TOKEN_A_BYTE}}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "description": A_TOKEN_A_BYTE}}},
        {"functions": [{"name": "f", "description": A_TOKEN_A_BYTE}]},
    ],
)
def test_a_prompts_worst_case_is_its_text_at_a_token_a_byte(member: dict[str, object]) -> None:
    """Text of a token a byte wherever a request holds it is in the worst case at a token a byte, the bound of every
    tokenizer priced: it was reserved at half of them (some 1,000 tokens for 2,000), said to over-count every
    tokenizer, which byte-level BPE does not (review). The rate limits' estimate stays about half."""
    req = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **member})
    estimate = prompt_estimate(req)
    assert estimate.tokens("openai", "m") >= len(A_TOKEN_A_BYTE) + 8 * len(req.messages)
    assert len(A_TOKEN_A_BYTE) // 2 <= estimate.seen("openai", "m") < len(A_TOKEN_A_BYTE)
    # Passed through as written, the body's every byte, never below the translation's bound.
    written = sent_as_written(estimate, req.model_dump(exclude_none=True))
    assert written.tokens("openai", "m") >= estimate.tokens("openai", "m")
    assert written.seen("openai", "m") < len(A_TOKEN_A_BYTE) + 200


def test_a_prompts_worst_case_is_never_below_its_estimate() -> None:
    """The budget's worst case holds at least what an answer without usage is billed on (`seen`): an empty text's
    estimate counts a token (half its bytes, rounded up) that its bound, its bytes, does not, and 200 turns written
    `"content": ""` were reserved at 1,600 tokens, 200 below the 1,800 an answer without usage is charged."""
    turns = [{"role": "assistant", "content": ""}, {"role": "user", "content": ""}]
    req = ChatRequest.model_validate({"model": "m", "messages": turns * 100})
    estimate = prompt_estimate(req)
    assert estimate.tokens("openai", "m") >= estimate.seen("openai", "m") == 1_800
    assert estimate.unseen >= 0


def test_a_predictions_worst_case_is_its_text_at_a_token_a_byte() -> None:
    """A `prediction`'s unused tokens are billed as output: a prediction of code or ids is a token a byte, and was
    reserved at half of them."""
    prediction = {"type": "content", "content": A_TOKEN_A_BYTE}
    req = ChatRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prediction": prediction}
    )
    assert predicted_tokens(req) >= len(A_TOKEN_A_BYTE)
    assert prompt_estimate(req).tokens("openai", "m") < 100  # (output, not prompt)


def test_a_file_by_id_is_estimated_as_the_most_a_document_can_cost() -> None:
    """A translated request's file part by `file_id` is read and billed whole by the provider (found by review:
    it was estimated as its JSON, some 20 tokens); one sent inline is its bytes."""

    def request(file: dict[str, str]) -> ChatRequest:
        part = {"type": "file", "file": file}
        return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": [part]}]})

    by_id = prompt_estimate(request({"file_id": "file-abc"}))
    inline = prompt_estimate(request({"file_data": "data:application/pdf;base64,JVBERi0x"}))
    assert by_id.tokens("openai", "m") >= 100 * 4_600 > inline.tokens("openai", "m")
    assert by_id.seen("openai", "m") < 100  # what an answer without usage is billed on


def test_a_prices_options_name_request_options_and_no_negative_multiplier() -> None:
    """`Price.options` is one field (each field declared costs every Lambda cold start): what a per-option field
    checked, a config check does, the bundled table included."""
    from handler.config import ConfigError, Price, parse_config, price_option_problems

    for model, price in builtin_prices().prices.items():
        assert price_option_problems(model, price) == []
    wrong = Price(input=1, options={"sped": {"fast": 6.0}, "speed": {"fast": -1.0, "x": float("nan")}})
    assert price_option_problems("m", wrong) == [
        "m.options.sped: not a priced option (one of: speed, inference_geo, service_tier)",
        "m.options.speed.fast: not a multiplier (a finite number, 0 or more)",
        "m.options.speed.x: not a multiplier (a finite number, 0 or more)",
    ]
    # OpenAI's service tiers, priced per model; `auto` and `default` are always at the model's own prices.
    tiers = Price(input=1, options={"service_tier": {"priority": 1.7, "default": 2.0, "flex": -0.5}})
    assert price_option_problems("m", tiers) == [
        "m.options.service_tier.default: always at the model's own prices, never multiplied",
        "m.options.service_tier.flex: not a multiplier (a finite number, 0 or more)",
    ]
    config = {
        "providers": {"a": {"type": "anthropic", "api_key": "env:K"}},
        "models": {
            "m": {
                "deployments": [{"provider": "a", "model": "m"}],
                "price": {"input": 1, "options": {"geo": {"us": 2}}},
            }
        },
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(config, {"anthropic"})
    assert "models.m.price.options.geo: not a priced option" in str(refused.value)
    # The gateway's own tier multipliers, checked the same way: `priority: -1` credited a key's budget with every
    # priority request, `.nan` made its costs NaN, and a `default` multiplier was taken and ignored.
    tiered = {**config, "gateway": {"priced_options": {"service_tier": {"priority": -1, "flex": float("nan")}}}}
    tiered["gateway"]["priced_options"]["service_tier"]["default"] = 2.0
    tiered["models"] = {}
    with pytest.raises(ConfigError) as refused:
        parse_config(tiered, {"anthropic"})
    assert refused.value.problems == [
        "gateway.priced_options.service_tier.default: always at the model's own prices, never multiplied",
        "gateway.priced_options.service_tier.priority: not a multiplier (a finite number, 0 or more)",
        "gateway.priced_options.service_tier.flex: not a multiplier (a finite number, 0 or more)",
    ]


def test_every_built_in_price_is_an_amount_a_config_could_hold() -> None:
    """A price's bounds (0 or more, finite) are checked where a config is read (`amount_problems`), not by pydantic
    on each field (2.2 million instructions of every cold start): the built-in table, read by `Price` too, holds to
    them all the same."""
    from handler.config import amount_problems

    table = builtin_prices()
    assert table.prices
    assert [problem for name, price in table.prices.items() for problem in amount_problems(name, price)] == []
