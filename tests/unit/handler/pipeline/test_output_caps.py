"""The output cap per attempt: the ceilings providers name, and when a refusal lowers the cap; and the most an attempt
could write, which bounds the estimate of an answer without usage."""

from __future__ import annotations

import pytest

from adapters.providers.registry import REGISTRY
from handler.config import load_config, parse_config
from handler.pipeline.gateway import build_adapters
from handler.pipeline.output_caps import OutputCap, ceiling_named, shipped_ceiling
from handler.pipeline.routing import Attempt, RouteControls, Router, any_model
from handler.schemas import ChatRequest

CONFIG = {
    "providers": {"a": {"type": "openai", "api_key": "env:A"}},
    "models": {
        "known": {"deployments": [{"provider": "a", "model": "gpt-4o-mini"}], "max_output_tokens": 16_384},
        "unknown": {"deployments": [{"provider": "a", "model": "gpt-4o"}]},
        # gpt-4o-mini by the operator's own name and a dated release, its ceiling left to the gateway's (16,384)
        "mini": {"deployments": [{"provider": "a", "model": "gpt-4o-mini-2024-07-18"}]},
        "lowered-mini": {"deployments": [{"provider": "a", "model": "gpt-4o-mini"}], "max_output_tokens": 9_000},
        "small": {"deployments": [{"provider": "a", "model": "gpt-4o-mini"}], "max_output_tokens": 4_096},
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


def test_the_ceilings_the_gateway_ships_are_its_default_configs_by_upstream_model() -> None:
    """Each model of the shipped config with a `max_output_tokens` lends it to whatever model of an operator's
    config deploys its upstream model, or a dated release of it; not to a variant that names itself in words."""
    shipped = load_config(None, set(REGISTRY))
    bounded = [(dep.model, spec.max_output_tokens) for spec in shipped.models.values() for dep in spec.deployments]
    assert [(model, shipped_ceiling(model)) for model, ceiling in bounded if ceiling] == [
        (model, ceiling) for model, ceiling in bounded if ceiling
    ]
    assert shipped_ceiling("gpt-4o-mini") == shipped_ceiling("gpt-4o-mini-2024-07-18") == 16_384
    assert shipped_ceiling("claude-sonnet-4-5-20250929") == 64_000
    assert shipped_ceiling("gpt-4o-mini-tts") is None  # (another model, whose price is its own)
    assert shipped_ceiling("house-model-7b") is None
    assert shipped_ceiling("text-embedding-3-small") is None  # (shipped without one)


def test_what_an_attempt_could_write_is_its_cap_else_its_ceiling_else_the_shipped_one() -> None:
    """The most an attempt could write, which an estimate of its output never passes: the cap it was sent (the
    client's, past the model's ceiling or within it), else the config's `max_output_tokens`, else the ceiling its
    provider named, else the one the gateway ships for its upstream model, for each choice; unknown (None) without
    any. Without the shipped one, a stream of gpt-4o-mini sent no cap was estimated as long as it ran (1,120,000
    output tokens for a model that writes 16,384)."""
    mini, lowered, unknown = attempt("mini"), attempt("lowered-mini"), attempt("unknown")
    assert OutputCap(request(), 4096, {}).written_at_most(mini) == 16_384
    assert OutputCap(request(n=2), 4096, {}).written_at_most(mini) == 32_768
    assert OutputCap(request(max_tokens=20_000), 4096, {}).written_at_most(mini) == 20_000
    assert OutputCap(request(), 4096, {}).written_at_most(lowered) == 9_000
    assert OutputCap(request(), 4096, {mini.target.label: 8_192}).written_at_most(mini) == 8_192
    assert OutputCap(request(), 4096, {}).written_at_most(unknown) is None
    # Never sent: a request without a budget goes as asked, and a budgeted one is sent (and reserved) the default.
    assert OutputCap(request(), 4096, {}).sent(mini) is None
    assert OutputCap(request(max_tokens=20_000), 4096, {}).sent(mini) == 20_000
    assert OutputCap(request(), 4096, {}).of(mini) == 4096


def test_a_fallback_gets_both_caps_as_it_would_tried_first() -> None:
    # The client's `max_tokens` was held to the first attempt's cap in the request and never given back: a fallback
    # whose ceiling allows more got 4,096 beside the client's 5,000.
    alone = request(max_tokens=8000, max_completion_tokens=5000)
    OutputCap(alone, 4096, {}).apply(attempt("known"))
    assert (alone.max_tokens, alone.max_completion_tokens) == (5000, 5000)
    req = request(max_tokens=8000, max_completion_tokens=5000)
    cap = OutputCap(req, 4096, {})
    cap.apply(attempt("small"))
    assert (req.max_tokens, req.max_completion_tokens) == (4096, 4096)
    cap.apply(attempt("known"))
    assert (req.max_tokens, req.max_completion_tokens) == (5000, 5000)
    below = request(max_tokens=7, max_completion_tokens=5000)  # (a `max_tokens` below the cap goes as written)
    OutputCap(below, 4096, {}).apply(attempt("known"))
    assert (below.max_tokens, below.max_completion_tokens) == (7, 5000)


def test_a_cap_written_null_beside_max_tokens_goes_unsent() -> None:
    # Renamed to `max_tokens` for a provider that reads that (DeepSeek, Mistral, Together, Ollama, a server with no
    # profile), the null took the cap's place: the answer ran to the server's own end, past the reservation.
    req = request(max_tokens=5, max_completion_tokens=None)  # type: ignore[arg-type]
    OutputCap(req, 4096, {}).apply(attempt("known"))
    assert req.max_tokens == 5 and "max_completion_tokens" not in req.model_fields_set
