"""Keys, scopes, budgets and rate limits through the running gateway."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from adapters.providers.registry import REGISTRY
from adapters.store import open_store
from handler.api.key_routes import key_cursor
from handler.config import parse_config
from handler.pipeline.budgets import period_of
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService, split_key
from handler.pipeline.pricing import estimate_prompt_tokens, price_for, worst_case_usd
from handler.ports import Admission, KeyRecord, RateCharge
from handler.schemas import ChatRequest
from tests.conftest import clear_of_period_end
from tests.functional.conftest import Running, fresh_minute, openai_client, param_store_url, serve_gateway
from tests.functional.test_costs_edges import MODEL, completion
from tests.support.inprocess import serve
from tests.support.servers import ServerThread
from tests.unit.handler.pipeline.test_keys import BEDROCK, VERSIONED

HI = [{"role": "user", "content": "Hi"}]


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(running: Running, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": HI, **extra}
    return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers(key), timeout=10)


def test_admin_routes_need_an_admin_key(running: Running, key: str, mint: Any) -> None:
    denied = httpx.get(f"{running.url}/admin/keys", headers=headers(key))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_only"
    admin = mint(admin=True)
    created = httpx.post(
        f"{running.url}/admin/keys",
        headers=headers(admin),
        json={"name": "svc", "models": ["gpt-*"], "budget_usd": 1, "rpm": 5, "allow_ips": ["127.0.0.0/8"]},
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("gwk_") and "secret_hash" not in body
    shown = httpx.get(f"{running.url}/admin/keys/{body['id']}", headers=headers(admin)).json()
    assert shown["budget_usd"] == 1 and shown["remaining_usd"] == 1 and "key" not in shown
    bad = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "x", "budget_usd": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "budget_usd"
    unknown = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "x", "colour": "red"})
    assert unknown.status_code == 400


def listed(running: Running, admin: str, query: str, minted: list[str] | None = None) -> list[list[str]]:
    """The ids of `GET /admin/keys?{query}` page after page, to the last page (each page's `limit`, `has_more` and
    `next_cursor` checked); with `minted`, a root key is minted between pages (its id added)."""
    pages: list[list[str]] = []
    for answer in running.key_pages(admin, query):
        body = answer.json()
        pages.append([view["id"] for view in body["data"]])
        assert body["object"] == "list" and len(pages[-1]) <= body["limit"]
        assert body["has_more"] is (body["next_cursor"] is not None)
        if body["has_more"]:
            assert len(pages[-1]) == body["limit"] and "key" not in body["data"][0]
            if minted is not None:
                minted.append(split_key(running.mint(name="between pages"))[0])  # type: ignore[index]
    return pages


def every_key(running: Running, admin: str) -> dict[str, dict[str, Any]]:
    """Every key `GET /admin/keys` lists, by id, its pages followed."""
    return {view["id"]: view for page in running.key_pages(admin) for view in page.json()["data"]}


def stored_key_ids(running: Running) -> set[str]:
    """The id of every key in the store, read as another process would (not through the listing under test)."""

    async def read() -> set[str]:
        store = open_store(running.store_url)
        try:
            return {record.id for record in await store.list_keys()}
        finally:
            await store.close()

    return asyncio.run(read())


def test_the_key_listings_come_a_page_at_a_time_each_key_once(on_each_store: Running) -> None:
    """`GET /admin/keys` answered every key at once: on the buffered Lambda function a 413 past about 18,000 keys (its
    6 MB), and each call read every key (DynamoDB: its whole key index). Now a page holds `limit` keys (100 unless
    asked, at most 1,000) and `next_cursor` says where the next starts: pages followed with keys minted between them
    list every key that lived through them once (a key minted meanwhile once, or not at all), the same for a parent's
    children (`parent_id`); a client that sends no parameter gets the first page, as it got the listing. A `limit` or
    a `cursor` that makes no page is a 400 `invalid_request` naming it, in OpenAI's error shape."""
    running = on_each_store
    admin = running.mint(admin=True, name="lister")
    parent = running.mint(name="parent")
    children = []
    for number in range(7):
        minted = httpx.post(f"{running.url}/v1/keys", headers=headers(parent), json={"name": f"child {number}"})
        assert minted.status_code == 201, minted.text
        children.append(minted.json()["id"])

    before = stored_key_ids(running)
    first = httpx.get(f"{running.url}/admin/keys", headers=headers(admin)).json()
    assert first["limit"] == 100 and len(first["data"]) == min(100, len(before))
    assert first["has_more"] is (len(before) > 100)
    minted: list[str] = []
    pages = listed(running, admin, "limit=9", minted)
    ids = [key_id for page in pages for key_id in page]
    assert len(ids) == len(set(ids)) and before <= set(ids) <= before | set(minted), len(pages)
    parent_id = split_key(parent)[0]  # type: ignore[index]
    theirs = listed(running, admin, f"parent_id={parent_id}&limit=3")
    assert [len(page) for page in theirs] == [3, 3, 1]
    assert sorted(key_id for page in theirs for key_id in page) == sorted(children)
    assert listed(running, admin, f"parent_id={parent_id}&limit=7") == [sorted(children)]

    # The place of a root key (the admin key's), as every key's listing gives it: not one of the parent's children.
    other = key_cursor(KeyRecord(id=split_key(admin)[0], name="", secret_hash="", created_at=0))  # type: ignore[index]
    for query, param in (
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=W251bGwsIiJd", "cursor"),  # ([null, ""]: no key's place)
        (f"parent_id={parent_id}&cursor={other}", "cursor"),  # (a place in another listing)
    ):
        refused = httpx.get(f"{running.url}/admin/keys?{query}", headers=headers(admin))
        assert refused.status_code == 400, (query, refused.text)
        error = refused.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request", error
        assert error["param"] == param and "message" in error, error


def test_the_key_listings_examples_run_as_printed(running: Running) -> None:
    """docs/keys-and-budgets.md's examples of `GET /admin/keys`, run with bash against the gateway: a page as the
    page shows it, and the loop that follows `next_cursor` to the last page (asking 4 keys a page, so that it follows
    several) prints every key of the store once."""
    page = Path(__file__).resolve().parents[2] / "docs" / "keys-and-budgets.md"
    section = page.read_text().split("\n### Listing keys\n", 1)[1].split("\n## ", 1)[0]
    first, loop, _ = re.findall(r"^```sh\n(.*?)^```$", section, re.S | re.M)  # (the third: the CLI's loop)
    environ = {**os.environ, "GATEWAY_KEY": running.mint(admin=True, name="docs")}
    for _ in range(4):  # (five keys at least, the admin's too: more than one page of 4, run alone or not)
        running.mint(name="docs listing")

    def run(script: str) -> str:
        script = script.replace("http://127.0.0.1:8080", running.url).replace("limit=1000", "limit=4")
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=environ, capture_output=True, text=True)
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    shown = orjson.loads(run(first))
    assert shown["limit"] == 2 and len(shown["data"]) == 2 and shown["has_more"] and shown["next_cursor"]

    printed = [line.split("\t")[0] for line in run(loop).splitlines()]
    assert sorted(printed) == sorted(stored_key_ids(running)) and len(printed) > 4  # (more than one page of 4)


