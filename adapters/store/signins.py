"""One-time dashboard sign-in tokens, for each backend: a mixin per store class.

`gateway dashboard` keeps the SHA-256 of a fresh random token, with the admin key it stands for and a
deadline about a minute away; the dashboard page hands the token back once and gets a session. Taking a token
uses it up in the same statement, so of two racing exchanges only one finds it; an expired one is never taken
(the backend's own clean-up removes it later: SQLite on the next write, DynamoDB's TTL within days).

SQLite deletes the row. DynamoDB marks the item taken (`taken`, a token drawn by the taking call) rather than
deleting it: its client sends a call again when the answer does not come, and a delete that had landed left
nothing for the call sent again to find, so a good link answered "used already" to its own user. The mark
sent again finds its own token and answers as the first would have.

Across regions (a DynamoDB global table) the item records the region that wrote it (`home`), and is taken only there,
through that region's client: taken in the replica where it was presented, the same link used within replication
lag in another region passed that region's condition too, and signed in twice. One whose region is not known here
(not replicated here yet, or written by an older release) is refused: a link is good for a minute, and a new one is a
command away.

The DynamoDB mixin is a module of its own (`adapters/store/dynamo_signins.py`), which imports the DynamoDB client in
its methods: a process on the embedded store imports neither, nor the DynamoDB expressions (with the store package's,
3.2 million instructions of a Lambda's cold start on SQLite).

| backend | where |
|---|---|
| SQLite | table `sign_ins` (`hash`, `key_id`, `expires_at`) |
| DynamoDB | `pk=SIGNIN#<hash>`, `sk=SIGNIN`, `key_id`, `expires_at`, `ttl`, `home`, `taken` once taken |
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from handler.ports import StoreError

if TYPE_CHECKING:
    import sqlite3

SIGN_INS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sign_ins (hash TEXT PRIMARY KEY, key_id TEXT NOT NULL, expires_at REAL NOT NULL) "
    "WITHOUT ROWID"
)


class SQLiteSignIns:
    """`put_sign_in` and `take_sign_in` on the SQLite store's connection, one autocommitting statement each."""

    db: sqlite3.Connection
    _sign_ins_ready: bool = False

    def _sign_ins(self) -> sqlite3.Connection:
        if not self._sign_ins_ready:
            self.db.execute(SIGN_INS_SCHEMA)
            self._sign_ins_ready = True
        return self.db

    async def put_sign_in(self, token_hash: str, key_id: str, expires_at: float) -> None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            db = self._sign_ins()
            db.execute("DELETE FROM sign_ins WHERE expires_at < ?", (time.time(),))
            db.execute(
                "INSERT INTO sign_ins (hash, key_id, expires_at) VALUES (?, ?, ?)", (token_hash, key_id, expires_at)
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot keep the sign-in token: {exc}") from exc

    async def take_sign_in(self, token_hash: str) -> str | None:
        import sqlite3  # (the embedded store's: a DynamoDB store's start-up never imports it)

        try:
            row = (
                self._sign_ins()
                .execute(
                    "DELETE FROM sign_ins WHERE hash = ? AND expires_at >= ? RETURNING key_id",
                    (token_hash, time.time()),
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store cannot read the sign-in token: {exc}") from exc
        return str(row[0]) if row else None
