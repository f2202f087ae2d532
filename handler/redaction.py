"""Secrets never leave the gateway in what it relays from an upstream.

The gateway knows every secret it was configured with (provider keys, resolved at start-up); `register`
adds them here. An upstream can still echo one back (an error that quotes the request's headers, a body
that repeats them), so:
- error messages relayed from an upstream are scrubbed of every known secret and of anything shaped like
  a credential (bearer tokens, API-key shapes, this gateway's own keys, with their `gwk_` or without it, AWS
  access key ids, `key=` query parameters);
- every answer body and stream event is scrubbed of the known secrets, exactly: a plain substring test per
  secret, which costs microseconds, and leaves ordinary content alone. A body written by an encoder that escapes
  what JSON lets it escape (`\\/` for `/`, `\\u0041` for `A`) is read with those escapes undone as well
  (`scrub`);
- an upstream's error (its message, `code` and `param`: `redact_upstream`) is also scrubbed of any run of
  `FRAGMENT_CHARS` or more of a known secret or of its encodings (without its prefix, half of it, base64 of it or
  of `Bearer <key>` or `user:<key>`, hex, %-escaped, reversed, spaced out, its MD5, SHA-1, SHA-256 or SHA-512 in
  hex): an upstream that echoes the key it was sent rarely echoes it whole. The runs looked for are made once for
  the secrets registered (by the first error after they change: `_fragments`), never per request, and looked for
  only in errors, never in an answer or a stream's deltas; and of the operator's account ids a provider names in
  them (an OpenAI organisation or project, an AWS account: `ACCOUNT_IDS`), the reason kept;
- a stream's text is scrubbed as the client joins it (`HeldText`): a secret the model writes across several deltas
  is whole only once they are joined, so the end of a delta that could begin a secret is held back, and sent
  with what follows it (or at the stream's end);
- a text's log probabilities, which give it again token by token, say what the redacted text says where a secret
  was (`tokens_redacted`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

import orjson

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8  # shorter values (test placeholders, "none") would redact ordinary words
# The most of a name a client chose (a model the config does not name) that an answer, a log line or a span
# echoes: a 5 MB `"model"` (the body limit allows ~8 MiB) would fill a log line past CloudWatch's 256 KB event
# limit, and a span past what a collector takes in one batch (the batch refused, and every span in it lost).
NAME_CHARS = 256

# Values shaped like a key, whatever surrounds them: OpenAI's and Anthropic's, and a masked form of one an upstream
# refused, masked with stars (OpenAI's `Incorrect API key provided: sk-VKMIs*****...wjh3`) or with dots (a LiteLLM
# proxy's `Received API Key = sk-...U-sA`, or `sk-ab12...`): the key's first or last characters, which a client of
# the gateway has no business reading (DeepSeek's keys are `sk-` too); this gateway's own; xAI's (`xai-` and 80 letters
# and digits) and Groq's (`gsk_` and 52), read from 32 on so that one cut short is found too, where a model's name
# (`grok-4`, `llama-3.3-70b-versatile`) has a `-` or `.` every few characters; AWS access key ids; Google's (`AIza`
# and 35). (`sk-...` alone, the prefix and dots, is text: what a key looks like. Mistral's keys are 32 letters and
# digits with no prefix, which no shape tells from a name: only the known secrets find one.)
# (Not `\b` before them: `resp_gwk_...`, a key pasted after an id's prefix, has no word boundary there.)
KEY_SHAPES = (
    r"(?<![A-Za-z0-9])(sk-[A-Za-z0-9_\-]*(?:\*{3,}[A-Za-z0-9_\-]*|(?:\.{3}|\u2026)[A-Za-z0-9_\-]+)"
    r"|sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9_\-]+(?:\.{3}|\u2026))"
    r"|(?<![A-Za-z0-9])(gwk_[a-z0-9]{12}_[A-Za-z0-9_\-]{8,}|xai-[A-Za-z0-9]{32,}|gsk_[A-Za-z0-9]{32,})"
    r"|\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"
    r"|(?<![A-Za-z0-9])(AIza[0-9A-Za-z_\-]{30,})"
)
# How each of those begins: a value with none of these in it holds no key of those shapes.
KEY_MARKERS = ("sk-", "gwk_", "xai-", "gsk_", "AKIA", "ASIA", "AIza")
# This gateway's key without its `gwk_` (`<id>_<secret>`, pasted where a name or a tag belongs), which no marker
# announces: an id of 12 characters of `key_admin.ID_ALPHABET` (no `l`, `o`, `0` nor `1`: `organization_<a hashed
# user id>`, which OpenAI recommends for `user`, is no key), `_`, and the 43 characters of `token_urlsafe(32)` with
# both cases among them (handler/pipeline/key_admin.py mints them so; a secret of one case, about 1 in 3 billion, is
# missed). Those 43 are redacted whatever follows them (`<key>-prod` and `<key>_2` are the key, suffixed). An
# ordinary snake_case name (`configuration_value_for_the_...`) has no capital, a sentence no run of 43 such
# characters. Looked for from its `_`, which `re` finds as `str.find` would: the same look-up as one more
# alternative of `CREDENTIAL_SHAPES` cost a fifth more of every text redacted (a 64 KiB prompt's 10.7 ms, 12.9 ms),
# this way 0.07 ms.
KEY_BODY_SHAPE = (
    r"_(?<=(?<![A-Za-z0-9])[a-km-np-z2-9]{12}_)"
    r"(?=[A-Za-z0-9_\-]{0,42}[A-Z])(?=[A-Za-z0-9_\-]{0,42}[a-z])[A-Za-z0-9_\-]{43}"
)
KEY_ID_CHARS = 12  # what of a body lies before its match (the lookbehind's id)
KEY_BODY_CHARS = KEY_ID_CHARS + 1 + 43
# Those, and a value where a credential is named: a bearer token, a key header or field (a SigV4 `Authorization:
# AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` whole), a `key=` parameter. A value ends at a
# space, quote, separator or closing bracket (`(x-api-key: ...)` keeps its `)`). A value already `[REDACTED]` is left
# as it is, and a scheme word once read is not given back to be the value, so that a second pass changes nothing (it
# made `[REDACTED]]` of one).
CREDENTIAL_SHAPES = (
    r"(?i)(bearer\s+)(?!\[REDACTED\])[^\s\"',;)\]}]+"
    r"|(x-api-key|x-goog-api-key|api[-_]key|authorization|aws_secret_access_key|x-amz-security-token)"
    r"(\"?\s*[:=]\s*\"?(?:(?:bearer|basic|token)\s+)?+)"
    r"(?:aws4-hmac-sha256(?:[\s,]+\w+=[^\s\"',.)\]}]+)*|(?!\[REDACTED\])[^\s\"',;&)\]}]+)"
    r"|([?&]key=)(?!\[REDACTED\])[^&\s\"')\]}]+"
    r"|" + KEY_SHAPES
)
# A SigV4 signature wherever it is named (`Signature=` of an `Authorization` header quoted in parts, `X-Amz-Signature=`
# of a presigned URL): within AWS's five minutes of clock skew it replays the request it signed. Looked for apart
# from the shapes above, in a text that names one: one more alternative there cost a fifth more of every character of
# every text redacted (a captured prompt's too), this costs a substring search.
SIGNATURE_SHAPE = r"([Ss]ignature\"?\s*[:=]\s*\"?)[0-9a-fA-F]{64}"


# A key an upstream quotes back masked, whatever its prefix: what shows of it is the key's, which a client of the
# gateway has no business reading. DeepSeek's 401 gives its last four characters (`Your api key: ****1c3e is
# invalid`), which neither a key's shape (no `sk-` before them) nor a run of `FRAGMENT_CHARS` of a known key finds;
# others give its first ones (`sk-ab12*****`), both (`xa***Zd`), or dots in the mask (`sk-VKMIs*****...wjh3`, whose
# `...wjh3` the key's shape left). Key characters beside a run of three or more `*` (and the dots in it) are redacted
# with it. Looked for in an upstream's errors alone, in one with a mask in it that speaks of a key (`KEY_WORDS`): a
# provider quoting back a client's own word beside stars (Gemini's `Unknown name "draft***"`, a stop sequence
# `END***`, Markdown's `***Notice***`) would otherwise have it `[REDACTED]`, the client unable to tell what was
# refused.
MASK = r"\*{3,}(?:\.{2,}\**)?"
KEY_CHARS = r"[A-Za-z0-9_\-]"
# A mask of dots alone (`...`, or the ellipsis `\u2026`), as a LiteLLM proxy quotes back a key it refused
# (`Received API Key = sk-...U-sA`), which would relay the key's last characters to every client. Dots are
# ordinary text far more often than stars (`1...4096`, `loading...`, a word cut short), so a dot mask is read more
# narrowly: the two to eight key characters it leaves after it (a mask shows four), ending there, and before it
# nothing, or a prefix with a `-` or `_` in it (`xai-...`, `sk-proj-...`); a run of dots within a word (`1...4096`,
# `token...expired`) and a word of more than eight characters after them (`...continued`) are text. (A prefix
# shown alone, `sk-ab12...`, is the key's shape's to find: its `sk-` marks it. The prefix is read possessively, a
# word at a time: an error of thousands of `a-a-a-...` costs what its length does.)
DOTS = r"(?:\.{3}|\u2026)"
DOT_MASKED = (
    rf"(?<![A-Za-z0-9_\-*.\u2026])(?:(?:[A-Za-z0-9]*+[_\-])++[A-Za-z0-9]*+)?{DOTS}{KEY_CHARS}{{2,8}}"
    r"(?![A-Za-z0-9_\-*\u2026]|\.\.)"
)
MASKED_SHAPE = rf"(?<![A-Za-z0-9_\-*.])(?:{KEY_CHARS}*(?:{MASK}{KEY_CHARS}+)+\**|{KEY_CHARS}+{MASK})|{DOT_MASKED}"
# What a text with a masked key in it holds (a substring search each, before any regular expression is run).
MASK_MARKS = ("***", "...", "\u2026")
KEY_WORDS = r"(?i)key|token|secret|credential|auth|password"


# Compiled on the first message to scrub (an upstream's error), not at a cold start that may never need it.
@cache
def credential_shapes() -> re.Pattern[str]:
    return re.compile(CREDENTIAL_SHAPES)


@cache
def signature_shape() -> re.Pattern[str]:
    return re.compile(SIGNATURE_SHAPE)


@cache
def masked_shape() -> re.Pattern[str]:
    return re.compile(MASKED_SHAPE)


@cache
def key_words() -> re.Pattern[str]:
    return re.compile(KEY_WORDS)


@cache
def key_shapes() -> re.Pattern[str]:
    return re.compile(KEY_SHAPES)


@cache
def key_body_shape() -> re.Pattern[str]:
    return re.compile(KEY_BODY_SHAPE)


def _without_key_bodies(text: str) -> str:
    """`text` with each of this gateway's keys written without its `gwk_` redacted (`KEY_BODY_SHAPE`)."""
    if len(text) < KEY_BODY_CHARS:
        return text
    parts = []
    kept = 0
    for found in key_body_shape().finditer(text):
        parts += [text[kept : found.start() - KEY_ID_CHARS], REDACTED]
        kept = found.end()
    if not parts:
        return text
    parts.append(text[kept:])
    return "".join(parts)


