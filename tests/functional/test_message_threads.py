"""Anthropic's message threads (beta `message-threads-2026-08-12`) through the gateway, driven by the anthropic SDK's
own helpers: `client.beta.messages.tool_runner(...)`, which runs over a thread by default, and
`client.beta.messages.thread(...)`. A thread's first request carries `thread: {"type": "create"}`; each later one
`{"type": "continue", "previous_message_id": ...}` with only the new messages, and no `system` or `tools`: Anthropic
holds the rest. A translated deployment dropped `thread`, so its provider got a lone `tool_result` (a 400 the runner
could not recover from) or a question without its history (a charged 200 answering something else)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from anthropic import beta_tool
from anthropic.types import ThreadNotFoundError, ThreadUnsupportedRequestError

from handler.pipeline.pipeline import Pipeline
from handler.pipeline.threads import HeldThreads
from handler.ports import StoreError, ThreadAnswer
from tests.functional.conftest import Running, anthropic_client, start_gateway
from tests.support.servers import ServerThread

THREADS_BETA = "message-threads-2026-08-12"
ADVISOR_BETA = "advisor-tool-2026-03-01"
ASK: Any = [{"role": "user", "content": "What time is it? CALL get_time {}"}]
HI: Any = [{"role": "user", "content": "Hi"}]


@beta_tool
def get_time() -> str:
    """The time now"""
    return "noon"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gemini-2.5-flash"])
def test_the_tool_runner_completes_on_a_translated_model(running: Running, key: str, model: str) -> None:
    """Refused as a thread, the runner sends every turn again with the whole history and no thread."""
    runner = anthropic_client(running, key).beta.messages.tool_runner(
        model=model, max_tokens=100, messages=ASK, tools=[get_time]
    )
    replies = list(runner)  # raised anthropic.BadRequestError on its second turn
    assert replies[0].stop_reason == "tool_use"
    last = replies[-1].content[-1]
    assert last.type == "text" and last.text == "DONE: noon"


def test_a_thread_no_deployment_can_hold_is_refused_before_anything_is_sent(running: Running, key: str) -> None:
    """Anthropic's own refusal of a request it cannot thread (`error.details.error_code`:
    `thread_unsupported_request`), on which the SDK's helpers fall back to the whole history: strict or not, with
    nothing reserved, sent or written to the ledger."""
    sent = {name: len(fake.state.requests) for name, fake in running.fakes.items()}
    for model in ("gpt-4o-mini", "gemini-2.5-flash"):
        for strict in ("false", "true"):
            with pytest.raises(ThreadUnsupportedRequestError) as refused:
                anthropic_client(running, key).beta.messages.create(
                    model=model,
                    max_tokens=100,
                    messages=HI,
                    thread={"type": "create"},
                    betas=[THREADS_BETA],
                    extra_headers={"x-gateway-strict": strict},
                )
            body = refused.value.body
            assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
            assert body["error"]["details"] == {"error_code": "thread_unsupported_request"}
            assert "thread" in body["error"]["message"] and "Anthropic" in body["error"]["message"]
    assert {name: len(fake.state.requests) for name, fake in running.fakes.items()} == sent
    assert running.ledger(key) == []


@pytest.mark.parametrize(("model", "fake"), [("gpt-4o-mini", "openai"), ("gemini-2.5-flash", "gemini")])
def test_a_message_thread_on_a_translated_model_keeps_its_history(
    running: Running, key: str, model: str, fake: str
) -> None:
    """`thread(...).send()`: its second turn went as the new message alone, without the first or the system prompt,
    and was answered (and charged) as if it were the whole conversation. Now the thread is refused as Anthropic
    refuses what it cannot thread: by default the SDK raises it; told to (`continue_unthreaded`), it sends the whole
    history."""
    sdk = anthropic_client(running, key)
    refused = sdk.beta.messages.thread(model=model, max_tokens=100, system="You are terse.")
    with pytest.raises(ThreadUnsupportedRequestError):
        refused.send({"role": "user", "content": "My name is Ada."})
    thread = sdk.beta.messages.thread(
        model=model, max_tokens=100, system="You are terse.", unsupported_request_behavior="continue_unthreaded"
    )
    thread.send({"role": "user", "content": "My name is Ada."})
    thread.send({"role": "user", "content": "What is my name?"})
    upstream = str(running.fakes[fake].state.requests[-1]["json"])
    assert "What is my name?" in upstream
    assert "My name is Ada." in upstream, "the second turn reached the model without the first"
    assert "You are terse." in upstream, "the second turn reached the model without its system prompt"


def test_a_thread_passes_through_to_anthropic_untouched(running: Running, key: str) -> None:
    """Claude's deployment holds the thread: the runner's later turns go as `continue`s with the new messages alone,
    and the thread's answer comes back."""
    requests = running.fakes["anthropic"].state.requests
    before = len(requests)
    runner = anthropic_client(running, key).beta.messages.tool_runner(
        model="claude-haiku-4-5", max_tokens=100, messages=ASK, tools=[get_time], system="You are terse."
    )
    replies = list(runner)
    assert replies[-1].content[-1].type == "text" and replies[-1].content[-1].text == "DONE: noon"
    created, continued = (request["json"] for request in requests[before:])
    assert created["thread"] == {"type": "create"} and created["system"] == "You are terse."
    assert continued["thread"] == {"type": "continue", "previous_message_id": replies[0].id}
    assert "system" not in continued and "tools" not in continued
    assert [message["role"] for message in continued["messages"]] == ["user"]  # its tool result alone
    assert THREADS_BETA in requests[-1]["headers"]["anthropic-beta"]


