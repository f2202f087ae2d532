"""Gateway keys: hashing, verification with a short warm-process cache, and scope checks (their minting, rotation
and revocation: handler/pipeline/key_admin.py).

A key reads `gwk_<id>_<secret>`: the id finds the record, the secret (256 random bits) is checked
against its SHA-256 hash. A fast hash is right here because the secret is random, not a password:
there is nothing to brute-force. The cache keeps a record for `key_cache_seconds` (5 s by default),
which is the window in which a revoked, rotated-out or narrowed key may still be accepted by a warm
process that saw it just before. A secret its cached record refuses is checked against the store once more
before it is refused (a rotation elsewhere gives a secret the cached record cannot know), at most once a
`RECHECK_SECONDS` per key: a stream of wrong secrets for a real key id is not a store read each.

The cache is bounded, oldest read first out: `KEYS_HELD` records of keys, and apart from them, `UNKNOWN_HELD` ids
the store had no key for, so that a client sending made-up keys pushes out only other made-up ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, TypeAlias

from handler.errors import AuthenticationError, PermissionDeniedError, model_not_allowed
from handler.pipeline.attribution import stored_tags
from handler.ports import KeyRecord, Store
from handler.redaction import SECRET_CHARS, unkeyed, window, without_hashed_secrets

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # (pydantic's dependency; only read by the type checker)

KEY_PREFIX = "gwk"
ID_LENGTH = 12
# How often a key's record may be read again for a secret its cached copy refuses (see the module docstring).
RECHECK_SECONDS = 1.0
# How many keys' records a process holds, and apart from them how many ids of no key (see the module docstring).
KEYS_HELD = 10_000
UNKNOWN_HELD = 1_000
# What a key's previous secret, in its rotation's grace, is told on a route that would use the key's admin powers.
ROTATED_OUT = (
    "this is the key's previous secret, rotated out: within its grace it serves the key's requests, but not the admin "
    "routes or minting keys; use the key's new secret"
)

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def own_secret_hashes(lineage: Sequence[KeyRecord]) -> tuple[str, ...]:
    """The hashes of the secrets of a key and its ancestors (`lineage`), their previous ones too."""
    return tuple(hashed for record in lineage for hashed in (record.secret_hash, record.prev_secret_hash) if hashed)


def without_own_secret(value: str, lineage: Sequence[KeyRecord]) -> str:
    """`value`, a client's name for its user, its session or a tag (kept on the request's ledger line beside the ids
    of its key and the key's ancestors, `lineage`), with the secret of any of those keys redacted where it stands
    (`redaction.without_hashed_secrets`): the line's id beside it would make it the key whole for whoever reads the
    line."""
    if len(value) < SECRET_CHARS:
        return value
    return without_hashed_secrets(value, own_secret_hashes(lineage))


def kept_unkeyed(value: str, lineage: Sequence[KeyRecord], limit: int | None = None) -> str:
    """A client's name for its user, its session or a tag, as its request's ledger line keeps it: `unkeyed`, and
    without the secret of its key or an ancestor (`without_own_secret`). With `limit`, its first `limit` characters,
    both redactions read past the cut (`redaction.window`) before it: cut first, a secret straddling the cut kept its
    first characters, too few for the secret's hash."""
    if limit is not None and len(value) > limit:
        return kept_unkeyed(window(value, limit), lineage)[:limit]
    return without_own_secret(unkeyed(value), lineage)


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


# What a command or a route that takes a key's id says when given what `may_hold_a_secret`.
NOT_THE_KEY = "a key's id (the part between `gwk_` and the next `_`), not the key"


def may_hold_a_secret(key_id: str) -> bool:
    """Whether what was given as a key's id may be a key, secret and all, which an error must not echo (and a store
    is not asked for: DynamoDB's request logs keep the key a read asks for): a whole key, or one without its `gwk_`
    (`<id>_<secret>`, echoed whole, 43 characters of secret). An id has no `_`."""
    return "_" in key_id


def is_key_id(key_id: str) -> bool:
    """Whether `key_id` may be a key's id: `ID_LENGTH` characters (every key's, as `split_key` reads one), and so no
    secret. A store is not asked for one that cannot be: DynamoDB answers an id past its 2,048-byte key limit with a
    ValidationException, which would be a 503 "retry shortly" (SQLite's answer, a 404, is given before the store)."""
    return len(key_id) == ID_LENGTH and not may_hold_a_secret(key_id)