SECRET_CHARS = 43  # a key's secret: `secrets.token_urlsafe(32)` (key_admin.py), base64url's letters, digits, - and _


@cache
def secret_run() -> re.Pattern[str]:
    """A run of at least `SECRET_CHARS` of a secret's alphabet; compiled on the first value long enough to hold one."""
    return re.compile(r"[A-Za-z0-9_\-]{43,}")


def secret_windows(start: int, end: int, run: str) -> set[tuple[int, int]]:
    """Where in a run of a secret's alphabet (`run`, at `start`..`end` of its value) a key's secret may stand: the
    run's first and last `SECRET_CHARS`, and those that begin after or end before one of its `-` or `_` (a secret
    joined to a name by them, `sess-<secret>`, `<secret>_2`, runs on with it: those are in the alphabet too)."""
    size = SECRET_CHARS
    windows = {(start, start + size), (end - size, end)}
    for joint in joints().finditer(run):
        at = start + joint.start()
        if at + 1 + size <= end:
            windows.add((at + 1, at + 1 + size))
        if at - size >= start:
            windows.add((at - size, at))
    return windows


@cache
def joints() -> re.Pattern[str]:
    """A `-` or `_` in a run of a secret's alphabet (`secret_windows`), found by `re`, not by a loop in Python."""
    return re.compile(r"[-_]")


