"""A parent key's family through the running gateway: `max_children` holds under concurrent mints (one gateway,
and two gateways on one SQLite file, as `gateway serve --workers 2` runs), and a child's spend stays in its
parent's reports after the child's record is purged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.providers.registry import REGISTRY
from adapters.store import open_store
from adapters.store.dynamodb import DynamoDBStore
from adapters.store.expressions import num, text
from handler.api.app import create_app
from handler.config import Config, parse_config
from handler.entry.cli import main
from handler.pipeline.gateway import build_gateway
from handler.pipeline.key_admin import KeyAdmin, new_key_id
from handler.pipeline.keys import KeyService, split_key
from handler.ports import KeyRecord, Settlement, Store, StoreError
from tests.functional.conftest import FAKE_KEYS, Running, param_store_url, serve_gateway, serving
from tests.support.dynamo import DynamoServer
from tests.support.inprocess import serve
from tests.support.servers import ServerThread
from tests.unit.adapters.store.test_contract import (
    HOME_REGION,
    LEASE_REGION,
    key_item,
    line,
    regional_stores,
    replicate_item,
)

HI = [{"role": "user", "content": "Hi"}]
MAX_CHILDREN = 3


def family_config(upstream_url: str) -> Config:
    return parse_config(
        {
            "gateway": {"key_minting": {"per_minute": 1000, "max_children": MAX_CHILDREN}, "key_cache_seconds": 0},
            "providers": {
                "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"}
            },
            "models": {
                "gpt-test": {
                    "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}],
                    "price": {"input": 1.0, "output": 2.0},
                }
            },
        },
        set(REGISTRY),
    )


@pytest.fixture(scope="module", params=["sqlite", "dynamodb"])
def gateway(
    request: pytest.FixtureRequest,
    upstream: tuple[ServerThread, dict[str, Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Running]:
    store_url = param_store_url(request, tmp_path_factory, "family")
    yield from serving(family_config(upstream[0].url), store_url, upstream)


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def mint_at_once(urls: list[str], parent: str, count: int) -> list[httpx.Response]:
    """`count` `POST /v1/keys` under `parent` sent together, spread over `urls`."""

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{urls[i % len(urls)]}/v1/keys", json={"name": f"c{i}"}, headers=auth(parent))
                    for i in range(count)
                )
            )

    return asyncio.run(go())


def test_concurrent_mints_stop_at_max_children(gateway: Running) -> None:
    parent = gateway.mint(name="parent")
    answers = mint_at_once([gateway.url], parent, 20)
    assert sorted(a.status_code for a in answers) == [201] * MAX_CHILDREN + [403] * (20 - MAX_CHILDREN)
    refused = next(a for a in answers if a.status_code == 403)
    assert refused.json()["error"]["code"] == "child_key_limit"
    admin = gateway.mint(name="admin", admin=True)
    parent_id = (split_key(parent) or ("", ""))[0]
    listed = httpx.get(f"{gateway.url}/admin/keys", params={"parent_id": parent_id}, headers=auth(admin)).json()
    assert len(listed["data"]) == MAX_CHILDREN


def age(store_url: str, key_id: str, seconds: float) -> None:
    """The key as if it had expired `seconds` ago (a day and more: what its store then purges)."""

    async def go() -> None:
        store = open_store(store_url)
        try:
            record = await store.get_key(key_id)
            assert record is not None
            await store.update_key(replace(record, expires_at=time.time() - seconds, version=record.version + 1))
        finally:
            await store.close()

    asyncio.run(go())


def test_a_purged_child_frees_its_place(gateway: Running) -> None:
    parent = gateway.mint(name="parent")
    children = [a.json()["id"] for a in mint_at_once([gateway.url], parent, MAX_CHILDREN)]
    assert mint_at_once([gateway.url], parent, 1)[0].status_code == 403
    age(gateway.store_url, children[0], 86400 + 60)
    assert sorted(a.status_code for a in mint_at_once([gateway.url], parent, 2)) == [201, 403]  # (either may win)


def totals(gateway: Running, path: str, caller: str, **params: str) -> tuple[int, float]:
    rows = httpx.get(f"{gateway.url}{path}", params=params, headers=auth(caller), timeout=10).json()["data"]
    return sum(r["requests"] for r in rows), round(sum(r.get("cost_usd") or 0 for r in rows), 9)


@pytest.mark.parametrize("ending", ["expired", "revoked"])
def test_a_purged_childs_spend_stays_in_its_parents_usage(gateway: Running, ending: str) -> None:
    parent = gateway.mint(name="team")
    admin = gateway.mint(name="admin", admin=True)
    parent_id = (split_key(parent) or ("", ""))[0]
    minted = httpx.post(f"{gateway.url}/v1/keys", json={"name": "agent-run"}, headers=auth(parent)).json()
    grandchild = httpx.post(f"{gateway.url}/v1/keys", json={"name": "sub"}, headers=auth(minted["key"])).json()
    for key in (parent, minted["key"], grandchild["key"]):
        body = {"model": "gpt-test", "messages": HI}
        assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth(key)).status_code == 200
        assert gateway.ledger(key)
    before = totals(gateway, "/v1/usage", parent)
    assert before[0] == 3
    assert totals(gateway, "/admin/usage", admin, key=parent_id) == before
    for child_id in (minted["id"], grandchild["id"]):
        if ending == "expired":
            age(gateway.store_url, child_id, 86400 + 60)
        else:
            revoke(gateway.store_url, child_id, time.time() - 86400 - 60)
    gone = httpx.get(f"{gateway.url}/admin/keys", params={"parent_id": parent_id}, headers=auth(admin)).json()
    assert gone["data"] == []  # the child's record is purged; its lines are not
    assert totals(gateway, "/v1/usage", parent) == before
    assert totals(gateway, "/admin/usage", admin, key=parent_id) == before


def test_admin_usage_of_a_key_the_store_never_had_is_a_404_and_a_purged_ones_still_reports(gateway: Running) -> None:
    """`GET /admin/usage?key=nosuchkeyid` answered an empty 200, where `gateway usage --key nosuchkeyid` exits 1 and
    `/admin/keys/nosuchkeyid` is a 404. A key whose record is purged but whose lines are in the window still reports
    them; a live key with none reports nothing. Found by review."""
    admin = gateway.mint(name="admin", admin=True)
    parent = gateway.mint(name="team")
    minted = httpx.post(f"{gateway.url}/v1/keys", json={"name": "run"}, headers=auth(parent)).json()
    body = {"model": "gpt-test", "messages": HI}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth(minted["key"])).status_code == 200
    assert gateway.ledger(minted["key"])
    revoke(gateway.store_url, minted["id"], time.time() - 86400 - 60)  # (its record purged; its lines are not)
    assert totals(gateway, "/admin/usage", admin, key=minted["id"])[0] == 1
    quiet = (split_key(gateway.mint(name="quiet")) or ("", ""))[0]
    assert totals(gateway, "/admin/usage", admin, key=quiet) == (0, 0)

    for asked, status, code, said in (
        ("nosuchkeyid", 404, "not_found", "no key with id 'nosuchkeyid' (nor any usage of it in the window)"),
        # (A whole key where its id goes: never echoed, secret and all.)
        *(
            (
                whole,
                400,
                "invalid_request",
                "key takes a key's id (the part between `gwk_` and the next `_`), not the key",
            )
            for whole in (parent, parent.removeprefix("gwk_"))  # (without its `gwk_`, it was echoed whole)
        ),
    ):
        for shape in ("json", "csv"):
            answer = httpx.get(
                f"{gateway.url}/admin/usage", params={"key": asked, "format": shape}, headers=auth(admin), timeout=10
            )
            assert answer.status_code == status and answer.headers["x-should-retry"] == "false"
            assert answer.json() == {
                "error": {"message": said, "type": "invalid_request_error", "param": "key", "code": code}
            }
    secret = parent.split("_", 2)[2]
    for whole in (parent, parent.removeprefix("gwk_")):  # (a key's own routes: their 404 never echoes one either)
        for method, path, body in (
            ("GET", f"/admin/keys/{whole}", None),
            ("PATCH", f"/admin/keys/{whole}", {"tags": {}}),
            ("POST", f"/admin/keys/{whole}/rotate", {}),
            ("POST", f"/admin/keys/{whole}/revoke", None),
        ):
            answer = httpx.request(method, f"{gateway.url}{path}", json=body, headers=auth(admin), timeout=10)
            assert answer.status_code == 404 and secret not in answer.text, (path, answer.text)
        # A key's children listed by a whole key: none, as if it had no children; now what to give instead.
        listed = httpx.get(f"{gateway.url}/admin/keys", params={"parent_id": whole}, headers=auth(admin), timeout=10)
        assert listed.status_code == 400 and listed.json()["error"]["param"] == "parent_id"
        assert secret not in listed.text and "not the key" in listed.text


async def test_an_id_no_key_can_have_is_answered_before_the_store_is_asked() -> None:
    """A key's id is 12 characters. `GET /admin/keys/{id}`, `?parent_id=` and `/admin/usage?key=` asked the store
    for an id of any length: DynamoDB refuses one past its 2,048-byte key limit (a ValidationException, which the
    gateway answered 503 "retry shortly"; moto does not check), where SQLite answered 404. Now the same answer on
    every store, before any is asked (here one refusing such ids as DynamoDB does)."""
    served = await serve(unused, {})
    store = served.gateway.store
    asked: list[str] = []

    def refusing(read: Any) -> Any:
        async def checked(*args: Any, **kwargs: Any) -> Any:
            asked.extend(arg for arg in args if isinstance(arg, str) and len(arg) > 12)
            if any(isinstance(arg, str) and len(arg.encode()) > 2048 for arg in args):
                raise StoreError("ValidationException: key size exceeds the 2048-byte limit")
            return await read(*args, **kwargs)

        return checked

    for name in ("get_key", "get_key_latest", "list_keys", "child_ids", "family_ids"):
        setattr(store, name, refusing(getattr(store, name)))
    admin = await KeyAdmin(KeyService(store, 0)).mint(
        KeyRecord(id="", name="a", secret_hash="", created_at=0, admin=True)
    )
    auth = {"authorization": f"Bearer {admin.key}"}
    long_id = "k" * 3000
    for method, path, params, status, param in (
        ("GET", f"/admin/keys/{long_id}", {}, 404, None),
        ("PATCH", f"/admin/keys/{long_id}", {}, 404, None),
        ("POST", f"/admin/keys/{long_id}/revoke", {}, 404, None),
        ("POST", f"/admin/keys/{long_id}/rotate", {}, 404, None),
        ("GET", "/admin/keys", {"parent_id": long_id}, 400, "parent_id"),
        ("GET", "/admin/usage", {"key": long_id}, 404, "key"),
        ("GET", "/admin/usage", {"key": "nosuchkeyid"}, 404, "key"),  # (11 characters)
    ):
        body = {"tags": {}} if method == "PATCH" else {} if method == "POST" else None
        answer = await served.http.request(method, path, params=params, json=body, headers=auth)
        assert answer.status_code == status, (path, answer.text)
        assert answer.json()["error"]["param"] == param and long_id not in answer.text
    assert asked == []
    await served.gateway.aclose()


def unused(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no upstream call expected")


def revoke(store_url: str, key_id: str, at: float) -> None:
    async def go() -> None:
        store = open_store(store_url)
        try:
            record: KeyRecord | None = await store.get_key(key_id)
            assert record is not None
            await store.update_key(replace(record, revoked_at=at, version=record.version + 1))
        finally:
            await store.close()

    asyncio.run(go())


async def put_as_before(store: Store, parent: KeyRecord, **fields: Any) -> KeyRecord:
    """A key under `parent` written as the gateway before family counts and cascading revocations wrote it: on
    DynamoDB its item, its parent's own child count (`n`) and its `CHILD#` link, nothing on its root's partition
    (`git show e606a7e:adapters/store/dynamo_keys.py`); SQLite's rows were as they are."""
    record = KeyRecord(
        id=new_key_id(),
        name=fields.pop("name", "old"),
        secret_hash="0" * 64,
        created_at=time.time() - 7200,
        parent_id=parent.id,
        ancestors=[*parent.ancestors, parent.id],
        home_region=parent.home_region,
        **fields,
    )
    if not isinstance(store, DynamoDBStore):
        await store.create_key(record)
        return record
    await store._call("put_item", TableName=store.table, Item=store._key_item(record))
    await store._call(
        "update_item",
        TableName=store.table,
        Key=store._family_key(parent.id, "COUNT"),
        UpdateExpression="ADD #n :one",
        ExpressionAttributeNames={"#n": "n"},
        ExpressionAttributeValues={":one": num(1)},
    )
    link = store._link_item(parent.id, record.id, None, None)
    await store._call("put_item", TableName=store.table, Item={**link, "child": text(record.id)})
    return record


