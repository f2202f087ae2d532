"""`/v1/responses` relayed to OpenAI's and Azure's own Responses API: the body as sent, the answer as given."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
import openai
import pytest

from handler.pipeline.charges import DEFAULT_SEARCHES
from handler.wire import issued_reasoning
from tests.fakes.anthropic import TEXT as ANTHROPIC_TEXT
from tests.fakes.azure import AZURE_ORGANIZATION
from tests.fakes.openai import REASONING, TEXT
from tests.fakes.openai_responses import ENCRYPTED, ORGANIZATION_HEADER, sealed_for
from tests.functional.conftest import Running, openai_client
from tests.functional.responses.fleet import ORG_B, PRICE, SEARCH_USD

LONG = "Summarise the house rules. " * 40
WEB: Any = [{"type": "web_search"}, {"type": "function", "name": "f", "parameters": {"type": "object"}}]


def issued(sealed: str | None) -> tuple[str, str]:
    """The issuer and the provider's blob of encrypted reasoning a client was given: marked by the gateway with the
    deployment that issued it (`handler.wire.issued`)."""
    marked = issued_reasoning(sealed)
    assert marked is not None, f"not marked with its issuer: {sealed}"
    return marked


def blob(sealed: str | None) -> str | None:
    """The provider's own blob of encrypted reasoning a client was given (`issued`), None for none."""
    return None if sealed is None else issued(sealed)[1]


def sent(fleet: Running, fake: str = "openai") -> dict[str, Any]:
    request: dict[str, Any] = fleet.fakes[fake].state.requests[-1]
    assert request["path"].endswith("/responses")
    body: dict[str, Any] = request["json"]
    return body


@pytest.mark.parametrize(
    ("model", "fake", "upstream_model"), [("gpt", "openai", "gpt-4o-mini"), ("azure-gpt", "azure", "gpt-4o-prod")]
)
def test_the_body_goes_upstream_as_sent(
    fleet: Running, fleet_key: str, model: str, fake: str, upstream_model: str
) -> None:
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model=model,
        input="Hi",
        tools=WEB,
        include=["web_search_call.action.sources"],
        metadata={"team": "a"},
        extra_body={"prompt_cache_retention": "24h"},
    )
    response = raw.parse()
    assert response.output_text == TEXT and response.store is True  # kept by the gateway
    body = sent(fleet, fake)
    assert body["model"] == upstream_model and body["store"] is False  # never kept at the provider
    assert body["tools"] == WEB and body["prompt_cache_retention"] == "24h" and body["metadata"] == {"team": "a"}
    assert body["max_tool_calls"] == DEFAULT_SEARCHES  # the searches reserved for (the request set no limit)
    assert "x-gateway-dropped-params" not in raw.headers
    cost = raw.http_response.json()["cost"]
    assert cost["output_tokens"] == 7
    tokens = (cost["input_tokens"] * PRICE["input"] + 7 * PRICE["output"]) / 1e6
    assert cost["provider_usd"] == pytest.approx(tokens + SEARCH_USD)  # the fake searched once
    assert raw.headers["x-gateway-provider"] == fake


def test_an_effort_the_deployments_model_refuses_goes_as_the_nearest_it_takes(fleet: Running, fleet_key: str) -> None:
    """`xhigh` is for the models after gpt-5.1-codex-max; the o-series takes low, medium and high (OpenAI's 400:
    "Unsupported value: 'xhigh' is not supported with the 'o4-mini' model")."""
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="gpt-reasoner", input="Hi", reasoning={"effort": "xhigh", "summary": "auto"}
    )
    assert raw.parse().output_text == TEXT
    assert sent(fleet)["reasoning"] == {"effort": "high", "summary": "auto"}
    assert raw.headers["x-gateway-dropped-params"] == "reasoning.effort"


def test_the_operator_may_let_the_provider_keep_answers(fleet: Running, fleet_key: str) -> None:
    sdk = openai_client(fleet, fleet_key)
    sdk.responses.create(model="gpt-keeps", input="Hi")
    assert sent(fleet).get("store", True) is True  # as the client sent it (absent: the API's default, true)
    sdk.responses.create(model="gpt-keeps", input="Hi", store=False)
    assert sent(fleet)["store"] is False