def test_a_deployment_that_cannot_hold_a_thread_is_passed_over(running: Running, key: str) -> None:
    """A plan whose first deployment translates goes on to the one that holds threads, the other named in the
    route as a deployment that cannot take the request is."""
    raw = anthropic_client(running, key).beta.messages.with_raw_response.create(
        model="gpt-4o-mini",
        max_tokens=100,
        messages=HI,
        thread={"type": "create"},
        betas=[THREADS_BETA],
        extra_headers={"x-gateway-fallbacks": "claude-haiku-4-5"},
    )
    assert raw.parse().content[0].type == "text"
    assert raw.headers["x-gateway-route"] == (
        "openai/gpt-4o-mini@global=unsupported, anthropic/claude-haiku-4-5@global=200"
    )


def continue_thread(sdk: Any, previous_message_id: str, **options: Any) -> Any:
    """A thread's next turn on claude-haiku-4-5 ("And now?"), continuing `previous_message_id`."""
    return sdk.beta.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "And now?"}],
        thread={"type": "continue", "previous_message_id": previous_message_id},
        betas=[THREADS_BETA],
        **options,
    )


def test_a_continued_thread_is_reserved_for_the_conversation_anthropic_holds(running: Running, key: str) -> None:
    """A `continue` brings only the new turn, and Anthropic bills the whole thread's input: its worst case was the
    new turn's. Where the gateway did not relay the answer it continues (another instance did), it is the model's
    context window (a million tokens for a model the config gives none), as `x-gateway-max-cost-usd` shows: the
    same body is within $0.50 as a thread's `create` ($1 a million input tokens at claude-haiku-4-5), and refused
    before anything is sent as a `continue`: as a request Anthropic cannot thread, on which the SDK sends the whole
    conversation (a 402 ended its helpers)."""
    sdk = anthropic_client(running, key)
    at_most = {"x-gateway-max-cost-usd": "0.5"}
    created = sdk.beta.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=HI,
        thread={"type": "create"},
        betas=[THREADS_BETA],
        extra_headers=at_most,
    )
    requests = running.fakes["anthropic"].state.requests
    sent = len(requests)
    running.answered_elsewhere(key, "msg_relayed_by_another_instance")
    with pytest.raises(ThreadUnsupportedRequestError) as refused:
        continue_thread(sdk, "msg_relayed_by_another_instance", extra_headers=at_most)
    assert refused.value.status_code == 400 and "x-gateway-max-cost-usd" in refused.value.message
    assert len(requests) == sent
    answered = continue_thread(sdk, created.id)
    assert answered.usage.input_tokens > created.usage.input_tokens  # billed for the whole thread


def worst_case(sdk: Any, previous_message_id: str) -> float:
    """The worst case a `continue` of `previous_message_id` is reserved at, as a `x-gateway-max-cost-usd` too low for
    it tells (refused as a request Anthropic cannot thread, nothing sent)."""
    with pytest.raises(ThreadUnsupportedRequestError) as refused:
        continue_thread(sdk, previous_message_id, extra_headers={"x-gateway-max-cost-usd": "0.000000001"})
    return float(refused.value.message.split("worst-case cost $")[1].split(" ")[0])


