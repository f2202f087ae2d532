"""The real Claude Code CLI (`claude -p`, installed by `make claude-code`) finishing a task through the gateway.

Each fake upstream plays the scripted agent exchange of `tests.fakes.script`: the task names one `Bash`
call, which the fake asks for; given the command's output, it answers `DONE: <its last line>`. The task
is done when the command ran in Claude Code's working directory and its final answer came back, on a
model of each provider type.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.anthropic import signed_by_fake
from tests.functional.agents_gateway import CLAUDE, THROTTLED_ONCE, agents_gateway
from tests.functional.conftest import Running

ROOT = Path(__file__).resolve().parents[2]
CLAUDE_CLI = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"

# The fakes' script (tests.fakes.script): the call the model makes, in the words of Claude Code's Bash tool.
TASK = 'Write hi into out.txt. CALL Bash {"command": "echo hi > out.txt && cat out.txt", "description": "Write hi"}'
ANSWER = "DONE: hi"

pytestmark = pytest.mark.skipif(not CLAUDE_CLI.exists(), reason="Claude Code is not installed: `make claude-code`")


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with agents_gateway(Path(tmp_path_factory.mktemp("claude-code-store"))) as running:
        yield running


def claude(
    running: Running,
    model: str,
    workdir: Path,
    home: Path,
    *options: str,
    environ: dict[str, str] | None = None,
    timeout: float = 180,
    task: str = TASK,
) -> subprocess.CompletedProcess[str]:
    """`claude -p` on `model`, configured as the gateway's README says, in a home of its own (`options`: more of
    its command line; `environ`: more of its environment; `task`: its prompt, `TASK` unless given)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": running.url,
        "ANTHROPIC_API_KEY": running.mint(name=f"claude-code-{model}"),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        **(environ or {}),
    }
    command = [str(CLAUDE_CLI), "-p", task, "--model", model, "--allowedTools", "Bash,Read", *options]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def requests_since(running: Running, provider: str, start: int) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = running.fakes[provider].state.requests[start:]
    return recorded


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("claude", "anthropic"),
        ("gpt", "openai"),
        ("o4", "openai"),
        ("gemini", "gemini"),
        ("gemini-3", "gemini"),
        ("bedrock-claude", "bedrock"),
        ("azure-gpt", "azure"),
    ],
)
def test_claude_code_runs_a_shell_command_and_answers(
    agents: Running, tmp_path: Path, model: str, provider: str
) -> None:
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(agents.fakes[provider].state.requests)
    done = claude(agents, model, workdir, home)
    assert done.returncode == 0, done.stderr
    assert (workdir / "out.txt").read_text() == "hi\n"
    assert ANSWER in done.stdout
    turns = requests_since(agents, provider, start)
    assert len(turns) >= 2  # the tool call, then the answer once the result was in


# A 1x1 PNG, for Claude Code's Read to return as an image.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("gpt", "openai"),
        ("azure-gpt", "azure"),
        ("gemini", "gemini"),
        ("gemini-3", "gemini"),
        ("bedrock-claude", "bedrock"),
    ],
)
def test_an_image_claude_code_read_reaches_the_model(
    agents: Running, tmp_path: Path, model: str, provider: str
) -> None:
    """Claude Code's Read of a PNG gives back a `tool_result` holding an `image` block. On OpenAI's Chat Completions
    (gpt-4o-mini), Azure and Gemini 2.5 the image was left out (`messages.tool_result.image`): OpenAI was sent
    `{"role": "tool", "content": ""}`, Gemini `functionResponse.response: {}`, and Claude Code finished (exit 0)
    with the model never having seen the file (found by review). It now reaches every one of them: Chat Completions
    in a user message after the tool messages, Gemini 2.5 beside its `functionResponse` (Gemini 3 inside it, Bedrock
    in the `toolResult`)."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    (workdir / "dot.png").write_bytes(PNG)
    task = f'Look at the picture. CALL Read {{"file_path": "{workdir / "dot.png"}"}}'
    start = len(agents.fakes[provider].state.requests)
    done = claude(agents, model, workdir, home, task=task)
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    last = requests_since(agents, provider, start)[-1]["json"]  # the turn carrying the Read tool's result
    history = orjson.dumps(last.get("messages") or last.get("contents")).decode()
    assert any(mark in history for mark in ('"role":"tool"', "functionResponse", "toolResult"))
    assert base64.b64encode(PNG).decode() in history, "the image Claude Code read never reached the model"


def test_claude_code_continuing_a_session_on_bedrock_answers_in_a_few_requests(agents: Running, tmp_path: Path) -> None:
    """A session continued (`--continue`) makes its call again: each call has an id of its own, as Converse gives
    them. The fake Bedrock gave every call one fixed id, and Claude Code, finding it among the session's answered
    calls, dropped the new one and asked again, without end (179 requests in 8 s, found by review)."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    for options in ((), ("--continue",)):
        start = len(agents.fakes["bedrock"].state.requests)
        done = claude(agents, "bedrock-claude", workdir, home, *options, timeout=60)
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
        assert ANSWER in done.stdout
        assert len(requests_since(agents, "bedrock", start)) <= 4  # (the call, then the answer to its result)


