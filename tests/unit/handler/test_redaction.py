"""Known secrets scrubbed from what is relayed: a body however its JSON escapes them, a stream however it is cut."""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import string
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from handler.pipeline.redacting import HeldText
from handler.redaction import REDACTED, annotated, client_position, redactions, scrub, tokens_redacted, withheld

SECRET = "sk-proj-Zq81LmN0pX4vR7tY2uW9"
SLASHED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # an AWS secret key: `/` and `+` in it
QUOTED = 'pa"ss\\word-0123456789'  # a registered secret may hold what JSON escapes


@pytest.fixture(autouse=True)
def known(only_secrets: Callable[..., None]) -> None:
    only_secrets(SECRET, SLASHED, QUOTED)


def joined(pieces: list[str], channel: object = 0) -> tuple[list[str], str]:
    """What a client gets of `pieces` sent as the deltas of one channel: each delta, and all of them joined."""
    text = HeldText()
    sent = [text.pass_on(channel, piece) for piece in pieces] + [text.release(channel)]
    return sent, "".join(sent)


def test_a_secret_cut_anywhere_across_deltas_reaches_the_client_redacted() -> None:
    said = f"key: {SECRET}, done"
    for cuts in itertools.combinations(range(1, len(said)), 2):
        pieces = [said[: cuts[0]], said[cuts[0] : cuts[1]], said[cuts[1] :]]
        sent, whole = joined(pieces)
        assert whole == f"key: {REDACTED}, done", cuts
        assert all(SECRET not in "".join(sent[: i + 1]) for i in range(len(sent)))


def test_a_secret_cut_in_four_character_tokens_is_redacted() -> None:
    said = f"use {SLASHED} and {SECRET}."
    _, whole = joined([said[i : i + 4] for i in range(0, len(said), 4)])
    assert whole == f"use {REDACTED} and {REDACTED}."


def test_a_long_secret_cut_in_small_pieces_is_redacted(only_secrets: Callable[..., None]) -> None:
    token = "IQoJb3JpZ2luX2VjE" + "FwoGZXIvYXdzEJr//////////wEaDLpCe2kK" * 20  # a session token's length
    only_secrets(token)
    said = f"token {token} ok " * 2
    _, whole = joined([said[i : i + 3] for i in range(0, len(said), 3)])
    assert whole == f"token {REDACTED} ok " * 2
    _, cut_short = joined([said[:500]])
    assert cut_short == f"token {REDACTED}"  # its first 494 characters, at the stream's end: redacted, not a secret's


def test_text_that_only_begins_like_a_secret_comes_whole_and_in_order() -> None:
    sent, whole = joined(["it is sk-", "proj-", "abc and s", "o on"])
    assert whole == "it is sk-proj-abc and so on"
    assert sent[0] == "it is " and sent[1] == ""  # held back while it could still be the key
    assert joined(["ends on sk-pr"])[0] == ["ends on ", "sk-pr"]  # the end of the channel releases it


def test_text_without_a_secrets_first_character_passes_as_it_is() -> None:
    text = HeldText()
    piece = "Hello"  # no `s`, `w`, `p`: nothing held
    assert text.pass_on(0, piece) is piece and not text.held


def test_each_channel_holds_its_own_text() -> None:
    text = HeldText()
    assert text.pass_on("content", "a s") == "a "
    assert text.pass_on("arguments", "k-proj") == "k-proj"  # another channel: not joined with the first
    assert text.pass_on("content", "k-proj-Zq") == ""
    assert text.pass_on("content", SECRET[len("sk-proj-Zq") :] + "!") == REDACTED + "!"


def test_a_body_whose_json_escapes_a_secret_is_scrubbed() -> None:
    for written in (
        SLASHED.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in SECRET),
        orjson.dumps(QUOTED).decode()[1:-1],
    ):
        body = f'{{"text":"the key {written} \\u00e9\\u2028\\n","n":1}}'.encode()
        scrubbed = scrub(body)
        assert orjson.loads(scrubbed) == {"text": f"the key {REDACTED} é\u2028\n", "n": 1}
        assert b"\\u2028" in scrubbed  # a character a client may split lines on stays escaped