def test_a_continued_thread_is_reserved_for_what_its_last_answer_read_and_wrote(
    running: Running, mint: Callable[..., str]
) -> None:
    """Each `continue` was reserved as if the thread filled the model's context window (a million tokens of
    claude-haiku-4-5's input, $2 at its hour's cache-write rate), whatever the thread held: a key with $0.50 left
    could continue no thread, and every turn held $2 of the budget. The thread holds what its last answer read and
    wrote, which that answer's usage says: a `continue` of an answer the gateway relayed (whole or streamed) is
    reserved for that, a margin, and its own new messages, and still covers what Anthropic bills it."""
    key = mint(budget_usd=0.5)
    sdk = anthropic_client(running, key)
    created = sdk.beta.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=HI, thread={"type": "create"}, betas=[THREADS_BETA]
    )
    reserved = worst_case(sdk, created.id)
    assert reserved < 0.01, reserved  # (was $2.000676: a million tokens)
    continued = continue_thread(sdk, created.id)
    assert continued.usage.input_tokens > created.usage.input_tokens  # billed for the whole thread
    with sdk.beta.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "And then?"}],
        thread={"type": "continue", "previous_message_id": continued.id},
        betas=[THREADS_BETA],
    ) as stream:
        streamed = stream.get_final_message()
    assert worst_case(sdk, streamed.id) < 0.01  # (a streamed answer's usage is read as it ends)
    lines = running.ledger(key)
    assert [line.status for line in lines] == [200, 200, 200]
    for line, previous in zip(lines[1:], (created.id, continued.id), strict=True):
        assert (line.cost_usd or 0) + line.fee_usd <= worst_case(sdk, previous), line  # what Anthropic billed: covered


