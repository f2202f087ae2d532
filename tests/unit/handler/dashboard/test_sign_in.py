"""`POST /dashboard/sign-in` under made-up tokens: each failure was a store read (on DynamoDB, billed), without
bound; and what its answer shows of the key it signs in as."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from handler.api.app import create_app
from handler.config import parse_config
from handler.dashboard.routes import (
    SIGN_IN_ADDRESSES,
    SIGN_IN_FAILURES,
    SIGN_IN_WINDOW_SECONDS,
    SignInFailures,
    issue_sign_in,
    sign_in_source,
)
from handler.errors import RateLimitError
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin, MintedKey
from handler.pipeline.keys import KeyService
from handler.ports import KeyRecord


def counting_reads(gateway: Gateway) -> list[str]:
    """The sign-in tokens (their hashes) the gateway's store is asked for, from now on."""
    asked: list[str] = []
    take = gateway.store.take_sign_in

    async def counted(token_hash: str) -> str | None:
        asked.append(token_hash)
        return await take(token_hash)

    gateway.store.take_sign_in = counted  # type: ignore[method-assign]
    return asked


def link_token(gateway: Gateway, name: str = "admin") -> str:
    """A live sign-in link's token, for a fresh admin key named `name`."""

    async def issue() -> str:
        template = KeyRecord(id="", name=name, secret_hash="", created_at=0, admin=True)
        admin = (await KeyAdmin(gateway.keys).mint(template)).record
        return await issue_sign_in(gateway.store, admin, time.time())

    return asyncio.run(issue())


def sign_in(client: TestClient, token: str, forwarded: str | None = None) -> Any:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    return client.post("/dashboard/sign-in", json={"token": token}, headers=headers)


def test_the_eleventh_failed_sign_in_in_a_minute_is_a_429_without_a_store_read() -> None:
    """10 made-up tokens a minute from an address are read and refused (401); the 11th, and any more, is a 429 with
    `retry-after` that reads nothing, a real link's token too; another address signs in as before."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    app = create_app(gateway)
    asked = counting_reads(gateway)
    with TestClient(app, client=("198.51.100.1", 50000)) as guesser:
        for number in range(SIGN_IN_FAILURES):
            assert sign_in(guesser, f"made-up-{number}").status_code == 401
        assert len(asked) == SIGN_IN_FAILURES
        for token in ("made-up-more", link_token(gateway)):
            refused = sign_in(guesser, token)
            assert refused.status_code == 429 and len(asked) == SIGN_IN_FAILURES
            assert 1 <= int(refused.headers["retry-after"]) <= SIGN_IN_WINDOW_SECONDS
            assert refused.headers["x-should-retry"] == "true"
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
            assert "failed sign-ins from this address" in error["message"]
        operator = TestClient(app, client=("203.0.113.7", 50000))
        answer = sign_in(operator, link_token(gateway))
        assert answer.status_code == 200 and answer.json()["key"].startswith("gwk_")


FORGED = b'{"token": "x"}'  # a hidden form's `enctype="text/plain"` body, which needs no CORS preflight


def test_a_body_the_page_never_sends_is_not_counted_against_its_address() -> None:
    """A try was counted before its body was read: ten form posts from another site's page open in the operator's
    browser (each a 400 for its content type) were ten failures of the operator's address, and the operator's own
    link, opened within the minute, a 429 (found by review). Only tries that reach the token's lookup count."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    asked = counting_reads(gateway)
    with TestClient(create_app(gateway), client=("198.51.100.7", 50000)) as browser:
        for _ in range(2 * SIGN_IN_FAILURES):
            plain = browser.post("/dashboard/sign-in", content=FORGED, headers={"content-type": "text/plain"})
            assert plain.status_code == 400, plain.text
            assert browser.post("/dashboard/sign-in", json={}).status_code == 400
        assert asked == []
        own = sign_in(browser, link_token(gateway))
        assert own.status_code == 200, own.text
        for number in range(SIGN_IN_FAILURES):  # tries that reach the lookup count, as before
            assert sign_in(browser, f"made-up-{number}").status_code == 401
        assert sign_in(browser, "made-up-more").status_code == 429