def test_an_admin_key_creates_rotates_and_revokes_only_within_its_own_bounds(running: Running, mint: Any) -> None:
    """A temporary, narrow admin key (60 s, gpt-4o-mini, $0.01, 127.0.0.1 only) created a permanent root admin key
    with every model, no budget and no IP ranges (201), and rotated the operator's own admin key with no grace,
    locking the operator out (found by review). Now what it creates takes its expiry, models and ranges (wider is
    refused), a key with a budget or rates of its own creates no root key at all (it would spend apart), and it
    rotates or revokes only keys its bounds hold."""
    operator = mint(admin=True)
    operator_id = httpx.get(f"{running.url}/v1/key", headers=headers(operator)).json()["id"]
    admin_keys = f"{running.url}/admin/keys"

    def create(by: str, **body: Any) -> httpx.Response:
        return httpx.post(admin_keys, headers=headers(by), json={"name": "k", **body})

    narrow = {"expires_in_seconds": 60, "models": ["gpt-4o-mini"], "allow_ips": ["127.0.0.1/32"]}
    contractor = create(operator, admin=True, **narrow).json()
    forever = create(contractor["key"], admin=True)
    assert forever.status_code == 201, forever.text
    bounds = ("expires_at", "models", "allow_ips")
    assert {k: forever.json()[k] for k in bounds} == {k: contractor[k] for k in bounds}
    assert forever.json()["expires_at"] is not None and forever.json()["admin"] is True
    for wider, status, param in (
        ({"models": ["*"]}, 403, None),
        ({"expires_in_seconds": 3600}, 400, "expires_in_seconds"),
        ({"allow_ips": ["10.0.0.0/8"]}, 400, "allow_ips"),
    ):
        refused = create(contractor["key"], **wider)
        assert refused.status_code == status and refused.json()["error"].get("param") == param, refused.text
        assert "key" not in refused.json()

    for action, body in (("rotate", {"grace_seconds": 0}), ("revoke", None)):
        for target in (operator_id, create(operator).json()["id"]):  # the operator's, and an unbounded client key
            refused = httpx.post(f"{admin_keys}/{target}/{action}", headers=headers(contractor["key"]), json=body)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only", refused.text
            assert "key" not in refused.json()
    assert httpx.get(f"{running.url}/v1/key", headers=headers(operator)).status_code == 200
    within = create(operator, **{**narrow, "expires_in_seconds": 30}).json()  # the contractor's to rotate, revoke
    rotated = httpx.post(f"{admin_keys}/{within['id']}/rotate", headers=headers(contractor["key"]), json={})
    assert rotated.status_code == 200 and "key" in rotated.json()
    own = httpx.post(f"{admin_keys}/{contractor['id']}/rotate", headers=headers(contractor["key"]), json={})
    assert own.status_code == 200
    revoked = httpx.post(f"{admin_keys}/{forever.json()['id']}/revoke", headers=headers(own.json()["key"]))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

    budgeted = create(operator, admin=True, budget_usd=0.01).json()["key"]
    for body in ({}, {"budget_usd": 0.01}, {"admin": True, "budget_usd": 0.001}):
        refused = create(budgeted, **body)
        assert refused.status_code == 403 and "POST /v1/keys" in refused.json()["error"]["message"], refused.text
    child = httpx.post(f"{running.url}/v1/keys", headers=headers(budgeted), json={"name": "c"}).json()
    assert httpx.post(f"{admin_keys}/{child['id']}/rotate", headers=headers(budgeted), json={}).status_code == 200
    assert httpx.post(f"{admin_keys}/{within['id']}/revoke", headers=headers(budgeted)).status_code == 403
    assert create(operator, admin=True).status_code == 201  # an admin key without bounds is as it was


def test_a_narrow_admin_key_revokes_a_key_whose_model_ids_are_within_its_patterns(running: Running, mint: Any) -> None:
    """An admin key bounded to 80 Bedrock profiles with any version (`...-v1:*`) revokes a key of the 80 ids: its
    check of the key's models against its own ran out of steps (each pair walked over the ids' 35 shared characters)
    and was taken as "not within", a 403 `admin_only` saying its models were not within the admin key's (found by
    review)."""
    operator = mint(admin=True)
    narrow = mint(admin=True, name="team admin", models=VERSIONED)
    target = httpx.post(f"{running.url}/admin/keys", headers=headers(operator), json={"name": "t", "models": BEDROCK})
    assert target.status_code == 201, target.text
    revoked = httpx.post(f"{running.url}/admin/keys/{target.json()['id']}/revoke", headers=headers(narrow))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None, revoked.text


def test_revoke_and_rotate_with_grace(running: Running, mint: Any) -> None:
    admin = mint(admin=True)
    victim = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "v"}).json()
    assert chat(running, victim["key"]).status_code == 200
    rotated = httpx.post(
        f"{running.url}/admin/keys/{victim['id']}/rotate", headers=headers(admin), json={"grace_seconds": 60}
    ).json()
    assert chat(running, rotated["key"]).status_code == 200
    assert chat(running, victim["key"]).status_code == 200  # old secret within its grace period
    no_grace = httpx.post(
        f"{running.url}/admin/keys/{victim['id']}/rotate", headers=headers(admin), json={"grace_seconds": 0}
    ).json()
    assert chat(running, no_grace["key"]).status_code == 200
    assert chat(running, rotated["key"]).status_code == 401
    too_long = httpx.post(
        f"{running.url}/admin/keys/{victim['id']}/rotate", headers=headers(admin), json={"grace_seconds": 8 * 86400}
    )  # (`gateway keys rotate --grace` says the same)
    assert too_long.json()["error"]["message"] == "grace_seconds: Input should be less than or equal to 604800"
    httpx.post(f"{running.url}/admin/keys/{victim['id']}/revoke", headers=headers(admin))
    revoked = chat(running, no_grace["key"])
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "key_revoked"


def test_a_second_rotation_ends_the_first_old_secret_as_the_docs_say(running: Running, mint: Any) -> None:
    """A key keeps one previous secret: a second rotation within the first's grace cut the first old secret off at
    once, which the docs, promising the grace, did not say (docs/keys-and-budgets.md says so now)."""
    admin = mint(admin=True)
    original = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "r2"}).json()
    rotate = f"{running.url}/admin/keys/{original['id']}/rotate"
    first = httpx.post(rotate, headers=headers(admin), json={"grace_seconds": 3600}).json()
    assert chat(running, original["key"]).status_code == 200
    second = httpx.post(rotate, headers=headers(admin), json={"grace_seconds": 600}).json()
    assert second["rotation_grace_until"] < first["rotation_grace_until"]  # the grace of the secret just replaced
    assert chat(running, original["key"]).status_code == 401
    assert chat(running, first["key"]).status_code == chat(running, second["key"]).status_code == 200


def test_a_rotated_out_secret_serves_the_keys_requests_but_administers_nothing(on_each_store: Running) -> None:
    """An unbounded admin key rotated with the default grace (an hour, so that clients can move over): its old
    secret, perhaps the leaked one the rotation was to retire, rotated the key again with `grace_seconds: 0` (200, a
    secret of its own, the operator's new one 401 from then on) and created a permanent unbounded admin key (201),
    minted children and revoked keys (found by review). Within its grace it now serves the key's requests and
    `GET /v1/key`, as the docs promise, and every route that would use the key's admin powers, or mint a key
    under it, is a 403 `admin_only` saying so, on each store."""
    running = on_each_store
    operator = running.mint(admin=True, name="operator")
    key_id = split_key(operator)[0]  # type: ignore[index]
    admin_keys = f"{running.url}/admin/keys"
    other = httpx.post(admin_keys, headers=headers(operator), json={"name": "client"}).json()
    rotated = httpx.post(f"{admin_keys}/{key_id}/rotate", headers=headers(operator), json={})
    assert rotated.status_code == 200 and rotated.json()["rotation_grace_until"] > time.time() + 3000
    new_secret = rotated.json()["key"]

    assert chat(running, operator).status_code == 200  # the grace: the key's requests
    assert httpx.get(f"{running.url}/v1/key", headers=headers(operator)).json()["id"] == key_id
    assert httpx.get(f"{running.url}/v1/usage", headers=headers(operator)).status_code == 200
    for method, path, body in (
        ("POST", f"/admin/keys/{key_id}/rotate", {"grace_seconds": 0}),  # the key taken from the new secret
        ("POST", "/admin/keys", {"name": "backdoor", "admin": True}),  # an admin key outliving the grace
        ("POST", "/v1/keys", {"name": "backdoor-child"}),
        ("POST", f"/admin/keys/{other['id']}/revoke", None),
        ("PATCH", f"/admin/keys/{other['id']}", {"tags": {"team": "x"}}),
        ("GET", "/admin/keys", None),
        ("GET", f"/admin/keys/{other['id']}", None),
        ("GET", "/admin/usage", None),  # (the dashboard's data: a key typed into it is refused so)
        ("GET", "/metrics", None),
    ):
        refused = httpx.request(method, f"{running.url}{path}", headers=headers(operator), json=body)
        assert refused.status_code == 403, (method, path, refused.text)
        error = refused.json()["error"]
        assert error["code"] == "admin_only" and "previous secret" in error["message"], (method, path, error)
        assert "key" not in refused.json() and refused.headers["x-should-retry"] == "false"
    health = httpx.get(f"{running.url}/health", headers=headers(operator))  # (no admin's count either)
    assert health.status_code == 200 and "pending_settlements" not in health.json()

    assert chat(running, new_secret).status_code == 200  # the operator's new secret holds the key, alone
    listed = every_key(running, new_secret)
    assert not any(entry["name"].startswith("backdoor") for entry in listed.values())
    assert listed[other["id"]]["revoked_at"] is None
    ended = httpx.post(f"{admin_keys}/{key_id}/rotate", headers=headers(new_secret), json={"grace_seconds": 0})
    assert ended.status_code == 200
    assert chat(running, operator).status_code == 401  # its grace ended: no longer the key's at all