def test_escapes_without_a_secret_behind_them_are_left_as_written() -> None:
    body = b'{"path":"a\\/b \\u00e9 \\\\/ \\u0022"}'
    assert scrub(body) is body
    # An escaped backslash before `/` is a backslash, then a slash: not the escape of `/`.
    tricky = ('{"text":"' + SLASHED.replace("/", "\\\\/") + '"}').encode()
    assert scrub(tricky) == tricky


def test_a_texts_tokens_say_what_the_text_says_where_a_secret_was() -> None:
    """Log probabilities give a text token by token: a token that holds part of a secret (the text's before it, or
    after it, beside) says what the redacted text says there, the one where it begins `[REDACTED]`; its `bytes` the
    same, its alternatives (the token itself among them) left out; the tokens still as many, and joined the text."""

    def token(text: str) -> dict[str, Any]:
        likeliest = {"token": text, "logprob": -0.5, "bytes": list(text.encode())}
        return {**likeliest, "top_logprobs": [likeliest]}

    text = f"see {SECRET}, then {SLASHED}."
    cuts = [0, 2, 6, 12, len(f"see {SECRET}") + 3, len(f"see {SECRET}, then ") + 9, len(text) - 1, len(text)]
    tokens = [token(text[start:end]) for start, end in itertools.pairwise(cuts)]
    assert tokens_redacted(tokens)
    assert [t["token"] for t in tokens] == ["se", "e [REDACTED]", "", ", t", f"hen {REDACTED}", "", "."]
    assert all(bytes(t["bytes"]).decode() == t["token"] for t in tokens)
    assert [bool(t["top_logprobs"]) for t in tokens] == [True, False, False, False, False, False, True]
    assert [t["logprob"] for t in tokens] == [-0.5] * 7
    plain = [token("no "), token("secret")]
    assert not tokens_redacted(plain) and not tokens_redacted(None) and plain == [token("no "), token("secret")]


def test_a_key_straddling_the_cut_of_a_clients_name_is_redacted_whole() -> None:
    """A user name was cut to its limit before it was redacted: a key beginning a few characters before the cut
    kept them, too few for a key's shape (`gwk_<id>_` and 7 characters of its secret, on the ledger line)."""
    from handler.redaction import unkeyed

    secret = "S3cretPart" * 4
    pieces = {secret[i : i + 3] for i in range(len(secret) - 2)}
    for before in range(18, 60):  # the secret's first `before - 17` characters fall before the cut
        kept = unkeyed("u" * (255 - before) + " gwk_abcdefghijkm_" + secret + " and more", 256)
        assert len(kept) <= 256 and not any(piece in kept for piece in pieces), (before, kept)
    assert unkeyed("alice", 256) == "alice" and unkeyed("b" * 300, 256) == "b" * 256


def test_a_secret_inside_a_longer_one_leaves_nothing_of_the_longer(only_secrets: Callable[..., None]) -> None:
    """The known secrets were replaced in a set's order in what the gateway writes (an upstream's error message, a
    client's name): a secret that is the beginning of a longer one (a key and the same key with a suffix, a token
    and its renewal) replaced first left the rest of the longer one in the message, for about half the orders."""
    from handler.redaction import redact_message, redact_secrets, unkeyed

    # (A set's order is its hashes': 24 pairs pass in a lucky order, without the fix, 1 time in 2**24.)
    for n in range(24):
        short = f"Tok{n:02d}xyzQWERTY"
        longer = short + "_renewed_0123456789"
        only_secrets(short, longer)
        for redact in (redact_message, redact_secrets, unkeyed):
            assert redact(f"bad credentials {longer}.") == f"bad credentials {REDACTED}.", (redact, n)
            assert redact(f"or {short}!") == f"or {REDACTED}!"


