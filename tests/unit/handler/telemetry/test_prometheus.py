"""The Prometheus registry keeps its label sets bounded and its text parseable."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import orjson
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


def test_a_made_up_model_name_is_counted_as_other_and_kept_by_nothing() -> None:
    """A client's model name the config does not name was kept whole as the key of the registry's label cache: 300
    requests naming 1 MB models (each a 404) held 300 MB in a warm Lambda environment (review), up to 2,000 of them
    the largest body allowed. Counted as `other`, and not kept."""
    registry = Registry(models=["known"], providers=["p"])
    answered = {"provider": None, "region": None, "status": 404, "code": "model_not_found"}
    for i in range(50):
        registry.record(model=f"{i}" + "x" * 100_000, seconds=0.001, added_seconds=0.001, **answered)  # type: ignore[arg-type]
    registry.record(model="known", seconds=0.001, added_seconds=0.001, **answered)  # type: ignore[arg-type]
    assert sum(len(model or "") for model, *_ in registry._series) == len("known")
    by_model = {dict(labels)["model"]: count for labels, count in registry.requests.counters.items()}
    assert by_model == {"other": 50, "known": 1}


def test_the_workers_figures_summed_are_the_figures_of_one_process_that_served_it_all(tmp_path: Path) -> None:
    """`gateway serve --workers 2`: a scrape answered with one worker's figures. Each worker's file, summed with the
    scraped worker's own figures, gives what one process serving every request would have counted."""
    answered = {"provider": "p", "region": "r", "code": None, "added_seconds": 0.001, "input_tokens": 3}
    workers, alone = (
        [Registry(models=["m"], providers=["p"]) for _ in range(2)],
        Registry(models=["m"], providers=["p"]),
    )
    for number, seconds in enumerate((0.002, 0.3, 0.03, 7.0, 0.0004)):
        for registry in (workers[number % 2], alone):
            registry.record(model="m", status=200, seconds=seconds, cost_usd=0.25, **answered)  # type: ignore[arg-type]
            registry.failure(401, "invalid_api_key", seconds)
    workers[1].spans_dropped(3)
    alone.spans_dropped(3)
    files = [prometheus.Shared(tmp_path, worker) for worker in workers]
    files[1].close()  # the other worker's last figures, as it writes them on its way out
    assert files[0].others() == [orjson.loads(files[1].path.read_bytes())]
    server = Registry()
    server.absorb(workers[0].state())
    for state in files[0].others():
        server.absorb(state)
    assert server.render() == alone.render()


def requests_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_requests":
            return sum(sample.value for sample in family.samples if sample.labels.get("model") == "m")
    return 0.0


def answered(registry: prometheus.Registry) -> None:
    registry.record(model="m", provider="p", region="global", status=200, code=None, seconds=0.01, added_seconds=0.001)


