"""Key format, scopes and networks."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace

import pytest

from handler.api.key_routes import beyond_authority
from handler.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from handler.pipeline.key_admin import (
    CONTAINMENT_STEPS,
    GlobCheck,
    KeyAdmin,
    MintedKey,
    StepsSpent,
    models_within,
    validate_networks,
)
from handler.pipeline.keys import (
    RECHECK_SECONDS,
    KeyService,
    address_allowed,
    format_key,
    hash_secret,
    kept_unkeyed,
    model_allowed,
    parse_networks,
    split_key,
    without_own_secret,
)
from handler.ports import KeyRecord
from tests.unit.adapters.store.memory_store import MemoryStore


def test_key_round_trip_and_malformed_keys() -> None:
    key = format_key("abcdefghijkm", "s" * 43)
    assert split_key(key) == ("abcdefghijkm", "s" * 43)
    assert split_key("sk-openai-abc") is None
    assert split_key("gwk_short_" + "s" * 43) is None
    assert split_key("gwk_abcdefghijkm_short") is None
    assert hash_secret("a") != hash_secret("b") and len(hash_secret("a")) == 64


def test_model_globs_and_subsets() -> None:
    assert model_allowed(["gpt-*"], "gpt-4o") and not model_allowed(["gpt-*"], "claude-3")
    assert models_within(["gpt-4o", "gpt-4o-*"], ["gpt-*"])
    assert not models_within(["*"], ["gpt-*"])


def ip_allowed(networks: list[str], address: str | None) -> bool:
    """As a key's `allow_ips` are checked: parsed once (when its record is read), any address when there are none."""
    return not networks or address_allowed(parse_networks(networks), address)


def test_ip_ranges_v4_v6_and_mapped() -> None:
    nets = ["10.0.0.0/8", "2001:db8::/32"]
    assert ip_allowed(nets, "10.1.2.3") and ip_allowed(nets, "2001:db8::1")
    assert ip_allowed(nets, "::ffff:10.0.0.1")
    assert not ip_allowed(nets, "11.0.0.1") and not ip_allowed(nets, None) and not ip_allowed(nets, "junk")
    assert ip_allowed([], None)


def test_an_ipv4_mapped_range_is_held_as_the_ipv4_range_it_maps() -> None:
    """A client's mapped address is matched as its IPv4 address, so a mapped range must be one too: kept as it
    was, `::ffff:10.0.0.0/104` matched no address at all."""
    assert validate_networks(["::ffff:10.0.0.0/104", "::ffff:192.0.2.1"]) == ["10.0.0.0/8", "192.0.2.1/32"]
    assert ip_allowed(["::ffff:10.0.0.0/104"], "10.1.2.3") and ip_allowed(["::ffff:10.0.0.0/104"], "::ffff:10.1.2.3")
    assert not ip_allowed(["::ffff:10.0.0.0/104"], "11.0.0.1")
    assert ip_allowed(["::/0"], "2001:db8::1")  # not a mapped range: unchanged


def test_glob_containment_is_sound() -> None:
    """A child pattern is within a parent's only if every model it matches, the parent matches too."""
    from handler.pipeline.key_admin import glob_within

    within = [
        ("gpt-4o", "gpt-*"),
        ("gpt-4?*", "gpt-4*"),
        ("gpt-4?", "gpt-4*"),
        ("gpt-4[ab]", "gpt-4?"),
        ("gpt-4[ab]", "gpt-4[a-c]"),
        ("gpt-*-mini", "gpt-*"),
        ("gpt-4[!x]", "gpt-4?"),
        ("*", "*"),
    ]
    outside = [
        ("*", "gpt-*"),
        ("gpt-4*", "gpt-4?*"),  # "gpt-4" itself: `?` of the parent needs a character the child may not have
        ("gpt-4?", "gpt-4o"),  # `?` is not the letter o (fnmatch would say yes, reading the child as a name)
        ("gpt-4?", "gpt-4[ab]"),
        ("gpt-4[a-z]", "gpt-4[ab]"),
        ("gpt-4?", "gpt-4[!x]"),
        ("gpt-*", "gpt-*-mini"),
        # Ranges too wide to list: the child's is not within the parent's narrower one, nor the negated parent's
        ("[ -\uffff]*", "[ -\u2000]*"),
        ("[\u3000]", "[!a-\uffff]"),
    ]
    assert all(glob_within(child, parent) for child, parent in within)
    assert not any(glob_within(child, parent) for child, parent in outside)
    assert not models_within(["gpt-4*"], ["gpt-4?*"])
    assert glob_within("[a-\uffff]x", "?x") and glob_within("[!a-\uffff]", "*")  # one character, whatever it is
    # Classes are compared as ranges, however wide (a range past 4,096 characters was known only as "one character")
    assert glob_within("[a-\uffff]x", "[\x00-\U0010ffff]x") and glob_within("[!\x00-\uffff]", "[!a-z]")
    assert not glob_within("[a-\U0010ffff]", "[b-\U0010ffff]") and not glob_within("[z-a]b", "b")