def test_a_position_in_a_text_is_moved_past_the_secrets_redacted_before_it() -> None:
    """Where an annotation's position is once the text is redacted: what each secret before it took out (or put in)
    moved it; one within a secret is the redaction's start, or its end for the end of a span."""
    text = f"a {SECRET} b {QUOTED} c"
    assert redactions(text) == [(2, len(SECRET)), (2 + len(SECRET) + 3, len(QUOTED))]
    shown = "".join(withheld(text))
    assert shown == f"a {REDACTED} b {REDACTED} c"
    secrets = redactions(text)
    for word in ("a", "b", "c"):
        assert client_position(secrets, text.index(word)) == shown.index(word)
    assert client_position(secrets, len(text)) == len(shown)
    inside = text.index(SECRET) + 3
    assert (client_position(secrets, inside), client_position(secrets, inside, end=True)) == (2, 2 + len(REDACTED))
    assert redactions("nothing here") == [] and client_position([], 5) == 5


def test_an_annotated_text_is_redacted_and_its_spans_moved_in_either_apis_shape() -> None:
    """A Responses annotation's positions are its own, a Chat Completions one's its `url_citation`'s; a text that
    holds no secret is left as it is (None), its annotations too."""
    text = f"see {SECRET} here"
    span = {"start_index": text.index("here"), "end_index": len(text)}
    responses: dict[str, Any] = {"type": "url_citation", **span}
    chat: dict[str, Any] = {"type": "url_citation", "url_citation": dict(span)}
    shown = annotated(text, [responses, chat])
    assert shown == f"see {REDACTED} here"
    for moved in (responses, chat["url_citation"]):
        assert shown[moved["start_index"] : moved["end_index"]] == "here"
    untouched = {"type": "url_citation", "url_citation": dict(span)}
    assert annotated("see nothing here", [untouched]) is None and untouched["url_citation"] == span


def test_an_upstream_error_keeps_ordinary_text_and_the_short_runs_it_shares_with_a_key() -> None:
    """A run of a known secret is redacted from an upstream's error from `FRAGMENT_CHARS` characters on: shorter
    ones (a key's prefix, a few of its characters) are ordinary text, and text with none of it is left alone."""
    from handler.redaction import FRAGMENT_CHARS, redact_upstream

    ordinary = "The model gpt-4o-mini has 128000 tokens of context; see https://platform.openai.com/docs (sk-proj-Zq)"
    assert redact_upstream(ordinary) == ordinary
    short = SECRET[8 : 8 + FRAGMENT_CHARS - 1]
    assert redact_upstream(f"key ...{short}...") == f"key ...{short}..."
    assert redact_upstream(f"key ...{SECRET[8 : 8 + FRAGMENT_CHARS]}...") == f"key ...{REDACTED}..."


@pytest.mark.parametrize("digest", ["md5", "sha1", "sha256", "sha512"])
def test_an_upstream_error_naming_a_key_by_its_digest_is_redacted(digest: str) -> None:
    """A LiteLLM proxy's 401 names the key it refused by its unsalted SHA-256 (`Key Hash (Token) =0ed8...`): relayed to
    every client, any key could be tested against it (review). A secret's digests are among the forms looked for, in
    either case and in part."""
    from handler.redaction import redact_upstream

    hashed = hashlib.new(digest, SECRET.encode()).hexdigest()
    for said in (hashed, hashed.upper(), hashed[:16]):
        assert redact_upstream(f"Key Hash (Token) ={said}. Unable to find token") == (
            f"Key Hash (Token) ={REDACTED}. Unable to find token"
        )


