"""Usage rows: the lines whose cost was not the provider's own figure, token and savings columns, filters by
attribution, and latency percentiles."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from decimal import Decimal

import pytest
from starlette.testclient import TestClient

from adapters.store.records import ledger_to_json
from handler.api.app import create_app
from handler.dashboard.reports import (
    MAX_GROUPS,
    ReportBuilder,
    aggregate,
    as_json,
    latency,
    latency_table,
    parse_report,
    parse_top,
    parse_views,
    parse_when,
    report_json,
    to_csv,
)
from handler.errors import InvalidRequestError
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import NAME_CONCURRENCY, KeyAdmin
from handler.ports import KeyRecord
from tests.unit.adapters.store.test_contract import line


def test_rows_count_estimated_and_reserved_costs() -> None:
    items = [
        line("a", 0.1),
        replace(line("a", 0.2), cost_source="estimate"),
        replace(line("a", 0.3), cost_source="reserved"),
        replace(line("b", 0.4), cost_source="reserved"),
    ]
    rows = {row["key"]: row for row in aggregate(items, ["key"])}
    assert (rows["a"]["requests"], rows["a"]["estimated_cost_requests"], rows["a"]["reserved_cost_requests"]) == (
        3,
        1,
        1,
    )
    assert (rows["b"]["estimated_cost_requests"], rows["b"]["reserved_cost_requests"]) == (0, 1)
    header, first, _ = to_csv(list(rows.values())).splitlines()
    columns = dict(zip(header.split(","), first.split(","), strict=True))
    assert columns["estimated_cost_requests"] == "1" and columns["reserved_cost_requests"] == "1"


def test_rows_sum_cache_writes_reasoning_and_savings_as_columns_of_their_own() -> None:
    items = [
        replace(line("a", 0.1), cached_tokens=6, cache_write_tokens=2, reasoning_tokens=3, cache_savings_usd=0.1),
        replace(line("a", 0.2), cached_tokens=4, reasoning_tokens=1, cache_savings_usd=0.2),
        replace(line("a", 0.3), cache_write_tokens=5, cache_savings_usd=-0.05),
    ]
    (row,) = aggregate(items, [])
    assert (row["cached_tokens"], row["cache_write_tokens"], row["reasoning_tokens"]) == (10, 7, 4)
    assert row["cache_savings_usd"] == Decimal("0.25")  # decimal sums: no 0.25000000000000006
    header, values = to_csv([row]).splitlines()
    assert dict(zip(header.split(","), values.split(","), strict=True))["cache_savings_usd"] == "0.25"
    assert as_json([row])[0]["cache_savings_usd"] == 0.25


def test_filters_keep_lines_carrying_every_tag_and_the_named_user_and_session() -> None:
    items = [
        replace(line("a", 0.1), tags={"team": "search", "env": "prod"}, user="ann", session="s1"),
        replace(line("a", 0.2), tags={"team": "search"}, user="bob"),
        replace(line("a", 0.4), tags={"team": "ads"}, user="ann", session="s1"),
    ]

    def costs(**params: str) -> list[float]:
        return [i.cost_usd or 0 for i in parse_report(None, None, None, **params).select(items)]

    assert costs(tag="team=search") == [0.1, 0.2]
    assert costs(tag="team=search, env=prod") == [0.1]
    assert costs(user="ann") == [0.1, 0.4] and costs(user="ann", tag="team=ads") == [0.4]
    assert costs(session="s1", user="bob") == [] and costs() == [0.1, 0.2, 0.4]
    for bad in ({"tag": "team"}, {"tag": "team=a b"}, {"user": "x" * 257}, {"session": ""}):
        with pytest.raises(InvalidRequestError) as refused:
            parse_report(None, None, None, **bad)
        assert refused.value.param == next(iter(bad))


KEY = "gwk_abcdefghijkm_S3cr3tS3cr3tS3cr3tS3cr3t"


def test_a_filter_holding_a_key_matches_the_lines_as_kept_and_is_echoed_redacted() -> None:
    """A report echoes its filter: `user=`, `session=` and a tag's value holding a key came back whole. Each is
    redacted as a line keeps it, so it still matches the lines of the client that sent its key there."""
    items = [replace(line("a", 0.1), tags={"team": "[REDACTED]"}, user="[REDACTED]", session="s-[REDACTED]")]
    spec = parse_report(None, None, None, tag=f"team={KEY}", user=KEY, session=f"s-{KEY}")
    assert [i.cost_usd for i in spec.select(items)] == [0.1]
    assert spec.filter.as_json() == {
        "tags": {"team": "[REDACTED]"},
        "user": "[REDACTED]",
        "session": "s-[REDACTED]",
        "request_id": None,
    }


def test_a_key_as_a_tag_name_is_refused_unsaid_and_one_kept_before_is_reported_redacted() -> None:
    """`tag=` and `group_by=tag:` naming a key are a 400 that does not say it; a line kept before tag names holding
    a key were refused shows the name redacted in `tag_names`."""
    for params in ({"tag": f"{KEY}=1"}, {"group_by": f"tag:{KEY}"}):
        with pytest.raises(InvalidRequestError) as refused:
            parse_report(None, None, **{"group_by": None, **params})
        assert refused.value.param == next(iter(params)) and "S3cr3t" not in refused.value.message
    items = [replace(line("a", 0.1), tags={KEY: "1", "team": "search"})]
    report = report_json(parse_report(None, None, None), items, aggregate(items, []))
    assert report["tag_names"] == ["[REDACTED]", "team"]


def test_latency_percentiles_are_nearest_rank_over_the_lines() -> None:
    items = [
        replace(line("a", 0.1), gateway_ms=float(ms), store_ms=1.0, upstream_ms=100.0 * ms) for ms in range(1, 101)
    ]
    summary = latency(items)
    assert summary["requests"] == 100
    assert summary["gateway_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0}
    assert summary["store_ms"] == {"p50": 1.0, "p95": 1.0, "p99": 1.0}
    assert summary["upstream_ms"]["p99"] == 9900.0
    assert latency(items[:1])["gateway_ms"] == {"p50": 1.0, "p95": 1.0, "p99": 1.0}
    assert latency([])["upstream_ms"] == {"p50": None, "p95": None, "p99": None}
    assert "p95" in latency_table(summary) and "9900.0" in latency_table(summary)


@pytest.mark.parametrize("when", ["nan", "inf", "-inf"])
def test_a_time_that_is_no_number_is_refused_not_an_empty_report(when: str) -> None:
    with pytest.raises(InvalidRequestError, match="since must be a finite time"):
        parse_when(when, 0.0, "since")


def test_a_report_made_batch_by_batch_with_views_is_each_grouping_summed_alone() -> None:
    """The server sums a report's lines as the store reads them, a batch at a time, without keeping them
    (`ReportBuilder`), and its views in the same pass: each is what `aggregate` makes of all the lines at once."""
    items = [
        replace(line(key, cost, ts=1_800_000_000 + 40_000 * i, model=model), tags=tags, cost_source=source)
        for i, (key, cost, model, tags, source) in enumerate(
            [
                ("a", 0.1, "m1", {"team": "x"}, "provider"),
                ("b", 1.6e-7, "m2", {"team": "y"}, "estimate"),
                ("a", 0.2, "m2", {}, "reserved"),
                ("c", 0.3, "m1", {"team": "x", "env": "prod"}, "provider"),
                ("b", 0.4, "m1", {"team": "x"}, "provider"),
            ]
        )
    ]
    items[3] = replace(items[3], cost_usd=None)  # kept by the filter: an unknown cost
    names = {"a": "alpha", "b": "beta", "c": "gamma"}
    views = [[], ["day", "model"], ["key"], ["tag:team"]]
    spec = parse_report("2020-01-01", "2030-01-01", "model", tag="team=x")
    report = ReportBuilder(spec, views)
    report.add(items[:2])
    report.add(items[2:])
    kept = spec.select(items)
    assert report.answer(names, "json") == {
        **report_json(spec, kept, aggregate(kept, ["model"], names)),
        "views": [{"group_by": groups, "data": as_json(aggregate(kept, groups, names))} for groups in views],
    }
    assert report.answer(names, "csv") == to_csv(aggregate(kept, ["model"], names))
    assert report.key_ids == {"a", "b", "c"}
    assert ReportBuilder(spec).answer(None, "json")["data"] == []


def test_a_basic_iso_date_is_a_date_and_epoch_milliseconds_are_refused() -> None:
    """`20261201` (ISO 8601's basic date) was read as epoch seconds, 1970-08-23, and `1796256000000` (epoch
    milliseconds) as seconds in the year 58,000: 200 with an empty report either way (found by review)."""
    assert parse_when("20261201", 0.0, "since") == parse_when("2026-12-01", 0.0, "since") == 1796083200.0
    assert parse_when("20261201T120000Z", 0.0, "since") == 1796083200.0 + 12 * 3600
    assert parse_when("1796083200", 0.0, "since") == parse_when("1796083200.5", 0.0, "since") - 0.5 == 1796083200.0
    with pytest.raises(InvalidRequestError, match="until 1796083200000 is no epoch seconds .*milliseconds"):
        parse_when("1796083200000", 0.0, "until")
    with pytest.raises(InvalidRequestError, match=r"since must be a date \(YYYY-MM-DD or YYYYMMDD\)"):
        parse_when("20261399", 0.0, "since")


def test_a_grouping_takes_at_most_a_lines_worth_of_groups() -> None:
    """`group_by` (and each `view`) took any number of `tag:` groups, each one more value made for every line of the
    window: 1,000 of them, a query under API Gateway's 10 KB that any key may send for its own report, made a report
    over 20,000 lines take 3.9 s instead of 0.26 s, in one of the process's two report turns. A line carries at most
    16 tags: a grouping takes the five fixed groups and 16 more; past that, a 400 naming the parameter."""
    widest = ",".join(["key", "model", "day", "user", "session", *(f"tag:t{n}" for n in range(16))])
    assert len(parse_report(None, None, widest).group_by) == MAX_GROUPS == 21
    assert parse_views([widest]) == [widest.split(",")]
    many = ",".join(f"tag:{n:x}" for n in range(1000))
    for refused_by, param in (
        (lambda: parse_report(None, None, many), "group_by"),
        (lambda: parse_views(["", many]), "view"),
        (lambda: parse_report(None, None, f"{widest},tag:t16"), "group_by"),
    ):
        with pytest.raises(InvalidRequestError) as refused:
            refused_by()
        assert refused.value.param == param
        assert f"{param} takes at most 21 groups" in refused.value.message

    gateway = build_gateway(store_url="sqlite://", environ={})
    template = KeyRecord(id="", name="tenant", secret_hash="", created_at=0)
    key = asyncio.run(KeyAdmin(gateway.keys).mint(template)).key
    with TestClient(create_app(gateway)) as client:
        answer = client.get("/v1/usage", params={"group_by": many}, headers={"x-api-key": key})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "group_by" and "not 1000" in answer.json()["error"]["message"]


def test_a_report_grouped_by_key_reads_its_keys_names_a_few_at_a_time() -> None:
    """A report grouped by key (every dashboard load's `day,key` and `key` views) read its keys' names one after
    another, each a store read (on DynamoDB a `GetItem`) once the key cache's 5 s had passed: 100 keys at 20 ms a read
    added 2.07 s to the report, inside its turn. Now `NAME_CONCURRENCY` are read at once."""
    gateway = build_gateway(store_url="sqlite://", environ={})

    async def keys() -> tuple[str, list[str]]:
        admin = KeyRecord(id="", name="ops", secret_hash="", created_at=0, admin=True)
        minted = [await KeyAdmin(gateway.keys).mint(admin)]
        for n in range(100):
            template = KeyRecord(id="", name=f"svc-{n}", secret_hash="", created_at=0)
            minted.append(await KeyAdmin(gateway.keys).mint(template))
        return minted[0].key, [m.record.id for m in minted[1:]]

    admin, ids = asyncio.run(keys())
    rows = []
    for key_id in ids:
        item = line(key_id, 0.01, ts=time.time() - 60)
        rows.append((key_id, item.ts, item.request_id, ledger_to_json(item), "provider"))
    gateway.store.db.executemany(
        "INSERT INTO ledger (key_id, ts, request_id, data, cost_source) VALUES (?, ?, ?, ?, ?)", rows
    )
    read = gateway.store.get_key
    in_flight, most = [0], [0]

    async def slow_read(key_id: str) -> KeyRecord | None:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await asyncio.sleep(0.02)  # a DynamoDB GetItem's round trip, generously
            return await read(key_id)
        finally:
            in_flight[0] -= 1

    gateway.store.get_key = slow_read  # type: ignore[method-assign]
    with TestClient(create_app(gateway)) as client:
        client.get("/v1/models", headers={"authorization": f"Bearer {admin}"})  # the admin key read and cached
        gateway.keys.forget()  # a load more than `key_cache_seconds` after the last
        client.get("/v1/models", headers={"authorization": f"Bearer {admin}"})
        most[0] = 0
        answer = client.get("/admin/usage", params={"group_by": "key"}, headers={"authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.text
    assert sorted(row["key_name"] for row in answer.json()["data"]) == sorted(f"svc-{n}" for n in range(100))
    assert most[0] == NAME_CONCURRENCY, f"at most {most[0]} of the 100 names read at once"


def test_top_keeps_each_groupings_groups_of_most_spend_and_folds_the_rest_into_other_rows() -> None:
    """`top=N`: each grouping keeps the N groups of most spend over the window (its days summed, as the dashboard
    ranks its series) with the rows `aggregate` makes of them, and sums the rest into one `other` row a day (one in
    all without `day`), its groups but the day None, `folded` counting them. Only the kept keys are named."""
    day = 86400
    items = [
        line(key, cost, ts=1_800_000_000 + day * d, model=model)
        for d, key, cost, model in [
            (0, "a", 0.5, "m1"),
            (1, "a", 0.5, "m2"),
            (0, "b", 0.3, "m1"),
            (1, "b", 0.4, "m1"),
            (0, "c", 0.2, "m2"),
            (1, "d", 0.1, "m1"),
            (1, "e", 0.1, "m3"),
        ]
    ]
    spec = parse_report("2020-01-01", "2030-01-01", "key")
    views = [[], ["day", "key"], ["day"], ["model", "key"]]
    report = ReportBuilder(spec, views, top=2)
    report.add(items[:3])
    report.add(items[3:])
    report.fold()
    assert report.key_ids == {"a", "b"}
    answer = report.answer({"a": "alpha", "b": "beta"}, "json")
    assert isinstance(answer, dict) and answer["top"] == 2

    def other(groups: list[str], kept: set[str], on: str | None = None) -> dict[str, object]:
        rest = [i for i in items if i.key_id not in kept and (on is None or i.day == on)]
        (row,) = aggregate(rest, [])
        named = {"key_name": None} if "key" in groups else {}
        values = {g: (on if g == "day" else None) for g in groups}
        return {**values, **named, **as_json([row])[0]}

    names = {"a": "alpha", "b": "beta"}
    assert answer["data"] == [*as_json(aggregate(items[:4], ["key"], names)), other(["key"], {"a", "b"})]
    assert answer["folded"] == 3
    (overall, by_day_key, by_day, by_model_key) = answer["views"]
    assert overall == {"group_by": [], "data": as_json(aggregate(items, [])), "folded": 0}
    assert by_day == {"group_by": ["day"], "data": as_json(aggregate(items, ["day"])), "folded": 0}
    days = sorted({i.day for i in items})
    kept_rows = as_json(aggregate(items[:4], ["day", "key"], names))
    assert by_day_key["data"] == [*kept_rows, *(other(["day", "key"], {"a", "b"}, d) for d in days)]
    assert by_day_key["folded"] == 3
    # By model and key: (m1, b) spends 0.7, then (m1, a) and (m2, a) 0.5 each (their values order them); four folded.
    assert [(r["model"], r["key"]) for r in by_model_key["data"]] == [("m1", "a"), ("m1", "b"), (None, None)]
    assert by_model_key["folded"] == 4
    assert sum(r["requests"] for r in by_model_key["data"]) == len(items)
    # Fewer groups than `top`: nothing folded, the rows as without it.
    wide = ReportBuilder(spec, None, top=1000)
    wide.add(items)
    wide.fold()
    assert wide.answer(None, "json")["data"] == as_json(aggregate(items, ["key"]))


@pytest.mark.parametrize("top", ["0", "1001", "-1", "ten", "2.5", "\u0663", "1" * 5000])
def test_top_is_a_whole_number_from_1_to_1000(top: str) -> None:
    with pytest.raises(InvalidRequestError, match="top must be a whole number from 1 to 1000") as refused:
        parse_top(top)
    assert refused.value.param == "top"
    assert parse_top("1") == 1 and parse_top("1000") == 1000 and parse_top(None) is None and parse_top("") is None
