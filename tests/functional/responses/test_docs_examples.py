"""The Python examples of docs/responses-api.md run as printed against the gateway in front of the fake providers
(as against `make demo`): the openai SDK's, and the Agents SDK's, which sends no trace to OpenAI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.functional.conftest import Running

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "responses-api.md"
LOCAL = "http://127.0.0.1:8080"

# Run after an example: the traces the Agents SDK made, which its default processor would have sent to OpenAI. The
# recorder replaces that processor first, so nothing leaves this machine either way.
TRACE_RECORDER = """
import agents
from agents.tracing import TracingProcessor

class Recorder(TracingProcessor):
    traces = 0
    def on_trace_start(self, trace): Recorder.traces += 1
    def on_trace_end(self, trace): pass
    def on_span_start(self, span): pass
    def on_span_end(self, span): pass
    def shutdown(self): pass
    def force_flush(self): pass

agents.set_trace_processors([Recorder()])
"""


def example(section: str) -> str:
    """The first Python block of the page's `section`."""
    part = PAGE.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"^```python\n(.*?)^```$", part, re.S | re.M)
    assert found, section
    return found.group(1)


def run(code: str, running: Running, key: str, tmp_path: Path) -> str:
    """What `code` prints, run as a script against `running` with the gateway key where the page writes gwk_...;
    in a folder of its own (a file there named like a package cannot shadow it)."""
    assert LOCAL in code and '"gwk_..."' in code
    script = code.replace(LOCAL, running.url).replace('"gwk_..."', repr(key))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GATEWAY_"))}
    # (a client's shell set up as `gateway serve` prints: the gateway key in OPENAI_API_KEY)
    ran = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**environ, "OPENAI_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def require(running: Running, *models: str) -> None:
    missing = [m for m in models if m not in running.gateway.config.models]
    if missing:
        pytest.skip(f"no fake serves {missing}")


def test_the_openai_sdk_examples_run_the_tool_call_included(running: Running, tmp_path: Path) -> None:
    """The two-turn tool example failed against `make demo`: asked without `tool_choice`, the fake answers in
    text, as a model may, and the example found no call to answer."""
    require(running, "claude-haiku-4-5", "gemini-2.5-flash", "gpt-4o-mini")
    printed = run(example("With the openai SDK"), running, running.mint(name="docs"), tmp_path)
    assert printed.strip().splitlines()[-1], printed  # the second turn's answer


def test_the_agents_sdk_example_runs_and_sends_no_trace(running: Running, tmp_path: Path) -> None:
    """The SDK sends a trace of every run to OpenAI, with OPENAI_API_KEY: in a client's shell, the gateway key."""
    pytest.importorskip("agents")
    require(running, "gemini-2.5-flash")
    code = example("With the OpenAI Agents SDK")
    printed = run(TRACE_RECORDER + code + "\nprint('traces', Recorder.traces)\n", running, running.mint(), tmp_path)
    lines = printed.strip().splitlines()
    assert lines[-1] == "traces 0" and lines[-2], printed