def test_every_answer_carrying_a_secret_says_no_store(running: Running, mint: Any) -> None:
    """A new key's secret (`POST /admin/keys`, `POST /v1/keys`) and a rotated one came without `cache-control:
    no-store`, so a cache along the way, or the client's, could keep them (only the dashboard's sign-in said so)."""
    admin = mint(admin=True)
    created = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "svc"})
    child = httpx.post(f"{running.url}/v1/keys", headers=headers(created.json()["key"]), json={"name": "c"})
    rotated = httpx.post(f"{running.url}/admin/keys/{created.json()['id']}/rotate", headers=headers(admin), json={})
    for answer in (created, child, rotated):
        assert answer.status_code in (200, 201) and "key" in answer.json(), answer.text
        assert answer.headers["cache-control"] == "no-store", answer.request.url


def test_every_answer_to_a_keyed_request_is_the_clients_alone(running: Running, mint: Any) -> None:
    """`GET /v1/usage` (JSON and CSV) and `GET /v1/key`, read with `x-api-key` as Anthropic's SDK sends it, came with
    no `cache-control` and no `vary`: a shared cache keeps no answer to a request with `Authorization` (RFC 9111
    3.5) but knows nothing of `x-api-key`, and could serve one tenant's spend, users and sessions to the next client
    asking the same URL (found by review). Every answer to a request whose key was read is `private, no-store`
    now, the admin routes' too; public answers are as they were, and a secret's stay `no-store`."""
    tenant = mint(name="tenant-a")
    admin = mint(admin=True, name="cache-admin")
    tenant_id = (split_key(tenant) or ("", ""))[0]
    keyed = {
        "/v1/usage?group_by=key,user,session": {"x-api-key": tenant},
        "/v1/usage?format=csv": {"x-api-key": tenant},
        "/v1/key": {"x-api-key": tenant},
        "/v1/models": headers(tenant),
        "/v1/route?model=gpt-4o-mini": headers(tenant),
        "/admin/usage?group_by=key": headers(admin),
        "/admin/keys": headers(admin),
        f"/admin/keys/{tenant_id}": headers(admin),
        "/metrics": headers(admin),
        "/health": headers(admin),
        "/v1/responses/resp_unknown": headers(tenant),  # (an error answer to a keyed request too)
    }
    for path, sent in keyed.items():
        answer = httpx.get(f"{running.url}{path}", headers=sent)
        assert answer.status_code in (200, 404), (path, answer.text)
        assert answer.headers.get("cache-control") == "private, no-store", (path, dict(answer.headers))
    for path, cache in (("/health", None), ("/openapi.json", None), ("/dashboard", "no-cache")):
        assert httpx.get(f"{running.url}{path}").headers.get("cache-control") == cache, path
    refused = httpx.get(f"{running.url}/v1/usage", headers={"x-api-key": "gwk_nosuchkey_x"})
    assert refused.status_code == 401 and "cache-control" not in refused.headers
    created = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "svc"})
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"


def test_an_expiry_too_far_off_is_a_clear_400_on_each_store(on_each_store: Running) -> None:
    """`expires_in_seconds: 1e200` made a key on SQLite and, on DynamoDB, a 503 `store_unavailable` "retry shortly"
    with `x-should-retry: true` (the key's TTL, a number DynamoDB cannot hold): the same 400 on both now, for a
    root key and a child, and the longest expiry allowed is stored on both."""
    running = on_each_store
    admin, parent = running.mint(admin=True), running.mint()
    for far in (1e200, 1e40, 3650 * 86400 + 1):  # (ten years, the longest)
        for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
            refused = httpx.post(url, headers=headers(key), json={"name": "far", "expires_in_seconds": far})
            assert refused.status_code == 400, (url, far, refused.text)
            assert refused.json()["error"]["param"] == "expires_in_seconds"
            assert refused.headers["x-should-retry"] == "false"
    for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
        longest = httpx.post(url, headers=headers(key), json={"name": "long", "expires_in_seconds": 3650 * 86400})
        assert longest.status_code == 201, longest.text
        assert chat(running, longest.json()["key"]).status_code == 200


def test_an_expiry_that_would_end_before_the_key_is_stored_is_a_400(running: Running) -> None:
    # `expires_in_seconds: 1e-300` (or 0.0001) made a key, 201, whose secret was `401 key_expired` at its first use, its
    # `expires_at` before its `created_at`, holding a place among its family's `max_children` until purged.
    admin, parent = running.mint(admin=True), running.mint()
    for short in (1e-300, 0.0001, 0.999):
        for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
            refused = httpx.post(url, headers=headers(key), json={"name": "blink", "expires_in_seconds": short})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "expires_in_seconds", refused.text
    made = httpx.post(f"{running.url}/v1/keys", headers=headers(parent), json={"name": "s", "expires_in_seconds": 1})
    assert made.status_code == 201 and made.json()["expires_at"] > made.json()["created_at"]


def test_a_budget_the_store_cannot_hold_is_a_clear_400_on_each_store(on_each_store: Running) -> None:
    """`budget_usd` took any finite number: `1e200`, `1e-200` and `1.2e29` made keys (201) whose budgets DynamoDB
    cannot hold in a request's admission (a number of at most 38 digits, from 1e-130 to 9.99e125: every request a
    503 there; moto does not check). The same 400 on both stores now, for a root key and a child; the bounds, a
    millionth of a dollar and a billion, are kept and spent against on both."""
    running = on_each_store
    admin, parent = running.mint(admin=True), running.mint()
    for budget in (1e200, 1.2e29, 1e9 + 0.01, 1e-200, 9e-7):
        for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
            refused = httpx.post(url, headers=headers(key), json={"name": "b", "budget_usd": budget})
            assert refused.status_code == 400, (url, budget, refused.text)
            assert refused.json()["error"]["param"] == "budget_usd"
    for budget in (1e9, 1e-6, 0):
        made = httpx.post(f"{running.url}/v1/keys", headers=headers(parent), json={"name": "b", "budget_usd": budget})
        assert made.status_code == 201 and made.json()["budget_usd"] == budget, made.text
        assert chat(running, made.json()["key"]).status_code == (200 if budget == 1e9 else 402)


def test_a_budget_period_without_a_budget_is_a_400(running: Running, mint: Any) -> None:
    """`budget_period: day` with no `budget_usd` made a key with no period and no budget, 201: its creator meant a
    daily budget and got a key that spends freely. Refused now, as the CLI refuses `--budget-period` alone."""
    admin, parent = mint(admin=True), mint()
    for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
        refused = httpx.post(url, headers=headers(key), json={"name": "daily", "budget_period": "day"})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["error"]["param"] == "budget_period"
        made = httpx.post(url, headers=headers(key), json={"name": "d", "budget_period": "day", "budget_usd": 1})
        assert made.status_code == 201 and made.json()["budget_period"] == "day", made.text


def test_a_revoked_key_stays_revoked_as_it_was(running: Running, mint: Any) -> None:
    """Revoking a revoked key moved its `revoked_at` later, and rotating it answered 200 with a new secret that
    could never work (401): now the first revocation stands, and the rotation is refused."""
    admin = mint(admin=True)
    victim = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "v"}).json()
    first = httpx.post(f"{running.url}/admin/keys/{victim['id']}/revoke", headers=headers(admin)).json()
    time.sleep(0.01)
    again = httpx.post(f"{running.url}/admin/keys/{victim['id']}/revoke", headers=headers(admin))
    assert again.status_code == 200 and again.json()["revoked_at"] == first["revoked_at"] is not None
    rotated = httpx.post(f"{running.url}/admin/keys/{victim['id']}/rotate", headers=headers(admin), json={})
    assert rotated.status_code == 400 and "revoked" in rotated.json()["error"]["message"]
    assert "key" not in rotated.json()
    # Revoked through its parent (found by review): the same.
    parent = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "p"}).json()
    kid = httpx.post(f"{running.url}/v1/keys", headers=headers(parent["key"]), json={"name": "k"}).json()
    httpx.post(f"{running.url}/admin/keys/{parent['id']}/revoke", headers=headers(admin))
    orphan = httpx.post(f"{running.url}/admin/keys/{kid['id']}/rotate", headers=headers(admin), json={})
    assert orphan.status_code == 400 and "revoked ancestor" in orphan.json()["error"]["message"]


