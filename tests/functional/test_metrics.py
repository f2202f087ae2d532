"""`GET /metrics`: Prometheus' text format, read back with Prometheus' own client parser."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord, LedgerItem, UsageQuery
from tests.functional.conftest import Running
from tests.support.inprocess import serve

HI = [{"role": "user", "content": "Hi"}]


def scrape(running: Running, key: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    return samples_of(httpx.get(f"{running.url}/metrics", headers={"authorization": f"Bearer {key}"}))


def samples_of(answer: httpx.Response) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A `/metrics` answer's samples, by metric and label set."""
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


def test_metrics_count_what_the_ledger_records_after_a_fallback_and_a_failed_stream(running: Running) -> None:
    """`/metrics` and the ledger agree: a request another model served is counted under that model (it was
    under the one asked for, beside the provider that served it), and a stream an upstream error ended is
    counted with the error's status and its tokens and cost (it was a 200 with none)."""
    admin, user = running.mint(admin=True), running.mint()
    before = scrape(running, admin)
    headers = {"authorization": f"Bearer {user}"}
    body = {"model": "limited", "messages": HI}  # fail-429, then its fallback gpt-4o-mini
    assert httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    stream = {"model": "garbled", "messages": HI, "stream": True}  # a chunk of another shape, half-way
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=stream, headers=headers) as answer:
        text = answer.read().decode()
    assert answer.status_code == 200 and '"error"' in text
    lines = {line.model: line for line in running.ledger(user)}
    while len(lines) < 2:  # (the stream's line is written after its answer)
        lines = {line.model: line for line in running.ledger(user)}
    after = scrape(running, admin)

    def grew(name: str, **where: str) -> float:
        key = labels(**where)
        return after.get(name, {}).get(key, 0) - before.get(name, {}).get(key, 0)

    served = {"provider": "openai", "region": "global"}
    assert set(lines) == {"gpt-4o-mini", "garbled"} and lines["gpt-4o-mini"].status == 200
    assert grew("gateway_requests_total", model="gpt-4o-mini", status="200", **served) >= 1
    assert grew("gateway_requests_total", model="limited", status="200", **served) == 0
    failed = lines["garbled"]
    assert failed.status >= 500 and failed.output_tokens > 0
    assert grew("gateway_requests_total", model="garbled", status=str(failed.status), **served) == 1
    assert grew("gateway_requests_total", model="garbled", status="200", **served) == 0
    assert grew("gateway_tokens_total", model="garbled", direction="output", **served) == failed.output_tokens
    assert grew("gateway_cost_usd_total", model="garbled", **served) == pytest.approx(failed.cost_usd)
    assert grew("gateway_fee_usd_total", model="garbled", **served) == pytest.approx(failed.fee_usd)


