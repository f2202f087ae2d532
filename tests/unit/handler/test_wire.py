"""Provider error bodies relayed as messages: never a secret, not even half of one. A client's query string on
an upstream URL: a query and nothing more."""

from __future__ import annotations

import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler import redaction
from handler.errors import ProviderRejectedError, UpstreamError
from handler.wire import ERROR_EXCERPT_CHARS, error_answer, error_excerpt, forwarded_query, retry_after_seconds

SECRET = "f3a9c2e1b7d4f3a9c2e1b7d4f3a9c2e1b7d4f3a9c2e1b7d4"


def test_an_excerpt_is_scrubbed_before_it_is_cut() -> None:
    """A known secret that straddles the excerpt's end would leave its first part behind if cut first."""
    redaction.register(SECRET)
    body = ("x" * (ERROR_EXCERPT_CHARS - 20) + f" token {SECRET} trailing").encode()
    excerpt = error_excerpt(body)
    assert len(excerpt) <= ERROR_EXCERPT_CHARS and SECRET[:10] not in excerpt
    assert error_excerpt(b"") == "no error body"


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "bedrock"])
def test_each_providers_error_that_is_not_json_relays_no_part_of_a_secret(provider: str) -> None:
    redaction.register(SECRET)
    adapter = REGISTRY[provider]("p", "provider-key-000000", {})
    body = ("<html>" + "e" * (ERROR_EXCERPT_CHARS - 30) + f" bad key {SECRET}</html>").encode()
    error = adapter.error(400, body, {})
    assert isinstance(error, UpstreamError) and SECRET[:8] not in error.message


def test_the_upstream_type_is_scrubbed_too() -> None:
    error = UpstreamError("boom", upstream_type=f"invalid_key {SECRET}")
    assert error.upstream_type is not None and SECRET not in error.upstream_type


def test_a_rejected_requests_message_code_and_param_relay_no_credential() -> None:
    """A provider's 400 relayed with its own words, code and param (`ProviderRejectedError`): an `Authorization:
    Bearer <token>` it echoed kept its token (the shape took the word "Bearer" for the value), in the message and
    now in the param too (found by review)."""
    echoed = "Authorization: Bearer tok_live_abcdef123456"
    body = orjson.dumps({"error": {"message": f"rejected {echoed}", "type": "x", "code": "bad", "param": echoed}})
    relayed = ProviderRejectedError(REGISTRY["openai"]("p", "provider-key-000000", {}).error(400, body, {}))
    error = relayed.openai_body()["error"]
    assert isinstance(error, dict) and "tok_live" not in orjson.dumps(error).decode()
    assert error["param"] == "Authorization: Bearer [REDACTED]" and error["code"] == "bad"


@pytest.mark.parametrize(
    ("raw", "query"),
    [
        (b"beta=true", "beta=true"),
        (b"api_key=gwk_abc_secret&beta=true", "beta=true"),  # a key a client put in its query stays here
        (b"beta=true&next=/../../v1/models", "beta=true"),
        (b"beta=true#/../admin", "beta=true%23%2F..%2Fadmin"),  # a `#` would end the query
        (b"beta=a b\r\n", "beta=a+b%0D%0A"),
        (b"beta=100%&beta=%zz", "beta=100%25&beta=%25zz"),  # a `%` that starts no escape
        (b"other=1", ""),
        (b"", ""),
    ],
)
def test_a_clients_query_goes_upstream_as_the_providers_parameters_only(raw: bytes, query: str) -> None:
    """The client's query string put on an upstream URL: only the parameters the provider reads (Anthropic's
    `beta`), encoded anew; a whole query went as sent, a key a client mistook for a parameter with it."""
    assert forwarded_query(raw) == query


def test_a_redacted_value_ends_where_its_brackets_close() -> None:
    """`Overloaded (x-api-key: sk-...)` lost its `)` with the key: a value runs to a space, quote, separator or
    closing bracket."""
    assert redaction.redact_message("Overloaded (x-api-key: abcdefgh12345678)") == "Overloaded (x-api-key: [REDACTED])"
    assert redaction.redact_message("[authorization=Bearer abcdefgh1234]") == "[authorization=Bearer [REDACTED]]"


