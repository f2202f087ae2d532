"""The scripted coding-agent exchange every fake plays when offered a tool named `Bash`.

A coding agent (Claude Code, Codex) sends its tools with every request. Offered `Bash` and with no tool
result in the conversation yet, a fake answers with one call running `COMMAND`; once a tool result is in,
it answers `ANSWER`. Each fake writes these two turns in its own provider's wire format.
"""

from __future__ import annotations

COMMAND = "echo hi > out.txt"
ANSWER = "Done: out.txt now says hi."
TOOL = "Bash"
CALL_ID = "toolu_agent_01"


def agent_turn(tool_names: list[str], saw_result: bool) -> str | None:
    """`"call"` (run the command), `"answer"` (the final answer), or None when no agent is talking."""
    if TOOL not in tool_names:
        return None
    return "answer" if saw_result else "call"


def call_input() -> dict[str, str]:
    """The Bash tool's input, as Claude Code's tool schema names its fields."""
    return {"command": COMMAND, "description": "Write hi into out.txt"}
