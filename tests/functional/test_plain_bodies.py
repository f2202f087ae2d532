"""A plain Chat Completions request's upstream body written directly (`plain_body` in the OpenAI-compatible adapter)
against the same request translated, through the whole gateway on each store: the same body upstream, and the same
answer, headers, ledger line, spend and rate counts."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from adapters.providers.openai import adapter as openai_adapter
from handler.ports import LedgerItem
from tests.functional.conftest import Running

HI = [{"role": "user", "content": "Say hello."}]
PLAIN: dict[str, dict[str, Any]] = {
    "one turn": {"messages": HI},
    "a conversation, capped": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Say hello."},
        ],
        "max_tokens": 40,
    },
    "max_completion_tokens": {"messages": HI, "max_completion_tokens": 30},
    "stream false": {"messages": HI, "stream": False},
}
TRANSLATED: dict[str, dict[str, Any]] = {
    "temperature": {"messages": HI, "temperature": 0.2},
    "a named message": {"messages": [{"role": "user", "content": "Say hello.", "name": "ann"}]},
}
# What differs between two requests whatever their path: ids, times, and what is timed.
VOLATILE_HEADERS = {"x-request-id", "server-timing", "date", "content-length", "x-ratelimit-reset-requests",
                    "x-ratelimit-reset-tokens"}  # fmt: skip
VOLATILE_LINE = {"request_id", "ts", "key_id", "gateway_ms", "store_ms", "upstream_ms"}


def served(gw: Running, fields: dict[str, Any]) -> dict[str, Any]:
    """One request of `fields` from a new key with a budget and limits (so its cap is the gateway's to set): what went
    upstream, the answer, and what it was charged, less what differs between any two requests."""
    key = gw.mint(name="plain", budget_usd=5.0, rpm=1000, tpm=10_000_000)
    fake = gw.fakes["openai"].state.requests
    since = len(fake)
    auth = {"authorization": f"Bearer {key}"}
    answer = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth, json={"model": "gpt-4o-mini", **fields})
    body = answer.json()
    for member in ("id", "created"):  # (the fake's own: new on every answer)
        body.pop(member, None)
    (line,) = gw.ledger(key)
    meter = httpx.get(f"{gw.url}/v1/key", headers=auth).json()
    return {
        "upstream": [(r["path"], r["json"]) for r in fake[since:]],
        "status": answer.status_code,
        "answer": body,
        "headers": {k: v for k, v in answer.headers.items() if k not in VOLATILE_HEADERS},
        "line": {k: v for k, v in dataclasses.asdict(line).items() if k not in VOLATILE_LINE},
        "spent": meter["spent_usd"],
    }


@pytest.mark.parametrize("shape", [*PLAIN, *TRANSLATED])
def test_a_plain_body_is_answered_and_charged_as_a_translated_one(
    running: Running, on_each_store: Running, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (`running` named: the session's embedded store is made before the test, not inside it, where `conftest`'s
    # `close_sqlite_stores` would close it after the test as one of its own.)
    fields = PLAIN.get(shape) or TRANSLATED[shape]
    written: list[dict[str, Any] | None] = []
    direct = openai_adapter.plain_body

    def watched(*args: Any) -> dict[str, Any] | None:
        written.append(direct(*args))
        return written[-1]

    monkeypatch.setattr(openai_adapter, "plain_body", watched)
    directly = served(on_each_store, fields)
    monkeypatch.setattr(openai_adapter, "plain_body", lambda *args: None)
    translated = served(on_each_store, fields)
    assert directly == translated
    assert directly["status"] == 200 and directly["line"]["status"] == 200 and directly["spent"] > 0
    assert len(written) == 1 and (written[0] is not None) == (shape in PLAIN)  # (the one call, and its path)


def test_the_ledger_line_fields_compared_are_the_ledger_lines() -> None:
    """The comparison above leaves out only what differs between any two requests."""
    fields = {field.name for field in dataclasses.fields(LedgerItem)}
    assert VOLATILE_LINE <= fields and len(fields - VOLATILE_LINE) > 15
