"""DynamoDB attribute values and update expressions, shared by the store and its lease logic."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from adapters.store.metered import EPSILON

Item = dict[str, Any]
BUCKET_SECONDS = 60  # reservations are summed by the minute they expire in (`reservation_bucket`)


def exact(value: float) -> Decimal:
    """A float as the decimal Python prints for it (no binary noise)."""
    return Decimal(repr(value))


TOLERANCE = exact(EPSILON)  # what a budget's condition lets pass beyond its limit, as `fits` does


def committed_change(actual: float, reserved: float, released: bool) -> Decimal:
    """What a settlement moves committed by (`MeteredStore.settle`: the actual cost less what was reserved, or the
    whole actual when expiry released the reservation meanwhile), in decimals of the figures as sent. The float
    difference (0.1 - 0.3 = -0.19999999999999998) stayed in the counter for good: $0.30 reserved and $0.10 spent
    left committed at 0.10000000000000002 beside a spent of 0.1, and the digits of such noise pile up in a counter
    towards the 38 significant digits a DynamoDB number holds."""
    return exact(actual) - (Decimal(0) if released else exact(reserved))


def number(value: Decimal) -> dict[str, str]:
    """A DynamoDB number, written without an exponent."""
    return {"N": format(value, "f")}


def num(value: float | int) -> dict[str, str]:
    """A DynamoDB number from a float, exactly as Python prints it."""
    return number(exact(value))


def dec(item: Item, name: str) -> Decimal:
    """A number attribute exactly as stored (0 when absent)."""
    value = item.get(name)
    return Decimal(value["N"]) if value else Decimal(0)


def text(value: str) -> dict[str, str]:
    return {"S": value}


def read_num(item: Item, name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value else 0.0


def reservation_bucket(period: str, expires_at: float, region: str | None) -> str:
    """The attribute holding the USD of every live reservation of `period` that expires in one minute (and was
    written in `region`), summed: an item holds one per minute of expiry, not one per request in flight."""
    return f"x:{period}@{math.ceil(expires_at / BUCKET_SECONDS)}{f'#{region}' if region else ''}"


def parse_bucket(name: str) -> tuple[str, float, str | None]:
    """A `reservation_bucket` name as (period, the end of its minute, its region or None)."""
    period, _, rest = name[2:].rpartition("@")
    minute, _, region = rest.partition("#")
    return period, int(minute) * BUCKET_SECONDS, region or None


def holds_expired(item: Item, now: float, region: str | None = None) -> bool:
    """Whether `item` holds USD in a minute of reservations written in `region` (None: untagged, as a lease's are)
    that ended before `now`: requests that died, until a release."""
    for name in item:
        if name.startswith("x:"):
            _, ends, written_in = parse_bucket(name)
            if ends < now and written_in == region and dec(item, name) > 0:
                return True
    return False


class Expression:
    """Builds an update: placeholders for names and values, SET/ADD/REMOVE clauses, a condition."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.clauses: dict[str, list[str]] = {"SET": [], "ADD": [], "REMOVE": []}
        self.conditions: list[str] = []

    def name(self, attribute: str) -> str:
        # Ended by a letter, so that no placeholder is the start of another (#a1x, #a10x): `update` tells
        # which are used with a plain substring test.
        placeholder = f"#a{len(self.names)}x"
        self.names[placeholder] = attribute
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self.values)}x"
        self.values[placeholder] = value
        return placeholder

    def write_once(self, attribute: str, token: Item) -> None:
        """Write `token`, drawn for this one write, to `attribute`, on condition that it does not hold it already:
        the write sent again after its answer was lost is refused by its own token instead of applied again, and
        the refusal's item (ALL_OLD) holding the token says it landed."""
        placeholder, value = self.name(attribute), self.value(token)
        self.clauses["SET"].append(f"{placeholder} = {value}")
        self.conditions.append(f"attribute_not_exists({placeholder}) OR {placeholder} <> {value}")

    def at_most(self, placeholder: str, ceiling: Decimal) -> None:
        """On condition that the number at `placeholder` is at most `ceiling` before the update; a missing one
        is zero, so fits any ceiling but a negative one."""
        bound = self.value(number(ceiling))
        if ceiling >= 0:
            self.conditions.append(f"attribute_not_exists({placeholder}) OR {placeholder} <= {bound}")
        else:
            self.conditions.append(f"{placeholder} <= {bound}")

    def update(self, key: Item, table: str) -> Item:
        """The `UpdateItem` request. Declares only the placeholders the expressions use: DynamoDB refuses a
        request with an unused one (`ValidationException`), and a clause left out for some shape of item
        (no budget, a rolled-over window) must not turn the whole write into a refusal."""
        parts = [f"{verb} {', '.join(items)}" for verb, items in self.clauses.items() if items]
        request: Item = {"TableName": table, "Key": key, "UpdateExpression": " ".join(parts)}
        condition = " AND ".join(f"({c})" for c in self.conditions)
        written = f"{request['UpdateExpression']} {condition}"
        names = {k: v for k, v in self.names.items() if k in written}
        values = {k: v for k, v in self.values.items() if k in written}
        if names:
            request["ExpressionAttributeNames"] = names
        if values:
            request["ExpressionAttributeValues"] = values
        if condition:
            request["ConditionExpression"] = condition
        return request
