"""Secrets never leave the gateway in what it relays from an upstream.

The gateway knows every secret it was configured with (provider keys, resolved at start-up); `register`
adds them here. An upstream can still echo one back (an error that quotes the request's headers, a body
that repeats them), so:
- error messages relayed from an upstream are scrubbed of every known secret and of anything shaped like
  a credential (bearer tokens, API-key shapes, this gateway's own `gwk_` keys, AWS access key ids, `key=`
  query parameters);
- every answer body and stream event is scrubbed of the known secrets, exactly: a plain substring test per
  secret, which costs microseconds, and leaves ordinary content alone.
"""

from __future__ import annotations

import re
from functools import cache

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter values (test placeholders, "none") would redact ordinary words

# Values shaped like a key, whatever surrounds them: OpenAI's and Anthropic's, this gateway's own, AWS access key
# ids, Google's.
# (Not `\b` before them: `resp_gwk_...`, a key pasted after an id's prefix, has no word boundary there.)
KEY_SHAPES = (
    r"(?<![A-Za-z0-9])(sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,})"
    r"|(?<![A-Za-z0-9])(gwk_[a-z0-9]{12}_[A-Za-z0-9_\-]{8,})"
    r"|\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"
    r"|(?<![A-Za-z0-9])(AIza[0-9A-Za-z_\-]{30,})"
)
# How each of those begins: a value with none of these in it holds no key of those shapes.
KEY_MARKERS = ("sk-", "gwk_", "AKIA", "ASIA", "AIza")
# Those, and a value where a credential is named: a bearer token, a key header or field, a `key=` parameter. (A
# value ends at a space, quote, separator or closing bracket: `(x-api-key: ...)` keeps its `)`.)
CREDENTIAL_SHAPES = (
    r"(?i)(bearer\s+)[^\s\"',;)\]}]+"
    r"|(x-api-key|x-goog-api-key|api[-_]key|authorization|aws_secret_access_key|x-amz-security-token)(\"?\s*[:=]\s*\"?(?:(?:bearer|basic|token)\s+)?)[^\s\"',;&)\]}]+"
    r"|([?&]key=)[^&\s\"')\]}]+"
    r"|" + KEY_SHAPES
)


# Compiled on the first message to scrub (an upstream's error), not at a cold start that may never need it.
@cache
def credential_shapes() -> re.Pattern[str]:
    return re.compile(CREDENTIAL_SHAPES)


@cache
def key_shapes() -> re.Pattern[str]:
    return re.compile(KEY_SHAPES)


_fixed: set[str] = set()
_current: dict[str, frozenset[str]] = {}  # secrets that are renewed, by what holds them: the latest only
_secrets: frozenset[str] = frozenset()
_secrets_bytes: tuple[bytes, ...] = ()


def register(*secrets: str | None) -> None:
    """Remember secrets the gateway holds, so nothing relayed carries them."""
    _fixed.update(_usable(secrets))
    _rebuild()


def register_current(holder: str, *secrets: str | None) -> None:
    """`holder`'s secrets as they are now (AWS credentials a role renews): they replace the ones it held, so a
    long-running process does not test every answer for every key it ever had. (A session token stays valid a
    while after its successor arrives, so the previous set is kept as well.)"""
    previous = _current.get(holder, frozenset())
    _current[holder] = frozenset(_usable(secrets))
    _current[f"{holder} (previous)"] = previous - _current[holder]
    _rebuild()


def _usable(secrets: tuple[str | None, ...]) -> set[str]:
    return {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}


def _rebuild() -> None:
    global _secrets, _secrets_bytes
    _secrets = frozenset(_fixed.union(*_current.values()))
    _secrets_bytes = tuple(s.encode() for s in sorted(_secrets, key=len, reverse=True))


def _shape(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + REDACTED
    if match.group(2):
        return match.group(2) + match.group(3) + REDACTED
    if match.group(4):
        return match.group(4) + REDACTED
    return REDACTED


def _without_known(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact_message(text: str) -> str:
    """An upstream's error message without any known secret or credential-shaped value."""
    return credential_shapes().sub(_shape, _without_known(text))


def redact_secrets(text: str) -> str:
    """`text`, written by the gateway around what a client sent (a model name, a key id, a path), without any
    known secret or value shaped like a key: a client that puts its key where a name belongs (`"model": "gwk_..."`)
    sees it in no answer, log line, metric or span. (Unlike `redact_message`, the gateway's own wording stays:
    "send Authorization: Bearer <key>" names no secret.)"""
    return key_shapes().sub(REDACTED, _without_known(text))


def unkeyed(value: str) -> str:
    """`value`, a client's name for its user, its session or a tag (kept on ledger lines and in reports, spans and
    CSV exports), with any key in it redacted: a client that sends its key there finds it nowhere. A value without
    a key's first letters is returned as it is, with no regular expression run (the hot path)."""
    for marker in KEY_MARKERS:
        if marker in value:
            return redact_secrets(value)
    return value


def scrub(body: bytes) -> bytes:
    """`body` without any known secret (exact matches only)."""
    for secret in _secrets_bytes:
        if secret in body:
            body = body.replace(secret, REDACTED.encode())
    return body
