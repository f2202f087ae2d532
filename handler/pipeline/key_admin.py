"""Gateway keys' administration: minting, rotation, retagging and revocation (a key's family with it), the
migration's repair of revocations an older gateway left unfinished, and the containment checks that hold a new key
within its parent's or its admin's bounds.

No proxied request needs any of it: it is imported by the key routes, the dashboard and the CLI, on their first
use. In handler/pipeline/keys.py, beside what each request runs (`KeyService.authenticate_lineage`), it would cost
every Lambda cold start 0.5 million instructions (callgrind). A `KeyAdmin` writes through the `KeyService` whose
cache serves the requests, so that the cache holds what this process wrote (`KeyService.wrote`).
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Final, TypeVar

from handler.errors import AuthenticationError, InvalidRequestError, KeyChangedError, PermissionDeniedError
from handler.pipeline.keys import ID_LENGTH, KeyService, format_key, hash_secret, network, without_own_secret
from handler.ports import ChildLimitReached, ConflictError, KeyRecord, Store, family_root
from handler.records import Value
from handler.redaction import REDACTED, unkeyed

T = TypeVar("T")
ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
CHANGE_TRIES = 3  # an admin write to a key another write changed meanwhile is read again and made again


def new_key_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def models_within(child: list[str], parent: list[str]) -> bool:
    """Every model a child pattern matches is matched by some parent pattern (glob containment).

    Conservative: a pattern that only a union of several parent patterns would cover is refused."""
    return GlobCheck().models_within(child, parent)


# (kind: "*", "?", "c" a character, "[" a class; its characters as ranges of code points; negated)
_Ranges = tuple[tuple[int, int], ...]
_Token = tuple[str, _Ranges, bool]
_NONE: _Ranges = ()
# The most work one request's containment checks may take (`GlobCheck`), in steps: a parent's token matched against
# the child's positions (a few operations on one integer), or two classes compared (4 steps, and one a range of
# theirs). Measured at 0.2 to 0.6 us a step on a busy machine, so at most 20 to 60 ms of the event loop (a 22 KB mint
# held it 3 minutes); past it, a 400 naming the field. Only wildcards cost steps: a pattern without one is a model's
# name, found among the parent's names by a set lookup, and a parent's pattern with one is tried only on a child's
# that begins with its literal prefix and ends with its literal suffix, walked from past that prefix. A child given
# its parent's own 80 Bedrock profiles (35 characters shared) takes no step, and within 80 `...-v1:*` patterns, a
# step each; many long wildcard patterns against many long ones reach the bound.
CONTAINMENT_STEPS = 100_000


def _ranges(spans: list[tuple[int, int]]) -> _Ranges:
    """`spans` (inclusive code point ranges, an empty one dropped: `[z-a]` matches nothing) sorted and merged."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(span for span in spans if span[0] <= span[1]):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _glob_tokens(pattern: str) -> list[_Token]:
    """`fnmatch`'s syntax as tokens: `*`, `?`, `[...]`/`[!...]` classes (as ranges of code points, however wide:
    expanded to their characters, a class of all of Unicode would be a million of them), literal characters. A class of
    one character is that character (`[a]` is `a`)."""
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char in "*?":
            if not (char == "*" and tokens and tokens[-1][0] == "*"):
                tokens.append((char, _NONE, False))
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
                spans: list[tuple[int, int]] = []
                j = 0
                while j < len(body):
                    if j + 2 < len(body) and body[j + 1] == "-":
                        spans.append((ord(body[j]), ord(body[j + 2])))
                        j += 3
                    else:
                        spans.append((ord(body[j]), ord(body[j])))
                        j += 1
                ranges = _ranges(spans)
                one = len(ranges) == 1 and ranges[0][0] == ranges[0][1] and not negated
                tokens.append(("c" if one else "[", ranges, negated))
                i = end + 1
                continue
        tokens.append(("c", ((ord(char), ord(char)),), False))
        i += 1
    return tokens


def _subset(inner: _Ranges, outer: _Ranges) -> bool:
    """Every code point of `inner` is in `outer` (both merged: `_ranges`)."""
    k = 0
    for low, high in inner:
        while k < len(outer) and outer[k][1] < low:
            k += 1
        if k == len(outer) or outer[k][0] > low or outer[k][1] < high:
            return False
    return True