def test_the_keys_under_a_revoked_key_are_shown_revoked_and_purged_with_it(on_each_store: Running) -> None:
    """After a parent was revoked its children were dead (401 "this key's parent has been revoked"), but
    `GET /admin/keys` and `/admin/keys/{child}` showed them live (`revoked_at` None) and the store, which forgets a key
    a day after its own end, never purged them (found by review). Now a revocation revokes every live key under it
    at its time, naming itself (`revoked_by`), and they go with it; one revoked before keeps its own revocation."""
    running = on_each_store
    admin = running.mint(admin=True)

    def mint_under(parent: str, name: str) -> dict[str, Any]:
        minted = httpx.post(f"{running.url}/v1/keys", headers=headers(parent), json={"name": name})
        assert minted.status_code == 201, minted.text
        body: dict[str, Any] = minted.json()
        return body

    def shown(key_id: str) -> httpx.Response:
        return httpx.get(f"{running.url}/admin/keys/{key_id}", headers=headers(admin))

    lead = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "team-lead"}).json()
    agent = mint_under(lead["key"], "agent")
    tool = mint_under(agent["key"], "tool")
    earlier = mint_under(lead["key"], "earlier")
    own = httpx.post(f"{running.url}/admin/keys/{earlier['id']}/revoke", headers=headers(admin)).json()["revoked_at"]
    revoked = httpx.post(f"{running.url}/admin/keys/{lead['id']}/revoke", headers=headers(admin)).json()
    assert revoked["revoked_at"] is not None and revoked["revoked_by"] is None
    for key, whose in ((agent, "this key's parent"), (tool, "an ancestor of this key")):
        refused = httpx.get(f"{running.url}/v1/key", headers=headers(key["key"]))
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "key_revoked"
        assert refused.json()["error"]["message"] == f"{whose} has been revoked"
        view = shown(key["id"]).json()
        assert (view["revoked_at"], view["revoked_by"]) == (revoked["revoked_at"], lead["id"]), view
    listed = every_key(running, admin)
    assert listed[tool["id"]]["revoked_at"] == revoked["revoked_at"] and listed[tool["id"]]["revoked_by"] == lead["id"]
    assert (listed[earlier["id"]]["revoked_at"], listed[earlier["id"]]["revoked_by"]) == (own, None)

    # A day and more after the revocation, the keys under it are gone with it.
    team = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "old-team"}).json()
    under = mint_under(mint_under(team["key"], "agent")["key"], "tool")["id"]

    async def revoke_long_ago() -> None:
        store = open_store(running.store_url)
        try:
            record = await store.get_key(team["id"])
            assert record is not None
            await KeyAdmin(KeyService(store, 0, clock=lambda: time.time() - 86400 - 60)).revoke(record)
        finally:
            await store.close()

    asyncio.run(revoke_long_ago())
    for key_id in (team["id"], under):
        assert shown(key_id).status_code == 404
    assert under not in every_key(running, admin)


def test_a_key_whose_new_secret_could_never_work_is_not_rotated(on_each_store: Running) -> None:
    """Rotating an expired key, a child of an expired key, or a child of a revoked parent purged since (the key's
    chain read without it) answered 200 with a new secret that every request then refused: now a 400 saying why, as
    for a revoked key, and the key is left as it was."""
    running = on_each_store
    admin = running.mint(admin=True)
    now = time.time()
    expired = running.mint(name="expired", expires_at=now - 1)
    expired_id = split_key(expired)[0]  # type: ignore[index]
    under_expired = running.mint(name="under", parent_id=expired_id, ancestors=[expired_id])
    purged = running.mint(name="gone", revoked_at=now - 3 * 86400)  # a day after its end, the store forgets it
    purged_id = split_key(purged)[0]  # type: ignore[index]
    orphan = running.mint(name="orphan", parent_id=purged_id, ancestors=[purged_id])
    for key, why in (
        (expired, "has expired; an expired key cannot be rotated"),
        (under_expired, f"has an expired ancestor ('{expired_id}')"),
        (orphan, f"has an ancestor that no longer exists ('{purged_id}')"),
    ):
        key_id = split_key(key)[0]  # type: ignore[index]
        before = httpx.get(f"{running.url}/admin/keys/{key_id}", headers=headers(admin)).json()
        refused = httpx.post(f"{running.url}/admin/keys/{key_id}/rotate", headers=headers(admin), json={})
        assert refused.status_code == 400 and "key" not in refused.json(), refused.text
        assert refused.json()["error"]["message"].startswith(f"key '{key_id}' {why}"), refused.text
        assert httpx.get(f"{running.url}/admin/keys/{key_id}", headers=headers(admin)).json() == before


def test_key_and_usage_inputs_are_taken_as_written(running: Running, mint: Any) -> None:
    """`"admin": "yes"` made an admin key (a string read as a boolean), `format=xml` answered JSON, and a time whose
    offset's `+` came unencoded in the query (a space) was refused though it is the ISO time the docs ask for."""
    admin = mint(admin=True)
    for field, value in (("admin", "yes"), ("rpm", "10"), ("budget_usd", "1")):
        loose = httpx.post(f"{running.url}/admin/keys", headers=headers(admin), json={"name": "x", field: value})
        assert loose.status_code == 400 and loose.json()["error"]["param"] == field, loose.text
    usage = f"{running.url}/v1/usage"
    xml = httpx.get(usage, params={"format": "xml"}, headers=headers(admin))
    assert xml.status_code == 400 and xml.json()["error"]["param"] == "format"
    encoded = httpx.get(usage, params={"since": "2026-12-03T00:00:00+05:00"}, headers=headers(admin))
    unencoded = httpx.get(f"{usage}?since=2026-12-03T00:00:00+05:00", headers=headers(admin))
    assert encoded.status_code == unencoded.status_code == 200, unencoded.text
    assert encoded.json()["since"] == unencoded.json()["since"] == 1796238000.0
    fraction = httpx.get(f"{usage}?since=2026-12-03T00:00:00.5+05:00", headers=headers(admin))
    assert fraction.status_code == 200 and fraction.json()["since"] == 1796238000.5, fraction.text
    # ISO 8601's basic date was read as epoch seconds (1970-08-23), and epoch milliseconds as seconds in the year
    # 58,000: 200 with an empty report either way (found by review).
    basic = httpx.get(f"{usage}?since=20261203&until=20261204", headers=headers(admin))
    assert basic.status_code == 200 and (basic.json()["since"], basic.json()["until"]) == (1796256000.0, 1796342400.0)
    for name in ("since", "until"):
        millis = httpx.get(usage, params={name: "1796256000000"}, headers=headers(admin))
        error = millis.json()["error"]
        assert millis.status_code == 400 and error["param"] == name, millis.text
        assert "milliseconds" in error["message"] and "epoch seconds" in error["message"]


@pytest.mark.usefixtures("no_gc_pauses")
def test_revoked_key_works_at_most_for_the_cache_window(running: Running, mint: Any) -> None:
    """Another process revokes the key; this gateway trusts its cached copy for key_cache_seconds (5 s)."""
    key = mint()
    assert chat(running, key).status_code == 200
    key_id = key.split("_")[1]

    async def revoke_elsewhere() -> None:
        from adapters.store import open_store
        from handler.pipeline.key_admin import KeyAdmin
        from handler.pipeline.keys import KeyService

        store = open_store(running.store_url)
        try:
            record = await store.get_key(key_id)
            assert record is not None
            await KeyAdmin(KeyService(store, 0)).revoke(record)
        finally:
            await store.close()

    asyncio.run(revoke_elsewhere())
    revoked_at = time.monotonic()
    window = running.gateway.config.gateway.key_cache_seconds
    while chat(running, key).status_code == 200:
        assert time.monotonic() - revoked_at <= window + 0.5
        time.sleep(0.25)
    assert chat(running, key).json()["error"]["code"] == "key_revoked"


