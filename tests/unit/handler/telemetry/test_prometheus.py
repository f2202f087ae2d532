"""The Prometheus registry keeps its label sets bounded and its text parseable."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler.telemetry import prometheus
from handler.telemetry.prometheus import Registry


def test_series_past_the_bound_fold_into_other(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(models=[f"m{i}" for i in range(10)], providers=["p"])
    monkeypatch.setattr(prometheus, "MAX_SERIES", 5)
    for i in range(10):
        registry.record(
            model=f"m{i}", provider="p", region=f"r{i}", status=200, code=None, seconds=0.01, added_seconds=0.001
        )
    assert len(registry.requests.counters) == 6  # five named series, then "other"
    other = (("model", "other"), ("provider", "other"), ("region", "other"), ("status", "other"))
    assert registry.requests.counters[other] == 5


def test_the_text_parses_and_escapes_label_values() -> None:
    registry = Registry(models=['a"b\\c'], providers=["p"])
    registry.record(
        model='a"b\\c',
        provider="p",
        region="eu-west-1",
        status=502,
        code="upstream_error",
        seconds=0.2,
        added_seconds=0.0007,
        input_tokens=3,
        output_tokens=4,
        cost_usd=0.5,
    )
    families = {f.name: f for f in text_string_to_metric_families(registry.render().decode())}
    [sample] = families["gateway_requests"].samples
    assert sample.labels["model"] == 'a"b\\c' and sample.value == 1
    buckets = [s for s in families["gateway_added_latency_seconds"].samples if s.name.endswith("_bucket")]
    assert [s.value for s in buckets if s.labels["le"] in ("0.0005", "0.001", "+Inf")] == [0, 1, 1]


def test_a_model_named_after_its_first_requests_gets_its_own_series() -> None:
    registry = Registry(models=["known"], providers=["p"])
    answered = {"provider": "p", "region": "r", "status": 200, "code": None, "seconds": 0.01, "added_seconds": 0.001}
    registry.record(model="late", **answered)  # type: ignore[arg-type]
    registry.name(["late"], [])
    registry.record(model="late", **answered)  # type: ignore[arg-type]
    by_model = {dict(labels)["model"]: count for labels, count in registry.requests.counters.items()}
    assert by_model == {"other": 1, "late": 1}
