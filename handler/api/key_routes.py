"""Key routes: `GET /v1/key`, `POST /v1/keys` (child keys), and the admin key API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from handler.api.answer_size import as_json_string
from handler.api.key_spend import KeySpends
from handler.api.report_gate import ReportGate
from handler.dashboard.line_items import LineListing, parse_limit, parse_page
from handler.dashboard.reports import REPORT_ONCE, ReportBuilder, parse_report, parse_top, parse_views
from handler.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from handler.pipeline.attribution import line_tags, stored_tags, validate_tags
from handler.pipeline.budgets import period_of
from handler.pipeline.key_admin import (
    CONTAINMENT_STEPS,
    GlobCheck,
    KeyAdmin,
    StepsSpent,
    family_of,
    key_names,
    unkeyed_name,
    validate_networks,
    with_descendants,
)
from handler.pipeline.keys import ID_LENGTH, NOT_THE_KEY, is_key_id, kept_unkeyed, may_hold_a_secret, network
from handler.pipeline.pricing import dollars
from handler.ports import KeyPlace, KeyRecord, RateCharge, UsageQuery
from handler.redaction import echoed, unkeyed

if TYPE_CHECKING:
    from handler.api.app import Api

T = TypeVar("T")
MAX_GRACE_SECONDS = 7 * 86400
MAX_PATTERN_CHARS = 200  # a model name pattern of a key's `models`
# A key's IP ranges, as its `models` and `model_limits` are bounded: every request of the key (and of its children)
# is matched against them, and the record must fit a DynamoDB item (400 KB). Unbounded, a plain key could mint
# 20,001 ranges for a child of its own, whose requests would then hold up every other key's on the process.
MAX_ALLOW_IPS = 100
MAX_RANGE_CHARS = 64  # the longest range written out (an IPv4-mapped IPv6 one) is under 50
# Ten years: a key meant to last has no expiry at all. Without a bound, `expires_in_seconds: 1e200` made a key
# (SQLite) or a 503 `store_unavailable` to retry (DynamoDB, whose TTL number it could not hold).
MAX_EXPIRES_IN_SECONDS = 3650 * 86400
# A budget is 0 or from a millionth of a dollar to a billion: what DynamoDB holds exactly in admission's condition
# (`limit - amount`, to the cost's 15 digits), a number of at most 38 digits from 1e-130 to 9.99e125. `budget_usd:
# 1e200` or `1e-200` made a key (201) whose every request would be a 503 `store_unavailable` there.
MAX_BUDGET_USD = 10**9
MIN_BUDGET_USD = 1e-6
# The most an `rpm`, a `tpm` or a `model_limits` entry may be: a trillion a minute, past any provider's limits, and
# well within the 64-bit integers the stores write (`keys create --rpm 99999999999999999999999` would pass the spec,
# then be a traceback from the store's JSON encoder; over HTTP the body's parser refuses such a number).
MAX_RATE_LIMIT = 10**12
# The most `model_limits` entries a key may have. Every one whose pattern matches a request's model binds it, on a
# counter of its own, and on DynamoDB each is a clause of the admission's one update of the key's item, within its
# limits of 4 KB and 300 operators an expression: 20 entries, an rpm and a tpm each, with the key's own rpm, tpm and
# budget, make 263 operators and 3.2 KB; the 30 the bound of 100 let match one model made 383 and 4.7 KB, and every
# request of the key to that model was refused by DynamoDB (a 503). (Admissions on the embedded store have no such
# bound, but a key must serve on either.)
MAX_MODEL_LIMITS = 20
# A key route's body is read up to this, not the gateway's `max_body_bytes`: the largest a spec can be (a name,
# 100 models and 20 model limits of 200 characters, 100 IP ranges, 16 tags of 128 characters; indented) is under 54 KB.
KEY_BODY_BYTES = 128 * 1024
# The most a page of `GET /admin/keys` weighs as the buffered Lambda function carries it (a JSON string: each `"`
# escaped), well within its 6 MB (handler/api/answer_size.py) whatever `limit` asks for: a key's view may weigh
# some 51 KB (a name, models, limits, ranges and tags to their bounds), and 140 such keys would be a 413.
KEYS_PAGE_BYTES = 4_000_000
MAX_KEY_CURSOR_CHARS = 200  # a `key_cursor`: two ids as base64
# An answer carrying a key's secret must not be kept by a cache along the way, nor by the client's.
SECRET_HEADERS = {"cache-control": "no-store"}


class KeySpec(BaseModel):
    """The body of a key-creating request."""

    model_config = ConfigDict(extra="forbid", defer_build=True, strict=True)

    name: str = Field(min_length=1, max_length=200)
    # (The containment checks' work is bounded apart: `handler.pipeline.key_admin.GlobCheck`.)
    models: list[Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS)]] | None = Field(
        default=None, min_length=1, max_length=100
    )
    budget_usd: float | None = Field(default=None, ge=0, le=MAX_BUDGET_USD, allow_inf_nan=False)
    budget_period: Literal["day", "month", "total"] = "total"
    # (At least a second: `1e-300` made a key, 201, whose secret was expired before it was stored.)
    expires_in_seconds: float | None = Field(default=None, ge=1, le=MAX_EXPIRES_IN_SECONDS, allow_inf_nan=False)
    rpm: int | None = Field(default=None, ge=1, le=MAX_RATE_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_RATE_LIMIT)
    model_limits: (
        dict[
            Annotated[str, Field(min_length=1, max_length=MAX_PATTERN_CHARS)],
            dict[Literal["rpm", "tpm"], Annotated[int, Field(le=MAX_RATE_LIMIT)]],
        ]
        | None
    ) = Field(default=None, max_length=MAX_MODEL_LIMITS)
    allow_ips: list[Annotated[str, Field(max_length=MAX_RANGE_CHARS)]] | None = Field(
        default=None, max_length=MAX_ALLOW_IPS
    )
    # Default attribution tags for the key's ledger lines; a child also carries its parent's (which win).
    tags: dict[str, str] | None = None


class AdminKeySpec(KeySpec):
    admin: bool = False


class KeyUpdateSpec(BaseModel):
    """The body of `PATCH /admin/keys/{id}`: what may change on a live key without a new secret."""

    model_config = ConfigDict(extra="forbid", defer_build=True, strict=True)

    tags: dict[str, str]


class RotateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True, strict=True)

    grace_seconds: float = Field(default=3600, ge=0, le=MAX_GRACE_SECONDS, allow_inf_nan=False)


def no_such_key(key_id: str) -> str:
    """A 404's message for a key id the store does not have; a whole key given as the id is not echoed (its
    secret would be)."""
    if may_hold_a_secret(key_id):
        return f"no key with that id: give {NOT_THE_KEY}"
    return f"no key with id '{key_id[:64]}'"


def key_cursor(record: KeyRecord) -> str:
    """The `cursor` of `GET /admin/keys` that pages on past `record`: its place in the listing (`KeyPlace`: its parent's
    id and its own), which a client passes back as it came (URL-safe base64, nothing to escape in a query)."""
    return base64.urlsafe_b64encode(orjson.dumps([record.parent_id, record.id])).decode().rstrip("=")


def parse_key_cursor(text: str | None, parent_id: str | None) -> KeyPlace | None:
    """A `key_cursor` (None where none is given), or a 400 naming `cursor`: one this gateway never made, or one of
    another key's children than `parent_id`'s, whose place is outside the listing asked for."""
    if not text:
        return None
    place: Any = None
    if len(text) <= MAX_KEY_CURSOR_CHARS:
        with contextlib.suppress(ValueError):  # (not base64, not JSON: `binascii.Error`, `orjson.JSONDecodeError`)
            place = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    made = (
        isinstance(place, list)
        and len(place) == 2
        and all(part is None or (isinstance(part, str) and part and not may_hold_a_secret(part)) for part in place)
        and place[1] is not None
    )
    if not made or (parent_id is not None and place[0] != parent_id):
        raise InvalidRequestError(
            "cursor takes the next_cursor of the page before, with the same parent_id", param="cursor"
        )
    return KeyPlace(place[0], place[1])


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key as shown to its holder or an admin: never a hash, never a secret. Its name and model patterns, which
    its creator chose, with any key in them redacted: a record made before such names were refused
    (`unkeyed_name`) showed the key in every admin's key list."""
    return {
        "id": record.id,
        "name": unkeyed(record.name),
        "models": [unkeyed(pattern) for pattern in record.models],
        "budget_usd": record.budget_usd,
        "budget_period": record.budget_period if record.budget_usd is not None else None,
        "expires_at": record.expires_at,
        "rpm": record.rpm,
        "tpm": record.tpm,
        "model_limits": {unkeyed(pattern): limits for pattern, limits in record.model_limits.items()},
        "allow_ips": record.allow_ips,
        "admin": record.admin,
        "parent_id": record.parent_id,
        "ancestors": record.ancestors,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "revoked_by": record.revoked_by,
        "rotation_grace_until": record.prev_valid_until,
        "tags": stored_tags(record.tags),  # (a record tagged before tags were checked as now may hold a key)
        # The region whose store holds the key's record and budget of record (None: one shared meter item).
        "home_region": record.home_region,
    }


