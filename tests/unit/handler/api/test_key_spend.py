"""What a key without a budget of its own spent (`GET /v1/key`, `GET /admin/keys/{id}`; handler/api/key_spend.py):
read as a key's figure, never in a usage report's turn; one sum shared by the reads of a key at once and kept a few
seconds; sums waiting a turn of their own, for a bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from handler.api import key_spend
from handler.api.app import create_app
from handler.api.key_spend import KeySpends
from handler.pipeline.gateway import Gateway, build_gateway
from handler.pipeline.key_admin import KeyAdmin
from handler.ports import KeyRecord, LedgerItem, Settlement, UsageQuery
from tests.conftest import clear_of_period_end
from tests.unit.adapters.store.test_contract import line


def slowed(gateway: Gateway, seconds: float) -> list[UsageQuery]:
    """The store's ledger scans each taking `seconds` more (a month of a busy key's lines on DynamoDB takes longer);
    the queries scanned, as they come."""
    scan = gateway.store.scan_usage
    scanned: list[UsageQuery] = []

    async def slow(query: UsageQuery, consume: Callable[[list[LedgerItem]], None]) -> None:
        scanned.append(query)
        await asyncio.sleep(seconds)
        await scan(query, consume)

    gateway.store.scan_usage = slow  # type: ignore[method-assign]
    return scanned


async def minted(gateway: Gateway, name: str, admin: bool = False) -> tuple[str, str]:
    """A new root key without a budget: its id and its key."""
    made = await KeyAdmin(gateway.keys).mint(KeyRecord(id="", name=name, secret_hash="", created_at=0, admin=admin))
    return made.record.id, made.key


def client(gateway: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://gw")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def spend(gateway: Gateway, key_id: str, cost: float) -> None:
    """A line of `cost` for `key_id`, 10 s or more before the month ends: the reads that follow sum its month."""
    clear_of_period_end("month", 10)
    item = line(key_id, cost)
    await gateway.store.settle(Settlement(item.request_id, [], 0.0, [], item))


async def test_three_key_reads_at_once_are_all_answered() -> None:
    """Three `GET /v1/key` at once by one plain key (no budget: a client checking its spend from three workers) each
    took a report turn of the key's family, of which it has two: the third was a 429 "this key's family has 2 usage
    reports in progress" though the client asked for no report. Found by review."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    key_id, key = await minted(gateway, "plain")
    await spend(gateway, key_id, 0.25)
    slowed(gateway, 0.3)
    async with client(gateway) as http:
        answers = await asyncio.gather(*(http.get("/v1/key", headers=bearer(key)) for _ in range(3)))
    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]
    assert [answer.json()["spent_usd"] for answer in answers] == [0.25] * 3


async def test_an_admin_showing_three_keys_at_once_is_answered() -> None:
    """An operator's script showing three keys at once (`GET /admin/keys/{id}`, each without a budget): each took a
    report turn of the admin's own family, and the third was a 429. Found by review."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    _, admin = await minted(gateway, "ops", admin=True)
    ids = [(await minted(gateway, f"svc-{n}"))[0] for n in range(3)]
    slowed(gateway, 0.3)
    async with client(gateway) as http:
        answers = await asyncio.gather(*(http.get(f"/admin/keys/{key_id}", headers=bearer(admin)) for key_id in ids))
    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]


async def test_a_key_read_is_answered_while_its_family_makes_its_two_reports() -> None:
    """A key whose family has its two usage reports in progress still reads its own spend: a key read is never
    refused for reports (it was the 429 of a third report)."""
    gateway = build_gateway(store_url="sqlite://", environ={})
    _, key = await minted(gateway, "reporter")
    scanned = slowed(gateway, 0.5)
    async with client(gateway) as http:
        reports = [asyncio.ensure_future(http.get("/v1/usage", headers=bearer(key))) for _ in range(2)]
        while len(scanned) < 2:  # (both reports in their turns)
            await asyncio.sleep(0.01)
        read = await http.get("/v1/key", headers=bearer(key))
        assert [report.status_code for report in await asyncio.gather(*reports)] == [200, 200]
    assert read.status_code == 200, read.text
    assert (read.json()["spent_usd"], read.json()["period"][:6]) == (0.0, "month:")


async def test_reads_of_a_key_share_one_sum_and_its_figure_is_kept_a_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each read summed the family's month from the ledger: on DynamoDB every line of it, per call, its time and
    read units growing with the month's traffic. Reads of a key at once share one sum, and the figure serves the key's
    reads for `FRESH_SECONDS` (here 1.5 s); after that a read sums the month again, the lines since with it."""
    monkeypatch.setattr(key_spend, "FRESH_SECONDS", 1.5)
    gateway = build_gateway(store_url="sqlite://", environ={})
    key_id, key = await minted(gateway, "polled")
    _, other = await minted(gateway, "other")
    await spend(gateway, key_id, 0.25)
    scanned = slowed(gateway, 0.2)
    async with client(gateway) as http:
        answers = await asyncio.gather(*(http.get("/v1/key", headers=bearer(key)) for _ in range(5)))
        assert [answer.json()["spent_usd"] for answer in answers] == [0.25] * 5
        assert len(scanned) == 1  # (five before)
        await spend(gateway, key_id, 0.5)
        again = await http.get("/v1/key", headers=bearer(key))
        assert (again.json()["spent_usd"], len(scanned)) == (0.25, 1)  # the figure of a moment ago
        assert (await http.get("/v1/key", headers=bearer(other))).json()["spent_usd"] == 0.0  # (a key of its own)
        assert len(scanned) == 2
        await asyncio.sleep(1.5)
        later = await http.get("/v1/key", headers=bearer(key))
    assert (later.json()["spent_usd"], len(scanned)) == (0.75, 3)


async def test_a_sum_without_a_turn_in_time_is_a_503_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sums wait their own turn (here one at a time), and for at most `WAIT_SECONDS` (here 0.2 s): a read whose sum
    does not get one by then is a 503 `server_busy` with `retry-after`, never a wait without end."""
    monkeypatch.setattr(key_spend, "SUMS_AT_ONCE", 1)
    monkeypatch.setattr(key_spend, "WAIT_SECONDS", 0.2)
    gateway = build_gateway(store_url="sqlite://", environ={})
    keys = [(await minted(gateway, f"k{n}"))[1] for n in range(2)]
    slowed(gateway, 0.6)
    async with client(gateway) as http:
        first = asyncio.ensure_future(http.get("/v1/key", headers=bearer(keys[0])))
        await asyncio.sleep(0.05)
        second = await http.get("/v1/key", headers=bearer(keys[1]))
        assert (await first).status_code == 200
    assert second.status_code == 503, second.text
    assert (second.json()["error"]["code"], second.headers["retry-after"]) == ("server_busy", "1")
    assert "within 0.2 s" in second.json()["error"]["message"]


async def test_the_figures_kept_are_bounded_and_the_oldest_go_first() -> None:
    spends = KeySpends(build_gateway(store_url="sqlite://", environ={}).store)
    spends.kept = 3
    for n in range(3):
        spends._keep((f"k{n}", "month:2026-12"), 0.0, Decimal(n))  # (summed long ago)
    spends._keep(("k3", "month:2026-12"), 1e12, Decimal(3))  # (the stale ones go)
    assert list(spends._figures) == [("k3", "month:2026-12")]
    for n in range(4, 8):
        spends._keep((f"k{n}", "month:2026-12"), 1e12, Decimal(n))  # (all fresh: the oldest go, past `kept`)
    assert list(spends._figures) == [(f"k{n}", "month:2026-12") for n in (5, 6, 7)]