def test_migrate_brings_an_older_gateways_families_and_revocations(
    gateway: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store an older gateway wrote, upgraded: on DynamoDB its keys below a root's children had no `DESC#` link
    and the root no family count, so the recount saw the children only and a root with 1 child and 2 grandchildren
    (limit 3) minted a fourth key; on both stores the keys under a key it revoked stayed shown live (`revoked_at`
    None) and were never purged, nor, once the revoked key was purged, could any revocation reach them. `gateway
    store migrate` links and counts the families, and revokes those keys (`revoked_by`); a second run changes
    nothing."""
    admin = gateway.mint(name="admin", admin=True)
    an_hour_ago, two_days_ago = time.time() - 3600, time.time() - 2 * 86400

    async def populate() -> tuple[str, dict[str, KeyRecord]]:
        store = open_store(gateway.store_url)
        try:
            service = KeyAdmin(KeyService(store, 0))
            minted = await service.mint(KeyRecord(id="", name="root", secret_hash="", created_at=0))
            root = minted.record
            kid = await put_as_before(store, root, name="kid")
            old = {"root": root, "kid": kid}
            old["grandchild"] = await put_as_before(store, kid, name="grandchild")
            old["grandchild2"] = await put_as_before(store, kid, name="grandchild2")
            team = (await service.mint(KeyRecord(id="", name="team", secret_hash="", created_at=0))).record
            old["revoked"] = await put_as_before(store, team, name="revoked", revoked_at=an_hour_ago)
            old["under_revoked"] = await put_as_before(store, old["revoked"], name="under-revoked")
            old["deeper"] = await put_as_before(store, old["under_revoked"], name="deeper")
            gone = await put_as_before(store, team, name="purged", revoked_at=two_days_ago)
            old["under_purged"] = await put_as_before(store, gone, name="under-purged")
            old["purged"] = gone
            return minted.key, old
        finally:
            await store.close()

    root_key, old = asyncio.run(populate())

    def shown(name: str) -> dict[str, Any]:
        answer = httpx.get(f"{gateway.url}/admin/keys/{old[name].id}", headers=auth(admin))
        assert answer.status_code == 200, answer.text
        view: dict[str, Any] = answer.json()
        return view

    assert shown("under_revoked")["revoked_at"] is None  # (as the older gateway left it)
    capsys.readouterr()
    assert main(["store", "migrate", "--store", gateway.store_url]) == 0
    first_run = capsys.readouterr().out

    refused = httpx.post(f"{gateway.url}/v1/keys", json={"name": "fourth"}, headers=auth(root_key))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "child_key_limit", refused.text
    for name in ("kid", "grandchild", "grandchild2"):
        assert (shown(name)["revoked_at"], shown(name)["revoked_by"]) == (None, None)
    assert (shown("revoked")["revoked_at"], shown("revoked")["revoked_by"]) == (an_hour_ago, None)  # its own
    for name in ("under_revoked", "deeper"):
        assert (shown(name)["revoked_at"], shown(name)["revoked_by"]) == (an_hour_ago, old["revoked"].id)
    orphan = shown("under_purged")  # its parent's end is no longer known: revoked from the migration on
    assert orphan["revoked_by"] == old["purged"].id and time.time() - 60 < orphan["revoked_at"] <= time.time()
    listed = httpx.get(
        f"{gateway.url}/admin/keys", params={"parent_id": old["revoked"].id}, headers=auth(admin)
    ).json()["data"]
    assert [(k["id"], k["revoked_by"]) for k in listed] == [(old["under_revoked"].id, old["revoked"].id)]

    assert first_run.endswith(", 3 keys revoked with a revoked or purged ancestor\n")
    capsys.readouterr()  # (the gateway's request log lines)
    assert main(["store", "migrate", "--store", gateway.store_url]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == "ok: 0 items moved, 0 keys revoked with a revoked or purged ancestor"


def test_two_gateways_on_one_sqlite_file_stop_at_max_children(
    upstream: tuple[ServerThread, dict[str, Any]], tmp_path: Path
) -> None:
    """Two gateways, each with its own connection to the file (as two worker processes have): a count read
    outside the insert's transaction let both pass it at once."""
    server, fakes = upstream
    config = family_config(server.url)
    store_url = f"sqlite:///{tmp_path / 'gateway.db'}"
    one, one_server = serve_gateway(config, store_url, server, fakes, FAKE_KEYS)
    two, two_server = serve_gateway(config, store_url, server, fakes, FAKE_KEYS)
    try:
        for _ in range(5):
            parent = one.mint(name="parent")
            created = sum(a.status_code == 201 for a in mint_at_once([one.url, two.url], parent, 30))
            assert created == MAX_CHILDREN
    finally:
        one_server.stop()
        two_server.stop()


async def test_a_child_minted_in_another_region_is_in_its_parents_reports_and_revoked_there_at_once(
    dynamo: DynamoServer,
) -> None:
    """A child's link to its parent is written in its family root's home region, and its record there too (copied
    where it was minted); another region's replica has them only with replication, and its key listing (an index)
    a moment later still. Meanwhile, in that region, a parent's reports walked its own replica's links and left out
    the spend of a child minted there, and showing or revoking by its id a child minted in the root's home was a 404.
    Both now read the family where it is written."""
    regional = regional_stores(dynamo)
    home, here = regional(HOME_REGION), regional(LEASE_REGION)
    at_home = KeyAdmin(KeyService(home, 0))
    admin = await at_home.mint(KeyRecord(id="", name="admin", secret_hash="", created_at=0, admin=True))
    parent = await at_home.mint(KeyRecord(id="", name="team", secret_hash="", created_at=0))
    for old in (admin, parent):  # replicated long ago
        await replicate_item(home, here, key_item(old.record.id))
    listed = here.list_keys

    async def lagging(parent_id: str | None = None) -> list[KeyRecord]:
        """The key listing's index (eventually consistent) without the children minted a moment ago."""
        return [] if parent_id is not None else await listed()

    here.list_keys = lagging  # type: ignore[method-assign]
    gateway = build_gateway(store=here, environ={**FAKE_KEYS, "GATEWAY_REGION": LEASE_REGION})
    app = create_app(gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        minted = await http.post("/v1/keys", json={"name": "run"}, headers=auth(parent.key))
        assert minted.status_code == 201, minted.text
        spent = line(minted.json()["id"], 0.25)  # the child's request, answered here: its line is written here
        await here.settle(Settlement(spent.request_id, [], 0.0, [], spent, expires_at=time.time() + 60))

        async def cost(path: str, caller: str, **params: str) -> float:
            answer = await http.get(path, params=params, headers=auth(caller))
            assert answer.status_code == 200, answer.text
            return round(sum(row.get("cost_usd") or 0 for row in answer.json()["data"]), 9)

        assert await cost("/v1/usage", parent.key) == pytest.approx(0.25)
        assert await cost("/admin/usage", admin.key, key=parent.record.id) == pytest.approx(0.25)
        template = KeyRecord(
            id="",
            name="elsewhere",
            secret_hash="",
            created_at=0,
            parent_id=parent.record.id,
            ancestors=[parent.record.id],
        )
        other = (await at_home.mint_child(template, 100, HOME_REGION)).record  # minted in the home region
        shown = await http.get(f"/admin/keys/{other.id}", headers=auth(admin.key))
        assert shown.status_code == 200 and shown.json()["name"] == "elsewhere", shown.text
        revoked = await http.post(f"/admin/keys/{other.id}/revoke", headers=auth(admin.key))
        assert revoked.status_code == 200, revoked.text
    held = await home.get_key(other.id)  # where it was written
    assert held is not None and held.revoked_at is not None
    await gateway.aclose()
    await home.close()
