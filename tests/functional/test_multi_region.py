"""One key used from two regions at once: each gateway on its own DynamoDB server, kept in sync by a
replicator that behaves like a global table (asynchronous, last writer wins per item).

With leases (the key homed in us-east-1, eu-west-1 spending from its lease) the budget holds: total spend
never exceeds it and a request is refused only when what its region can still draw (its lease plus what the
home has not leased out) is less than its worst case. The same burst against one shared meter item (a key
without a home region, as every key was before) overspends: the demonstration of the bug this design fixes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import yaml
from botocore.config import Config as BotoConfig

from adapters.providers.registry import REGISTRY
from adapters.store import open_store
from adapters.store.dynamodb import DynamoDBStore
from handler.api.app import create_app
from handler.config import Config, parse_config
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.pipeline.keys import KeyService
from handler.pipeline.pricing import estimate_prompt_tokens, price_for, worst_case_usd
from handler.ports import KeyRecord
from handler.schemas import ChatRequest
from tests.functional.conftest import FAKE_KEYS
from tests.support.dynamo import DynamoServer, table_spec, ttl_attribute
from tests.support.events import event
from tests.support.replicator import Replica, Replicator
from tests.support.servers import ServerThread

HOME, OTHER = "us-east-1", "eu-west-1"
TABLE = "gateway-global"
PER_REGION = 60
FITS = 40
REPLICATION_DELAY = 0.5
LEASE_IDLE_SECONDS = 2.0
MAX_CHILDREN = 3
# The fake answers 7 tokens: with max_tokens 7 a request's worst case is close to its actual cost.
BODY = {"model": "metered", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7}


def region_client(server: DynamoServer, region: str) -> Any:
    """A client for one region's server: moto keeps tables per region, as DynamoDB does."""
    return boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
    ).client("dynamodb", endpoint_url=server.url, config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}))


def config(upstream_url: str) -> Config:
    return parse_config(config_document(upstream_url), set(REGISTRY))


def config_document(upstream_url: str) -> dict[str, Any]:
    return {
        "gateway": {"key_minting": {"max_children": MAX_CHILDREN, "per_minute": 100}},
        "providers": {
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"}
        },
        "models": {
            "metered": {
                "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}],
                "price": {"input": 100, "output": 200},
            }
        },
    }


@dataclass
class Region:
    name: str
    server: DynamoServer
    client: Any
    store_url: str
    gateway: Gateway
    http: ServerThread

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def store(self) -> DynamoDBStore:
        assert isinstance(self.gateway.store, DynamoDBStore)
        return self.gateway.store


@dataclass
class World:
    regions: dict[str, Region]
    replicator: Replicator
    worst: float
    upstream_url: str


@pytest.fixture(scope="module")
def world(upstream: tuple[ServerThread, dict[str, Any]]) -> Iterator[World]:
    servers = {name: DynamoServer().start() for name in (HOME, OTHER)}
    clients = {name: region_client(server, name) for name, server in servers.items()}
    for client in clients.values():
        client.create_table(TableName=TABLE, **table_spec())
        client.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"AttributeName": ttl_attribute(), "Enabled": True}
        )
    replicator = Replicator(Replica(clients[HOME], TABLE), Replica(clients[OTHER], TABLE), REPLICATION_DELAY).start()
    gateway_config = config(upstream[0].url)
    regions = {}
    for name, server in servers.items():
        other = OTHER if name == HOME else HOME
        url = (
            f"dynamodb://{TABLE}?region={name}&endpoint_url={server.url}"
            f"&home_endpoint_{other}={servers[other].url}&lease_idle_seconds={LEASE_IDLE_SECONDS}"
            "&read_timeout=15"  # moto serves one call at a time: under this test's bursts a call can queue for seconds
        )
        gateway = build_gateway(config=gateway_config, store_url=url, environ={**FAKE_KEYS, "GATEWAY_REGION": name})
        http = ServerThread(create_app(gateway), cleanup=gateway.aclose).start()
        regions[name] = Region(name, server, clients[name], url, gateway, http)
    spec = gateway_config.models["metered"]
    worst = worst_case_usd(
        estimate_prompt_tokens(ChatRequest.model_validate(BODY)),
        7,
        price_for("metered", spec, "gpt-4o-mini"),
        gateway_config.gateway.fee,
    )
    assert worst is not None
    yield World(regions, replicator, worst, upstream[0].url)
    for region in regions.values():
        region.http.stop()
    replicator.stop()
    for server in servers.values():
        server.stop()