@pytest.mark.usefixtures("no_gc_pauses")
def test_a_revocation_stamped_by_a_clock_running_ahead_takes_effect_within_the_cache_window(
    on_each_store: Running,
) -> None:
    """`gateway keys revoke` run where the clock is 120 s ahead of the server's (an operator's laptop) stamped the
    revocation 119 s in the server's future, and the server took a revocation as one only from its time on: the key
    and the keys revoked with it kept being served (200 at +0, +6 and +30 s, `GET /v1/key` showing `revoked_at`),
    on both stores (found by review). Nothing stamps a revocation to come, so any `revoked_at` revokes now."""
    running = on_each_store
    key = running.mint()
    key_id = split_key(key)[0]  # type: ignore[index]
    minted = httpx.post(f"{running.url}/v1/keys", headers=headers(key), json={"name": "under"})
    assert minted.status_code == 201, minted.text
    under = minted.json()["key"]
    assert chat(running, key).status_code == 200 and chat(running, under).status_code == 200  # both cached

    async def revoke_ahead() -> float:
        store = open_store(running.store_url)
        try:
            record = await store.get_key(key_id)
            assert record is not None
            revoked = await KeyAdmin(KeyService(store, 0, clock=lambda: time.time() + 120)).revoke(record)
            assert revoked.revoked_at is not None
            return revoked.revoked_at
        finally:
            await store.close()

    assert asyncio.run(revoke_ahead()) > time.time() + 100
    revoked_at = time.monotonic()
    window = running.gateway.config.gateway.key_cache_seconds
    for held in (key, under):
        while chat(running, held).status_code == 200:
            assert time.monotonic() - revoked_at <= window + 0.5
            time.sleep(0.25)
        assert chat(running, held).json()["error"]["code"] == "key_revoked"
        shown = httpx.get(f"{running.url}/v1/key", headers=headers(held))
        assert shown.status_code == 401 and shown.json()["error"]["code"] == "key_revoked"


def test_a_minute_another_gateways_clock_turned_first_counts_requests_here_not_429(on_each_store: Running) -> None:
    """Two gateways on one table, one's clock a few seconds ahead: it turns each minute first, and the other refused
    every request of a key with an rpm limit in those seconds, with 429 "retry in 120s" and `retry-after: 120`
    where the minute turned here within the skew (review: rpm 60, one request used; 2 s later, 200 with 58 left).
    Now a request here counts in the minute the other began; a full one refuses until it ends. Its answer's
    `x-ratelimit-reset-requests` said when this gateway's own minute ended, not that one: `remaining 0, reset 43s`,
    then a 429 with `retry-after: 103`, so a client that waited 43 s was refused again (found by review)."""
    running = on_each_store
    key = running.mint(rpm=2)
    key_id = split_key(key)[0]  # type: ignore[index]
    fresh_minute()  # (the minute ahead is the next one here until the requests are answered)

    async def counted_by_a_gateway_ahead() -> None:
        store = open_store(running.store_url)
        try:
            record = await store.get_key(key_id)
            assert record is not None
            ahead = int(time.time() // 60) + 1
            rate = RateCharge("rpm", ahead, 2, 1)
            await store.admit(Admission("req_ahead", key_id, [], [rate], time.time() + 60, record.home_region))
        finally:
            await store.close()

    asyncio.run(counted_by_a_gateway_ahead())
    served = chat(running, key)
    assert served.status_code == 200, served.text
    assert served.headers["x-ratelimit-remaining-requests"] == "0"  # counted in the minute begun there
    refused = chat(running, key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 60 < int(refused.headers["retry-after"]) <= 120  # that minute's end, not a made-up two minutes
    reset = int(served.headers["x-ratelimit-reset-requests"].removesuffix("s"))
    assert abs(reset - int(refused.headers["retry-after"])) <= 1, served.headers  # the same minute's end


def test_a_secret_rotated_by_another_process_works_at_once(on_each_store: Running) -> None:
    """Rotated by another process (a worker of `--workers 2`, a Lambda environment, `gateway keys rotate`), the new
    secret got 401 `invalid API key` for up to `key_cache_seconds` on a gateway that had the key cached: measured
    from 0 to 4.6 s. Now it works at once, and the old one keeps its grace."""
    running = on_each_store
    assert running.gateway.config.gateway.key_cache_seconds > 0
    key = running.mint()
    assert chat(running, key).status_code == 200  # the gateway has it cached
    key_id = split_key(key)[0]  # type: ignore[index]

    async def rotate_elsewhere() -> str:
        from adapters.store import open_store
        from handler.pipeline.key_admin import KeyAdmin
        from handler.pipeline.keys import KeyService

        store = open_store(running.store_url)
        try:
            record = await store.get_key(key_id)
            assert record is not None
            return (await KeyAdmin(KeyService(store, 0)).rotate(record, 3600)).key
        finally:
            await store.close()

    rotated = asyncio.run(rotate_elsewhere())
    assert chat(running, rotated).status_code == 200
    assert chat(running, key).status_code == 200  # within its grace
    wrong = httpx.get(f"{running.url}/v1/key", headers=headers(f"gwk_{key_id}_{'w' * 43}"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_expired_key_and_ip_allowlist(running: Running, mint: Any) -> None:
    expired = mint(expires_at=time.time() - 1)
    assert chat(running, expired).json()["error"]["code"] == "key_expired"
    elsewhere = mint(allow_ips=["10.0.0.0/8"])
    refused = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HI},
        headers={**headers(elsewhere), "x-forwarded-for": "10.1.2.3"},
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ip_not_allowed"
    assert chat(running, mint(allow_ips=["127.0.0.1/32", "::1/128"])).status_code == 200


def test_a_keys_ip_ranges_are_bounded_on_each_store(on_each_store: Running) -> None:
    """`allow_ips` had no bound: a plain key minted a child with 20,001 ranges (201 on both stores), whose every
    request then held up the other keys' on the process; on DynamoDB a list past an item's 400 KB was a 503
    `store_unavailable` to retry. Now at most 100 ranges, as `models` and `model_limits`, on every route that
    sets them, and 100 are stored and held on both stores. (20,000 are past a key route's body bound: a 413.)"""
    running = on_each_store
    admin, parent = running.mint(admin=True), running.mint()
    ranges = [f"10.0.{i // 256}.{i % 256}/32" for i in range(100)] + ["127.0.0.1/32"]
    for url, key in ((f"{running.url}/admin/keys", admin), (f"{running.url}/v1/keys", parent)):
        refused = httpx.post(url, headers=headers(key), json={"name": "wide", "allow_ips": ranges})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "allow_ips" and "at most 100" in refused.text
        assert refused.headers["x-should-retry"] == "false"
        refused = httpx.post(url, headers=headers(key), json={"name": "wide", "allow_ips": ranges * 200})
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
        held = httpx.post(url, headers=headers(key), json={"name": "wide", "allow_ips": ranges[1:]})
        assert held.status_code == 201 and len(held.json()["allow_ips"]) == 100
        assert chat(running, held.json()["key"]).status_code == 200
        outside = httpx.post(url, headers=headers(key), json={"name": "narrow", "allow_ips": ranges[:100]})
        assert chat(running, outside.json()["key"]).json()["error"]["code"] == "ip_not_allowed"


def test_whoami_and_child_keys(running: Running, mint: Any) -> None:
    parent = mint(models=["gpt-*", "tools-model"], budget_usd=1.0, expires_at=time.time() + 3600)
    me = httpx.get(f"{running.url}/v1/key", headers=headers(parent)).json()
    assert me["budget_usd"] == 1.0 and me["remaining_usd"] == 1.0 and me["spent_usd"] == 0
    url = f"{running.url}/v1/keys"
    too_wide = httpx.post(url, headers=headers(parent), json={"name": "c", "models": ["claude-*"]})
    assert too_wide.status_code == 403 and too_wide.json()["error"]["code"] == "model_not_allowed"
    too_rich = httpx.post(url, headers=headers(parent), json={"name": "c", "budget_usd": 2})
    assert too_rich.status_code == 400 and too_rich.json()["error"]["param"] == "budget_usd"
    too_long = httpx.post(url, headers=headers(parent), json={"name": "c", "expires_in_seconds": 7200})
    assert too_long.status_code == 400
    child = httpx.post(url, headers=headers(parent), json={"name": "c", "models": ["gpt-4o-mini"], "budget_usd": 0.5})
    assert child.status_code == 201
    body = child.json()
    assert body["parent_id"] == me["id"] and body["expires_at"] <= me["expires_at"]
    assert chat(running, body["key"]).status_code == 200
    denied = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"model": "tools-model", "messages": HI},
        headers=headers(body["key"]),
    )
    assert denied.status_code == 403
    time.sleep(0.3)  # settlement runs after the answer
    spent_parent = httpx.get(f"{running.url}/v1/key", headers=headers(parent)).json()["spent_usd"]
    assert spent_parent > 0  # the child's spend counts against its parent
    httpx.post(f"{running.url}/admin/keys/{me['id']}/revoke", headers=headers(mint(admin=True)))
    time.sleep(running.gateway.config.gateway.key_cache_seconds + 0.1)
    assert chat(running, body["key"]).json()["error"]["code"] == "key_revoked"


def test_the_budget_left_is_shown_per_answer_in_plain_digits(running: Running, mint: Any) -> None:
    """`x-gateway-budget-remaining-usd` is the budget less the costs so far, without the float arithmetic's noise
    (a cost read `0.0000070499999999999986` and the budget left as many digits)."""
    budget = 0.3
    key = mint(budget_usd=budget)
    spent = Decimal(0)
    for n in range(12):
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi " * n}]}
        raw = httpx.post(f"{running.url}/v1/chat/completions", json=body, headers=headers(key), timeout=10)
        cost, left = raw.headers["x-gateway-cost-usd"], raw.headers["x-gateway-budget-remaining-usd"]
        assert all(len(Decimal(v).normalize().as_tuple().digits) <= 15 for v in (cost, left)), (cost, left)
        spent += Decimal(cost)
        assert Decimal(left) == Decimal(str(budget)) - spent
    # And so does the key's own view: `spent_usd` was 0.00004935000000000001, `reserved_usd` 1.98e-19 with
    # nothing in flight.
    me = httpx.get(f"{running.url}/v1/key", headers=headers(key)).json()
    assert (Decimal(str(me["spent_usd"])), me["reserved_usd"]) == (spent, 0)
    assert Decimal(str(me["remaining_usd"])) == Decimal(str(budget)) - spent


def stream_events(running: Running, key: str, path: str, body: dict[str, Any]) -> tuple[httpx.Headers, list[Any]]:
    events = []
    with httpx.stream(
        "POST", f"{running.url}{path}", json=body, headers=headers(key) | {"anthropic-version": "2023-06-01"}
    ) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(orjson.loads(line[6:]))
    return answer.headers, events


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}, "messages": HI}),
        ("/v1/messages", {"max_tokens": 50, "messages": HI}),
        ("/v1/responses", {"input": "Hi"}),
    ],
)
def test_a_stream_tells_the_budget_left(running: Running, path: str, body: dict[str, Any]) -> None:
    """`x-gateway-budget-remaining-usd` is on every answer of a key with a budget; a stream had none (its head
    goes out before its cost is known), nor any figure in its last event. Its head now says what is left with
    the request's worst case held, the least it can be, and its `cost` what is left once it is spent."""
    key = running.mint(budget_usd=1.0)
    answer_headers, events = stream_events(running, key, path, {"model": "gpt-4o-mini", "stream": True, **body})
    costs = [e.get("cost") or (e.get("response") or {}).get("cost") for e in events]
    (cost,) = [c for c in costs if c]
    held = Decimal(answer_headers["x-gateway-budget-remaining-usd"])
    left = Decimal(str(cost["budget_remaining_usd"]))
    assert left == Decimal("1") - Decimal(str(cost["total_usd"]))
    assert held < left  # the worst case held exceeds what the answer cost
    time.sleep(0.3)
    me = httpx.get(f"{running.url}/v1/key", headers=headers(key)).json()
    assert Decimal(str(me["remaining_usd"])) == left
    unbudgeted = running.mint()
    answer_headers, events = stream_events(running, unbudgeted, path, {"model": "gpt-4o-mini", "stream": True, **body})
    assert "x-gateway-budget-remaining-usd" not in answer_headers
    assert all("budget_remaining_usd" not in (e.get("cost") or {}) for e in events)


