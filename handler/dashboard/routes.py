"""The spend dashboard: `GET /dashboard` and its static files (script, style sheet, icon), shipped in the package, and
`POST /dashboard/sign-in`, which trades a one-time link's token for a session (the routes are rows of
`handler/api/route_table.py`).

Auth. A browser cannot send `Authorization` on a page load, so the page is split in two:

- The shell (`/dashboard`, `/dashboard/static/dashboard.js`, `.css`, `icon.svg`) is static and public: it holds no data,
  no key and nothing about this deployment; anyone could read the same bytes in the package.
- Every figure on the page comes from the admin API (`/admin/usage`, `/admin/keys`, and `/health`'s count of
  settlements waiting in the spool, given to admin keys only), fetched by the page's
  script with `Authorization: Bearer <admin key>`. Without a key that call answers 401, with a non-admin
  key 403 `admin_only`, exactly as for any other client: the dashboard adds no new way in.

The key is typed into the page and kept in `sessionStorage` (gone when the tab closes), never in the URL,
a cookie or the server's logs: a cookie would make every admin route CSRF-able and a key in the URL would
leak into history and `Referer`. The other design (serve the page only to a request carrying the key as a
header, with the data inlined) would work only through a proxy that adds the header, and would put the
ledger into an HTML page that browsers and proxies may cache.

Signing in without pasting a key. `gateway dashboard` (on the machine with the store) keeps the hash of a fresh
random token standing for an admin key, for `SIGN_IN_SECONDS`, and opens `/dashboard#sign-in=<token>`. The
token rides in the fragment, which a browser never sends to a server: it is in no access log, proxy log or
`Referer`. The page takes it out of the address bar at once (`history.replaceState`) and posts it to
`POST /dashboard/sign-in`, which deletes it as it reads it (single use) and answers a session: a new admin key,
a child of the one the link stood for, expiring after `SESSION_SECONDS` (or with its parent, if sooner). From
there the page works as if that key had been typed in; its "Sign out" revokes the session, and revoking the
parent ends every session under it: each use of a session checks it and its ancestors as any key's is (within
`gateway.key_cache_seconds`), and a parent revoked while its link was exchanged revokes the session just minted and
refuses the sign-in (`KeyAdmin.mint_under`): it answered the session, whose record stayed live under its revoked
parent for good.

Failed sign-ins. Every token sent costs a store read (on DynamoDB, billed), and the route takes no key: a client
address has `SIGN_IN_FAILURES` tries that fail a `SIGN_IN_WINDOW_SECONDS`, then a 429 with `retry-after` until its
window ends, without a store read (`SignInFailures`; per process, so per worker and per Lambda environment). The
address is the one the app checks keys' `allow_ips` against (`Api.client_ip`): the peer, or API Gateway's source IP
on Lambda, and `X-Forwarded-For` only behind a proxy `gateway.trusted_proxies` names. Only a try that reaches the
token's lookup is counted: one sent by another site's page (`cross_site`: a 403) or with a body the page never sends
(a 400) costs no store read, and counted, it let any page open in the operator's browser lock the operator out.

The page runs under `Content-Security-Policy: default-src 'self'` with no inline script or style, so a
key name or model name shown on it cannot run as code; `form-action 'none'` keeps the key form from ever
submitting the key as a query string. Nothing is fetched from anywhere but this gateway (no CDN, no fonts).
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TypeGuard
from urllib.parse import urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from handler.dashboard.assets import ASSETS, PAGE
from handler.errors import AuthenticationError, NotFoundError, PermissionDeniedError, RateLimitError
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import hash_secret
from handler.ports import KeyRecord, Store
from handler.redaction import clipped, echoed, unkeyed

SIGN_IN_SECONDS = 60
SESSION_SECONDS = 8 * 3600
SESSION_KEY_NAME = "dashboard session"
NO_LONGER_ADMIN = "the key this link signs in as is no longer a live admin key"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def read_asset(name: str) -> bytes:
    """One file of `handler/dashboard/static/`, as installed with the package."""
    return (resources.files("handler.dashboard") / "static" / name).read_bytes()


async def issue_sign_in(store: Store, admin: KeyRecord, now: float) -> str:
    """A one-time token that signs the dashboard in as `admin` within `SIGN_IN_SECONDS` (only its hash is kept)."""
    token = secrets.token_urlsafe(32)
    await store.put_sign_in(hash_secret(token), admin.id, now + SIGN_IN_SECONDS)
    return token


def live_admin(record: KeyRecord | None, now: float) -> TypeGuard[KeyRecord]:
    """Whether `record` is an admin key neither revoked (whenever it was: `KeyService._check_live`) nor expired."""
    return (
        record is not None
        and record.admin
        and record.revoked_at is None
        and (record.expires_at is None or record.expires_at > now)
    )


# The sign-in route takes no key: its body (a token of at most 200 characters) is refused past this before it is
# read, where the gateway's `max_body_bytes` let anyone have 8 MiB read, parsed and walked (1 s of the event loop).
SIGN_IN_BYTES = 4096


# Sign-ins that may fail from one client address in a window, the window, and how many addresses' windows a process
# keeps (the oldest dropped first past it: one entry each, whatever the addresses a client makes up).
SIGN_IN_FAILURES = 10
SIGN_IN_WINDOW_SECONDS = 60
SIGN_IN_ADDRESSES = 4096


def sign_in_source(address: str | None) -> str:
    """Whose tries a sign-in counts against: its client's address, an IPv6 one by its /64 (one host's usual share:
    counted by address, a client would have 2**64 windows to spread its tries over)."""
    if address is None:
        return ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # (no address: an unreadable `X-Forwarded-For` hop a trusted proxy passed on)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)


class SignInFailures:
    """Sign-ins counted by client address in fixed windows of `SIGN_IN_WINDOW_SECONDS` from each address's first try,
    for at most `SIGN_IN_ADDRESSES` addresses. A try is counted as it starts and given back if it succeeds, so that
    tries sent at once cannot pass the bound together."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # source -> (window's start, tries); oldest window first

    def start(self, source: str) -> None:
        """Count a try from `source`, or a 429 if its window holds `SIGN_IN_FAILURES` already."""
        now = self.clock()
        window = self._windows.get(source)
        if window is not None and now - window[0] < SIGN_IN_WINDOW_SECONDS:
            start, tries = window
            if tries >= SIGN_IN_FAILURES:
                wait = max(1, math.ceil(start + SIGN_IN_WINDOW_SECONDS - now))
                raise RateLimitError(
                    f"{tries} failed sign-ins from this address within {SIGN_IN_WINDOW_SECONDS} seconds; retry in "
                    f"{wait}s, with a new link from `gateway dashboard`",
                    headers={"retry-after": str(wait)},
                )
            self._windows[source] = (start, tries + 1)
            return
        self._windows.pop(source, None)
        while self._windows:  # ended windows go, oldest first
            oldest = next(iter(self._windows))
            if now - self._windows[oldest][0] < SIGN_IN_WINDOW_SECONDS:
                break
            del self._windows[oldest]
        self._windows[source] = (now, 1)
        if len(self._windows) > SIGN_IN_ADDRESSES:
            del self._windows[next(iter(self._windows))]

    def succeeded(self, source: str) -> None:
        """Give back the try a sign-in from `source` counted."""
        window = self._windows.get(source)
        if window is not None and window[1] > 0:
            self._windows[source] = (window[0], window[1] - 1)


