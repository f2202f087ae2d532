"""The report gate (`handler/api/report_gate.py`): a key family has at most two usage reports in hand at once."""

from __future__ import annotations

import asyncio

import pytest

from handler.api.report_gate import ReportGate
from handler.errors import RateLimitError
from handler.ports import KeyRecord

ADMIN = KeyRecord(id="admin0000000", name="admin", secret_hash="", created_at=0, admin=True)
AGENT = KeyRecord(
    id="agent0000000", name="agent-run-42", secret_hash="", created_at=0, parent_id=ADMIN.id, ancestors=[ADMIN.id]
)
SESSION = KeyRecord(
    id="sessn0000000",
    name="dashboard session",
    secret_hash="",
    created_at=0,
    admin=True,
    parent_id=ADMIN.id,
    ancestors=[ADMIN.id],
)


async def test_a_client_childs_reports_do_not_lock_the_operators_dashboard_out() -> None:
    """A dashboard session counted under its family's root, the operator's admin key, with every client key that
    admin key minted (`POST /v1/keys`): a client holding two reports of its own had the operator's dashboard refused,
    a 429 and no figures. Its admin keys count apart from them. Found by review."""
    gate = ReportGate()
    release = asyncio.Event()
    turns: list[str] = []

    async def report(caller: KeyRecord) -> None:
        async with gate.turn(caller):
            turns.append(caller.name)
            await release.wait()

    held = [asyncio.create_task(report(AGENT)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(RateLimitError, match="2 usage reports in progress"):
        async with gate.turn(AGENT):  # (the client's own third: refused, as before)
            pass
    dashboard = asyncio.create_task(report(SESSION))  # (waits for a turn of the process's two, never refused)
    admin = asyncio.create_task(report(ADMIN))
    await asyncio.sleep(0)
    with pytest.raises(RateLimitError):  # (the admin family's own two, the session's and the admin key's)
        async with gate.turn(SESSION):
            pass
    release.set()
    await asyncio.gather(*held, dashboard, admin)
    assert sorted(turns) == ["admin", "agent-run-42", "agent-run-42", "dashboard session"]
