"""Gateway keys: minting, hashing, verification with a short warm-process cache, and scope checks.

A key reads `gwk_<id>_<secret>`: the id finds the record, the secret (256 random bits) is checked
against its SHA-256 hash. A fast hash is right here because the secret is random, not a password:
there is nothing to brute-force. The cache keeps a record for `key_cache_seconds` (5 s by default),
which is the window in which a revoked, rotated-out or narrowed key may still be accepted by a warm
process that saw it just before. A secret its cached record refuses is checked against the store once more
before it is refused (a rotation elsewhere gives a secret the cached record cannot know), at most once a
`RECHECK_SECONDS` per key: a stream of wrong secrets for a real key id is not a store read each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Final, TypeAlias

from handler.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError, model_not_allowed
from handler.ports import ChildLimitReached, ConflictError, KeyRecord, Store
from handler.records import Value
from handler.redaction import REDACTED

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # (pydantic's dependency; only read by the type checker)

KEY_PREFIX = "gwk"
ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
ID_LENGTH = 12
# How often a key's record may be read again for a secret its cached copy refuses (see the module docstring).
RECHECK_SECONDS = 1.0

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def new_key_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def format_key(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def split_key(token: str) -> tuple[str, str] | None:
    """`(id, secret)` of a well-formed key, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(key_id) != ID_LENGTH or len(secret) < 32:
        return None
    return key_id, secret


def model_allowed(patterns: list[str], model: str) -> bool:
    """Whether a glob of `patterns` matches `model` (`*`, most keys' only pattern, without the glob machinery)."""
    return any(pattern == "*" or fnmatchcase(model, pattern) for pattern in patterns)


def allows_model(lineage: list[KeyRecord], model: str) -> bool:
    """Whether the key and every ancestor in `lineage` may use `model`."""
    return all(model_allowed(holder.models, model) for holder in lineage)


def models_within(child: list[str], parent: list[str]) -> bool:
    """Every model a child pattern matches is matched by some parent pattern (glob containment).

    Conservative: a pattern that only a union of several parent patterns would cover is refused."""
    return all(any(glob_within(c, p) for p in parent) for c in child)


# (kind: "*", "?", "c" a character, "[" a class, "~" a class too wide to list; its characters; negated)
_Token = tuple[str, frozenset[str] | None, bool]
CLASS_RANGE_LIMIT = 4096  # characters a class's range may list; a wider class is known only as "one character"


def _glob_tokens(pattern: str) -> list[_Token]:
    """`fnmatch`'s syntax as tokens: `*`, `?`, `[...]`/`[!...]` classes (ranges expanded; a class with a range
    wider than `CLASS_RANGE_LIMIT` is kept as "~", one character we cannot list), literal characters."""
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char in "*?":
            if not (char == "*" and tokens and tokens[-1][0] == "*"):
                tokens.append((char, None, False))
            i += 1
            continue
        if char == "[":
            end = i + 1
            if end < len(pattern) and pattern[end] == "!":
                end += 1
            if end < len(pattern) and pattern[end] == "]":
                end += 1
            end = pattern.find("]", end)
            if end >= 0:
                body = pattern[i + 1 : end]
                negated = body.startswith("!")
                body = body[1:] if negated else body
                chars: set[str] = set()
                listed = True
                j = 0
                while j < len(body):
                    if j + 2 < len(body) and body[j + 1] == "-":
                        low, high = ord(body[j]), ord(body[j + 2])
                        listed = listed and high - low < CLASS_RANGE_LIMIT
                        if listed:
                            chars.update(chr(c) for c in range(low, high + 1))
                        j += 3
                    else:
                        chars.add(body[j])
                        j += 1
                tokens.append(("[", frozenset(chars), negated) if listed else ("~", None, negated))
                i = end + 1
                continue
        tokens.append(("c", frozenset(char), False))
        i += 1
    return tokens