def cross_site(request: Request) -> str | None:
    """What says the request was sent by another site's page (None where nothing does): the browser's
    `Sec-Fetch-Site` other than `same-origin`, or, from a browser that sends none, an `Origin` whose host is not the
    one the request was sent to (`Host`). A client that is no browser sends neither, and is no page's to forge."""
    fetched_from = request.headers.get("sec-fetch-site")
    if fetched_from is not None:
        return None if fetched_from == "same-origin" else f"a {clipped(fetched_from)} request (Sec-Fetch-Site)"
    origin = request.headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    default = {"http": ":80", "https": ":443"}.get(parts.scheme, "")
    if parts.netloc and parts.netloc.lower() in (host.lower(), host.lower().removesuffix(default)):
        return None
    return f"a page of another origin ({clipped(origin)})"


class SignIn(BaseModel):
    """The body of `POST /dashboard/sign-in`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    token: str = Field(min_length=1, max_length=200)


class Dashboard:
    """Serves the dashboard's shell (the files are read once, when the app is built) and trades sign-in links
    for sessions."""

    def __init__(
        self,
        parse: Callable[..., Awaitable[SignIn]],
        client_ip: Callable[[Request], str | None],
        store: Store,
        keys: KeyAdmin,
    ) -> None:
        self.parse, self.client_ip, self.store, self.keys = parse, client_ip, store, keys
        self.sign_ins = SignInFailures()
        self.page = read_asset(PAGE)
        self.assets = {name: (read_asset(name), media_type) for name, media_type in ASSETS.items()}

    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.assets.get(name)
        if found is None:
            raise NotFoundError(f"no dashboard asset {echoed(name)}", code="not_found")
        body, media_type = found
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

    async def sign_in(self, request: Request) -> Response:
        """A sign-in link's token, once, for a session key (see the module docstring). A try is counted against its
        address only once it reaches the token's lookup: one another site's page sent (`cross_site`), or whose body
        the page never sends (not JSON, no token), was counted first, and ten such form posts a minute, from any page
        open in the operator's browser, kept the operator's own link out (a 429) for as long as the page stayed open.
        The count and the lookup come with no wait between them, so tries sent at once are held to the bound."""
        why = cross_site(request)
        if why is not None:
            raise PermissionDeniedError(
                f"a sign-in comes from the dashboard's own page, not {why}: open the link `gateway dashboard` prints",
                code="cross_site_request",
            )
        spec = await self.parse(request, SignIn, max_bytes=SIGN_IN_BYTES)
        source = sign_in_source(self.client_ip(request))
        self.sign_ins.start(source)
        key_id = await self.store.take_sign_in(hash_secret(spec.token))
        if key_id is None:
            raise AuthenticationError(
                "this sign-in link was used already or has expired (a link works once, within "
                f"{SIGN_IN_SECONDS} seconds): run `gateway dashboard` again for a new one",
                code="sign_in_link_expired",
            )
        now = time.time()
        # (As its home region has it: a revocation made there a moment ago is not in this region's replica yet.)
        admin = await self.store.get_key_latest(key_id)
        if not live_admin(admin, now):
            raise AuthenticationError(NO_LONGER_ADMIN, code="key_revoked")
        self.sign_ins.succeeded(source)
        ends = now + SESSION_SECONDS if admin.expires_at is None else min(now + SESSION_SECONDS, admin.expires_at)
        session = KeyRecord(
            id="",
            name=SESSION_KEY_NAME,
            secret_hash="",
            created_at=now,
            models=list(admin.models),
            allow_ips=list(admin.allow_ips),
            admin=True,
            expires_at=ends,
            parent_id=admin.id,
            ancestors=[*admin.ancestors, admin.id],
        )
        try:
            # (A revocation of the admin key, or of an ancestor, made since it was read above walked the family before
            # the session was in it: the session is revoked with it and the sign-in refused, as a child's mint is.)
            minted = await self.keys.mint_under(session)
        except AuthenticationError:
            raise AuthenticationError(NO_LONGER_ADMIN, code="key_revoked") from None
        headers = {**SECURITY_HEADERS, "cache-control": "no-store"}
        # (The admin key's name as every key list shows it: one named with a key by an earlier version showed it whole.)
        signed_in_as = unkeyed(admin.name)
        payload = {"key": minted.key, "key_id": minted.record.id, "expires_at": ends, "signed_in_as": signed_in_as}
        return Response(orjson.dumps(payload), media_type="application/json", headers=headers)
