"""The wire's shared pieces, for the pipeline and every provider adapter: stream events and the SSE decoder,
a provider's error answer as `UpstreamError` (with its `retry-after`), and upstream JSON that must parse."""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

import orjson

from handler.errors import UPSTREAM_TYPE_CHARS, UpstreamError
from handler.records import Value
from handler.redaction import redact_upstream, said_clipped

log = logging.getLogger("gateway")


class StreamEvent(Value):
    """One decoded frame of an upstream stream: an SSE event or an AWS event-stream message."""

    __slots__ = ("event", "data")

    def __init__(self, event: str | None, data: bytes) -> None:
        self.event: Final = event
        self.data: Final = data


# The Responses API's terminal stream events: a stream's last, carrying the whole response.
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
# The Responses API's `include` that asks for a reasoning item's `encrypted_content` (what a turn kept by nobody
# hands back to the provider).
ENCRYPTED_REASONING = "reasoning.encrypted_content"
# A provider's encrypted reasoning (a Responses reasoning item's `encrypted_content`) as the gateway hands it to a
# client, marked with the deployment that issued it (`Target.issuer`): `gwp1.<issuer>.<the provider's blob>`. Only
# that deployment's provider account can read the blob (OpenAI refuses another organisation's: 400
# `invalid_encrypted_content`, "Encrypted content organization_id did not match the target organization"), so it
# goes back, unmarked, to that deployment alone (`issued_reasoning`).
ISSUED_PREFIX = "gwp1."
# What a reasoning item the deployment that serves may not read is named as, left out (`x-gateway-dropped-params`).
UNREADABLE_REASONING = "input[reasoning].encrypted_content"


def issued(issuer: str, blob: str) -> str:
    """A provider's encrypted reasoning marked with the deployment that issued it (`ISSUED_PREFIX`)."""
    return f"{ISSUED_PREFIX}{issuer}.{blob}"


def issued_reasoning(marked: Any) -> tuple[str, str] | None:
    """The issuer and the provider's blob of encrypted reasoning the gateway marked (`issued`); None for any other
    value (a blob a client got elsewhere, or from a gateway before the mark, goes as it came)."""
    if not isinstance(marked, str) or not marked.startswith(ISSUED_PREFIX):
        return None
    issuer, dot, blob = marked[len(ISSUED_PREFIX) :].partition(".")
    return (issuer, blob) if dot and issuer and blob else None


# Anthropic's stream deltas that carry generated output, and the member holding it (the others, `signature_delta`
# and `citations_delta`, carry none): what a stream's output is estimated from, and what its redaction reads.
MESSAGES_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}
# The Responses API's events that stream text, in their `delta`, which a client joins (not `response.audio.delta`:
# audio, in base64 pieces): what the relay's redaction, and a captured stream's text, read.
RESPONSES_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.custom_tool_call_input.delta",
        "response.mcp_call_arguments.delta",
        "response.code_interpreter_call_code.delta",
        "response.audio.transcript.delta",
    }
)
# Where an event holds text a client joins: what it joins it into (a Messages block, a Responses part), the object
# holding the text and the member it is in (`messages_text`, `responses_text`).
Located = tuple[Hashable, dict[str, Any], str]


def messages_text(payload: Any) -> Located | None:
    """Where a Messages `content_block_delta`'s payload holds generated text (`MESSAGES_DELTA_TEXT`): its block, by
    index, its delta and the member; None where it holds none."""
    delta = payload.get("delta") if isinstance(payload, dict) else None
    if not isinstance(delta, dict):
        return None
    member = MESSAGES_DELTA_TEXT.get(delta.get("type"))  # type: ignore[arg-type]
    if member is None or not isinstance(delta.get(member), str):
        return None
    return payload.get("index"), delta, member


def responses_text(payload: Any) -> Located | None:
    """Where a Responses text delta's payload (`RESPONSES_DELTAS`) holds its text: its item's part (by type, item,
    output, content and summary index), the payload and its `delta`; None for any other payload."""
    if not isinstance(payload, dict) or payload.get("type") not in RESPONSES_DELTAS:
        return None
    if not isinstance(payload.get("delta"), str):
        return None
    get = payload.get
    part = (get("type"), get("item_id"), get("output_index"), get("content_index"), get("summary_index"))
    return part, payload, "delta"


# Client headers Anthropic's API reads, forwarded unchanged to a deployment that speaks it.
ANTHROPIC_HEADERS = ("anthropic-version", "anthropic-beta")

# The query parameters Anthropic's API reads on the Messages routes (`?beta=true`, as its SDK's beta client and
# Claude Code send it): the only ones forwarded. Anything else a client put in its query (a key it mistook for a
# parameter, say) never reaches a provider.
ANTHROPIC_QUERY = ("beta",)