def test_budget_holds_under_concurrency(on_each_store: Running) -> None:
    """100 concurrent requests against a budget that fits 20 worst cases, on each store."""
    running = on_each_store
    body = {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 50}
    spec = running.gateway.config.models["gpt-4o-mini"]
    worst = worst_case_usd(
        estimate_prompt_tokens(ChatRequest.model_validate(body)),
        50,
        price_for("gpt-4o-mini", spec, "gpt-4o-mini"),
        running.gateway.config.gateway.fee,
    )
    assert worst is not None
    budget = 20 * worst
    key = running.mint(budget_usd=budget)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{running.url}/v1/chat/completions", json=body, headers=headers(key))
                    for _ in range(100)
                )
            )

    answers = asyncio.run(fire())
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 402}, statuses
    served = [a for a in answers if a.status_code == 200]
    assert all(a.json()["error"]["code"] == "budget_exceeded" for a in answers if a.status_code == 402)
    charged = sum(float(a.headers["x-gateway-cost-usd"]) for a in served)
    assert charged <= budget + 1e-12
    # Every request whose worst case fitted was served: 20 fit even if none had settled yet.
    assert len(served) >= 20
    time.sleep(0.5)
    me = httpx.get(f"{running.url}/v1/key", headers=headers(key)).json()
    assert me["spent_usd"] == pytest.approx(charged, abs=1e-9) and me["spent_usd"] <= budget + 1e-12
    assert me["reserved_usd"] == pytest.approx(0, abs=1e-12)
    assert chat(running, key, max_tokens=50).status_code in (200, 402)


def test_a_budgeted_request_cannot_ask_for_more_output_than_was_reserved(running: Running) -> None:
    key = running.mint(budget_usd=1.0)
    recorded = running.fakes["openai"].state.requests
    assert chat(running, key).status_code == 200
    assert recorded[-1]["json"]["max_completion_tokens"] == running.gateway.config.gateway.default_max_output_tokens
    # The client's own cap is reserved and sent, whole, though the model names no ceiling (it had been cut to
    # the default); a cap the budget cannot cover is refused, not cut.
    assert chat(running, key, max_tokens=10_000).status_code == 200
    assert recorded[-1]["json"]["max_tokens"] == 10_000
    refused = chat(running, key, max_tokens=2 * 10**6)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    assert chat(running, key, max_tokens=7).status_code == 200
    assert recorded[-1]["json"]["max_tokens"] == 7


