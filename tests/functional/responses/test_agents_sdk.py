"""The OpenAI Agents SDK in its default mode (the Responses API) running an agent with a function tool
through the gateway, on a model served by each provider type."""

from __future__ import annotations

from typing import Any

import pytest

from tests.functional.conftest import Running
from tests.functional.responses.fleet import PROVIDER_MODELS

agents = pytest.importorskip("agents")


@pytest.fixture(scope="module")
def agent_key(fleet: Running) -> str:
    return fleet.mint(name="agents")


async def run_agent(fleet: Running, key: str, agent: Any, streamed: bool) -> Any:
    """`agent` asked the weather in Paris, a tool call scripted in the question, through the SDK's default provider
    (the Responses API) with the gateway's client; the fake upstream plays the model's part: the tool call the
    question scripts, then an answer quoting the tool's result."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key=key, max_retries=0) as client:
        config = agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client), tracing_disabled=True)
        question = 'Weather in Paris? CALL get_weather {"city": "Paris"}'
        if not streamed:
            return await agents.Runner.run(agent, question, run_config=config)
        result = agents.Runner.run_streamed(agent, question, run_config=config)
        async for _ in result.stream_events():
            pass
        return result


@pytest.mark.parametrize("model", PROVIDER_MODELS)
@pytest.mark.parametrize("streamed", [False, True])
async def test_an_agent_calls_its_tool_and_answers(fleet: Running, agent_key: str, model: str, streamed: bool) -> None:
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"18C and sunny in {city}"

    agent = agents.Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather], model=model)
    result = await run_agent(fleet, agent_key, agent, streamed)
    assert seen == ["Paris"]
    assert result.final_output == "DONE: 18C and sunny in Paris"
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"] and kinds[-1] == "message_output_item"


@pytest.mark.parametrize("streamed", [False, True])
async def test_claudes_thinking_goes_back_on_the_agents_next_turn(
    fleet: Running, agent_key: str, streamed: bool
) -> None:
    """With a reasoning effort, the agent's second turn sends the first one's output back by value, its reasoning
    item without the `encrypted_content` it did not ask for: Claude still gets its signed thinking back, and
    thinking on, from what the gateway kept of the stored turn."""
    from openai.types.shared import Reasoning

    from tests.fakes.anthropic import SIGNATURE, THINKING

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"18C and sunny in {city}"

    settings = agents.ModelSettings(reasoning=Reasoning(effort="medium", summary="auto"))
    agent = agents.Agent(name="weather", tools=[get_weather], model="claude", model_settings=settings)
    result = await run_agent(fleet, agent_key, agent, streamed)
    assert result.final_output == "DONE: 18C and sunny in Paris"
    sent = fleet.fakes["anthropic"].state.requests[-1]["json"]
    assert sent["thinking"]["type"] == "enabled"
    turn = next(m for m in sent["messages"] if m["role"] == "assistant")
    assert turn["content"][0] == {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE}


@pytest.mark.parametrize("streamed", [False, True])
async def test_claudes_interleaved_thinking_goes_back_in_its_places_on_the_agents_next_turn(
    fleet: Running, agent_key: str, streamed: bool
) -> None:
    """Claude thinks, calls one tool, thinks again, writes and calls the other: the agent runs both, and its next
    turn hands Claude that turn back as it wrote it (the fake refuses it with a thinking block moved)."""
    from openai import AsyncOpenAI

    from tests.fakes.anthropic import TEXT

    ran: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append("get_weather")
        return f"18C and sunny in {city}"

    @agents.function_tool
    def get_time() -> str:
        """The time now."""
        ran.append("get_time")
        return "noon"

    agent = agents.Agent(name="planner", tools=[get_weather, get_time], model="claude-interleaved")
    async with AsyncOpenAI(base_url=f"{fleet.url}/v1", api_key=agent_key, max_retries=0) as client:
        config = agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client), tracing_disabled=True)
        if streamed:
            result: Any = agents.Runner.run_streamed(agent, "Weather and time?", run_config=config)
            async for _ in result.stream_events():
                pass
        else:
            result = await agents.Runner.run(agent, "Weather and time?", run_config=config)
    # (The agent runs a turn's calls at once, each on a thread of its own: on Python 3.13 in either order.)
    assert sorted(ran) == ["get_time", "get_weather"] and result.final_output == TEXT
    sent = fleet.fakes["anthropic"].state.requests[-1]["json"]["messages"]
    turn = next(m for m in sent if m["role"] == "assistant")["content"]
    assert [block["type"] for block in turn] == ["thinking", "tool_use", "thinking", "text", "tool_use"]


@pytest.mark.parametrize("streamed", [False, True])
async def test_openais_reasoning_goes_back_on_the_agents_next_turn(
    fleet: Running, agent_key: str, streamed: bool
) -> None:
    """On a reasoning model OpenAI serves natively, the agent's second turn sends the first one's output back by
    value, its reasoning item under OpenAI's id and without the `encrypted_content` it did not ask for: the turn
    reached OpenAI as [user, function_call, function_call_output], though the gateway had asked for the encrypted
    reasoning on the first turn and kept it (its id names no response: the store's index finds it)."""
    from openai.types.shared import Reasoning

    from tests.fakes.openai_responses import ENCRYPTED

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"18C and sunny in {city}"

    settings = agents.ModelSettings(reasoning=Reasoning(effort="medium", summary="auto"))
    agent = agents.Agent(name="weather", tools=[get_weather], model="gpt-reasoner", model_settings=settings)
    result = await run_agent(fleet, agent_key, agent, streamed)
    assert result.final_output == "DONE: 18C and sunny in Paris"
    sent = fleet.fakes["openai"].state.requests[-1]["json"]
    kinds = [item.get("type") or item.get("role") for item in sent["input"]]
    assert kinds == ["user", "reasoning", "function_call", "function_call_output"]
    assert sent["input"][1]["encrypted_content"] == ENCRYPTED and "id" not in sent["input"][1]
    assert sent["include"] == ["reasoning.encrypted_content"] and sent["store"] is False