def glob_within(child: str, parent: str) -> bool:
    """Whether every string `child` matches is matched by `parent` (both `fnmatch` globs).

    Sound, not complete: it never says yes wrongly. A `*` or `?` of the child must meet a `*`/`?` of the
    parent; a class of the child must be a subset of what the parent's token at that place admits. A class too
    wide to list is only known to be one character: within a parent's `?` or `*`, and covering nothing."""
    c_tokens, p_tokens = _glob_tokens(child), _glob_tokens(parent)
    memo: dict[tuple[int, int], bool] = {}

    def covers(p: _Token, c: _Token) -> bool:
        """Parent token `p` matches every single character child token `c` can match."""
        if p[0] == "?":
            return c[0] != "*"
        if c[0] in "*?" or p[1] is None or c[1] is None:
            return False
        if c[2]:  # a negated child class matches almost anything: only a negated parent with fewer exclusions
            return p[2] and p[1] <= c[1]
        return not (c[1] & p[1]) if p[2] else c[1] <= p[1]

    def within(i: int, j: int) -> bool:
        if (i, j) in memo:
            return memo[(i, j)]
        if j < len(p_tokens) and p_tokens[j][0] == "*":
            result = within(i, j + 1) or (i < len(c_tokens) and within(i + 1, j))
        elif i == len(c_tokens) or j == len(p_tokens):
            result = i == len(c_tokens) and j == len(p_tokens)
        else:
            result = covers(p_tokens[j], c_tokens[i]) and within(i + 1, j + 1)
        memo[(i, j)] = result
        return result

    return within(0, 0)


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


def validate_networks(networks: list[str]) -> list[str]:
    out = []
    for net in networks:
        try:
            out.append(str(network(net.strip())))
        except ValueError:
            raise InvalidRequestError(f"'{net}' is not an IP address or CIDR range", param="allow_ips") from None
    return out


class MintedKey(Value):
    """A new key: the record as stored and the secret shown once."""

    __slots__ = ("record", "key")

    def __init__(self, record: KeyRecord, key: str) -> None:
        self.record: Final = record
        self.key: Final = key

    def __repr__(self) -> str:
        """The key's id, never its secret: a log line or a traceback's locals may show a repr."""
        return f"MintedKey(record={self.record!r}, key={format_key(self.record.id, REDACTED)!r})"


# Parents whose children a family walk asks the store for at once (DynamoDB: one query or two each).
WALK_CONCURRENCY = 8


async def with_descendants(store: Store, key_id: str) -> list[str]:
    """`key_id` and every key minted under it, at any depth (breadth first), purged ones included: the store's
    links (`Store.child_ids`) outlive the children's records, as their ledger lines do. Walking the live keys
    instead dropped a child's spend from its parent's report a day after the child expired or was revoked.

    Every descendant, however many: the walk stopped once it had found 10,000 keys, and a parent's report left
    out the spend of the rest without a word (1,000 children with 9 children each hid a great-grandchild's). A
    level's parents are asked `WALK_CONCURRENCY` at a time, unless the store finds the family in one call
    (`Store.family_ids`)."""
    family = await store.family_ids(key_id)
    if family is not None:
        return family
    found, frontier = [key_id], [key_id]
    seen = {key_id}
    gate = asyncio.Semaphore(WALK_CONCURRENCY)

    async def children_of(parent: str) -> list[str]:
        async with gate:
            return await store.child_ids(parent)

    while frontier:
        parents, frontier = frontier, []
        for children in await asyncio.gather(*(children_of(parent) for parent in parents)):
            fresh = [child for child in children if child not in seen]
            seen.update(fresh)
            frontier += fresh
        found += frontier
    return found


async def key_names(lookup: Callable[[str], Awaitable[KeyRecord | None]], key_ids: Iterable[str]) -> dict[str, str]:
    """The names of the keys `key_ids`, for reports (a key deleted since has none)."""
    names = {}
    for key_id in set(key_ids):
        record = await lookup(key_id)
        names[key_id] = record.name if record is not None else ""
    return names