# A provider's error naming the operator's account, and what a client reads of it.
ACCOUNTS_NAMED = {
    "Rate limit reached for gpt-4o in organization org-Xq7cL3dP9vT2mB8kR4wZ1sNy on tokens per min (TPM)": (
        "Rate limit reached for gpt-4o in organization org-[REDACTED] on tokens per min (TPM)"
    ),
    "Project `proj_Ab12Cd34Ef56Gh78Ij90Kl12` does not have access to model `o3`": (
        "Project `proj_[REDACTED]` does not have access to model `o3`"
    ),
    (
        "User: arn:aws:sts::123456789012:assumed-role/gw-role/gw-fn is not authorized to perform: bedrock:InvokeModel "
        "on resource: arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
    ): (
        "User: arn:aws:sts::[REDACTED]:assumed-role/gw-role/gw-fn is not authorized to perform: bedrock:InvokeModel "
        "on resource: arn:aws:bedrock:us-east-1:[REDACTED]:application-inference-profile/abc123"
    ),
    "The account 123456789012.": "The account [REDACTED].",
    "Generative Language API has not been used in project 987654321098 before": (
        "Generative Language API has not been used in project [REDACTED] before"
    ),
}
# Words and figures of that shape that are no account of the operator's, left as they are.
NO_ACCOUNTS = [
    "org-wide limits; org-internationalization",
    "request 123e4567-e89b-12d3-a456-426614174000 (a UUID's last group)",
    "took 1.123456789012 s, at 1733412345678 ms, of 1234567890 tokens",
    "model anthropic.claude-3-5-sonnet-20241022-v2:0 and 123456789012345 and x123456789012",
]


@pytest.mark.parametrize(("said", "relayed"), ACCOUNTS_NAMED.items())
def test_an_upstream_error_naming_the_operators_account_keeps_its_reason_without_it(said: str, relayed: str) -> None:
    """OpenAI's 429 names the organisation (and a project) whose limit was reached, Bedrock's AccessDeniedException
    the caller's role and the resource by their ARNs, with the AWS account id, Google a project's number: the
    operator's accounts, relayed to every client (found by review)."""
    from handler.redaction import redact_upstream

    assert redact_upstream(said) == relayed


@pytest.mark.parametrize("said", NO_ACCOUNTS)
def test_words_and_figures_of_an_accounts_shape_are_left_as_they_are(said: str) -> None:
    from handler.redaction import redact_upstream

    assert redact_upstream(said) == said


def test_the_forms_of_the_secrets_are_built_by_the_first_upstream_error_not_as_they_are_registered(
    only_secrets: Callable[..., None],
) -> None:
    """Every secret's encodings and their probes were built as each secret was registered: a Lambda cold start
    registers its provider keys and AWS credentials (a session token's forms alone are some 17,000 probes), 2.0
    million instructions of every cold start, though most processes never redact an upstream's error."""
    from handler import redaction

    only_secrets(SECRET, "FwoGZXIvYXdzE" + "x" * 700)
    assert redaction._probes is None
    assert redaction.redact_upstream(f"echoed {SECRET[8:]}") == f"echoed {REDACTED}"
    assert redaction._probes  # (built, and kept until the secrets change)
    only_secrets(SECRET)
    assert redaction._probes is None


BODY = "abcdefghijkm_Zq81LmN0pX4vR7tY2uW9-Kd_3sQe7HjB5nV1cX8aLp0"  # a gateway key without its `gwk_`


def test_a_gateway_key_without_its_prefix_is_redacted_wherever_a_whole_one_is() -> None:
    """A key's shape began with `gwk_`: its body (`<id>_<secret>`), pasted without it as a tag's name or value, a
    user's name or a model's, was kept whole on ledger lines and in reports, errors and spans (review). Whatever
    surrounds it, the redactions that find a whole key find it, as they find the keys the gateway mints."""
    from handler.pipeline.key_admin import new_key_id
    from handler.redaction import redact_message, redact_secrets, unkeyed

    for redact in (redact_message, redact_secrets, unkeyed):
        assert redact(BODY) == REDACTED, redact
        assert redact(f"team-{BODY}") == f"team-{REDACTED}"
        assert redact(f"model '{BODY}' does not exist") == f"model '{REDACTED}' does not exist"
        assert redact(f"{BODY},{BODY}.") == f"{REDACTED},{REDACTED}."
    for _ in range(100):
        minted = f"{new_key_id()}_{secrets.token_urlsafe(32)}"
        assert unkeyed(f"user:{minted}") == f"user:{REDACTED}", minted


