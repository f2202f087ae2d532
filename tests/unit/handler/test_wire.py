"""Provider error bodies relayed as messages: never a secret, not even half of one. A client's query string on
an upstream URL: a query and nothing more."""

from __future__ import annotations

import gzip

import orjson
import pytest

from adapters.providers.registry import REGISTRY
from handler import redaction
from handler.errors import ProviderRejectedError, UpstreamError
from handler.wire import (
    ERROR_EXCERPT_CHARS,
    PROVIDER_MESSAGE_CHARS,
    error_answer,
    error_excerpt,
    forwarded_query,
    redact_error,
    retry_after_seconds,
    said_status,
)

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
    redaction.register(SECRET)  # (it passed on the registration an earlier test had left behind)
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


def test_an_error_object_a_200_answer_carries_is_redacted_as_an_error_answer_is() -> None:
    """A Responses stream's `error` event (its words at the top level, or in an `error` member as OpenAI's stream
    writes them) and a failed response's `error`: each member that says something redacted and cut as
    `upstream_error` has it, the rest left as it came (OpenAI's failures came to the client with only `scrub`)."""
    redaction.register(SECRET)
    event = {
        "type": "error",
        "sequence_number": 3,
        "message": f"key {SECRET[4:]} refused" + "!" * PROVIDER_MESSAGE_CHARS,
        "param": SECRET[:20],
        "error": {"type": "invalid_key", "code": f"bad {SECRET[2:]}", "message": "Bearer tok_live_abcdef123456"},
    }
    redact_error(event)
    assert event["type"] == "error" and event["sequence_number"] == 3 and event["param"] == "[REDACTED]"
    assert event["message"].startswith("key [REDACTED] refused!") and "[cut at 4096 of" in event["message"]
    assert event["error"] == {"type": "invalid_key", "code": "bad [REDACTED]", "message": "Bearer [REDACTED]"}
    for nothing in (None, "failed", ["error"]):
        redact_error(nothing)  # (a response without an error: nothing to do)


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


SIGNATURE = "47c8374270e38da6c3ab2688b0cfe49e69d8426283f320b8681e36efa18310dd"


@pytest.mark.parametrize(
    ("said", "relayed"),
    [
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261205/us-east-1/bedrock/aws4_request, "
            f"SignedHeaders=content-type;host;x-amz-date, Signature={SIGNATURE}. Check your key.",
            "Authorization: [REDACTED]. Check your key.",
        ),
        (
            f"GET https://b.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIGNATURE}&X-Amz-Date=1",
            "GET https://b.s3.amazonaws.com/o?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=[REDACTED]&X-Amz-Date=1",
        ),
        (f'{{"signature": "{SIGNATURE.upper()}"}}', '{"signature": "[REDACTED]"}'),
    ],
    ids=["authorization", "presigned", "field"],
)
def test_a_sigv4_signature_is_redacted_wherever_it_is_named(said: str, relayed: str) -> None:
    """A SigV4 `Authorization` header quoted back lost only its first word (`AWS4-HMAC-SHA256`), and its
    `Signature=` (64 hex digits, enough to replay the request for minutes) was relayed, as was a presigned URL's."""
    assert redaction.redact_message(said) == relayed


@pytest.mark.parametrize(
    "said",
    [
        "Authorization: Bearer abcdefgh12345678",
        "[authorization=Bearer abcdefgh1234]",
        "x-api-key: abcdefgh12345678",
        "GET /v1?key=abcdefgh12345678 failed",
        f"Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, Signature={SIGNATURE}",
    ],
)
def test_redacting_twice_changes_nothing(said: str) -> None:
    """A message redacted again (a relayed error's words are redacted where they are read, then where they are
    written) became `Authorization: Bearer [REDACTED]]`: the value's characters take `[REDACTED` too."""
    once = redaction.redact_message(said)
    assert redaction.redact_message(once) == once and "]]]" not in once


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


def _json(body: object) -> bytes:
    return orjson.dumps(body)


