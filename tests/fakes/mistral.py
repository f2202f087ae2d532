"""A fake Mistral AI chat and embeddings API (`POST /v1/chat/completions`, `POST /v1/embeddings`), speaking
Mistral's documented wire format.

Mistral's chat answer is OpenAI's shape with its own differences, and those are what this fake speaks: a
reasoning model's `content` is a list of typed chunks, a `thinking` chunk (its own list of `text` chunks) then a
`text` chunk, beside any tool calls, in the answer and in each stream delta (docs.mistral.ai, "Exploring Mistral
Reasoning Modes" and "Reasoning"). Magistral models (`magistral-*`) always reason; Mistral Small 4
(`mistral-small-latest`, `mistral-small-2603`) and Medium 3.5 (`mistral-medium-3-5`) reason when asked with
`reasoning_effort: high` and not with `none`. A stream's last chunk carries the usage (Mistral sends it unasked);
tool calls carry Mistral's nine-character ids, new for each call, and their `index`.

A final assistant message marked `"prefix": true` is the prefix of the answer ("force the model to start its answer by
the content of the message"), and the answer repeats it at its start, as the examples of Mistral's guide show (the
guide takes it off with `content[len(prefix):]`), whole and streamed; a final assistant message without the mark is
refused as Mistral refuses it (400, "Expected last role User or Tool (or Assistant with prefix True) for serving but
got assistant"). A message in an order Mistral's validator refuses (`FOLLOWING`: only an assistant or another tool
message after a tool message) is refused in its words and shape (400, "Unexpected role 'user' after role 'tool'",
`invalid_request_message_order`, code 3230).
It refuses what Mistral refuses: a top-level field outside its chat request (422, `extra_forbidden`, in the shape of
Mistral's validation errors), `stream_options`, a tool-call id that is not nine letters and digits, and a
`reasoning_effort` other than `high` or `none`, or sent to a model without adjustable reasoning (a 400 whose wording
is the fake's: Mistral documents no message for it). An assistant turn's `content` may be such a list too, a
`thinking` chunk then `text`: how a reasoning model takes its earlier reasoning back (recorded, as sent). A user
message may script a tool call (`tests/fakes/script.py`).
Embeddings take Mistral's `EmbeddingRequest` (`output_dimension`, not OpenAI's `dimensions`; `encoding_format`
`float` or `base64`, the latter answered as OpenAI's little-endian float32 bytes) and text alone: any other field
is refused as chat's are, token ids with a 422 `string_type`.
Every request is recorded on `app.state.requests`.
"""

from __future__ import annotations

import base64
import re
import secrets
import string
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.script import ScriptedCall, scripted_turn, texts

API_KEY = "test-mistral-key"
TEXT = "Hello from fake Mistral."
THINKING = "The user greets me; a greeting back will do."
ADJUSTABLE = ("mistral-small-latest", "mistral-small-2603", "mistral-medium-3-5")
REQUEST_FIELDS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop", "random_seed", "metadata",
        "response_format", "tools", "tool_choice", "presence_penalty", "frequency_penalty", "n", "prediction",
        "parallel_tool_calls", "reasoning_effort", "prompt_mode", "guardrails", "prompt_cache_key", "service_tier",
        "safe_prompt", "min_tokens", "repetition_penalty", "top_k", "logprobs", "top_logprobs",
    }
)  # fmt: skip
TOOL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
ID_CHARACTERS = string.ascii_letters + string.digits
# Mistral's embeddings request (`mistralai`'s `EmbeddingRequest`), and its embeddings' default size.
EMBEDDING_FIELDS = frozenset({"model", "input", "metadata", "output_dimension", "output_dtype", "encoding_format"})
EMBEDDING_SIZE = 3


def _error(status: int, message: Any, kind: str, code: str | None = None) -> Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": code}
    return Response(orjson.dumps(body), status, media_type="application/json")


def _unknown_fields(body: dict[str, Any], known: frozenset[str]) -> Response | None:
    extra = [name for name in body if name not in known]
    if extra:
        detail = [
            {
                "type": "extra_forbidden",
                "loc": ["body", name],
                "msg": "Extra inputs are not permitted",
                "input": body[name],
            }
            for name in extra
        ]
        return _error(422, {"detail": detail}, "invalid_request_message_error")
    return None


# The roles Mistral takes right after each role (`mistral_common`'s `_validate_message_order`, the validator of its
# API); any other is refused, "Unexpected role 'user' after role 'tool'" (type `invalid_request_message_order`, code
# 3230: avante-corp/avante.nvim#2562).
FOLLOWING = {
    "system": ("user", "assistant", "system"),
    "user": ("assistant", "system", "user"),
    "assistant": ("assistant", "user", "tool"),
    "tool": ("assistant", "tool"),
}


def _out_of_order(messages: list[dict[str, Any]]) -> Response | None:
    for previous, message in zip(messages, messages[1:], strict=False):
        before, role = previous.get("role"), message.get("role")
        if before in FOLLOWING and role not in FOLLOWING[before]:
            message_order = f"Unexpected role '{role}' after role '{before}'"
            return _error(400, message_order, "invalid_request_message_order", "3230")
    return None