def _disjoint(one: _Ranges, other: _Ranges) -> bool:
    """No code point is in both (merged ranges)."""
    i = k = 0
    while i < len(one) and k < len(other):
        if one[i][1] < other[k][0]:
            i += 1
        elif other[k][1] < one[i][0]:
            k += 1
        else:
            return False
    return True


class _Compiled:
    """A pattern as the containment check reads it, compiled once (`_compiled`): its tokens, and as a child, where
    each distinct token stands (a bit per position) and where a single character does (any token but `*`); the
    characters it begins and ends with before and after its first and last wildcard (`prefix`, `suffix`), and
    `name`: the one string it matches when it has no wildcard (a class of one character is that character), or None.
    """

    __slots__ = ("tokens", "at", "single", "length", "prefix", "suffix", "name")

    def __init__(self, pattern: str) -> None:
        self.tokens = tuple(_glob_tokens(pattern))
        self.length = len(self.tokens)
        self.at: dict[_Token, int] = {}
        for i, token in enumerate(self.tokens):
            self.at[token] = self.at.get(token, 0) | 1 << i
        self.single = ((1 << self.length) - 1) & ~self.at.get(("*", _NONE, False), 0)
        lead, trail = 0, self.length
        while lead < self.length and self.tokens[lead][0] == "c":
            lead += 1
        while trail > lead and self.tokens[trail - 1][0] == "c":
            trail -= 1
        self.prefix = "".join(chr(token[1][0][0]) for token in self.tokens[:lead])
        self.name = self.prefix if lead == self.length else None
        self.suffix = self.prefix if self.name is not None else "".join(chr(t[1][0][0]) for t in self.tokens[trail:])


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> _Compiled:
    return _Compiled(pattern)


def _covers(p: _Token, c: _Token) -> bool:
    """Parent token `p` (not `*`) matches every single character child token `c` can match."""
    if p[0] == "?":
        return c[0] != "*"
    if c[0] in "*?":
        return False
    if c[2]:  # a negated child class matches almost anything: only a negated parent with fewer exclusions
        return p[2] and _subset(p[1], c[1])
    return _disjoint(c[1], p[1]) if p[2] else _subset(c[1], p[1])


class StepsSpent(Exception):
    """A key's stored patterns (`GlobCheck` without a `param`) took more than `CONTAINMENT_STEPS` to compare: neither
    within nor not, which the caller says as such (`beyond_authority`), never as a plain "not within"."""


class _Holder:
    """The patterns others must be within (`GlobCheck.models_within`), indexed once: whether one is `*`, the names of
    those without a wildcard (a set), and the others by their literal prefix, so that a child's pattern is tried only
    against the patterns whose prefix it begins with, the longest prefixes first."""

    __slots__ = ("everything", "names", "by_prefix", "lengths")

    def __init__(self, patterns: list[str]) -> None:
        self.everything = "*" in patterns
        self.names: set[str] = set()
        self.by_prefix: dict[str, list[str]] = {}
        for pattern in patterns:
            compiled = _compiled(pattern)
            if compiled.name is not None:
                self.names.add(compiled.name)
            else:
                self.by_prefix.setdefault(compiled.prefix, []).append(pattern)
        self.lengths = sorted({len(prefix) for prefix in self.by_prefix}, reverse=True)

    def candidates(self, child: _Compiled) -> Iterator[str]:
        """The patterns with a wildcard whose literal prefix `child` begins with (no other can hold it)."""
        for length in self.lengths:
            if length <= len(child.prefix):
                yield from self.by_prefix.get(child.prefix[:length], ())