def test_claude_codes_requests_reach_anthropic_as_sent(agents: Running, tmp_path: Path) -> None:
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(agents.fakes["anthropic"].state.requests)
    done = claude(agents, "claude", workdir, home)
    assert done.returncode == 0, done.stderr
    turns = [r for r in requests_since(agents, "anthropic", start) if r["path"].endswith("/v1/messages")]
    first = turns[0]
    beta = first["headers"]["anthropic-beta"].split(",")
    assert "claude-code-20250219" in beta and first["headers"]["anthropic-version"]
    body = first["json"]
    assert body["model"] == CLAUDE and body["stream"] is True
    assert any("cache_control" in block for block in body["system"])  # system blocks, not a flattened string
    assert body["thinking"]["type"] in ("adaptive", "enabled") and "context_management" in body
    # The second turn carries the tool result, and the signed thinking block of the first turn unchanged.
    history = turns[-1]["json"]["messages"]
    assistant = next(m for m in history if m["role"] == "assistant")
    thinking = [b for b in assistant["content"] if b["type"] == "thinking"]
    assert thinking and signed_by_fake(thinking[0])


def test_claude_codes_tool_turns_are_cached_on_bedrock_with_its_1m_context(agents: Running, tmp_path: Path) -> None:
    """Claude Code given `bedrock-claude[1m]` asks for the 1M context (`context-1m-2025-08-07`) and marks each turn's
    last block for the cache, on a tool turn its `tool_result`: Bedrock got neither (the conversation was billed
    at the full input price every turn, within a 200K context). Its tool turn now ends with a cache point after the
    `toolResult`, its betas Bedrock takes are sent, and the request keeps within Bedrock's four cache points."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(agents.fakes["bedrock"].state.requests)
    done = claude(agents, "bedrock-claude[1m]", workdir, home)
    assert done.returncode == 0, done.stderr
    assert ANSWER in done.stdout
    body = requests_since(agents, "bedrock", start)[-1]["json"]  # the turn carrying the command's output
    assert "toolResult" in body["messages"][-1]["content"][0]
    assert body["messages"][-1]["content"][-1] == {"cachePoint": {"type": "default"}}
    blocks = [*body.get("system", ()), *(b for m in body["messages"] for b in m["content"])]
    assert len([block for block in blocks if "cachePoint" in block]) <= 4
    assert "context-1m-2025-08-07" in body["additionalModelRequestFields"]["anthropic_beta"]


def test_claude_code_switches_to_its_fallback_model_when_anthropic_is_overloaded(
    agents: Running, tmp_path: Path
) -> None:
    """`--fallback-model` takes over when the model's provider is overloaded (every request a 529
    `overloaded_error`): the gateway answers with Anthropic's own 529, which Claude Code counts as an overload, and
    after three in a row it switches. Under its retry watchdog (`CLAUDE_CODE_RETRY_WATCHDOG`, for sessions nobody
    watches) it switches on an overload only: the 502 `api_error` the gateway answered before it retried without
    end (without the watchdog a 502 makes it switch too, at once)."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(agents.fakes["anthropic"].state.requests)
    watched = {"CLAUDE_CODE_RETRY_WATCHDOG": "1"}
    done = claude(agents, "claude-overloaded", workdir, home, "--fallback-model", "claude", environ=watched, timeout=90)
    assert done.returncode == 0, done.stderr
    assert (workdir / "out.txt").read_text() == "hi\n"
    assert ANSWER in done.stdout
    models = [r["json"]["model"] for r in requests_since(agents, "anthropic", start) if r["path"].endswith("/messages")]
    assert models[:4] == ["fail-529", "fail-529", "fail-529", CLAUDE], models