def forwarded_query(raw: bytes, names: tuple[str, ...] = ANTHROPIC_QUERY) -> str:
    """The client's query string (the ASGI scope's `query_string`) as an upstream URL's query: its parameters
    named in `names` only, in their order, each encoded anew, so nothing in them ends the query or reaches the path."""
    if not raw:
        return ""
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    return urlencode([(name, value) for name, value in pairs if name in names])


MAX_EVENT_BYTES = 16 * 1024 * 1024  # as AWS event-stream's own limit on a message
# A run of blank and comment lines, skipped between events by one match (a lone CR in it ends a line, as the
# WHATWG rules have it); written so that a run of blank lines is one character class, not a group per line, and
# possessive (`*+`: nothing in it can be given back to a later part, so `re` keeps no way back): greedy, it kept
# one per character matched, some 47 bytes of memory per byte of comments (a 1 MiB read of `: p` lines held
# 50 MB while it matched, and took four times as long).
# Compiled with the first stream (`idle_lines`): a Lambda's buffered function answers whole, and a cold start pays
# for no pattern it does not use.
IDLE_LINES = rb"[\r\n]*+(?::[^\n]*+\n[\r\n]*+)*+"


@functools.cache
def idle_lines() -> re.Pattern[bytes]:
    return re.compile(IDLE_LINES)


BOM = b"\xef\xbb\xbf"  # U+FEFF in UTF-8: one opening an event stream is ignored (WHATWG HTML, 9.2.5)