class GlobCheck:
    """Containment checks of model patterns for one request, their work bounded by `steps` (`CONTAINMENT_STEPS`).

    Each pair is matched as a glob matches a string, the child's tokens for the characters: the set of child
    positions the parent's tokens so far can end at is one integer (a bit a position), a parent token moves it on
    in a few operations, and a `*` of the parent takes every position from the first on. So a pair costs one pass
    over the parent's tokens (at most 200), ended at once when no position is left, where a walk of the pairs of
    positions goes through up to 201 x 201 states (18 ms for two 200-character patterns), and a request may ask for
    10,000 pairs (some three minutes of the event loop, every key's requests and /health waiting). Each pattern is
    compiled once (`_compiled`) and each pair checked once a request (`memo`).

    Only that walk costs steps, and only past the parent's literal prefix: a pattern without a wildcard is settled
    by comparing names (a set lookup among a parent's: `_Holder`), and a parent's pattern whose literal prefix or
    suffix the child's does not have holds it not. So model ids sharing a long prefix cost nothing for it: a child
    given its parent's own 80 Bedrock profiles (`us.anthropic.claude-sonnet-4-5-2025...`) takes no step, where
    walking each pair over that prefix takes 120,440, past the bound.

    `param`: the field a 400 names once `steps` are spent (the patterns a key's holder chose); without one (a key's
    stored patterns, on a rotation or a revocation) `StepsSpent` is raised, for the caller to say so: a plain "not
    within" would tell an admin key that a key's models are not within its own where they may well be."""

    __slots__ = ("param", "steps", "memo")

    def __init__(self, param: str | None = None, steps: int = CONTAINMENT_STEPS) -> None:
        self.param = param
        self.steps = steps
        self.memo: dict[tuple[str, str], bool] = {}

    def models_within(self, child: list[str], parent: list[str]) -> bool:
        """Every child pattern is within one of `parent` (`models_within`)."""
        holder = _Holder(parent)
        return all(self.held(pattern, holder) for pattern in child)

    def held(self, child: str, holder: _Holder) -> bool:
        """Whether `child` is within one of `holder`'s patterns: `*`, its very name, or one whose prefix it has."""
        if holder.everything:
            return True
        compiled = _compiled(child)
        if compiled.name is not None and compiled.name in holder.names:
            return True
        return any(self.within(child, parent) for parent in holder.candidates(compiled))

    def within(self, child: str, parent: str) -> bool:
        """Whether every string `child` matches is matched by `parent` (`glob_within`), from `memo` if asked before."""
        if parent == "*" or child == parent:
            return True
        found = self.memo.get((child, parent))
        if found is None:
            found = self.memo[(child, parent)] = self._within(_compiled(child), _compiled(parent))
        return found

    def _spend(self, steps: int) -> None:
        """Take `steps` from what is left; once it is spent, the 400 naming `param` (or `StepsSpent`)."""
        self.steps -= steps
        if self.steps >= 0:
            return
        if self.param is None:
            raise StepsSpent
        raise InvalidRequestError(
            f"{self.param}: these model patterns take too long to check against the ones they must be within (at most "
            f"{CONTAINMENT_STEPS:,} steps; each wildcard pattern is compared with each of the other key's): use fewer "
            "or shorter patterns",
            param=self.param,
        )

    def _within(self, child: _Compiled, parent: _Compiled) -> bool:
        if parent.name is not None:  # (a name holds only itself: a child with a wildcard matches more, or nothing)
            return child.name == parent.name
        # (The parent's literal prefix and suffix are tokens of one character, each covered by that character of the
        # child's alone: a child that does not begin and end with them is not within; one that does, begins past them.)
        if not (child.prefix.startswith(parent.prefix) and child.suffix.endswith(parent.suffix)):
            return False
        start = len(parent.prefix)
        last = 1 << child.length  # (the bit of the child's end)
        reached, steps = 1 << start, 0
        taken: dict[_Token, int] = {}  # (a parent token's mask, computed once a pair)
        for token in parent.tokens[start:]:
            steps += 1
            if token[0] == "*":
                reached = ~((reached & -reached) - 1) & (2 * last - 1)  # every position from the first on
                continue
            mask = taken.get(token)
            if mask is None:
                mask = taken[token] = self._covered(token, child)
            reached = (reached & mask) << 1
            if not reached:
                break
        self._spend(steps)
        return bool(reached & last)

    def _covered(self, token: _Token, child: _Compiled) -> int:
        """The child's positions whose token `token` covers (`_covers`)."""
        if token[0] == "?":
            return child.single
        if token[0] == "c":  # (a class of one character is one too: only that character covers it)
            return child.at.get(token, 0)
        mask = 0
        for held, positions in child.at.items():
            self._spend(4 + len(token[1]) + len(held[1]))
            if _covers(token, held):
                mask |= positions
        return mask


def glob_within(child: str, parent: str) -> bool:
    """Whether every string `child` matches is matched by `parent` (both `fnmatch` globs).

    Sound, not complete: it never says yes wrongly. A `*` or `?` of the child must meet a `*`/`?` of the
    parent; a class of the child must be a subset of what the parent's token at that place admits."""
    return GlobCheck().within(child, parent)


