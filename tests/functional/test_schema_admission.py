"""An enforced schema is refused, when the answer's check could not apply it, before anything is reserved or sent;
and what its patterns leave in the process, request after request, stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.functional.test_loop_holds import ENFORCED, MODELS, Upstream, enforced
from tests.support.inprocess import serve

DRAFT_07 = "http://json-schema.org/draft-07/schema#"


@pytest.mark.parametrize(
    "subschema",
    [
        {"type": "string", "pattern": "^(?=a)"},
        {"type": "string", "pattern": ["a"]},
        {"type": "string", "pattern": {"a": 1}},
        {"type": "object", "patternProperties": ["a"], "additionalProperties": False},
        {"$schema": DRAFT_07, "items": [{"type": "integer"}]},
    ],
    ids=["look-around", "pattern-list", "pattern-object", "patternProperties-list", "draft-07-items"],
)
async def test_a_subschema_only_a_reference_reaches_is_refused_before_anything_is_sent(
    subschema: dict[str, Any],
) -> None:
    """Reached only by a `$ref` into a keyword JSON Schema does not know, each was found as the answer was checked,
    after the provider billed it: a 400 for the look-around, a 500 for the others (review)."""
    upstream = Upstream()
    served = await serve(upstream, MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    schema = {"$ref": "#/x", "x": subschema}
    refused = await served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
    assert upstream.calls == 0 and not await served.ledger()
    await served.gateway.aclose()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"


def nested(keyword: str, levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        schema = {keyword: schema}
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
        nested("items", 120),
        nested("not", 120),
    ],
    ids=["self", "a-b", "items-120", "not-120"],
)
async def test_a_schema_whose_check_would_recurse_past_pythons_limit_is_refused_before_anything_is_sent(
    schema: dict[str, Any],
) -> None:
    """A reference cycle passed admission: sent, billed, then a 400 (review: the line said 400, $0.0083). A schema
    of 120 nested `items` (within the body's 128 levels) was a 500 at admission. Each is the client's 400 before
    anything is reserved or sent."""
    upstream = Upstream()
    served = await serve(upstream, MODELS)
    headers = {"authorization": f"Bearer {served.key.key}", **ENFORCED}
    refused = await served.http.post("/v1/chat/completions", json=enforced(schema), headers=headers)
    assert upstream.calls == 0 and not await served.ledger()
    await served.gateway.aclose()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_request"


GROWTH = r"""
import json
from handler.errors import InvalidRequestError
from handler.pipeline.schema_check import check
from handler.schemas import ChatRequest
from tests.unit.handler.pipeline.test_schema_check import patterned


def resident_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def admit(schema):
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": fmt}
    try:
        check(ChatRequest.model_validate(request))
    except InvalidRequestError:
        pass


admit(patterned(1, "a"))
before = resident_mb()
for each in range(34):
    admit(patterned(3, rf"\p{{L}}{{150}}{each}_"))
for each in range(10):
    admit(patterned(10, rf"\p{{L}}{{31}}{each}_"))
for each in range(2):
    admit(patterned(64, r"\p{L}{ 150 }" + f"{each}_"))
print(json.dumps(resident_mb() - before))
"""


def test_distinct_patterns_one_request_after_another_leave_the_process_bounded() -> None:
    """pydantic-core keeps the 50 patterns it compiled last, whoever else lets go of them: 100 distinct `\\p{L}{150}`s
    (three a request, within the bound of one schema's compiling) left the process some 500 MB larger (review:
    20 of them 231 MB). A pattern's size is bounded too: 100 distinct ones of that bound leave some 135 MB. Two
    schemas of 64 `\\p{L}{ 150 }`s (spaced, which Rust compiles as `\\p{L}{150}`) added some 520 MB (review)."""
    done = subprocess.run([sys.executable, "-c", GROWTH], capture_output=True, text=True, timeout=300, check=True)
    grown = json.loads(done.stdout.strip().splitlines()[-1])
    assert grown < 200, f"the process grew {grown:.0f} MB"