class SSEDecoder:
    """Incremental decoder for `text/event-stream` (the WHATWG rules: `event:`, `data:`, blank line).

    Everything an upstream sends between two events (the next event's lines, and any blank lines, comments and
    empty `data:` lines) is held to `MAX_EVENT_BYTES`: an upstream that never ends a line or an event, or that sends
    only keep-alives in bulk, is a malformed answer, not memory or CPU without end. A read is scanned once, by index
    (a buffer sliced per line, and its data lengths summed per read, made its cost the square of its size).

    A stream whose lines end in a bare CR (which the rules allow beside LF and CRLF) is found by a read with no LF in
    it, where a CR stands before another character (or a read after one that ended in CR begins with no LF): from
    then on its reads are read with each CRLF and CR made an LF (`_bare_cr`). A stream of LF or CRLF lines pays a
    substring search of its reads without an LF alone (the end of a long event, cut by the read)."""

    __slots__ = ("_idle", "_opening", "_partial", "_held", "_event", "_data", "_cr", "_cr_ended")

    def __init__(self) -> None:
        self._idle = idle_lines()
        # The stream's first bytes, until it is known whether they are a byte order mark, which the rules have
        # ignored (read as part of a field's name, it lost the stream's first event: a server's first words); None
        # once known.
        self._opening: bytes | None = b""
        self._partial: list[bytes] = []  # the unfinished last line, as the reads brought it
        self._held = 0  # bytes since the last event
        self._event: str | None = None
        self._data: list[bytes] = []
        self._cr = False  # its lines end in a bare CR
        self._cr_ended = False  # (CR lines) the last read ended in CR: an LF beginning the next is that line's end

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._opening is not None:
            chunk = self._opening + chunk
            if len(chunk) < len(BOM) and BOM.startswith(chunk):  # (a mark perhaps, cut by the read)
                self._opening = chunk
                return []
            self._opening = None
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
        if self._cr:
            chunk = self._bare_cr(chunk)
        events: list[StreamEvent] = []
        nl = chunk.find(b"\n")
        if nl < 0:
            if b"\r" in chunk and not self._cr and self._is_bare_cr(chunk):
                return self._lines_end_in_cr(chunk)
            if chunk:
                self._partial.append(chunk)
                self._held += len(chunk)
                if self._held > MAX_EVENT_BYTES:
                    raise too_long_event()
            return events
        if self._partial:
            self._partial.append(chunk[:nl])
            line = b"".join(self._partial)
            self._partial = []
        else:
            line = chunk[:nl]
        held = self._held + nl + 1
        start = 0
        while True:
            if held > MAX_EVENT_BYTES:
                raise too_long_event()
            if line.endswith(b"\r"):
                line = line[:-1]
            event = self._line(line)
            start = nl + 1
            if event is not None:
                events.append(event)
                held = 0
            elif self._event is None and not self._data and (not line or line[0] == 0x3A):  # (blank or `:`)
                # A run of blank lines and comments outside any event: skipped at C speed, still counted.
                end = self._idle.match(chunk, start).end()  # type: ignore[union-attr]  # (it matches nothing too)
                held += end - start
                start = end
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            line = chunk[start:nl]
            held += nl + 1 - start
        if start < len(chunk):
            self._partial.append(chunk[start:])
            held += len(chunk) - start
        self._held = held
        if held > MAX_EVENT_BYTES:
            raise too_long_event()
        return events

    def _is_bare_cr(self, chunk: bytes) -> bool:
        """Whether a read without an LF shows a CR ending a line: one before another character, or the last read's
        CR followed here by no LF."""
        ended = bool(self._partial) and self._partial[-1][-1:] == b"\r"
        return chunk.find(b"\r", 0, len(chunk) - 1) >= 0 or ended

    def _lines_end_in_cr(self, chunk: bytes) -> list[StreamEvent]:
        """The stream's lines end in a bare CR: what is held of its last line, and this read, read again so."""
        held = b"".join(self._partial)
        self._partial = []
        self._held -= len(held)
        self._cr = True
        return self.feed(held + chunk)

    def _bare_cr(self, chunk: bytes) -> bytes:
        if self._cr_ended and chunk[:1] == b"\n":
            chunk = chunk[1:]  # (a CRLF the reads cut in two: its CR ended the line)
        self._cr_ended = chunk[-1:] == b"\r"
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def finish(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        if self._partial:
            line, self._partial = b"".join(self._partial).rstrip(b"\r"), []
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._line(b"")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: bytes) -> StreamEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = StreamEvent(self._event, b"\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None


class WholeBodySniffer:
    """A stream's frame decoder that notices a stream request answered with one whole JSON body, as servers that
    ignore `stream` answer (some OpenAI-compatible ones): a body whose first byte past any blank is `{` (an SSE
    stream opens with a field or a comment, an AWS event stream with its length) is kept, to `limit` bytes, and
    given as one event at its end, with `whole` set; any other goes to `inner` as it comes."""

    __slots__ = ("inner", "limit", "whole", "_open")

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.whole: bytearray | None = None  # the body so far, once it is known to be one
        self._open = True  # nothing but blanks yet: what the body is remains to be seen

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        if self._open and chunk.strip():
            self._open = False
            if chunk.lstrip()[:1] == b"{":
                self.whole = bytearray()
                chunk = chunk.lstrip()
        if self.whole is None:
            events: list[StreamEvent] = self.inner.feed(chunk)
            return events
        self.whole += chunk
        if len(self.whole) > self.limit:
            raise malformed(f"upstream's answer body exceeds {self.limit} bytes", "upstream_body_too_large")
        return []

    def finish(self) -> list[StreamEvent]:
        if self.whole is None:
            events: list[StreamEvent] = self.inner.finish()
            return events
        return [StreamEvent(None, bytes(self.whole))]


OVERLOADED = 529  # Anthropic's status for its API overloaded (its in-stream `overloaded_error` is read as one)
# A provider's failures that a later attempt may get past (on the next deployment, or the same one later): every 5xx,
# whoever wrote it (Cloudflare's 520-524 in front of OpenAI's and DeepSeek's APIs, an origin down or timing out behind
# it; Anthropic's 529 overloaded), but those that say the server will never take the request as sent; and these 4xx:
# a request timeout, a conflict, too early, a rate limit. (Listed one by one, the 5xx would leave a 522 no passing
# failure: not failed over, never opening the breaker, and its client told not to retry.)
# (Groq's 498 `capacity_exceeded`: its flex tier full for now, which its docs say to retry with a backoff.)
PASSING_4XX = frozenset({408, 409, 425, 429, 498})
LASTING_5XX = frozenset({501, 505})  # Not Implemented, HTTP Version Not Supported: the same again, whenever sent
# A provider's refusal of the deployment itself, whatever the request: its key (401: rotated, revoked), its account
# (402: out of balance, as DeepSeek answers), its permissions, region or network (403). The operator's to fix, never
# the client's (the gateway sends its own key, not the client's): the next deployment may well answer.
DEPLOYMENT_FAULT_STATUSES = frozenset({401, 402, 403})
# A 404's codes (OpenAI's shape) or types (Bedrock's error name) for a deployment or model the provider does not have:
# Azure's deployment deleted, or created minutes ago and not yet in this region; OpenAI's model retired or not open
# to the account; the only resource a Bedrock Converse call names is its model (or profile).
MISSING_DEPLOYMENT_TYPES = frozenset({"deploymentnotfound", "model_not_found", "resourcenotfoundexception"})
# The providers that answer the same with a 400: Mistral's type for a model it does not have (`Invalid model: x`); and
# in their words, Anthropic's account out of credit (its 402 in all but status), DeepSeek's `Model Not Exist`,
# Bedrock's ValidationException for a model id it does not know or will not serve on demand (a model it offers only
# through an inference profile: "Invocation of model ID ... with on-demand throughput isn't supported"), and Gemini's
# refusals of a project its API does not serve, whatever the request ("User location is not supported for the API
# use.", its free tier "not available in your country. Please enable billing"; natively or through its
# OpenAI-compatible endpoint). Not Gemini's status for them, `FAILED_PRECONDITION`, which it also gives a request
# naming a file of its Files API still processing: the client's, to send again once the file is ACTIVE (taken for
# the deployment's, it would be a 502 the SDK does not retry, and five would open the breaker on every key). Any other
# 400 is the request's.
REFUSED_400_TYPES = MISSING_DEPLOYMENT_TYPES | {"invalid_model"}
REFUSED_400 = (
    r"(?i)credit balance is too low|^model not exist\W*$|provided model identifier is invalid"
    r"|with on-demand throughput isn.t supported"
    r"|user location is not supported|free tier is not available in your country"
)
# A 429's codes or types for an account out of credit, not a rate limit to wait out: OpenAI's `insufficient_quota`
# ("You exceeded your current quota, please check your plan and billing details"), DeepSeek's 402 under another status.
EXHAUSTED_429_TYPES = frozenset({"insufficient_quota"})
# And in the words of providers that give no such code: xAI's team out of credit or past its monthly limit ("Your team
# ... has either used all available credits or reached its monthly spending limit", code "Some resource has been
# exhausted"): relayed as a rate limit, its client retried against a spent account and the breaker never counted it.
EXHAUSTED_429 = r"(?i)used all available credits|reached its monthly spending limit|does(?:n't| not) have any credits"
# A 413 of a provider's per-minute token limit, not of the request's size alone: Groq's tier refuses a request past its
# organisation's tokens a minute ("Request too large for model ... on tokens per minute (TPM): Limit 6000, Requested
# 14368"), `rate_limit_exceeded`: the account's limit, which another deployment may not have (the client was told its
# request was invalid, a 400, and the fallback never tried).
ACCOUNT_LIMIT_413_TYPES = frozenset({"rate_limit_exceeded"})
# The same in a 404's words, for providers that give no such code: Anthropic's `model: <name>`, Google's
# `models/<name> is not found for API version v1beta`, OpenAI-compatible servers' `The model `x` does not exist`
# (vLLM) or `model "x" not found` (Ollama), Azure's words for its deployment; and a path the server does not have at
# all (a bare `Not Found`, Azure's `Resource not found` for an api-version it lacks, a web server's HTML page, no
# body): a base_url or api_version the operator configured wrong. Any other 404 is about something the client's
# request names (an input item, a file, a stored response: `Item with id 'rs_...' not found`), the client's to fix.
MISSING_DEPLOYMENT = (
    r"(?i)^model: "
    r"|\bmodels?\b[^\n]{0,100}?\b(?:does not exist|not exist|not found)\b"
    r"|\bdeployment\b[^\n]{0,100}?\b(?:does not exist|not found)\b"
    r"|^\W*(?:404\W*)?(?:resource\s+|page\s+)?not\s+found\W*$"
    r"|^\s*<"
    r"|^no error body$"
)


@functools.cache
def missing_deployment() -> re.Pattern[str]:
    """`MISSING_DEPLOYMENT`, compiled on the first 404 that may need it, not at a cold start."""
    return re.compile(MISSING_DEPLOYMENT)


@functools.cache
def exhausted_429() -> re.Pattern[str]:
    """`EXHAUSTED_429`, compiled on the first 429 that may need it, not at a cold start."""
    return re.compile(EXHAUSTED_429)


@functools.cache
def refused_400() -> re.Pattern[str]:
    """`REFUSED_400`, compiled on the first 400 that may need it, not at a cold start."""
    return re.compile(REFUSED_400)


def deployment_at_fault(status: int, message: str, code: object, param: object, upstream_type: str | None) -> bool:
    """Whether a provider's error answer refuses the deployment (its key, account, model or deployment), not the
    client's request: the gateway then fails over to the next deployment, and counts it on the deployment's breaker
    (never as a rate limit: a 429 is one only where the account is out of credit, `EXHAUSTED_429_TYPES`). A 400 or
    404 whose `param` names a part of the request other than `model` is the client's, whatever its words."""
    if status in DEPLOYMENT_FAULT_STATUSES:
        return True
    if status not in (400, 404, 413, 429) or (isinstance(param, str) and param and param != "model"):
        return False
    kinds = {kind.lower() for kind in (code, upstream_type) if isinstance(kind, str)}
    if status == 413:
        return not kinds.isdisjoint(ACCOUNT_LIMIT_413_TYPES)
    if status == 429:
        return not kinds.isdisjoint(EXHAUSTED_429_TYPES) or exhausted_429().search(message) is not None
    if status == 400:
        return not kinds.isdisjoint(REFUSED_400_TYPES) or refused_400().search(message) is not None
    return not kinds.isdisjoint(MISSING_DEPLOYMENT_TYPES) or missing_deployment().search(message) is not None


def passing_failure(status: int) -> bool:
    """Whether a provider's error status is a failure a later attempt may get past (`PASSING_4XX`, every 5xx but
    `LASTING_5XX`): failed over, counted on the deployment's breaker, and, on a lone attempt, the client's to retry."""
    return status in PASSING_4XX if status < 500 else status < 600 and status not in LASTING_5XX


# The longest wait the gateway reads from a provider (a day): a longer `retry-after` is read as this one, so what is
# passed on to the client stays a number it can wait (`1e300` would be passed on as 301 digits).
MAX_NAMED_WAIT_S = 86_400.0


def named_wait(seconds: float) -> float | None:
    """A provider's wait in seconds as the gateway keeps it: none for one that is not a number (`inf`, `nan`, which
    would crash the answer's `retry-after` and be waited as 0), at most `MAX_NAMED_WAIT_S`, never below 0."""
    if not math.isfinite(seconds):
        return None
    return min(MAX_NAMED_WAIT_S, max(0.0, seconds))


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The provider's `retry-after` (seconds or HTTP date) or `retry-after-ms` hint, if any. One the gateway cannot
    read (two headers, which httpx joins as `2, 2`; an ISO date; `30s`) is none named: the attempt's failure is
    then any other's, where reading it raised and the request ended as a 500."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            wait = named_wait(float(ms) / 1000)
        except ValueError:
            wait = None
        if wait is not None:
            return wait
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return named_wait(float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return named_wait(parsed.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


# The status each name a provider gives its error in the body (`code`, else `type`) stands for, where no HTTP status
# says it: an error written inside a 200 stream (or a 200 whose body is an error object alone). OpenAI's codes and
# types, Anthropic's types (its overload `OVERLOADED`, its own status for it); a name that opens with `invalid_` is a
# request refused (OpenAI's `invalid_prompt`, `invalid_image_url`, ...). Read as a 500 whatever it says, a rate limit
# in a stream would be failed over as a server's failure and answered as the client's 502 (the SDKs retry it at once),
# an account out of quota retried by the client, and a request the provider refused sent to the next deployment.
SAID_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "invalid_api_key": 401,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "model_not_found": 404,
    "request_too_large": 413,
    # OpenAI's Responses API's codes of a failed response for an image the client sent (`invalid_image*` open with
    # `invalid_`): the client's fault, a 400, never the deployment's failure on its breaker.
    "failed_to_download_image": 400,
    "image_too_large": 400,
    "image_too_small": 400,
    "image_parse_error": 400,
    "image_content_policy_violation": 400,
    "image_file_too_large": 400,
    "unsupported_image_media_type": 400,
    "empty_image_file": 400,
    "image_file_not_found": 400,
    "rate_limit_exceeded": 429,
    "rate_limit_error": 429,
    "insufficient_quota": 429,  # (refusing the deployment's account: `deployment_at_fault`)
    "server_error": 500,
    "api_error": 500,
    "timeout_error": 504,
    "vector_store_timeout": 504,
    "overloaded_error": OVERLOADED,
}


def said_status(error: Any, default: int = 500) -> int:
    """The HTTP status a provider's error object (`{"message", "type", "code", ...}`, or a body or event holding it
    in `error`) stands for where none came with it: its `code` where that is an error status (OpenRouter's, which
    writes there the status it would have answered; a proxy's, as a string), else the status its `code` or `type`
    names (`SAID_STATUS`), else `default`. (A `code` of three digits Python's `int` cannot read, `"¹²³"`, whose
    `isdigit` is true, is a name like any other: read as a number, it would raise, and the provider's failure would
    be the gateway's 500, or the provider's malformed stream charged its worst case.)"""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]
    if not isinstance(error, dict):
        return default
    code = error.get("code")
    if isinstance(code, str) and len(code) == 3 and code.isascii() and code.isdigit():
        code = int(code)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        return code
    for name in (error.get("code"), error.get("type")):
        if isinstance(name, str) and name:
            name = name.lower()
            status = SAID_STATUS.get(name) or (400 if name.startswith("invalid_") else None)
            if status is not None:
                return status
    return default


def upstream_error(
    status: int,
    message: str,
    headers: Mapping[str, str],
    *,
    upstream_type: str | None = None,
    code: object = None,
    param: object = None,
    note: str = "",
) -> UpstreamError:
    """The common mapping from a provider's error answer to `UpstreamError`. `code` and `param`, the provider's
    own (a string, or nothing), reach the client only with a request it rejected (`ProviderRejectedError`), never
    as the gateway's code for a failure. A refusal of the deployment itself (`deployment_at_fault`) is retryable: on
    the next deployment, not on this one. The provider's words are cut (`PROVIDER_MESSAGE_CHARS`, saying where)
    before anything reads them; `note`, the gateway's own, follows them uncut."""
    message = provider_said("message", message) + note
    if isinstance(code, str):
        code = provider_said("code", code)
    if isinstance(param, str):
        param = provider_said("param", param)
    if upstream_type:
        upstream_type = provider_said("type", upstream_type)
    at_fault = deployment_at_fault(status, message, code, param, upstream_type)
    error = UpstreamError(
        f"upstream returned {status}: {message}",
        upstream_status=status,
        retryable=at_fault or passing_failure(status),
        retry_after=retry_after_seconds(headers),
        upstream_type=upstream_type,
    )
    error.deployment_fault = at_fault
    error.spares_breaker = at_fault and status == 413  # (too large for the tier's minute: smaller ones are served)
    error.said = message
    error.provider_code = code if isinstance(code, str) and code else None
    error.provider_param = param if isinstance(param, str) and param else None
    if status == 400 and context_overflow().search(message) and not output_cap_too_large().search(message):
        # OpenAI's code for it, whoever said it: Codex tells a full context (it compacts, or says so) by this code
        # alone, and Anthropic, Gemini and Bedrock give none (Mistral a number of its own).
        error.provider_code = CONTEXT_LENGTH_EXCEEDED
    return error


def error_answer(
    read: Callable[[int, bytes, Mapping[str, str]], UpstreamError], status: int, body: bytes, headers: Mapping[str, str]
) -> UpstreamError:
    """A provider's error answer as its adapter `read`s it. One the adapter cannot read fails the attempt as any
    other error answer does, by its status: an exception escaping from it ended the request as a 500, with no
    failover to the next deployment and the reserved worst case charged."""
    try:
        return read(status, body, headers)
    except Exception as exc:  # (the provider's bytes are the input: whatever they break, the attempt just failed)
        unread = {"upstream_status": status, "error_type": type(exc).__name__}
        log.warning("a provider's error answer could not be read", extra=unread)
        return upstream_error(status, f"an error answer the gateway could not read ({type(exc).__name__})", {})


CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# The providers' words for a prompt past the model's context window: Anthropic's (and Claude's on Bedrock), Gemini's,
# Bedrock's for its other models, Mistral's, and OpenAI-compatible servers' (DeepSeek's, vLLM's).
CONTEXT_OVERFLOW = (
    r"(?i)prompt is too long: \d+ tokens > \d+ maximum"
    r"|input token count \(?\d+\)? exceeds the maximum number of tokens"
    r"|input is too long for requested model"
    r"|too large for model with \d+ maximum context length"
    r"|maximum context length is \d+ tokens"
)


# The same words in an OpenAI-compatible server's refusal of a too large output cap (vLLM's: "'max_tokens' or
# 'max_completion_tokens' is too large: 32000. This model's maximum context length is 32768 tokens and your request
# has 2778 input tokens"): the prompt fits, the cap does not; not a full context.
OUTPUT_CAP_TOO_LARGE = r"(?i)max_(?:completion_)?tokens'?[^.]{0,60}too large"


@functools.cache
def output_cap_too_large() -> re.Pattern[str]:
    return re.compile(OUTPUT_CAP_TOO_LARGE)


@functools.cache
def context_overflow() -> re.Pattern[str]:
    """`CONTEXT_OVERFLOW`, compiled on the first error that may need it, not at a cold start."""
    return re.compile(CONTEXT_OVERFLOW)


# A provider's error message as relayed, and its `code` and `param` (`upstream_error`).
PROVIDER_MESSAGE_CHARS = 4096
PROVIDER_CODE_CHARS = 100
PROVIDER_PARAM_CHARS = 200
# The members of a provider's error object that say something, each as far as it is relayed (`provider_said`).
ERROR_MEMBER_CHARS = {
    "message": PROVIDER_MESSAGE_CHARS,
    "code": PROVIDER_CODE_CHARS,
    "param": PROVIDER_PARAM_CHARS,
    "type": UPSTREAM_TYPE_CHARS,
}
ERROR_EXCERPT_CHARS = 200  # of an error body that is not the provider's JSON, relayed as the message
ERROR_SCAN_BYTES = 64 * 1024  # read for secrets before the excerpt is cut (a cut could split one)


def provider_said(member: str, words: str) -> str:
    """A provider's `words` in the `member` of its error object, as far as the client is told them: redacted and cut
    at the member's length (`ERROR_MEMBER_CHARS`), a message marked where it was cut."""
    return said_clipped(words, ERROR_MEMBER_CHARS[member], marked=member == "message")


# Members of a request body by which an OpenAI-compatible aggregator or proxy picks the model, the provider or a paid
# tool itself: OpenRouter's `models` (fallback models, tried when the first fails, a prompt too long for it among
# others), `provider` (which of its providers serves the model, at that provider's price), `route` and `plugins` (its
# web search, billed apart); Vercel's AI Gateway's `providerOptions` (its `gateway.models`, fallback models, and
# `gateway.order`/`only`); LiteLLM's proxy's `fallbacks`, `context_window_fallbacks` and its client-side
# `api_base`, `base_url`, `api_key` and `user_config` (another deployment's address or credentials). Sent as a client
# wrote them, a key limited to a cheap model had its request answered by one it may not use, priced as the cheap
# one. They are never sent, and named (a 400 under `x-gateway-strict`): the gateway's routing is the operator's.
ROUTING_MEMBERS: Final = frozenset(
    (
        "models",
        "provider",
        "route",
        "plugins",
        "fallbacks",
        "context_window_fallbacks",
        "context_window_fallback_dict",
        "api_base",
        "base_url",
        "api_key",
        "user_config",
        "providerOptions",  # (Vercel's AI Gateway: `providerOptions.gateway.models`, `order`, `only`)
    )
)


def unsent_routing(body: dict[str, Any]) -> list[str]:
    """`body` without its `ROUTING_MEMBERS`, in place; the names of those it had."""
    found = sorted(ROUTING_MEMBERS.intersection(body))
    for name in found:
        del body[name]
    return found


def redact_error(error: Any, depth: int = 0) -> None:
    """A provider's error object that a 200 answer carries to the client (a Responses stream's `error` event, a
    failed response's `error`) redacted in place: its `message`, `code`, `param` and `type` redacted and cut as
    `upstream_error` has them (`provider_said`), and every other string in it, a member's name too, redacted as they
    are (`redact_upstream`). Relayed as it came, only a known secret whole would be taken out (`scrub`): OpenAI quotes
    a key back masked (`sk-proj-Zq8*****p6Ss`), and a provider may quote most of one, or the authorization header in
    base64, in any member (OpenRouter's and LiteLLM's errors carry the upstream's raw body in `metadata.raw`). An
    `error` member is redacted as the object is: OpenAI's stream writes its `error` event's words there, not at the
    top level its reference shows. `depth`: the object's own, whose members nest deeper than `ERROR_DEPTH` are dropped
    (an `error` in an `error` a thousand deep was past Python's recursion)."""
    if not isinstance(error, dict):
        return
    for name, value in list(error.items()):
        if name in ERROR_MEMBER_CHARS and isinstance(value, str):
            error[name] = provider_said(name, value)
        elif name == "error" and isinstance(value, dict) and depth + 1 < ERROR_DEPTH:
            redact_error(value, depth + 1)
        else:
            kept = redact_upstream(name)
            if kept != name:
                del error[name]
            error[kept] = _redacted(value, depth + 1)


ERROR_DEPTH = 32  # the levels of an error object's members kept; deeper ones are dropped (no error nests so)


def _redacted(value: Any, depth: int) -> Any:
    """`value`, a member of an upstream's error object, with every string in it redacted (`redact_error`)."""
    if isinstance(value, str):
        return redact_upstream(value)
    if depth >= ERROR_DEPTH and isinstance(value, dict | list):
        return None
    if isinstance(value, dict):
        return {redact_upstream(k): _redacted(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, depth + 1) for v in value]
    return value


def error_excerpt(body: bytes) -> str:
    """The start of an error body the provider did not write in its JSON shape, as an error message: scrubbed of
    secrets and credential shapes before it is cut, so that a key across the cut cannot leave half of itself."""
    if not body:
        return "no error body"
    text = body[:ERROR_SCAN_BYTES].decode("utf-8", "replace")
    if unprintable().search(text[:ERROR_EXCERPT_CHARS]):
        # Binary (a gzip body it was not asked for, bytes that are no UTF-8): relayed, it would fill a client's
        # message and log with mojibake and control bytes.
        return f"a body of {len(body)} bytes that is not text"
    return redact_upstream(text)[:ERROR_EXCERPT_CHARS]


@functools.cache
def unprintable() -> re.Pattern[str]:
    """What no text body has: control characters other than whitespace, and bytes that were no UTF-8. (Compiled on
    the first error body that needs it, not at a cold start.)"""
    return re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")


def too_long_event() -> UpstreamError:
    return malformed(f"upstream stream event exceeds {MAX_EVENT_BYTES} bytes", "invalid_stream")


def malformed(message: str, outcome: str = "invalid_response") -> UpstreamError:
    """A 2xx answer the gateway cannot use: another deployment may do better, so it is retryable."""
    return UpstreamError(message, upstream_status=200, retryable=True, outcome=outcome)


# What a provider's parser raises on a shape it did not expect (pydantic's ValidationError is a ValueError; a number
# past what it is packed as, `struct.pack("<f", 1e40)`, an OverflowError).
SHAPE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError)


