"""What one client can make the gateway's event loop do while every other request of the process waits: each
request below held it for seconds (some for hours) before the review that found them, and is now refused, or
answered, in bounded work. `longest_hold` measures the longest time the loop went without running a 10 ms ticker
meanwhile; the bounds leave room for a shared, noisy machine."""

from __future__ import annotations

import time
import tracemalloc
from typing import Any

import httpx
import pytest

from handler.api.key_routes import MAX_MODEL_LIMITS
from handler.redaction import NAME_CHARS
from tests.support.inprocess import serve
from tests.support.lag import longest_hold
from tests.unit.handler.pipeline.test_keys import A_RUNS, BEDROCK, STARRED, VERSIONED
from tests.unit.handler.pipeline.test_schema_check import fan_out, patterned

MODEL = {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}], "price": {"input": 1.0, "output": 2.0}}
MODELS = {"gpt-4o-mini": MODEL}
ENFORCED = {"x-gateway-enforce-schema": "true"}


class Upstream:
    """The provider, answering `{}` and counting what it was sent."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        message = {"role": "assistant", "content": "{}"}
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        )


def enforced(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "answer {}"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    }


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (fan_out(16), "expands through its references"),  # (1 KB: 1.7 s of the loop; 30 levels, hours)
        (patterned(40), "patterns too costly to compile"),  # (2 KB: 1.6-5 s compiling `\p{L}{160}`s)
        (patterned(64, r"\p{L}{ 150 }"), "patterns too costly to compile"),  # (3 KB, spaced: 3.1 s, taken)
    ],
)
async def test_a_small_enforced_schema_that_would_hold_the_loop_is_refused_before_anything_is_sent(
    schema: dict[str, Any], problem: str
) -> None:
    upstream = Upstream()
    served = await serve(upstream, MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    refused, held, _ = await longest_hold(
        served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
    )
    assert upstream.calls == 0 and not await served.ledger()
    await served.gateway.aclose()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"
    assert problem in refused.json()["error"]["message"]
    assert held < 0.5, f"a {len(str(schema))}-byte schema held the event loop {held:.1f} s"


async def test_an_enforced_schema_within_the_bounds_is_checked_in_bounded_time() -> None:
    """The largest fan-out and the costliest patterns taken: the answer is checked without holding the loop."""
    upstream = Upstream()
    served = await serve(upstream, MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    for schema in (fan_out(12), patterned(15, r"\p{L}{31}")):
        answer, held, _ = await longest_hold(
            served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
        )
        assert answer.status_code == 200, answer.text
        assert held < 0.5, f"a schema within the bounds held the event loop {held:.1f} s"
    await served.gateway.aclose()


async def test_a_key_without_budget_left_buys_no_more_than_the_bounded_schema_check() -> None:
    """The schema is checked before the budget (whose check reserves: refusing a schema after it would leave a
    reservation and a ledger line for a request that was never sent), so that check is what a key that will get a
    402 can buy: before, 1.6 s of the loop compiling 40 patterns; now, at most the bounded patterns."""
    served = await serve(Upstream(), MODELS, budget_usd=1e-9)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    for schema, status in ((patterned(40, r"\p{L}{160}b"), 400), (patterned(15, r"\p{L}{31}b"), 402)):
        refused, held, _ = await longest_hold(
            served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
        )
        assert refused.status_code == status, refused.text
        assert held < 0.5, f"a request refused ({status}) held the event loop {held:.1f} s first"
    await served.gateway.aclose()


LIMIT = 8 * 1024 * 1024 - 100
OBJECTS = b'{"token":"abc","z":[' + b"{}," * (LIMIT // 3) + b"{}]}"
FIELDS = b'{"token":"abc",' + b",".join(b'"k%d":0' % i for i in range(700_000))[: LIMIT - 40].rsplit(b",", 1)[0] + b"}"


def unused(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no upstream call expected")


async def test_a_sign_in_body_past_its_bound_is_a_413_before_it_is_read() -> None:
    """`POST /dashboard/sign-in` takes no key, and its body is a token of at most 200 characters, yet it read,
    parsed and walked up to `max_body_bytes` (8 MiB): 8 MiB of `{}`s held the loop 0.9 s, 700,000 unknown fields
    2.3 s (review). Declared or not, a body past `SIGN_IN_BYTES` is refused before it is parsed."""
    served = await serve(unused, MODELS)
    for name, body in (("8 MiB of {}", OBJECTS), ("700,000 unknown fields", FIELDS)):
        answer, held, _ = await longest_hold(
            served.http.post("/dashboard/sign-in", content=body, headers={"content-type": "application/json"})
        )
        assert answer.status_code == 413
        assert answer.json()["error"] == {
            "message": f"request body of {len(body)} bytes exceeds the 4096-byte limit",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
        assert held < 0.25, f"a sign-in without a key ({name}) held the event loop {held:.2f} s"

    async def undeclared() -> Any:  # (no content-length: refused as its chunks pass the bound)
        for start in range(0, len(OBJECTS), 65536):
            yield OBJECTS[start : start + 65536]

    answer = await served.http.post(
        "/dashboard/sign-in", content=undeclared(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413 and "exceeds the 4096-byte limit" in answer.text
    await served.gateway.aclose()


async def test_a_sign_in_body_past_its_bound_takes_no_memory_to_refuse() -> None:
    served = await serve(unused, MODELS)
    tracemalloc.start()
    try:
        answer = await served.http.post(
            "/dashboard/sign-in", content=OBJECTS, headers={"content-type": "application/json"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await served.gateway.aclose()
    assert answer.status_code == 413
    # The body itself is 8 MiB (held by the test's client): it was 300-600 MB of Python objects.
    assert peak < 3 * len(OBJECTS), f"a sign-in without a key peaked at {peak / 2**20:.0f} MiB of Python objects"


async def test_a_key_body_past_its_bound_is_a_413() -> None:
    """The key routes' bodies are small by nature too (the largest a spec can be is 54 KB): an admin's key is
    needed, but neither is read up to 8 MiB."""
    served = await serve(unused, MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", "content-type": "application/json"}
    answer = await served.http.post("/v1/keys", content=b'{"name":"' + b"x" * 200_000 + b'"}', headers=headers)
    await served.gateway.aclose()
    assert answer.status_code == 413, answer.text
    assert "exceeds the 131072-byte limit" in answer.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/", "/v1/models/", "/admin/keys/", "/v1/responses/"])
async def test_a_long_path_without_a_key_is_clipped_in_its_log_line(
    path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request with no key (or to no route) had its whole path in its log line: a 60 KB path (`gateway serve`
    takes 64 KB of head) was a 60 KB log line (CloudWatch bills each byte), though every other name a client
    chooses is clipped to `NAME_CHARS`."""
    served = await serve(unused, MODELS)
    capsys.readouterr()
    answer = await served.http.get(path + "a" * 60_000)  # no key
    await served.gateway.aclose()
    assert answer.status_code in (401, 404)
    lines = [line for line in capsys.readouterr().out.splitlines() if '"message":"request"' in line]
    assert lines
    longest = max(map(len, lines))
    assert longest < 2 * NAME_CHARS + 1024, f"one unauthenticated request's log line is {longest} bytes"
    assert len(answer.text) < 2 * NAME_CHARS + 1024  # (a 404 names the path it did not find: clipped too)


