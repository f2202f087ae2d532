"""`Exchange.advised` (the advisor calls a stream cut before its usage showed): charged on the answer's own line
alone; and an advisor's calls charged only at an attempt that was sent the tool."""

from __future__ import annotations

from handler.pipeline.exchange import Controls, Exchange
from handler.pipeline.pipeline import Pipeline
from handler.pipeline.routing import Attempt
from handler.ports import MESSAGES_API, KeyRecord
from handler.schemas import Usage
from tests.unit.handler.pipeline.test_search_charges import planned


def pipeline_and_plan(second: str = "anthropic") -> tuple[Pipeline, list[Attempt]]:
    """A plan of two deployments of one model: on Anthropic, then on a provider of type `second`."""
    data = {
        "providers": {
            "first": {"type": "anthropic", "api_key": "sk-ant-test", "base_url": "http://127.0.0.1:9"},
            "second": {"type": second, "api_key": "sk-ant-test", "base_url": "http://127.0.0.1:9"},
        },
        "models": {
            "claude": {
                "deployments": [
                    {"provider": "first", "model": "claude-x"},
                    {"provider": "second", "model": "claude-x"},
                ],
                "price": {"input": 3.0, "output": 15.0},
            }
        },
    }
    return planned(data, "claude")


def test_a_missed_attempts_worst_case_is_not_charged_the_advisor_calls_the_answering_stream_showed() -> None:
    """A `continue` of a thread this process did not relay, naming no advisor beta (`Exchange.advisors` empty: no
    advisor reserved): its first attempt is missed (billable, never answered: `ex.missed`, charged its worst case,
    `_waste(..., reserved=True)`), the second streams one advisor call and is cut before its usage, so `metered()`
    sets `ex.advised = 1`. `_settle` then charges each missed attempt through `_cost(reserved=True)`, whose `elif
    ex.advised` branch adds the *answering* stream's advisor call to the missed attempt as well: the one call is
    charged once per missed attempt on top of the answer's own. The missed attempt's waste should not depend on the
    calls another attempt showed (a fix: pass the calls to `_cost` for the answering attempt only, or skip
    `ex.advised` when `reserved`)."""
    pipeline, plan = pipeline_and_plan()
    missed, answering = plan
    key = KeyRecord(id="k", name="k", secret_hash="", created_at=0)
    ex = Exchange("req_1", key, "claude", Controls())
    worst = Usage.of(1_000, 300)
    alone = pipeline._cost(ex, missed, worst, None, reserved=True).provider_usd
    ex.advised = 1  # (set by the answering stream's `metered()`, after the missed attempt had timed out)
    with_advice_elsewhere = pipeline._cost(ex, missed, worst, None, reserved=True).provider_usd
    assert with_advice_elsewhere == alone, (alone, with_advice_elsewhere)


def test_an_attempt_translated_without_the_advisor_tool_is_charged_no_advisor_calls() -> None:
    """A Messages request with an Opus advisor whose attempts, on Anthropic and then translated for OpenAI, are both
    cut unanswered (missed, and the last in flight): each is charged its worst case (`reserved`), which holds the
    advisor's calls where the tool was sent (Anthropic's) and none where the translation left it out and named it
    dropped (OpenAI's model calls no advisor). The translated attempt was charged them too: $0.90 on its $0.0075."""
    pipeline, (native, translated) = pipeline_and_plan("openai")
    key = KeyRecord(id="k", name="k", secret_hash="", created_at=0)
    ex = Exchange("req_1", key, "claude", Controls())
    ex.native_api = MESSAGES_API  # (as `_admit` leaves a Messages request)
    worst = Usage.of(1_000, 300)

    def charged() -> list[float]:
        return [
            pipeline._cost(ex, each, worst, None, reserved=True).provider_usd or 0.0 for each in (native, translated)
        ]

    plain = charged()
    ex.advisors = (("claude-opus-4-6", 3, 8_192),)
    advised = charged()
    assert advised[0] > plain[0] + 3 * 8_192 * 25.0 / 1e6  # (Opus's output price)
    assert advised[1] == plain[1], (plain, advised)