def test_a_budgeted_key_caps_the_output(fleet: Running) -> None:
    key = fleet.mint(name="budgeted", budget_usd=5.0)
    openai_client(fleet, key).responses.create(model="gpt", input="Hi")
    assert isinstance(sent(fleet)["max_output_tokens"], int)
    openai_client(fleet, key).responses.create(model="gpt", input="Hi", max_output_tokens=50)
    assert sent(fleet)["max_output_tokens"] == 50


def test_previous_response_id_is_expanded_for_the_provider(fleet: Running, fleet_key: str) -> None:
    sdk = openai_client(fleet, fleet_key)
    first = sdk.responses.create(model="gpt", input="My name is Ada.")
    second = sdk.responses.create(model="gpt", input="Name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    body = sent(fleet)
    assert "previous_response_id" not in body
    assert [item.get("role") or item["type"] for item in body["input"]] == ["user", "assistant", "user"]
    assert sdk.responses.retrieve(second.id).output_text == TEXT


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("include", [[], ["reasoning.encrypted_content"]], ids=["plain", "encrypted"])
def test_a_stored_reasoning_turn_with_a_tool_call_continues_at_a_provider_that_stores_nothing(
    fleet: Running, fleet_key: str, include: list[str], stream: bool
) -> None:
    """The gateway keeps the conversation and OpenAI nothing (`store: false`): the earlier turn's items go back
    without their ids, which OpenAI would look up and not find (a 404), and its reasoning goes back as its
    encrypted content. A client that did not ask for that content had its reasoning item left out of the next
    turn and named (`input[reasoning]`): the gateway now asks OpenAI for it when it keeps the turn, keeps it
    beside the stored response, and hands it back, while the client sees only what it asked for."""
    sdk = openai_client(fleet, fleet_key)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    ask: Any = {"model": "gpt-reasoner", "tools": tools, "include": include}
    if stream:
        with sdk.responses.stream(input="Weather in Paris?", tool_choice="required", **ask) as events:
            relayed = [event for event in events if event.type.startswith("response.output_item.")]
            first = events.get_final_response()
        shown = [event.item for event in relayed if event.item.type == "reasoning"]
    else:
        first = sdk.responses.create(input="Weather in Paris?", tool_choice="required", **ask)
        shown = []
    assert sent(fleet)["include"] == ["reasoning.encrypted_content"]  # asked of OpenAI either way
    call = next(item for item in first.output if item.type == "function_call")
    assert [item.type for item in first.output] == ["reasoning", "function_call"] and call.id
    for reasoning in [first.output[0], *shown, sdk.responses.retrieve(first.id).output[0]]:
        assert reasoning.type == "reasoning"
        assert blob(reasoning.encrypted_content) == (ENCRYPTED if include else None)  # what the client asked for
    raw = sdk.responses.with_raw_response.create(
        model="gpt-reasoner",
        previous_response_id=first.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}],
    )
    assert raw.parse().status == "completed" and "x-gateway-dropped-params" not in raw.headers
    body = sent(fleet)
    items = body["input"]
    assert not any("id" in item for item in items) and body["store"] is False
    assert body["include"] == ["reasoning.encrypted_content"]
    kinds = [item.get("role") or item["type"] for item in items]
    assert kinds == ["user", "reasoning", "function_call", "function_call_output"]
    assert items[1]["encrypted_content"] == ENCRYPTED and items[1]["summary"][0]["text"] == REASONING


def test_encrypted_reasoning_is_asked_only_of_a_reasoning_model_the_gateway_keeps_a_turn_of(
    fleet: Running, fleet_key: str
) -> None:
    """OpenAI refuses `include: ["reasoning.encrypted_content"]` for a model that does not reason (400, "Encrypted
    content is not supported with this model"), and the gateway needs it only for a turn it keeps."""
    sdk = openai_client(fleet, fleet_key)
    sdk.responses.create(model="gpt", input="Hi")
    assert "include" not in sent(fleet)
    sdk.responses.create(model="gpt-reasoner", input="Hi", store=False)
    assert "include" not in sent(fleet)