class CachedKey:
    """A key's record as this process read it from the store (None: no such key), with its `allow_ips` parsed."""

    __slots__ = ("read_at", "record", "networks", "rechecked_at", "rereading")

    def __init__(self, read_at: float, record: KeyRecord | None) -> None:
        self.read_at = read_at
        self.record = record
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
        self._cache: dict[str, CachedKey] = {}

    def _new(self, template: KeyRecord) -> MintedKey:
        """A new key built from `template` (its id, hash and timestamps replaced), not yet stored."""
        secret = secrets.token_urlsafe(32)
        record = replace(template, id=new_key_id(), secret_hash=hash_secret(secret), created_at=self.clock(), version=1)
        return MintedKey(record, format_key(record.id, secret))

    async def mint(self, template: KeyRecord) -> MintedKey:
        """Store a new key built from `template` (its id, hash and timestamps are replaced)."""
        minted = self._new(template)
        await self.store.create_key(minted.record)
        return minted

    async def mint_child(self, template: KeyRecord, max_children: int, root_home: str | None = None) -> MintedKey:
        """`mint` under `template.parent_id`, refused with a 403 `child_key_limit` when its family (the keys under
        its root key, at every depth) holds `max_children` live keys: the store counts and inserts in one atomic
        step (`Store.create_child`), in the root's home region `root_home`.

        Its ancestors are read again once it is stored (`_revoked_with_ancestor`): one revoked meanwhile by another
        process (this one held the parent live in its cache) walked its family before the key was in it, and the
        key stayed live under a revoked key, shown live and never purged, for good once the revoked key was."""
        minted = self._new(template)
        try:
            await self.store.create_child(minted.record, max_children, root_home)
        except ChildLimitReached as full:
            raise PermissionDeniedError(
                f"this key's family holds {max_children} live keys, the most one root key may have under it at every "
                f"depth (root '{full.root_id}'; gateway.key_minting.max_children)",
                code="child_key_limit",
            ) from None
        await self._revoked_with_ancestor(minted.record)
        return minted

    async def _revoked_with_ancestor(self, record: KeyRecord) -> None:
        """For a key just stored: if an ancestor is revoked or gone, the key revoked with it (as `revoke` would
        have, had its walk found it) and a 401 `key_revoked`, as the request meets when its cache is fresh. Read
        after the key's write, as a revocation walks the family after its own: one of the two sees the other."""
        chain = await asyncio.gather(*(self.store.get_key_latest(held) for held in record.ancestors))
        for ancestor_id, held in zip(record.ancestors, chain, strict=True):
            if held is not None and held.revoked_at is None:
                continue
            revoked_at = self.clock() if held is None or held.revoked_at is None else held.revoked_at
            revoked_by = ancestor_id if held is None else held.revoked_by or ancestor_id
            revoked = replace(record, revoked_at=revoked_at, revoked_by=revoked_by, version=record.version + 1)
            await self.store.update_key(revoked)
            self._wrote(revoked)
            whose = "this key's parent" if ancestor_id == record.parent_id else "an ancestor of this key"
            raise AuthenticationError(
                f"{whose} has been revoked" if held is not None else f"{whose} no longer exists", code="key_revoked"
            )

    async def rotate(self, record: KeyRecord, grace_seconds: float) -> MintedKey:
        """A new secret for the same key; the old one keeps working for `grace_seconds`. A key whose new secret
        could never work is refused: one revoked or expired, itself or through an ancestor, or with an ancestor
        that no longer exists (purged a day after it ended)."""
        self._check_rotatable(record, await self._chain(record))
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        rotated = replace(
            record,
            secret_hash=hash_secret(secret),
            prev_secret_hash=record.secret_hash if grace_seconds > 0 else None,
            prev_valid_until=now + grace_seconds if grace_seconds > 0 else None,
            version=record.version + 1,
        )
        await self.store.update_key(rotated)
        self._wrote(rotated)
        return MintedKey(rotated, format_key(record.id, secret))

    async def _chain(self, record: KeyRecord) -> list[tuple[str, KeyRecord | None]]:
        """`record` and its ancestors, nearest first, by id (None for one that no longer exists)."""
        chain: list[tuple[str, KeyRecord | None]] = [(record.id, record)]
        for ancestor_id in reversed(record.ancestors):
            chain.append((ancestor_id, await self.lookup(ancestor_id)))
        return chain

    def _check_rotatable(self, record: KeyRecord, chain: list[tuple[str, KeyRecord | None]]) -> None:
        """A 400 saying why `record`'s new secret could never work, if it could not (`chain`: `_chain`'s). An
        expired key, or a child of a purged parent, was rotated (200) to a secret every request refused."""
        now = self.clock()
        for key_id, held in chain:
            mine = held is record
            if held is None:
                why = f"has an ancestor that no longer exists ('{key_id}'); its new secret could never work"
            elif held.revoked_at is not None:
                by = held.revoked_by if mine else key_id
                why = f"has a revoked ancestor ('{by}')" if by is not None else "is revoked"
                why += "; a revoked key cannot be rotated"
            elif held.expires_at is not None and held.expires_at <= now:
                why = "has expired" if mine else f"has an expired ancestor ('{key_id}')"
                why += "; an expired key cannot be rotated (its new secret could never work)"
            else:
                continue
            raise InvalidRequestError(f"key '{record.id}' {why}")

    async def retag(self, record: KeyRecord, tags: dict[str, str]) -> KeyRecord:
        """Replace the key's default attribution tags (its lines from now on carry them)."""
        retagged = replace(record, tags=tags, version=record.version + 1)
        await self.store.update_key(retagged)
        self._wrote(retagged)
        return retagged

    async def revoke(self, record: KeyRecord) -> KeyRecord:
        """The key revoked from now on, and every live key under it with it (`revoked_by` naming it); one revoked
        already stays as it was (when it was revoked is kept), and the keys under it are revoked with it again
        (a revocation cut short, by a store error or a child minted meanwhile, is finished by the next)."""
        revoked = record
        if record.revoked_at is None:
            revoked = replace(record, revoked_at=self.clock(), version=record.version + 1)
            await self.store.update_key(revoked)
            self._wrote(revoked)
        await self._revoke_descendants(revoked)
        return revoked

    async def _revoke_descendants(self, revoked: KeyRecord) -> None:
        """Every live key under `revoked`, revoked at its time. Its requests were refused already (an ancestor's
        revocation ends a chain), but the admin API showed such keys live for good (`revoked_at` None) and the store
        never purged them: it forgets a key a day after its own end (`adapters.store.records.key_purge_after`)."""
        assert revoked.revoked_at is not None
        now, ended_at = self.clock(), revoked.revoked_at
        gate = asyncio.Semaphore(WALK_CONCURRENCY)

        async def end(key_id: str) -> None:
            async with gate:
                await self._revoke_with(key_id, ended_at, revoked.id, ended_by=now)

        family = await with_descendants(self.store, revoked.id)
        await asyncio.gather(*(end(key_id) for key_id in family if key_id != revoked.id))

    async def _revoke_with(
        self, key_id: str, revoked_at: float, revoked_by: str, *, ended_by: float | None = None, quiet: bool = False
    ) -> bool:
        """Revoke the key `key_id` at `revoked_at`, `revoked_by` naming the ancestor it is revoked with; whether it
        was. Read at its home (where a write goes) and written on condition of the version read, once more after a
        concurrent write (a retag, a rotation); a second conflict is raised, or with `quiet` left (to the next run).
        A key purged, revoked already (its own revocation stands) or, with `ended_by`, ended by then (purged at its
        own end) is left as it is."""
        for attempt in (1, 2):
            held = await self.store.get_key_latest(key_id)
            if held is None or held.revoked_at is not None:
                return False
            if ended_by is not None and held.expires_at is not None and held.expires_at <= ended_by:
                return False
            try:
                await self.store.update_key(
                    replace(held, revoked_at=revoked_at, revoked_by=revoked_by, version=held.version + 1)
                )
            except ConflictError:
                if attempt == 2 and not quiet:
                    raise
                continue
            self._cache.pop(key_id, None)
            return True
        return False

    async def finish_revocations(self) -> int:
        """Revoke every live key with an ancestor revoked or gone (its record purged), as `revoke` revokes the keys
        under a key; returns how many it revoked (`gateway store migrate`). An older gateway revoked a key alone:
        the keys under it were refused but shown live (`revoked_at` None) and never purged, and once the revoked
        key was purged, a day later, no revocation could reach them. Each is revoked at its revoked ancestor's time
        (the earliest, where several are), `revoked_by` naming it (or the key that ancestor was revoked with); under
        an ancestor gone, whose end is no longer known, from now on, `revoked_by` naming the ancestor. Safe beside
        serving gateways: each write is conditional on the version read, and a key changed meanwhile is read again
        once (then left to the next run); a second run revokes nothing."""
        now = self.clock()
        records = await self.store.list_keys()
        held: dict[str, KeyRecord | None] = {record.id: record for record in records}

        async def ancestor(key_id: str) -> KeyRecord | None:
            if key_id not in held:  # (the listing, an index, may not have a key minted a moment ago: read it)
                held[key_id] = await self.store.get_key_latest(key_id)
            return held[key_id]

        ends: dict[str, tuple[float, str]] = {}  # key id -> (revoked at, revoked by)
        for record in records:
            if record.revoked_at is not None or (record.expires_at is not None and record.expires_at <= now):
                continue  # ended already, and purged at its own end
            known: list[tuple[float, str]] = []
            gone: str | None = None
            for ancestor_id in record.ancestors:
                found = await ancestor(ancestor_id)
                if found is None:
                    gone = gone or ancestor_id
                elif found.revoked_at is not None:
                    known.append((found.revoked_at, found.revoked_by or found.id))
            if known:
                ends[record.id] = min(known)
            elif gone is not None:
                ends[record.id] = (now, gone)
        gate = asyncio.Semaphore(WALK_CONCURRENCY)

        async def end(key_id: str, revoked_at: float, revoked_by: str) -> int:
            async with gate:
                return int(await self._revoke_with(key_id, revoked_at, revoked_by, quiet=True))

        return sum(await asyncio.gather(*(end(key_id, *ends[key_id]) for key_id in sorted(ends))))

    def _wrote(self, record: KeyRecord) -> None:
        """Cache the record this process just wrote: a key homed in another region is written there, and this
        region's replica has the write only with replication (a rotated secret was 401 here for 1.09 s)."""
        if self.cache_seconds > 0:
            self._cache[record.id] = CachedKey(self.clock(), record)
        else:
            self._cache.pop(record.id, None)

    def forget(self) -> None:
        """Drop every cached record (after a SnapStart restore the cache may be arbitrarily old)."""
        self._cache.clear()

    async def lookup(self, key_id: str) -> KeyRecord | None:
        """The record, from the warm cache when fresh."""
        return (await self._cached(key_id, self.clock())).record

    async def _cached(self, key_id: str, now: float) -> CachedKey:
        """The key from the warm cache when fresh, else read from the store."""
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.read_at < self.cache_seconds:
            return cached
        return await self._read(key_id, now)

    async def _read(self, key_id: str, now: float, latest: bool = False) -> CachedKey:
        """The key read from the store (`latest`: as its home region has it, `Store.get_key_latest`), and cached."""
        cached = CachedKey(now, await (self.store.get_key_latest if latest else self.store.get_key)(key_id))
        if self.cache_seconds > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = cached
        return cached

    async def _reread(self, key_id: str, cached: CachedKey, now: float) -> CachedKey:
        """For a secret the cached record `cached` refused: the record read again (a rotation by another process
        leaves a secret the cached copy cannot know: it was refused for `key_cache_seconds`), unless the key was
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

    async def authenticate_lineage(self, token: str | None, client_ip: str | None) -> list[KeyRecord]:
        """The live key behind `token` and its ancestors, nearest first; every one of them must be live and
        allow `client_ip`, or the matching 401/403."""
        if not token:
            raise AuthenticationError("missing API key: send Authorization: Bearer <key>")
        parts = split_key(token)
        if parts is None:
            raise AuthenticationError("invalid API key")
        key_id, secret = parts
        now = self.clock()
        cached, fresh = self._cache.get(key_id), False
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
        return lineage

    async def lineage(self, record: KeyRecord) -> list[KeyRecord]:
        """`record` and the ancestors that still exist, nearest first (from the warm cache when fresh)."""
        return [held for _, held in await self._chain(record) if held is not None]

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
    def check_model(lineage: list[KeyRecord], model: str) -> None:
        """403 unless the key and every ancestor (`lineage`, nearest first) may use `model`."""
        if not allows_model(lineage, model):
            raise model_not_allowed(model)

    @staticmethod
    def require_admin(record: KeyRecord) -> None:
        if not record.admin:
            raise PermissionDeniedError("this route needs an admin key", code="admin_only")


def secret_matches(record: KeyRecord | None, digest: str, now: float) -> TypeIs[KeyRecord]:
    """Whether `digest` is the hash of the key's secret, or of its previous one within the rotation's grace."""
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
