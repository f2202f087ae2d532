"""Usage reports add money as decimals and show it exactly."""

from __future__ import annotations

from decimal import Decimal

from handler.ports import LedgerItem
from handler.usage import aggregate, as_json, to_csv, to_table, usd_display


def line(cost: float, key: str = "k1", model: str = "m") -> LedgerItem:
    return LedgerItem(
        request_id=f"r{cost}{key}{model}",
        ts=1_796_000_000,
        key_id=key,
        ancestors=[],
        model=model,
        provider="p",
        region="global",
        upstream_model=model,
        input_tokens=1,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=1,
        cost_usd=cost,
        fee_usd=0.0,
        status=200,
    )


def test_sums_carry_no_float_noise_in_csv_json_or_table() -> None:
    rows = aggregate([line(0.1), line(0.1), line(0.1), line(0.00453166)], [])
    assert rows[0]["cost_usd"] == Decimal("0.30453166")
    assert "0.30453166,0.0,0.30453166" in to_csv(rows)
    assert as_json(rows)[0]["total_usd"] == 0.30453166
    assert "0.30453166" in to_table(rows)


def test_tiny_costs_are_not_shown_as_zero_and_keys_have_names() -> None:
    assert usd_display(Decimal("1.6e-7")) == "0.00000016"
    assert usd_display(Decimal("12.5")) == "12.50" and usd_display(Decimal("0.25")) == "0.2500"
    rows = aggregate([line(1.6e-7, "k1"), line(0.5, "k2")], ["key"], {"k1": "search", "k2": "ci"})
    assert [(r["key"], r["key_name"]) for r in rows] == [("k1", "search"), ("k2", "ci")]
    table = to_table(rows)
    assert "0.00000016" in table and "search" in table