def test_rate_limits_answer_429_with_headers(on_each_store: Running) -> None:
    running = on_each_store
    fresh_minute()
    key = running.mint(rpm=3, tpm=100_000)
    answers = [chat(running, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    first, limited = answers[0], answers[3]
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # The refusal says nothing is left of the refused limit (it said 2, as if the window were empty), and
    # gives no count of the tokens, which it did not read.
    assert limited.headers["x-ratelimit-limit-requests"] == "3"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-remaining-tokens" not in limited.headers
    with pytest.raises(openai.RateLimitError):
        openai_client(running, key).chat.completions.create(
            model="gpt-4o-mini",
            messages=HI,  # type: ignore[arg-type]
        )


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store of the test's own, on each store in turn (for a gateway in-process, `tests.support.inprocess`)."""
    return param_store_url(request, tmp_path_factory, "minutes")


async def test_an_answer_that_outlives_its_minute_tells_no_count_of_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer's `x-ratelimit-*` were computed at its admission and sent as they were, however long the answer
    took: a child of a parent with `rpm: 1`, admitted at :47 and answered 2 s into the next minute, was told
    `remaining 0, reset 15s`, and its next request, sent at once, was admitted (found by review). They are told as
    they hold when the answer is built: `reset` from then, and none once the minute they count in has ended (the
    request counted in it alone; what the next minute holds is not known without reading the store)."""
    now = [time.time() // 60 * 60 + 59]  # (a second before a minute's end)
    monkeypatch.setattr(time, "time", lambda: now[0])

    def in_the_next_minute(request: httpx.Request) -> httpx.Response:
        now[0] += 2.0
        body = orjson.loads(request.content)
        return httpx.Response(200, json=completion(body["model"]))

    served = await serve(in_the_next_minute, {"m": MODEL}, store_url=store_url)
    admin = KeyAdmin(KeyService(served.gateway.store, 0))
    parent = (await admin.mint(KeyRecord(id="", name="rpm-1", secret_hash="", created_at=0, rpm=1))).record
    child = KeyRecord(id="", name="child", secret_hash="", created_at=0, parent_id=parent.id, ancestors=[parent.id])
    served.key = await admin.mint(child)
    answered = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    assert answered.status_code == 200, answered.text
    assert [name for name in answered.headers if name.startswith("x-ratelimit-")] == [], answered.headers
    following = await served.post("/v1/chat/completions", {"model": "m", "messages": HI})
    assert following.status_code == 200, following.text  # (the minute the answer was admitted in was over)
    told = following.headers["x-ratelimit-remaining-requests"], following.headers["x-ratelimit-reset-requests"]
    assert told == ("0", "57s"), told  # (admitted at :01, answered at :03 of its minute)
    await served.gateway.aclose()


def test_a_request_that_reached_no_provider_gives_its_tokens_back(on_each_store: Running) -> None:
    # Pinned to a provider that refuses connections, each 502 kept its 410-token worst case on the key's tpm for the
    # rest of the minute (remaining 590, then 180), so the SDK's default retries of the 502 (x-should-retry: true)
    # ended in the key's own 429 "rate limit tpm=1000 per minute reached", though no token was used.
    running = on_each_store
    fresh_minute()
    key = running.mint(rpm=10, tpm=1000)
    client = openai.OpenAI(
        base_url=f"{running.url}/v1",
        api_key=key,
        max_retries=2,  # the SDK's default
        default_headers={"x-gateway-provider": "dead", "x-gateway-fallbacks": "none"},
    )
    with client, pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="refused", messages=HI, max_tokens=400)  # type: ignore[arg-type]
    assert raised.value.status_code == 502, raised.value.response.text
    time.sleep(0.3)  # (settlements land in the background)
    served = chat(running, key, max_tokens=400)
    assert served.status_code == 200
    # Only the served request holds tokens; each of the three attempts stays counted on rpm, as a request does once
    # admitted.
    assert int(served.headers["x-ratelimit-remaining-tokens"]) > 1000 - 2 * 410
    assert served.headers["x-ratelimit-remaining-requests"] == "6"
    assert len(running.ledger(key)) == 1


def test_what_binds_a_child_from_its_chain_is_what_it_is_told(on_each_store: Running) -> None:
    """A child's answers and its `GET /v1/key` give what its chain leaves it. A child without limits of its
    own under a parent's rpm got no `x-ratelimit-*` headers on a 200, though the parent's limit bound it; a
    child's own $10 under a parent with cents left showed $10 remaining, per answer and in `GET /v1/key`; and
    minting from that child took a budget its chain could never pay."""
    running = on_each_store
    fresh_minute()  # (the rpm counter is the calendar minute's: a request each side of a minute starts it again)
    parent = running.mint(rpm=5, budget_usd=0.01)
    url = f"{running.url}/v1/keys"
    minted = httpx.post(url, headers=headers(parent), json={"name": "rich", "budget_usd": 0.01})
    assert minted.status_code == 201
    child = minted.json()["key"]
    first = chat(running, child)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    assert chat(running, parent).headers["x-ratelimit-remaining-requests"] == "3"  # one counter, shared
    second = chat(running, child)
    assert second.headers["x-ratelimit-remaining-requests"] == "2"
    cost = Decimal(first.headers["x-gateway-cost-usd"])
    assert cost > 0
    time.sleep(0.5)  # settlements run after the answers
    parent_view = httpx.get(f"{running.url}/v1/key", headers=headers(parent)).json()
    # The parent spent its own request and its child's two; the child its two, so the parent binds.
    assert Decimal(str(parent_view["remaining_usd"])) == Decimal("0.01") - 3 * cost
    assert parent_view["remaining_bound_by"] == parent_view["id"]
    left = Decimal(second.headers["x-gateway-budget-remaining-usd"])
    assert left < Decimal("0.01") - cost  # the parent's (three requests spent), not the child's own (two)
    child_view = httpx.get(f"{running.url}/v1/key", headers=headers(child)).json()
    assert child_view["budget_usd"] == 0.01 and Decimal(str(child_view["spent_usd"])) == 2 * cost
    assert child_view["remaining_usd"] == parent_view["remaining_usd"]
    assert child_view["remaining_bound_by"] == parent_view["id"]
    # A grandchild's budget is bounded by what the chain leaves, not by the child's own remaining.
    within_own = float(Decimal("0.01") - Decimal("2.5") * cost)  # within the child's own $0.01 less two costs
    too_rich = httpx.post(url, headers=headers(child), json={"name": "g", "budget_usd": within_own})
    assert too_rich.status_code == 400 and too_rich.json()["error"]["param"] == "budget_usd"
    assert parent_view["id"] in too_rich.json()["error"]["message"]
    # A child or grandchild without a budget of its own has none, and is told what its chain leaves.
    free = httpx.post(url, headers=headers(parent), json={"name": "free"})
    assert free.status_code == 201 and free.json()["budget_usd"] is None
    free_view = httpx.get(f"{running.url}/v1/key", headers=headers(free.json()["key"])).json()
    assert (free_view["remaining_usd"], free_view["remaining_bound_by"]) == (
        parent_view["remaining_usd"],
        parent_view["id"],
    )
    limitless = httpx.post(url, headers=headers(child), json={"name": "g2"}).json()
    assert limitless["budget_usd"] is None
    limitless_view = httpx.get(f"{running.url}/v1/key", headers=headers(limitless["key"])).json()
    assert limitless_view["remaining_usd"] == child_view["remaining_usd"]


def test_a_child_minted_without_a_budget_has_none_and_its_chain_binds_it(on_each_store: Running) -> None:
    """A child minted without a budget under a parent with a day budget got a *total* budget of what the parent had
    left at that moment: it stopped for good once it spent that, though the parent's day began again; under a
    parent with nothing left, a $0 key (201); and under a grandparent's budget alone, none. Now it has none in each
    case, and every budget of its chain binds each of its requests."""
    running = on_each_store
    url = f"{running.url}/v1/keys"
    clear_of_period_end("day", 30)  # (what the parent has left is read in the day it spent in)
    parent = running.mint(budget_usd=0.01, budget_period="day")
    assert chat(running, parent).status_code == 200
    time.sleep(0.3)  # (settled after the answer)
    child = httpx.post(url, headers=headers(parent), json={"name": "agent"})
    assert child.status_code == 201, child.text
    assert (child.json()["budget_usd"], child.json()["budget_period"]) == (None, None)
    view = httpx.get(f"{running.url}/v1/key", headers=headers(child.json()["key"])).json()
    parent_view = httpx.get(f"{running.url}/v1/key", headers=headers(parent)).json()
    assert 0 < view["remaining_usd"] == parent_view["remaining_usd"] < 0.01
    assert view["remaining_bound_by"] == parent_view["id"] and view["spent_usd"] == 0  # (nothing of its own yet)
    # Under a parent whose day's budget is spent: a key without a budget of its own, held to the parent's.
    broke = running.mint(budget_usd=0.0, budget_period="day")
    under_broke = httpx.post(url, headers=headers(broke), json={"name": "agent"})
    assert under_broke.status_code == 201 and under_broke.json()["budget_usd"] is None
    refused = chat(running, under_broke.json()["key"])
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "budget_exceeded"
    # The same when the budget is a grandparent's: nothing of its own, the grandparent's binding.
    middle = httpx.post(url, headers=headers(broke), json={"name": "team"}).json()
    grandchild = httpx.post(url, headers=headers(middle["key"]), json={"name": "agent"})
    assert grandchild.status_code == 201 and grandchild.json()["budget_usd"] is None
    assert chat(running, grandchild.json()["key"]).status_code == 402
    bound = httpx.get(f"{running.url}/v1/key", headers=headers(grandchild.json()["key"])).json()
    assert (bound["remaining_usd"], bound["remaining_bound_by"]) == (0.0, split_key(broke)[0])  # type: ignore[index]


def charged(answer: httpx.Response) -> Decimal:
    """What an answer's request was charged, as its headers say (the provider's cost and the fee)."""
    assert answer.status_code == 200, answer.text
    return Decimal(answer.headers["x-gateway-cost-usd"]) + Decimal(answer.headers["x-gateway-fee-usd"])


def test_a_key_without_a_budget_of_its_own_is_told_what_it_spent(on_each_store: Running) -> None:
    """`GET /v1/key` is "this key: scopes, budget, spent, remaining, expiry", but a key without a budget of its own
    was told `spent_usd: null` however much it spent: a plain key charged $0.0000054, and a child spending its
    parent's $1 (whose `remaining_usd` dropped to 0.9999946). It is told what it and its descendants spent in the
    current UTC month now, the `period` it names, from the ledger; `GET /admin/keys/{id}` says the same. Found by
    review."""
    running = on_each_store
    clear_of_period_end("month", 30)  # (what each key spent is told in the month it was spent in)
    plain = running.mint(name="no-budget")
    once = charged(chat(running, plain))
    assert once > 0
    running.ledger(plain)  # (settled)
    month = period_of("month", time.time())
    me = httpx.get(f"{running.url}/v1/key", headers=headers(plain)).json()
    assert me["spent_usd"] is not None, me  # (it was null)
    assert (Decimal(str(me["spent_usd"])), me["period"]) == (once, month), me
    assert (me["budget_usd"], me["remaining_usd"], me["reserved_usd"]) == (None, None, None)
    # A child spending its parent's budget, and the grandchild under it: each key counts its descendants' spend, as
    # a budget of its own would.
    parent = running.mint(name="parent", budget_usd=1.0)
    url = f"{running.url}/v1/keys"
    child = httpx.post(url, headers=headers(parent), json={"name": "child"}).json()["key"]
    grandchild = httpx.post(url, headers=headers(child), json={"name": "grandchild"}).json()["key"]
    own, below = charged(chat(running, child)), charged(chat(running, grandchild))
    running.ledger(child), running.ledger(grandchild)
    child_view = httpx.get(f"{running.url}/v1/key", headers=headers(child)).json()
    assert Decimal(str(child_view["remaining_usd"])) == 1 - own - below
    assert (Decimal(str(child_view["spent_usd"])), child_view["period"]) == (own + below, month), child_view
    grandchild_view = httpx.get(f"{running.url}/v1/key", headers=headers(grandchild)).json()
    assert Decimal(str(grandchild_view["spent_usd"])) == below
    parent_view = httpx.get(f"{running.url}/v1/key", headers=headers(parent)).json()  # (its own meter's, as before)
    assert (Decimal(str(parent_view["spent_usd"])), parent_view["period"]) == (own + below, "total")
    shown = httpx.get(f"{running.url}/admin/keys/{child_view['id']}", headers=headers(running.mint(admin=True)))
    assert (shown.json()["spent_usd"], shown.json()["period"]) == (child_view["spent_usd"], month)


def test_budget_refusal_is_402_not_429(running: Running, mint: Any) -> None:
    broke = mint(budget_usd=0.0)
    answer = chat(running, broke)
    assert answer.status_code == 402 and answer.json()["error"]["code"] == "budget_exceeded"


def test_a_budget_refused_for_a_fallbacks_worst_case_says_so_and_how_to_lower_it(running: Running, mint: Any) -> None:
    """The budget must cover every model the plan may try, so a $0.01 key asking a cheap model was refused for its
    fallback's worst case (claude-haiku-4-5's $0.0205 at 4,096 tokens), in a message that said neither."""
    if "claude-haiku-4-5" not in running.gateway.config.models:
        pytest.skip("the Anthropic fake is not available")
    key = mint(budget_usd=0.01)
    refused = chat(running, key, model="broken")  # $2 per 1M output; its fallback, claude-haiku-4-5, $5
    assert refused.status_code == 402, refused.text
    message = refused.json()["error"]["message"]
    assert "it is claude-haiku-4-5's, a fallback: `x-gateway-fallbacks: none` or a smaller max_tokens lowers it" in (
        message
    )
    body = {"model": "broken", "messages": HI}
    alone = httpx.post(
        f"{running.url}/v1/chat/completions",
        json=body,
        headers={**headers(key), "x-gateway-fallbacks": "none"},
        timeout=10,
    )
    assert alone.status_code != 402, alone.text  # admitted (its one deployment then fails, as it always does)
    broke = chat(running, mint(budget_usd=0.0))  # no fallback: only the cap to lower
    assert broke.json()["error"]["message"].endswith("; a smaller max_tokens lowers it")


@pytest.mark.parametrize("bound", ["budget", "x-gateway-max-cost-usd"])
def test_a_responses_request_refused_for_its_worst_case_is_told_to_lower_max_output_tokens(
    running: Running, mint: Any, bound: str
) -> None:
    """The Responses API's output cap is `max_output_tokens` (OpenAI refuses a `max_tokens` it is sent): a refusal
    for the worst case, the key's budget's or the request's own cap's, names that field, not Chat's."""
    key = mint(budget_usd=0.000001) if bound == "budget" else mint()
    sent = {**headers(key), "x-gateway-max-cost-usd": "0.000001"} if bound != "budget" else headers(key)
    body = {"model": "vllm-llama", "input": "Hi"}
    refused = httpx.post(f"{running.url}/v1/responses", json=body, headers=sent, timeout=10)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["message"].endswith("; a smaller max_output_tokens lowers it"), refused.text
    chat_body = {"model": "vllm-llama", "messages": HI}
    chat = httpx.post(f"{running.url}/v1/chat/completions", json=chat_body, headers=sent, timeout=10)
    assert chat.json()["error"]["message"].endswith("; a smaller max_tokens lowers it"), chat.text