def record_from(spec: KeySpec, lineage: list[KeyRecord], *, admin: bool = False, now: float) -> KeyRecord:
    """The record `spec` asks for, made by the key of `lineage` (it and its ancestors, nearest first): a name or a
    model pattern holding a key, a known secret or the secret of one of those keys is refused (`unkeyed_name`), and a
    tag's value holding one kept redacted (`kept_unkeyed`), as a request's tags are."""
    limits: dict[str, dict[str, int]] = {
        unkeyed_name(pattern, "model_limits", "a model pattern", lineage): {
            str(name): value for name, value in values.items()
        }
        for pattern, values in (spec.model_limits or {}).items()
    }
    for pattern, values in limits.items():
        if any(v < 1 for v in values.values()):
            raise InvalidRequestError(f"model_limits.{pattern}: limits must be at least 1", param="model_limits")
    if spec.budget_usd is not None and 0 < spec.budget_usd < MIN_BUDGET_USD:
        raise InvalidRequestError(
            f"budget_usd is 0 or at least {MIN_BUDGET_USD:f} (a millionth of a dollar)", param="budget_usd"
        )
    if "budget_period" in spec.model_fields_set and spec.budget_usd is None:
        # (Stored as no period at all, it would let the key spend freely, its creator told nothing.)
        raise InvalidRequestError(
            "budget_period is the period of a budget: give budget_usd too (a key without one spends freely)",
            param="budget_period",
        )
    return KeyRecord(
        id="",
        name=unkeyed_name(spec.name, "name", "a key's name", lineage),
        secret_hash="",
        created_at=now,
        models=[unkeyed_name(pattern, "models", "a model pattern", lineage) for pattern in spec.models or ["*"]],
        budget_usd=spec.budget_usd,
        budget_period=spec.budget_period,
        expires_at=now + spec.expires_in_seconds if spec.expires_in_seconds else None,
        rpm=spec.rpm,
        tpm=spec.tpm,
        model_limits=limits,
        allow_ips=validate_networks(spec.allow_ips or []),
        admin=admin,
        tags=validate_tags(spec.tags or {}, "tags", partial(kept_unkeyed, lineage=lineage)),
    )


