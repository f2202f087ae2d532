"""Whose each answer of an Anthropic message thread is, for each backend: the SQLite store's `thread_answers`
(`SQLiteThreads`, which the store makes with its first thread: a process that relays none imports none of this), and
the DynamoDB store's mixin.

Anthropic keeps every thread the gateway relays under the one account, whichever key made it, and a `continue` names
the answer it continues by its message id alone: so the gateway keeps, for each thread's answer it relays, the key it
answered and that key's ancestors (`ThreadAnswer`), and a `continue` of an id kept for no key of its lineage is
Anthropic's 404 `thread_not_found` before anything is reserved or sent (`handler.pipeline.pipeline`). With them, the
advisor tools the thread holds (Anthropic keeps a thread's `tools`, which a `continue` does not send): a `continue` in
any process is reserved for them, and held to its key's scopes for them, from the same read. A record per
answer, written once as it is relayed and read once per `continue`, living as long as a stored response
(`gateway.responses_ttl_seconds`); reads treat an expired one as gone before the backend's own clean-up (SQLite's
sweep on the next write, DynamoDB's TTL within days) removes it. A message id is Anthropic's and unique: writing it
again (a call sent again) writes the same record.

The DynamoDB mixin is a module of its own (`adapters/store/dynamo_threads.py`), which imports the DynamoDB client in
its methods: a process on the embedded store imports neither.

| backend | where |
|---|---|
| SQLite | table `thread_answers` (`id`, `key_id`, `ancestors`, `expires_at`, `advisors`) |
| DynamoDB | `pk=THREAD#<message id>`, `sk=THREAD`: `key_id`, `ancestors`, `expires_at`, `ttl`, `advisors` |

An advisor is its model (the upstream id), its `max_uses` and its `max_tokens`, as the tool was sent: on SQLite a JSON
list of `[model, max_uses, max_tokens]`, on DynamoDB a list of maps with those names (absent: none).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import orjson

from adapters.store.sqlite_tables import OnTheStore
from handler.ports import StoreError, ThreadAnswer

if TYPE_CHECKING:
    import sqlite3

THREAD_ANSWERS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS thread_answers (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, ancestors TEXT NOT NULL, "
    "expires_at REAL NOT NULL, advisors TEXT NOT NULL) WITHOUT ROWID"
)
# Expired answers are deleted as each new one is kept, by this index (as stored responses are).
THREAD_ANSWERS_EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS thread_answers_expiry ON thread_answers (expires_at)"


class SQLiteThreads(OnTheStore):
    """`put_thread_answer` and `get_thread_answer` on the SQLite store's connection: made by the store with its first
    thread (`OnTheStore`)."""

    _threads_ready = False

    def _threads(self) -> sqlite3.Connection:
        if not self._threads_ready:
            self.db.execute(THREAD_ANSWERS_SCHEMA)
            self.db.execute(THREAD_ANSWERS_EXPIRY_INDEX)
            # A table an earlier build made before answers kept their thread's advisors: the column added (its
            # answers hold none known), else every write and read of it would fail.
            columns = {row[1] for row in self.db.execute("PRAGMA table_info(thread_answers)")}
            if "advisors" not in columns:
                import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

                try:
                    self.db.execute("ALTER TABLE thread_answers ADD COLUMN advisors TEXT NOT NULL DEFAULT '[]'")
                except sqlite3.OperationalError as exc:  # (another process on the file added it first)
                    if "duplicate column" not in str(exc):
                        raise
            self._threads_ready = True
        return self.db

    async def put_thread_answer(self, answer: ThreadAnswer) -> None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            db = self._threads()
            with self._lock_wait():  # (a relayed answer's: it may wait for another process's write lock)
                db.execute("DELETE FROM thread_answers WHERE expires_at < ?", (time.time(),))
                db.execute(
                    "INSERT OR REPLACE INTO thread_answers (id, key_id, ancestors, expires_at, advisors) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (
                        answer.id,
                        answer.key_id,
                        orjson.dumps(answer.ancestors).decode(),
                        answer.expires_at,
                        orjson.dumps(answer.advisors).decode(),
                    ),
                )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot keep the thread's answer: {exc}") from exc

    async def get_thread_answer(self, message_id: str) -> ThreadAnswer | None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            row = (
                self._threads()
                .execute(
                    "SELECT key_id, ancestors, expires_at, advisors FROM thread_answers "
                    "WHERE id = ? AND expires_at >= ?",
                    (message_id, time.time()),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot read the thread's answer: {exc}") from exc
        if row is None:
            return None
        advisors = tuple((str(model), int(uses), int(advice)) for model, uses, advice in orjson.loads(row[3]))
        return ThreadAnswer(message_id, str(row[0]), [str(a) for a in orjson.loads(row[1])], float(row[2]), advisors)