async def test_a_long_path_without_a_key_costs_no_more_than_a_short_one() -> None:
    """`redact_message` scanned the whole 60 KB path: 10-30 ms of the loop for a 401; now its first `NAME_CHARS`."""
    served = await serve(unused, MODELS)
    short, long = "/v1/models/" + "a" * 10, "/v1/models/" + "a" * 60_000
    requests = {path: httpx.Request("GET", "http://gw" + path) for path in (short, long)}  # (httpx's parsing: once)
    times = {}
    for path, request in requests.items():
        took = []
        for _ in range(5):
            started = time.perf_counter()
            answer = await served.http.send(request)
            took.append(time.perf_counter() - started)
        assert answer.status_code == 401
        times[path] = min(took)
    await served.gateway.aclose()
    assert times[long] < 0.005, f"a 401 for a 60 KB path took {times[long] * 1000:.1f} ms"


BAD_ITEMS = b"1," * 500_000 + b"1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", b'{"model":"gpt-4o-mini","messages":[' + BAD_ITEMS + b"]}"),
        ("/v1/messages", b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[' + BAD_ITEMS + b"]}"),
        ("/v1/messages/count_tokens", b'{"model":"gpt-4o-mini","messages":[' + BAD_ITEMS + b"]}"),
        ("/v1/responses", b'{"model":"gpt-4o-mini","input":[' + BAD_ITEMS + b"]}"),
        (
            "/v1/responses",
            b'{"model":"gpt-4o-mini","metadata":{' + b",".join(b'"k%d":1' % i for i in range(200_000)) + b"}}",
        ),
    ],
)
async def test_a_body_with_many_problems_is_refused_without_listing_them_all(path: str, body: bytes) -> None:
    """The 400 names the first problem, yet pydantic's whole error list was built first: a 1 MB body whose
    `messages` were 500,000 `1`s held the loop 2.3-4.4 s on every API, an 8 MiB one 42 s, from any key whatever
    its budget (validation comes before the budget's check)."""
    served = await serve(unused, MODELS, budget_usd=1e-9)
    headers = {"authorization": f"Bearer {served.key.key}", "content-type": "application/json"}
    refused, held, _ = await longest_hold(served.http.post(path, content=body, headers=headers))
    await served.gateway.aclose()
    assert refused.status_code == 400, refused.text
    assert held < 0.5, f"a {len(body) / 1e6:.1f} MB body of bad items held the event loop {held:.1f} s"


