"""A real Prometheus server (Debian's `prometheus` package, `make tools`) scrapes the gateway's `/metrics`
with an admin key as its bearer credentials; its HTTP API then answers with the figures the test sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from handler.entry.cli import main
from tests.functional.conftest import Running
from tests.functional.test_metrics import labels, scrape
from tests.support.serve import Served, gateway_serve
from tests.support.servers import PortTaken, ServerThread, on_a_free_port, said_port_taken

PROMETHEUS = shutil.which("prometheus")
MODEL = "regional"  # served by the fake OpenAI, in us-east-1: its series are this test's alone
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def prometheus(running: Running, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prometheus scraping the gateway every second, with an admin key; yields its base URL."""
    job = {
        "job_name": "gateway",
        "metrics_path": "/metrics",
        "authorization": {"type": "Bearer", "credentials": running.mint(admin=True)},
        "static_configs": [{"targets": [running.url.removeprefix("http://")]}],
    }
    with prometheus_server(job, tmp_path_factory.mktemp("prometheus")) as url:
        yield url


@contextmanager
def prometheus_server(job: dict[str, Any], folder: Path) -> Iterator[str]:
    """A Prometheus server scraping `job` every second; yields its base URL once it is ready."""
    if PROMETHEUS is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus binary is missing: `make tools` installs it")
        pytest.skip("no prometheus binary (make tools installs Debian's package)")
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    process, url = on_a_free_port(lambda port: started_prometheus(folder, port))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