def without_hashed_secrets(value: str, hashes: Sequence[str]) -> str:
    """`value` with each secret alone whose hash is among `hashes` (SHA-256 in hex, as `keys.hash_secret` writes a
    key's: a key's and its ancestors', as `keys.without_own_secret` and a captured prompt take them) redacted where it
    stands
    (`note=<secret>`, `sess:<secret>`, `sess-<secret>`). Only the places in a run of a secret's alphabet where a
    secret may stand (`secret_windows`) are hashed and compared, each text once: a value shorter than a secret costs
    a length's comparison, and a text that repeats itself (a run of `-`, a pasted file twice) no more than its
    distinct windows. A run that is no secret of theirs (a 43-character session id) is kept as it is: no shape tells
    a secret apart."""
    if len(value) < SECRET_CHARS or not hashes:
        return value
    # (A set's look-up, not `hmac.compare_digest` with each: what its timing could tell is whether a hash of the
    # client's own text is one of these, which says nothing of a secret it does not hold; it halves the cost.)
    held = frozenset(hashes)
    found: list[tuple[int, int]] = []
    seen: dict[str, bool] = {}
    for run in secret_run().finditer(value):
        for start, end in secret_windows(run.start(), run.end(), run.group()):
            text = value[start:end]
            known = seen.get(text)
            if known is None:
                known = seen[text] = hashlib.sha256(text.encode()).hexdigest() in held
            if known:
                found.append((start, end))
    if not found:
        return value
    parts: list[str] = []
    kept = 0
    for start, end in sorted(found):
        if start >= kept:
            parts += [value[kept:start], REDACTED]
        kept = max(kept, end)  # (one overlapping another found: the redaction covers through its end)
    parts.append(value[kept:])
    return "".join(parts)


