"""Usage reports: ledger line items grouped by key, model and day, as JSON rows, CSV or a table."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from handler.errors import InvalidRequestError
from handler.ports import LedgerItem

GROUPS = ("key", "model", "day")
# Lines whose cost was not the provider's own figure (`LedgerItem.cost_source`), counted per row.
COST_SOURCES = {"estimate": "estimated_cost_requests", "reserved": "reserved_cost_requests"}
DEFAULT_WINDOW_DAYS = 30


def usd(value: float) -> str:
    """A USD amount as a header or CSV value: the float's exact shortest form, never exponent notation,
    so summing the headers gives back the ledger's figures."""
    text = repr(float(value))
    if not text[-1].isdigit():  # inf, nan
        return format(Decimal(text), "f")
    if "e" not in text:  # already plain
        return text
    # Exponent notation (a request's cost is often ~1e-06): move the point, digits unchanged.
    mantissa, _, exponent = text.partition("e")
    sign = "-" if mantissa.startswith("-") else ""
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent)
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


def parse_when(text: str | None, default: float, name: str) -> float:
    """`YYYY-MM-DD`, an ISO 8601 time, or epoch seconds; UTC unless an offset is given."""
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequestError(
            f"{name} must be a date (YYYY-MM-DD), an ISO time or epoch seconds", param=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


ATTRIBUTION = ("user", "session")
TAG_GROUP = re.compile(r"tag:[A-Za-z0-9_.:/@+-]{1,128}")


def parse_group_by(text: str | None) -> list[str]:
    """`key`, `model`, `day`, `user`, `session` and `tag:NAME` (the value of one `x-gateway-tags` name)."""
    if not text:
        return []
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS and g not in ATTRIBUTION and not TAG_GROUP.fullmatch(g)]
    if unknown:
        raise InvalidRequestError(
            f"group_by takes key, model, day, user, session and tag:NAME, not {', '.join(unknown)}", param="group_by"
        )
    return list(dict.fromkeys(groups))


def group_value(item: LedgerItem, group: str) -> str:
    """The line's value for one `group_by` entry ("" where the line has none)."""
    if group == "key":
        return item.key_id
    if group == "model":
        return item.model
    if group == "day":
        return day_of(item.ts)
    if group == "user":
        return item.user or ""
    if group == "session":
        return item.session or ""
    return item.tags.get(group[4:], "")


def window(since: str | None, until: str | None) -> tuple[float, float]:
    now = time.time()
    start = parse_when(since, now - DEFAULT_WINDOW_DAYS * 86400, "since")
    end = parse_when(until, now + 1, "until")
    if end <= start:
        raise InvalidRequestError("until must be after since", param="until")
    return start, end


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


USD_COLUMNS = ("cost_usd", "fee_usd", "total_usd")


def aggregate(
    items: Iterable[LedgerItem], group_by: list[str], names: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per group (one row in all without groups), sorted by group values. USD columns are summed as
    decimals of each line's exact figure, so a total carries no binary float noise; a row grouped by key
    carries the key's name (`names`, by id) beside its id."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for item in items:
        group = tuple(group_value(item, g) for g in group_by)
        row = rows.get(group)
        if row is None:
            row = dict(zip(group_by, group, strict=True))
            if "key" in group_by and names is not None:
                row["key_name"] = names.get(item.key_id, "")
            row.update(
                requests=0,
                input_tokens=0,
                cached_tokens=0,
                output_tokens=0,
                cost_usd=Decimal(0),
                fee_usd=Decimal(0),
                total_usd=Decimal(0),
                unknown_cost_requests=0,
                estimated_cost_requests=0,
                reserved_cost_requests=0,
            )
            rows[group] = row
        row["requests"] += 1
        row["input_tokens"] += item.input_tokens
        row["cached_tokens"] += item.cached_tokens
        row["output_tokens"] += item.output_tokens
        if item.cost_source in COST_SOURCES:  # costed from estimated usage, or at the reserved worst case
            row[COST_SOURCES[item.cost_source]] += 1
        if item.cost_usd is None:
            row["unknown_cost_requests"] += 1
        else:
            row["cost_usd"] += Decimal(usd(item.cost_usd))
        row["fee_usd"] += Decimal(usd(item.fee_usd))
        row["total_usd"] = row["cost_usd"] + row["fee_usd"]
    return [rows[k] for k in sorted(rows)]


def as_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for JSON: each USD sum as the number nearest its exact decimal (which prints back as that decimal
    wherever it has 17 significant digits or fewer)."""
    return [{k: float(v) if k in USD_COLUMNS else v for k, v in row.items()} for row in rows]


def usd_display(value: Decimal) -> str:
    """A USD amount for people: cents for large sums, every significant digit (up to 1e-10) for tiny ones."""
    if value == 0:
        return "0"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    text = format(value.quantize(Decimal("1e-10")), "f").rstrip("0")
    return text + "0" * max(0, 4 - len(text.partition(".")[2]))


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format(v, "f") if k in USD_COLUMNS else v for k, v in row.items()})
    return out.getvalue()


def to_table(rows: list[dict[str, Any]]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Usage")
    if not rows:
        return "no usage in this window\n"
    for column in rows[0]:
        table.add_column(column, justify="left" if column in GROUPS else "right")
    for row in rows:
        table.add_row(*(usd_display(v) if k in USD_COLUMNS else str(v) for k, v in row.items()))
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(table)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    return str(output)