def test_a_sign_in_another_sites_page_sent_is_refused_before_it_is_counted() -> None:
    """What a browser says of a request's sender (`Sec-Fetch-Site`, else `Origin` against the host it was sent to)
    refuses another site's (403 `cross_site_request`) before its body is read or its try counted; the dashboard's own
    page signs in, from a browser from before `Sec-Fetch-Site` too."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    asked = counting_reads(gateway)
    with TestClient(create_app(gateway), client=("198.51.100.7", 50000), base_url="http://127.0.0.1:8080") as browser:
        for sent_by in (
            {"origin": "https://elsewhere.example", "sec-fetch-site": "cross-site"},
            {"origin": "https://app.gateway.example", "sec-fetch-site": "same-site"},
            {"origin": "https://elsewhere.example"},  # (a browser from before Sec-Fetch-Site)
            {"origin": "null"},  # (a sandboxed frame's)
        ):
            for body in (
                {"content": FORGED, "headers": {"content-type": "text/plain", **sent_by}},
                {"json": {"token": "made-up"}, "headers": sent_by},
            ):
                for _ in range(SIGN_IN_FAILURES):
                    forged = browser.post("/dashboard/sign-in", **body)
                    assert forged.status_code == 403, forged.text
                    assert forged.json()["error"]["code"] == "cross_site_request"
        assert asked == []
        for sent_by in (
            {"origin": "http://127.0.0.1:8080", "sec-fetch-site": "same-origin"},
            {"origin": "http://127.0.0.1:8080"},
        ):
            own = browser.post("/dashboard/sign-in", json={"token": link_token(gateway)}, headers=sent_by)
            assert own.status_code == 200, own.text
            assert own.json()["key"].startswith("gwk_")


def test_a_sign_in_that_succeeds_is_not_counted_against_its_address() -> None:
    gateway = build_gateway(store_url="sqlite://", environ={})
    with TestClient(create_app(gateway), client=("198.51.100.1", 50000)) as operator:
        for _ in range(SIGN_IN_FAILURES + 2):
            assert sign_in(operator, link_token(gateway)).status_code == 200
        assert sign_in(operator, "made-up").status_code == 401


def test_a_sign_in_shows_a_key_held_in_the_admin_keys_name_redacted() -> None:
    """An admin key named with a key by an earlier version (names holding one are refused now) is listed with the
    key `[REDACTED]`, as docs/keys-and-budgets.md says of every place its name is shown; the sign-in answered
    `signed_in_as` with the name as stored, the other key whole, to whoever opened the link (found by review)."""
    pasted = "gwk_abcdefghijkm_" + "Ab3" * 14 + "x"  # a key of this gateway, pasted into the name
    gateway = build_gateway(store_url="sqlite://", environ={})
    with TestClient(create_app(gateway)) as operator:
        answer = sign_in(operator, link_token(gateway, f"ops {pasted}"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["signed_in_as"] == "ops [REDACTED]" and pasted not in answer.text


def test_x_forwarded_for_names_the_address_only_behind_a_trusted_proxy() -> None:
    """A client choosing its own `X-Forwarded-For` would have a fresh window for every try: the header is read only
    from a proxy `gateway.trusted_proxies` names, as for a key's `allow_ips`."""
    direct = build_gateway(store_url="sqlite://", environ={})
    with TestClient(create_app(direct), client=("198.51.100.1", 50000)) as client:
        answers = [sign_in(client, "made-up", f"10.0.{number}.1") for number in range(SIGN_IN_FAILURES + 1)]
    assert [answer.status_code for answer in answers] == [401] * SIGN_IN_FAILURES + [429]
    config = parse_config({"gateway": {"trusted_proxies": ["127.0.0.0/8"]}}, set())
    proxied = build_gateway(config=config, store_url="sqlite://", environ={})
    with TestClient(create_app(proxied), client=("127.0.0.1", 50000)) as proxy:
        for _ in range(SIGN_IN_FAILURES):
            assert sign_in(proxy, "made-up", "198.51.100.1").status_code == 401
        assert sign_in(proxy, "made-up", "198.51.100.1").status_code == 429
        assert sign_in(proxy, "made-up", "6.6.6.6, 198.51.100.1").status_code == 429  # (its own word is not read)
        assert sign_in(proxy, "made-up", "198.51.100.2").status_code == 401


def test_the_failures_kept_stay_bounded_and_ended_windows_go() -> None:
    """Addresses by the thousand (a client's IPv6 range, or a botnet) hold at most `SIGN_IN_ADDRESSES` windows; a
    window that ended is dropped as new ones come."""
    now = [1000.0]
    failures = SignInFailures(clock=lambda: now[0])
    for number in range(3 * SIGN_IN_ADDRESSES):
        failures.start(f"198.51.{number // 256 % 256}.{number % 256}")
        assert len(failures._windows) <= SIGN_IN_ADDRESSES
    now[0] += SIGN_IN_WINDOW_SECONDS
    failures.start("203.0.113.7")
    assert list(failures._windows) == ["203.0.113.7"]