_fixed: set[str] = set()
_current: dict[str, frozenset[str]] = {}  # secrets that are renewed, by what holds them: the latest only
_secrets: tuple[str, ...] = ()  # the longest first: a secret inside a longer one is replaced after it, not before
_secrets_bytes: tuple[bytes, ...] = ()  # each secret, and as JSON writes it where that differs (a `"` or `\\` in it)
_starts: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the secrets by their first character
_firsts: frozenset[str] = frozenset()  # a text with none of these holds no secret, nor the beginning of one
_beginnings: frozenset[str] = frozenset()  # the secrets' beginnings (not whole), up to `BEGINNING_KEPT` characters
_longest = 0
_shortest = 0
BEGINNING_KEPT = 64
# The shortest run of a known secret, or of an encoding of one, that an upstream's error may not relay: shorter
# runs (a key's `sk-proj-` prefix and a few characters) are ordinary text. Found by looking up every `STEP`th run of
# `PROBE` characters of the error (a run of `FRAGMENT_CHARS` holds one), then widening what matched.
FRAGMENT_CHARS = 12
PROBE = 6
STEP = FRAGMENT_CHARS - PROBE + 1
# Every `PROBE` characters of every form of every secret, and those forms one a line (what a run found is widened
# within): built by the first upstream error after the secrets change (`_fragments`), not as they are registered: a
# cold start registers its keys and AWS credentials (a session token's forms alone are some 17,000 probes) and most
# processes never redact an upstream's error.
_probes: frozenset[str] | None = frozenset()
_forms = ""


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
    global _secrets, _secrets_bytes, _starts, _firsts, _beginnings, _longest, _shortest, _probes
    _secrets = tuple(sorted(_fixed.union(*_current.values()), key=len, reverse=True))
    written = {s.encode() for s in _secrets} | {orjson.dumps(s)[1:-1] for s in _secrets}
    _secrets_bytes = tuple(sorted(written, key=len, reverse=True))
    starts: dict[str, list[str]] = {}
    for secret in _secrets:
        starts.setdefault(secret[0], []).append(secret)
    _starts = tuple((first, tuple(secrets)) for first, secrets in starts.items())
    _firsts = frozenset(starts)
    _beginnings = frozenset(s[:n] for s in _secrets for n in range(1, min(len(s), BEGINNING_KEPT + 1)))
    _longest = max(map(len, _secrets), default=0)
    _shortest = min(map(len, _secrets), default=0)
    _probes = None  # (built again by the next upstream error: `_fragments`)


def _fragments() -> frozenset[str]:
    """`_probes`, built from the secrets registered now if they changed since it was."""
    global _probes, _forms
    if _probes is None:
        forms = [form for secret in _secrets for form in encodings(secret) if "\n" not in form]
        _forms = "\n".join(forms)
        _probes = frozenset(form[at : at + PROBE] for form in forms for at in range(len(form) - PROBE + 1))
    return _probes


# The digests of a secret an upstream may give back in its place: a LiteLLM proxy's 401 names the key it refused by
# its unsalted SHA-256 (`Key Hash (Token) =0ed873c0...`, the id its database keeps the key under), which anyone who
# reads it can test a guessed or leaked key against; other servers log or quote an MD5, a SHA-1 or a
# SHA-512 of a credential to identify it.
DIGESTS = ("md5", "sha1", "sha256", "sha512")