# A parent whose every pattern but its last (`*b`) a child's `aa...ab` fails only at its end: each pair walked the
# whole of both patterns (review: 1.84 s of the event loop for each child pattern). Each ends as the children do, so
# that its literal suffix does not set it aside; a parent's `*b` beside them holds the children without a step.
STARRED = ["*a" * 98 + "*" + chr(0x4E00 + k) + "*b" for k in range(99)]
A_RUNS = [f"{'a' * 190}{k:03}b" for k in range(11)]  # (11 children of that shape: past `CONTAINMENT_STEPS` against it)
# 80 explicit model ids of one family, as an operator lists the Bedrock profiles a team may use (35 characters shared),
# and the same ids with any version.
BEDROCK = [f"us.anthropic.claude-sonnet-4-5-2025{n:04d}-v1:0" for n in range(80)]
VERSIONED = [model[:-1] + "*" for model in BEDROCK]


def test_a_requests_containment_checks_stop_at_their_bound() -> None:
    """Past `CONTAINMENT_STEPS` a holder's patterns are a 400 naming the field (each pair walked both patterns
    whole: 1.84 s of the event loop for each child pattern below); a key's stored patterns raise `StepsSpent`. The
    parent's patterns each end as the children do (`*b`), so that their literal suffix does not set them aside."""
    parent, child = [*STARRED, "*b"], A_RUNS
    assert GlobCheck("models").models_within(child[:4], parent)
    with pytest.raises(InvalidRequestError) as refused:
        GlobCheck("models").models_within(child, parent)
    assert refused.value.param == "models" and "steps" in refused.value.message
    assert GlobCheck(steps=10**9).models_within(child, parent)  # (within, but only past the bound)
    with pytest.raises(StepsSpent):  # (stored patterns: neither within nor not, never a quiet "not within")
        GlobCheck().models_within(child, parent)
    assert GlobCheck().models_within(child, [*parent, "*"])  # (`*` holds every pattern: no work)


def test_a_list_of_model_ids_is_within_its_parents_in_a_step_an_id_at_most() -> None:
    """Each pair was walked over the ids' shared prefix, names without a wildcard too: 80 ids within themselves took
    120,440 steps and within their 80 `...-v1:*` patterns 123,960, both refused as too long to check (found by
    review). A name is looked up among the parent's names, and a pattern tried only on the ids with its prefix."""
    for parent, steps in ((BEDROCK, 0), (VERSIONED, len(BEDROCK)), ([*reversed(VERSIONED), "*-v2:*"], len(BEDROCK))):
        check = GlobCheck("models")
        assert check.models_within(BEDROCK, parent)
        assert CONTAINMENT_STEPS - check.steps <= steps
    assert not GlobCheck("models").models_within([*BEDROCK, "us.anthropic.claude-sonnet-4-5-20250080-v1:0"], BEDROCK)
    assert not GlobCheck("models").models_within(["us.anthropic.claude-sonnet-4-5-2025*"], VERSIONED)
    assert not GlobCheck("models").models_within(["[u]s.anthropic.*"], BEDROCK)  # (a name holds only itself)
    assert GlobCheck("models").models_within(["[u]s.anthropic.claude-sonnet-4-5-20250007-v1:[0]"], BEDROCK)