def test_reasoning_round_trips_with_the_providers_own_encryption(fleet: Running, fleet_key: str) -> None:
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"model": "gpt-reasoner", "store": False, "include": ["reasoning.encrypted_content"]}
    first = sdk.responses.create(input="Hi", **settings)
    reasoning = next(item for item in first.output if item.type == "reasoning")
    assert blob(reasoning.encrypted_content) == ENCRYPTED and reasoning.summary[0].text == REASONING
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens == 3
    own = fleet.mint()
    openai_client(fleet, own).responses.create(input="Hi", **settings)
    assert [line.reasoning_tokens for line in fleet.ledger(own)] == [3]
    history: Any = [{"role": "user", "content": "Hi"}, *[i.model_dump(exclude_none=True) for i in first.output]]
    sdk.responses.create(input=[*history, {"role": "user", "content": "More?"}], **settings)
    assert sent(fleet)["input"][1]["encrypted_content"] == ENCRYPTED

    # A turn another provider served carries the gateway's seal, which OpenAI cannot read: left out, and said.
    deepseek = sdk.responses.create(input="Hi", **{**settings, "model": "reasoner"})
    history = [{"role": "user", "content": "Hi"}, *[i.model_dump(exclude_none=True) for i in deepseek.output]]
    raw = sdk.responses.with_raw_response.create(input=[*history, {"role": "user", "content": "More?"}], **settings)
    assert raw.parse().status == "completed"
    assert [i.get("type") for i in sent(fleet)["input"]] == ["message", "message", "message"] or all(
        i.get("type") != "reasoning" for i in sent(fleet)["input"]
    )
    names = urllib.parse.unquote(raw.headers["x-gateway-dropped-params"]).split(",")
    assert names == ["input[reasoning].encrypted_content"]
    with pytest.raises(openai.BadRequestError):  # strict: refused rather than left out
        sdk.responses.create(
            input=[*history, {"role": "user", "content": "More?"}],
            extra_headers={"x-gateway-strict": "true"},
            **settings,
        )


def test_the_stream_is_relayed_and_metered(fleet: Running, fleet_key: str) -> None:
    with openai_client(fleet, fleet_key).responses.stream(model="azure-gpt", input="Hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == TEXT and final.usage is not None and final.usage.output_tokens == 7
    completed = events[-1]
    assert completed.type == "response.completed"
    assert (completed.response.model_extra or {})["cost"]["output_tokens"] == 7
    assert openai_client(fleet, fleet_key).responses.retrieve(final.id).output_text == TEXT


def test_a_relayed_stream_opens_with_the_store_and_previous_id_it_ends_with(fleet: Running, fleet_key: str) -> None:
    """`response.created` and `response.in_progress` came as the provider sent them, for the body it was sent
    (`store: false`, no `previous_response_id`), and `response.completed` said `store: true` and the id continued."""
    sdk = openai_client(fleet, fleet_key)
    first = sdk.responses.create(model="gpt", input="Hi")
    with sdk.responses.stream(model="gpt", input="again", previous_response_id=first.id) as stream:
        events = [event for event in stream if hasattr(event, "response")]
    assert [event.type for event in events] == ["response.created", "response.in_progress", "response.completed"]
    assert [(event.response.store, event.response.previous_response_id) for event in events] == [(True, first.id)] * 3


def test_a_stream_cut_short_ends_with_response_failed(fleet: Running, fleet_key: str) -> None:
    """Through the OpenAI SDK's stream helper, the closing `response.failed` is the response the stream began (its
    id, model, creation time): it said `"id": null`, and the helper raised "Lifecycle response identity changed"."""
    with openai_client(fleet, fleet_key).responses.stream(model="native-cut", input="Hi") as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]
    began, failed = events[0], events[-1]
    assert began.type == "response.created" and failed.type == "response.failed"
    assert failed.response.status == "failed" and failed.response.error is not None
    assert (failed.response.id, failed.response.model, failed.response.created_at) == (
        began.response.id,
        began.response.model,
        began.response.created_at,
    )