def encodings(secret: str) -> list[str]:
    """`secret` as an upstream may echo it: as it is, reversed, spaced out, in hex, %-escaped, its `DIGESTS` in hex,
    and in base64 (and base64url) at each of the three alignments it can have after a prefix (`Bearer `, `user:`),
    each without the characters that depend on what surrounds it."""
    raw = secret.encode()
    forms = [secret, secret[::-1], " ".join(secret), raw.hex(), raw.hex().upper()]
    for digest in DIGESTS:
        hashed = hashlib.new(digest, raw, usedforsecurity=False).hexdigest()
        forms += [hashed, hashed.upper()]
    forms += ["".join(f"%{byte:02X}" for byte in raw), "".join(f"%{byte:02x}" for byte in raw)]
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            coded = encode(b"\0" * shift + raw).decode().rstrip("=")
            if (shift + len(raw)) % 3:
                coded = coded[:-1]  # (its last character holds bits of what follows the secret)
            forms.append(coded[4:] if shift else coded)
    return forms


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
    text = _without_key_bodies(credential_shapes().sub(_shape, _without_known(text)))
    if "ignature" in text:
        return signature_shape().sub(r"\1" + REDACTED, text)
    return text


def _without_masked_keys(text: str) -> str:
    """`text` with each key quoted back masked (`MASKED_SHAPE`) where it speaks of one (`KEY_WORDS`) redacted: a
    substring search where there is none."""
    if any(mark in text for mark in MASK_MARKS) and key_words().search(text):
        return masked_shape().sub(REDACTED, text)
    return text


# The operator's own accounts, as a provider's error names them to whoever sent the request: OpenAI's organisation
# and project (its 429 "Rate limit reached for gpt-4o in organization org-... on tokens per min"), and an AWS account
# id, within an ARN or alone (Bedrock's AccessDeniedException, "User: arn:aws:sts::123456789012:assumed-role/... is
# not authorized to perform: bedrock:InvokeModel"), which a Google project's number shares the shape of ("... has not
# been used in project 123456789012"). No credential, but the operator's, which no client of the gateway has any
# business reading: each is redacted, its `org-` or `proj_` kept, and the words around it, the reason, stay. An
# organisation's or project's id is 20 or more letters and digits, not all of them small letters (a word:
# `org-internationalization`); an account id twelve digits that are no part of a longer number, word or id (a UUID's
# last group, `1.123456789012`). Groq's organisation too, `org_` and a ULID (its 429 "Rate limit reached for model ...
# in organization `org_01kjh7p9n8f1qs6nz2bz77vy6b`"), and xAI's team, a UUID after `team` ("Your team 16f2151a-...
# has either used all available credits", a 403's `console.x.ai/team/<uuid>`).
ACCOUNT_IDS = (
    r"(?<![\w-])(org-|proj_)(?=[a-z]*[A-Z0-9])[A-Za-z0-9]{20,}"
    r"|(?<![\w-])(?<![0-9]\.)[0-9]{12}(?![\w-])(?!\.[0-9])"
    r"|(?<![\w-])(org_)[0-9A-Za-z]{26}(?![0-9A-Za-z])"
    r"|((?i:team\s+|/team/))[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9a-fA-F])"
)


@cache
def account_ids() -> re.Pattern[str]:
    return re.compile(ACCOUNT_IDS)


def _account(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or match.group(3) or "") + REDACTED


def _without_account_ids(text: str) -> str:
    """`text` with the operator's account at a provider (`ACCOUNT_IDS`) redacted: a substring search where no
    organisation or project is named and a regular expression's scan otherwise (errors only)."""
    if "org-" in text or "proj_" in text or "org_" in text or any(digit in text for digit in "0123456789"):
        return account_ids().sub(_account, text)
    return text


def redact_upstream(text: str) -> str:
    """An upstream's error (its message, `code`, `param`) as `redact_message` leaves it, without a key quoted back
    masked (`MASKED_SHAPE`), without the operator's account ids (`ACCOUNT_IDS`), and without any run of
    `FRAGMENT_CHARS` or more of a known secret or of one of its `encodings`: a key echoed without its prefix, in
    halves, in base64 or hex. (Errors only: the look-up costs one set probe every `STEP` characters.)"""
    text = _without_account_ids(redact_message(_without_masked_keys(text)))
    if len(text) < FRAGMENT_CHARS:
        return text
    probes = _fragments()
    if not probes:
        return text
    runs: list[tuple[int, int]] = []
    covered = 0
    for at in range(0, len(text) - PROBE + 1, STEP):
        if at < covered or text[at : at + PROBE] not in probes:
            continue
        start, end = at, at + PROBE
        while start > covered and text[start - 1 : end] in _forms:
            start -= 1
        while end < len(text) and text[start : end + 1] in _forms:
            end += 1
        if end - start >= FRAGMENT_CHARS:
            runs.append((start, end))
            covered = end
    if not runs:
        return text
    parts = []
    kept = 0
    for start, end in runs:
        parts += [text[kept:start], REDACTED]
        kept = end
    parts.append(text[kept:])
    return "".join(parts)