def no_count(value: Any) -> bool:
    """Whether a provider's count gives none: null, left out, or below 0. A negative count is none a provider bills:
    read as the count it said, `"input_tokens": -100` beside 500 cache reads would bill 400 tokens in as Anthropic's
    count, and a counting answer of `-5` would be the client's count. So it is read as a missing one
    is: a detail's is 0 (`usage_count`), a main count's makes no usage (`handler.schemas.reported`: the answer is
    estimated), a counting answer's is malformed (`counted_tokens`)."""
    return value is None or (type(value) is int and value < 0)


def usage_count(counts: Any, name: str) -> int:
    """The count `name` of a provider's usage object `counts` (0 where the object or the count is absent, null or
    negative: `no_count`), for every provider's reader of a usage. A count that is not a plain integer (`10.7`,
    `"12"`, `true`) is none the gateway can read: a `ValueError` (one of `SHAPE_ERRORS`), so the answer is malformed
    and charged as one is (its reserved worst case, `=invalid_response`). Readers of their own would truncate `10.7`
    to 10, read it as 0 (the prompt free) or `true` as 1, each billed as the provider's count."""
    if counts is None:
        return 0
    if not isinstance(counts, dict):
        raise ValueError(f"usage object for {name} is not an object")
    value = counts.get(name)
    if no_count(value):
        return 0
    if type(value) is not int:  # (not a bool, a float or a numeral in a string)
        raise ValueError(f"usage count {name} is not an integer")
    return value


