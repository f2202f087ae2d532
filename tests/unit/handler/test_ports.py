"""The stored records behave as the dataclasses they replaced did: compared, shown, frozen, hashed, copied
with `replace`, listed by `fields` and written by orjson field by field, in declaration order."""

import calendar
import dataclasses

import orjson
import pytest

from handler.pipeline.budgets import period_of
from handler.ports import BudgetCharge, KeyRecord, LedgerItem, MeterSnapshot, RateCharge, Settlement, period_end


def line(**changes: object) -> LedgerItem:
    item = LedgerItem("req_1", 1.0, "k1", [], "m", "p", "us-east-1", "um", 10, 0, 0, 5, 0.25, 0.0, 200)
    return dataclasses.replace(item, **changes)


def test_records_are_equal_by_value_within_their_class_only() -> None:
    assert line() == line()
    assert line() != line(output_tokens=6)
    assert line(tags={"team": "a"}) != line(tags={"team": "b"})
    assert BudgetCharge("k1", "total", 1.0, 0.5) == BudgetCharge("k1", "total", 1.0, 0.5, None)
    assert BudgetCharge("k1", "total", 1.0, 0.5) != BudgetCharge("k1", "total", 1.0, 0.6)
    assert MeterSnapshot() == MeterSnapshot({}, {}, {})
    assert MeterSnapshot({"total": 1.0}) != MeterSnapshot({"total": 2.0})
    assert MeterSnapshot() != (({}, {}, {}))  # another type: not equal, no error
    nan = float("nan")
    assert line(cost_usd=nan) == line(cost_usd=nan)  # the same object: equal, as in a tuple (and a dataclass)


def test_a_records_repr_names_its_fields_in_order() -> None:
    assert repr(RateCharge("rpm", 7, 60, 1)) == (
        "RateCharge(name='rpm', window=7, limit=60, amount=1, key_id=None, home_region=None)"
    )
    assert repr(MeterSnapshot(rates={"rpm": 2})) == (
        "MeterSnapshot(committed_usd={}, spent_usd={}, rates={'rpm': 2}, rate_windows={})"
    )


def test_charges_and_settlements_are_frozen_and_charges_hash_by_value() -> None:
    charge = BudgetCharge("k1", "total", 1.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        charge.amount_usd = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del charge.period  # type: ignore[misc]
    settlement = Settlement("r1", [charge], 0.5, [], None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settlement.item = line()  # type: ignore[misc]
    assert hash(charge) == hash(BudgetCharge("k1", "total", 1.0, 0.5))
    assert len({RateCharge("rpm", 7, 60, 1), RateCharge("rpm", 7, 60, 1), RateCharge("tpm", 7, 60, 1)}) == 2
    with pytest.raises(TypeError):
        hash(line())  # mutable records are not hashable


def test_records_keep_the_dataclass_protocol() -> None:
    key = KeyRecord("k1", "ci", "hash", 1.0)
    assert (key.models, key.model_limits, key.allow_ips, key.ancestors, key.tags) == (["*"], {}, [], [], {})
    assert KeyRecord("k2", "ci", "hash", 1.0).models is not key.models  # each record its own defaults
    rotated = dataclasses.replace(key, secret_hash="new", version=2)
    assert (rotated.id, rotated.secret_hash, rotated.version, key.version) == ("k1", "new", 2, 1)
    assert [f.name for f in dataclasses.fields(RateCharge)] == [
        "name",
        "window",
        "limit",
        "amount",
        "key_id",
        "home_region",
    ]
    assert dataclasses.asdict(MeterSnapshot(rates={"rpm": 1})) == {
        "committed_usd": {},
        "spent_usd": {},
        "rates": {"rpm": 1},
        "rate_windows": {},
    }
    settlement = Settlement("r1", [BudgetCharge("k1", "total", 1.0, 0.5)], 0.5, [], line())
    written = orjson.loads(orjson.dumps(settlement))
    assert list(written) == ["reservation_id", "budgets", "reserved_usd", "rates", "item", "home_region", "expires_at"]
    assert written["budgets"] == [
        {"key_id": "k1", "period": "total", "limit_usd": 1.0, "amount_usd": 0.5, "home_region": None}
    ]
    assert LedgerItem(**written["item"]) == line()
    assert list(written["item"])[-2:] == ["reasoning_tokens", "cache_savings_usd"]


@pytest.mark.parametrize("kind", ["day", "month"])
@pytest.mark.parametrize("when", [(2027, 12, 31, 23, 59, 59), (2028, 2, 28, 12, 0, 0), (2028, 2, 29, 0, 0, 0)])
def test_a_budget_period_ends_where_the_next_one_starts(kind: str, when: tuple[int, ...]) -> None:
    """A store drops a period's counters some time after `period_end`: it must be the next period's first second."""
    t = float(calendar.timegm(when))
    period = period_of(kind, t)
    end = period_end(period)
    assert end is not None and end > t
    assert period_of(kind, end - 1) == period and period_of(kind, end) != period


def test_a_total_budget_never_ends() -> None:
    assert period_end("total") is None
    assert period_end("day:someday") is None  # (not a period `period_of` names: never dropped)