def redact_secrets(text: str) -> str:
    """`text`, written by the gateway around what a client sent (a model name, a key id, a path), without any
    known secret or value shaped like a key: a client that puts its key where a name belongs (`"model": "gwk_..."`)
    sees it in no answer, log line, metric or span. (Unlike `redact_message`, the gateway's own wording stays:
    "send Authorization: Bearer <key>" names no secret.)"""
    return _without_key_bodies(key_shapes().sub(REDACTED, _without_known(text)))


# How far past a cut a key's shape can reach (`KEY_SHAPES`' longest match worth reading): a name is redacted over
# its first `limit` characters and this much more (or the longest known secret), then cut (`window`).
SHAPE_REACH = 64


def window(value: str, limit: int) -> str:
    """What of a value longer than `limit` is read before its redaction and cut: far enough that a key beginning
    before the cut is found whole (a gateway key's secret alone too, 43 characters: `keys.without_own_secret`)."""
    return value[: limit + max(_longest, SHAPE_REACH)]


def said_clipped(words: str, limit: int, *, marked: bool = True) -> str:
    """A provider's `words` (an error's message, type, code or param) as relayed: `redact_upstream`ed and held to
    their first `limit` characters, redacted before the cut as `clipped` does, so that a message of megabytes costs
    no more than one of a few hundred (each redaction pass over a whole 5 MB message blocked the event loop for
    half a second). `marked`, the cut says so, and how long the words were."""
    if len(words) <= limit:
        return redact_upstream(words)
    cut = redact_upstream(window(words, limit))[:limit]
    return f"{cut} ... [cut at {limit} of {len(words)} characters]" if marked else cut


def clipped(name: str, limit: int = NAME_CHARS) -> str:
    """`name`, a client's (a model the config does not name), as an answer, a log line or a span echoes it: its
    first `limit` characters, without any known secret or key-shaped value. The redaction reads past the cut, as
    far as the longest secret (or a key's shape) reaches: a key that begins before the cut is redacted whole, not
    left with its first characters showing; a name of megabytes costs no more than one of a few hundred."""
    if len(name) <= limit:
        return redact_secrets(name)
    return redact_secrets(window(name, limit))[:limit]


# The longest client value an error echoes (a control header's, a fallback's name). A number, a flag or a typo is
# shorter; a key or a token pasted into the wrong header is longer, and no shape tells them all apart: a Mistral
# key, a JWT, a UUID-shaped key, an Entra client secret (`Wk78Q~3fGh...`), whose runs of letters and digits are
# short between separators or have no prefix, are known to no pattern of `redact_secrets`.
ECHOED_CHARS = 16


def echoed(value: str) -> str:
    """A client's value as an error echoes it: quoted as written where it is at most `ECHOED_CHARS` long, else only
    its length: a key or a token pasted into the wrong header is never echoed, even in part."""
    if len(value) <= ECHOED_CHARS:
        return f"'{redact_secrets(value)}'"
    return f"(a value of {len(value)} characters)"


def names_clipped(names: Iterable[str]) -> list[str]:
    """`names`, a client's (the fields of its body a translation left out: an unknown field, an `include`, a tool's
    type), as an answer echoes them (`x-gateway-dropped-params`, a strict 400): each as `clipped` has it, through
    `unkeyed`, which runs no regular expression on a name without a key's first letters (the header is written on
    a 200, per request)."""
    return [unkeyed(name, NAME_CHARS) for name in names]


def path_clipped(path: str, limit: int = NAME_CHARS, hashes: Sequence[str] = ()) -> str:
    """A request's path as a log line carries it: `redact_message`ed (a path may hold what a client mistook for an
    id: a whole key, a credential), and without the secrets alone whose hashes are `hashes` (the request's key's:
    beside its id, on the line, one would be the key whole), clipped to its first `limit` characters as `clipped`
    clips a name, cut after it is redacted. Whole, a 60 KB path without a key would be a 60 KB log line and 10-30 ms
    of redaction."""
    text = path if len(path) <= limit else window(path, limit)
    return without_hashed_secrets(redact_message(text), hashes)[:limit]


