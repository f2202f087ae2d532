"""The real Codex CLI (`make clients` installs it in .tools/) through the gateway's /v1/responses.

Codex runs `codex exec` with the gateway as a custom provider (`wire_api = "responses"`); the fake
upstream behind each provider type scripts one shell tool call (Codex's `exec_command`) and, once it
sees the command's output, a final answer quoting it (tests/fakes/script.py). The test checks that the
command ran on this machine and that the answer came back through every layer.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.functional.conftest import Running
from tests.functional.responses.fleet import PROVIDER_MODELS, SEARCH_USD, THROTTLED_ONCE
from tests.functional.responses.test_responses_api import dropped
from tests.support.recorder import recorder

CODEX = Path(__file__).resolve().parents[3] / ".tools" / "node_modules" / ".bin" / "codex"
pytestmark = pytest.mark.skipif(not CODEX.exists(), reason=f"the Codex CLI is not installed at {CODEX} (make clients)")


def codex_exec(
    running: Running | str,
    key: str,
    model: str,
    task: str,
    workdir: Path,
    home: Path,
    headers: str = "",
    resume: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`codex exec` on `model` through the gateway, or the URL of a proxy in front of it (`headers`: more of the
    provider's settings, as TOML; `resume`: the last session of `home` goes on with `task`)."""
    url = running if isinstance(running, str) else running.url
    settings = f'name="gw", base_url="{url}/v1", env_key="GW_KEY", wire_api="responses"{headers}'
    provider = f"model_providers.gw={{{settings}}}"
    command = [
        str(CODEX),
        "exec",
        *(["resume", "--last"] if resume else []),
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-c",
        provider,
        "-c",
        "model_provider=gw",
        "-m",
        model,
        task,
    ]
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "CODEX_HOME": str(home), "GW_KEY": key}
    return subprocess.run(command, cwd=workdir, env=environ, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("model", PROVIDER_MODELS)
def test_codex_runs_a_shell_command_and_answers(fleet: Running, model: str, tmp_path: Path) -> None:
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    token = secrets.token_hex(6)
    (workdir / "note.txt").write_text(f"{token}\n")
    call = orjson.dumps({"cmd": "echo hi > out.txt && cat note.txt"}).decode()
    done = codex_exec(fleet, fleet.mint(name=f"codex-{model}"), model, f"CALL exec_command {call}", workdir, home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "out.txt").read_text().strip() == "hi"
    assert f"DONE: {token}" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    if model in ("gpt", "gpt-chat"):  # what Codex asks for reaches OpenAI: its cache key, and nothing kept there
        sent = fleet.fakes["openai"].state.requests[-1]["json"]
        assert sent["prompt_cache_key"] and not sent.get("store")


# A 1x1 PNG, for Codex's view_image to return.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(("model", "provider"), [("gpt-chat", "openai"), ("gemini", "gemini")])
def test_an_image_codex_viewed_reaches_the_model(fleet: Running, model: str, provider: str, tmp_path: Path) -> None:
    """Codex's `view_image` answers with an `input_image` in its `function_call_output`. On Chat Completions
    (gpt-4o-mini) and Gemini 2.5 it was left out, the model sent an empty result (found by review); it now follows
    the result, in a user message (Chat Completions) or beside the `functionResponse` (Gemini)."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    (workdir / "dot.png").write_bytes(PNG)
    call = orjson.dumps({"path": str(workdir / "dot.png")}).decode()
    start = len(fleet.fakes[provider].state.requests)
    key = fleet.mint(name=f"codex-image-{model}")
    done = codex_exec(fleet, key, model, f"CALL view_image {call}", workdir, home)
    assert done.returncode == 0, done.stderr[-3000:]
    turns = fleet.fakes[provider].state.requests[start:]
    assert len(turns) >= 2, done.stdout[-1500:] + done.stderr[-1500:]
    last = turns[-1]["json"]  # the turn carrying the view_image call's output
    history = orjson.dumps(last.get("messages") or last.get("contents")).decode()
    assert '"role":"tool"' in history or "functionResponse" in history
    assert base64.b64encode(PNG).decode() in history, "the image Codex viewed never reached the model"


def test_codex_runs_under_strict(fleet: Running, tmp_path: Path) -> None:
    """`x-gateway-strict` refuses fields the gateway does not know: every field Codex sends is known (its
    `prompt_cache_key`, `include`, `store`, `reasoning`, `text`, `client_metadata`, ...), so its turns reach OpenAI.
    (A translating deployment still refuses, under strict, the hosted tools it cannot carry.)"""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    call = orjson.dumps({"cmd": "echo hi > out.txt"}).decode()
    strict = ', http_headers={"x-gateway-strict"="true"}'
    done = codex_exec(fleet, fleet.mint(name="codex-strict"), "gpt", f"CALL exec_command {call}", workdir, home, strict)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "out.txt").read_text().strip() == "hi"


@pytest.mark.parametrize("model", ["claude-full", "gemini-full"])
def test_codex_knows_a_full_context_from_claude_or_gemini(fleet: Running, model: str, tmp_path: Path) -> None:
    """Anthropic's `prompt is too long: N tokens > M maximum` and Gemini's `The input token count (N) exceeds the
    maximum number of tokens allowed (M).` reached Codex as `invalid_request`, an error it could only print; with
    OpenAI's `context_length_exceeded` it knows the context is full (as it does with OpenAI's own)."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    done = codex_exec(fleet, fleet.mint(name=f"codex-{model}"), model, "say hi", workdir, home)
    said = done.stdout + done.stderr
    assert "ran out of room in the model's context window" in said, said[-3000:]