def test_a_passed_through_stream_cut_short_is_charged_its_prompt_and_relayed_text(fleet: Running) -> None:
    key = fleet.mint(name="cut", budget_usd=1.0)
    body = {"model": "native-cut", "input": "Hi", "stream": True}
    with httpx.stream("POST", f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}) as a:
        b"".join(a.iter_bytes())
    [line] = fleet.ledger(key)
    assert line.cost_source == "estimate" and line.input_tokens > 0 and line.output_tokens > 0
    assert (line.cost_usd or 0) > 0


@pytest.mark.parametrize("reasoning", [{"effort": "medium"}, None], ids=["effort-named", "default-effort"])
def test_a_passed_through_reasoning_stream_cut_short_is_charged_its_reserved_output(
    fleet: Running, reasoning: dict[str, str] | None
) -> None:
    """A reasoning model's stream cut short is charged the output reserved for it: its reasoning is billed and never
    shown. o4 reasons at its default effort where the request names none (as the Agents SDK's and most clients'
    requests leave it), and OpenAI bills that reasoning: such a stream was charged the text it relayed, 15 tokens
    for the 4,000 reserved (review). (`native-cut`, whose model does not reason, is charged what it relayed.)"""
    key = fleet.mint(name="reasoner-cut", budget_usd=1.0)
    body: dict[str, Any] = {"model": "reasoner-cut", "input": "Hi", "max_output_tokens": 4000, "stream": True}
    if reasoning is not None:
        body["reasoning"] = reasoning
    with httpx.stream("POST", f"{fleet.url}/v1/responses", json=body, headers={"authorization": f"Bearer {key}"}) as a:
        assert b"response.failed" in b"".join(a.iter_bytes())
    [line] = fleet.ledger(key)
    assert (line.cost_source, line.output_tokens) == ("reserved", 4000)
    assert line.cost_usd == pytest.approx((line.input_tokens * PRICE["input"] + 4000 * PRICE["output"]) / 1e6)


def test_a_passed_through_request_cut_in_flight_is_charged_the_reserved_worst_case(fleet: Running) -> None:
    key = fleet.mint(name="deadline", budget_usd=1.0)
    headers = {"authorization": f"Bearer {key}", "x-gateway-deadline-ms": "300"}
    cut = httpx.post(f"{fleet.url}/v1/responses", json={"model": "native-slow", "input": "Hi"}, headers=headers)
    assert cut.status_code == 504
    [line] = fleet.ledger(key)
    assert line.cost_source == "reserved" and line.status == 504 and (line.cost_usd or 0) > 0