def networks_within(child: list[str], parent: list[str]) -> bool:
    if not parent:
        return True
    parents = [network(p) for p in parent]
    for net in child:
        held = network(net)
        if not any(held.version == p.version and held.subnet_of(p) for p in parents):  # type: ignore[arg-type]
            return False
    return True


def narrow_to(key: KeyRecord, spec: KeySpec, holder: KeyRecord, what: str, whose: str) -> None:
    """Hold `key` (built from `spec`) to `holder`'s models, expiry and IP ranges: one that `spec` leaves out is the
    holder's; one wider than the holder's is refused (`what`: the new key, `whose`: the holder, in the message)."""
    if spec.models is None:
        key.models = list(holder.models)
    elif not GlobCheck("models").models_within(key.models, holder.models):
        raise PermissionDeniedError(f"{what}'s models must be within {whose}'s", code="model_not_allowed")
    if holder.expires_at is not None:
        if key.expires_at is None:
            key.expires_at = holder.expires_at
        elif key.expires_at > holder.expires_at:
            raise InvalidRequestError(f"{what} cannot outlive {whose}", param="expires_in_seconds")
    if not spec.allow_ips:  # none given (or an empty list, which would mean "anywhere"): the holder's
        key.allow_ips = list(holder.allow_ips)
    elif not networks_within(key.allow_ips, holder.allow_ips):
        raise InvalidRequestError(f"{what}'s IP ranges must be within {whose}'s", param="allow_ips")


def spending_bounds(record: KeyRecord) -> list[str]:
    """The bounds of `record` on how much its holder may spend or send (a budget, rates): what a key outside its
    family, its own budget and rates apart, would multiply."""
    named = {"budget_usd": record.budget_usd, "rpm": record.rpm, "tpm": record.tpm}
    return [name for name, value in named.items() if value is not None] + (
        ["model_limits"] if record.model_limits else []
    )


