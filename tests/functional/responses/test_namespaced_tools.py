"""A Responses `namespace` tool (Codex 0.171 groups its sub-agent tools in one, `multi_agent_v1`: `spawn_agent`,
`send_input`, `wait_agent`, `close_agent`, `resume_agent`) on the deployments the gateway translates: each function
it holds is offered to the model as a plain function, and the model's call of one comes back as OpenAI's does, a
`function_call` naming the function and its `namespace`. The whole group was left out as if it were a hosted tool
(`tools[namespace]`), and the models never saw the functions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.functional.conftest import Running, openai_client
from tests.functional.responses.test_responses_api import dropped

TRANSLATED = ["gpt-chat", "claude", "gemini", "bedrock-claude", "deepseek"]
SPACE = "multi_agent_v1"
SPAWN: Any = {
    "type": "function",
    "name": "spawn_agent",
    "description": "Spawn a sub-agent for a task.",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"message": {"type": "string"}},
        "required": ["message"],
        "additionalProperties": False,
    },
}
NAMESPACE: Any = {
    "type": "namespace",
    "name": SPACE,
    "description": "Tools for spawning and managing sub-agents.",
    "tools": [SPAWN],
}
TASK = {"message": "count the files"}


def sent_tool_names(running: Running, model: str) -> list[str]:
    """The names of the tools the provider behind `model` was offered in its last request."""
    fake = {"claude": "anthropic", "gemini": "gemini", "bedrock-claude": "bedrock"}.get(model, "openai")
    sent = running.fakes[fake].state.requests[-1]["json"]
    if fake == "gemini":
        return [f["name"] for group in sent["tools"] for f in group.get("functionDeclarations", ())]
    if fake == "bedrock":
        return [tool["toolSpec"]["name"] for tool in sent["toolConfig"]["tools"]]
    if fake == "anthropic":
        return [tool["name"] for tool in sent["tools"]]
    return [tool["function"]["name"] for tool in sent["tools"]]


@pytest.mark.parametrize("model", TRANSLATED)
@pytest.mark.parametrize("stream", [False, True])
def test_a_namespaced_function_is_offered_and_its_call_names_its_namespace(
    fleet: Running, fleet_key: str, model: str, stream: bool
) -> None:
    sdk = openai_client(fleet, fleet_key)
    question: Any = [{"role": "user", "content": f"Delegate. CALL spawn_agent {orjson.dumps(TASK).decode()}"}]
    if stream:
        with sdk.responses.stream(model=model, input=question, tools=[NAMESPACE], store=False) as events:
            added = [e.item for e in events if e.type == "response.output_item.added"]
            first = events.get_final_response()
        assert [(item.name, item.namespace) for item in added if item.type == "function_call"] == [
            ("spawn_agent", SPACE)
        ]
    else:
        raw = sdk.responses.with_raw_response.create(model=model, input=question, tools=[NAMESPACE], store=False)
        assert "tools[namespace]" not in dropped(raw.headers)
        first = raw.parse()
    assert sent_tool_names(fleet, model) == ["spawn_agent"]
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(call.name, call.namespace) for call in calls] == [("spawn_agent", SPACE)], first.output
    assert orjson.loads(calls[0].arguments) == TASK
    # The call goes back with its namespace, and its output after it: the model is answered, and answers.
    follow_up: Any = [
        *question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "agent a1 started"},
    ]
    second = sdk.responses.create(model=model, input=follow_up, tools=[NAMESPACE], store=False)
    assert second.status == "completed" and "agent a1 started" in second.output_text


def sent_descriptions(running: Running, model: str) -> list[str]:
    """The descriptions of the functions the provider behind `model` was offered in its last request."""
    fake = {"claude": "anthropic", "gemini": "gemini", "bedrock-claude": "bedrock"}.get(model, "openai")
    sent = running.fakes[fake].state.requests[-1]["json"]
    if fake == "gemini":
        return [f["description"] for group in sent["tools"] for f in group.get("functionDeclarations", ())]
    if fake == "bedrock":
        return [tool["toolSpec"]["description"] for tool in sent["toolConfig"]["tools"]]
    if fake == "anthropic":
        return [tool["description"] for tool in sent["tools"]]
    return [tool["function"]["description"] for tool in sent["tools"]]


@pytest.mark.parametrize("model", TRANSLATED)
def test_a_namespaces_description_reaches_the_model_with_its_functions(
    fleet: Running, fleet_key: str, model: str
) -> None:
    """The namespace's own description (what Codex's sub-agent tools are for) opens each of its functions': it was
    sent nowhere, and the model saw `Spawn a sub-agent for a task.` alone."""
    bare: Any = {**SPAWN, "name": "close_agent"}
    del bare["description"]
    grouped: Any = {**NAMESPACE, "tools": [SPAWN, bare]}
    plain: Any = {**SPAWN, "name": "get_time", "description": "The time."}
    openai_client(fleet, fleet_key).responses.create(model=model, input="Hi", tools=[grouped, plain], store=False)
    assert sent_descriptions(fleet, model) == [
        f"{NAMESPACE['description']}\n\n{SPAWN['description']}",
        NAMESPACE["description"],
        "The time.",
    ]


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_a_namespaced_function_named_like_another_tool_is_offered_under_its_namespace(
    fleet: Running, fleet_key: str, model: str
) -> None:
    """A plain `spawn_agent` beside the namespace's: the plain one keeps its name, the namespace's is offered as
    `multi_agent_v1__spawn_agent`, and a call of it comes back under its own name and namespace, then goes back to
    the model under the name it was offered by."""
    sdk = openai_client(fleet, fleet_key)
    offered = f"{SPACE}__spawn_agent"
    question: Any = [{"role": "user", "content": f"CALL {offered} {orjson.dumps(TASK).decode()}"}]
    tools: Any = [SPAWN, NAMESPACE]
    first = sdk.responses.create(model=model, input=question, tools=tools, store=True)
    assert sent_tool_names(fleet, model) == ["spawn_agent", offered]
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(call.name, call.namespace) for call in calls] == [("spawn_agent", SPACE)], first.output
    output: Any = [{"type": "function_call_output", "call_id": calls[0].call_id, "output": "agent a1 started"}]
    second = sdk.responses.create(model=model, input=output, tools=tools, previous_response_id=first.id)
    assert "agent a1 started" in second.output_text
    sent = str(fleet.fakes["anthropic" if model == "claude" else "gemini"].state.requests[-1]["json"])
    assert f"'name': '{offered}'" in sent  # (the stored call, as the provider was offered it)