def test_an_admin_key_is_told_when_a_keys_models_take_too_long_to_compare_with_its_own() -> None:
    """A rotation or revocation by an admin key bounded to models compares the key's stored patterns with its own
    (`beyond_authority`). Past its steps they were taken as "not within": an admin key bounded to 80 `...-v1:*`
    patterns was told a key of the 80 ids in them was outside its models (found by review). It is within; and
    patterns too long to compare are refused as such."""
    target = KeyRecord(id="t", name="t", secret_hash="", created_at=0, models=BEDROCK)
    narrow = KeyRecord(id="a", name="a", secret_hash="", created_at=0, admin=True, models=VERSIONED)
    assert beyond_authority([target], narrow) is None
    assert (
        beyond_authority([target], replace(narrow, models=BEDROCK[1:])) == "its models are not within this admin key's"
    )
    patterned = replace(target, models=A_RUNS)
    why = beyond_authority([patterned], replace(narrow, models=[*STARRED, "*b"]))
    assert why is not None and "steps to compare" in why and "not known to be within" in why


def test_a_minted_keys_repr_shows_its_id_never_its_secret() -> None:
    record = KeyRecord(id="abcdefghijkm", name="n", secret_hash="h", created_at=0)
    minted = MintedKey(record, format_key(record.id, "s3cr3t" * 8))
    assert "abcdefghijkm" in repr(minted) and "[REDACTED]" in repr(minted) and "s3cr3t" not in repr(minted)


