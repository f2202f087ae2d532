"""`GET /metrics`: Prometheus' text format, read back with Prometheus' own client parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.functional.conftest import Running

HI = [{"role": "user", "content": "Hi"}]


def scrape(running: Running, key: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    answer = httpx.get(f"{running.url}/metrics", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_requests_errors_tokens_cost_and_latency_by_model(running: Running) -> None:
    admin, user = running.mint(admin=True), running.mint()
    before = scrape(running, admin)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "no-such-model"):
        httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": model, "messages": HI},
            headers={"authorization": f"Bearer {user}"},
        )
    after = scrape(running, admin)
    where = {"model": "gpt-4o-mini", "provider": "openai", "region": "global"}
    ok = labels(**where, status="200")
    served = after["gateway_requests_total"][ok] - before.get("gateway_requests_total", {}).get(ok, 0)
    assert served == 2
    # A model the config does not name is counted under "other": a client cannot grow the label set.
    assert any(dict(labels)["model"] == "other" for labels in after["gateway_requests_total"])
    assert all("no-such-model" not in str(labels) for labels in after["gateway_requests_total"])
    assert after["gateway_tokens_total"][labels(**where, direction="output")] >= 14
    assert after["gateway_cost_usd_total"][labels(**where)] > 0
    assert after["gateway_added_latency_seconds_count"][labels(**where)] >= 2
    assert after["gateway_errors_total"][labels(code="model_not_found", status="404")] >= 1


def test_metrics_need_an_admin_key(running: Running) -> None:
    answer = httpx.get(f"{running.url}/metrics", headers={"authorization": f"Bearer {running.mint()}"})
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "admin_only"
    assert httpx.get(f"{running.url}/metrics").status_code == 401
