"""A few seconds of the benchmark in every test run: it fails on errors, never on timings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ran(module: str, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m module arguments` run from the repository's root, which must succeed (its output, if not)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


@pytest.mark.skipif(not (shutil.which("nginx") and shutil.which("wrk")), reason="nginx and wrk: `make tools`")
def test_benchmark_smoke_run_has_no_errors(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    result = ran("tests.bench.run", "--smoke", "--json", str(report))
    assert "gateway req/s" in result.stdout and report.exists()
    assert "its key's budget exact" in result.stdout  # two workers on one key: spend, ledger and reservations agree
    # Issue 22's bounds for each API, the warm Lambda invocation of each among them.
    for route in ("/v1/messages pass-through", "/v1/responses"):
        assert f"| {route}: warm Lambda µs of own work" in result.stdout
        assert f"| {route}: added p99 ms at 1 connection" in result.stdout


def test_the_chat_route_is_timed_part_by_part() -> None:
    """tests/bench/chat_parts.py, one round of one request a connection: every variant answers 200 (the run fails on
    any other status) and has its row."""
    result = ran("tests.bench.chat_parts", "--rounds", "1", "--block", "1", timeout=120)
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert {"gateway", "flat", "unmetered", "forward"} <= set(rows)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind: `make tools`")
def test_instruction_counts_grow_with_the_work_and_repeat() -> None:
    from tests.bench.run import instructions

    environ = {"PATH": "/usr/bin:/bin"}
    bare = instructions("pass", environ)
    more = instructions("import json, decimal; sum(range(100_000))", environ)
    assert 1e6 < bare < more
    assert abs(instructions("pass", environ) - bare) < 0.01 * bare  # the same count each time, within 1 %


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind: `make tools`")
def test_warm_invocations_are_counted_in_instructions() -> None:
    """tests/bench/warm_instructions.py, a few invocations: the gateway's warm invocation counts more than the bare
    proxy's (it authenticates, meters, settles) and each is counted at all."""
    result = ran("tests.bench.warm_instructions", "--warm-up", "3", "--invocations", "3", "chat", "bare")
    figures = json.loads(result.stderr.strip().splitlines()[-1])
    assert figures["chat"] > figures["bare"] > 50_000


@pytest.mark.skipif(not (shutil.which("nginx") and shutil.which("wrk")), reason="nginx and wrk: `make tools`")
def test_the_floor_serves_and_writes_a_ledger_line_per_answer() -> None:
    """tests/bench/floor.py, a round of a second: the floor answers without errors, beside the bare proxy and the
    gateway, and has a ledger line for every answer wrk saw in the round (it is a floor for a metered proxy, not a
    bare one), and no more than the requests in flight when the round ended."""
    import re

    result = ran("tests.bench.floor", "--rounds", "1", "--seconds", "1")
    for server in ("bare", "floor", "gateway"):
        assert re.search(rf"^\| {server} \| [\d,]+ \| [\d.]+ \| \d+ \|$", result.stdout, re.MULTILINE), result.stdout
    lines, answered = re.search(r"ledger: ([\d,]+) lines for the ([\d,]+) answers", result.stdout).groups()  # type: ignore[union-attr]
    lines_written, answers = int(lines.replace(",", "")), int(answered.replace(",", ""))
    assert 0 < answers <= lines_written <= answers + 8  # (at most a request in flight per connection at the end)
