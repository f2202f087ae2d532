"""What the buffered Lambda function can answer: Lambda returns at most 6 MB from a synchronous invocation.

Beyond `LAMBDA_PAYLOAD_BYTES` Lambda's Runtime API refuses the invocation's answer (a 413 to the runtime, which then
exits), and API Gateway gives the client its bare 500: after the provider had answered, and billed, the request,
which a client's retry had billed again. The function's answer is Mangum's JSON: the status, the headers and the body
as a JSON string (each `"`, `\\` and control character escaped; a body that is not text, base64). So:

- an embeddings request whose answer is known to be too large beforehand (its inputs times its vectors' dimensions
  times the bytes a value takes in the encoding asked for) is refused before anything is sent (`check_embeddings`);
- a whole answer that turns out too large is answered `413 request_too_large` instead (`check_answer`), its cost
  kept, on its headers and its ledger line, whose status says 413: the provider billed it, the client did not get it;
- anything else too large (a stream sent to the buffered endpoint, a report) is answered the same way (`deliverable`,
  run by `Settling` in handler/api/app.py), rather than crashing the runtime.

Only the buffered function sets a limit (`create_app`'s `answer_limit`, handler/entry/lambda_handler.py): a server,
and the streaming function behind the Web Adapter, answer whatever size. The check is a length comparison on the
built body; counting the characters JSON escapes happens only for a body over half the limit.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from handler.errors import RequestTooLargeError
from handler.redaction import path_clipped

if TYPE_CHECKING:
    from handler.embeddings import EmbeddingsRequest, EmbeddingsResponse
    from handler.pipeline.exchange import Exchange

LAMBDA_PAYLOAD_BYTES = 6_291_556  # Lambda's "maximum allowed payload size" of a synchronous invocation's answer
ENVELOPE_BYTES = 16 * 1024  # the rest of Mangum's answer: the status, the headers, the JSON around the body
# An embedding's item in the answer, without its vector: `{"object":"embedding","index":0,"embedding":[]},` and more.
ITEM_BYTES = 40
# The least an embedding's float takes as JSON (`0.0123456,`: providers send every value at float32's precision),
# for a model whose answers this environment has not seen yet.
FLOAT_BYTES_LEAST = 9
# A learned size is an average over one answer; a request estimated within this margin of the limit is sent.
LEARNED_MARGIN = 0.97
# The content types Mangum sends as text (its `DEFAULT_TEXT_MIME_TYPES`); any other body goes as base64.
TEXT_MIME_TYPES = (
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/vnd.api+json",
    "application/vnd.oai.openapi",
)
logger = logging.getLogger("gateway")
STREAMING = "send it to the streaming endpoint (StreamEndpoint), whose answers are not held to this limit"


def as_json_string(body: bytes) -> int:
    """`body`'s bytes as a JSON string in the invocation's answer (each `"`, `\\` and control character escaped)."""
    return len(body) + sum(body.count(escaped) for escaped in (b'"', b"\\", b"\n", b"\r", b"\t"))


class AnswerTooLargeError(RequestTooLargeError):
    """413: the answer is, or would be, larger than the buffered Lambda function can return."""


def megabytes(size: float) -> str:
    return f"{size / 1_000_000:.1f} MB"


class AnswerLimit:
    """The buffered Lambda function's limit on an answer, and what it has learned of embedding models' answers."""

    def __init__(self, payload_bytes: int = LAMBDA_PAYLOAD_BYTES) -> None:
        self.payload_bytes = payload_bytes
        self.body_bytes = payload_bytes - ENVELOPE_BYTES  # the most a body may weigh in the invocation's answer
        # Public model -> the dimensions of its vectors when a request names none, and the bytes a float of them took
        # in its last answer (learned from answers: no table of models to keep).
        self.vectors: dict[str, tuple[int | None, float | None]] = {}

    def weight(self, body: bytes | memoryview, text: bool = True) -> int:
        """`body`'s bytes in the invocation's answer: as a JSON string (`text`), else base64."""
        if not text:
            return 4 * math.ceil(len(body) / 3)
        if 2 * len(body) <= self.body_bytes:  # (even every byte escaped would fit: nothing to count)
            return len(body)
        return as_json_string(bytes(body))

    def limit_named(self) -> str:
        """The limit, as a client is told it."""
        return (
            f"the {megabytes(self.payload_bytes)} ({self.payload_bytes:,} bytes) an answer from this endpoint (a "
            "buffered AWS Lambda function) can carry"
        )

    def too_large(self, weight: int) -> str:
        """What a client is told of an answer of `weight` bytes that the function cannot return."""
        return f"the answer is {megabytes(weight)}, over {self.limit_named()}"

    def check_answer(self, ex: Exchange, body: bytes | memoryview) -> None:
        """Raise `AnswerTooLargeError` for a whole answer to a proxied request the function cannot return, its ledger
        line marked 413 (`undelivered`)."""
        if len(body) <= self.body_bytes // 2:
            return
        weight = self.weight(body)
        if weight <= self.body_bytes:
            return
        undelivered(ex, AnswerTooLargeError.status)
        raise AnswerTooLargeError(
            f"{self.too_large(weight)}. The provider answered and billed it: its cost is on this answer's headers and "
            f"on your key's ledger. Ask for less (fewer inputs or choices, a lower max_tokens), or {STREAMING}."
        )

    def check_embeddings(self, req: EmbeddingsRequest) -> None:
        """Refuse, before anything is sent, an embeddings request whose answer is known to be too large: its inputs
        times the bytes of each one's vector (its dimensions, named by the request or learned from an answer, in the
        encoding asked for: base64 exactly, floats at least `FLOAT_BYTES_LEAST` each or as the model's last answer
        wrote them)."""
        inputs = req.input
        if isinstance(inputs, str) or len(inputs) < 2 or isinstance(inputs[0], int):
            return  # one input: one vector, far within the limit
        default, float_bytes = self.vectors.get(req.model, (None, None))
        dimensions = req.dimensions or default
        if dimensions is None:
            return
        if req.encoding_format == "base64":
            per_input = ITEM_BYTES + 4 * math.ceil(4 * dimensions / 3)  # float32s, base64
            encoding = "base64"
        else:
            value = float_bytes * LEARNED_MARGIN if float_bytes is not None else FLOAT_BYTES_LEAST
            per_input = ITEM_BYTES + math.ceil(dimensions * value)
            encoding = "floats"
        size = len(inputs) * per_input
        if size <= self.body_bytes:
            return
        most = self.body_bytes // per_input
        advice = [f"send at most {most:,} inputs per request"]
        if encoding == "floats":
            # (what OpenAI's SDKs ask for unless told otherwise, and decode for the caller)
            advice.append("ask for encoding_format base64 (about a third of the size)")
        advice.append(STREAMING)
        raise AnswerTooLargeError(
            f"the answer to these {len(inputs):,} inputs ({dimensions:,} dimensions each, as {encoding}) would be "
            f"about {megabytes(size)} or more, over {self.limit_named()}; nothing was sent: " + ", or ".join(advice),
            param="input",
        )

    def learn(self, req: EmbeddingsRequest, answer: EmbeddingsResponse, body_bytes: int) -> None:
        """What an embeddings answer (`body_bytes` long) tells of its model's vectors, for `check_embeddings`."""
        if not answer.data:
            return
        vector = answer.data[0].embedding
        default, float_bytes = self.vectors.get(req.model, (None, None))
        if isinstance(vector, str):  # base64 of float32s
            dimensions = (len(vector) * 3 // 4 - len(vector) + len(vector.rstrip("="))) // 4
        else:
            dimensions = len(vector)
            if dimensions:
                float_bytes = (body_bytes / len(answer.data) - ITEM_BYTES) / dimensions
        if req.dimensions is None and dimensions:
            default = dimensions
        self.vectors[req.model] = (default, float_bytes)


def undelivered(ex: Exchange | None, status: int) -> None:
    """Mark the ledger line of `ex`'s answer with `status`: it was answered and billed, not delivered. The buffered
    function writes a request's settlement after its answer is built (`Settling`), so the line is not written yet."""
    item = ex.ledger_item if ex is not None else None
    if item is not None:
        item.status = status


def deliverable(limit: AnswerLimit, scope: Any, held: list[Any]) -> list[Any]:
    """`held`, an answer's ASGI messages, if the buffered Lambda function can return it (`AnswerLimit`); else a 413
    in the caller's API's shape, with what is known of the request (its id, cost), its ledger line marked 413. For
    what the routes did not check themselves (`Api.answered`): a stream sent to the buffered endpoint, a report."""
    size = sum(len(message.get("body", b"")) for message in held if message["type"] == "http.response.body")
    if size <= limit.body_bytes // 2 or not held or held[0]["type"] != "http.response.start":
        return held
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in held[0].get("headers", [])}
    text = any(mime in headers.get("content-type", "") for mime in TEXT_MIME_TYPES)
    body = b"".join(message.get("body", b"") for message in held if message["type"] == "http.response.body")
    weight = limit.weight(body, text)
    if weight <= limit.body_bytes:
        return held
    from handler.api.app import anthropic_caller, json_response, route_path  # (the app is loaded by now)

    state = scope.get("state", {})
    ex: Exchange | None = state.get("exchange")
    undelivered(ex, AnswerTooLargeError.status)
    logger.error(
        "answer not delivered: %d bytes, past the buffered Lambda function's %d; answered 413 instead",
        weight,
        limit.payload_bytes,
        extra={"request_id": state.get("request_id"), "path": path_clipped(route_path(scope))},
    )
    status = held[0].get("status", 200)
    if status >= 400:
        # An error answer: nothing was asked for that was too large, and nothing of it billed.
        error = AnswerTooLargeError(f"{limit.too_large(weight)}: an error answer ({status}), not returned")
    else:
        error = AnswerTooLargeError(
            f"{limit.too_large(weight)}"
            + (", and was billed: its cost is on your key's ledger" if ex is not None and ex.cost is not None else "")
            + f". Ask for less, or {STREAMING}."
        )
    anthropic = anthropic_caller(Request(scope))
    answer = {**(ex.headers() if ex is not None else {}), "x-should-retry": "false"}
    if state.get("request_id"):
        answer["x-request-id"] = state["request_id"]
    response = json_response(error.anthropic_body() if anthropic else error.openai_body(), error.status, answer)
    start = {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
    return [start, {"type": "http.response.body", "body": response.body}]