def test_claude_code_waits_and_retries_a_429_the_gateway_did_not_retry(agents: Running, tmp_path: Path) -> None:
    """Bedrock throttles the first request (a `ThrottlingException`, which names no wait, so the gateway does not
    retry it). The gateway answered that 429 with `x-should-retry: false`, "after the gateway's own retries", and
    Claude Code stopped at once (exit 1 after about a second); told the truth (`true`: one attempt, not retried), it
    waits, sends the request again and finishes the task."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    start = len(agents.fakes["bedrock"].state.requests)
    done = claude(agents, "throttled-bedrock", workdir, home, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (workdir / "out.txt").read_text() == "hi\n"
    assert ANSWER in done.stdout
    models = [r["model"] for r in requests_since(agents, "bedrock", start)]
    assert models.count(THROTTLED_ONCE) >= 3, models  # the throttled request, sent again, then the tool result


def test_claude_codes_sessions_on_one_machine_are_one_user(agents: Running, tmp_path: Path) -> None:
    """Two Claude Code sessions on one machine (one home): the ledger's `user` was the whole `metadata.user_id`, a
    JSON string holding the session id, so `group_by=user` counted a user per session, and OpenAI was sent that
    string as `user`. Now both sessions are the device's one user (no account: an API key), their sessions apart,
    and OpenAI gets that identifier, within the 64 characters its docs allow."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    key = agents.mint(name="claude-code-sessions")
    start = len(agents.fakes["openai"].state.requests)
    for _ in range(2):
        done = claude(agents, "gpt", workdir, home, environ={"ANTHROPIC_API_KEY": key})
        assert done.returncode == 0, done.stderr
    lines = agents.ledger(key)
    for _ in range(50):  # (each line is written once its answer went out)
        if len(lines) >= 4:
            break
        time.sleep(0.1)
        lines = agents.ledger(key)
    users, sessions = {line.user for line in lines}, {line.session for line in lines}
    assert len(lines) >= 4 and len(users) == 1 and len(sessions) == 2, [(line.user, line.session) for line in lines]
    user = users.pop()
    assert user is not None and len(user) == 64 and not user.startswith("{")
    assert {r["json"].get("user") for r in requests_since(agents, "openai", start)} == {user}
    usage = httpx.get(f"{agents.url}/v1/usage", params={"group_by": "user"}, headers={"authorization": f"Bearer {key}"})
    assert [group["user"] for group in usage.json()["data"]] == [user]


def test_claude_code_shows_a_model_outside_the_keys_scopes_as_such_not_as_a_login_to_renew(
    agents: Running, tmp_path: Path
) -> None:
    """Claude Code shows any 403 as "Failed to authenticate" ("Please run /login" when interactive), whatever the
    body's type; what follows is the gateway's message, which said only "this key may not use model 'claude'". It
    now says the key was accepted and where to see the models it may use."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    key = agents.mint(name="claude-code-scoped", models=["gpt"])
    start = len(agents.fakes["anthropic"].state.requests)
    done = claude(agents, "claude", workdir, home, environ={"ANTHROPIC_API_KEY": key}, timeout=60)
    assert done.returncode == 1
    said = done.stdout.strip()
    assert said.startswith("Failed to authenticate. API Error: 403 this key may not use model 'claude'"), said
    assert "the key is valid, the model is outside its scopes (signing in again will not change that" in said
    assert "GET /v1/models lists the models it may use" in said
    assert len(agents.fakes["anthropic"].state.requests) == start and agents.ledger(key) == []


def test_claude_code_runs_under_strict(agents: Running, tmp_path: Path) -> None:
    """`x-gateway-strict` refuses fields the gateway does not know: every field Claude Code sends is known (its
    `context_management`, `output_config`, adaptive `thinking`, `metadata`, ...), so its turns go through."""
    workdir, home = tmp_path / "work", tmp_path / "home"
    workdir.mkdir()
    home.mkdir()
    done = claude(agents, "claude", workdir, home, environ={"ANTHROPIC_CUSTOM_HEADERS": "x-gateway-strict: true"})
    assert done.returncode == 0, done.stderr
    assert (workdir / "out.txt").read_text() == "hi\n"