def mint(region: Region, budget: float | None, homed: bool = True, url: str | None = None, admin: bool = False) -> str:
    """A key created in `region` (through the store `url`, if given); `homed=False` makes a key as before home
    regions (one shared meter)."""

    async def go() -> str:
        store = open_store(url or region.store_url) if homed else DynamoDBStore(region.client, TABLE)
        try:
            record = KeyRecord(id="", name="multi", secret_hash="", created_at=0, budget_usd=budget, admin=admin)
            return (await KeyAdmin(KeyService(store, 0)).mint(record)).key
        finally:
            await store.close()

    return asyncio.run(go())


def wait_for_key_everywhere(world: World, key: str) -> None:
    key_id = key.split("_")[1]
    deadline = time.monotonic() + 10
    for region in world.regions.values():
        while "Item" not in region.client.get_item(
            TableName=TABLE, Key={"pk": {"S": f"KEY#{key_id}"}, "sk": {"S": "KEY"}}
        ):
            assert time.monotonic() < deadline, "the key never replicated"
            time.sleep(0.05)


def burst(world: World, key: str) -> dict[str, list[httpx.Response]]:
    """`PER_REGION` requests to each region, all at once."""

    async def fire() -> dict[str, list[httpx.Response]]:
        limits = httpx.Limits(max_connections=2 * PER_REGION)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            names = list(world.regions)
            calls = [  # interleaved, so that neither region starts first
                client.post(
                    f"{world.regions[name].url}/v1/chat/completions",
                    json=BODY,
                    headers={"authorization": f"Bearer {key}"},
                )
                for _ in range(PER_REGION)
                for name in names
            ]
            answers = await asyncio.gather(*calls)
            return {name: list(answers[i :: len(names)]) for i, name in enumerate(names)}

    return asyncio.run(fire())


def charged(answers: list[httpx.Response]) -> float:
    return sum(float(a.headers["x-gateway-cost-usd"]) for a in answers if a.status_code == 200)


def whoami(region: Region, key: str) -> dict[str, Any]:
    answer = httpx.get(f"{region.url}/v1/key", headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


LEFT = re.compile(r"\(\$([0-9.]+) left\)")


def test_leased_budget_holds_across_two_regions(world: World) -> None:
    budget = FITS * world.worst
    key = mint(world.regions[HOME], budget)
    wait_for_key_everywhere(world, key)
    # The other region answers one request first, so it holds a lease when the burst starts: which region's
    # requests reach the home meter first in a burst is a race, and the home alone can spend the whole budget.
    opening = httpx.post(
        f"{world.regions[OTHER].url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"}
    )
    assert opening.status_code == 200, opening.text
    answers = burst(world, key)
    answers[OTHER].append(opening)

    everything = [a for region in answers.values() for a in region]
    assert {a.status_code for a in everything} <= {200, 402}, [a.text for a in everything if a.status_code >= 400]
    spent = sum(charged(a) for a in answers.values())
    assert spent <= budget + 1e-12, (spent, budget)
    # A refusal says what its region could still draw: its lease plus what the home had not leased out.
    for answer in everything:
        if answer.status_code == 402:
            match = LEFT.search(answer.json()["error"]["message"])
            assert match is not None and float(match.group(1)) < world.worst + 1e-6, answer.json()
    served = {name: sum(a.status_code == 200 for a in region) for name, region in answers.items()}
    assert sum(served.values()) >= FITS - 2, served  # at most one worst case stranded per region's lease

    # Idle leases go home, replication settles, and both regions report the same spend.
    time.sleep(LEASE_IDLE_SECONDS * 2)
    world.replicator.wait_until_settled()
    views = {name: whoami(region, key) for name, region in world.regions.items()}
    for view in views.values():
        assert view["spent_usd"] == pytest.approx(spent, abs=1e-9)
        assert view["reserved_usd"] == pytest.approx(0, abs=1e-9)
        assert view["remaining_usd"] == pytest.approx(budget - spent, abs=1e-9)
    stats = world.regions[OTHER].store.leases.stats
    assert stats.grants >= 1  # the other region did draw on the budget
    # The idle lease went home: the home meter counts only what was spent, nothing leased and unspent.
    home = world.regions[HOME].client.get_item(
        TableName=TABLE, Key={"pk": {"S": f"METER#{key.split('_')[1]}"}, "sk": {"S": "METER"}}
    )["Item"]
    assert float(home["c:total"]["N"]) == pytest.approx(spent, abs=1e-9)
    report = {
        "budget_usd": budget,
        "worst_case_usd": world.worst,
        "served": served,
        "refused": {name: len(answers[name]) - n for name, n in served.items()},
        "spent_usd": spent,
        "grants": stats.grants,
        "granted_usd": stats.granted_usd,
        "returned_usd": stats.returned_usd,
        "replicated_items": world.replicator.stats.copied,
    }
    print("multi-region leases:", report)