# Each provider's error answers as it words them (its documented shapes; the messages as the providers send them).
DEPLOYMENT_REFUSALS = [
    # A key revoked or rotated away, the gateway's own.
    (
        "openai",
        401,
        {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        },
    ),
    (
        "azure",
        401,
        {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}},
    ),
    ("anthropic", 401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
    (
        "gemini",
        400,
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"reason": "API_KEY_INVALID"}],
            }
        },
    ),
    # An account out of balance.
    (
        "deepseek",
        402,
        {
            "error": {
                "message": "Insufficient Balance",
                "type": "unknown_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
    ),
    ("anthropic", 402, {"type": "error", "error": {"type": "billing_error", "message": "Billing error"}}),
    # A key that may not use the model, or a region or network the provider refuses.
    (
        "anthropic",
        403,
        {
            "type": "error",
            "error": {
                "type": "permission_error",
                "message": "Your API key does not have permission to use the specified resource.",
            },
        },
    ),
    (
        "openai",
        403,
        {
            "error": {
                "message": "Country, region, or territory not supported",
                "type": "request_forbidden",
                "param": None,
                "code": "unsupported_country_region_territory",
            }
        },
    ),
    (
        "gemini",
        403,
        {
            "error": {
                "code": 403,
                "message": "Method doesn't allow unregistered callers.",
                "status": "PERMISSION_DENIED",
            }
        },
    ),
    ("bedrock", 403, {"message": "You don't have access to the model with the specified model ID."}),
    # An account out of credit, in a 429: OpenAI's `insufficient_quota`.
    (
        "openai",
        429,
        {
            "error": {
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "type": "insufficient_quota",
                "param": None,
                "code": "insufficient_quota",
            }
        },
    ),
    # A deployment or model the provider does not have.
    (
        "azure",
        404,
        {
            "error": {
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does "
                "not exist. If you created the deployment within the last 5 minutes, please wait a "
                "moment and try again.",
            }
        },
    ),
    ("azure", 404, {"error": {"code": "404", "message": "Resource not found"}}),  # (an api-version it lacks)
    (
        "openai",
        404,
        {
            "error": {
                "message": "The model `gpt-4.5-preview` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
    ),
    ("anthropic", 404, {"type": "error", "error": {"type": "not_found_error", "message": "model: claude-3-opus"}}),
    ("anthropic", 404, {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}),
    (
        "gemini",
        404,
        {
            "error": {
                "code": 404,
                "message": "models/gemini-1.0-pro is not found for API version v1beta, "
                "or is not supported for generateContent.",
                "status": "NOT_FOUND",
            }
        },
    ),
    ("bedrock", 404, {"message": "Model not found."}),
    # OpenAI-compatible servers: vLLM's, Ollama's, and a path a web server does not have.
    (
        "openai",
        404,
        {
            "object": "error",
            "message": "The model `llama-3-70b` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        },
    ),
    (
        "openai",
        404,
        {
            "error": {
                "message": 'model "llama3" not found, try pulling it first',
                "type": "api_error",
                "param": None,
                "code": None,
            }
        },
    ),
    ("openai", 404, {"detail": "Not Found"}),
]


# The same refusals that some providers answer with a 400, in their words.
GEMINI_LOCATED = "User location is not supported for the API use."
DEPLOYMENT_REFUSALS_400 = [
    (
        "anthropic",
        {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
                "to upgrade or purchase credits.",
            },
        },
    ),
    (
        "deepseek",
        {
            "error": {
                "message": "Model Not Exist",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_request_error",
            }
        },
    ),
    (
        "mistral",
        {
            "object": "error",
            "message": "Invalid model: mistral-medium-3.5",
            "type": "invalid_model",
            "param": None,
            "code": "1500",
        },
    ),
    ("bedrock", {"message": "The provided model identifier is invalid."}),
    # A model id Bedrock serves only through an inference profile.
    (
        "bedrock",
        {
            "message": "Invocation of model ID anthropic.claude-3-5-sonnet-20241022-v2:0 with on-demand throughput "
            "isn\u2019t supported. Retry your request with the ID or ARN of an inference profile that contains this "
            "model."
        },
    ),
    # A project Gemini does not serve: where it calls from, or its free tier where there is none (FAILED_PRECONDITION);
    # and the same through Gemini's OpenAI-compatible endpoint, read in OpenAI's shape.
    ("gemini", {"error": {"code": 400, "message": GEMINI_LOCATED, "status": "FAILED_PRECONDITION"}}),
    (
        "gemini",
        {
            "error": {
                "code": 400,
                "message": "Gemini API free tier is not available in your country. Please enable billing on your "
                "project in Google AI Studio.",
                "status": "FAILED_PRECONDITION",
            }
        },
    ),
    ("openai", [{"error": {"code": 400, "message": GEMINI_LOCATED, "status": "FAILED_PRECONDITION"}}]),
]
DEPLOYMENT_REFUSALS += [(provider, 400, body) for provider, body in DEPLOYMENT_REFUSALS_400]


@pytest.mark.parametrize(("provider", "status", "body"), DEPLOYMENT_REFUSALS)
def test_a_refusal_of_the_deployment_itself_is_retried_on_the_next(provider: str, status: int, body: object) -> None:
    """The deployment's key, account, permissions or model: the operator's, never the client's. The pipeline fails
    it over to the next deployment (and counts it on the deployment's breaker); each one ended the request, and a
    404 blamed the client with a 400."""
    adapter = REGISTRY[provider]("p", "provider-key-000000", {})
    named = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException"}
    headers = {"x-amzn-errortype": named[status]} if status in named else {}
    error = adapter.error(status, _json(body), headers if provider == "bedrock" else {})
    assert (error.deployment_fault, error.retryable) == (True, True), error.message


def test_a_gemini_file_still_processing_is_the_clients_400_not_the_deployments_fault() -> None:
    """Gemini gives `FAILED_PRECONDITION` to a request naming a file of its Files API not yet ACTIVE, as it does to a
    project it does not serve: read as the deployment's by its status alone, the client's request was a 502 its SDK did
    not retry, and five of them opened the deployment's breaker on every key (found by review of the merge)."""
    said = "The File cwqvbq4f2k1z is not in an ACTIVE state and usage is not allowed."
    body = {"error": {"code": 400, "message": said, "status": "FAILED_PRECONDITION"}}
    for provider, shaped in (("gemini", body), ("openai", [body])):
        error = REGISTRY[provider]("p", "provider-key-000000", {}).error(400, _json(shaped), {})
        assert (error.deployment_fault, error.retryable) == (False, False) and said in error.message


@pytest.mark.parametrize("body", [b"", b"<html><body><h1>404 Not Found</h1></body></html>", b"404 page not found"])
def test_a_path_the_server_does_not_have_is_the_deployments_configuration(body: bytes) -> None:
    """A 404 without the provider's error shape: the base_url (or path) is wrong, not the client's request."""
    for provider in ("openai", "anthropic", "gemini"):
        assert REGISTRY[provider]("p", "provider-key-000000", {}).error(404, body, {}).deployment_fault


REQUEST_NOT_FOUND = [
    # OpenAI's for an input item looked up by its id where nothing is stored (as reported; with and without a param).
    {
        "error": {
            "message": "Item with id 'rs_0496' not found. Items are not persisted when `store` is set to false. "
            "Try again with `store` set to true, or remove this item from your input.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    },
    {
        "error": {
            "message": "Item with id 'rs_0496' not found.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    },
    # A param naming the client's request decides, whatever the words.
    {
        "error": {
            "message": "Previous response with id 'resp_1' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    },
    {
        "error": {
            "message": "No such File object: file-abc123",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    },
]


@pytest.mark.parametrize("body", REQUEST_NOT_FOUND)
def test_a_404_about_what_the_request_names_stays_the_clients_400(body: object) -> None:
    """Something the client's request names is missing: not failed over (every deployment would say the same, and
    it would count against their breakers), and answered as the client's 400 with the provider's words."""
    error = REGISTRY["openai"]("p", "provider-key-000000", {}).error(404, _json(body), {})
    assert (error.deployment_fault, error.retryable) == (False, False)
    assert ProviderRejectedError(error).status == 400


@pytest.mark.parametrize("status", [400, 413, 422, 429, 500])
def test_other_statuses_are_not_the_deployments_fault(status: int) -> None:
    body = {"error": {"message": "Invalid value for 'messages'.", "type": "x", "param": None, "code": None}}
    error = REGISTRY["openai"]("p", "provider-key-000000", {}).error(status, _json(body), {})
    assert not error.deployment_fault and error.retryable == (status in (429, 500))


# Every 5xx is a passing failure but those the server answers again whenever it is sent; Cloudflare's 520-524 (an
# origin behind it down or timing out), its 530, Anthropic's 529, and a server's 507 among them: they were not, as
# the statuses were listed one by one (500, 502, 503, 504, 529).
PASSING = [408, 409, 425, 429, 500, 502, 503, 504, 507, 520, 521, 522, 523, 524, 529, 530]
LASTING = [400, 405, 406, 410, 411, 413, 415, 422, 501, 505]


@pytest.mark.parametrize("status", PASSING + LASTING)
def test_every_5xx_but_a_server_saying_it_never_will_is_a_passing_failure(status: int) -> None:
    error = REGISTRY["openai"]("p", "provider-key-000000", {}).error(status, b"error code: %d" % status, {})
    assert (error.retryable, error.deployment_fault) == (status in PASSING, False)


@pytest.mark.parametrize(
    "masked",
    [
        "sk-VKMIs***************************************wjh3",
        "sk-proj-abcd1234*****************************wjh3",
        "sk-proj-********************************************cdef",
    ],
)
def test_a_key_the_provider_masked_in_its_refusal_is_redacted_whole(masked: str) -> None:
    """OpenAI's 401 quotes the key it refused, masked: its first characters and its last four. Relayed in the 502
    a deployment's refusal ends as, they reached every client of the gateway (the shape of a key needed eight
    characters after `sk-` and stopped at the first `*`)."""
    body = {
        "error": {
            "message": f"Incorrect API key provided: {masked}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    error = REGISTRY["openai"]("p", "provider-key-000000", {}).error(401, orjson.dumps(body), {})
    assert (
        error.message == "upstream returned 401: Incorrect API key provided: [REDACTED]. You can find your API key "
        "at https://platform.openai.com/account/api-keys."
    )


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        # DeepSeek's 401: the key's last four characters, with no prefix to make them a key's shape.
        (
            "Authentication Fails, Your api key: ****1c3e is invalid",
            "Authentication Fails, Your api key: [REDACTED] is invalid",
        ),
        (
            "Incorrect API key provided: xa***Zd. You can obtain an API key",
            "Incorrect API key provided: [REDACTED]. You can obtain an API key",
        ),
        ("Invalid key sk-ab12**********, check it", "Invalid key [REDACTED], check it"),
        ("Incorrect API key provided: sk-VKMIs*****...wjh3.", "Incorrect API key provided: [REDACTED]."),
        # A mask of dots alone (a LiteLLM proxy's `sk-...U-sA`), or the ellipsis, with or without a prefix.
        ("Received API Key = sk-...U-sA, Key Hash", "Received API Key = [REDACTED], Key Hash"),
        ("Your api key: ...1c3e is invalid", "Your api key: [REDACTED] is invalid"),
        ("Your api key: \u20261c3e is invalid", "Your api key: [REDACTED] is invalid"),
        ("Invalid token xai-...Zd9k.", "Invalid token [REDACTED]."),
        ("Invalid key sk-ab12..., check it", "Invalid key [REDACTED], check it"),
        # Stars with no key character beside them, and fewer than three, are ordinary text.
        ("Your api key **** is invalid; 2 * 3 is 6, **bold**", "Your api key **** is invalid; 2 * 3 is 6, **bold**"),
    ],
)
def test_a_key_quoted_back_masked_without_its_prefix_is_redacted(said: str, shown: str) -> None:
    """DeepSeek refuses a bad key with its last four characters, `****1c3e`: relayed in the deployment's 502 to every
    client of the gateway (found by review), as the dots of a mask left a key's last characters (`...wjh3`). The
    characters a mask of three or more `*` leaves of a key go with it, whatever the key's prefix; so do those a mask
    of dots alone leaves (a LiteLLM proxy's 401 gave every client `sk-...U-sA`: review)."""
    body = {"error": {"message": said, "type": "authentication_error", "param": None, "code": "invalid_request_error"}}
    error = REGISTRY["deepseek"]("d", "provider-key-000000", {}).error(401, orjson.dumps(body), {})
    assert error.message == f"upstream returned 401: {shown}"


@pytest.mark.parametrize(
    "said",
    [
        "max_tokens must be in 1...4096",  # a range
        "Your token...expired; keys look like sk-...",  # dots within a word; a key's prefix alone
        "The api key ...continued: see the docs...",  # a word of more than a mask's eight characters after dots
    ],
)
def test_dots_in_an_error_that_speaks_of_a_key_are_text_where_they_mask_nothing(said: str) -> None:
    """A mask of dots is read narrowly (dots are text far more often than stars): none of these is one."""
    body = {"error": {"message": said, "type": "invalid_request_error", "param": None, "code": None}}
    error = REGISTRY["openai"]("p", "provider-key-000000", {}).error(400, orjson.dumps(body), {})
    assert error.message == f"upstream returned 400: {said}"


@pytest.mark.parametrize(
    "said",
    [
        # Gemini's 400 for a field it does not know quotes the client's own field name back.
        "Invalid JSON payload received. Unknown name \"draft***\" at 'generation_config': Cannot find field.",
        "***Notice***: this model is deprecated, use gemini-2.5-flash",  # Markdown's bold italics
        "Invalid value for 'stop': 'END***'",  # a client's stop sequence quoted back
    ],
)
def test_words_beside_three_stars_in_an_error_that_speaks_of_no_key_reach_the_client(said: str) -> None:
    """No key is in any of these, yet the masked-key rule made each word beside `***` `[REDACTED]`: the client could
    not tell which field or value the provider refused (found by review). A mask is looked for only in an error
    that speaks of a key."""
    body = {"error": {"code": 400, "message": said, "status": "INVALID_ARGUMENT"}}
    error = REGISTRY["gemini"]("g", "provider-key-000000", {}).error(400, orjson.dumps(body), {})
    assert error.message == f"upstream returned 400: {said}"


@pytest.mark.parametrize("body", [gzip.compress(b'{"choices": []}' * 20), b"\xff\xfe\x00\x01 not utf-8 \x80\x81"])
def test_a_body_that_is_not_text_is_named_not_relayed(body: bytes) -> None:
    """A gzip body the gateway never asked for was relayed as 200 characters of mojibake and control bytes in the
    client's message (found by review)."""
    excerpt = error_excerpt(body)
    assert excerpt == f"a body of {len(body)} bytes that is not text"
    assert error_excerpt(b"<html>Bad gateway</html>\n") == "<html>Bad gateway</html>\n"


@pytest.mark.parametrize(
    ("said", "status"),
    [
        ({"code": 502, "message": "Provider returned error"}, 502),  # (OpenRouter's status in `code`)
        ({"code": "429"}, 429),  # (a proxy's, as a string)
        ({"code": "3505", "type": "capacity"}, 500),  # (Mistral's number: no status)
        ({"code": "\u00b9\u00b2\u00b3"}, 500),  # (`"¹²³".isdigit()`, which `int` refuses: it raised ValueError)
        ({"code": "\u0664\u0662\u0669"}, 500),  # (an Arabic-Indic 429, which `int` reads: no status as HTTP writes one)
        ({"code": True}, 500),
        ({"code": 200}, 500),
        ({"type": "requests", "code": "rate_limit_exceeded"}, 429),
        ({"type": "insufficient_quota", "code": "insufficient_quota"}, 429),
        ({"type": "invalid_request_error", "code": "invalid_api_key"}, 401),  # (the code before the type)
        ({"type": "invalid_request_error", "code": None}, 400),
        ({"code": "invalid_image_url"}, 400),
        ({"type": "error", "error": {"type": "overloaded_error"}}, 529),  # (Anthropic's event, whole)
        ({"error": {"type": "RATE_LIMIT_ERROR"}}, 429),
        ({"type": "server_error"}, 500),
        ({"type": "something_else"}, 500),
        ("Overloaded", 500),
    ],
)
def test_an_error_object_is_read_at_the_status_it_names(said: object, status: int) -> None:
    assert said_status(said) == status
    assert said_status({"type": "unknown"}, 502) == 502  # (the caller's default where nothing is named)