def counted_tokens(answer: Any, name: str, operation: str) -> int:
    """The count `name` of a provider's token-counting answer (`operation`: Anthropic's `count_tokens`, Bedrock's
    `CountTokens`, Gemini's `countTokens`), read by `usage_count`'s rule. One that gives none (absent, null or
    negative: `no_count`) or is not a plain integer (`true`, `12.0`, `"12"`) is the provider's malformed answer, so
    the prompt is counted by the gateway's estimate as for a count that failed; read with `isinstance(count, int)`,
    `true` would be answered as 1 token, the provider's count."""
    counts = answer if isinstance(answer, dict) else {}
    try:
        if not no_count(counts.get(name)):
            return usage_count(counts, name)
    except ValueError:
        pass
    raise malformed(f"upstream answered {operation} without an integer {name} of 0 or more")


def misshapen(what: str, exc: Exception) -> UpstreamError:
    """A provider's answer the parser reading it choked on (one of `SHAPE_ERRORS`): the provider's malformed
    answer (retryable before the first byte, the client's in-stream error after it), never the gateway's 500 or
    a broken connection. (Caught where it is read: a `try` costs nothing until it catches.)"""
    error = malformed(f"the provider sent a malformed {what} ({type(exc).__name__})")
    error.__cause__ = exc
    return error


INTERRUPTED = "stream_interrupted"  # (`interrupted`'s code: a stream its provider ended before its answer was finished)


def interrupted(what: str = "answer") -> UpstreamError:
    """A provider's stream that ended before its answer (or response) was finished: what it sent is billed, and
    the client is told in the stream, after its first byte, so no other deployment is tried."""
    return UpstreamError(
        f"the provider's stream ended before the {what} was finished",
        upstream_status=200,
        retryable=False,
        code=INTERRUPTED,
    )


def event_payload(event: StreamEvent) -> dict[str, Any]:
    """A stream event's JSON object; anything else is a (retryable) upstream error."""
    try:
        payload = orjson.loads(event.data)
    except orjson.JSONDecodeError as exc:
        raise malformed("upstream sent a stream event that is not JSON", "invalid_json") from exc
    if not isinstance(payload, dict):
        raise malformed("upstream sent a stream event that is not an object")
    return payload


def json_body(body: bytes) -> Any:
    """Parse an upstream JSON body; a malformed one is a (retryable) upstream error."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise malformed("upstream returned a body that is not JSON", "invalid_json") from exc