def test_the_tool_runner_completes_on_claude_for_a_key_whose_budget_no_context_window_fits(
    running: Running, mint: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with $0.50 left cannot hold a `continue` reserved as a million tokens of claude-haiku-4-5's input ($1),
    as one is where another instance relayed the answer it continues (here: none is remembered): its 402 ended the
    runner on its second turn. Refused as a thread, the runner sends that turn whole, without a thread, reserved on
    what its body shows; the key's spend is the two answers' and nothing stays reserved."""
    monkeypatch.setattr(HeldThreads, "answered", lambda *_: None)
    key = mint(budget_usd=0.5)
    requests = running.fakes["anthropic"].state.requests
    before = len(requests)
    runner = anthropic_client(running, key).beta.messages.tool_runner(
        model="claude-haiku-4-5", max_tokens=100, messages=ASK, tools=[get_time]
    )
    replies = list(runner)  # raised anthropic.APIStatusError (402) on its second turn
    assert replies[-1].content[-1].type == "text" and replies[-1].content[-1].text == "DONE: noon"
    sent = [request["json"] for request in requests[before:]]
    assert [body.get("thread", {}).get("type") for body in sent] == ["create", None]
    assert len(sent[-1]["messages"]) == 3  # the question, the call and its result
    lines = running.ledger(key)
    assert [line.status for line in lines] == [200, 200]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_continue_after_an_advisors_answer_is_reserved_for_the_advice_it_reads_back(
    running: Running, mint: Callable[..., str], stream: bool
) -> None:
    """An answer that consulted Anthropic's advisor tool holds the advice in its thread (its `advisor_tool_result`),
    which a `continue` reads back as input; but the answer's usage leaves the advisor's tokens out of its top level,
    and the thread was held at that usage alone: after a 7,600-token advice the `continue` was reserved $0.00276,
    and its own model's tokens alone were billed $0.007763. The thread holds the advisor's output too (its thinking
    with its advice: at most that is read back), so the `continue` is reserved for what it reads ($0.019536, its
    input at the hour's cache-write rate), whole or streamed."""
    key = mint(budget_usd=5.0)
    sdk = anthropic_client(running, key)
    tool: Any = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-6"}
    settings: Any = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": HI,
        "tools": [tool],
        "metadata": {"user_id": "long-advice"},  # (the fake's advice then runs to about 7,600 tokens)
        "thread": {"type": "create"},
        "betas": [THREADS_BETA, ADVISOR_BETA],
    }
    if stream:
        with sdk.beta.messages.stream(**settings) as events:
            created = events.get_final_message()
    else:
        created = sdk.beta.messages.create(**settings)
    assert [block.type for block in created.content] == ["server_tool_use", "advisor_tool_result", "text"]
    reserved = worst_case(sdk, created.id)
    continued = continue_thread(sdk, created.id)
    # What Anthropic bills the continue's own model (claude-haiku-4-5: $1 and $5 a million), its advisor's apart.
    billed = (continued.usage.input_tokens * 1.0 + continued.usage.output_tokens * 5.0) / 1e6
    assert billed <= reserved, (billed, reserved)


# --- whose a thread is ------------------------------------------------------------------------------------------


def said(message: Any) -> str:
    return "".join(getattr(block, "text", "") for block in message.content)


def start_thread(sdk: Any, text: str, *, stream: bool = False) -> Any:
    """A thread on claude-haiku-4-5 whose answer says `text` (the fake says what a `SAY` asks), whole or streamed."""
    settings: Any = {
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": f"SAY {text}"}],
        "thread": {"type": "create"},
        "betas": [THREADS_BETA],
    }
    if not stream:
        return sdk.beta.messages.create(**settings)
    with sdk.beta.messages.stream(**settings) as events:
        return events.get_final_message()


def child_of(running: Running, parent: str) -> str:
    minted = httpx.post(f"{running.url}/v1/keys", json={"name": "run"}, headers={"authorization": f"Bearer {parent}"})
    assert minted.status_code == 201, minted.text
    return str(minted.json()["key"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_key_cannot_continue_a_thread_another_key_started(on_each_store: Running, stream: bool) -> None:
    """Key A starts a thread holding its own conversation. Key B, unrelated to A, named A's answer as
    `previous_message_id`: the gateway passed the `continue` through, Anthropic (one account for every key) rebuilt
    A's conversation, and B's answer was A's private text, charged to B; a child of A read A's threads the same way.
    A thread is now kept as a stored response is: continued by the key it was answered to or one of that key's
    ancestors, and for any other key it does not exist: Anthropic's own 404 `thread_not_found`, before anything is
    reserved, sent or written to the ledger, on either store, for an answer relayed whole or streamed."""
    running = on_each_store
    alice, bob = running.mint(name="alice"), running.mint(name="bob")
    alices_child = child_of(running, alice)
    created = start_thread(anthropic_client(running, alice), "alice-private-launch-code-4471", stream=stream)
    assert said(created) == "alice-private-launch-code-4471"
    requests = running.fakes["anthropic"].state.requests
    sent = len(requests)
    for other in (bob, alices_child):
        with pytest.raises(ThreadNotFoundError) as refused:
            continue_thread(anthropic_client(running, other), created.id)  # (was a 200 saying alice's text)
        body = refused.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"
        assert body["error"]["details"] == {"error_code": "thread_not_found"}
        assert "alice-private" not in str(body)
    assert len(requests) == sent, "another key's continue of alice's thread was sent upstream"
    assert running.ledger(bob) == []  # (nothing reserved, nothing charged)
    continued = continue_thread(anthropic_client(running, alice), created.id)  # (its own: continued)
    assert continued.usage.input_tokens > created.usage.input_tokens


def test_a_parent_may_continue_its_childs_thread(running: Running, key: str) -> None:
    """As a parent may read its child's stored responses: the thread is the child's, and its ancestors'."""
    child = child_of(running, key)
    created = start_thread(anthropic_client(running, child), "the child's answer")
    continued = continue_thread(anthropic_client(running, key), created.id)
    assert continued.usage.input_tokens > created.usage.input_tokens  # (the child's thread, continued)


def test_whose_a_thread_is_holds_in_every_process_on_the_store(
    on_each_store: Running, upstream: tuple[ServerThread, dict[str, Any]]
) -> None:
    """What a process relayed is known to every other on its store (another server, another Lambda invocation): the
    owner continues there, another key is refused there."""
    running = on_each_store
    alice, bob = running.mint(name="alice"), running.mint(name="bob")
    created = start_thread(anthropic_client(running, alice), "alice-private")
    other, server = start_gateway(upstream, running.store_url)
    try:
        with pytest.raises(ThreadNotFoundError):
            continue_thread(anthropic_client(other, bob), created.id)
        continued = continue_thread(anthropic_client(other, alice), created.id)
        assert continued.usage.input_tokens > created.usage.input_tokens
    finally:
        server.stop()


def test_a_thread_whose_owner_is_not_known_is_started_again_by_the_sdk(
    running: Running, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer no owner was kept for (relayed before owners were, or the store failed to keep it) is not known, as
    any other key's: the 404 `thread_not_found`, on which the SDK's thread helper sends the whole conversation again
    as a new thread, and goes on."""
    sdk = anthropic_client(running, key)
    thread = sdk.beta.messages.thread(model="claude-haiku-4-5", max_tokens=100, system="You are terse.")
    with monkeypatch.context() as unkept:
        unkept.setattr(Pipeline, "_keep_thread", lambda *_: asyncio.sleep(0))
        thread.send({"role": "user", "content": "My name is Ada."})
    requests = running.fakes["anthropic"].state.requests
    before = len(requests)
    thread.send({"role": "user", "content": "What is my name?"})
    [again] = [request["json"] for request in requests[before:]]  # (the continue was refused, never sent)
    assert again["thread"] == {"type": "create"} and again["system"] == "You are terse."
    assert "My name is Ada." in str(again["messages"]) and "What is my name?" in str(again["messages"])
    thread.send({"role": "user", "content": "And now?"})
    assert requests[-1]["json"]["thread"]["type"] == "continue"  # (the new thread is the key's)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_thread_anthropic_no_longer_holds_is_anthropics_own_404_the_sdk_recovers_from(
    running: Running, key: str, stream: bool
) -> None:
    """The gateway knows the answer as the key's (kept by another instance, or Anthropic dropped the thread since),
    and Anthropic holds no thread for it: its 404 `not_found_error` with `details.error_code: thread_not_found`. The
    gateway answered a 400 `invalid_request_error` without the details: the SDK raised a plain `BadRequestError`,
    and its thread helper failed where it would have sent the whole conversation again (found by review). Anthropic's
    status, type and details reach the client as Anthropic gave them; the error costs nothing."""
    sdk = anthropic_client(running, key)
    running.answered_elsewhere(key, "msg_01LostThreadAtAnthropic")
    with pytest.raises(ThreadNotFoundError) as lost:
        if stream:
            with sdk.beta.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=100,
                messages=HI,
                thread={"type": "continue", "previous_message_id": "msg_01LostThreadAtAnthropic"},
                betas=[THREADS_BETA],
            ) as events:
                events.get_final_message()
        else:
            continue_thread(sdk, "msg_01LostThreadAtAnthropic")
    body = lost.value.body
    assert lost.value.status_code == 404 and isinstance(body, dict)
    assert (body["error"]["type"], body["error"]["details"]) == ("not_found_error", {"error_code": "thread_not_found"})
    assert lost.value.response.headers["x-should-retry"] == "false"
    [line] = running.ledger(key)
    assert (line.status, line.cost_usd, line.route) == (404, 0.0, "anthropic/claude-haiku-4-5@global=404")
    thread = sdk.beta.messages.thread(model="claude-haiku-4-5", max_tokens=100, system="You are terse.")
    thread.send({"role": "user", "content": "My name is Ada."})
    running.fakes["anthropic"].state.threads.clear()  # (Anthropic drops the thread: its lifetime ended)
    requests = running.fakes["anthropic"].state.requests
    before = len(requests)
    thread.send({"role": "user", "content": "What is my name?"})  # (raised BadRequestError)
    lost_continue, again = [request["json"] for request in requests[before:]]
    assert lost_continue["thread"]["type"] == "continue"
    assert again["thread"] == {"type": "create"} and again["system"] == "You are terse."
    assert "My name is Ada." in str(again["messages"]) and "What is my name?" in str(again["messages"])


def test_a_key_cannot_count_the_tokens_of_another_keys_thread(running: Running, mint: Callable[..., str]) -> None:
    """Anthropic counts a `continue` with the thread it holds: another key's is a 404 too, and never asked."""
    alice, bob = mint(name="alice"), mint(name="bob")
    created = start_thread(anthropic_client(running, alice), "alice-private")
    counting: Any = {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": "And now?"}],
        "betas": [THREADS_BETA],
        "extra_body": {"thread": {"type": "continue", "previous_message_id": created.id}},
    }
    requests = running.fakes["anthropic"].state.requests
    sent = len(requests)
    with pytest.raises(ThreadNotFoundError):
        anthropic_client(running, bob).beta.messages.count_tokens(**counting)
    assert len(requests) == sent
    assert anthropic_client(running, alice).beta.messages.count_tokens(**counting).input_tokens > 0


def test_an_answer_the_store_cannot_keep_as_the_keys_is_still_answered(
    running: Running, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The provider was paid for the answer: it is relayed (whole and streamed) and the failure logged; its
    `continue` is the 404 on which the SDK starts the thread again."""

    async def failing(answer: ThreadAnswer) -> None:
        raise StoreError("the store is down")

    monkeypatch.setattr(running.gateway.store, "put_thread_answer", failing)
    sdk = anthropic_client(running, key)
    for stream in (False, True):
        created = start_thread(sdk, "kept or not", stream=stream)
        assert said(created) == "kept or not"
        with pytest.raises(ThreadNotFoundError):
            continue_thread(sdk, created.id)
    assert caplog.text.count("a thread's answer not kept: the store is down") == 2