@pytest.mark.parametrize(
    ("parent", "child", "status"),
    [
        ({"models": [*STARRED, "*b"]}, {"models": ["a" * 199 + "b"] * 3}, 201),  # (review: 6.25 s)
        ({"models": [*STARRED, "*b"]}, {"models": A_RUNS}, 400),  # (20 s)
        (
            {"model_limits": {p: {"rpm": 5} for p in STARRED[:MAX_MODEL_LIMITS]}},
            {"model_limits": {"a" * 199 + "b": {"rpm": 9}}},
            201,
        ),
        ({"models": BEDROCK}, {"models": BEDROCK}, 201),  # (was a 400: 120,440 steps)
        ({"models": VERSIONED}, {"models": BEDROCK}, 201),  # (123,960 steps)
        (
            {"model_limits": {m: {"rpm": 10} for m in BEDROCK[:MAX_MODEL_LIMITS]}},
            {"model_limits": {m: {"rpm": 10} for m in BEDROCK[:MAX_MODEL_LIMITS]}},
            201,
        ),
    ],
)
async def test_a_childs_model_patterns_are_checked_against_its_parents_in_bounded_work(
    parent: dict[str, Any], child: dict[str, Any], status: int
) -> None:
    """`POST /v1/keys` holds a child's `models` and `model_limits` to its parent's patterns (`GlobCheck`): a pair
    costs one pass over the parent's pattern past its literal prefix (two names, none), and past `CONTAINMENT_STEPS`
    the body is a 400 naming the field."""
    served = await serve(unused, MODELS)
    minted = await served.post("/v1/keys", {"name": "patterned", **parent})
    assert minted.status_code == 201, minted.text
    headers = {"authorization": f"Bearer {minted.json()['key']}"}
    answer, held, _ = await longest_hold(served.http.post("/v1/keys", json={"name": "c", **child}, headers=headers))
    await served.gateway.aclose()
    assert answer.status_code == status, answer.text
    if status == 400:
        assert answer.json()["error"]["code"] == "invalid_request"
        assert answer.json()["error"]["param"] == "models"
    assert held < 0.5, f"a mint of {len(str(child))} bytes held the event loop {held:.1f} s"
