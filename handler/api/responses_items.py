"""`GET /v1/responses/{id}/input_items`: a stored conversation's items, listed as OpenAI's API lists them.

The gateway keeps the input items as the client sent them (a message's `content` often a string, no `status`,
seldom an `id`): the next turn hands them back to a provider as they came, and OpenAI looks up an `id` it is sent
among the items it stored itself. Listed, each item takes OpenAI's shape (a message's text as typed parts, a
`status`) and an id of its own: the client's, else one made from the id of the response that first kept the item
and its position there. That id is kept beside the items (`item_ids`), so an item has the same id in every
response that continues its conversation; a record stored before ids were kept gets the same made ids on every
read, and the turns that continue it take them over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from handler.errors import InvalidRequestError
from handler.records import Value
from handler.redaction import clipped

ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
DEFAULT_LIMIT = 20
MOST = 100


def item_kind(item: Mapping[str, Any]) -> str:
    """An item's type (a bare `{"role", "content"}` is a message, as the API takes it)."""
    return str(item.get("type") or ("message" if "role" in item else "item"))


def item_ids(items: Sequence[Mapping[str, Any]], response_id: str, known: Sequence[str] = ()) -> list[str]:
    """The ids of a conversation's items: `known` for the first ones (the turns it continues), then each item's
    own, else one made from `response_id` and the item's position. An id is one item's: an item whose own id an
    earlier item has (a continuation that sent the previous turn's output again by value) gets a made one, so a
    page's `after` names one place (paging by the first of two came back to it forever)."""
    token = response_id.removeprefix("resp_")
    ids = list(known[: len(items)])
    taken = set(ids)
    for position in range(len(ids), len(items)):
        item = items[position]
        own = item.get("id")
        if not isinstance(own, str) or not own or own in taken:
            own = f"{ID_PREFIX.get(item_kind(item), 'item')}_{token}_{position:03d}"
        taken.add(own)
        ids.append(own)
    return ids


def stored_ids(record: Mapping[str, Any], response_id: str) -> list[str]:
    """The ids of a stored record's items (one stored without them gets the made ones)."""
    items: list[dict[str, Any]] = record["items"]
    kept = record.get("item_ids")
    return item_ids(items, response_id, kept if isinstance(kept, list) else ())


def _input_part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") in TEXT_PARTS:
        return {"type": "input_text", "text": str(part.get("text", ""))}
    if isinstance(part, dict) and part.get("type") == "input_image":
        return {"detail": "auto", **part}
    return part


def _output_part(part: Any) -> Any:
    if isinstance(part, dict) and part.get("type") in TEXT_PARTS:
        return {"annotations": [], "logprobs": [], **part, "type": "output_text", "text": str(part.get("text", ""))}
    return part


def listed(item: Mapping[str, Any], item_id: str) -> dict[str, Any]:
    """One stored item in the shape OpenAI lists it: a user, system or developer message's content as
    `input_text` (and `input_image`, `input_file`) parts, an assistant's as `output_text` parts, and every
    message, function call and function call output with a `status`."""
    kind = item_kind(item)
    shaped: dict[str, Any] = {**item, "id": item_id, "type": kind}
    if kind == "message":
        content = item.get("content")
        assistant = item.get("role") == "assistant"
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        shaped["content"] = [_output_part(p) if assistant else _input_part(p) for p in parts]
    if kind in ("message", "function_call", "function_call_output"):
        shaped.setdefault("status", "completed")
    if kind == "function_call":
        shaped.setdefault("arguments", "")
    if kind == "reasoning":
        shaped.setdefault("summary", [])
    return shaped


class PageAsked(Value):
    """What a client asked of the list: `limit` (1-100, default 20), `order` (`asc`, `desc`: the default, the
    newest first) and `after` (the id of the item the page follows)."""

    __slots__ = ("limit", "order", "after")

    def __init__(self, limit: int = DEFAULT_LIMIT, order: str = "desc", after: str | None = None) -> None:
        self.limit: Final = limit
        self.order: Final = order
        self.after: Final = after

    @classmethod
    def of(cls, query: Mapping[str, str]) -> PageAsked:
        raw_limit = query.get("limit")
        limit = DEFAULT_LIMIT
        if raw_limit is not None:
            digits = raw_limit.strip()
            # (`isdigit` alone takes `²` and 5,000 digits, which `int` refuses: a 500.)
            limit = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 6 else 0
            if not 1 <= limit <= MOST:
                raise InvalidRequestError(
                    f"limit must be an integer from 1 to {MOST}, not '{raw_limit[:20]}'", param="limit"
                )
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequestError(f"order must be 'asc' or 'desc', not '{clipped(order)}'", param="order")
        return cls(limit, order, query.get("after") or None)


def page(items: Sequence[Mapping[str, Any]], ids: Sequence[str], asked: PageAsked) -> dict[str, Any]:
    """One page of the list object: `data`, `first_id`, `last_id`, `has_more`."""
    positions = list(range(len(items)))
    if asked.order == "desc":
        positions.reverse()
    if asked.after is not None:
        found = next((n for n, position in enumerate(positions) if ids[position] == asked.after), None)
        if found is None:
            raise InvalidRequestError(
                f"after: no item with id '{clipped(asked.after)}' in this response", param="after"
            )
        positions = positions[found + 1 :]
    shown = positions[: asked.limit]
    data = [listed(items[position], ids[position]) for position in shown]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(positions) > len(shown),
    }