async def test_a_counter_never_goes_down_from_one_workers_scrape_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `gateway serve --workers N`, a scrape on one worker answers with its own figures live and the others' as
    last written (once a second): a scrape on worker A, then one on worker B within that second (each scrape a
    connection of its own), had A's latest request in the first and not in the second, a fall Prometheus reads as a
    counter reset. A worker now writes what it answers with first. Found by review (ifacerev36)."""
    worker_a, worker_b = prometheus.Registry(["m"], ["p"]), prometheus.Registry(["m"], ["p"])
    shared_a = prometheus.Shared(tmp_path, worker_a)
    shared_b = prometheus.Shared(tmp_path, worker_b)
    answered(worker_b)
    answered(worker_a)
    for shared in (shared_a, shared_b):  # each worker's periodic write
        _, due = shared._due()
        assert due is not None
        shared._write(due)
    answered(worker_a)  # a request worker A answers within the second before its next write

    async def scrape(registry: prometheus.Registry, shared: prometheus.Shared) -> float:
        monkeypatch.setattr(prometheus, "REGISTRY", registry)
        monkeypatch.setattr(prometheus, "_shared", shared)
        return requests_total((await prometheus.render()).decode())

    first = await scrape(worker_a, shared_a)  # the scrape worker A took
    second = await scrape(worker_b, shared_b)  # the next, which worker B took
    assert first == 3
    assert second >= first, f"gateway_requests_total went from {first} to {second}: a counter reset to Prometheus"


async def test_a_periodic_write_in_flight_does_not_land_older_figures_over_a_scrapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The periodic writer takes figures (1 request) and hands them to a thread; before that thread writes, a scrape
    on this worker takes newer figures (2), answers with them and writes them on another thread. The older write then
    lands last: the worker's file says 1, `_written` says 2 is written, so nothing rewrites it until the next request,
    and a scrape the other worker answers reads 1 after one that said 2: a counter fall. Each taking of the figures
    is numbered now, and a write lands only if no later one has. Found by review (mergerev36c)."""
    worker_a, worker_b = prometheus.Registry(["m"], ["p"]), prometheus.Registry(["m"], ["p"])
    shared_a, shared_b = prometheus.Shared(tmp_path, worker_a), prometheus.Shared(tmp_path, worker_b)
    monkeypatch.setattr(prometheus, "SHARE_INTERVAL_S", 0.01)
    blocked, go = threading.Event(), threading.Event()
    real_write_bytes = Path.write_bytes
    calls = []

    def write_bytes(self: Path, data: bytes) -> int:  # the periodic writer's thread scheduled late (first write)
        calls.append(data)
        if len(calls) == 1:
            blocked.set()
            go.wait(5)
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)

    async def scrape(registry: prometheus.Registry, shared: prometheus.Shared) -> float:
        monkeypatch.setattr(prometheus, "REGISTRY", registry)
        monkeypatch.setattr(prometheus, "_shared", shared)
        return requests_total((await prometheus.render()).decode())

    answered(worker_a)
    periodic = asyncio.create_task(shared_a.run())
    try:
        for _ in range(500):
            if blocked.is_set():
                break
            await asyncio.sleep(0.01)
        assert blocked.is_set()
        answered(worker_a)  # a second request, then a scrape on worker A
        first = await scrape(worker_a, shared_a)
        go.set()
        await asyncio.sleep(0.2)  # the periodic write lands; the writer runs on (nothing changed: no write)
        second = await scrape(worker_b, shared_b)  # the next scrape, on worker B
    finally:
        go.set()
        periodic.cancel()
        with pytest.raises(asyncio.CancelledError):
            await periodic
    assert first == 2
    assert second >= first, f"gateway_requests_total went from {first} to {second}: a counter reset to Prometheus"


def dropped_total(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name.startswith("gateway_") and "dropped" in family.name:
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


async def test_a_span_dropped_between_a_scrapes_state_and_its_fingerprint_is_not_lost_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Shared.answered` takes `registry.state()` first and the fingerprint after (in `_due(state)`). The OTLP
    exporter's thread counts a dropped span (`spans_dropped`) at any time: one counted between the two is in the
    fingerprint (`_written`) and not in the figures written. The next scrape on this worker answers with it (its state
    is live) and writes nothing (the fingerprint has not moved, `_on_file == _taken`); a scrape the other worker
    answers then reads this worker's file without it: the counter falls, a reset to Prometheus. The fingerprint is
    read first now. Found by review (mergerev36d)."""
    worker_a, worker_b = prometheus.Registry(["m"], ["p"]), prometheus.Registry(["m"], ["p"])
    shared_a, shared_b = prometheus.Shared(tmp_path, worker_a), prometheus.Shared(tmp_path, worker_b)
    real_state = worker_a.state
    calls = []

    def state() -> dict:
        taken = real_state()
        calls.append(1)
        if len(calls) == 1:
            worker_a.spans_dropped(1)  # the exporter's thread, right after the scrape took the figures
        return taken

    monkeypatch.setattr(worker_a, "state", state)

    async def scrape(registry: prometheus.Registry, shared: prometheus.Shared) -> float:
        monkeypatch.setattr(prometheus, "REGISTRY", registry)
        monkeypatch.setattr(prometheus, "_shared", shared)
        return dropped_total((await prometheus.render()).decode())

    assert await scrape(worker_a, shared_a) == 0  # took the figures before the span
    first = await scrape(worker_a, shared_a)  # the next scrape on A: the span, live
    second = await scrape(worker_b, shared_b)  # the next, on worker B: A's file
    assert first == 1
    assert second >= first, f"the dropped-spans counter went from {first} to {second}: a counter reset to Prometheus"


def test_a_write_that_fails_leaves_no_temporary_file_in_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part-way (a full disk: the file opened, its bytes not all written) leaves its `.N.tmp`
    file behind, and each later failure another of its own (the temporary's name is numbered). Found by review
    (mergerev36d)."""
    worker = prometheus.Registry(["m"], ["p"])
    shared = prometheus.Shared(tmp_path, worker)
    real_write_bytes = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        real_write_bytes(self, data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    for _ in range(3):
        worker.spans_dropped(1)
        _, due = shared._due()
        assert due is not None
        with pytest.raises(OSError):
            shared._write(due)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [], f"left in the server's folder: {left}"