def unkeyed(value: str, limit: int | None = None) -> str:
    """`value`, a client's name for its user, its session or a tag (kept on ledger lines and in reports, spans and
    CSV exports), with any key in it redacted: a client that sends its key there finds it nowhere. A value without
    a key's first letters is tested for the known secrets alone (a provider's key need not look like one: Azure's
    are hex), and, if it is long enough to hold one, for a key without its `gwk_` (a search for `_`), with no other
    regular expression run (the hot path). With `limit`, its
    first `limit` characters, redacted before the cut as `clipped` does: cut first, a key straddling the cut kept
    its first characters, too few for a key's shape."""
    if limit is not None and len(value) > limit:
        return unkeyed(window(value, limit))[:limit]
    for marker in KEY_MARKERS:
        if marker in value:
            return redact_secrets(value)
    value = _without_known(value)
    return _without_key_bodies(value) if len(value) >= KEY_BODY_CHARS else value


def scrub(body: bytes) -> bytes:
    """`body` (JSON, or SSE events of JSON) without any known secret, as written or with JSON's escapes undone."""
    # (`find`, not `in`: a bytes operand of `in` is first tried as an integer, and the TypeError raised and cleared
    # costs more than the search, some 2,000 instructions each.)
    for secret in _secrets_bytes:
        if body.find(secret) >= 0:
            body = body.replace(secret, REDACTED.encode())
    if _secrets_bytes and (body.find(b"\\/") >= 0 or body.find(b"\\u00") >= 0):
        return _scrub_unescaped(body)
    return body


# JSON's escapes that an encoder may write for a character it need not: `\/`, and `\u0041` for a printable ASCII
# character, what keys are written in. (Not others: a quote or a backslash undone would not be JSON, a control
# character would not be one line of SSE, and a client may split lines on U+2028 or U+0085.) An escaped backslash
# is matched too, so that the `\/` in `\\/` (a backslash, then `/`) is not read as one. Compiled on the first body
# with such an escape, not at a cold start that may never see one.
@cache
def escapes() -> re.Pattern[bytes]:
    return re.compile(rb"\\(?:u00([2-7][0-9A-Fa-f])|/|\\)")


def _unescaped(match: re.Match[bytes]) -> bytes:
    code = match.group(1)
    if code is None:
        return b"/" if match.group(0) == b"\\/" else match.group(0)
    char = int(code, 16)
    return match.group(0) if char in (0x22, 0x5C, 0x7F) else bytes((char,))


def _scrub_unescaped(body: bytes) -> bytes:
    """`body` with its needless escapes undone, if that shows a known secret (then redacted); else as it was."""
    plain = escapes().sub(_unescaped, body)
    scrubbed = plain
    for secret in _secrets_bytes:
        if secret in scrubbed:
            scrubbed = scrubbed.replace(secret, REDACTED.encode())
    return scrubbed if scrubbed is not plain else body


def secret_start(text: str) -> int:
    """Where the end of `text` begins that is the beginning of a known secret (but not all of it): `len(text)`
    if no secret begins in its last characters. (For a delta, a set's look-up per character that begins a
    secret.)"""
    end = len(text)
    start = max(0, end - _longest + 1)
    if end - start <= BEGINNING_KEPT:
        for at in range(start, end):
            if text[at] in _firsts and text[at:] in _beginnings:
                return at
        return end
    held = end  # (a long text: a `find` per first character, and the beginnings of the long secrets tested whole)
    for first, secrets in _starts:
        at = text.find(first, start, held)
        while at != -1:
            rest = text[at:]
            if rest in _beginnings if len(rest) <= BEGINNING_KEPT else any(s.startswith(rest) for s in secrets):
                held = at
                break
            at = text.find(first, at + 1, held)
    return held


def redactions(text: str) -> list[tuple[int, int]]:
    """Where the known secrets are in `text`, as `withheld` redacts them: each one's start and length, in order. (What
    a position in a text means once it is redacted: a Responses annotation's, `client_position`.)"""
    if _firsts.isdisjoint(text) or len(text) < _shortest:
        return []
    found: list[tuple[int, int]] = []
    for secret in _secrets:  # (the longest first, as `withheld` replaces them: one within another is not found)
        at = text.find(secret)
        while at != -1:
            end = at + len(secret)
            if all(end <= start or start + length <= at for start, length in found):
                found.append((at, len(secret)))
            at = text.find(secret, end)
    return sorted(found)


