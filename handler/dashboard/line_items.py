"""Line items one by one: a report's lines listed a row each (`group_by=request`), newest first, a page at a time;
and a key family's lines of a period summed to what they spent (`GET /v1/key`'s `spent_usd` for a key without a
budget of its own, which no meter counts).

Both read the ledger a batch at a time on the store's thread and keep what they answer, never the lines: a listing
at most `limit` of them (and the one past its page, which says there are more), reading newest first and no further
than its page (`Store.scan_usage_newest`); a sum one number, of every line of its period (`Store.scan_usage`)."""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from handler.dashboard.reports import (
    LINES,
    ReportSpec,
    Times,
    exact_usd,
    render,
    report_object,
    shown,
    to_csv,
    usd_display,
)
from handler.errors import InvalidRequestError
from handler.pipeline.attribution import format_tags, stored_tags
from handler.pipeline.budgets import period_of
from handler.pipeline.pricing import exact
from handler.ports import NEWEST_FIRST_SLACK_S, LedgerItem, Store, UsageQuery
from handler.records import Value

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 300  # a time and a request id (`req_` and 32 hex digits)

# A listing's columns, in order (`key_name` beside `key` where the names were read).
COLUMNS = (
    "request_id",
    "time",
    "ts",
    "key",
    "key_name",
    "model",
    "provider",
    "region",
    "upstream_model",
    "status",
    "cost_source",
    "route",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_usd",
    "fee_usd",
    "total_usd",
    "cache_savings_usd",
    "user",
    "session",
    "tags",
    "gateway_ms",
    "store_ms",
    "upstream_ms",
)
# What `gateway usage --group-by request` prints as a table: the columns a person reads a line by (the JSON and the
# CSV have them all).
TABLE_COLUMNS = (
    "time",
    "request_id",
    "key",
    "model",
    "provider",
    "status",
    "cost_source",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "fee_usd",
    "total_usd",
    "user",
    "session",
    "tags",
)


class Page(Value):
    """Which lines of a listing to answer: the newest `limit` of the window, or with a `cursor` (the `(ts,
    request_id)` of the last row of the page before) the newest `limit` older than that row."""

    __slots__ = ("limit", "cursor")

    def __init__(self, limit: int, cursor: tuple[float, str] | None = None) -> None:
        self.limit: Final = limit
        self.cursor: Final = cursor

    def until(self, spec: ReportSpec) -> float:
        """Where the store's read of this page ends (exclusive): the report's `until`, or just past the cursor's time
        (lines of that very time, with a lower request id, are still to come)."""
        if self.cursor is None:
            return spec.until
        return min(spec.until, math.nextafter(self.cursor[0], math.inf))


def cursor_of(item: LedgerItem) -> str:
    """The `cursor` that pages on past `item` (`TS:REQUEST_ID`): its time and request id, which order the lines of a
    listing (two lines of one time, a microsecond apart or not, are told apart and neither is skipped)."""
    return f"{item.ts!r}:{item.request_id}"


def parse_cursor(text: str) -> tuple[float, str]:
    """A `cursor_of`, or a 400 naming `cursor`."""
    when, _, request_id = text.partition(":")
    try:
        ts = float(when)
    except ValueError:
        ts = math.nan
    if not request_id or len(text) > MAX_CURSOR_CHARS or not math.isfinite(ts):
        raise InvalidRequestError(
            "cursor takes the next_cursor of the listing before (TS:REQUEST_ID, a row's ts and request_id)",
            param="cursor",
        )
    return ts, request_id


def parse_page(spec: ReportSpec, limit: str | None, cursor: str | None) -> Page | None:
    """The page of a listing (`group_by=request`), None for a report of sums; `limit` or `cursor` on a report of
    sums is a 400 (its rows are every group's, and have no order to page in)."""
    if spec.group_by != [LINES]:
        for name, value in (("limit", limit), ("cursor", cursor)):
            if value is not None:
                raise InvalidRequestError(f"{name} pages a listing of lines: give group_by={LINES}", param=name)
        return None
    return Page(parse_limit(limit), parse_cursor(cursor) if cursor else None)


