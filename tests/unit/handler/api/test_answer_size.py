"""What the buffered Lambda function answers in place of an answer it cannot return (`deliverable`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from handler.api.answer_size import AnswerLimit, deliverable


def held(status: int, size: int) -> list[dict[str, Any]]:
    start = {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
    return [start, {"type": "http.response.body", "body": b'{"error": {"message": "' + b"x" * size + b'"}}'}]


def replaced(status: int) -> dict[str, Any]:
    limit = AnswerLimit(payload_bytes=1_000_000)
    exchange = SimpleNamespace(cost=0.0, ledger_item=None, headers=dict)
    scope = {"type": "http", "path": "/v1/chat/completions", "headers": [], "state": {"exchange": exchange}}
    messages = deliverable(limit, scope, held(status, 2_000_000))
    assert messages[0]["status"] == 413
    error = orjson.loads(messages[1]["body"])["error"]
    assert isinstance(error, dict)
    return error


@pytest.mark.parametrize("status", [400, 500, 502])
def test_an_error_answer_too_large_is_not_told_as_a_billed_one(status: int) -> None:
    """A provider's 500 with a 50 MB message was answered "the answer is 52.4 MB ... and was billed: its cost is on
    your key's ledger. Ask for less": it cost nothing, and the client had asked for nothing large."""
    message = replaced(status)["message"]
    assert f"an error answer ({status})" in message
    assert "billed" not in message and "Ask for less" not in message


def test_a_billed_answer_too_large_still_says_so() -> None:
    message = replaced(200)["message"]
    assert "and was billed" in message and "Ask for less" in message