def _refusal(body: dict[str, Any]) -> Response | None:
    extra = _unknown_fields(body, REQUEST_FIELDS)
    if extra is not None:
        return extra
    for message in body.get("messages") or ():
        ids = [call.get("id") for call in message.get("tool_calls") or ()] + [message.get("tool_call_id")]
        for call_id in (i for i in ids if i is not None):
            if not TOOL_ID.match(str(call_id)):
                return _error(
                    400,
                    f"Tool call id was {call_id} but must be a-z, A-Z, 0-9, with a length of 9.",
                    "invalid_request_message_error",
                )
    messages = body.get("messages") or [{}]
    order = _out_of_order(messages)
    if order is not None:
        return order
    if messages[-1].get("role") == "assistant" and messages[-1].get("prefix") is not True:
        return _error(
            400,
            "Expected last role User or Tool (or Assistant with prefix True) for serving but got assistant",
            "invalid_request_message_error",
        )
    effort = body.get("reasoning_effort")
    if effort is not None and (effort not in ("high", "none") or not str(body["model"]).startswith(ADJUSTABLE)):
        return _error(400, f"reasoning_effort '{effort}' is not supported by this model", "invalid_request_error")
    return None


def _reasons(body: dict[str, Any]) -> bool:
    model = str(body["model"])
    return model.startswith("magistral") or (model.startswith(ADJUSTABLE) and body.get("reasoning_effort") == "high")


def _call(body: dict[str, Any]) -> dict[str, Any] | None:
    messages = body.get("messages") or []
    users = [texts(m.get("content")) for m in messages if m.get("role") == "user"]
    last = messages[-1] if messages else {}
    result = texts(last.get("content")) if last.get("role") == "tool" else None
    script = scripted_turn(users, [t["function"]["name"] for t in body.get("tools") or []], result)
    if not isinstance(script, ScriptedCall):
        return None
    function = {"name": script.name, "arguments": script.arguments_json}
    return {"id": new_call_id(), "type": "function", "function": function, "index": 0}


def new_call_id() -> str:
    """A tool call's id, new for each call as Mistral's are (nine letters and digits, `TOOL_ID`): a fixed one, repeated
    across turns, made Claude Code discard a later call as one it had answered and ask again (found by review)."""
    return "".join(secrets.choice(ID_CHARACTERS) for _ in range(9))


def _prefix(body: dict[str, Any]) -> str:
    """The prefix the answer starts with (a final assistant message marked `prefix: true`), "" without one."""
    last = (body.get("messages") or [{}])[-1]
    return texts(last.get("content")) if last.get("role") == "assistant" and last.get("prefix") is True else ""


def _thinking(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}


def create_app() -> Starlette:
    requests: list[dict[str, Any]] = []

    async def chat(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        requests.append({"path": request.url.path, "headers": dict(request.headers), "json": body})
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Unauthorized", "invalid_request_error")
        refused = _refusal(body)
        if refused is not None:
            return refused
        call, reasons, text = _call(body), _reasons(body), _prefix(body) + TEXT
        usage = {"prompt_tokens": 12, "total_tokens": 40, "completion_tokens": 28}
        if body.get("stream"):
            answer = _stream(body["model"], call, reasons, usage, text)
            return StreamingResponse(answer, media_type="text/event-stream")
        content: Any = "" if call else text
        if reasons:
            content = [_thinking(THINKING)] + ([] if call else [{"type": "text", "text": text}])
        message = {"role": "assistant", "tool_calls": [call] if call else None, "content": content, "prefix": False}
        answer = {
            "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}],
            "usage": usage,
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    async def _stream(
        model: str, call: dict[str, Any] | None, reasons: bool, usage: dict[str, Any], text: str
    ) -> AsyncIterator[bytes]:
        base = {"id": "cmpl-4c2e8a1f6b0d4e3a", "object": "chat.completion.chunk", "created": int(time.time())}

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "model": model, "choices": [choice], **extra}) + b"\n\n"

        yield event({"role": "assistant", "content": ""})
        if reasons:
            for piece in (THINKING[:10], THINKING[10:]):
                yield event({"content": [_thinking(piece)]})
        if call:
            yield event({"tool_calls": [call]})
        else:
            for i, word in enumerate(text.split(" ")):
                piece = (" " if i else "") + word
                yield event({"content": [{"type": "text", "text": piece}]} if reasons else {"content": piece})
        yield event({"content": ""}, "tool_calls" if call else "stop", usage=usage)
        yield b"data: [DONE]\n\n"

    async def embeddings(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw) if raw else {}
        requests.append({"path": request.url.path, "headers": dict(request.headers), "json": body})
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return _error(401, "Unauthorized", "invalid_request_error")
        refused = _unknown_fields(body, EMBEDDING_FIELDS)
        if refused is not None:
            return refused
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
            detail = [{"type": "string_type", "loc": ["body", "input"], "msg": "Input should be a valid string"}]
            return _error(422, {"detail": detail}, "invalid_request_message_error")
        size = body.get("output_dimension") or EMBEDDING_SIZE
        data = []
        for index in range(len(texts)):
            vector = [round(0.1 * (n + 1), 1) for n in range(size)]
            encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
            embedding = encoded if body.get("encoding_format") == "base64" else vector
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        tokens = sum(len(text.split()) + 1 for text in texts)
        answer = {
            "id": "embd-aad6fc62b17349b192ef09225058bc45",
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }
        return Response(orjson.dumps(answer), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ]
    )
    app.state.requests = requests
    return app
