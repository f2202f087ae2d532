"""Provider keys held in SSM Parameter Store or Secrets Manager, kept current while the process runs.

Each is read at start (`build_adapters`), then read again:
- every `gateway.provider_key_refresh_seconds` (300 s by default): a key rotated in its store is in use within that
  time. The read runs on a thread of its own, started by the first request after it is due (`check`, one clock
  comparison when none is): no request waits for it, and the key held serves until its successor is read.
- `RETRY_S` after a read that failed (sooner, if keys are read again more often than that): a store that throttled,
  timed out or refused (not one that answered that the key is absent, which leaves the provider without a key, as at
  start). The failure is logged with the store's error code, never a value; the provider's requests meanwhile get a
  503 `provider_not_configured` that says the key could not be read and when it is read again (`retry-after`), and a
  request that needs it waits up to `WAIT_S` for a read under way (`settle`).
- all of them after a SnapStart restore (`reread`): the snapshot may have been taken hours before, or with a read
  that failed.
- once when the provider refuses the key (a 401): a key rotated since its last read is used at once (`renewed`).

A provider key given literally or by `env:NAME` is not read again: the environment does not change under a
running process.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Mapping

from handler import redaction
from handler.config import SECRET_STORES, SecretFetcher, SecretUnreadableError, reference_name, resolve_secret
from handler.pipeline.keys import split_key
from handler.ports import ProviderAdapter
from handler.telemetry.observability import logger

RETRY_S = 5.0  # an unreadable key is read again this long after the failure, by the next request after it
WAIT_S = 2.0  # the most a request that needs an unreadable key waits for its read under way
RESTORE_WAIT_S = 5.0  # the most a SnapStart restore waits for the keys' reads (a slower one goes on on its own)


def install(adapter: ProviderAdapter, reference: str | None, secret: str | None) -> None:
    """Give `adapter` the key `reference` resolved to (None: it has none). One of this gateway's own keys (a client's
    environment, say) is refused: it must never be sent upstream. The key is registered as a secret, in place of
    the one it replaces (`redaction.register_current`)."""
    refused = None
    if secret is not None and split_key(secret.strip()) is not None:
        refused = reference_name(reference or "")
        logger.warning(f"provider {adapter.name}: {refused} holds a gateway key (gwk_...), not a provider key; ignored")
        secret = None
    redaction.register_current(f"provider {adapter.name}", secret)
    adapter.secret = secret
    adapter.refused_reference = refused
    adapter.unread = None


def unreadable(adapter: ProviderAdapter, failure: SecretUnreadableError, retry_s: float = RETRY_S) -> None:
    """Mark `adapter`'s key as not read (`failure`); a key it holds from an earlier read stays in use."""
    logger.warning(
        f"provider {adapter.name}: its key {failure}; "
        + ("the key read before stays in use" if adapter.secret else "its requests answer 503 until it is read")
        + f"; read again in {retry_s:g} s"
    )
    if not adapter.secret:
        adapter.unread = failure.reason


class StoredKey:
    """One provider's key in SSM or Secrets Manager: where it is, and when it is to be read again."""

    __slots__ = ("adapter", "reference", "due", "reading", "refused_at")

    def __init__(self, adapter: ProviderAdapter, reference: str, due: float) -> None:
        self.adapter = adapter
        self.reference = reference
        self.due = due  # when it is to be read again (`math.inf` while a read is under way)
        self.reading: threading.Event | None = None  # set when the read under way ends
        self.refused_at = -math.inf  # when a provider's 401 last had it read (`ProviderKeys.renewed`)


