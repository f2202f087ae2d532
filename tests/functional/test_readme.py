"""The README's "Calling it" examples run as printed, against the gateway in front of the fake upstreams: the
Python snippets through the official SDKs, the shell ones through curl and the `gateway` command."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.functional.conftest import Running

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8080"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def examples(language: str) -> list[str]:
    """The code blocks in `language` of the README's "Calling it" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Calling it\n", 1)[1].split("\n## ", 1)[0]
    return [code for lang, code in BLOCK.findall(section) if lang == language]


def test_the_section_has_its_examples() -> None:
    assert len(examples("python")) >= 2 and any(code.startswith("curl ") for code in examples("sh"))


@pytest.mark.parametrize("code", examples("python"), ids=lambda code: code.split("client = ")[1].split("(")[0])
def test_each_python_example_runs(code: str, running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_KEY", running.mint(name="readme"))
    assert LOCAL in code
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code.replace(LOCAL, running.url), "README.md", "exec"), namespace)
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()  # its connections, which pytest would otherwise report as left open
    # (The gateway runs in this process: its request log lines land here too.)
    lines = [line for line in printed.getvalue().splitlines() if not line.startswith('{"level"')]
    assert lines and all(line.strip() for line in lines), lines
    if "x-gateway-route" in code:
        assert re.search(r"=200 \d+\.\d+", lines[1]), lines  # the route's outcome, then the cost


@pytest.mark.parametrize("code", examples("sh"), ids=lambda code: code.split()[0].rsplit("/", 1)[-1])
def test_each_shell_example_runs(code: str, running: Running) -> None:
    key = running.mint(name="readme")
    script = code.replace(LOCAL, running.url).replace(".venv/bin/gateway", f"{sys.executable} -m handler.entry.cli")
    environ = {**os.environ, "GATEWAY_KEY": key, "GATEWAY_STORE": running.store_url}
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    if code.startswith("curl "):
        assert ran.stdout.rstrip().endswith("data: [DONE]") and '"cost"' in ran.stdout
    else:
        assert '"key": "gwk_' in ran.stdout  # the new key, printed once