def many_ranges(count: int) -> list[str]:
    """`count` /32 ranges in 10.0.0.0/8, then the loopback address's."""
    return [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32" for i in range(count - 1)] + ["127.0.0.1/32"]


async def test_a_keys_ranges_are_parsed_once_per_read_of_its_record_not_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every request parsed every range of its key and of each ancestor again: a child with 40,001 ranges cost
    0.31 s of CPU a request, and every other key's requests on the process waited behind it. Now they are parsed
    when the record is read (once per `key_cache_seconds`), and a key without ranges parses nothing."""
    from handler.pipeline import keys as keys_module

    parsed: list[str] = []
    parse = keys_module.network
    monkeypatch.setattr(keys_module, "network", lambda text: parsed.append(text) or parse(text))
    now = [1000.0]
    store = MemoryStore()
    service = KeyService(store, 5, clock=lambda: now[0])
    admin = KeyAdmin(service)
    parent = await admin.mint(KeyRecord(id="", name="p", secret_hash="", created_at=0, allow_ips=many_ranges(100)))
    parent_id = parent.record.id
    child = await admin.mint(
        KeyRecord(
            id="", name="c", secret_hash="", created_at=0, parent_id=parent_id, ancestors=[parent_id], allow_ips=[]
        )
    )
    plain = await admin.mint(KeyRecord(id="", name="plain", secret_hash="", created_at=0))
    for _ in range(50):
        lineage = await service.authenticate_lineage(child.key, "127.0.0.1")
        assert [k.id for k in lineage] == [child.record.id, parent_id]
        with pytest.raises(PermissionDeniedError):
            await service.authenticate_lineage(child.key, "192.0.2.1")
        assert (await service.authenticate(plain.key, None)).id == plain.record.id
    assert len(parsed) == 100  # the parent's, once
    now[0] += 5  # the cache's copies are stale: read, and parsed, again
    assert (await service.authenticate(child.key, "127.0.0.1")).id == child.record.id
    assert len(parsed) == 200


class CountingStore(MemoryStore):
    """The memory store, counting its key reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_key(self, key_id: str) -> KeyRecord | None:
        self.reads += 1
        return await super().get_key(key_id)


async def test_a_secret_rotated_elsewhere_works_at_once_where_the_key_is_cached() -> None:
    """A process that had the key cached refused the new secret of a rotation made by another process (a worker,
    a Lambda environment, the CLI) with a 401 for up to `key_cache_seconds`: it compared the secret with its cached
    record only. A secret the cached record refuses is now checked against the store once; the old secret keeps
    its grace, and requests arriving together share the one read."""
    now = [1000.0]
    store = CountingStore()
    here = KeyService(store, 5, clock=lambda: now[0])
    elsewhere = KeyAdmin(KeyService(store, 0, clock=lambda: now[0]))
    minted = await KeyAdmin(here).mint(KeyRecord(id="", name="k", secret_hash="", created_at=0))
    key_id = minted.record.id
    assert (await here.authenticate(minted.key, None)).id == key_id  # cached here
    rotated = await elsewhere.rotate(minted.record, 3600)
    reads = store.reads
    accepted = await asyncio.gather(*(here.authenticate(rotated.key, None) for _ in range(10)))
    assert {record.id for record in accepted} == {key_id} and store.reads == reads + 1
    assert (await here.authenticate(minted.key, None)).id == key_id  # within its grace
    # A second rotation, with no grace: the first new secret is refused once the store says so.
    again = await elsewhere.rotate(await store.get_key(key_id) or minted.record, 0)
    now[0] += RECHECK_SECONDS
    assert (await here.authenticate(again.key, None)).id == key_id
    with pytest.raises(AuthenticationError):
        await here.authenticate(rotated.key, None)


async def test_a_rotated_out_secret_is_the_keys_but_administers_nothing() -> None:
    """A key's previous secret, in its rotation's grace, was accepted as the key on every route, the admin routes
    too: with it, whoever held the secret the rotation retired rotated the key away from its new secret (found by
    review). It is the key's for its requests, and a 403 `admin_only` for a request that `administers`, whether the
    rotation was this process's or another's (its record read again), until its grace ends (then a 401)."""
    now = [1000.0]
    store = MemoryStore()
    here = KeyService(store, 5, clock=lambda: now[0])
    elsewhere = KeyAdmin(KeyService(store, 0, clock=lambda: now[0]))
    template = KeyRecord(id="", name="operator", secret_hash="", created_at=0, admin=True)
    for rotator in (KeyAdmin(here), elsewhere):
        minted = await KeyAdmin(here).mint(template)
        assert (await here.authenticate_lineage(minted.key, None, administers=True))[0].id == minted.record.id
        rotated = await rotator.rotate(minted.record, 3600)
        now[0] += RECHECK_SECONDS  # (another's rotation: the cached record is read again for the new secret)
        assert (await here.authenticate_lineage(rotated.key, None, administers=True))[0].id == minted.record.id
        assert (await here.authenticate_lineage(minted.key, None))[0].id == minted.record.id  # its grace
        with pytest.raises(PermissionDeniedError, match="previous secret, rotated out") as refused:
            await here.authenticate_lineage(minted.key, None, administers=True)
        assert refused.value.code == "admin_only"
    now[0] += 3600 + 5
    with pytest.raises(AuthenticationError):
        await here.authenticate_lineage(minted.key, None, administers=True)


async def test_a_child_minted_as_its_parent_is_revoked_elsewhere_is_revoked_with_it() -> None:
    """A process holding the parent live in its cache (`key_cache_seconds`) minted a child after another process
    revoked the parent and walked its family: the child stayed live (`revoked_at` None) under a revoked key, shown
    so and never purged, and for good once the parent was purged a day later. The mint now reads the ancestors again
    once the child is stored: the child is revoked with its parent, and the mint refused as a fresh cache would."""
    store = MemoryStore()
    here, elsewhere = KeyService(store, 5), KeyAdmin(KeyService(store, 5))
    minting = KeyAdmin(here)
    parent = await minting.mint(KeyRecord(id="", name="team", secret_hash="", created_at=0))
    held = await here.authenticate(parent.key, None)  # cached here, live
    revoked = await elsewhere.revoke(parent.record)
    template = KeyRecord(id="", name="agent", secret_hash="", created_at=0, parent_id=held.id, ancestors=[held.id])
    with pytest.raises(AuthenticationError, match="this key's parent has been revoked") as refused:
        await minting.mint_child(template, 10)
    assert refused.value.code == "key_revoked"
    [child_id] = await store.child_ids(held.id)
    child = await store.get_key(child_id)
    assert child is not None and (child.revoked_at, child.revoked_by) == (revoked.revoked_at, held.id)
    other = (await minting.mint(KeyRecord(id="", name="other", secret_hash="", created_at=0))).record
    live = await minting.mint_child(replace(template, parent_id=other.id, ancestors=[other.id]), 10)
    assert live.record.revoked_at is None  # (a live parent's child is as it was)


async def test_wrong_secrets_for_a_real_key_cost_one_store_read_a_second_at_most() -> None:
    """Checking a refused secret against the store must not let a stream of wrong secrets for a real key id (one
    after another, or all at once) turn into a store read each."""
    now = [1000.0]
    store = CountingStore()
    service = KeyService(store, 5, clock=lambda: now[0])
    minted = await KeyAdmin(service).mint(KeyRecord(id="", name="k", secret_hash="", created_at=0))
    await service.authenticate(minted.key, None)
    wrong = format_key(minted.record.id, "w" * 43)
    reads = store.reads
    for _ in range(100):
        with pytest.raises(AuthenticationError):
            await service.authenticate(wrong, None)
    assert store.reads == reads + 1
    now[0] += RECHECK_SECONDS
    refused = await asyncio.gather(*(service.authenticate(wrong, None) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(answer, AuthenticationError) for answer in refused)
    assert store.reads == reads + 2
    assert (await service.authenticate(minted.key, None)).id == minted.record.id  # the right one: no read
    assert store.reads == reads + 2


def unknown_key(number: int) -> str:
    """A well-formed key whose id no store holds."""
    return format_key(f"unknown{number:05d}", "u" * 43)


async def test_a_flood_of_unknown_keys_does_not_cost_a_valid_key_its_cached_record() -> None:
    """Past 10,000 entries the key cache was emptied whole: 10,001 distinct unknown keys (a client guessing, or
    a scanner) cleared it, and every valid key then paid a store read again. Unknown ids are now held apart, in a
    smaller map of their own, so they cannot push a key's record out."""
    store = CountingStore()
    service = KeyService(store, 5, clock=lambda: 1000.0)
    minted = await KeyAdmin(service).mint(KeyRecord(id="", name="k", secret_hash="", created_at=0))
    await service.authenticate(minted.key, None)
    for number in range(10_001):
        with pytest.raises(AuthenticationError):
            await service.authenticate(unknown_key(number), None)
    reads = store.reads
    assert (await service.authenticate(minted.key, None)).id == minted.record.id
    assert store.reads == reads  # still cached
    for _ in range(50):  # a recent unknown id is still held as unknown: read once more (`RECHECK_SECONDS`) at most
        with pytest.raises(AuthenticationError):
            await service.authenticate(unknown_key(10_000), None)
    assert store.reads == reads + 1


async def test_past_its_bound_the_key_cache_lets_only_its_oldest_record_go() -> None:
    """A fleet of more valid keys than the cache holds (10,002 for its 10,000) emptied the cache whole; it now costs
    a store read for the two oldest records only."""
    store = CountingStore()
    service = KeyService(store, 5, clock=lambda: 1000.0)
    records = [KeyRecord(id=f"fleet{number:07d}", name="k", secret_hash="", created_at=0) for number in range(10_002)]
    for record in records:
        await store.create_key(record)
        assert await service.lookup(record.id) == record
    reads = store.reads
    assert [await service.lookup(record.id) for record in records[2:]] == records[2:]
    assert store.reads == reads
    assert await service.lookup(records[0].id) == records[0]
    assert store.reads == reads + 1


class SlowReadStore(MemoryStore):
    """A store whose next read of `slow_id` answers what it read only once `gate` opens: a DynamoDB `GetItem` in
    flight (a few ms on `gateway serve`, where requests of one process run at once) while another request writes."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_id: str | None = None
        self.gate = asyncio.Event()
        self.reading = asyncio.Event()

    async def get_key(self, key_id: str) -> KeyRecord | None:
        record = await super().get_key(key_id)
        if key_id == self.slow_id:
            self.slow_id = None
            self.reading.set()
            await self.gate.wait()
        return record


@pytest.mark.parametrize("action", ["revoke", "rotate", "revoke the parent"])
async def test_a_read_in_flight_does_not_undo_what_this_process_just_wrote(action: str) -> None:
    """docs/keys-and-budgets.md: "A revocation takes effect at once on the process that made it", and a rotation
    retires a leaked admin secret: "the old secret cannot rotate the key again". A lookup that began before the
    write (another request of the same process, on DynamoDB) and landed after it was cached as the newest entry: on
    the very process that revoked the key, it was served for `key_cache_seconds` more, and after a rotation with no
    grace the old secret was the key's current one there, admin powers and all. A key revoked with its parent (its
    record dropped from the cache: `forget`, then) was put back live the same way."""
    store = SlowReadStore()
    service = KeyService(store, 5, clock=lambda: 1000.0)
    admin = KeyAdmin(service)
    parent = await admin.mint(KeyRecord(id="", name="operator", secret_hash="", created_at=0, admin=True))
    template = KeyRecord(id="", name="child", secret_hash="", created_at=0, admin=True)
    child = await admin.mint_child(replace(template, parent_id=parent.record.id, ancestors=[parent.record.id]), 10)
    minted = child if action == "revoke the parent" else parent
    store.slow_id = minted.record.id
    in_flight = asyncio.ensure_future(service.lookup(minted.record.id))  # a request arriving just before
    await store.reading.wait()
    if action == "revoke":
        await admin.revoke(minted.record)
    elif action == "rotate":
        await admin.rotate(minted.record, 0)  # no grace: the leaked secret is to end at once
    else:
        await admin.revoke(parent.record)
    store.gate.set()
    assert (await in_flight).version > minted.record.version  # (begun before the write: answered the write)
    with pytest.raises((AuthenticationError, PermissionDeniedError)):
        await service.authenticate_lineage(minted.key, None, administers=True)
    held = await service.lookup(minted.record.id)
    assert held is not None and held.version > minted.record.version


class SlowAnswerStore(MemoryStore):
    """A store whose next `update_key` of `slow_id` lands at once but answers only once `gate` opens: a DynamoDB
    `PutItem` written, its answer still on the way (a few ms; another request of the process runs meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_id: str | None = None
        self.gate = asyncio.Event()
        self.written = asyncio.Event()

    async def update_key(self, record: KeyRecord) -> None:
        await super().update_key(record)
        if record.id == self.slow_id:
            self.slow_id = None
            self.written.set()
            await self.gate.wait()


@pytest.mark.parametrize("action", ["revoke", "rotate"])
async def test_a_write_answered_late_does_not_undo_a_later_write_this_process_made(action: str) -> None:
    """A retag (version 2) lands, its answer still on the way; a revocation, or a rotation with no grace, reads it,
    writes version 3 and caches it; then the retag's answer comes and `wrote` cached version 2 over it (found by
    review): the revoked key, or the rotated-out secret, served on the process that ended it, for
    `key_cache_seconds`. The cache keeps the later version, whatever order the answers come in."""
    store = SlowAnswerStore()
    service = KeyService(store, 5, clock=lambda: 1000.0)
    admin = KeyAdmin(service)
    minted = await admin.mint(KeyRecord(id="", name="svc", secret_hash="", created_at=0))
    key_id = minted.record.id
    store.slow_id = key_id
    retag = asyncio.ensure_future(admin.retag(minted.record, {"team": "search"}))  # PATCH /admin/keys/{id}
    await store.written.wait()

    async def latest() -> KeyRecord:
        return await store.get_key_latest(key_id) or minted.record

    if action == "revoke":
        ended = await admin.change(latest, admin.revoke, "revoking")
    else:
        ended = (await admin.change(latest, lambda record: admin.rotate(record, 0), "rotating")).record
    assert ended.version == 3
    store.gate.set()
    assert (await retag).version == 2
    with pytest.raises(AuthenticationError):
        await service.authenticate(minted.key, None)
    assert await service.lookup(key_id) == ended


class BehindStore(MemoryStore):
    """A store whose `get_key` reads a replica that has none of the writes after `behind` (one region's, while
    replication lags), and `get_key_latest` the key's home region."""

    def __init__(self) -> None:
        super().__init__()
        self.behind: KeyRecord | None = None

    async def get_key(self, key_id: str) -> KeyRecord | None:
        if self.behind is not None and self.behind.id == key_id:
            return self.behind
        return await super().get_key(key_id)


async def test_a_replica_behind_this_processs_write_does_not_undo_it_when_the_cache_ends() -> None:
    """A key revoked by this process in its home region, read again once its cached record is `key_cache_seconds`
    old, from a replica the revocation has not reached: the older record replaced the revocation, the key live
    again on the process that revoked it. A record older than the cached one is not taken."""
    now = [time.time()]  # (the store purges a key a day after its revocation, by its own clock)
    store = BehindStore()
    service = KeyService(store, 5, clock=lambda: now[0])
    admin = KeyAdmin(service)
    minted = await admin.mint(KeyRecord(id="", name="svc", secret_hash="", created_at=0))
    store.behind = minted.record
    revoked = await admin.revoke(minted.record)
    now[0] += 6
    with pytest.raises(AuthenticationError):
        await service.authenticate(minted.key, None)
    assert await service.lookup(minted.record.id) == revoked
    store.behind = None  # (replication arrives)
    assert await service.lookup(minted.record.id) == revoked


def test_a_keys_secret_alone_is_redacted_from_a_name_kept_beside_its_id() -> None:
    """A key's secret without its `gwk_<id>_` (a tag's value, a session id, a user) was kept on the ledger line beside
    the key's id, which with it is the key (found by review). It is redacted where it may stand in a run of its
    alphabet (the run's ends, beside a `-` or `_`), found by its hash (the key's, its previous one's, an ancestor's);
    a run of the shape that is no secret of theirs, and a shorter value, are kept as they are."""
    secret, previous, ancestors = (secrets.token_urlsafe(32) for _ in range(3))
    record = KeyRecord(id="k", name="k", secret_hash=hash_secret(secret), created_at=0, prev_secret_hash=None)
    rotated = replace(record, secret_hash=hash_secret("another"), prev_secret_hash=hash_secret(previous))
    parent = replace(record, id="p", secret_hash=hash_secret(ancestors))
    other = secrets.token_urlsafe(32)
    assert without_own_secret(secret, [record]) == "[REDACTED]"
    assert without_own_secret(f"sess:{secret}.{other}", [record]) == f"sess:[REDACTED].{other}"
    assert without_own_secret(f"{previous}/{ancestors}", [rotated, parent]) == "[REDACTED]/[REDACTED]"
    # Joined to a name by `-` or `_`, which are of its alphabet, or at a run's end, it runs on with the name.
    for joined in ("sess-{}", "run_{}", "{}-2", "ci-{}_retry", "x{}", "{}x"):
        assert without_own_secret(joined.format(secret), [record]) == joined.format("[REDACTED]")
    assert without_own_secret(f"x{secret}x", [record]) == f"x{secret}x"  # (no place a secret stands: 45 letters)
    assert without_own_secret(f"{other}-{other}", [record]) == f"{other}-{other}"  # (the shape, no secret of theirs)
    assert without_own_secret(secret, [parent]) == secret  # (not this request's keys')
    short = "0b9d2f4e-3c8a-4a51-9f0e-7d6c5b4a3921"
    assert without_own_secret(short, [record]) is short


@pytest.mark.parametrize("at", [200, 213, 230, 250, 255, 256, 260])
def test_a_keys_secret_straddling_the_cut_of_a_long_user_leaves_none_of_itself(at: int) -> None:
    """A `user` is kept as its first 256 characters (`MAX_USER_CHARS`): cut before the secret of its key was looked
    for, a secret beginning before the cut kept its first characters (up to 42 of its 43), too few for its hash. Both
    redactions read past the cut, then cut: no character of the secret is kept, wherever it stands; the characters
    before it are kept as they were."""
    secret = secrets.token_urlsafe(32)
    record = KeyRecord(id="k", name="k", secret_hash=hash_secret(secret), created_at=0)
    head = "team.member:" + "u" * (at - 13) + "-"  # (`at` characters, then the secret, joined by a `-`)
    for tail in ("", f"-{'v' * 300}", f":{'w' * 300}"):
        kept = kept_unkeyed(f"{head}{secret}{tail}", [record], 256)
        assert kept == f"{head}[REDACTED]{tail}"[:256]
        assert not any(secret[:n] in kept for n in range(4, 44)), kept[at - 8 :]
    # A user of no secret of the key's is cut as it was: its first 256 characters.
    other = secrets.token_urlsafe(32)
    assert kept_unkeyed(f"{head}{other}{'x' * 300}", [record], 256) == f"{head}{other}{'x' * 300}"[:256]
