"""A real Prometheus server (Debian's `prometheus` package, `make tools`) scrapes the gateway's `/metrics`
with an admin key as its bearer credentials; its HTTP API then answers with the figures the test sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.functional.conftest import Running
from tests.functional.test_metrics import labels, scrape
from tests.support.servers import free_port

PROMETHEUS = shutil.which("prometheus")
MODEL = "regional"  # served by the fake OpenAI, in us-east-1: its series are this test's alone
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def prometheus(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the gateway every second; yields its base URL."""
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing: `make tools` installs it")
        pytest.skip("no prometheus binary (make tools installs Debian's package)")
    folder = tmp_path_factory.mktemp("prometheus")
    target = running.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "gateway",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials": running.mint(admin=True)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/-/ready").status_code == 200, "prometheus ready", folder)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def wait_for(check: Any, what: str, folder: Path | None = None, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            log = (folder / "prometheus.log").read_text()[-2000:] if folder else ""
            raise AssertionError(f"timed out waiting for {what}\n{log}")
        time.sleep(0.2)


def query(prometheus: str, promql: str) -> float | None:
    """The instant value of a one-series PromQL expression, or None while it has no value."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_request_counts_cost_and_latency(running: Running, prometheus: str) -> None:
    admin, user = running.mint(admin=True), running.mint()
    where = labels(model=MODEL, provider="openai", region="us-east-1")
    before = scrape(running, admin).get("gateway_requests_total", {}).get(labels(**dict(where), status="200"), 0)
    for _ in range(3):
        answer = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": MODEL, "messages": HI},
            headers={"authorization": f"Bearer {user}"},
        )
        assert answer.status_code == 200
    refused = httpx.post(
        f"{running.url}/v1/chat/completions", json={"model": MODEL}, headers={"authorization": "Bearer x"}
    )
    assert refused.status_code == 401
    direct = scrape(running, admin)
    sent = direct["gateway_requests_total"][labels(**dict(where), status="200")]
    assert sent - before == 3
    selector = f'model="{MODEL}",provider="openai",region="us-east-1"'

    # Prometheus has scraped once the value it stores is the one the gateway now reports.
    wait_for(lambda: query(prometheus, f'gateway_requests_total{{{selector},status="200"}}') == sent, "the scrape")
    assert query(prometheus, 'up{job="gateway"}') == 1
    cost = query(prometheus, f"gateway_cost_usd_total{{{selector}}}")
    assert cost is not None and cost == pytest.approx(direct["gateway_cost_usd_total"][where])
    tokens = query(prometheus, f'gateway_tokens_total{{{selector},direction="output"}}')
    assert tokens == direct["gateway_tokens_total"][labels(**dict(where), direction="output")]
    assert query(prometheus, f"gateway_request_duration_seconds_count{{{selector}}}") == sent
    added = query(prometheus, f"gateway_added_latency_seconds_sum{{{selector}}}")
    assert added is not None and added == pytest.approx(direct["gateway_added_latency_seconds_sum"][where])
    # PromQL over the histogram: the median request took some time, and under the fake's answer time.
    median = query(
        prometheus,
        f"histogram_quantile(0.5, sum by (le) (gateway_request_duration_seconds_bucket{{{selector}}}))",
    )
    assert median is not None and 0 < median < 5
    assert (query(prometheus, 'sum(gateway_errors_total{code="invalid_api_key"})') or 0) >= 1
