"""The re-reading of provider keys (and header values) held in a secret store: `ProviderKeys`, imported only by a
process that has such a key (`provider_keys.held_keys`); see handler/pipeline/provider_keys.py's docstring."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Mapping

from handler.config import (
    SecretFetcher,
    SecretUnreadableError,
    header_value_problem,
    reference_name,
    resolve_credential,
)
from handler.pipeline.provider_keys import (
    RESTORE_WAIT_S,
    RETRY_S,
    WAIT_S,
    header_unreadable,
    install,
    install_header,
    is_stored,
    unreadable,
)
from handler.ports import ProviderAdapter
from handler.telemetry.observability import logger


class StoredKey:
    """One provider's key in SSM or Secrets Manager: where it is, and when it is to be read again."""

    __slots__ = ("adapter", "reference", "due", "reading", "refused_at")

    def __init__(self, adapter: ProviderAdapter, reference: str, due: float) -> None:
        self.adapter = adapter
        self.reference = reference
        self.due = due  # when it is to be read again (`math.inf` while a read is under way)
        self.reading: threading.Event | None = None  # set when the read under way ends
        self.refused_at = -math.inf  # when a provider's 401 last had it read (`ProviderKeys.renewed`)

    @property
    def unread(self) -> bool:
        """Whether it could not be read and none is held (its provider's requests answer 503)."""
        return self.adapter.unread is not None

    def held(self) -> str | None:
        """The value in use."""
        return self.adapter.secret

    def sent(self, key: str | None, headers: Mapping[str, str]) -> str | None:
        """The value a request refused with the provider's key `key` and `headers` carried."""
        return key

    def take(self, secret: str | None, refresh_s: float, retry_s: float) -> None:
        """Use `secret`, just read (None: the store holds none); read again in `refresh_s` (`retry_s` if it is still
        `unread`)."""
        adapter = self.adapter
        if secret != adapter.secret:
            if adapter.secret and secret:
                logger.info(f"provider {adapter.name}: a new key read from {self.reference}, in use from now")
            install(adapter, self.reference, secret)
        adapter.unread = None

    def failed(self, failure: SecretUnreadableError, retry_s: float) -> None:
        """Note that it could not be read (`failure`); read again in `retry_s`."""
        unreadable(self.adapter, failure, retry_s)


class StoredHeader(StoredKey):
    """One of a provider's `headers` whose value is in SSM or Secrets Manager (a credential: an Entra ID token)."""

    __slots__ = ("header",)

    def __init__(self, adapter: ProviderAdapter, header: str, reference: str, due: float) -> None:
        super().__init__(adapter, reference, due)
        self.header = header

    @property
    def unread(self) -> bool:
        return self.header in self.adapter.unread_headers

    def held(self) -> str | None:
        if self.unread:
            return None
        return self.adapter.options.get("headers", {}).get(self.header) or None

    def sent(self, key: str | None, headers: Mapping[str, str]) -> str | None:
        return headers.get(self.header)

    def take(self, secret: str | None, refresh_s: float, retry_s: float) -> None:
        adapter = self.adapter
        if secret is None:  # (absent now: at start that stopped the gateway; a value read before stays in use)
            absent = f"{self.reference} resolves to nothing"
            header_unreadable(adapter, self.header, absent, refresh_s if self.held() else retry_s)
            return
        held = self.held()
        if secret != held:
            if held:
                logger.info(
                    f"provider {adapter.name}: a new value of its header {self.header} read from {self.reference}, "
                    "in use from now"
                )
            install_header(adapter, self.header, secret)

    def failed(self, failure: SecretUnreadableError, retry_s: float) -> None:
        header_unreadable(self.adapter, self.header, failure, retry_s)


