"""The body a Responses request passes through with (`Relay`), built only for a deployment that reads it."""

from __future__ import annotations

from typing import Any

import pytest

from handler.api.responses_api import ReasoningSeal, ResponsesRequest
from handler.api.responses_native import Relay


def test_the_passed_through_body_is_built_on_its_first_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    own_seal = ReasoningSeal().seal({"text": "t"})
    body = ResponsesRequest.model_validate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": "go"},
                {"type": "reasoning", "summary": [], "encrypted_content": own_seal},
                {"type": "reasoning", "summary": [], "encrypted_content": "openai-opaque"},
            ],
            "store": False,
        }
    )
    dumps: list[dict[str, Any]] = []
    dump = ResponsesRequest.model_dump

    def counted(self: ResponsesRequest, **kwargs: Any) -> dict[str, Any]:
        dumps.append(kwargs)
        return dump(self, **kwargs)

    monkeypatch.setattr(ResponsesRequest, "model_dump", counted)
    call = Relay(body, [], None, ["truncation"]).call  # type: ignore[arg-type]
    # What a deployment of another API reads (the translated request goes there) costs no copy of the body...
    assert (call.untranslated, call.dropped) == (("truncation",), ("input[reasoning].encrypted_content",))
    assert dumps == []
    # ...and a Responses deployment's read builds it once: the client's body, the gateway's own seal left out.
    assert dict(call.body) == {
        "model": "m",
        "input": [
            {"role": "user", "content": "go"},
            {"type": "reasoning", "summary": [], "encrypted_content": "openai-opaque"},
        ],
        "store": False,
    }
    assert call.body["store"] is False and len(call.body) == 3
    assert len(dumps) == 1


def test_a_stored_turn_is_sent_expanded_and_without_the_gateways_id() -> None:
    body = ResponsesRequest.model_validate({"model": "m", "input": "and now?", "previous_response_id": "resp_1"})
    history = [{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "content": "hello"}]
    sent = dict(Relay(body, history, None, []).call.body)  # type: ignore[arg-type]
    assert sent == {
        "model": "m",
        "input": [*history, {"type": "message", "role": "user", "content": "and now?"}],
    }