def split_key(token: str) -> tuple[str, str] | None:
    """`(id, secret)` of a well-formed key, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != ID_LENGTH or len(secret) < 32:
        return None
    return key_id, secret


def model_allowed(patterns: list[str], model: str) -> bool:
    """Whether a glob of `patterns` matches `model` (`*`, most keys' only pattern, without the glob machinery). Plain
    loops, here and in `allows_model`: a request asks several times (its scope, each deployment planned), and the
    generators `any` and `all` would be given cost as much again."""
    for pattern in patterns:
        if pattern == "*" or fnmatchcase(model, pattern):
            return True
    return False


def allows_model(lineage: list[KeyRecord], model: str) -> bool:
    """Whether the key and every ancestor in `lineage` may use `model`."""
    for holder in lineage:
        if not model_allowed(holder.models, model):
            return False
    return True


def parse_networks(networks: list[str]) -> tuple[Network, ...]:
    """A key's `allow_ips` as ranges to match, parsed once when its record is read (`KeyService`): parsed at
    every request, 40,001 ranges cost a key's requests 0.31 s of CPU each, every other key's waiting behind."""
    return tuple(network(net) for net in networks)


def address_allowed(networks: tuple[Network, ...], address: str | None) -> bool:
    """Whether `address` is in one of the (parsed, non-empty) `networks`."""
    if address is None:
        return False
    try:
        ip = unmapped(ipaddress.ip_address(address))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def unmapped(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, an IPv4 peer of a dual-stack socket) as the IPv4 address it
    maps; any other address as it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def hop_address(hop: str) -> Address | None:
    """An address as a peer or an `X-Forwarded-For` hop gives it, or None if it is none: bare, or with the port some
    proxies add (`203.0.113.7:51234`, `[2001:db8::1]:443`, as Azure Application Gateway writes them), an IPv4-mapped
    one as its IPv4 address (`unmapped`)."""
    try:
        return unmapped(ipaddress.ip_address(hop))
    except ValueError:
        pass
    if hop.startswith("["):  # `[v6]` or `[v6]:port`
        host, closed, port = hop[1:].partition("]")
        if not closed or (port and not (port[0] == ":" and port[1:].isdigit())):
            return None
    else:  # `v4:port`: one colon only (more is an IPv6 address, which needs brackets for a port)
        host, colon, port = hop.rpartition(":")
        if not colon or ":" in host or not port.isdigit():
            return None
    try:
        return unmapped(ipaddress.ip_address(host))
    except ValueError:
        return None


def network(text: str) -> Network:
    """A range as `allow_ips` holds it; an IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it
    maps, since a client's mapped address is matched as the IPv4 address it is."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


class CachedKey:
    """A key's record as this process read it from the store (None: no such key), with its `allow_ips` parsed."""

    __slots__ = ("read_at", "record", "networks", "rechecked_at", "rereading")

    def __init__(self, read_at: float, record: KeyRecord | None) -> None:
        self.read_at = read_at
        # (Its tags as a line may carry them: a record stored before tags were checked as they are now may hold a key.)
        self.record = replace(record, tags=stored_tags(record.tags)) if record is not None and record.tags else record
        self.networks = parse_networks(record.allow_ips) if record is not None and record.allow_ips else ()
        # When a secret this record refused last had the store read again, and that read while it runs.
        self.rechecked_at = -math.inf
        self.rereading: asyncio.Future[CachedKey] | None = None


class KeyService:
    """Key lifecycle and verification over a `Store`."""

    def __init__(self, store: Store, cache_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self.clock = clock
        # Each in the order its entries were read (a plain dict: a hit costs what it did; an OrderedDict's lookup
        # is slower), the oldest evicted first.
        self._cache: dict[str, CachedKey] = {}
        self._unknown: dict[str, CachedKey] = {}
        # Reads of a key under way (key id -> how many), and the writes this process made meanwhile: a write's
        # number (`_writes` counts them) by the id of a key it wrote while a read of it was under way (`_read`).
        self._reading: dict[str, int] = {}
        self._writes = 0
        self._written: dict[str, int] = {}

    async def chain(self, record: KeyRecord) -> list[tuple[str, KeyRecord | None]]:
        """`record` and its ancestors, nearest first, by id (None for one that no longer exists)."""
        chain: list[tuple[str, KeyRecord | None]] = [(record.id, record)]
        for ancestor_id in reversed(record.ancestors):
            chain.append((ancestor_id, await self.lookup(ancestor_id)))
        return chain

    def wrote(self, record: KeyRecord) -> None:
        """Cache the record this process just wrote: a key homed in another region is written there, and this
        region's replica has the write only with replication (a rotated secret would be 401 here for 1.09 s). Unless the
        cache holds a later version (`_newer`): the answers to two writes of a key may come back in either order, and
        a retag answered after the revocation made over it would put the key back live on the process that revoked
        it."""
        self._stamp(record.id)
        if self.cache_seconds <= 0:
            self._cache.pop(record.id, None)
        elif self._newer(record) is None:
            self._keep(record.id, CachedKey(self.clock(), record))

    def _newer(self, record: KeyRecord | None) -> CachedKey | None:
        """The cached entry of `record`'s key if it holds a later version of it, however old the entry: each write
        makes the next version (`Store.update_key`), so `record` is older than one this process wrote or read."""
        if record is None:
            return None
        held = self._cache.get(record.id)
        return held if held is not None and held.record is not None and held.record.version > record.version else None

    def forget(self, key_id: str | None = None) -> None:
        """Drop the cached record of `key_id` (one this process changed), or every one (after a SnapStart restore
        the cache may be arbitrarily old)."""
        if key_id is None:
            for reading in list(self._reading):
                self._stamp(reading)
            self._cache.clear()
            self._unknown.clear()
        else:
            self._stamp(key_id)
            self._cache.pop(key_id, None)
            self._unknown.pop(key_id, None)

    def _stamp(self, key_id: str) -> None:
        """Count a write of `key_id` (or a forgetting), and mark the reads of it under way as begun before it."""
        self._writes += 1
        if key_id in self._reading:
            self._written[key_id] = self._writes

    async def lookup(self, key_id: str) -> KeyRecord | None:
        """The record, from the warm cache when fresh."""
        return (await self._cached(key_id, self.clock())).record

    async def _cached(self, key_id: str, now: float) -> CachedKey:
        """The key from the warm cache when fresh, else read from the store."""
        cached = self._cache.get(key_id)
        if cached is None or now - cached.read_at >= self.cache_seconds:
            cached = self._unknown.get(key_id)
            if cached is None or now - cached.read_at >= self.cache_seconds:
                cached = await self._read(key_id, now)
        return cached

    async def _read(self, key_id: str, now: float, latest: bool = False) -> CachedKey:
        """The key read from the store (`latest`: as its home region has it, `Store.get_key_latest`), and cached
        unless this process wrote the key (`wrote`, `forget`) while the read was under way: the read may hold the
        record as it was before the write. Cached whenever it lands, a lookup begun before a revocation (another
        request of the process, on DynamoDB) would put the key back live on the process that revoked it, for
        `key_cache_seconds`; and one begun before a rotation with no grace, the leaked secret as the key's current
        one, admin powers and all. A record older than the cached one (`_newer`: a replica behind a write this process
        made in the key's home region) is neither cached nor answered: the cached, later one is."""
        began = self._writes
        self._reading[key_id] = self._reading.get(key_id, 0) + 1
        try:
            record = await (self.store.get_key_latest if latest else self.store.get_key)(key_id)
        finally:
            left = self._reading.pop(key_id) - 1
            if left:
                self._reading[key_id] = left
            written = self._written.get(key_id, 0) if left else self._written.pop(key_id, 0)
        newer = self._newer(record)
        if newer is not None:
            return newer
        cached = CachedKey(now, record)
        if self.cache_seconds > 0 and written <= began:
            self._keep(key_id, cached)
        return cached

    def _keep(self, key_id: str, cached: CachedKey) -> None:
        """Cache `cached` as the newest entry of its map (a key's record, or an id of no key), evicting that map's
        oldest past its bound: emptied whole past 10,000 entries, the cache let 10,001 made-up keys cost every valid
        key a store read again."""
        if cached.record is None:
            held, other, bound = self._unknown, self._cache, UNKNOWN_HELD
        else:
            held, other, bound = self._cache, self._unknown, KEYS_HELD
        other.pop(key_id, None)
        held.pop(key_id, None)  # (put back last: the order is that of the reads)
        held[key_id] = cached
        if len(held) > bound:
            del held[next(iter(held))]

    async def _reread(self, key_id: str, cached: CachedKey, now: float) -> CachedKey:
        """For a secret the cached record `cached` refused: the record read again (a rotation by another process
        leaves a secret the cached copy cannot know: it would be refused for `key_cache_seconds`), unless the key was
        read again for that less than `RECHECK_SECONDS` ago, so that a stream of wrong secrets is not a store read
        each. Requests that meet a read under way wait for it rather than read again."""
        if cached.rereading is None:
            if now - cached.rechecked_at < RECHECK_SECONDS:
                return cached
            cached.rechecked_at = now

            async def reread() -> CachedKey:
                found = await self._read(key_id, now, latest=True)
                found.rechecked_at = now
                return found

            cached.rereading = rereading = asyncio.ensure_future(reread())
            rereading.add_done_callback(lambda done: _settled(cached, done))
        # Shielded: a request given up while waiting must not cancel the read the others wait for.
        return await asyncio.shield(cached.rereading)

    async def authenticate(self, token: str | None, client_ip: str | None) -> KeyRecord:
        """The live key behind `token`, or the matching 401/403."""
        return (await self.authenticate_lineage(token, client_ip))[0]

    async def authenticate_lineage(
        self, token: str | None, client_ip: str | None, administers: bool = False
    ) -> list[KeyRecord]:
        """The live key behind `token` and its ancestors, nearest first; every one of them must be live and
        allow `client_ip`, or the matching 401/403. `administers`: the request would use the key's admin powers or
        mint a key under it, which its previous secret, in a rotation's grace, may not (403 `admin_only`): that
        secret was rotated out, perhaps because it leaked, and with them it could rotate the key again with no grace,
        leaving the operator's new secret dead and its own holder the key's only one, or mint an admin key of its
        own that outlives the grace for good."""
        if not token:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        parts = split_key(token)
        if parts is None:
            raise AuthenticationError("invalid API key")
        key_id, secret = parts
        now = self.clock()
        cached, fresh = self._cache.get(key_id), False
        if cached is None or now - cached.read_at >= self.cache_seconds:
            cached = self._unknown.get(key_id)
            if cached is None or now - cached.read_at >= self.cache_seconds:
                cached, fresh = await self._read(key_id, now), True
        digest = hash_secret(secret)
        record = cached.record
        if not secret_matches(record, digest, now):
            # A cached copy may predate a rotation by another process; a copy just read, one written in the key's
            # home region and not yet replicated here (`Store.get_key_latest`).
            if not fresh or record is not None:
                cached = await self._reread(key_id, cached, now)
                record = cached.record
            if not secret_matches(record, digest, now):
                raise AuthenticationError("invalid API key")
        await self._check_live(record, now)
        lineage = [record]
        ranged = [(record, cached.networks)] if cached.networks else []
        for ancestor_id in reversed(record.ancestors):
            held = await self._cached(ancestor_id, now)
            ancestor = held.record
            if ancestor is None:
                raise AuthenticationError("this key's parent no longer exists", code="key_revoked")
            await self._check_live(ancestor, now, inherited=True)
            lineage.append(ancestor)
            if held.networks:
                ranged.append((ancestor, held.networks))
        for holder, networks in ranged:
            if not address_allowed(networks, client_ip):
                whose = "this key" if holder is record else "a parent of this key"
                raise PermissionDeniedError(
                    f"requests from {client_ip} are not allowed for {whose}", code="ip_not_allowed"
                )
        # (Which secret matched is asked only here: a request to a model pays nothing for it.)
        if administers and not hmac.compare_digest(digest, record.secret_hash):
            raise PermissionDeniedError(ROTATED_OUT, code="admin_only")
        return lineage

    async def lineage(self, record: KeyRecord) -> list[KeyRecord]:
        """`record` and the ancestors that still exist, nearest first (from the warm cache when fresh)."""
        return [held for _, held in await self.chain(record) if held is not None]

    async def _check_live(self, record: KeyRecord, now: float, inherited: bool = False) -> None:
        whose = "this key's parent" if inherited else "this key"
        # Revoked whenever it was: nothing stamps a revocation to come (a rotation's grace is `prev_valid_until`), and
        # a time ahead of this clock is another's (`gateway keys revoke` on a laptop running fast), not a delay.
        if record.revoked_at is not None:
            if record.revoked_by is not None and not inherited:  # revoked with an ancestor: say which, as before
                whose = "this key's parent" if record.revoked_by == record.parent_id else "an ancestor of this key"
            raise AuthenticationError(f"{whose} has been revoked", code="key_revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationError(f"{whose} has expired", code="key_expired")

    @staticmethod
    def check_model(lineage: list[KeyRecord], model: str, exists: Callable[[str], object]) -> None:
        """403 unless the key and every ancestor (`lineage`, nearest first) may use `model`; a model this gateway does
        not have is first `exists`'s 404, whatever the key's scopes (a typo, `gpt-4o-mni`, sent a key limited to
        `gpt-4o-mini` to look at its scopes: the 403 said it may not use it)."""
        if not allows_model(lineage, model):
            exists(model)
            raise model_not_allowed(model)

    @staticmethod
    def require_admin(record: KeyRecord) -> None:
        if not record.admin:
            raise PermissionDeniedError("this route needs an admin key", code="admin_only")


def secret_matches(record: KeyRecord | None, digest: str, now: float) -> TypeIs[KeyRecord]:
    """Whether `digest` is the hash of the key's secret, or of its previous one within the rotation's grace (which
    serves the key's requests, not its admin powers: `KeyService.authenticate_lineage`'s `administers`)."""
    if record is None:
        return False
    if hmac.compare_digest(digest, record.secret_hash):
        return True
    grace = record.prev_secret_hash and record.prev_valid_until and now < record.prev_valid_until
    return bool(grace) and hmac.compare_digest(digest, record.prev_secret_hash or "")


def _settled(cached: CachedKey, done: asyncio.Future[CachedKey]) -> None:
    """A re-read is over: the next refused secret may start another (after `RECHECK_SECONDS`). Its failure is
    taken here too, so that one whose every waiter was given up is not reported as never retrieved."""
    cached.rereading = None
    if not done.cancelled():
        done.exception()
