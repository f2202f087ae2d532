"""Line items listed a row each (`group_by=request`), a page at a time, and summed to what a key spent: each line
once, newest first, with how its cost was known, and no more of them held than a page."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from adapters.store import dynamodb
from handler.api.app import create_app
from handler.dashboard.line_items import COLUMNS, LineListing, Page, Spend, parse_page, this_month
from handler.dashboard.reports import ReportSpec, parse_report, parse_views
from handler.errors import InvalidRequestError
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.ports import KeyRecord, LedgerItem, Settlement
from tests.unit.adapters.store.test_contract import line


def listed(spec: ReportSpec, page: Page, items: list[LedgerItem], batch: int = 3) -> LineListing:
    """A listing made as the server makes it: the store's lines of the page's part of the window, a batch at a
    time, never more than the page's limit and one more held between two batches."""
    listing = LineListing(spec, page)
    window = [item for item in items if spec.since <= item.ts < page.until(spec)]
    for start in range(0, len(window), batch):
        listing.add(window[start : start + batch])
        assert len(listing.newest) <= page.limit + 1
    return listing


def test_a_listing_pages_through_every_line_once_newest_first_lines_of_one_time_included() -> None:
    """`group_by=request` lists the lines a row each, newest first; a page's `next_cursor` (its last row's time and
    request id) goes on past it, so that lines of the same time, which a cursor of the time alone would cut
    between, are each listed once, in one page or the next."""
    same = 1_800_000_000.25
    items = [replace(line("a", 0.01 * n, ts=same), request_id=f"req_{n:02d}") for n in range(5)]
    items += [replace(line("b", 0.1, ts=same - n), request_id=f"req_{10 + n}") for n in range(1, 4)]
    items += [replace(line("a", 0.2, ts=same + 1), request_id="req_99")]
    spec = parse_report("2020-01-01", "2030-01-01", "request")
    seen: list[str] = []
    cursor = None
    while True:
        page = parse_page(spec, "2", cursor)
        assert page is not None
        answer = listed(spec, page, items).answer({"a": "alpha"}, "json")
        assert isinstance(answer, dict) and len(answer["data"]) <= 2 and answer["limit"] == 2
        seen += [row["request_id"] for row in answer["data"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            assert not answer["has_more"]
            break
        assert answer["has_more"] and cursor == f"{answer['data'][-1]['ts']!r}:{answer['data'][-1]['request_id']}"
    assert seen == ["req_99", "req_04", "req_03", "req_02", "req_01", "req_00", "req_11", "req_12", "req_13"]


def test_a_listings_rows_say_how_each_cost_was_known_and_a_line_without_a_price_is_null() -> None:
    items = [
        replace(line("a", 0.1, ts=1_800_000_003), cost_source="estimate", fee_usd=0.01, tags={"team": "x"}, user="u"),
        replace(line("a", 0.2, ts=1_800_000_002), cost_source="reserved", session="s-1"),
        replace(line("b", 0.3, ts=1_800_000_001), cost_usd=None, fee_usd=0.0),
    ]
    spec = parse_report("2020-01-01", "2030-01-01", "request")
    page = parse_page(spec, None, None)
    assert page is not None and page.limit == 100
    answer = listed(spec, page, items).answer(None, "json")
    assert isinstance(answer, dict)
    estimated, reserved, unpriced = answer["data"]
    assert (estimated["cost_source"], estimated["cost_usd"], estimated["fee_usd"], estimated["total_usd"]) == (
        "estimate",
        0.1,
        0.01,
        0.11,
    )
    assert (estimated["tags"], estimated["user"], estimated["time"]) == (
        {"team": "x"},
        "u",
        "2027-01-15T08:00:03.000000Z",
    )
    assert (reserved["cost_source"], reserved["session"]) == ("reserved", "s-1")
    assert (unpriced["cost_usd"], unpriced["total_usd"]) == (None, 0.0)
    assert answer["tag_names"] == ["team"] and answer["latency"]["requests"] == 3
    assert "key_name" not in estimated
    header, *rows = listed(spec, page, items).answer({"a": "alpha"}, "csv").splitlines()  # type: ignore[union-attr]
    assert header.startswith("request_id,time,ts,key,key_name,model,provider,region,upstream_model,status,cost_source")
    first, _, last = (dict(zip(header.split(","), row.split(","), strict=True)) for row in rows)
    assert (first["key_name"], first["tags"], first["total_usd"]) == ("alpha", "team=x", "0.11")
    assert (last["cost_usd"], last["total_usd"], last["user"]) == ("", "0", "")
    empty = listed(parse_report("2031-01-01", "2032-01-01", "request"), page, items).answer(None, "csv")
    assert empty == ",".join(column for column in COLUMNS if column != "key_name") + "\n"


@pytest.mark.parametrize(
    ("group_by", "limit", "cursor", "param"),
    [
        ("request", "0", None, "limit"),
        ("request", "1001", None, "limit"),
        ("request", "1.5", None, "limit"),
        ("request", None, "1800000000.5", "cursor"),
        ("request", None, "nan:req_1", "cursor"),
        ("model", "10", None, "limit"),
        (None, None, "1800000000.5:req_1", "cursor"),
    ],
)
def test_a_listings_page_is_checked(group_by: str | None, limit: str | None, cursor: str | None, param: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_page(parse_report(None, None, group_by), limit, cursor)
    assert refused.value.param == param


def test_request_lists_the_lines_alone_and_is_no_view() -> None:
    for group_by in ("request,model", "key,request"):
        with pytest.raises(InvalidRequestError, match="lists the lines one a row: not with other groups"):
            parse_report(None, None, group_by)
    with pytest.raises(
        InvalidRequestError, match="view takes key, model, day, user, session and tag:NAME, not 'request'"
    ):
        parse_views(["request"])
    assert parse_page(parse_report(None, None, "model"), None, None) is None
    assert parse_report(None, None, " request ").group_by == ["request"]


def test_a_request_id_filter_keeps_that_requests_line() -> None:
    items = [line("a", 0.1), line("a", 0.2)]
    spec = parse_report("2020-01-01", "2030-01-01", None, request_id=items[1].request_id)
    assert spec.select(items) == [items[1]]
    assert spec.filter.as_json()["request_id"] == items[1].request_id


def test_a_key_without_a_budget_is_told_its_utc_months_cost_and_fees() -> None:
    december = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert this_month(december) == (
        "month:2026-12",
        datetime(2026, 12, 1, tzinfo=UTC).timestamp(),
        datetime(2027, 1, 1, tzinfo=UTC).timestamp(),
    )
    assert this_month(datetime(2027, 2, 1, tzinfo=UTC).timestamp())[0] == "month:2027-02"
    spend = Spend()
    spend.add([replace(line("a", 0.1), fee_usd=0.01), replace(line("a", 0.2), cost_usd=None, fee_usd=0.02)])
    assert spend.total == Decimal("0.13")


class Reads:
    """What a listing's page read: the lines handed to it, and on DynamoDB the ledger items its queries brought."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lines = 0
        self.items = 0
        add = LineListing.add

        def counted(listing: LineListing, lines: Iterable[LedgerItem]) -> Any:
            lines = list(lines)
            self.lines += len(lines)
            return add(listing, lines)

        monkeypatch.setattr(LineListing, "add", counted)
        call = dynamodb.call

        async def queried(client: Any, operation: str, **request: Any) -> Any:
            answer = await call(client, operation, **request)
            if operation == "query" and any(
                str(value.get("S", "")).startswith(("LEDGER#", "LEDGERS#"))
                for value in request.get("ExpressionAttributeValues", {}).values()
            ):
                self.items += len(answer.get("Items", []))
            return answer

        monkeypatch.setattr(dynamodb, "call", queried)

    def take(self) -> tuple[int, int]:
        taken = (self.lines, self.items)
        self.lines = self.items = 0
        return taken


async def test_a_listing_page_reads_its_lines_not_every_line_older_than_its_cursor(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each page of `group_by=request` read every line of the window older than its cursor and kept the newest
    `limit` + 1: 120 lines in pages of 10 read 120, 111, 101, ... (791 in all: a month paged through costs lines² /
    limit reads, and on DynamoDB as many read units). A page's read now goes newest first and stops once it holds the
    page and the line after it, on both stores, a key family's lines (one query a key) and every key's (DynamoDB: one
    query per index shard) alike; every line is still listed once, newest first. Found by review."""
    gateway = build_gateway(store_url=store_url, environ={})
    admin = (
        await KeyAdmin(gateway.keys).mint(KeyRecord(id="", name="ops", secret_hash="", created_at=0, admin=True))
    ).key
    root = await KeyAdmin(gateway.keys).mint(KeyRecord(id="", name="tenant", secret_hash="", created_at=0))
    child = await KeyAdmin(gateway.keys).mint_child(
        KeyRecord(
            id="", name="agent", secret_hash="", created_at=0, parent_id=root.record.id, ancestors=[root.record.id]
        ),
        100,
        None,
    )
    start = 1_800_000_000.0
    lines = [
        line(root.record.id if n % 3 else child.record.id, 0.001, start + n + (n % 4) * 2.5e-7) for n in range(120)
    ]
    for item in lines:
        await gateway.store.settle(Settlement(item.request_id, [], 0.0, [], item))
    newest_first = [item.request_id for item in sorted(lines, key=lambda item: item.ts, reverse=True)]
    reads = Reads(monkeypatch)
    window = {"group_by": "request", "since": str(start - 1), "until": str(start + 200), "limit": "10"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw"
    ) as client:
        for path, key, scope in (("/v1/usage", root.key, {}), ("/admin/usage", admin, {})):
            listed: list[str] = []
            per_page: list[tuple[int, int]] = []
            cursor: dict[str, str] = {}
            while True:
                answer = await client.get(
                    path, params={**window, **scope, **cursor}, headers={"authorization": f"Bearer {key}"}
                )
                assert answer.status_code == 200, answer.text
                per_page.append(reads.take())
                listed += [row["request_id"] for row in answer.json()["data"]]
                if answer.json()["next_cursor"] is None:
                    break
                cursor = {"cursor": answer.json()["next_cursor"]}
            assert listed == newest_first, path
            assert len(per_page) == 12
            # A batch is the page, the line after it, the cursor's line and one more (13): SQLite reads one, DynamoDB
            # (its queries' pages merged) about a batch and a half, where the first page read all 120.
            lines_read = [lines for lines, _ in per_page]
            assert max(lines_read) <= 2 * 13, (path, lines_read)
            if "dynamodb" in store_url:
                items_read = [items for _, items in per_page]
                assert max(items_read) <= 5 * 13, (path, items_read)
    await gateway.store.close()
