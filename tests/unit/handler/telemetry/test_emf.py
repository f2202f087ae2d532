"""A request's EMF line is the one Powertools' `Metrics` would write for the same figures."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from handler.pipeline.exchange import Controls, Exchange
from handler.ports import KeyRecord
from handler.telemetry import observability
from handler.telemetry.observability import NAMESPACE, SERVICE, emf_line

FIGURES = [
    ("latency", MetricUnit.Milliseconds, 12.5),
    ("gateway_overhead", MetricUnit.Milliseconds, 0.75),
    ("requests", MetricUnit.Count, 1),
    ("errors", MetricUnit.Count, 0),
    ("fallbacks", MetricUnit.Count, 0),
    ("input_tokens", MetricUnit.Count, 12),
    ("output_tokens", MetricUnit.Count, 3),
    ("spend_usd", MetricUnit.NoUnit, 4.2e-06),
]


def powertools_line(dimensions: dict[str, str]) -> dict[str, Any]:
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    for name, value in dimensions.items():
        metrics.add_dimension(name, value)
    for name, unit, amount in FIGURES:
        metrics.add_metric(name, unit, amount)
    line: dict[str, Any] = metrics.serialize_metric_set()
    metrics.clear_metrics()
    return line


def written(capsys: pytest.CaptureFixture[str], dimensions: dict[str, str]) -> dict[str, Any]:
    emf_line(dimensions, [(name, unit.value, amount) for name, unit, amount in FIGURES])
    [line] = capsys.readouterr().out.splitlines()
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


@pytest.mark.parametrize("provider", ["openai-eu", "none"])
def test_the_line_has_powertools_members_in_powertools_order(capsys: pytest.CaptureFixture[str], provider: str) -> None:
    dimensions = {"provider": provider, "model": "gpt-4o-mini"}
    ours, theirs = written(capsys, dimensions), powertools_line(dimensions)
    assert abs(ours["_aws"]["Timestamp"] - theirs["_aws"]["Timestamp"]) < 5_000
    ours["_aws"]["Timestamp"] = theirs["_aws"]["Timestamp"]
    assert orjson.dumps(ours) == orjson.dumps(theirs)  # members, values and their order


def test_metrics_disabled_as_powertools_reads_it_writes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(observability, "METRICS_DISABLED", True)
    emf_line({"provider": "p", "model": "m"}, [("requests", "Count", 1)])
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("route", "attempts_after_the_first"),
    [
        # One attempt, after two deployments passed over and a fallback the key may not use.
        (["a/m@us-east-1=breaker-open", "a/m@eu-central-1=unsupported", "n=model_not_allowed", "b/n@global=200"], 0),
        # Shed: every breaker open, nothing sent.
        (["a/m@us-east-1=breaker-open", "a/m@eu-central-1=breaker-open"], 0),
        # A fallback refused by its own limit, then the next one answers: one attempt.
        (["a/m@us-east-1=500", "b/n@global=rate_limited", "c/o@global=200"], 1),
        # Two attempts: a refused connection, then the next deployment.
        (["a/m@us-east-1=connect_error", "a/m@eu-central-1=200"], 1),
    ],
)
def test_the_fallbacks_metric_counts_attempts_not_route_entries(
    route: list[str], attempts_after_the_first: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fallbacks` is documented as the attempts after the first, as the span's `gateway.retries` is; it counted
    every entry of the route, deployments passed over with nothing sent among them, so a failover alarm fired on
    open breakers the traffic was passing over. Found by review (routerev36)."""
    monkeypatch.setattr(observability, "METRICS_ON", True)
    ex = Exchange("req_1", KeyRecord(id="k", name="k", secret_hash="", created_at=0), "m", Controls())
    ex.route.extend(route)
    capsys.readouterr()
    observability.observe(ex, 200)
    [emf] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emf["fallbacks"] == [attempts_after_the_first], route
