"""Whose each answer of a message thread is, on every backend (the `Store` port's thread methods): what a `continue`
is checked against, in every process on the store (`handler.pipeline.pipeline.Pipeline._continued_thread`)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from adapters.store import open_store
from handler.ports import Store, ThreadAnswer
from tests.support.dynamo import ttl_attribute
from tests.unit.adapters.store import test_contract
from tests.unit.adapters.store.test_contract import storage_only

# The contract's fixtures: the store on SQLite, on moto's DynamoDB server, and in memory.
store_url = test_contract.store_url
store = test_contract.store


def answer(message_id: str, key_id: str = "child", ttl: float = 60) -> ThreadAnswer:
    return ThreadAnswer(message_id, key_id, ["root", "parent"], time.time() + ttl)


async def test_an_answer_is_kept_with_its_key_and_ancestors(store: Store) -> None:
    kept = answer("msg_01a")
    await store.put_thread_answer(kept)
    assert await store.get_thread_answer("msg_01a") == kept
    assert await store.get_thread_answer("msg_01other") is None
    await store.put_thread_answer(kept)  # (a call sent again writes the same)
    assert await store.get_thread_answer("msg_01a") == kept


async def test_an_answer_is_kept_with_the_advisors_its_thread_holds(store: Store) -> None:
    """A `continue` sends no `tools`, and Anthropic may call the thread's advisors again: every process reads them
    from the answer's record, each as the request was reserved for it (its model, its calls, its bound per call)."""
    advisors = (("claude-opus-4-6", 3, 8_192), ("claude-advisor-x", 1, 2_048))
    kept = ThreadAnswer("msg_01advised", "child", ["root"], time.time() + 60, advisors)
    await store.put_thread_answer(kept)
    read = await store.get_thread_answer("msg_01advised")
    assert read == kept and read is not None and read.advisors == advisors
    await store.put_thread_answer(answer("msg_01plain"))
    plain = await store.get_thread_answer("msg_01plain")
    assert plain is not None and plain.advisors == ()


async def test_an_answer_of_a_key_without_ancestors_is_kept(store: Store) -> None:
    kept = ThreadAnswer("msg_01root", "root", [], time.time() + 60)
    await store.put_thread_answer(kept)
    assert await store.get_thread_answer("msg_01root") == kept


async def test_an_expired_answer_is_gone(store: Store) -> None:
    await store.put_thread_answer(answer("msg_01old", ttl=-1))
    assert await store.get_thread_answer("msg_01old") is None


async def test_another_process_on_the_store_reads_whose_an_answer_is(store: Store, store_url: str) -> None:
    """A `continue` may come to another server, or another Lambda invocation, than the one that relayed the answer:
    each has its own connection to the store."""
    storage_only(store_url, "a second connection to the same storage")
    kept = answer("msg_01shared")
    await store.put_thread_answer(kept)
    other = open_store(store_url)
    try:
        assert await other.get_thread_answer("msg_01shared") == kept
    finally:
        await other.close()


async def test_dynamodb_removes_an_answer_with_the_tables_ttl(store: Store, store_url: str) -> None:
    """The answer's item carries the table's TTL attribute (template.yaml), past its expiry: DynamoDB removes it."""
    if not store_url.startswith("dynamodb"):
        pytest.skip("DynamoDB's item")
    kept = answer("msg_01ttl")
    await store.put_thread_answer(kept)
    item = await store.client.get_item(  # type: ignore[attr-defined]
        TableName=store.table,  # type: ignore[attr-defined]
        Key={"pk": {"S": "THREAD#msg_01ttl"}, "sk": {"S": "THREAD"}},
        ConsistentRead=True,
    )
    assert int(item["Item"][ttl_attribute()]["N"]) >= kept.expires_at


# The table as a build before answers kept their advisors made it.
WITHOUT_ADVISORS = (
    "CREATE TABLE thread_answers (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, ancestors TEXT NOT NULL, "
    "expires_at REAL NOT NULL) WITHOUT ROWID"
)


async def test_a_table_made_before_answers_kept_advisors_keeps_and_reads_them(tmp_path: Path) -> None:
    """`CREATE TABLE IF NOT EXISTS` left such a table as it was: every answer's write failed (its `continue` then the
    404 that starts a new thread) and every `continue`'s read was the client's 503 (found by review)."""
    path = tmp_path / "gateway.db"
    await open_store(f"sqlite:///{path}").close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(WITHOUT_ADVISORS)
        db.execute("INSERT INTO thread_answers VALUES ('msg_01before', 'key1', '[]', ?)", (time.time() + 3600,))
    store = open_store(f"sqlite:///{path}")
    try:
        kept = ThreadAnswer("msg_01after", "key1", [], time.time() + 3600, (("claude-opus-4-6", 3, 8192),))
        await store.put_thread_answer(kept)
        assert await store.get_thread_answer("msg_01after") == kept
        before = await store.get_thread_answer("msg_01before")  # (its key may still continue it, no advisor known)
        assert before is not None and before.key_id == "key1" and before.advisors == ()
    finally:
        await store.close()


async def test_a_column_another_process_added_first_is_no_failure(tmp_path: Path) -> None:
    """Two processes opening such a file at once both found the column missing; the second one's `ALTER` failed
    (`duplicate column`), and with it a thread's answer or its `continue` (found by review)."""
    path = tmp_path / "gateway.db"
    await open_store(f"sqlite:///{path}").close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(WITHOUT_ADVISORS)
    store = open_store(f"sqlite:///{path}")
    with closing(sqlite3.connect(path)) as other, other:  # (the other process: it added the column first)
        other.execute("ALTER TABLE thread_answers ADD COLUMN advisors TEXT NOT NULL DEFAULT '[]'")
    connection = store.db  # type: ignore[attr-defined]

    class ReadBefore:
        """The connection, the table's columns as it read them before the other process's `ALTER`."""

        def execute(self, sql: str, *args: object) -> object:
            if sql.startswith("PRAGMA table_info"):
                return [(0, "id"), (1, "key_id"), (2, "ancestors"), (3, "expires_at")]
            return connection.execute(sql, *args)

    store.db = ReadBefore()  # type: ignore[attr-defined]
    try:
        kept = ThreadAnswer("msg_01both", "key1", [], time.time() + 3600, ())
        await store.put_thread_answer(kept)
        store.db = connection  # type: ignore[attr-defined]
        assert await store.get_thread_answer("msg_01both") == kept
    finally:
        store.db = connection  # type: ignore[attr-defined]
        await store.close()