def test_a_key_made_through_a_store_url_without_a_region_is_homed_and_holds_its_budget(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dynamodb://TABLE` with `AWS_REGION` set (as an operator's `gateway keys create` runs): the store had no
    region and homed the key nowhere, both regions wrote its one meter item, and a burst spent 1.83x its budget
    ($0.176 of $0.096) while the meter recorded half of it. The key is homed in the client's region, and says so."""
    monkeypatch.setenv("AWS_REGION", HOME)
    home = world.regions[HOME]
    budget = FITS * world.worst
    key = mint(home, budget, url=f"dynamodb://{TABLE}?endpoint_url={home.server.url}")
    wait_for_key_everywhere(world, key)
    assert {name: whoami(region, key)["home_region"] for name, region in world.regions.items()} == {
        HOME: HOME,
        OTHER: HOME,
    }
    answers = burst(world, key)
    spent = sum(charged(a) for a in answers.values())
    assert spent <= budget + 1e-12, (spent, budget)
    time.sleep(LEASE_IDLE_SECONDS * 2)
    world.replicator.wait_until_settled()
    assert whoami(home, key)["spent_usd"] == pytest.approx(spent, abs=1e-9)


def test_one_shared_meter_item_overspends_under_last_writer_wins(world: World) -> None:
    """The naive design: both regions admit against one replicated meter item. Each region's conditions
    see only its own writes (and replication overwrites the other's), so together they overspend."""
    budget = FITS * world.worst
    key = mint(world.regions[HOME], budget, homed=False)
    wait_for_key_everywhere(world, key)
    before = world.replicator.stats.overwritten_concurrent
    answers = burst(world, key)
    spent = sum(charged(a) for a in answers.values())
    served = {name: sum(a.status_code == 200 for a in region) for name, region in answers.items()}
    world.replicator.wait_until_settled()
    print(
        "one shared meter item:",
        {
            "budget_usd": budget,
            "spent_usd": spent,
            "overspend": spent / budget,
            "served": served,
            "lost_updates": world.replicator.stats.overwritten_concurrent - before,
        },
    )
    assert spent > 1.2 * budget


def test_a_parents_child_limit_holds_when_two_regions_mint_at_once(world: World) -> None:
    """Mints under one parent from both regions at once: each region's replica counted its own children and
    passed the count (the last writer wins the count item), so the parent got a child past its limit for each
    region. The count is kept in the parent's home region, as its meter is."""
    parent = mint(world.regions[HOME], 1.0)
    wait_for_key_everywhere(world, parent)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            f"{region.url}/v1/keys",
                            json={"name": f"{region.name}-{n}"},
                            headers={"authorization": f"Bearer {parent}"},
                        )
                        for n in range(MAX_CHILDREN)
                        for region in world.regions.values()
                    )
                )
            )

    answers = asyncio.run(fire())
    minted = [a.json()["id"] for a in answers if a.status_code == 201]
    refused = [a.json()["error"]["code"] for a in answers if a.status_code != 201]
    assert len(minted) == MAX_CHILDREN and refused == ["child_key_limit"] * MAX_CHILDREN, (minted, refused)
    world.replicator.wait_until_settled()

    async def children(region: Region) -> list[str]:
        store = open_store(region.store_url)
        try:
            return sorted(record.id for record in await store.list_keys(parent.split("_")[1]))
        finally:
            await store.close()

    for region in world.regions.values():  # (each replica holds the same three, and no other)
        assert asyncio.run(children(region)) == sorted(minted), region.name