def test_a_passed_through_answer_is_charged_the_providers_usage(fleet: Running) -> None:
    key = fleet.mint(name="answered", budget_usd=1.0)
    answer = httpx.post(
        f"{fleet.url}/v1/responses", json={"model": "gpt", "input": "Hi"}, headers={"authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 200
    provider = answer.json()["usage"]
    [line] = fleet.ledger(key)
    assert line.cost_source == "provider" and line.status == 200
    assert (line.input_tokens, line.output_tokens) == (provider["input_tokens"], provider["output_tokens"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_passed_through_answer_s_cache_writes_reach_the_client_and_the_ledger(fleet: Running, stream: bool) -> None:
    key = fleet.mint(name=f"cache-writes-{stream}")
    sdk = openai_client(fleet, key)
    if stream:
        with sdk.responses.stream(model="gpt-cache-write", input=LONG) as events:
            usage = events.get_final_response().usage
    else:
        usage = sdk.responses.create(model="gpt-cache-write", input=LONG).usage
    assert usage is not None and usage.input_tokens_details.cache_write_tokens == usage.input_tokens // 2 > 0
    [line] = fleet.ledger(key)
    assert line.cache_write_tokens == usage.input_tokens_details.cache_write_tokens


def test_a_mixed_plan_passes_through_on_a_deployment_that_serves_the_api(fleet: Running, fleet_key: str) -> None:
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="gpt-or-claude", input="Hi", tools=WEB
    )
    assert raw.parse().output_text == TEXT
    sent = fleet.fakes["openai"].state.requests[-1]
    assert sent["path"].endswith("/responses") and sent["json"]["tools"] == WEB
    assert "x-gateway-dropped-params" not in raw.headers


def test_a_mixed_plan_is_translated_for_a_deployment_of_another_type(fleet: Running, fleet_key: str) -> None:
    raw = openai_client(fleet, fleet_key).responses.with_raw_response.create(
        model="claude-or-gpt", input="Hi", tools=WEB
    )
    answer = raw.parse()
    assert answer.output_text == ANTHROPIC_TEXT
    assert fleet.fakes["anthropic"].state.requests[-1]["path"].endswith("/v1/messages")
    # (The hosted search goes as Claude's own: test_hosted_search.py.)
    assert "x-gateway-dropped-params" not in raw.headers and answer.output[0].type == "web_search_call"


def test_provider_errors_come_back_in_openais_shape(fleet: Running, fleet_key: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(fleet, fleet_key).responses.create(
            model="gpt", input=[{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "forged"}]
        )
    assert isinstance(caught.value.body, dict) and "could not be verified" in caught.value.body["message"]


# --- encrypted reasoning, and the provider account that sealed it ----------------------------------------------------

TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
CODEX: Any = {"tools": TOOLS, "tool_choice": "required", "store": False, "include": ["reasoning.encrypted_content"]}


def reasoning_sent(fleet: Running, fake: str = "openai") -> list[str]:
    """The `encrypted_content` of each reasoning item the last Responses request to `fake` carried."""
    return [item.get("encrypted_content") for item in sent(fleet, fake)["input"] if item.get("type") == "reasoning"]


def answered(items: list[Any], answer: Any) -> None:
    """A Codex session's next input: the answer's items, its call's output, and a new question."""
    items.extend(item.model_dump(exclude_none=True) for item in answer.output)
    call = next(item for item in answer.output if item.type == "function_call")
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "18C"})
    items.append({"role": "user", "content": "And tomorrow?"})


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_reasoning_one_organisation_sealed_goes_back_to_it_alone(fleet: Running, fleet_key: str, stream: bool) -> None:
    """A model whose deployments are two OpenAI organisations (`gpt-orgs`: org A, then org B), in a Codex session
    (`store: false`, every turn's encrypted reasoning sent back). OpenAI refuses another organisation's blob (400
    `invalid_encrypted_content`, "Encrypted content organization_id did not match the target organization"): the
    turn org A failed over to org B was refused for A's reasoning (review: a 400 instead of B's answer), and once B
    had served a turn, every later one was refused at A. Each blob is marked with the deployment that sealed it and
    goes back to it alone; at the other, its item is left out and named, and the turn is served."""
    sdk = openai_client(fleet, fleet_key)
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]

    def turn(model: str) -> tuple[Any, list[str | None], httpx.Headers | None]:
        """The answer, its reasoning's `encrypted_content` as the answer and the stream's items carried it, and the
        answer's headers (a whole one's)."""
        headers = None
        shown: list[Any] = []
        if stream:
            with sdk.responses.stream(model=model, input=items, **CODEX) as events:
                shown = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "reasoning"]
                answer = events.get_final_response()
        else:
            raw = sdk.responses.with_raw_response.create(model=model, input=items, **CODEX)
            answer, headers = raw.parse(), raw.headers
        reasoning = [item for item in answer.output if item.type == "reasoning"]
        answered(items, answer)
        return answer, [item.encrypted_content for item in [*reasoning, *shown]], headers

    first, at_a, _ = turn("gpt-orgs")  # org A serves
    second, at_b, headers = turn("gpt-orgs-a-down")  # org A fails: org B serves
    request = fleet.fakes["openai"].state.requests[-1]
    assert second.status == "completed"
    assert request["headers"][ORGANIZATION_HEADER] == ORG_B and reasoning_sent(fleet) == []
    if headers is not None:
        assert headers["x-gateway-route"].endswith("=500, openai-org-b/o4-reasoner@global=200")
        assert urllib.parse.unquote(headers["x-gateway-dropped-params"]) == "input[reasoning].encrypted_content"
    third, _, _ = turn("gpt-orgs")  # org A again: its own reasoning back as it sealed it, not B's
    assert third.status == "completed"
    assert ORGANIZATION_HEADER not in fleet.fakes["openai"].state.requests[-1]["headers"]
    assert reasoning_sent(fleet) == [ENCRYPTED]
    # What the client was given: each organisation's blob, marked with the deployment that sealed it.
    (org_a, blob_a), (org_b, blob_b) = issued(at_a[0]), issued(at_b[0])
    assert (blob_a, blob_b) == (ENCRYPTED, sealed_for(ORG_B)) and org_a != org_b
    assert at_a == [at_a[0]] * len(at_a) and at_b == [at_b[0]] * len(at_b)  # (the stream's items as its answer's)


