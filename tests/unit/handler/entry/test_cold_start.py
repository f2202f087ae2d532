"""Start-up in a fresh interpreter, as Lambda's init phase and `gateway serve`'s workers run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]

# Counts the collections start-up runs (those before its `gc.freeze()`), then says how the collector is left.
PROBE = """
import gc, json
collections = []
gc.callbacks.append(lambda phase, info: phase == "stop" and not gc.get_freeze_count() and collections.append(1))
import {module}
print(json.dumps({{"collections": len(collections), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""


@pytest.mark.parametrize("module", ["handler.entry.lambda_handler", "handler.entry.asgi"])
def test_start_up_runs_no_collection_of_its_own_and_leaves_the_collector_on(module: str, tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_STORE": f"sqlite:///{tmp_path / 'gateway.db'}", "GATEWAY_WARM": "off"}
    env.pop("AWS_LAMBDA_FUNCTION_NAME", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    # None of its own (without turning the collector off: about a hundred); one young collection may fall in
    # importing the packages above the entry module, before it can turn the collector off.
    assert state["collections"] <= 1
    assert state["enabled"] is True
    assert state["frozen"] > 10_000  # what start-up built is out of later collections' sight