def test_the_gateways_own_words_keep_their_wording_and_lose_any_key() -> None:
    """What the gateway writes around a client's string (a model, a key id) loses only key-shaped values: its own
    "send Authorization: Bearer <key>" stays as written."""
    from handler.errors import AuthenticationError, NotFoundError

    advice = "missing API key: send x-api-key: <key> or Authorization: Bearer <key>"
    assert AuthenticationError(advice).message == advice
    key = "gwk_abcdefghijkm_S3cr3tS3cr3tS3cr3tS3cr3t"
    assert NotFoundError(f"model '{key}' does not exist").message == "model '[REDACTED]' does not exist"
    assert redaction.redact_secrets("gpt-4o-mini and sk-proj-abcdefgh12345678") == "gpt-4o-mini and [REDACTED]"
    # A key after an id's prefix (`resp_gwk_...`): no word boundary there, and it was kept (found by review).
    assert redaction.redact_secrets(f"resp_{key}") == "resp_[REDACTED]"
    assert redaction.unkeyed(f"team-{key}") == "team-[REDACTED]" and redaction.unkeyed("3f2a-sk") == "3f2a-sk"


@pytest.mark.parametrize(
    ("provider", "status", "body", "headers"),
    [
        ("anthropic", 400, {"type": "error", "error": {"type": "invalid_request_error",
         "message": "prompt is too long: 210000 tokens > 200000 maximum"}}, {}),
        ("gemini", 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
         "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."}}, {}),
        ("bedrock", 400, {"message": "Input is too long for requested model."},
         {"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"}),
        ("mistral", 400, {"object": "error", "type": "invalid_request_message_order", "code": "3051", "message":
         "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length"}, {}),
        ("deepseek", 400, {"error": {"type": "invalid_request_error", "message": "This model's maximum context length "
         "is 65536 tokens. However, you requested 70000 tokens (70000 in the messages, 0 in the completion)."}}, {}),
    ],
    ids=["anthropic", "gemini", "bedrock", "mistral", "deepseek"],
)  # fmt: skip
def test_a_prompt_past_the_window_is_context_length_exceeded_whoever_says_it(
    provider: str, status: int, body: dict[str, object], headers: dict[str, str]
) -> None:
    """Codex knows a full context by OpenAI's code alone; Anthropic, Gemini and Bedrock give none, Mistral its own
    number. The provider's words stay as they are (Claude Code reads Anthropic's whole)."""
    import orjson

    from adapters.providers.registry import REGISTRY
    from handler.errors import ProviderRejectedError

    adapter_class = REGISTRY[provider]
    error = adapter_class.error(adapter_class.__new__(adapter_class), status, orjson.dumps(body), headers)
    rejected = ProviderRejectedError(error)
    assert rejected.code == "context_length_exceeded"
    assert rejected.message in orjson.dumps(body).decode() or "Input is too long" in rejected.message
    cap = (
        "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum context length is 32768 "
        "tokens and your request has 2778 input tokens (32000 > 32768 - 2778)."
    )  # vLLM's: the prompt fits, the output cap does not
    vllm = {"object": "error", "message": cap, "type": "BadRequestError", "param": None, "code": 400}
    assert (
        ProviderRejectedError(REGISTRY["openai"].error(None, 400, orjson.dumps(vllm), {})).code
        != "context_length_exceeded"
    )  # type: ignore[arg-type]
    other = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: must not be empty"}}
    assert (
        ProviderRejectedError(REGISTRY["anthropic"].error(None, 400, orjson.dumps(other), {})).code == "invalid_request"
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "2, 2"}, None),  # (two headers, as httpx joins them)
        ({"retry-after": "2026-12-05T03:30:00Z"}, None),
        ({"retry-after": "30s"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e300"}, 86_400.0),
        ({"retry-after": "Fri, 05 Dec 99999 03:30:00 GMT"}, None),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
        ({"retry-after-ms": "inf", "retry-after": "3"}, 3.0),
        ({"retry-after-ms": "1500", "retry-after": "3"}, 1.5),
    ],
)
def test_a_providers_wait_is_a_number_the_gateway_can_wait_or_none(headers: dict[str, str], wait: float | None) -> None:
    """What the gateway cannot read is no wait named (each of these raised, or was `inf`, and the request ended as
    a 500); what is past a day is a day."""
    assert retry_after_seconds(headers) == wait


def test_an_error_answer_its_adapter_cannot_read_is_the_attempts_failure_by_its_status() -> None:
    def unreadable(status: int, body: bytes, headers: object) -> UpstreamError:
        raise KeyError("error")

    error = error_answer(unreadable, 503, b"{}", {})
    assert (error.upstream_status, error.retryable, error.retry_after) == (503, True, None)
    assert "could not read (KeyError)" in error.message
