"""What a table of the SQLite store's that the store makes with its first use works on (stored responses,
`adapters/store/responses.py`; thread answers, `adapters/store/threads.py`): the store's connection, and its bound on
waiting for another process's write lock. A process that serves neither imports none of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import contextlib
    import sqlite3


class OnTheStore:
    """A table's statements on `store`'s connection (`SQLiteStore`): each autocommitting, no transaction of the store's
    batches being open between its calls."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def db(self) -> sqlite3.Connection:
        return self.store.db  # type: ignore[no-any-return]

    def _lock_wait(self) -> contextlib.AbstractContextManager[None]:
        """The store's bound on SQLite's wait for another process's write lock (`SQLiteStore._lock_wait`)."""
        return self.store._lock_wait()  # type: ignore[no-any-return]