class ProviderKeys:
    """The process's provider keys held in a secret store, each read again as the module docstring says."""

    def __init__(
        self,
        adapters: Mapping[str, ProviderAdapter],
        references: Mapping[str, str | None],
        refresh_s: float,
        environ: Mapping[str, str] | None = None,
        fetch: SecretFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_s = refresh_s
        self.retry_s = min(RETRY_S, refresh_s)
        self.environ = environ
        self.fetch = fetch
        self.clock = clock
        now = clock()
        self.stored = [
            StoredKey(adapters[name], ref, now + (self.retry_s if adapters[name].unread else refresh_s))
            for name, ref in references.items()
            if ref and ref.startswith(SECRET_STORES)
        ]
        self.due = min((key.due for key in self.stored), default=math.inf)
        self._lock = threading.Lock()

    def check(self) -> None:
        """On each request: start the reads that are due, on their threads (a comparison when none is)."""
        if self.clock() >= self.due:
            self._start_due()

    async def settle(self) -> bool:
        """For a request none of whose deployments has a key: wait up to `WAIT_S` for the reads of keys that could
        not be read (started now if due); whether any of them is now held."""
        unread = [key for key in self.stored if key.adapter.unread]
        self.check()
        deadline = self.clock() + WAIT_S
        for done in [key.reading for key in unread]:
            if done is not None:  # (a read that ended already needs no wait)
                await asyncio.to_thread(done.wait, max(0.0, deadline - self.clock()))
        return any(key.adapter.secret for key in unread)

    async def renewed(self, adapter: ProviderAdapter, refused: str | None) -> bool:
        """After the provider refused the key `refused` (401): whether `adapter` now holds another, so the request may
        be sent again with it. The key is read now (waiting up to `WAIT_S`), unless a 401 had it read less than
        `retry_s` before (a revoked key still in the store would otherwise have every request read it). A key not
        held in a store: False."""
        key = self._of(adapter)
        if key is None:
            return False
        if adapter.secret == refused:
            with self._lock:
                done = key.reading
                if done is None:
                    if self.clock() - key.refused_at < self.retry_s:
                        return False
                    key.refused_at = self.clock()
                    done = self._start(key)
            await asyncio.to_thread(done.wait, WAIT_S)
        return bool(adapter.secret) and adapter.secret != refused

    async def reread(self) -> None:
        """Read every key now (after a SnapStart restore), waiting up to `RESTORE_WAIT_S` for them all."""
        with self._lock:
            reads = [key.reading or self._start(key) for key in self.stored]
        deadline = self.clock() + RESTORE_WAIT_S
        for done in reads:
            await asyncio.to_thread(done.wait, max(0.0, deadline - self.clock()))

    def _of(self, adapter: ProviderAdapter) -> StoredKey | None:
        return next((key for key in self.stored if key.adapter is adapter), None)

    def _start_due(self) -> None:
        now = self.clock()
        with self._lock:
            for key in self.stored:
                if key.due <= now and key.reading is None:
                    self._start(key)
            self.due = min((key.due for key in self.stored), default=math.inf)

    def _start(self, key: StoredKey) -> threading.Event:
        """Start reading `key` on a thread (the lock held)."""
        done = key.reading = threading.Event()
        key.due = math.inf
        name = f"provider-key-{key.adapter.name}"
        threading.Thread(target=self._read, args=(key, done), name=name, daemon=True).start()
        return done

    def _read(self, key: StoredKey, done: threading.Event) -> None:
        adapter = key.adapter
        try:
            secret = resolve_secret(key.reference, self.environ, self.fetch)
        except SecretUnreadableError as failure:
            unreadable(adapter, failure, self.retry_s)
            next_read = self.retry_s
        except Exception as exc:  # noqa: BLE001 - a store's client failing otherwise is one more unreadable store
            reason = type(exc).__name__
            unreadable(adapter, SecretUnreadableError(reference_name(key.reference), reason), self.retry_s)
            next_read = self.retry_s
        else:
            if secret != adapter.secret:
                if adapter.secret and secret:
                    logger.info(f"provider {adapter.name}: a new key read from {key.reference}, in use from now")
                install(adapter, key.reference, secret)
            adapter.unread = None
            next_read = self.refresh_s
        with self._lock:
            key.reading = None
            key.due = self.clock() + next_read
            self.due = min(k.due for k in self.stored)
        done.set()