def started_prometheus(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Prometheus on `folder`'s config, told to listen on `port` (it takes no socket): `PortTaken` where it found
    the port taken, and ready only once the server that answers is this one (its config file is `folder`'s)."""
    assert PROMETHEUS is not None
    with (folder / "prometheus.log").open("w") as log:
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

    def ready() -> bool:
        if process.poll() is not None:
            logged = (folder / "prometheus.log").read_text()
            raise PortTaken(logged) if said_port_taken(logged) else AssertionError(f"prometheus ended:\n{logged}")
        if httpx.get(f"{url}/-/ready", timeout=1).status_code != 200:
            return False
        flags = httpx.get(f"{url}/api/v1/status/flags", timeout=1).json()["data"]
        return bool(flags["config.file"] == str(folder / "prometheus.yml"))

    try:
        wait_for(ready, "prometheus ready", folder)
    except BaseException:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        raise
    return process, url


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


def test_prometheus_scrapes_the_metrics_port_of_gateway_serve(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """`observability.metrics_port`: `gateway serve` answers GET /metrics with no key on a port of its own; a
    fresh process, so Prometheus' figures are exactly what this test sent."""
    server, _ = upstream
    with ExitStack() as stack:

        def serving(port: int) -> tuple[Served, int]:  # (it can only be told its metrics port: `on_a_free_port`)
            return stack.enter_context(gateway_serve(server.url, tmp_path, {"metrics_port": port})), port

        served, metrics_port = on_a_free_port(serving)
        for _ in range(2):
            answer = httpx.post(
                f"{served.url}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": HI},
                headers={"authorization": f"Bearer {served.key}"},
            )
            assert answer.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/other").status_code == 404
        assert httpx.get(f"{served.url}/metrics").status_code == 401  # the main port still wants a key
        job = {"job_name": "gateway", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        with prometheus_server(job, tmp_path) as prometheus:
            selector = 'model="gpt-4o-mini",provider="openai",region="global",status="200"'
            wait_for(lambda: query(prometheus, f"gateway_requests_total{{{selector}}}") == 2, "the scrape")
            tokens = query(prometheus, 'sum(gateway_tokens_total{model="gpt-4o-mini"})')
            assert tokens == sum(answer.json()["usage"][k] for k in ("prompt_tokens", "completion_tokens")) * 2


def test_every_worker_of_gateway_serve_answers_for_the_whole_server(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """`gateway serve --workers 2`: `/metrics` answered with the figures of whichever worker took the connection
    (ten scrapes read 15, 15, 15, 5, 15, ...; Prometheus, on a kept-alive connection, saw 5 requests of 20, and the
    counter "reset" as it moved between workers). Each worker now answers with the whole server's figures: its own,
    and the others' as they last wrote them to the server's folder (at most a second old)."""
    server, _ = upstream
    temporary = tmp_path / "tmp"  # where the server makes its workers' folder
    temporary.mkdir()
    ok = 'model="gpt-4o-mini",provider="openai",region="global",status="200"'

    def per_worker() -> list[float]:
        """Each worker's requests, as its file in the server's folder says."""
        counts = []
        for path in temporary.glob("gateway-metrics-*/worker-*.json"):
            figures = orjson.loads(path.read_bytes()).get("gateway_requests_total", {})
            counts.append(sum(value for _, value in figures.get("counters", ())))
        return counts

    def requests_reported(admin: str) -> float:
        """`gateway_requests_total` for gpt-4o-mini, from one scrape on a connection of its own."""
        answer = httpx.get(f"{served.url}/metrics", headers={"authorization": f"Bearer {admin}"})
        assert answer.status_code == 200
        return sum(float(line.rsplit(" ", 1)[1]) for line in answer.text.splitlines() if ok in line)

    environ = {"TMPDIR": str(temporary)}
    with gateway_serve(server.url, tmp_path, {}, environ, args=("--workers", "2")) as served:
        store = f"sqlite:///{tmp_path / 'gateway.db'}"
        created = subprocess.run(
            [sys.executable, "-m", "handler.entry.cli", "keys", "create", "--name", "prometheus", "--admin", "--json"],
            env={**os.environ, "GATEWAY_STORE": store},
            capture_output=True,
            text=True,
            check=True,
        )
        admin = orjson.loads(created.stdout)["key"]
        sent = 0
        # Each request on a connection of its own: the workers take them in turns the kernel decides. Go on until
        # both served some (their files say so), so that a sum is what the scrapes must show.
        while sent < 200:
            for _ in range(10):
                answer = httpx.post(
                    f"{served.url}/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": HI},
                    headers={"authorization": f"Bearer {served.key}"},
                )
                assert answer.status_code == 200
                sent += 1
            time.sleep(1.2)
            if len(per_worker()) == 2 and all(per_worker()):
                break
        wait_for(lambda: requests_reported(admin) == sent, f"a scrape reporting {sent} requests", timeout_s=5)
        scrapes = [requests_reported(admin) for _ in range(10)]
        assert scrapes == [sent] * 10, f"each worker's own figures: {per_worker()}"
        assert len(per_worker()) == 2 and all(per_worker()), "one worker took every request: nothing was summed"

        # Prometheus keeps its connection, and so scrapes one worker: it sees every request, and no reset.
        job = {
            "job_name": "gateway",
            "metrics_path": "/metrics",
            "authorization": {"type": "Bearer", "credentials": admin},
            "static_configs": [{"targets": [served.url.removeprefix("http://")]}],
        }
        with prometheus_server(job, tmp_path) as prometheus:
            wait_for(lambda: query(prometheus, f"gateway_requests_total{{{ok}}}") == sent, "the scrape")
            for _ in range(10):
                httpx.post(
                    f"{served.url}/v1/chat/completions",
                    json={"model": "gpt-4o-mini", "messages": HI},
                    headers={"authorization": f"Bearer {served.key}"},
                )
            sent += 10
            wait_for(lambda: query(prometheus, f"gateway_requests_total{{{ok}}}") == sent, "the next scrapes")
            selector = 'model="gpt-4o-mini",provider="openai",region="global"'
            assert query(prometheus, f"gateway_request_duration_seconds_count{{{selector}}}") == sent
            assert query(prometheus, f"resets(gateway_requests_total{{{ok}}}[5m])") == 0
        served.process.terminate()
        served.process.wait(15)
    assert not list(temporary.glob("gateway-metrics-*")), "the server leaves its workers' folder behind"


def test_a_metrics_port_with_several_workers_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served = {  # (a model to serve: a config naming none is refused before its metrics port is read)
        "providers": {"openai": {"type": "openai", "api_key": "sk-test-000000000000"}},
        "models": {"gpt-test": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
    }
    config = {**served, "observability": {"metrics_port": 9464}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["serve", "--config", str(tmp_path / "config.yaml"), "--workers", "2"]) == 2
    error = capsys.readouterr().err
    assert "observability.metrics_port" in error and "run --workers 1" in error
    # (it advised scraping each worker's /metrics, which cannot be done: the workers share the gateway's port)
    assert "each worker" not in error and "one `gateway serve` per port" in error
    assert main(["serve", "--config", str(tmp_path / "config.yaml"), "--port", "9464"]) == 2
    assert "the gateway's own port" in capsys.readouterr().err
