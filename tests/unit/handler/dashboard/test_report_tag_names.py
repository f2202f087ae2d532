"""A report's `tag_names` with `top`: the names it groups or filters by, then those the most key families use, then
spend. Ranked by lines, one busy client's made-up names crowded out the names the operator breaks spend down by, and
a report grouped by a tag need not list it: the dashboard then put its "Spend by" control back on "model" and threw
away the rows it asked for. Found by review (mergerev35b)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from handler.dashboard.reports import ReportBuilder, parse_report
from handler.ports import LedgerItem
from tests.unit.adapters.store.test_contract import line

TOP = 20  # (dashboard.js `TOP`)


def lines() -> list[LedgerItem]:
    now = time.time() - 60
    items = []
    # One busy client tags every request with the same 16 names of its own (and a second pattern of 16 more).
    for n in range(400):
        names = range(16) if n % 2 else range(16, 32)
        items.append(replace(line("busy", 0.00001, ts=now - n), tags={f"attr{i:02d}": "v" for i in names}))
    # The operator's clients tag theirs by team (fewer lines, most of the spend).
    for n, key in enumerate(["a", "b", "c"] * 20):
        items.append(replace(line(key, 0.01, ts=now - n), tags={"team": key}))
    return items


def answer(group_by: str | None) -> dict[str, Any]:
    spec = parse_report(None, None, group_by, None, None, None, None)
    report = ReportBuilder(spec, None, TOP)
    report.add(lines())
    report.fold()
    result = report.answer(None, "json")
    assert isinstance(result, dict)
    return result


def test_a_report_grouped_by_a_tag_lists_that_tag_name() -> None:
    """The dashboard draws its breakdown only when the tag it asked to group by is among `tag_names`
    (`renderBreakdownChoices`): a report grouped by `tag:team` that folded `team` away had its rows discarded."""
    body = answer("tag:team")
    assert {row["tag:team"] for row in body["data"]} >= {"a", "b", "c"}  # (the rows are there...)
    assert "team" in body["tag_names"], (body["tag_names"], body["tag_names_folded"])


def test_one_clients_own_tag_names_do_not_crowd_out_the_operators() -> None:
    """One key's 32 made-up names, carried by 400 lines, filled the 20 places; `team`, on 60 lines of three keys and
    almost all the spend, was left out."""
    body = answer(None)
    assert "team" in body["tag_names"], (body["tag_names"], body["tag_names_folded"])
    assert len(body["tag_names"]) == TOP and body["tag_names_folded"] == 33 - TOP