def unkeyed_name(name: str, param: str, what: str, lineage: Sequence[KeyRecord] = ()) -> str:
    """`name`, one a key's creator chose (`what`: the key's name, a model pattern of its scopes), unless it holds a key
    or a known secret (as `unkeyed` finds them), or the secret alone of the creating key or an ancestor (`lineage`:
    `without_own_secret`): then a 400 naming `param`, not the name. Each is shown as stored in every admin's key
    list, beside the ids of the key's parent and ancestors, and a key's name in the usage reports grouped by key (the
    dashboard's tables, their CSV) and in its parent's `/v1/usage`: a holder that named a child `agent gwk_...`, or
    `agent <its secret>`, put its own key in all of them, as a tag's name would have
    (`handler.pipeline.attribution.tag_name`)."""
    if unkeyed(name) != name or without_own_secret(name, lineage) != name:
        raise InvalidRequestError(
            f"{what} may not hold a key or a secret (every admin's key list and usage report shows it)", param=param
        )
    return name


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


async def family_home(store: Store, record: KeyRecord) -> str | None:
    """The home region of `record`'s family root: where the family's links and its keys' records are written
    (`Store.create_child`), so where a walk finds a key minted a moment ago in any region."""
    root_id = family_root(record)
    root = record if root_id is None else await store.get_key_latest(root_id)
    return (root or record).home_region


async def family_of(store: Store, key_id: str, written_in: str | None = None) -> tuple[KeyRecord | None, list[str]]:
    """The key's record (read in `written_in` where this region's replica does not have it yet: `get_key_latest`)
    and its family for a report (`with_descendants`), walked in its root's home (`family_home`): walked in this
    region's replica, a parent's report left out a child minted a moment ago in another region."""
    record = await store.get_key_latest(key_id, written_in)
    root_home = None if record is None else await family_home(store, record)
    return record, await with_descendants(store, key_id, root_home)


# Parents whose children a family walk asks the store for at once (DynamoDB: one query or two each).
WALK_CONCURRENCY = 8


async def with_descendants(store: Store, key_id: str, root_home: str | None = None) -> list[str]:
    """`key_id` and every key minted under it, at any depth (breadth first), purged ones included: the store's
    links (`Store.child_ids`) outlive the children's records, as their ledger lines do. Walking the live keys
    instead dropped a child's spend from its parent's report a day after the child expired or was revoked. With
    `root_home`, the links are read where the family is written: the home region of its root.

    Every descendant, however many: the walk stopped once it had found 10,000 keys, and a parent's report left
    out the spend of the rest without a word (1,000 children with 9 children each hid a great-grandchild's). A
    level's parents are asked `WALK_CONCURRENCY` at a time, unless the store finds the family in one call
    (`Store.family_ids`)."""
    family = await store.family_ids(key_id, root_home)
    if family is not None:
        return family
    found, frontier = [key_id], [key_id]
    seen = {key_id}
    gate = asyncio.Semaphore(WALK_CONCURRENCY)

    async def children_of(parent: str) -> list[str]:
        async with gate:
            return await store.child_ids(parent, root_home)

    while frontier:
        parents, frontier = frontier, []
        for children in await asyncio.gather(*(children_of(parent) for parent in parents)):
            fresh = [child for child in children if child not in seen]
            seen.update(fresh)
            frontier += fresh
        found += frontier
    return found


# Keys whose names a report reads at once (DynamoDB: a `GetItem` each, the key cache's misses).
NAME_CONCURRENCY = 16


async def key_names(lookup: Callable[[str], Awaitable[KeyRecord | None]], key_ids: Iterable[str]) -> dict[str, str]:
    """The names of the keys `key_ids`, for reports (a key deleted since has none), each with any key in it redacted:
    a key named before such names were refused (`unkeyed_name`) would show it in every report grouped by key.

    Read `NAME_CONCURRENCY` at a time: read one after another (the key cache keeps a record 5 s, so nearly every
    dashboard load reads them all again), 100 keys at 20 ms a read added 2.07 s to a report, in its turn."""
    gate = asyncio.Semaphore(NAME_CONCURRENCY)

    async def name_of(key_id: str) -> str:
        async with gate:
            record = await lookup(key_id)
        return unkeyed(record.name) if record is not None else ""

    ids = list(set(key_ids))
    return dict(zip(ids, await asyncio.gather(*(name_of(key_id) for key_id in ids)), strict=True))


