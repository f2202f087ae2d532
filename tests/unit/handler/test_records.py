"""The immutable values (`handler.records.Value`) behave as the NamedTuples they replaced did, where the gateway
relies on it: equal by value, hashable, shown with their fields, copied with changes by `_replace`; and the frozen
stored records copy and pickle as the frozen dataclasses they replaced."""

import copy
import dataclasses
import pickle
from collections.abc import Callable
from types import MappingProxyType

import orjson
import pytest

from adapters.store.metered import Applied, Unmet
from handler.pipeline.routing import RouteControls
from handler.ports import BudgetCharge, KeyRecord, LedgerItem, RateCharge, Settlement, Target
from handler.records import Record, stored
from handler.wire import StreamEvent


def target(**changes: object) -> Target:
    return Target("openai", "openai", "gpt-4o", "us-east-1", "https://api.openai.com/v1")._replace(**changes)


def test_values_are_equal_and_hash_by_their_fields() -> None:
    assert target() == target()
    assert target() != target(region="eu-west-1")
    assert hash(RouteControls(provider="a")) == hash(RouteControls(provider="a"))
    assert len({StreamEvent("m", b"1"), StreamEvent("m", b"1"), StreamEvent("m", b"2")}) == 2
    assert StreamEvent("message", b"{}") == StreamEvent(event="message", data=b"{}")
    assert StreamEvent(None, b"x") != StreamEvent("x", b"x")
    assert Applied({}) != Unmet({})  # values of another class: never equal, even with equal fields
    assert RouteControls() != (None, None, None)  # nor a tuple of the same fields


def test_replace_copies_with_changes_and_leaves_the_original() -> None:
    original = target(options=MappingProxyType({"seed": 1}))
    moved = original._replace(region="eu-west-1")
    assert (moved.region, original.region) == ("eu-west-1", "us-east-1")
    assert moved.options is original.options and moved.model == original.model


def test_a_values_repr_names_its_fields_in_order() -> None:
    assert repr(StreamEvent("delta", b"1")) == "StreamEvent(event='delta', data=b'1')"
    assert repr(RouteControls(provider="openai")) == "RouteControls(fallbacks=None, provider='openai', region=None)"


FROZEN = [
    BudgetCharge("k", "total", 1.0, 0.5),
    RateCharge("rpm", 1, 10, 1),
    Settlement("r", [BudgetCharge("k", "total", 1.0, 0.5)], 0.5, [], None, "us-east-1", 1_800_000_000.0),
]
COPIES: dict[str, Callable[[object], object]] = {
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
    "pickle": lambda record: pickle.loads(pickle.dumps(record)),  # noqa: S301 - our own bytes
}


@pytest.mark.parametrize("how", COPIES.values(), ids=COPIES.keys())
@pytest.mark.parametrize("record", FROZEN, ids=lambda record: type(record).__name__)
def test_frozen_records_copy_and_pickle_as_frozen_dataclasses_do(
    record: object, how: Callable[[object], object]
) -> None:
    """A frozen record refuses assignment, but not the copy module's or pickle's, which restore its fields."""
    copied = how(record)
    assert copied == record and copied is not record


def test_stored_records_are_dataclasses_for_orjson_and_the_dataclass_functions() -> None:
    # `handler.records.stored` gives a record its fields' table alone: the stores write records with orjson, the
    # spool rebuilds them by `dataclasses.fields`, the key routes copy them by `dataclasses.replace`.
    item = LedgerItem("req", 1.0, "k1", ["k0"], "m", "openai", "us-east-1", "gpt-4o", 3, 0, 0, 5, 0.25, 0.0, 200)
    names = [field.name for field in dataclasses.fields(item)]
    assert names == list(LedgerItem.__slots__) and names[:3] == ["request_id", "ts", "key_id"]
    assert dataclasses.fields(item)[0].type == "str"
    assert orjson.loads(orjson.dumps(item)) == dataclasses.asdict(item) == {name: getattr(item, name) for name in names}
    assert dataclasses.replace(item, model="n") == LedgerItem(**{**dataclasses.asdict(item), "model": "n"})
    assert dataclasses.replace(item, model="n") != item and item.model == "m"
    charge = BudgetCharge("k1", "total", 1.0, 0.5)
    settled = Settlement("r", [charge], 0.5, [RateCharge("rpm", 7, 10, 1)], item)
    assert orjson.loads(orjson.dumps(settled))["budgets"] == [dataclasses.asdict(charge)]
    assert orjson.loads(orjson.dumps(settled))["item"]["request_id"] == "req"
    assert dataclasses.is_dataclass(KeyRecord) and dataclasses.replace(KeyRecord("i", "n", "h", 1.0), rpm=5).rpm == 5


def test_a_stored_record_whose_slots_and_annotations_differ_is_refused() -> None:
    # (the fields are listed twice, in `__slots__` and as annotations: a field missing from either, or out of order,
    # would be missing from the table orjson writes, or be a slot no one sets)
    with pytest.raises(TypeError, match="not its annotated fields"):

        @stored
        class Missing(Record):
            __slots__ = ("a", "b")
            a: int

    with pytest.raises(TypeError, match="not its annotated fields"):

        @stored
        class Reordered(Record):
            __slots__ = ("a", "b")
            b: int
            a: int
