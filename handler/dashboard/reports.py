"""Ledger reports: line items grouped by key, model, day, user, session or tag, as JSON rows, CSV or a table
(`Usage` in handler/schemas.py is something else: one answer's token counts)."""

from __future__ import annotations

import csv
import io
import math
import operator
import re
import time
from array import array
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final

from handler.errors import InvalidRequestError
from handler.pipeline.attribution import MAX_TAGS, parse_tags, tag_name
from handler.pipeline.pricing import exact, usd
from handler.ports import LedgerItem
from handler.records import Value
from handler.redaction import echoed, unkeyed

GROUPS = ("key", "model", "day")
# `group_by=request`: no grouping but the lines themselves, one row each, a page at a time
# (handler/dashboard/line_items.py); alone, and never a `view` (a row a line would hold every line).
LINES = "request"
DEFAULT_WINDOW_DAYS = 30


# A number past this as epoch seconds (the year 5138) is no time a ledger holds: epoch milliseconds (13 digits now),
# which read as seconds would be the year 58,000 and answer an empty report.
EPOCH_SECONDS_BELOW = 1e11
FORMS = "a date (YYYY-MM-DD or YYYYMMDD), an ISO 8601 time or epoch seconds"


def parse_when(text: str | None, default: float, name: str) -> float:
    """`YYYY-MM-DD` (or ISO 8601's basic `YYYYMMDD`), an ISO 8601 time, or epoch seconds; UTC unless an offset is
    given. Eight digits are a basic date, not epoch seconds (those would be 1970 to 1973, when no ledger had a line:
    `since=20261201` read as 1970-08-23 would answer an empty report); epoch milliseconds are refused."""
    if text is None or text == "":
        return default
    basic_date = len(text) == 8 and text.isdigit()
    try:
        seconds = float(text) if not basic_date else None
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):  # nan, inf: no window at all, never "no usage"
            raise InvalidRequestError(f"{name} must be a finite time", param=name)
        if abs(seconds) >= EPOCH_SECONDS_BELOW:
            raise InvalidRequestError(
                f"{name} {text} is no epoch seconds (it would be past the year 5000: milliseconds?); give {FORMS}",
                param=name,
            )
        return seconds
    # A `+` left unencoded in a query string arrives as a space: `...T00:00:00 05:00` meant `+05:00`.
    text = OFFSET_AS_SPACE.sub(r"\1+\2", text.replace("Z", "+00:00"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(f"{name} must be {FORMS}", param=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# A time's offset whose `+` came as a space (left unencoded in a query string).
OFFSET_AS_SPACE = re.compile(r"(\d:\d\d(?:\.\d+)?) (\d\d:?\d\d)$")
ATTRIBUTION = ("user", "session")
TAG_GROUP = r"tag:[A-Za-z0-9_.:/@+-]{1,128}"  # (`re` caches it compiled, from the first report on)
# The most groups a grouping takes: each fixed one and a `tag:NAME` for each tag a line can carry. Every line of the
# window is grouped by each (in each view too), and more tags than a line carries only add work: 1,000 `tag:` groups,
# a query under API Gateway's 10 KB, made a report over 20,000 lines take 3.9 s where it took 0.26 s, in one of the
# process's two report turns.
MAX_GROUPS = len(GROUPS) + len(ATTRIBUTION) + MAX_TAGS


def parse_group_by(text: str | None, name: str = "group_by", kept: Callable[[str], str] = unkeyed) -> list[str]:
    """`key`, `model`, `day`, `user`, `session` and `tag:NAME` (the value of one `x-gateway-tags` name), at most
    `MAX_GROUPS` of them; `name`: the parameter, in the error; `kept`: a value as the caller's lines keep it (a tag's
    name that changes under it is refused, as the header refuses it: `tag_name`)."""
    if not text:
        return []
    groups = [g.strip() for g in text.split(",") if g.strip()]
    if len(groups) > MAX_GROUPS:
        raise InvalidRequestError(
            f"{name} takes at most {MAX_GROUPS} groups (key, model, day, user, session and {MAX_TAGS} tag:NAME, as "
            f"many tags as a line carries), not {len(groups)}",
            param=name,
        )
    unknown = [g for g in groups if g not in GROUPS and g not in ATTRIBUTION and not re.fullmatch(TAG_GROUP, g)]
    if unknown:
        raise InvalidRequestError(
            f"{name} takes key, model, day, user, session and tag:NAME, not {', '.join(map(echoed, unknown))}",
            param=name,
        )
    for group in groups:
        if group.startswith("tag:"):
            tag_name(group[4:], name, kept)  # (a report echoes its groups)
    return list(dict.fromkeys(groups))


# A report's parameters that take one value on every surface, refused given twice (`?tag=team=a&tag=env=prod` was
# read as its last: every team's `env=prod` spend); `view` may repeat.
REPORT_ONCE = ("since", "until", "group_by", "tag", "user", "session", "request_id", "limit", "cursor")
MAX_VIEWS = 8
MAX_TOP = 1000


def parse_top(text: str | None) -> int | None:
    """`top=N` (1 to `MAX_TOP`): each grouping of the answer keeps its N groups of most spend, the rest folded into
    `other` rows (`Sums.fold`); None without it."""
    if text is None or text == "":
        return None
    if not (len(text) <= 4 and text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_TOP):
        raise InvalidRequestError(f"top must be a whole number from 1 to {MAX_TOP}", param="top")
    return int(text)


def parse_views(texts: list[str], kept: Callable[[str], str] = unkeyed) -> list[list[str]]:
    """`view`, up to `MAX_VIEWS` times: more groupings of the same lines in one answer, each written as `group_by`
    is (empty: one row in all). The dashboard asks for its five in one report, which reads the lines once."""
    if len(texts) > MAX_VIEWS:
        raise InvalidRequestError(f"view may be given at most {MAX_VIEWS} times, not {len(texts)}", param="view")
    return [parse_group_by(text, "view", kept) for text in texts]


def group_value(item: LedgerItem, group: str) -> str:
    """The line's value for one `group_by` entry ("" where the line has none)."""
    if group == "key":
        return item.key_id
    if group == "model":
        return item.model
    if group == "day":
        return utc_day(int(item.ts // 86400))
    if group == "user":
        return item.user or ""
    if group == "session":
        return item.session or ""
    return item.tags.get(group[4:], "")


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=1024)
def utc_day(days: int) -> str:
    """`LedgerItem.day` of a line `days` whole days after the epoch (the lines of a report share a few days)."""
    return (EPOCH + timedelta(days=days)).strftime("%Y-%m-%d")


def window(since: str | None, until: str | None) -> tuple[float, float]:
    now = time.time()
    start = parse_when(since, now - DEFAULT_WINDOW_DAYS * 86400, "since")
    end = parse_when(until, now + 1, "until")
    if end <= start:
        raise InvalidRequestError("until must be after since", param="until")
    return start, end


USD_COLUMNS = ("cost_usd", "fee_usd", "total_usd", "cache_savings_usd")
MAX_FILTER_CHARS = 256


class LineFilter(Value):
    """Which lines a report counts: those carrying every one of `tags`, and the `user`, `session` and `request_id`
    (a request's `x-request-id`) if named."""

    __slots__ = ("tags", "user", "session", "request_id")

    def __init__(
        self,
        tags: Mapping[str, str] = MappingProxyType({}),
        user: str | None = None,
        session: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.tags: Final = tags
        self.user: Final = user
        self.session: Final = session
        self.request_id: Final = request_id

    def __bool__(self) -> bool:
        return bool(self.tags) or self.user is not None or self.session is not None or self.request_id is not None

    def matches(self, item: LedgerItem) -> bool:
        if self.request_id is not None and item.request_id != self.request_id:
            return False
        if self.user is not None and item.user != self.user:
            return False
        if self.session is not None and item.session != self.session:
            return False
        return all(item.tags.get(name) == value for name, value in self.tags.items())

    def as_json(self) -> dict[str, Any]:
        return {"tags": self.tags, "user": self.user, "session": self.session, "request_id": self.request_id}


def parse_filter(
    tags: str | None,
    user: str | None,
    session: str | None,
    request_id: str | None = None,
    kept: Callable[[str], str] = unkeyed,
) -> LineFilter:
    """`tag=team=search,env=prod` (every pair must match, the header's syntax), `user=...`, `session=...`,
    `request_id=...`. `kept`: a value as the caller's lines keep it (`unkeyed`, or a request's own, which knows the
    secrets of its key and its ancestors too)."""
    named = (("user", user), ("session", session), ("request_id", request_id))
    for name, value in named:
        if value is not None and not 0 < len(value) <= MAX_FILTER_CHARS:
            raise InvalidRequestError(f"{name} must be 1 to {MAX_FILTER_CHARS} characters", param=name)
    if tags is not None and not tags.strip():
        # Read as no filter, a script's `?tag=$TEAM` with the variable unset was answered every key's spend as that
        # team's (as `gateway usage --tag ''` was; found by review, usagerev37).
        raise InvalidRequestError("tag must be name=value pairs, not empty", param="tag")
    # Each value as a line keeps it, a key in it redacted: it matches the lines, and the report echoes no key (nor
    # the caller's own secret alone, which its lines keep redacted: echoed whole, it matched none; usagerev37).
    user, session, request_id = (None if value is None else kept(value) for _, value in named)
    return LineFilter(parse_tags(tags, "tag", kept), user, session, request_id)


class ReportSpec(Value):
    """A usage report as asked for on any surface (`gateway usage`, `/v1/usage`, `/admin/usage`)."""

    __slots__ = ("since", "until", "group_by", "filter")

    def __init__(self, since: float, until: float, group_by: list[str], filter: LineFilter) -> None:
        self.since: Final = since
        self.until: Final = until
        self.group_by: Final = group_by
        self.filter: Final = filter

    def select(self, items: Iterable[LedgerItem]) -> list[LedgerItem]:
        """The store's lines of the window that pass the filter."""
        return [i for i in items if self.filter.matches(i)] if self.filter else list(items)


def parse_report(
    since: str | None,
    until: str | None,
    group_by: str | None,
    tag: str | None = None,
    user: str | None = None,
    session: str | None = None,
    request_id: str | None = None,
    kept: Callable[[str], str] = unkeyed,
) -> ReportSpec:
    """Validate a report's parameters (a 400 naming the bad one; `kept`: see `parse_filter`)."""
    start, end = window(since, until)
    grouping = parse_grouping(group_by, kept)
    return ReportSpec(start, end, grouping, parse_filter(tag, user, session, request_id, kept))


def parse_grouping(text: str | None, kept: Callable[[str], str] = unkeyed) -> list[str]:
    """A report's `group_by`: `parse_group_by`'s groups, or `request` alone (`LINES`), the lines listed."""
    if text is None or LINES not in (group.strip() for group in text.split(",")):
        return parse_group_by(text, kept=kept)
    if {group.strip() for group in text.split(",") if group.strip()} != {LINES}:
        raise InvalidRequestError(
            f"group_by={LINES} lists the lines one a row: not with other groups", param="group_by"
        )
    return [LINES]


LATENCY_PARTS = ("gateway_ms", "store_ms", "upstream_ms")
PERCENTILES = (50, 95, 99)


def percentile(ordered: list[float], p: int) -> float:
    """The nearest-rank percentile of sorted values: a time some request really took, never an interpolation."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency(items: Iterable[LedgerItem]) -> dict[str, Any]:
    """p50/p95/p99 of the time each part of the request took (the gateway's own work, the store's round trips,
    the upstream's answer), over the given lines; None where there are none."""
    times = Times()
    for item in items:
        times.add(item)
    return times.summary()


class Times:
    """The time each part of a request took, line after line, as `latency` sums them up (in arrays of doubles:
    a report over hundreds of thousands of lines keeps no object per line)."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts = {part: array("d") for part in LATENCY_PARTS}

    def add(self, item: LedgerItem) -> None:
        for part, times in self.parts.items():
            times.append(getattr(item, part))

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"requests": len(self.parts[LATENCY_PARTS[0]])}
        for part, times in self.parts.items():
            ordered = sorted(times)
            summary[part] = {f"p{p}": (round(percentile(ordered, p), 3) if ordered else None) for p in PERCENTILES}
        return summary


# A row's figures, in column order, each at zero.
FIGURES: Final = MappingProxyType(
    {
        "requests": 0,
        "input_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal(0),
        "fee_usd": Decimal(0),
        "total_usd": Decimal(0),
        "cache_savings_usd": Decimal(0),
        "unknown_cost_requests": 0,
        "estimated_cost_requests": 0,
        "reserved_cost_requests": 0,
    }
)
NO_USD = Decimal(0)


def columns(group_by: list[str], names: Mapping[str, str] | None = None) -> list[str]:
    """The columns of `aggregate`'s rows for these groups, rows or none (a CSV's header with no lines)."""
    return [*group_by, *(["key_name"] if "key" in group_by and names is not None else []), *FIGURES]


@lru_cache(maxsize=1 << 16)
def exact_usd(value: float) -> Decimal:
    """A line's USD figure as the decimal its `usd` text is: computed once for a figure many lines share (a model's
    price for the same tokens, a fee, no savings), of the three on each line that each row of each view sums."""
    return Decimal(usd(value))


def line_figures(item: LedgerItem) -> tuple[Any, ...]:
    """What one line adds to its row, in `FIGURES`' order (`total_usd` is the row's cost plus fee, once summed).
    USD figures are decimals of the line's exact figure, so a sum carries no binary float noise."""
    unknown = item.cost_usd is None
    return (
        1,
        item.input_tokens,
        item.cached_tokens,
        item.cache_write_tokens,
        item.output_tokens,
        item.reasoning_tokens,
        NO_USD if item.cost_usd is None else exact_usd(item.cost_usd),
        exact_usd(item.fee_usd),
        NO_USD,
        exact_usd(exact(item.cache_savings_usd)),  # (a line written before the saving was kept `exact`)
        int(unknown),
        # Costed from estimated usage, or at the reserved worst case.
        int(item.cost_source == "estimate"),
        int(item.cost_source == "reserved"),
    )


# Where a row's `cost_usd` and `fee_usd` are among its figures (a group's spend, for `Sums.fold`).
COST_AT, FEE_AT = list(FIGURES).index("cost_usd"), list(FIGURES).index("fee_usd")


class Sums:
    """One grouping's rows, summed line by line (`add`), as `aggregate` answers them once done (`rows`); with
    `fold`, its groups of least spend summed into `other` rows."""

    __slots__ = ("group_by", "sums", "others", "folded")

    def __init__(self, group_by: list[str]) -> None:
        self.group_by = group_by
        self.sums: dict[tuple[str, ...], list[Any]] = {}
        self.others: dict[str, list[Any]] = {}  # the folded groups' sums, by day ("" without `day`)
        self.folded = 0  # how many groups `others` holds

    def add(self, item: LedgerItem, figures: tuple[Any, ...]) -> None:
        """Add a line's `line_figures` to its group's row."""
        group = tuple(group_value(item, g) for g in self.group_by)
        sums = self.sums.get(group)
        if sums is None:
            sums = self.sums[group] = list(FIGURES.values())
        sums[:] = map(operator.add, sums, figures)

    def fold(self, top: int) -> None:
        """Keep the `top` groups of most spend and sum the others into one row a day (one in all without `day`),
        their groups but `day` None: the `other` rows. A group is its values but the day, ranked by its spend
        (`total_usd`) over every day of the window, as the dashboard ranks its series, ties by its values; `day`
        alone is never folded. A view by day and key holds a row per key a day (some 340 bytes): 200 keys spending
        daily made the dashboard's 90 days 6.8 MB, past what a buffered Lambda function can answer, though the page
        draws 8 series and lists 10 keys."""
        ranked_at = [at for at, group in enumerate(self.group_by) if group != "day"]
        if not ranked_at:
            return
        spend: dict[tuple[str, ...], Decimal] = {}
        for group, sums in self.sums.items():
            ranked = tuple(group[at] for at in ranked_at)
            spend[ranked] = spend.get(ranked, NO_USD) + sums[COST_AT] + sums[FEE_AT]
        if len(spend) <= top:
            return
        kept = set(sorted(spend, key=lambda ranked: (-spend[ranked], ranked))[:top])
        day_at = self.group_by.index("day") if "day" in self.group_by else None
        for group in [group for group in self.sums if tuple(group[at] for at in ranked_at) not in kept]:
            sums = self.sums.pop(group)
            day = "" if day_at is None else group[day_at]
            other = self.others.get(day)
            if other is None:
                self.others[day] = sums
            else:
                other[:] = map(operator.add, other, sums)
        self.folded += len(spend) - top

    def rows(self, names: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """One row per group (one row in all without groups), sorted by group values, then the `other` rows by day
        (`fold`); a row grouped by key carries the key's name (`names`, by id) beside its id."""
        named = names if "key" in self.group_by else None
        rows = []
        for group in sorted(self.sums):
            row: dict[str, Any] = dict(zip(self.group_by, group, strict=True))
            if named is not None:
                row["key_name"] = named.get(row["key"], "")
            rows.append(self._figures(row, self.sums[group]))
        for day in sorted(self.others):
            row = {group: day if group == "day" else None for group in self.group_by}
            if named is not None:
                row["key_name"] = None
            rows.append(self._figures(row, self.others[day]))
        return rows

    @staticmethod
    def _figures(row: dict[str, Any], sums: list[Any]) -> dict[str, Any]:
        row.update(zip(FIGURES, sums, strict=True))
        row["total_usd"] = row["cost_usd"] + row["fee_usd"]
        return row

    def key_ids(self) -> set[str]:
        """The keys its rows name (none, unless grouped by key)."""
        if "key" not in self.group_by:
            return set()
        at = self.group_by.index("key")
        return {group[at] for group in self.sums}


def aggregate(
    items: Iterable[LedgerItem], group_by: list[str], names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """`items` summed in one row per group (`Sums`)."""
    sums = Sums(group_by)
    for item in items:
        sums.add(item, line_figures(item))
    return sums.rows(names)


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for JSON: each USD sum as the number nearest its exact decimal (which prints back as that decimal
    wherever it has 17 significant digits or fewer); a line's cost without a price as null."""
    return [{k: float(v) if k in USD_COLUMNS and v is not None else v for k, v in row.items()} for row in rows]


def report_object(
    spec: ReportSpec,
    times: dict[str, Any],
    tag_names: Iterable[str],
    rows: list[dict[str, Any]],
    views: list[tuple[list[str], list[dict[str, Any]]]] | None = None,
    folded: list[int] | None = None,
    top: int | None = None,
    tags_folded: int = 0,
) -> dict[str, Any]:
    """A report as JSON, the same on every surface (`gateway usage --format json`, `/v1/usage`, `/admin/usage`):
    its window, groups and filter, the tag names its lines carry, their latency percentiles (`times`, `latency`'s)
    and the rows; and with `views` (`parse_views`), each one's groups and rows, in the order asked. With `top`
    (`parse_top`), it and each grouping's count of groups `folded` into its `other` rows (the report's first, then
    each view's), and the count of tag names left out (`tags_folded`: `ReportBuilder.answer` keeps the `top` names
    the most lines carry)."""
    report: dict[str, Any] = {
        "object": "list",
        "since": spec.since,
        "until": spec.until,
        "group_by": spec.group_by,
        "filter": spec.filter.as_json(),
        "latency": times,
        # (A key as a tag's name is refused, but lines kept before it was may carry one.)
        "tag_names": sorted({unkeyed(name) for name in tag_names}),
        "data": as_json(rows),
    }
    counts = iter(folded or [])
    if top is not None:
        report["top"] = top
        report["folded"] = next(counts)
        report["tag_names_folded"] = tags_folded
    if views is not None:
        report["views"] = [{"group_by": groups, "data": as_json(view)} for groups, view in views]
        if top is not None:
            for view, count in zip(report["views"], counts, strict=True):
                view["folded"] = count
    return report


def report_json(spec: ReportSpec, items: list[LedgerItem], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`report_object` over `items`, summed as `rows`."""
    return report_object(spec, latency(items), {name for item in items for name in item.tags}, rows)


class ReportBuilder:
    """A report made a batch of lines at a time (`add`, on the thread the store reads on) that keeps their sums,
    never the lines: a month of a busy gateway is hundreds of thousands, and holding them all (as objects the
    garbage collector walks, on every thread's time) made the process stand still for a second at a time. Its
    `views` (`parse_views`) are summed in the same pass."""

    def __init__(self, spec: ReportSpec, views: list[list[str]] | None = None, top: int | None = None) -> None:
        self.spec = spec
        self.views = views
        self.top = top  # (`parse_top`: `fold` keeps each grouping's groups of most spend)
        self.sums = [Sums(spec.group_by), *(Sums(groups) for groups in views or [])]
        self.times = Times()
        # Each tag name's key families, spend and lines (`TagName`). A client names its tags (16 a request, 128
        # characters each): listed whole, 3,200 requests of made-up names made the dashboard's answer 6.8 MB, a 413 on
        # the buffered Lambda function for every load of the next 30 to 90 days. With `top`, the answer lists the
        # names it groups or filters by and the `top` others most used (`answer`).
        self.tags: dict[str, TagName] = {}
        self.key_ids: set[str] = set()  # whose names the rows grouped by key show
        self.read = 0  # lines the store gave, the filter's included

    def add(self, lines: Iterable[LedgerItem]) -> None:
        keep = self.spec.filter
        for item in lines:
            self.read += 1
            if keep and not keep.matches(item):
                continue
            figures = line_figures(item)
            for sums in self.sums:
                sums.add(item, figures)
            self.times.add(item)
            if item.tags:
                family = item.ancestors[0] if item.ancestors else item.key_id
                spend = (item.cost_usd or 0.0) + item.fee_usd
                for name in item.tags:
                    seen = self.tags.get(name)
                    if seen is None:
                        seen = self.tags[name] = TagName()
                    seen.add(family, spend)
            self.key_ids.add(item.key_id)

    def fold(self) -> None:
        """Once every line is in: each grouping's groups past `top` folded into its `other` rows (`Sums.fold`), and
        `key_ids` those the rows still name (only their names are read)."""
        if self.top is None:
            return
        for sums in self.sums:
            sums.fold(self.top)
        self.key_ids = set().union(*(sums.key_ids() for sums in self.sums))

    def answer(self, names: Mapping[str, str] | None, shape: str) -> str | dict[str, Any]:
        """The CSV text (`shape` "csv"), or the JSON object (`report_object`, with the views if any were asked)."""
        rows = self.sums[0].rows(names)
        if shape == "csv":
            return to_csv(rows, columns(self.spec.group_by, names))
        views = None if self.views is None else [(s.group_by, s.rows(names)) for s in self.sums[1:]]
        folded = [sums.folded for sums in self.sums]
        tag_names: Iterable[str] = self.tags
        tags_folded = 0
        if self.top is not None and len(self.tags) > self.top:
            # The names the report groups or filters by, then those the most key families use, then spend (one
            # client's made-up names count once each: ranked by lines, 32 names of one busy key pushed the operator's
            # `team`, nearly all the spend, out of the list, and the dashboard's control with it).
            groups = [self.spec.group_by, *(self.views or [])]
            asked = {g[4:] for grouping in groups for g in grouping if g.startswith("tag:")} | set(
                self.spec.filter.tags
            )
            kept = [name for name in self.tags if name in asked]
            others = sorted(
                (name for name in self.tags if name not in asked), key=lambda name: self.tags[name].rank(name)
            )
            tag_names = kept + others[: max(self.top - len(kept), 0)]
            tags_folded = len(self.tags) - len(tag_names)
        return report_object(self.spec, self.times.summary(), tag_names, rows, views, folded, self.top, tags_folded)


class TagName:
    """What a report's lines say of one tag name: the key families that use it (their roots), its spend, its lines."""

    __slots__ = ("families", "spend", "lines")

    def __init__(self) -> None:
        self.families: set[str] = set()
        self.spend = 0.0
        self.lines = 0

    def add(self, family: str, spend: float) -> None:
        self.families.add(family)
        self.spend += spend
        self.lines += 1

    def rank(self, name: str) -> tuple[int, float, int, str]:
        return (-len(self.families), -self.spend, -self.lines, name)


def usd_display(value: Decimal) -> str:
    """A USD amount for people: cents for large sums, every significant digit (up to 1e-10) for tiny ones."""
    if value == 0:
        return "0"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    text = format(value.quantize(Decimal("1e-10")), "f").rstrip("0")
    return text + "0" * max(0, 4 - len(text.partition(".")[2]))


# A spreadsheet reads a cell starting with one of these as a formula (OWASP's CSV injection): text cells that do
# (a client's `user`, a key's name, tag values, all chosen by callers) are written with a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell as a spreadsheet will show it, never run it; numbers as they are. A formula behind spaces or line
    breaks counts (some importers trim a cell before they read it: ` =cmd|...` ran there), and so does one behind a
    `;` (a semicolon locale's Excel splits an unquoted cell there: `x;=cmd|...`)."""
    if isinstance(value, str) and (
        value.lstrip(" \n\r\t").startswith(FORMULA_STARTS)
        or any(part.lstrip().startswith(FORMULA_STARTS) for part in value.split(";")[1:])
    ):
        return "'" + value
    return value


def to_csv(rows: list[dict[str, Any]], header: list[str] | None = None) -> str:
    """The rows as CSV; with none, `header` alone (`columns`), so a report of no lines still names its columns."""
    names = list(rows[0]) if rows else header
    if not names:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[csv_cell(name) for name in names], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {csv_cell(k): format(v, "f") if k in USD_COLUMNS and v is not None else csv_cell(v) for k, v in row.items()}
        )
    return out.getvalue()


# C0 and C1 control characters and DEL: a terminal acts on them (an ESC starts a sequence that recolours, hides or
# retitles), so a table shows them escaped, as JSON does.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """`text` as a terminal will show it, never act on it: each control character as its `\\xNN` escape."""
    return CONTROL_CHARACTER.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def to_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a table for people. Every cell and header is plain `Text`: a key's name, a client's `user`, a tag
    value are the callers' own, and rich would read `[prod]` in them as markup (and hide it), fail on `[/]` with a
    `MarkupError`, and turn `:smile:` into an emoji; their control characters are shown escaped (`shown`)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Usage")
    if not rows:
        return "no usage in this window\n"
    for column in rows[0]:
        text = column in GROUPS or column in ATTRIBUTION or column == "key_name" or column.startswith("tag:")
        table.add_column(Text(shown(column)), justify="left" if text else "right")
    for row in rows:
        table.add_row(*(Text(usd_display(v) if k in USD_COLUMNS else shown(str(v))) for k, v in row.items()))
    return render(table)


def latency_table(summary: Mapping[str, Any]) -> str:
    """The `latency` summary as a table: one row per part of the request, one column per percentile."""
    from rich.table import Table

    table = Table(title=f"Latency over {summary['requests']} requests (ms)")
    table.add_column("part", justify="left")
    for p in PERCENTILES:
        table.add_column(f"p{p}", justify="right")
    for part in LATENCY_PARTS:
        values = summary[part]
        table.add_row(
            part.removesuffix("_ms"),
            *("-" if values[f"p{p}"] is None else f"{values[f'p{p}']:.1f}" for p in PERCENTILES),
        )
    return render(table)


def render(table: Any) -> str:
    from rich.console import Console

    # Wide enough for every column in full: a table is as wide as its content, never wrapped to a terminal.
    console = Console(file=io.StringIO(), width=400, color_system=None)
    console.print(table)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return str(output)