async def test_the_cost_counter_is_the_providers_cost_and_the_fee_has_its_own() -> None:
    """`gateway_cost_usd_total` counted the providers' cost plus the gateway's fee, where `x-gateway-cost-usd`, the
    request's log line and the ledger's `cost_usd` are the providers' cost alone: with a 10 % fee and $0.001 a
    request, `sum(increase(gateway_cost_usd_total))` read $0.002044 for two requests the ledger billed $0.000040 of
    provider cost. A model without a price, whose cost is unknown, added nothing, and its fee was counted nowhere.
    Now the cost counter means what the header means, and `gateway_fee_usd_total` counts the fee, both as the
    ledger has them."""
    priced = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
    unpriced = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": "unknown"}
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    message = {"role": "assistant", "content": "hi"}
    completion = {"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini", "usage": usage}
    completion["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
    served = await serve(
        lambda request: httpx.Response(200, json=completion),
        {"metered": priced, "unmetered": unpriced},
        fee={"percent": 10, "per_request_usd": 0.001},
    )
    # An admin key: it scrapes, and, with no budget, may use a model without a price (a budgeted key may not).
    minted = await KeyAdmin(KeyService(served.gateway.store, 0)).mint(
        KeyRecord(id="", name="prometheus", secret_hash="", created_at=0, admin=True)
    )
    admin = {"authorization": f"Bearer {minted.key}"}
    before = samples_of(await served.http.get("/metrics", headers=admin))
    answers = [
        await served.http.post("/v1/chat/completions", json={"model": model, "messages": HI}, headers=admin)
        for model in ("metered", "metered", "unmetered")
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    await served.gateway.drain()
    lines = await served.gateway.store.usage(UsageQuery([minted.record.id], 0, time.time() + 3600))
    after = samples_of(await served.http.get("/metrics", headers=admin))

    def grew(name: str, line: LedgerItem) -> float:
        where = labels(model=line.model, provider=line.provider, region=line.region)
        return after.get(name, {}).get(where, 0) - before.get(name, {}).get(where, 0)

    metered = [line for line in lines if line.model == "metered"]
    [unmetered] = [line for line in lines if line.model == "unmetered"]
    assert len(metered) == 2 and answers[2].headers["x-gateway-cost-usd"] == "unknown"
    assert grew("gateway_cost_usd_total", metered[0]) == pytest.approx(sum(line.cost_usd or 0 for line in metered))
    assert grew("gateway_cost_usd_total", metered[0]) == pytest.approx(
        sum(float(answer.headers["x-gateway-cost-usd"]) for answer in answers[:2])
    )
    assert grew("gateway_fee_usd_total", metered[0]) == pytest.approx(sum(line.fee_usd for line in metered))
    assert grew("gateway_fee_usd_total", metered[0]) == pytest.approx(
        sum(float(answer.headers["x-gateway-fee-usd"]) for answer in answers[:2])
    )
    assert unmetered.cost_usd is None and unmetered.fee_usd == pytest.approx(0.001)
    assert grew("gateway_cost_usd_total", unmetered) == 0
    assert grew("gateway_fee_usd_total", unmetered) == pytest.approx(unmetered.fee_usd)
    await served.gateway.aclose()


def test_a_model_the_config_does_not_name_is_other_in_emf_and_no_key_reaches_a_line(
    running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key sent as the model (a 404) was written whole in the answer's message, the log line and the EMF line's
    dimensions; and any model name a client chose became a CloudWatch dimension (a new metric each, billed). The
    EMF dimensions are Prometheus' labels now: `other` for a model the config does not name."""
    import orjson

    from handler.telemetry import observability

    monkeypatch.setattr(observability, "METRICS_ON", True)
    key = running.mint(models=["*"])
    for model in (key, "my-own-model-xyz"):
        answer = httpx.post(
            f"{running.url}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
            headers={"authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 404 and key not in answer.text
        written = capsys.readouterr().out
        assert key not in written and key.split("_", 2)[2] not in written
        [emf] = [orjson.loads(line) for line in written.splitlines() if '"_aws"' in line]
        assert emf["model"] == "other" and emf["provider"] == "none"
        [logged] = [orjson.loads(line) for line in written.splitlines() if '"message":"request"' in line]
        assert logged["model"] == ("[REDACTED]" if model == key else model)


def test_the_request_metrics_count_requests_to_models_only_failures_too(
    running: Running, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key, admin and usage routes' failures were counted in `gateway_requests_total` (and their successes
    not), which skewed any error rate; their log lines lacked the key id once the key was known; and on Lambda a
    model request refused before its model was known wrote no EMF line, so CloudWatch counted fewer requests. Such a
    request was in `gateway_requests_total` but not in the duration histograms (bad key, bad JSON: requests_total +2,
    gateway_request_duration_seconds_count +0), which the docs say count the same requests."""
    import orjson

    from handler.telemetry import observability

    monkeypatch.setattr(observability, "METRICS_ON", True)
    admin, user = running.mint(admin=True), running.mint()
    before = scrape(running, admin)
    capsys.readouterr()
    bad = {"authorization": "Bearer gwk_nosuchkey1234_abcdefghijklmnop"}
    assert (
        httpx.post(
            f"{running.url}/admin/keys", json={"name": "x"}, headers={"authorization": f"Bearer {user}"}
        ).status_code
        == 403
    )
    assert httpx.get(f"{running.url}/v1/usage", headers=bad).status_code == 401
    assert (
        httpx.post(f"{running.url}/v1/keys", content=b"{", headers={"authorization": f"Bearer {user}"}).status_code
        == 400
    )
    assert (
        httpx.post(
            f"{running.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HI}, headers=bad
        ).status_code
        == 401
    )
    assert (
        httpx.post(f"{running.url}/v1/messages", content=b"{", headers={"authorization": f"Bearer {user}"}).status_code
        == 400
    )
    written = capsys.readouterr().out.splitlines()
    after = scrape(running, admin)

    def grew(name: str, key: tuple[tuple[str, str], ...]) -> float:
        return after.get(name, {}).get(key, 0) - before.get(name, {}).get(key, 0)

    where = {"model": "other", "provider": "none", "region": "none"}
    assert grew("gateway_requests_total", labels(**where, status="401")) == 1  # the chat request's, not /v1/usage's
    assert grew("gateway_requests_total", labels(**where, status="400")) == 1
    assert grew("gateway_requests_total", labels(**where, status="403")) == 0
    assert grew("gateway_errors_total", labels(code="admin_only", status="403")) == 0
    # Both are in the duration histograms as they are in the counts (requests_total grew by 2, each _count by 0).
    assert grew("gateway_request_duration_seconds_count", labels(**where)) == 2
    assert grew("gateway_added_latency_seconds_count", labels(**where)) == 2
    assert grew("gateway_request_duration_seconds_bucket", labels(**where, le="+Inf")) == 2
    assert grew("gateway_request_duration_seconds_sum", labels(**where)) > 0
    logged = [orjson.loads(line) for line in written if '"message":"request"' in line]
    assert [(line["path"], line["status"]) for line in logged] == [
        ("/admin/keys", 403),
        ("/v1/usage", 401),
        ("/v1/keys", 400),
        ("/v1/chat/completions", 401),
        ("/v1/messages", 400),
    ]
    user_id = user.split("_")[1]
    assert [line.get("key_id") for line in logged] == [user_id, None, user_id, None, user_id]
    assert all(line["latency_ms"] > 0 for line in logged)
    emf = [orjson.loads(line) for line in written if '"_aws"' in line]
    assert [(line["model"], line["requests"]) for line in emf] == [("other", [1.0]), ("other", [1.0])]
    assert all(line["latency"][0] > 0 for line in emf)  # (the request's whole time, as an answered one's)