def test_codex_waits_and_retries_a_429_the_gateway_did_not_retry(fleet: Running, tmp_path: Path) -> None:
    """Bedrock throttles the first request (a `ThrottlingException` names no wait, so the gateway does not retry
    it). Codex retries a 429 only when it carries a `retry-after`: the gateway's 429 had none, and Codex printed
    "exceeded retry limit" after the one request. With the least wait given, it sends it again and finishes."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(fleet.fakes["bedrock"].state.requests)
    call = orjson.dumps({"cmd": "echo hi > out.txt"}).decode()
    done = codex_exec(
        fleet, fleet.mint(name="codex-throttled"), "bedrock-throttled", f"CALL exec_command {call}", workdir, home
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "out.txt").read_text().strip() == "hi"
    models = [r["model"] for r in fleet.fakes["bedrock"].state.requests[start:]]
    assert models.count(THROTTLED_ONCE) >= 3, models  # the throttled request, sent again, then the command's output


@pytest.mark.parametrize(
    ("refusal", "said"),
    [
        ("budget", "402 Payment Required: this key's budget cannot cover"),
        ("scope", "this key may not use model 'claude'"),
    ],
)
def test_codex_shows_a_refusal_after_five_reconnections_that_cost_nothing(
    fleet: Running, tmp_path: Path, refusal: str, said: str
) -> None:
    """What a Codex user sees of the gateway's 402 `budget_exceeded` and 403 `model_not_allowed`, which the interface
    binds: Codex (0.171) retries them as a dropped connection whatever `x-should-retry` says, "Reconnecting... 1/5"
    to "5/5", then shows the gateway's message and exits 1. The six sends are refused before anything is reserved or
    sent: no provider is called, no ledger line is written."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    key = fleet.mint(
        name=f"codex-refused-{refusal}", **({"budget_usd": 0.05} if refusal == "budget" else {"models": ["gpt"]})
    )
    upstream = {name: len(fake.state.requests) for name, fake in fleet.fakes.items()}
    done = codex_exec(fleet, key, "claude", "say hi", workdir, home)
    shown = done.stdout + done.stderr
    assert done.returncode == 1 and said in shown, shown[-2000:]
    assert "Reconnecting... 5/5" in shown, shown[-2000:]
    assert {name: len(fake.state.requests) for name, fake in fleet.fakes.items()} == upstream
    assert fleet.ledger(key) == []


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_codex_sub_agent_tools_reach_a_translated_model(fleet: Running, model: str, tmp_path: Path) -> None:
    """Codex sends its sub-agent tools (`spawn_agent`, `wait_agent`, ...) grouped in a `namespace` tool, which only
    OpenAI's Responses API takes: Claude and Gemini got none of them (the group left out as `tools[namespace]`), only
    Codex's plain functions. Each is offered as a function of its own."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    fake = fleet.fakes["anthropic" if model == "claude" else "gemini"]
    start = len(fake.state.requests)
    call = orjson.dumps({"cmd": "echo hi"}).decode()
    done = codex_exec(
        fleet, fleet.mint(name=f"codex-agents-{model}"), model, f"CALL exec_command {call}", workdir, home
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sent = fake.state.requests[start]["json"]
    if model == "claude":
        names = [tool["name"] for tool in sent["tools"]]
    else:
        names = [f["name"] for group in sent["tools"] for f in group.get("functionDeclarations", ())]
    assert "exec_command" in names and "spawn_agent" in names and "wait_agent" in names, names


@pytest.mark.parametrize(("model", "provider"), [("claude-listed", "anthropic"), ("bedrock-listed", "bedrock")])
def test_a_codex_session_on_claude_reads_its_prefix_from_the_cache(
    fleet: Running, tmp_path: Path, model: str, provider: str
) -> None:
    """Codex asks for its prompt to be cached (`prompt_cache_key`, the same all session) and marks nothing; its
    instructions and tools (about 5,000 tokens here, 20,000 in real use) open every turn. Claude caches only up to a
    breakpoint: translated without one, each turn paid the whole prefix at the full input price, ledger lines
    (input, cached, cache write) (5123, 0, 0) then (5219, 0, 0) on Anthropic (found by review). With the gateway's
    breakpoints the first turn writes the prefix and the second reads it, at a tenth of the input price."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    key = fleet.mint(name=f"codex-cache-{model}")
    start = len(fleet.fakes[provider].state.requests)
    call = orjson.dumps({"cmd": "echo hi"}).decode()
    done = codex_exec(fleet, key, model, f"CALL exec_command {call}", workdir, home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(fleet.fakes[provider].state.requests[start:]) == 2  # the call, then the answer once its output was in
    lines = sorted(fleet.ledger(key), key=lambda line: line.ts)
    figures = [(line.input_tokens, line.cached_tokens, line.cache_write_tokens, line.cost_usd) for line in lines]
    first, second = lines
    assert first.cache_write_tokens > 4000, figures  # the prefix written
    assert second.cached_tokens > 4000 and second.cache_write_tokens < 1000, figures  # read; the new turn written
    # (Codex offers `web_search`: Claude on Anthropic runs it, the fake once a turn, at the fleet's price a search.)
    searched = SEARCH_USD if provider == "anthropic" else 0.0
    assert second.cost_usd - searched < (first.cost_usd - searched) / 2, figures


def test_a_codex_session_on_gemini_3_is_told_of_no_search_left_out(fleet: Running, tmp_path: Path) -> None:
    """A Codex session on Gemini 3 (a shell call, then the answer, grounded by a search), resumed with a second task.
    Codex sends back the search after the message it grounds, as Gemini's stream gave them: the search is history,
    its results in that message, and no turn names it dropped. Each turn of the resumed session named
    `input[web_search_call]` in `x-gateway-dropped-params`, a 400 under `x-gateway-strict`."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    key = fleet.mint(name="codex-gemini-3-search")
    proxy, seen = recorder(fleet.url)
    try:
        for step in range(2):
            call = orjson.dumps({"cmd": f"echo step{step} >> out.txt && cat out.txt"}).decode()
            task = f"step {step}: CALL exec_command {call}"
            done = codex_exec(proxy.url, key, "gemini-3", task, workdir, home, resume=step > 0)
            assert done.returncode == 0, done.stderr[-2000:]
    finally:
        proxy.stop()
    assert (workdir / "out.txt").read_text().split() == ["step0", "step1"]
    named = [dropped(headers) for path, headers in seen if path == "/v1/responses"]
    assert len(named) == 4 and not any("input[web_search_call]" in names for names in named), named