async def test_tries_sent_at_once_cannot_pass_the_bound_together() -> None:
    """A try is counted as it starts, not once the store has refused it: tries sent together are held to the bound
    too."""
    failures = SignInFailures()
    started = 0
    for _ in range(3 * SIGN_IN_FAILURES):
        try:
            failures.start("198.51.100.1")
            started += 1
        except RateLimitError as refused:
            assert 1 <= int(refused.headers["retry-after"]) <= SIGN_IN_WINDOW_SECONDS
    assert started == SIGN_IN_FAILURES


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("::ffff:198.51.100.1", "198.51.100.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        (None, ""),
        ("unknown" * 100, ("unknown" * 100)[:64]),
    ],
)
def test_an_address_is_counted_by_its_host_an_ipv6_one_by_its_64(address: str | None, source: str) -> None:
    assert sign_in_source(address) == source


# --- a session and its admin key's revocation ------------------------------------------------------------------------


CACHE_SECONDS = 0.3


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def signing_in(store_url: str) -> tuple[Gateway, httpx.AsyncClient, MintedKey, str]:
    """A gateway keeping keys `CACHE_SECONDS` on `store_url`, its app's client, an admin key used once (its record
    held live in the gateway's cache), and a sign-in link's token for it."""
    config = parse_config({"gateway": {"key_cache_seconds": CACHE_SECONDS}, "providers": {}, "models": {}}, set())
    gateway = build_gateway(config=config, store_url=store_url, environ={})
    template = KeyRecord(id="", name="admin", secret_hash="", created_at=0, admin=True)
    admin = await KeyAdmin(gateway.keys).mint(template)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")
    assert (await http.get("/admin/keys", headers=bearer(admin.key))).status_code == 200
    return gateway, http, admin, await issue_sign_in(gateway.store, admin.record, time.time())


async def revoked_elsewhere(gateway: Gateway, key_id: str) -> None:
    """`key_id` revoked by another process (`gateway keys revoke`): this gateway's cache is not told."""
    record = await gateway.store.get_key(key_id)
    assert record is not None
    await KeyAdmin(KeyService(gateway.store, 0)).revoke(record)


async def test_a_sign_in_whose_key_is_revoked_during_the_exchange_is_refused_and_its_session_revoked(
    store_url: str,
) -> None:
    """The admin key revoked by another process after the sign-in read it live and before its session was stored:
    the revocation walked the key's family before the session was in it. The sign-in answered the session (200), whose
    record stayed live under its revoked parent for good (shown live, never purged), and which this process served
    for as long as it held the parent's record (`key_cache_seconds`; found by review). It is refused now, the session
    revoked with its parent."""
    gateway, http, admin, token = await signing_in(store_url)
    create_key = gateway.store.create_key

    async def revoked_meanwhile(record: KeyRecord) -> None:
        await revoked_elsewhere(gateway, admin.record.id)
        await create_key(record)

    gateway.store.create_key = revoked_meanwhile  # type: ignore[method-assign]
    answer = await http.post("/dashboard/sign-in", json={"token": token})
    sessions = [record for record in await gateway.store.list_keys() if record.parent_id == admin.record.id]
    await http.aclose()
    await gateway.aclose()
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "key_revoked", answer.text
    assert "gwk_" not in answer.text
    assert [(record.revoked_at is not None, record.revoked_by) for record in sessions] == [(True, admin.record.id)]


async def test_a_session_is_refused_once_its_admin_key_is_revoked_within_the_key_caches_staleness(
    store_url: str,
) -> None:
    """Signed in, then its admin key revoked by another process: every use of the session checks its parent, so
    it is refused once this process's copy of the parent is `key_cache_seconds` old, not when the session ends."""
    gateway, http, admin, token = await signing_in(store_url)
    answer = await http.post("/dashboard/sign-in", json={"token": token})
    assert answer.status_code == 200, answer.text
    session = answer.json()["key"]
    assert (await http.get("/admin/keys", headers=bearer(session))).status_code == 200
    await revoked_elsewhere(gateway, admin.record.id)
    await asyncio.sleep(CACHE_SECONDS + 0.05)
    refused = await http.get("/admin/usage", headers=bearer(session))
    await http.aclose()
    await gateway.aclose()
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "key_revoked", refused.text