def test_a_stored_conversation_hands_each_organisations_reasoning_back_to_it_alone(
    fleet: Running, fleet_key: str
) -> None:
    """The same with the gateway keeping the turns (`store`, `previous_response_id`): the encrypted reasoning it asked
    for itself, and kept, was handed to whichever organisation served the next turn."""
    sdk = openai_client(fleet, fleet_key)
    settings: Any = {"tools": TOOLS, "tool_choice": "required"}

    def next_input(answer: Any) -> Any:
        call = next(item for item in answer.output if item.type == "function_call")
        return [{"type": "function_call_output", "call_id": call.call_id, "output": "18C"}, "And tomorrow?"]

    first = sdk.responses.create(model="gpt-orgs", input="Weather in Paris?", **settings)
    assert first.output[0].type == "reasoning" and first.output[0].encrypted_content is None  # kept by the gateway
    follow_up, question = next_input(first)
    raw = sdk.responses.with_raw_response.create(
        model="gpt-orgs-a-down",
        previous_response_id=first.id,
        input=[follow_up, {"role": "user", "content": question}],
        **settings,
    )
    second = raw.parse()
    assert second.status == "completed" and raw.headers["x-gateway-provider"] == "openai-org-b"
    assert urllib.parse.unquote(raw.headers["x-gateway-dropped-params"]) == "input[reasoning].encrypted_content"
    assert reasoning_sent(fleet) == []
    follow_up, _ = next_input(second)
    third = sdk.responses.create(model="gpt-orgs", previous_response_id=second.id, input=[follow_up], **settings)
    assert third.status == "completed" and reasoning_sent(fleet) == [ENCRYPTED]


def test_openais_reasoning_is_not_sent_to_azure_nor_azures_to_openai(fleet: Running, fleet_key: str) -> None:
    """An Azure OpenAI resource seals reasoning with its own keys: neither reads the other's blobs."""
    sdk = openai_client(fleet, fleet_key)
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    given = []
    for provider in ("openai", "azure", "openai"):
        pin = {"x-gateway-provider": provider}
        raw = sdk.responses.with_raw_response.create(
            model="gpt-or-azure-reasoner", input=items, extra_headers=pin, **CODEX
        )
        answer = raw.parse()
        assert answer.status == "completed" and raw.headers["x-gateway-provider"] == provider
        given += [item.encrypted_content for item in answer.output if item.type == "reasoning"]
        answered(items, answer)
    assert reasoning_sent(fleet, "azure") == []  # OpenAI's reasoning left out at Azure
    assert reasoning_sent(fleet) == [ENCRYPTED]  # and Azure's at OpenAI, OpenAI's own handed back
    assert [blob(sealed) for sealed in given] == [ENCRYPTED, sealed_for(AZURE_ORGANIZATION), ENCRYPTED]