def beyond_authority(target: list[KeyRecord], authority: KeyRecord) -> str | None:
    """Why the key `target` (it and its ancestors, nearest first) is less bounded than the admin key `authority`,
    or None when `authority`'s bounds hold it: it is `authority` or one of its descendants (every request of it is
    held to `authority`'s bounds), or it is no wider on any bound: no later expiry (none at all is later), models and
    IP ranges within (those of any key of its chain), and `authority` has no budget or rates, which a key spending
    apart from it would escape.

    The models are stored patterns, compared in `CONTAINMENT_STEPS` as a new key's are: each of the two keys' was
    held to the key that minted it, never to the other's, so many long wildcard patterns on both could take far
    longer. Past the steps the refusal says so (`StepsSpent`), never "not within" of models that may well be."""
    if authority.id in (target[0].id, *target[0].ancestors):
        return None
    if target[0].admin and len(target) > 1:
        # A dashboard session (an admin key with a parent) acts for the admin key it was made from
        # (`KeyRoutes._authority`): held as its own record alone, an admin key for a day held the operator's session of
        # 8 hours, rotated it, and with its new secret revoked the operator's own key.
        why = beyond_authority(target[-1:], authority)
        if why is not None:
            return f"it is a dashboard session acting for admin key '{target[-1].id}', and held as that key: {why}"
    spending = spending_bounds(authority)
    if spending:
        return f"this admin key has {' and '.join(spending)} of its own, which a key outside its family escapes"
    if authority.expires_at is not None:
        ends = [held.expires_at for held in target if held.expires_at is not None]
        if not ends or min(ends) > authority.expires_at:
            return "it outlives this admin key"
    patterns, spent = GlobCheck(), False
    for held in target:
        try:
            if patterns.models_within(held.models, authority.models):
                break
        except StepsSpent:
            spent = True  # (a key further up the chain may still be settled without a step: by its models' names)
    else:
        if spent:
            return (
                f"its models take more than {CONTAINMENT_STEPS:,} steps to compare with this admin key's (many long "
                "wildcard patterns on both), so they are not known to be within them; an admin key whose models "
                "are '*' can"
            )
        return "its models are not within this admin key's"
    if authority.allow_ips and not any(
        held.allow_ips and networks_within(held.allow_ips, authority.allow_ips) for held in target
    ):
        return "its IP ranges are not within this admin key's"
    return None


def wider_model_limit(child: KeyRecord, parent: KeyRecord, whose: str, patterns: GlobCheck) -> None:
    """Refuse a child's per-model limit above what `parent` (or another ancestor) allows the same models: its
    `rpm` or `tpm`, or its limit for a pattern holding the child's (a child's `m-a` at 100 rpm under a parent's `m-a` at
    2 would be minted, and its key say so, though the parent's 2 holds at every request). `patterns`: the request's
    check, whose work is bounded over the whole lineage.

    A child's limit is compared only with the parent's entries below it (and below the parent's own), tightest
    first, up to the first whose pattern holds the child's: that is the tightest bound on it. Compared with every
    entry, a child given its parent's own limits for 60 Bedrock profiles took 135,060 steps, a 400."""
    tighter = {
        name: sorted((theirs[name], held) for held, theirs in parent.model_limits.items() if name in theirs)
        for name in ("rpm", "tpm")
    }
    for pattern, limits in child.model_limits.items():
        for name, mine in limits.items():
            tightest: int | None = getattr(parent, name)
            ceiling = mine if tightest is None else min(mine, tightest)
            for bound, held in tighter.get(name, ()):
                if bound >= ceiling:
                    break
                if patterns.within(pattern, held):
                    tightest = bound
                    break
            if tightest is not None and mine > tightest:
                raise InvalidRequestError(
                    f"model_limits.{pattern}.{name} {mine} exceeds {whose} {tightest}", param="model_limits"
                )


# A report's parameters that take one value over HTTP (`view` may be given several times).
ONCE = (*REPORT_ONCE, "format", "top")