def client_position(redacted: list[tuple[int, int]], position: int, end: bool = False) -> int:
    """`position` in a text as the client has it once the secrets `redactions` found in it are `REDACTED`: moved by
    what each redaction before it took out or put in; one within a secret is the redaction's start (its end, for
    the `end` of a span)."""
    moved = 0
    for start, length in redacted:
        if position <= start:
            break
        if position < start + length:
            return start + moved + (len(REDACTED) if end else 0)
        moved += len(REDACTED) - length
    return position + moved


# An annotation's positions in the text it annotates (a `url_citation`'s span, a `file_citation`'s `index`), and
# whether each ends a span.
POSITIONS = (("start_index", False), ("end_index", True), ("index", False))


def positions_moved(annotations: Any, secrets: list[tuple[int, int]]) -> bool:
    """`annotations` (one, or a list) with their positions moved past the `secrets` redacted before them
    (`client_position`), in place; whether any moved. A position is the annotation's own (the Responses API's) or
    its `url_citation`'s (Chat Completions')."""
    moved = False
    for annotation in annotations if isinstance(annotations, list) else [annotations]:
        if not isinstance(annotation, dict):
            continue
        cited = annotation.get("url_citation")
        placed = cited if isinstance(cited, dict) else annotation
        for name, end in POSITIONS:
            at = placed.get(name)
            if isinstance(at, int) and not isinstance(at, bool) and (there := client_position(secrets, at, end)) != at:
                placed[name], moved = there, True
    return moved


def annotated(text: str, annotations: Any) -> str | None:
    """A whole text with annotations whose positions are in it as the provider wrote it (a Responses output text's,
    a Chat Completions message's): the text redacted, as `scrub` would write it, and the positions moved to where
    they are in it (`positions_moved`, in place); None where it holds no known secret (nothing moves)."""
    secrets = redactions(text)
    if not secrets:
        return None
    positions_moved(annotations, secrets)
    return "".join(withheld(text))


# A text's log probabilities (Chat Completions' `logprobs.content` and `.refusal`, a Responses output text's
# `logprobs`) give it again, a token at a time, each with its UTF-8 `bytes` and its likeliest alternatives: a client
# that joins the tokens (the OpenAI SDK's stream helper extends the list) reads a secret the text has `[REDACTED]`
# whole, though no token holds it. The tokens that spell one are redacted as the text is (`tokens_redacted`).


def token_text(token: Any) -> str:
    """A log probability's token, as the client joins it ("" where it has none)."""
    text = token.get("token") if isinstance(token, dict) else None
    return text if isinstance(text, str) else ""


def tokens_redacted(tokens: Any, secrets: list[tuple[int, int]] | None = None) -> bool:
    """`tokens` (a text's log probabilities, in order) in place, redacted as their text is: each token that holds
    part of a known secret (one its tokens spell when joined, or `secrets`, each's start and length in that joined
    text) says what the text says there, the token where the secret begins `[REDACTED]` with whatever else of the
    token was not the secret, the tokens after it in the secret nothing; their `bytes` say the same, and their
    alternatives (`top_logprobs`, which hold the token itself) are left out. The tokens still make the text the
    client reads, and as many as the provider counted. Whether any changed. (A list without a secret's first
    characters costs a join and a set's look-up of each character.)"""
    if not isinstance(tokens, list) or not tokens:
        return False
    said = "".join(map(token_text, tokens))
    secrets = redactions(said) if secrets is None else secrets
    if not secrets:
        return False
    end = 0
    for token in tokens:
        start, end = end, end + len(token_text(token))
        if not any(at < end and start < at + length for at, length in secrets):
            continue
        pieces, kept = [], start
        for at, length in secrets:
            if at < end and start < at + length:
                pieces.append(said[kept : max(at, start)])
                if at >= start:
                    pieces.append(REDACTED)
                kept = min(at + length, end)
        pieces.append(said[kept:end])
        token["token"] = text = "".join(pieces)
        if isinstance(token.get("bytes"), list):
            token["bytes"] = list(text.encode())
        if token.get("top_logprobs"):
            token["top_logprobs"] = []
    return True


def withheld(text: str) -> tuple[str, str]:
    """`text` without the known secrets, cut where its end could begin one: what may go, and what to hold back.
    (A delta with none of the secrets' first characters, the usual one, costs a set's look-up of each of its
    characters.)"""
    if _firsts.isdisjoint(text):
        return text, ""
    if len(text) >= _shortest:
        for first, secrets in _starts:
            if first in text:
                for secret in secrets:
                    if secret in text:
                        text = text.replace(secret, REDACTED)
    cut = secret_start(text)
    if cut == len(text):
        return text, ""
    return text[:cut], text[cut:]