def test_usage_of_a_key_includes_its_children(running: Running, mint: Any) -> None:
    parent = mint(models=["gpt-4o-mini"])
    child = httpx.post(
        f"{running.url}/v1/keys", json={"name": "child", "budget_usd": 0.01}, headers=headers(parent)
    ).json()["key"]
    grandchild = httpx.post(f"{running.url}/v1/keys", json={"name": "grandchild"}, headers=headers(child)).json()["key"]
    answers = [chat(running, k) for k in (parent, child, grandchild)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    time.sleep(0.3)  # settlements are written after the answer
    mine = httpx.get(f"{running.url}/v1/usage", params={"group_by": "key"}, headers=headers(parent)).json()["data"]
    assert sum(row["requests"] for row in mine) == 3
    assert sum(row["cost_usd"] for row in mine) == pytest.approx(
        sum(float(a.headers["x-gateway-cost-usd"]) for a in answers), abs=1e-9
    )
    theirs = httpx.get(f"{running.url}/v1/usage", headers=headers(child)).json()["data"]
    assert theirs[0]["requests"] == 2  # a child sees itself and its own children, never its parent


def test_a_model_with_no_price_is_refused_to_a_budget_with_advice_that_helps(running: Running) -> None:
    """A budgeted key asking for a model of unknown price was told "a smaller max_tokens lowers it": no max_tokens
    does. A fallback with no price is named as the fallback it is, with what leaves it out."""
    key = running.mint(name="priced-only", budget_usd=1.0)
    refused = chat(running, key, model="unpriced", max_tokens=10)
    assert refused.status_code == 402
    message = refused.json()["error"]["message"]
    assert message == "model 'unpriced' has no known price, so a key with a budget cannot use it"
    through = httpx.post(
        f"{running.url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": HI, "max_tokens": 10},
        headers={**headers(key), "x-gateway-fallbacks": "unpriced"},
    )
    assert through.status_code == 402
    assert through.json()["error"]["message"] == (
        "model 'unpriced' has no known price, so a key with a budget cannot use it; it is a fallback: "
        "`x-gateway-fallbacks: none` leaves it out"
    )
    assert chat(running, key, max_tokens=10).status_code == 200


def test_a_budgets_worst_case_prices_each_attempt_at_its_own_output_cap(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """gpt-4o-mini with `max_output_tokens: 16384` and Claude Haiku 4.5 as its fallback, which is sent 4,096 (the
    default cap; no ceiling configured): a $0.05 key's "hi" was refused, 402, for a worst case of $0.081940, the
    plan's largest cap (16,384) at Claude's price, though no attempt could spend more than $0.0205 (Claude at 4,096;
    gpt-4o-mini at 16,384, $0.0098)."""
    server, fakes = upstream
    if "anthropic" not in fakes:
        pytest.skip("the Anthropic fake is not available")
    data = {
        "providers": {
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{server.url}/openai/v1"},
            "anthropic": {
                "type": "anthropic",
                "api_key": "env:ANTHROPIC_API_KEY",
                "base_url": f"{server.url}/anthropic",
            },
        },
        "models": {
            "mini": {
                "deployments": [{"provider": "openai", "model": "fail-500"}],
                "price": {"input": 0.15, "output": 0.60},
                "max_output_tokens": 16384,
                "fallbacks": ["haiku"],
            },
            "haiku": {"deployments": [{"provider": "anthropic", "model": "claude-haiku-4-5"}]},
        },
    }
    running, gateway_server = serve_gateway(
        parse_config(data, set(REGISTRY)), f"sqlite:///{tmp_path / 'gateway.db'}", server, fakes
    )

    def ask(key: str, **controls: str) -> httpx.Response:
        body = {"model": "mini", "messages": HI}
        return httpx.post(f"{running.url}/v1/chat/completions", json=body, headers={**headers(key), **controls})

    try:
        answer = ask(running.mint(budget_usd=0.05))
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-gateway-route"].endswith("anthropic/claude-haiku-4-5@global=200")
        assert fakes["anthropic"].state.requests[-1]["json"]["max_tokens"] == 4096
        assert ask(running.mint(), **{"x-gateway-max-cost-usd": "0.03"}).status_code == 200
        dear = ask(running.mint(), **{"x-gateway-max-cost-usd": "0.02"})
        assert "worst-case cost $0.0205" in dear.json()["error"]["message"], dear.text
    finally:
        gateway_server.stop()