class KeyRoutes:
    """Handlers for the key API; `api` supplies authentication, parsing and the gateway."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.gateway = api.gateway
        self.reports = ReportGate()
        self.spends = KeySpends(api.gateway.store)
        self.admin = KeyAdmin(api.gateway.keys)  # (writing through the cache that serves the requests)

    async def _budget_state(self, lineage: list[KeyRecord]) -> dict[str, Any]:
        """Of a key (`lineage`: it and its ancestors, nearest first): its own budget period, spent and reserved
        (None without a budget of its own), and what it may still spend: the least that any budget along its
        chain leaves (`remaining_usd`), and whose budget that is (`remaining_bound_by`, a key id; both None when
        no key of the chain has a budget). A child's own $10 under a parent with $1 left has $1 to spend."""
        state: dict[str, Any] = {"spent_usd": None, "reserved_usd": None, "remaining_usd": None, "period": None}
        least: tuple[float, str] | None = None
        now = time.time()
        record = lineage[0]
        for held in lineage:
            if held.budget_usd is None:
                continue
            period = period_of(held.budget_period, now)
            snapshot = await self.gateway.store.meter(held.id, period)
            committed = snapshot.committed_usd.get(period, 0.0)
            left = max(0.0, dollars(held.budget_usd - committed))
            if held is record:
                # Sums of float costs, rounded to a millionth of a cent: the same costs summed in another order
                # left `reserved_usd` at 5.9e-17 with nothing in flight, and `spent_usd` at 0.027850227500000005.
                spent = snapshot.spent_usd.get(period, 0.0)
                state.update(period=period, spent_usd=dollars(spent), reserved_usd=max(0.0, dollars(committed - spent)))
            if least is None or left < least[0]:
                least = (left, held.id)
        state["remaining_usd"], state["remaining_bound_by"] = least if least is not None else (None, None)
        return state

    @staticmethod
    def _line_tags(lineage: list[KeyRecord]) -> dict[str, Any]:
        """The tags every line of this key carries: its own under its ancestors' (which win a name), as a line keeps
        them (`lineage` may hold a record read here from the store, its tags as stored)."""
        return {"line_tags": stored_tags(line_tags(lineage, {}))}

    async def _spent(self, lineage: list[KeyRecord], state: dict[str, Any]) -> dict[str, Any]:
        """`state` (`_budget_state`) with what a key without a budget of its own spent: no meter counts it, so its
        lines and its descendants' (what a budget of its own would count) are summed from the ledger, over the
        current UTC month, the `period` it names. Otherwise a plain key would be told `spent_usd: null` however
        much it spends, and so would a child spending its parent's budget, whose `remaining_usd` drops. Read as a
        key's figure, not as a report (`KeySpends`): a report takes a turn of the caller's family, and a third read
        at once would be a 429."""
        if state["period"] is not None:
            return state  # (its own meter's)
        period, spent = await self.spends.spent(lineage, time.time())
        return {**state, "period": period, "spent_usd": float(spent)}

    async def whoami(self, request: Request) -> Response:
        key = await self.api.authenticate(request, allow_x_api_key=True)
        lineage = await self.gateway.keys.lineage(key)
        state = await self._spent(lineage, await self._budget_state(lineage))
        return self.api.json({**key_view(key), **self._line_tags(lineage), **state})

    async def mint_child(self, request: Request) -> Response:
        # (Not with the parent's rotated-out secret: a child minted by whoever holds it would outlive its grace.)
        parent = await self.api.authenticate(request, administers=True)
        spec = await self.api.parse(request, KeySpec, max_bytes=KEY_BODY_BYTES)
        now = time.time()
        child = record_from(spec, self.api.lineage(request), now=now)
        narrow_to(child, spec, parent, "a child key", "its parent")
        lineage = await self.gateway.keys.lineage(parent)
        patterns = GlobCheck("model_limits")
        for held in lineage:  # the parent's own, and what binds it from above
            whose = "the parent's" if held is parent else f"the limit of ancestor '{held.id}',"
            for name in ("rpm", "tpm"):
                mine, theirs = getattr(child, name), getattr(held, name)
                if mine is not None and theirs is not None and mine > theirs:
                    raise InvalidRequestError(f"{name} {mine} exceeds {whose} {theirs}", param=name)
            wider_model_limit(child, held, whose, patterns)
        # A child without a budget of its own has none: its chain's budgets bind each of its requests as they bind
        # any key's (`GET /v1/key` says what they leave). It was given a *total* budget of what its parent had left
        # at that moment, which ended it for good once spent though the parent's day or month began again; with
        # nothing left, a key of $0; and none at all when the budget was a grandparent's.
        if child.budget_usd is not None:
            state = await self._budget_state(lineage)  # what the parent may still spend, along its own chain
            remaining = state["remaining_usd"]
            if remaining is not None and child.budget_usd > float(remaining) + 1e-12:
                whose = "the parent's" if state["remaining_bound_by"] == parent.id else "its chain's"
                raise InvalidRequestError(
                    f"budget_usd {child.budget_usd} exceeds {whose} remaining ${float(remaining):.6f}"
                    + ("" if whose == "the parent's" else f" (the budget of key '{state['remaining_bound_by']}')"),
                    param="budget_usd",
                )
        # Counted on the family's root key, which every mint in the family counts on, so that its limit binds each
        # key under it too; in the root's home region, whichever region mints. Counted per parent, a key's 30
        # children minted 30 each in the same minute (930 keys in 3.5 s); in the region that minted, each region 30.
        minting = self.gateway.config.gateway.key_minting
        if len(parent.ancestors) + 2 > minting.max_depth:  # (before the count: a mint refused here is not counted)
            raise PermissionDeniedError(
                f"a key may have at most {minting.max_depth - 1} ancestors (gateway.key_minting.max_depth)",
                code="key_depth_limit",
            )
        root = lineage[-1]
        mint = RateCharge("mint", 0, minting.per_minute, 1, root.id, root.home_region)
        await self.api.pipeline.meter.count_request(parent, request.state.request_id, [mint], root.home_region)
        child = replace(child, parent_id=parent.id, ancestors=[*parent.ancestors, parent.id])
        minted = await self.admin.mint_child(child, minting.max_children, lineage[-1].home_region)
        return self.api.json({**key_view(minted.record), "key": minted.key}, status=201, headers=SECRET_HEADERS)

    # --- admin ------------------------------------------------------------------------------

    async def _admin(self, request: Request, *, hands_out_a_secret: bool = False) -> KeyRecord:
        """The caller, an admin key. `hands_out_a_secret`: the route answers with a key's secret (a new root key,
        a rotated one), which an admin key with a parent (a dashboard session) may not have: a root key would
        outlive the session and its parent's revocation, and a rotation would give it its parent's new secret. Never
        the key's rotated-out secret (`KeyService.authenticate_lineage`)."""
        key: KeyRecord = await self.api.authenticate(request, administers=True)
        self.gateway.keys.require_admin(key)
        if hands_out_a_secret and key.parent_id is not None:
            raise PermissionDeniedError(
                "an admin key with a parent (a dashboard session) cannot create or rotate keys: use the admin key "
                "it was made from (it can read, retag and revoke)",
                code="admin_only",
            )
        return key

    async def _authority(self, request: Request) -> KeyRecord:
        """The admin key whose bounds an admin request is held to: the caller's, or for a dashboard session (an admin
        key with a parent) the admin key it was made from, for which it acts (its own expiry ends the session, not
        what it may do)."""
        await self._admin(request)
        return self.api.lineage(request)[-1]

    async def _hold(self, record: KeyRecord, authority: KeyRecord, action: str) -> None:
        """A 403 `admin_only` unless `authority` may `action` the key `record` (`beyond_authority`): a temporary,
        narrow admin key rotated the operator's own first admin key with no grace, locking the operator out, and a
        rotation hands out the key's new secret."""
        why = beyond_authority(await self.gateway.keys.lineage(record), authority)
        if why is not None:
            raise PermissionDeniedError(
                f"this admin key cannot {action} key '{record.id}': {why}; an admin key may only {action} a key its "
                "own bounds hold",
                code="admin_only",
            )

    async def _target(self, request: Request, latest: bool = False) -> KeyRecord:
        """The key the path names; `latest`: as its home region has it (`Store.get_key_latest`), for a write. One
        this region's replica does not have yet is read in the caller's family root's home (`_family_home`):
        revoking or showing a key minted a moment ago in another region would otherwise be a 404."""
        store = self.gateway.store
        key_id = request.path_params["key_id"]
        record: KeyRecord | None = None
        if is_key_id(key_id):
            record = None if latest else await store.get_key(key_id)
            if record is None:
                record = await store.get_key_latest(key_id, self._family_home(request))
        if record is None:
            raise NotFoundError(no_such_key(key_id), code="not_found")
        return record

    def _family_home(self, request: Request) -> str | None:
        """Where an admin request looks for a key this region's replica lacks: the home region of the caller's family
        root (the operator's admin key), where the keys of the families it made are written (`Store.create_child`).
        A key id alone names no region; a family rooted in a third region is found there once replicated."""
        return self.api.lineage(request)[-1].home_region

    async def _change(
        self,
        request: Request,
        change: Callable[[KeyRecord], Awaitable[T]],
        doing: str,
        held: tuple[KeyRecord, str] | None = None,
    ) -> T:
        """`change` applied to the key the path names, as its home region has it (a write made here a moment ago
        to a key homed elsewhere is there, not yet here: a second admin write in a row would be a 400 "the key
        changed"); one another write changed meanwhile is read again and changed again, then a 409
        (`KeyAdmin.change`). `held`: the admin key whose bounds the key must be within, and the action (`_hold`),
        checked on each read."""

        async def read() -> KeyRecord:
            record = await self._target(request, latest=True)
            if held is not None:
                await self._hold(record, *held)
            return record

        return await self.admin.change(read, change, doing)

    async def admin_list(self, request: Request) -> Response:
        """A page of the keys (`parent_id`: of one key's children), `limit` of them at most, from the `cursor` on: the
        store reads the page and the key after it, which says there are more (`Store.list_keys_page`). A page ends
        early at `KEYS_PAGE_BYTES`, its `next_cursor` where it ended."""
        await self._admin(request)
        params = request.query_params
        parent = params.get("parent_id")
        if parent and may_hold_a_secret(parent):  # (it listed no key, as if the key had no children)
            raise InvalidRequestError(f"parent_id takes {NOT_THE_KEY}", param="parent_id")
        if parent and not is_key_id(parent):  # (not a store read: `is_key_id`)
            raise InvalidRequestError(f"parent_id takes a key's id, of {ID_LENGTH} characters", param="parent_id")
        limit = parse_limit(params.get("limit"))
        after = parse_key_cursor(params.get("cursor"), parent)
        records = await self.gateway.store.list_keys_page(parent, limit + 1, after)
        data: list[dict[str, Any]] = []
        weight = 0
        for record in records[:limit]:
            view = key_view(record)
            size = as_json_string(orjson.dumps(view)) + 1  # (and its comma)
            if data and weight + size > KEYS_PAGE_BYTES:
                break
            data.append(view)
            weight += size
        more = len(records) > len(data)
        next_cursor = key_cursor(records[len(data) - 1]) if more else None
        return self.api.json(
            {"object": "list", "data": data, "limit": limit, "has_more": more, "next_cursor": next_cursor}
        )

    async def admin_create(self, request: Request) -> Response:
        """A root key, within the bounds of the admin key creating it: a temporary, narrow admin key (60 s, one
        model, $0.01, one address) created a permanent admin key with every model, no budget and no IP ranges."""
        creator = await self._admin(request, hands_out_a_secret=True)
        spec = await self.api.parse(request, AdminKeySpec, max_bytes=KEY_BODY_BYTES)
        spending = spending_bounds(creator)
        if spending:
            raise PermissionDeniedError(
                f"this admin key has {' and '.join(spending)} of its own, which a root key would escape (it spends "
                "apart): mint a child with POST /v1/keys, whose requests are held to them",
                code="admin_only",
            )
        record = record_from(spec, self.api.lineage(request), admin=spec.admin, now=time.time())
        narrow_to(record, spec, creator, "a new key", "this admin key")
        minted = await self.admin.mint(record)
        return self.api.json({**key_view(minted.record), "key": minted.key}, status=201, headers=SECRET_HEADERS)

    async def admin_show(self, request: Request) -> Response:
        await self._admin(request)
        record = await self._target(request)
        lineage = await self.gateway.keys.lineage(record)
        state = {**self._line_tags(lineage), **await self._spent(lineage, await self._budget_state(lineage))}
        return self.api.json({**key_view(record), **state})

    async def admin_rotate(self, request: Request) -> Response:
        caller = await self._admin(request, hands_out_a_secret=True)
        spec = await self.api.parse(request, RotateSpec, empty_ok=True, max_bytes=KEY_BODY_BYTES)
        grace = spec.grace_seconds
        minted = await self._change(
            request, lambda record: self.admin.rotate(record, grace), "rotating", (caller, "rotate")
        )
        return self.api.json({**key_view(minted.record), "key": minted.key}, headers=SECRET_HEADERS)

    async def usage(self, request: Request) -> Response:
        """The caller's family's report. The family is walked where it is written, its root's home region: this
        region's replica has a child minted in another region only with replication, and left out its spend."""
        key = await self.api.authenticate(request, allow_x_api_key=True)
        root_home = self.api.lineage(request)[-1].home_region
        return await self._usage(request, key, await with_descendants(self.gateway.store, key.id, root_home))

    async def admin_usage(self, request: Request) -> Response:
        """Every key's report, or with `key=ID` that key's family's. A key the store never had (a typo) is a 404, as
        `gateway usage --key` exits 1 (not an empty 200); one whose record is gone (purged after its expiry or
        revocation) is known by its lines in the window or its children's links, and reports them."""
        caller = await self._admin(request)
        given = request.query_params.getlist("key")
        if not given:
            return await self._usage(request, caller, None)
        if len(given) > 1 or not given[0].strip():
            # Read as no filter (an empty one), or as its last (`?key=ID&key=`), a script's `?key=$KEY_ID` with the
            # variable unset was answered every key's spend as that key's (as `gateway usage --key ''` was; found by
            # review, usagerev37).
            raise InvalidRequestError("key takes one key's id, given once and not empty", param="key")
        key_id = given[0]
        if may_hold_a_secret(key_id):  # a key, secret and all: never echoed (as `gateway usage --key` has it)
            raise InvalidRequestError(f"key takes {NOT_THE_KEY}", param="key")
        if not is_key_id(key_id):  # (not a store read: `is_key_id`)
            raise NotFoundError(
                f"{no_such_key(key_id)} (nor any usage of it in the window)", code="not_found", param="key"
            )
        record, family = await family_of(self.gateway.store, key_id, self._family_home(request))
        recordless = family == [key_id] and record is None
        return await self._usage(request, caller, family, key_id if recordless else None)

    async def _usage(
        self, request: Request, caller: KeyRecord, key_ids: list[str] | None, recordless: str | None = None
    ) -> Response:
        """A report, in its turn (`ReportGate`), its lines read and summed off the event loop: a report over 300,000
        lines held every other request of the process for 10 s, and five at once from one client key for 43 s.
        `recordless`: a key asked for with no record and no children, a 404 unless it has lines in the window."""
        params = request.query_params
        for name in ONCE:
            if len(params.getlist(name)) > 1:
                # Read as its last, `?tag=team=a&tag=env=prod` reported every team's `env=prod` spend (found by
                # review, mergerev37): a filter is given once (a tag filter's pairs all in one).
                raise InvalidRequestError(f"{name} may be given once", param=name)
        # Filters and tag names as the caller's lines keep them: its own secret alone in one is redacted there.
        kept = partial(kept_unkeyed, lineage=self.api.lineage(request))
        spec = parse_report(
            params.get("since"),
            params.get("until"),
            params.get("group_by"),
            params.get("tag"),
            params.get("user"),
            params.get("session"),
            params.get("request_id"),
            kept,
        )
        page = parse_page(spec, params.get("limit"), params.get("cursor"))
        if page is not None:
            return await self._listing(request, caller, key_ids, recordless, LineListing(spec, page))
        views = parse_views(params.getlist("view"), kept)
        top = parse_top(params.get("top"))
        shape = params.get("format") or "json"
        if shape not in ("json", "csv"):
            raise InvalidRequestError(f"format must be json or csv, not {echoed(shape)}", param="format")
        if shape == "csv" and views:
            raise InvalidRequestError("view is for the JSON format: a CSV holds one table", param="view")
        if shape == "csv" and top is not None:
            raise InvalidRequestError("top is for the JSON format: a CSV holds every row", param="top")
        by_key = any("key" in groups for groups in (spec.group_by, *views))
        report = ReportBuilder(spec, views or None, top)
        async with self.reports.turn(caller):
            await self.gateway.store.scan_usage(UsageQuery(key_ids, spec.since, spec.until), report.add)
            if recordless is not None and not report.read:
                raise NotFoundError(
                    f"{no_such_key(recordless)} (nor any usage of it in the window)", code="not_found", param="key"
                )
            if top is not None:
                await asyncio.to_thread(report.fold)
            names = await key_names(self.gateway.keys.lookup, report.key_ids) if by_key else None
            answer = await asyncio.to_thread(report.answer, names, shape)
        if isinstance(answer, str):
            return Response(answer, media_type="text/csv")
        return self.api.json(answer)

    async def _listing(
        self,
        request: Request,
        caller: KeyRecord,
        key_ids: list[str] | None,
        recordless: str | None,
        listing: LineListing,
    ) -> Response:
        """`_usage`'s line items (`group_by=request`): a page of them, newest first, read as a report is (in its
        turn, off the event loop), the store's read starting at the page's cursor and ending with the page
        (`LineListing.fill`), and only the page's lines kept."""
        params = request.query_params
        if params.getlist("view"):
            raise InvalidRequestError(
                "view groups the lines: not beside group_by=request, which lists them", param="view"
            )
        if params.get("top"):
            raise InvalidRequestError(
                "top ranks groups of lines: not beside group_by=request, which lists them", param="top"
            )
        shape = params.get("format") or "json"
        if shape not in ("json", "csv"):
            raise InvalidRequestError(f"format must be json or csv, not {echoed(shape)}", param="format")
        async with self.reports.turn(caller):
            await listing.fill(self.gateway.store, key_ids)
            if recordless is not None and not listing.read:
                raise NotFoundError(
                    f"{no_such_key(recordless)} (nor any usage of it in the window)", code="not_found", param="key"
                )
            names = await key_names(self.gateway.keys.lookup, listing.key_ids)
            answer = await asyncio.to_thread(listing.answer, names, shape)
        if isinstance(answer, str):
            return Response(answer, media_type="text/csv")
        return self.api.json(answer)

    async def admin_update(self, request: Request) -> Response:
        await self._admin(request)
        spec = await self.api.parse(request, KeyUpdateSpec, max_bytes=KEY_BODY_BYTES)
        tags = validate_tags(spec.tags, "tags", partial(kept_unkeyed, lineage=self.api.lineage(request)))
        updated = await self._change(request, lambda record: self.admin.retag(record, tags), "updating")
        return self.api.json(key_view(updated))

    async def admin_revoke(self, request: Request) -> Response:
        authority = await self._authority(request)
        revoked = await self._change(request, self.admin.revoke, "revoking", (authority, "revoke"))
        return self.api.json(key_view(revoked))
