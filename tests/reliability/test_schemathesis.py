"""Schemathesis against the running gateway, driven by its own `/openapi.json`.

Every operation is fuzzed with an admin key (so the admin routes run their handlers, not just the
403) and must answer: no 5xx the gateway caused, a documented status and content type, and every
error in the shapes of the interface reference, docs/interface.md (the document's `OpenAIError` /
`AnthropicError` schemas).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
)

from handler.api.route_table import openapi_document
from tests.functional.conftest import Running

# A 503 the client asked for: it pinned a provider or region that serves nothing for the model.
CLIENT_CHOSEN_5XX = {"no_deployment_available"}
EXAMPLES = 30
# Replaced by the 5xx assertion above; the auth check re-sends our explicit header so cannot tell; the
# gateway validates beyond JSON Schema (IP ranges, dates, group_by) and is lenient on unknown query values,
# which the two data checks count against it though the answers are right.
EXCLUDED = [not_a_server_error, ignored_auth, positive_data_acceptance, negative_data_rejection]


@pytest.fixture(scope="module")
def admin_key(running: Running) -> str:
    return running.mint(name="schemathesis", admin=True)


@pytest.fixture(scope="module")
def api_schema(running: Running) -> Any:
    return schemathesis.openapi.from_url(f"{running.url}/openapi.json")


DOCUMENT = openapi_document()
# Negative cases need something to break: a body or a parameter.
OPERATIONS = [
    (path, method, mode)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or "requestBody" in operation or "parameters" in operation
]


def test_the_document_is_served_without_auth(running: Running) -> None:
    answer = httpx.get(f"{running.url}/openapi.json")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "a gateway key, `gwk_...`",
    }
    served = set(document["paths"])
    assert {"/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/admin/keys/{key_id}/rotate"} <= served
    assert "test-openai-key" not in answer.text and "127.0.0.1" not in answer.text


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS)
def test_no_5xx_and_documented_errors(
    path: str, method: str, mode: GenerationMode, running: Running, admin_key: str, api_schema: Any
) -> None:
    auth = {"authorization": f"Bearer {admin_key}"}

    @given(case=api_schema[path][method.upper()].as_strategy(mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: Any) -> None:
        response = case.call(base_url=running.url, headers=auth, timeout=15)
        if response.status_code >= 500:
            body = response.json()
            code = (body.get("error") or {}).get("code") if case.path != "/v1/messages" else None
            pinned = any(h in (case.headers or {}) for h in ("x-gateway-provider", "x-gateway-region"))
            assert pinned and code in CLIENT_CHOSEN_5XX, (response.status_code, response.text[:500])
        case.validate_response(
            response,
            excluded_checks=EXCLUDED,
            headers=auth,
            transport_kwargs={"base_url": running.url, "headers": auth},
        )

    run()