def test_a_familys_mints_a_minute_hold_across_regions(world: World) -> None:
    """docs/keys-and-budgets.md: a root key's family mints `per_minute` keys a minute "in all, whichever of its keys
    mints them". Counted in the region that minted (a lease there of a root homed elsewhere), a root homed in
    us-east-1 minted 3 children through us-east-1 and 3 more through eu-west-1 in the same minute under a limit
    of 3: all 6 were 201. The family's mints are counted on its root in the root's home region."""
    root = mint(world.regions[HOME], None)
    wait_for_key_everywhere(world, root)
    document = config_document(world.upstream_url)
    document["gateway"]["key_minting"] = {"max_children": 100, "per_minute": 3}
    servers = []
    if time.time() % 60 > 45:  # (all six in one minute)
        time.sleep(61 - time.time() % 60)
    try:
        for region in world.regions.values():
            gateway = build_gateway(
                config=parse_config(document, set(REGISTRY)),
                store_url=region.store_url,
                environ={**FAKE_KEYS, "GATEWAY_REGION": region.name},
            )
            servers.append(ServerThread(create_app(gateway), cleanup=gateway.aclose).start())
        answers = [
            httpx.post(f"{server.url}/v1/keys", json={"name": f"c{n}"}, headers={"authorization": f"Bearer {root}"})
            for server in servers
            for n in range(3)
        ]
    finally:
        for server in servers:
            server.stop()
    assert [a.status_code for a in answers] == [201] * 3 + [429] * 3, [a.text for a in answers]
    assert "rate limit mint=3 per minute" in answers[-1].json()["error"]["message"]
    assert 0 < int(answers[-1].headers["retry-after"]) <= 60


