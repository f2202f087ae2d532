"""The output cap per attempt: the ceilings providers name, and when a refusal lowers the cap."""

from __future__ import annotations

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import parse_config
from handler.pipeline.gateway import build_adapters
from handler.pipeline.output_caps import OutputCap, ceiling_named
from handler.pipeline.routing import Attempt, RouteControls, Router, any_model
from handler.schemas import ChatRequest

CONFIG = {
    "providers": {"a": {"type": "openai", "api_key": "env:A"}},
    "models": {
        "known": {"deployments": [{"provider": "a", "model": "gpt-4o-mini"}], "max_output_tokens": 16_384},
        "unknown": {"deployments": [{"provider": "a", "model": "gpt-4o"}]},
    },
}


def attempt(model: str) -> Attempt:
    config = parse_config(CONFIG, set(REGISTRY))
    return Router(config, build_adapters(config, REGISTRY, {"A": "x"}), "us-east-1").plan(
        model, RouteControls(), any_model
    )[0]


def request(**cap: int) -> ChatRequest:
    return ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], **cap})


@pytest.mark.parametrize(
    ("message", "ceiling"),
    [
        (
            "max_tokens is too large: 32000. This model supports at most 16384 completion tokens, whereas you "
            "provided 32000.",
            16_384,
        ),
        ("Invalid max_tokens value, the valid range of max_tokens is [1, 8192]", 8_192),
        ("max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for claude-x", 64_000),
        (
            "The maximum tokens you requested exceeds the model limit of 8192. Try again with a maximum tokens value "
            "that is lower than 8192.",
            8_192,
        ),
        ("Invalid type for 'logit_bias': expected an object, but got a string instead.", None),
        ("", None),
    ],
)
def test_the_ceiling_a_refusal_names(message: str, ceiling: int | None) -> None:
    assert ceiling_named(message) == ceiling


def test_a_refusal_lowers_the_cap_once_and_only_below_what_was_sent(caplog: pytest.LogCaptureFixture) -> None:
    learned: dict[str, int] = {}
    req = request(max_tokens=32_000)
    cap, unknown = OutputCap(req, 4096, learned), attempt("unknown")
    cap.apply(unknown)
    assert req.max_tokens == 32_000  # no ceiling known yet: the client's own
    refusal = "This model supports at most 16384 completion tokens"
    with caplog.at_level("WARNING", logger="gateway"):
        assert cap.lowered(unknown, refusal)
    assert req.max_tokens == 16_384 and learned == {unknown.target.label: 16_384}
    [record] = caplog.records  # the operator is told which model to configure, once
    assert (record.model, record.max_output_tokens, record.sent) == ("unknown", 16_384, 32_000)  # type: ignore[attr-defined]
    assert not cap.lowered(unknown, refusal)  # already within: sent again it would loop
    assert not cap.lowered(unknown, "This model supports at most 50000 completion tokens")
    assert not OutputCap(request(), 4096, learned).lowered(unknown, refusal)  # no cap sent: nothing to lower


def test_the_configured_ceiling_holds_without_a_refusal() -> None:
    req = request(max_completion_tokens=32_000)
    OutputCap(req, 4096, {}).apply(attempt("known"))
    assert req.max_completion_tokens == 16_384 and req.max_tokens is None
    small = request(max_tokens=100)
    OutputCap(small, 4096, {}).apply(attempt("known"))
    assert small.max_tokens == 100


def test_a_learned_ceiling_below_the_configured_one_holds() -> None:
    """A configured `max_output_tokens` past what the provider allows: the lower, learned one is sent."""
    known = attempt("known")
    req = request(max_tokens=20_000)
    learned: dict[str, int] = {}
    cap = OutputCap(req, 4096, learned)
    cap.apply(known)
    assert req.max_tokens == 16_384  # the configured ceiling
    assert cap.lowered(known, "This model supports at most 8192 completion tokens") and req.max_tokens == 8_192


def test_a_budgeted_request_is_never_sent_more_than_its_reservation_covers() -> None:
    """A ceiling learned by another request after this one was admitted (for the gateway's default, 4,096) raised
    its cap to 16,384, past what its reservation covered (found by review)."""
    unknown = attempt("unknown")
    learned: dict[str, int] = {}
    req = request()
    cap = OutputCap(req, 4096, learned)
    cap.reserved = {id(unknown): cap.of(unknown)}
    assert cap.reserved[id(unknown)] == 4096
    learned[unknown.target.label] = 16_384  # another request's refusal, meanwhile
    cap.apply(unknown)
    assert req.max_completion_tokens == 4096


def test_a_budgeted_request_keeps_its_own_cap_on_a_model_whose_ceiling_is_unknown() -> None:
    """Claude Code's 32,000 was cut to the gateway's default (4,096) on a budgeted key whenever its model had no
    `max_output_tokens`: answers ended at 4,096 tokens, named nowhere. The default is for a request without a cap."""
    unknown, known = attempt("unknown"), attempt("known")
    req = request(max_tokens=32_000)
    cap = OutputCap(req, 4096, {})
    assert (cap.of(unknown), cap.of(known)) == (32_000, 16_384)
    cap.reserved = {id(unknown): cap.of(unknown)}
    cap.apply(unknown)
    assert req.max_tokens == 32_000
    assert OutputCap(request(max_tokens=1_000), 4096, {}).of(unknown) == 1_000
    assert OutputCap(request(), 4096, {}).of(unknown) == 4096


@pytest.mark.parametrize("budgeted", [False, True])
def test_each_attempt_has_written_at_most_the_cap_it_was_sent(budgeted: bool) -> None:
    """What an attempt can have written was read from the request's cap as the last attempt's `apply` left it: an
    earlier attempt sent 16,384 was taken for the 1,000 the next one was sent (and one sent 1,000 for 16,384)."""
    wide, narrow = attempt("known"), attempt("unknown")
    cap = OutputCap(request(max_tokens=32_000, n=2), 4096, {narrow.target.label: 1_000})
    if budgeted:
        cap.reserved = {id(wide): cap.of(wide), id(narrow): cap.of(narrow)}
    assert (cap.apply(wide), cap.apply(narrow)) == (16_384, 1_000)
    assert (cap.written_at_most(wide), cap.written_at_most(narrow)) == (2 * 16_384, 2 * 1_000)
    cap.apply(wide)
    assert cap.written_at_most(narrow) == 2 * 1_000
