"""Usage rows count the lines whose cost was not the provider's own figure (`LedgerItem.cost_source`)."""

from __future__ import annotations

from dataclasses import replace

from handler.usage import aggregate, to_csv
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