def parse_limit(limit: str | None) -> int:
    """A listing's `limit` (a page's rows; `DEFAULT_LIMIT` where none is given), or a 400 naming `limit`: of the line
    items and of the keys (`GET /admin/keys`) alike."""
    if limit is None or limit == "":
        return DEFAULT_LIMIT
    try:
        count = int(limit)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}", param="limit")
    return count


def time_text(ts: float) -> str:
    """A line's time as ISO 8601 in UTC, to the microsecond (`2026-12-06T13:42:31.992123Z`)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def line_row(item: LedgerItem, names: Mapping[str, str] | None) -> dict[str, Any]:
    """One line as a listing's row (`COLUMNS`): USD figures as the decimals of the line's own (`cost_usd` None
    where the model has no price: `total_usd` is then the fee alone, what the line charged), its tags as stored
    (a line kept before a name holding a key was refused has it redacted)."""
    cost = None if item.cost_usd is None else exact_usd(item.cost_usd)
    fee = exact_usd(item.fee_usd)
    row: dict[str, Any] = {
        "request_id": item.request_id,
        "time": time_text(item.ts),
        "ts": item.ts,
        "key": item.key_id,
    }
    if names is not None:
        row["key_name"] = names.get(item.key_id, "")
    row.update(
        model=item.model,
        provider=item.provider,
        region=item.region,
        upstream_model=item.upstream_model,
        status=item.status,
        cost_source=item.cost_source,
        route=item.route,
        input_tokens=item.input_tokens,
        cached_tokens=item.cached_tokens,
        cache_write_tokens=item.cache_write_tokens,
        output_tokens=item.output_tokens,
        reasoning_tokens=item.reasoning_tokens,
        cost_usd=cost,
        fee_usd=fee,
        total_usd=(cost or Decimal(0)) + fee,
        cache_savings_usd=exact_usd(exact(item.cache_savings_usd)),
        user=item.user,
        session=item.session,
        tags=stored_tags(item.tags),
        gateway_ms=item.gateway_ms,
        store_ms=item.store_ms,
        upstream_ms=item.upstream_ms,
    )
    return row


class LineListing:
    """A listing made as `ReportBuilder` makes a report (`add`, a batch at a time on the store's thread; `read`,
    `key_ids` and `answer` alike), keeping the newest `limit` + 1 matching lines of its page in a heap. The store
    reads newest first (`fill`) and stops once the page is whole: each page read every line of the window older than
    its cursor, and paging through a month cost lines² / limit reads."""

    def __init__(self, spec: ReportSpec, page: Page) -> None:
        self.spec = spec
        self.page = page
        self.newest: list[tuple[tuple[float, str], int, LedgerItem]] = []  # a min-heap: the oldest kept on top
        self.read = 0  # lines the store gave, the filter's and the cursor's included
        self.oldest_read = math.inf  # the time of the oldest of them

    async def fill(self, store: Store, key_ids: list[str] | None) -> None:
        """Read the page's lines from `store`, those of `key_ids` (None: every key's), newest first, until it has them
        and the one after. A batch holds those, the cursor's own line (the read starts at its time) and one line
        more: the page is known whole once a line older than all it keeps has been read."""
        query = UsageQuery(key_ids, self.spec.since, self.page.until(self.spec))
        await store.scan_usage_newest(query, self.add, self.page.limit + 3)

    def add(self, lines: Iterable[LedgerItem]) -> bool:
        """Keep what `lines` (newest first, as `Store.scan_usage_newest` hands them) hold of the page; True once the
        page is whole: its `limit` + 1 lines held, and every line the store has yet to hand older than all of them
        (the store's order holds within `NEWEST_FIRST_SLACK_S`)."""
        keep, cursor, held = self.spec.filter, self.page.cursor, self.page.limit + 1
        for item in lines:
            self.read += 1
            self.oldest_read = min(self.oldest_read, item.ts)
            if keep and not keep.matches(item):
                continue
            order = (item.ts, item.request_id)
            if cursor is not None and order >= cursor:
                continue
            entry = (order, self.read, item)  # (`read` breaks a tie, never the items themselves)
            if len(self.newest) < held:
                heapq.heappush(self.newest, entry)
            elif order > self.newest[0][0]:
                heapq.heapreplace(self.newest, entry)
        return len(self.newest) == held and self.newest[0][0][0] > self.oldest_read + NEWEST_FIRST_SLACK_S

    @property
    def key_ids(self) -> set[str]:
        """The keys of the lines kept, whose names the rows show."""
        return {item.key_id for _, _, item in self.newest}

    def lines(self) -> tuple[list[LedgerItem], bool]:
        """The page's lines, newest first, and whether older ones match too."""
        ordered = [item for _, _, item in sorted(self.newest, reverse=True)]
        return ordered[: self.page.limit], len(ordered) > self.page.limit

    def next_cursor(self) -> str | None:
        """The `cursor` of the page after this one, None on the last."""
        lines, more = self.lines()
        return cursor_of(lines[-1]) if more else None

    def rows(self, names: Mapping[str, str] | None) -> list[dict[str, Any]]:
        return [line_row(item, names) for item in self.lines()[0]]

    def answer(self, names: Mapping[str, str] | None, shape: str) -> str | dict[str, Any]:
        """The CSV text (`shape` "csv"; an empty page its header alone), or the report's JSON object
        (`report_object`: its `latency` and `tag_names` are the page's lines') with the page's `limit`, `has_more`
        and `next_cursor` (the `cursor` of the page after, None on the last)."""
        lines, more = self.lines()
        rows = [line_row(item, names) for item in lines]
        if shape == "csv":
            return to_csv([{**row, "tags": format_tags(row["tags"])} for row in rows], columns(names))
        times = Times()
        for item in lines:
            times.add(item)
        report = report_object(self.spec, times.summary(), {name for row in rows for name in row["tags"]}, rows)
        report.update(limit=self.page.limit, has_more=more, next_cursor=cursor_of(lines[-1]) if more else None)
        return report


def columns(names: Mapping[str, str] | None) -> list[str]:
    """A listing's columns: `COLUMNS`, `key_name` only where the names were read."""
    return [column for column in COLUMNS if column != "key_name" or names is not None]


def listing_table(rows: list[dict[str, Any]]) -> str:
    """A listing's rows as a table for people (`TABLE_COLUMNS`), every cell plain text as `to_table` has it (a
    client's `user` or a tag value may hold markup or control characters)."""
    from rich.table import Table
    from rich.text import Text

    if not rows:
        return "no usage in this window\n"
    table = Table(title="Line items, newest first")
    for column in TABLE_COLUMNS:
        table.add_column(column, justify="right" if column.endswith(("_tokens", "_usd")) else "left")
    for row in rows:
        cells = {**row, "tags": format_tags(row["tags"])}
        table.add_row(
            *(
                Text("-" if value is None else usd_display(value) if name.endswith("_usd") else shown(str(value)))
                for name, value in ((name, cells[name]) for name in TABLE_COLUMNS)
            )
        )
    return render(table)


class Spend:
    """What lines cost in all, the provider's charge and the fee (as a budget's meter counts a request: its line's
    `total_usd`), summed as a report sums them (decimals of each line's figure), a batch at a time."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = Decimal(0)

    def add(self, lines: Iterable[LedgerItem]) -> None:
        for item in lines:
            if item.cost_usd is not None:
                self.total += exact_usd(item.cost_usd)
            self.total += exact_usd(item.fee_usd)


def this_month(now: float) -> tuple[str, float, float]:
    """The UTC calendar month holding `now`, as a budget names it (`month:YYYY-MM`), and its bounds (the end
    exclusive): the period `GET /v1/key` tells a key without a budget of its own what it spent in."""
    start = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return period_of("month", now), start.timestamp(), following.timestamp()