def test_a_lease_left_on_lambda_comes_home_when_another_region_needs_it(world: World, tmp_path: Path) -> None:
    """On Lambda the event loop runs only during an invocation, so the sweeper that returns an idle lease never
    ran in a region that got no further request: 20 s after its last use eu still held $0.25 of $1, and us
    refused a $0.90 worst case ("$0.75 left") with $0.0022 spent. A region about to refuse takes home the leases
    idle for `lease_idle_seconds` first. eu's one invocation runs through the Lambda handler in an environment
    that is never invoked again (its process ends)."""
    home, other = world.regions[HOME], world.regions[OTHER]
    key = mint(home, 1.0)
    wait_for_key_everywhere(world, key)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config_document(world.upstream_url)))
    event_path = tmp_path / "chat.json"
    event_path.write_text(json.dumps(event("POST", "/v1/chat/completions", BODY, key=key)))
    env = {
        **os.environ,
        **FAKE_KEYS,
        "GATEWAY_CONFIG": str(config_path),
        "GATEWAY_STORE": other.store_url,
        "GATEWAY_SETTLEMENT_SPOOL": str(tmp_path / "spool.jsonl"),
        "AWS_REGION": OTHER,
    }
    replay = subprocess.run(
        [sys.executable, "-m", "tests.support.lambda_replay", str(event_path)],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert json.loads(replay.stdout)["status"] == 200
    lease_key = {"pk": {"S": f"METER#{key.split('_')[1]}"}, "sk": {"S": f"LEASE#{OTHER}"}}
    lease = other.client.get_item(TableName=TABLE, Key=lease_key, ConsistentRead=True)["Item"]
    assert float(lease["a:total"]["N"]) > 0.2  # what eu was granted and did not spend, left in its lease
    time.sleep(LEASE_IDLE_SECONDS * 1.5)
    world.replicator.wait_until_settled()
    big = {**BODY, "max_tokens": 4500}  # a worst case of about $0.90: more than the home has unleased
    answer = httpx.post(
        f"{home.url}/v1/chat/completions", json=big, headers={"authorization": f"Bearer {key}"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    lease = other.client.get_item(TableName=TABLE, Key=lease_key, ConsistentRead=True)["Item"]
    assert float(lease["a:total"]["N"]) == 0
    world.replicator.wait_until_settled()
    costs = [
        float(json.loads(replay.stdout)["headers"]["x-gateway-cost-usd"]),
        float(answer.headers["x-gateway-cost-usd"]),
    ]
    view = whoami(home, key)
    assert (view["spent_usd"], view["reserved_usd"]) == (
        pytest.approx(sum(costs), abs=1e-9),
        pytest.approx(0, abs=1e-9),
    )


def test_key_writes_made_in_a_region_are_read_there_at_once(world: World) -> None:
    """A key's writes go to the key's home region (a child's count and record to its parent's), and this region's
    replica has them only with replication: a child minted in eu under a parent homed in us was 401 in eu for
    1.34 s, a secret rotated in eu for 1.09 s, and a second admin write in a row in eu a 400 "the key changed
    while updating; retry" (which the SDKs do not retry). Each is checked in the process that wrote and in
    another eu process (its own cache, as another worker or Lambda environment)."""
    home, other = world.regions[HOME], world.regions[OTHER]
    admin, parent = mint(home, None, admin=True), mint(home, 1.0)
    for key in (admin, parent):
        wait_for_key_everywhere(world, key)
    gateway = build_gateway(
        config=config(world.upstream_url), store_url=other.store_url, environ={**FAKE_KEYS, "GATEWAY_REGION": OTHER}
    )
    second = ServerThread(create_app(gateway), cleanup=gateway.aclose).start()
    as_admin = {"authorization": f"Bearer {admin}"}
    try:
        minted = httpx.post(f"{other.url}/v1/keys", json={"name": "run"}, headers={"authorization": f"Bearer {parent}"})
        assert minted.status_code == 201, minted.text
        child = minted.json()["key"]
        assert [chat_status(url, child) for url in (other.url, second.url)] == [200, 200]

        key = mint(home, 1.0)
        wait_for_key_everywhere(world, key)
        assert chat_status(second.url, key) == 200  # cached there before the rotation
        rotated = httpx.post(
            f"{other.url}/admin/keys/{key.split('_')[1]}/rotate", json={"grace_seconds": 0}, headers=as_admin
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["key"]
        assert [chat_status(url, new) for url in (other.url, second.url)] == [200, 200]
        assert chat_status(other.url, key) == 401

        path = f"/admin/keys/{key.split('_')[1]}"
        writes = [
            httpx.patch(f"{other.url}{path}", json={"tags": {"team": "a"}}, headers=as_admin),
            httpx.patch(f"{second.url}{path}", json={"tags": {"team": "b"}}, headers=as_admin),
            httpx.post(f"{other.url}{path}/revoke", headers=as_admin),
        ]
        assert [w.status_code for w in writes] == [200, 200, 200], [w.text for w in writes]
        assert writes[2].json()["tags"] == {"team": "b"}
        assert chat_status(other.url, new) == 401
    finally:
        second.stop()


def chat_status(url: str, key: str) -> int:
    answer = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"authorization": f"Bearer {key}"})
    return answer.status_code
