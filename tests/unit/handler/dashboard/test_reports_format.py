"""Usage reports add money as decimals and show it exactly."""

from __future__ import annotations

from decimal import Decimal

from handler.dashboard.reports import aggregate, as_json, to_csv, to_table, usd_display
from tests.unit.adapters.store.test_contract import line


def test_sums_carry_no_float_noise_in_csv_json_or_table() -> None:
    rows = aggregate([line("k1", 0.1), line("k1", 0.1), line("k1", 0.1), line("k1", 0.00453166)], [])
    assert rows[0]["cost_usd"] == Decimal("0.30453166")
    assert "0.30453166,0,0.30453166" in to_csv(rows)
    assert as_json(rows)[0]["total_usd"] == 0.30453166
    assert "0.30453166" in to_table(rows)


def test_tiny_costs_are_not_shown_as_zero_and_keys_have_names() -> None:
    assert usd_display(Decimal("1.6e-7")) == "0.00000016"
    assert usd_display(Decimal("12.5")) == "12.50" and usd_display(Decimal("0.25")) == "0.2500"
    rows = aggregate([line("k1", 1.6e-7), line("k2", 0.5)], ["key"], {"k1": "search", "k2": "ci"})
    assert [(r["key"], r["key_name"]) for r in rows] == [("k1", "search"), ("k2", "ci")]
    table = to_table(rows)
    assert "0.00000016" in table and "search" in table


def test_csv_cells_a_caller_chose_are_never_formulas() -> None:
    """`user`, key names and tag values are the callers' text: a spreadsheet must show `=cmd|...` or `-2+3`, not
    run it (CSV injection); amounts stay numbers."""
    rows = [
        {"user": "=cmd|' /C calc'!A0", "key_name": "-2+3", "tag:team": "+1+1", "session": "@SUM(A1)", "cost_usd": 1},
        {"user": "alice", "key_name": "ops", "tag:team": "a-b", "session": "s-1", "cost_usd": 2},
    ]
    text = to_csv(rows)
    assert "'=cmd|' /C calc'!A0" in text and ",'-2+3," in text and ",'+1+1," in text and ",'@SUM(A1)," in text
    assert "alice,ops,a-b,s-1," in text


def test_csv_cells_are_no_formulas_behind_spaces_or_a_semicolon() -> None:
    """Some importers trim a cell before reading it, and a semicolon locale's Excel splits an unquoted cell at `;`:
    ` =cmd|...` and `x;=cmd|...` ran there. Found by review (dashrev)."""
    rows = [
        {"user": " =cmd|' /C calc'!A0", "key_name": "x;=1+1", "tag:team": "\n@SUM(A1)", "session": "a;b", "cost_usd": 1}
    ]
    text = to_csv(rows)
    assert "' =cmd|' /C calc'!A0" in text and ",'x;=1+1," in text and "'\n@SUM(A1)" in text and ",a;b," in text