class KeyAdmin:
    """Key lifecycle over the `KeyService` `keys`: its store and clock, and its cache, which keeps what is written."""

    __slots__ = ("keys", "store", "clock")

    def __init__(self, keys: KeyService) -> None:
        self.keys = keys
        self.store = keys.store
        self.clock = keys.clock

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

    async def mint_under(self, template: KeyRecord) -> MintedKey:
        """`mint` of a key under `template.parent_id` that no family limit holds (the dashboard's session), its
        ancestors read again once it is stored, as `mint_child`'s are (`_revoked_with_ancestor`): one revoked
        meanwhile may walk its family before the key is in it, and the key would be answered, and kept live for good."""
        minted = await self.mint(template)
        await self._revoked_with_ancestor(minted.record, await family_home(self.store, minted.record))
        return minted

    async def mint_child(self, template: KeyRecord, max_children: int, root_home: str | None = None) -> MintedKey:
        """`mint` under `template.parent_id`, refused with a 403 `child_key_limit` when its family (the keys under
        its root key, at every depth) holds `max_children` live keys: the store counts and inserts in one atomic
        step (`Store.create_child`), in the root's home region `root_home`.

        Its ancestors are read again once it is stored (`_revoked_with_ancestor`): one revoked meanwhile by another
        process (this one holding the parent live in its cache) may walk its family before the key is in it, and
        the key would stay live under a revoked key, shown live and never purged, for good once the revoked key is."""
        minted = self._new(template)
        try:
            await self.store.create_child(minted.record, max_children, root_home)
        except ChildLimitReached as full:
            raise PermissionDeniedError(
                f"this key's family holds {max_children} live keys, the most one root key may have under it at every "
                f"depth (root '{full.root_id}'; gateway.key_minting.max_children)",
                code="child_key_limit",
            ) from None
        await self._revoked_with_ancestor(minted.record, root_home)
        return minted

    async def _revoked_with_ancestor(self, record: KeyRecord, root_home: str | None) -> None:
        """For a key just stored: if an ancestor is revoked or gone, the key revoked with it (as `revoke` would
        have, had its walk found it, its links given its end in `root_home`) and a 401 `key_revoked`, as the
        request meets when its cache is fresh. Read after the key's write, as a revocation walks the family after
        its own: one of the two sees the other."""
        chain = await asyncio.gather(*(self.store.get_key_latest(held) for held in record.ancestors))
        for ancestor_id, held in zip(record.ancestors, chain, strict=True):
            if held is not None and held.revoked_at is None:
                continue
            revoked_at = self.clock() if held is None or held.revoked_at is None else held.revoked_at
            revoked_by = ancestor_id if held is None else held.revoked_by or ancestor_id
            revoked = replace(record, revoked_at=revoked_at, revoked_by=revoked_by, version=record.version + 1)
            await self.store.update_key(revoked)
            self.keys.wrote(revoked)
            await self.store.end_links(revoked, root_home)
            whose = "this key's parent" if ancestor_id == record.parent_id else "an ancestor of this key"
            raise AuthenticationError(
                f"{whose} has been revoked" if held is not None else f"{whose} no longer exists", code="key_revoked"
            )

    async def change(
        self, read: Callable[[], Awaitable[KeyRecord]], change: Callable[[KeyRecord], Awaitable[T]], doing: str
    ) -> T:
        """`change` (a rotation, a retag, a revocation) applied to the key as `read` gives it, as its home region has
        it (`Store.get_key_latest`: a write made a moment ago to a key homed elsewhere is there, not yet here); one
        another write changed meanwhile is read again and changed again, then a 409 `key_changed`. The key routes'
        writes and `gateway keys revoke|rotate|tag` alike, so that a command run just after a write succeeds as the
        route does (this region's replica may not have that write yet)."""
        for _ in range(CHANGE_TRIES):
            record = await read()
            try:
                return await change(record)
            except ConflictError:
                continue
        raise KeyChangedError(f"the key kept changing while {doing}; retry")

    async def rotate(self, record: KeyRecord, grace_seconds: float) -> MintedKey:
        """A new secret for the same key; the old one keeps working for `grace_seconds`. A key whose new secret
        could never work is refused: one revoked or expired, itself or through an ancestor, or with an ancestor
        that no longer exists (purged a day after it ended)."""
        self._check_rotatable(record, await self.keys.chain(record))
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
        self.keys.wrote(rotated)
        return MintedKey(rotated, format_key(record.id, secret))

    def _check_rotatable(self, record: KeyRecord, chain: list[tuple[str, KeyRecord | None]]) -> None:
        """A 400 saying why `record`'s new secret could never work, if it could not (`chain`: `_chain`'s). Else an
        expired key, or a child of a purged parent, would be rotated (200) to a secret every request refuses."""
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
        self.keys.wrote(retagged)
        return retagged

    async def revoke(self, record: KeyRecord) -> KeyRecord:
        """The key revoked from now on, and every live key under it with it (`revoked_by` naming it); one revoked
        already stays as it was (when it was revoked is kept), and the keys under it are revoked with it again
        (a revocation cut short, by a store error or a child minted meanwhile, is finished by the next). Each
        key's family links are given the end its record now has (`Store.end_links`), once its revocation is
        written: they outlive its record by its lines' 400 days, not for good."""
        revoked = record
        if record.revoked_at is None:
            revoked = replace(record, revoked_at=self.clock(), version=record.version + 1)
            await self.store.update_key(revoked)
            self.keys.wrote(revoked)
        root_home = await family_home(self.store, revoked)
        await self.store.end_links(revoked, root_home)
        await self._revoke_descendants(revoked, root_home)
        return revoked

    async def _revoke_descendants(self, revoked: KeyRecord, root_home: str | None) -> None:
        """Every live key under `revoked`, revoked at its time. Its requests were refused already (an ancestor's
        revocation ends a chain), but the admin API showed such keys live for good (`revoked_at` None) and the store
        never purged them: it forgets a key a day after its own end (`adapters.store.records.key_purge_after`).

        The family is walked, and its keys read, in its root's home region, where it is written (`mint_child`):
        walked in this region's replica, a revocation made in another region missed a child minted there a moment
        before, which stayed live under its revoked root."""
        assert revoked.revoked_at is not None
        now, ended_at = self.clock(), revoked.revoked_at
        gate = asyncio.Semaphore(WALK_CONCURRENCY)

        async def end(key_id: str) -> None:
            async with gate:
                await self._revoke_with(key_id, ended_at, revoked.id, ended_by=now, written_in=root_home)

        family = await with_descendants(self.store, revoked.id, root_home)
        await asyncio.gather(*(end(key_id) for key_id in family if key_id != revoked.id))

    async def _revoke_with(
        self,
        key_id: str,
        revoked_at: float,
        revoked_by: str,
        *,
        ended_by: float | None = None,
        quiet: bool = False,
        written_in: str | None = None,
    ) -> bool:
        """Revoke the key `key_id` at `revoked_at`, `revoked_by` naming the ancestor it is revoked with; whether it
        was. Read at its home (where a write goes; one this region's replica lacks, in `written_in`: its family's
        root's home, where its links are given its end, `Store.end_links`) and written on condition of the version
        read, once more after a concurrent write (a retag, a rotation); a second conflict is raised, or with
        `quiet` left (to the next run). A key purged, revoked already (its own revocation stands: its links are
        given its end again, in case that revocation was cut short before them) or, with `ended_by`, ended by then
        (purged at its own end, its links given that end at its mint) is left as it is."""
        for attempt in (1, 2):
            held = await self.store.get_key_latest(key_id, written_in)
            if held is None:
                return False
            if held.revoked_at is not None:
                await self.store.end_links(held, written_in)
                return False
            if ended_by is not None and held.expires_at is not None and held.expires_at <= ended_by:
                return False
            revoked = replace(held, revoked_at=revoked_at, revoked_by=revoked_by, version=held.version + 1)
            try:
                await self.store.update_key(revoked)
            except ConflictError:
                if attempt == 2 and not quiet:
                    raise
                continue
            self.keys.wrote(revoked)
            await self.store.end_links(revoked, written_in)
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
        homes: dict[str, str | None] = {}  # key id -> its family's root's home, where its links are (`_revoke_with`)
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
            else:
                continue
            root_id = family_root(record)
            root = None if root_id is None else await ancestor(root_id)
            homes[record.id] = (root or record).home_region
        gate = asyncio.Semaphore(WALK_CONCURRENCY)

        async def end(key_id: str, revoked_at: float, revoked_by: str) -> int:
            async with gate:
                revoked = await self._revoke_with(key_id, revoked_at, revoked_by, quiet=True, written_in=homes[key_id])
                return int(revoked)

        return sum(await asyncio.gather(*(end(key_id, *ends[key_id]) for key_id in sorted(ends))))