class ProviderKeys:
    """The process's provider keys (and header values) held in a secret store, each read again as the module docstring
    says."""

    def __init__(
        self,
        adapters: Mapping[str, ProviderAdapter],
        references: Mapping[str, str | None],
        refresh_s: float,
        environ: Mapping[str, str] | None = None,
        fetch: SecretFetcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        headers: Mapping[str, Mapping[str, str]] | None = None,  # provider -> header -> reference
    ) -> None:
        self.refresh_s = refresh_s
        self.retry_s = min(RETRY_S, refresh_s)
        self.environ = environ
        self.fetch = fetch
        self.clock = clock
        now = clock()
        stored = [StoredKey(adapters[name], ref, now) for name, ref in references.items() if is_stored(ref)]
        stored += [
            StoredHeader(adapters[name], header, ref, now)
            for name, refs in (headers or {}).items()
            for header, ref in refs.items()
            if is_stored(ref)
        ]
        for key in stored:
            key.due = now + (self.retry_s if key.unread else refresh_s)
        self.stored = stored
        self.due = min((key.due for key in self.stored), default=math.inf)
        self._lock = threading.Lock()

    def check(self) -> None:
        """On each request: start the reads that are due, on their threads (a comparison when none is)."""
        if self.clock() >= self.due:
            self._start_due()

    async def settle(self, within: float | None = None) -> bool | None:
        """For a request none of whose deployments has a key: wait up to `WAIT_S` for the reads of keys that could
        not be read (started now if due), or `within` seconds if sooner (what the request's deadline leaves: a store
        slow to answer held a request with 300 ms to live for the whole `WAIT_S`); whether any of them is now held,
        or None where `within` ran out first with none held and a read still under way (the request's deadline cut
        the wait, not the store's answer)."""
        unread = [key for key in self.stored if key.unread]
        self.check()
        wait = WAIT_S if within is None else min(WAIT_S, max(0.0, within))
        reads = [done for done in (key.reading for key in unread) if done is not None]
        await self._waited(reads, self.clock() + wait)
        held = any(key.held() for key in unread)
        if not held and wait < WAIT_S and not all(done.is_set() for done in reads):
            return None
        return held

    async def renewed(
        self, adapter: ProviderAdapter, refused: str | None, headers: Mapping[str, str] | None = None
    ) -> bool:
        """After the provider refused a request sent with the key `refused` and `headers` (a 401): whether `adapter`
        now holds another key, or another value of a header read from a store, so the request may be sent again. Each
        still holding what was sent is read now (waiting up to `WAIT_S`), unless a 401 had it read less than `retry_s`
        before (a revoked key still in the store would otherwise have every request read it). An adapter with nothing
        held in a store: False."""
        sent = {} if headers is None else headers
        stored = [key for key in self.stored if key.adapter is adapter]
        if not stored:
            return False
        reads = []
        with self._lock:
            for key in stored:
                if key.held() != key.sent(refused, sent):
                    continue  # (another request had it read already)
                done = key.reading
                if done is None:
                    if self.clock() - key.refused_at < self.retry_s:
                        continue
                    key.refused_at = self.clock()
                    done = self._start(key)
                reads.append(done)
        await self._waited(reads, self.clock() + WAIT_S)
        return any(key.held() and key.held() != key.sent(refused, sent) for key in stored)

    async def reread(self) -> None:
        """Read every key now (after a SnapStart restore), waiting up to `RESTORE_WAIT_S` for them all."""
        with self._lock:
            reads = [key.reading or self._start(key) for key in self.stored]
        await self._waited(reads, self.clock() + RESTORE_WAIT_S)

    async def _waited(self, reads: list[threading.Event], deadline: float) -> None:
        """Wait for `reads` until `deadline` (of `clock`), on a thread only for a read still under way with time
        left: a read that ended, or no time left, needs no wait (else a thread hop each, to wait 0 s, for a request
        whose deadline has left it none)."""
        for done in reads:
            left = deadline - self.clock()
            if left <= 0:
                return
            if not done.is_set():
                await asyncio.to_thread(done.wait, left)

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
        name = f"provider-key-{key.adapter.name}"  # (a header's too)
        threading.Thread(target=self._read, args=(key, done), name=name, daemon=True).start()
        return done

    def _read(self, key: StoredKey, done: threading.Event) -> None:
        try:
            secret = resolve_credential(key.reference, self.environ, self.fetch)
            if secret is not None and (problem := header_value_problem(secret)):
                # (Refused at start; read later, it is one more value that cannot be used: the one held before stays
                # in use, else the provider's requests answer the 503 saying why. It failed every request with a 500.)
                raise SecretUnreadableError(key.reference, f"its value {problem}")
        except SecretUnreadableError as failure:
            key.failed(failure, self.retry_s)
            next_read = self.retry_s
        except Exception as exc:  # noqa: BLE001 - a store's client failing otherwise is one more unreadable store
            reason = type(exc).__name__
            key.failed(SecretUnreadableError(reference_name(key.reference), reason), self.retry_s)
            next_read = self.retry_s
        else:
            key.take(secret, self.refresh_s, self.retry_s)
            next_read = self.retry_s if key.unread else self.refresh_s
        with self._lock:
            key.reading = None
            key.due = self.clock() + next_read
            self.due = min(k.due for k in self.stored)
        done.set()