@pytest.mark.parametrize(
    "ordinary",
    [
        "configuration_value_for_the_maximum_number_of_retries_allowed",  # snake_case: no capital
        "screenshots1_2026-01-01_AtNoonWithFriendsOnTheBeach_Final_version2",  # more than a secret's 43
        "msg_01XFDUDYJgAACzvnptvVoYEL toolu_01A09q90qw90lq917835lq9 call_abc123",
        "resp_68af0c4d2a7c8190b5e3a1f4d9c2e7b60a1b2c3d4e5f6a7b chatcmpl-AbCdEf0123456789",
        "Xabcdefghijkm_Zq81LmN0pX4vR7tY2uW9-Kd_3sQe7HjB5nV1cX8aLp0",  # (its id is 13 characters long)
        "abcdefghijkm_zq81lmn0px4vr7ty2uw9-kd_3sqe7hjb5nv1cx8alp0",  # one case
    ],
)
def test_ordinary_ids_and_names_are_not_taken_for_a_key_without_its_prefix(ordinary: str) -> None:
    from handler.redaction import redact_message, redact_secrets, unkeyed

    for redact in (redact_message, redact_secrets, unkeyed):
        assert redact(ordinary) == ordinary, redact


def hashed(name: str) -> str:
    """`name` hashed as OpenAI recommends a `user` be sent: base64url of its SHA-256, 43 characters."""
    return base64.urlsafe_b64encode(hashlib.sha256(name.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("word", ["organization", "subscription", "installation", "conversation"])
def test_a_word_no_key_id_can_be_is_not_taken_for_a_key(word: str) -> None:
    """A key's id is 12 characters of `ID_ALPHABET`, which has no `l`, `o`, `0` nor `1`; any 12 lowercase letters
    and digits were taken for one, so a hashed end-user id (`organization_<base64url SHA-256>`) was redacted from
    the ledger's `user`, and every such user's attribution lost (review)."""
    from handler.pipeline.key_admin import ID_ALPHABET
    from handler.redaction import redact_message, redact_secrets, unkeyed

    assert any(c not in ID_ALPHABET for c in word)
    value = f"{word}_{hashed('acme-corp')}"
    for redact in (redact_message, redact_secrets, unkeyed):
        assert redact(value) == value, redact


def test_the_key_id_shape_is_the_minted_ids_alphabet() -> None:
    from handler.pipeline.key_admin import ID_ALPHABET
    from handler.redaction import unkeyed

    secret = "A" + "b" * 42
    for char in string.ascii_lowercase + string.digits:
        assert (unkeyed(f"{char * 12}_{secret}") == REDACTED) == (char in ID_ALPHABET), char


@pytest.mark.parametrize("form", ["{body}-prod", "{body}_2", "{body}x", "id:{body}.v2"])
def test_a_gateway_key_without_its_prefix_and_with_a_suffix_is_redacted(form: str) -> None:
    """A key without its `gwk_` followed by more of a key's characters (`<key>-prod`, `<key>_2`) kept its whole
    secret on the ledger line, where `gwk_<key>-prod` was redacted (review)."""
    from handler.pipeline.key_admin import new_key_id
    from handler.redaction import redact_message, redact_secrets, unkeyed

    for _ in range(20):
        secret = "A" + secrets.token_urlsafe(32)[1:-1] + "a"  # (43 characters, both cases, as a minted secret)
        written = form.format(body=f"{new_key_id()}_{secret}")
        for redact in (redact_message, redact_secrets, unkeyed):
            assert secret not in redact(written) and secret not in redact(f"gwk_{written}"), redact


def test_a_long_path_is_clipped_before_it_is_redacted() -> None:
    """A request's whole path went into its log line, redacted over all of it: 60 KB a line and 10-30 ms of the
    event loop for a request without a key (review). It is cut first, as a client's names are, and a key that
    straddles the cut is redacted whole."""
    from handler.redaction import NAME_CHARS, path_clipped

    key = "gwk_abcdefghijkm_" + "S3cr3t" * 6
    logged = path_clipped("/admin/keys/" + "x" * (NAME_CHARS - 30) + "/" + key + "/" + "y" * 60_000)
    assert len(logged) == NAME_CHARS and "S3cr3t" not in logged and REDACTED[:8] in logged
    assert path_clipped("/admin/keys/" + key) == "/admin/keys/" + REDACTED


def provider_key(prefix: str, length: int) -> str:
    """A key of a provider's documented shape: `prefix` and `length` random letters and digits (capitals and digits
    alone in an AWS access key id)."""
    alphabet = string.ascii_uppercase + string.digits if prefix in ("AKIA", "ASIA") else string.ascii_letters
    return prefix + "".join(secrets.choice(alphabet + string.digits) for _ in range(length))


@pytest.mark.parametrize(
    ("prefix", "length"),
    [("xai-", 80), ("gsk_", 52), ("sk-ant-api03-", 95), ("sk-", 32), ("AIza", 35), ("AKIA", 16), ("ASIA", 16)],
)
def test_a_providers_key_where_a_name_belongs_is_redacted(prefix: str, length: int) -> None:
    """xAI's keys (`xai-` and 80 letters and digits) and Groq's (`gsk_` and 52) were known to no shape: sent as a
    model's name, one was echoed whole by the 404 `model_not_found` and its log line (`clipped`), and as a `user` or
    a dropped field's name kept on the ledger line and in `x-gateway-dropped-params` (review). Each provider's
    documented shape is redacted wherever the gateway echoes a client's name, whole or cut short."""
    from handler.redaction import clipped, names_clipped, redact_message, redact_secrets, unkeyed

    key = provider_key(prefix, length)
    for redact in (redact_message, redact_secrets, unkeyed, clipped):
        assert redact(key) == REDACTED, redact
        assert redact(f"model '{key}' does not exist") == f"model '{REDACTED}' does not exist", redact
        assert key[len(prefix) :] not in redact(f"user:{key}"), redact
    assert names_clipped([key, f"tools[{key}]"]) == [REDACTED, f"tools[{REDACTED}]"]
    assert clipped("m" * 249 + " " + key) == "m" * 249 + " " + REDACTED[:6]  # (straddling the cut: redacted whole)
    if prefix in ("xai-", "gsk_"):
        assert redact_secrets(key[:36]) == REDACTED  # (cut short: a key's first 32 characters are still a key)


@pytest.mark.parametrize(
    "name",
    [
        "grok-4",
        "grok-4-fast-reasoning",
        "grok-code-fast-1",
        "xai-grok-4",
        "gemini-2.5-pro",
        "gemini-2.5-flash-preview-09-2025",
        "llama-3.3-70b-versatile",
        "meta-llama/llama-4-scout-17b-16e-instruct",
        "openai/gpt-oss-120b",
        "gsk_llama_3_3_70b",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "mistral-large-latest",
        "deepseek-chat",
        "claude-opus-4-1-20250805",
    ],
)
def test_a_models_name_is_not_taken_for_a_providers_key(name: str) -> None:
    from handler.redaction import clipped, names_clipped, redact_secrets, unkeyed

    for redact in (redact_secrets, unkeyed, clipped):
        assert redact(name) == name, redact
    assert names_clipped([name]) == [name]
