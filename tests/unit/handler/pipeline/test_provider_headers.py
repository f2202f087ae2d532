"""A provider's extra `headers`: references resolved as `api_key`'s are, credentials registered for redaction."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from adapters.providers.registry import REGISTRY
from handler import redaction
from handler.config import ConfigError, parse_config
from handler.pipeline.gateway import build_adapters
from handler.pipeline.provider_keys import header_secrets


def adapters_with(headers: Any, environ: dict[str, str]) -> Any:
    config = parse_config(
        {
            "providers": {"up": {"type": "openai", "auth": "none", "base_url": "http://up/v1", "headers": headers}},
            "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": "unknown"}},
        },
        set(REGISTRY),
    )
    return build_adapters(config, REGISTRY, environ)


def test_numbers_and_empty_values_go_as_written() -> None:
    """A YAML number (`x-retries: 3`) went out as its text before headers took references: it still does."""
    sent = adapters_with({"x-retries": 3, "x-empty": ""}, {})["up"].headers()
    assert (sent["x-retries"], sent["x-empty"]) == ("3", "")


def test_references_resolve_and_credentials_are_redacted_but_ordinary_values_are_not() -> None:
    headers = {
        "x-proxy-key": "env:PROXY",
        "authorization-extra": "literal-credential-123456",
        "x-title": "My App Title",
    }
    adapter = adapters_with(headers, {"PROXY": "from-the-environment-123456"})["up"]
    sent = adapter.headers()
    assert sent["x-proxy-key"] == "from-the-environment-123456" and sent["x-title"] == "My App Title"
    shown = redaction.scrub(b"from-the-environment-123456 literal-credential-123456 My App Title")
    assert shown == b"[REDACTED] [REDACTED] My App Title"


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x-proxy-key": "env:UNSET"}, "providers.up.headers.x-proxy-key: env:UNSET resolves to nothing"),
        ({"x-n": {"a": 1}}, "providers.up.headers: a mapping of header names to values"),
        (["x-a"], "providers.up.headers: a mapping of header names to values"),
        # Each was taken, then failed every request: a 500 (httpx's UnicodeEncodeError), the provider unreachable (a
        # line break), the provider's own 400 for a name with a space, which the client took for its own. Review.
        (
            {"x-title": "Café app"},
            "providers.up.headers.x-title: its value holds a non-ASCII character at character 4, which no HTTP header "
            "can carry",
        ),
        (
            {"x-title": "a\r\nb"},
            "providers.up.headers.x-title: its value holds a line break at character 2, which no HTTP header can carry",
        ),
        (
            {"x-proxy-key": "env:PROXY"},
            "providers.up.headers.x-proxy-key: the value in env:PROXY holds a control character (0x00) at character 5, "
            "which no HTTP header can carry",
        ),
        ({"x title": "a"}, "providers.up.headers.x title: not a header's name (letters, digits and !#$%&'*+-.^_`|~, "),
    ],
)
def test_a_header_that_cannot_be_sent_is_a_config_error(headers: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        adapters_with(headers, {"PROXY": "held\x00-secret-0123456789"})
    [found] = caught.value.problems
    assert found.startswith(problem) and "secret-0123" not in found


def test_a_value_read_with_a_newline_after_it_is_sent_without_it() -> None:
    """A value exported from a file (`PROXY=$(cat key.txt)` keeps no newline, `--env-file` and SSM do) failed every
    request as the provider unreachable. Found by review."""
    sent = adapters_with({"x-proxy-key": "env:PROXY", "x-title": " My App "}, {"PROXY": "proxy-key-0123456789\n"})
    assert (sent["up"].headers()["x-proxy-key"], sent["up"].headers()["x-title"]) == ("proxy-key-0123456789", "My App")


def test_config_check_resolves_the_headers_as_start_up_will(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header referencing nothing stops the gateway at start-up: `gateway config check` says so first."""
    from handler.entry.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(
        "providers:\n  up: {type: openai, auth: none, base_url: 'http://up/v1', headers: {x-proxy-key: 'env:NOPE'}}\n"
        "models:\n  m: {deployments: [{provider: up, model: m}], price: unknown}\n"
    )
    monkeypatch.delenv("NOPE", raising=False)
    assert main(["config", "check", "--config", str(path)]) == 1
    assert "providers.up.headers.x-proxy-key: env:NOPE resolves to nothing" in capsys.readouterr().err
    monkeypatch.setenv("NOPE", "now-it-is-set-1234567890")
    assert main(["config", "check", "--config", str(path)]) == 0


@pytest.mark.parametrize(
    "headers", [{"x-title": "Café app"}, {"x-title": "a\r\nb"}, {"x title": "a"}], ids=["non-ascii", "crlf", "space"]
)
def test_config_check_refuses_a_header_that_cannot_be_sent(
    headers: dict[str, str], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway config check` said ok to each of these (review): it refuses them as start-up does."""
    import orjson

    from handler.entry.cli import main

    path = tmp_path / "config.json"  # (JSON is YAML: the values as written, the line break too)
    provider = {"type": "openai", "api_key": "sk-x", "headers": headers}
    path.write_bytes(orjson.dumps({"providers": {"up": provider}}))
    assert main(["config", "check", "--config", str(path), "--store", f"sqlite:///{tmp_path / 'g.db'}"]) == 1
    assert capsys.readouterr().err.startswith(f"providers.up.headers.{next(iter(headers))}: ")


@pytest.mark.parametrize("kind", ["openai", "mistral", "deepseek", "azure"])
def test_a_provider_without_a_key_is_sent_none_of_the_environments(kind: str) -> None:
    """`auth: none` (a local server, a proxy that holds the credentials) still read its type's variable: with
    `OPENAI_API_KEY` set, the OpenAI key went to the local server as its `authorization`."""
    variable = REGISTRY[kind].key_env_var
    assert variable
    config = parse_config(
        {
            "providers": {"up": {"type": kind, "auth": "none", "base_url": "http://up/v1"}},
            "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": "unknown"}},
        },
        set(REGISTRY),
    )
    adapter = build_adapters(config, REGISTRY, {variable: "sk-the-operators-own-1234567890"})["up"]
    assert adapter.secret is None and not adapter.requires_key
    assert "sk-the-operators-own" not in str(adapter.headers())


@pytest.mark.parametrize(
    ("user_and_password", "secrets"),
    [
        ("svc-gateway:Sup3rS3cretPassw0rd", ["svc-gateway:Sup3rS3cretPassw0rd", "Sup3rS3cretPassw0rd"]),
        # A password that reads as ordinary text is a secret only with its user: alone, redacted from every answer,
        # it would eat the word (or the number) wherever a model wrote it.
        ("admin:sunshine", ["admin:sunshine"]),
        ("admin:Welcome", ["admin:Welcome"]),
        ("admin:20242025", ["admin:20242025"]),
        ("admin:", []),  # (a user alone: no secret)
        ("no-colon-token-0123", ["no-colon-token-0123"]),
    ],
)
def test_a_basic_credential_is_a_secret_decoded_too(user_and_password: str, secrets: list[str]) -> None:
    """A Basic credential was registered as the header's value and its base64 alone: an upstream that quoted back the
    `user:password` it decoded relayed it to the client (found by review). Decoded, it is a secret, and so is its
    password where it reads as no word; the user alone never is."""
    credential = base64.b64encode(user_and_password.encode()).decode()
    assert header_secrets(f"Basic {credential}") == (f"Basic {credential}", credential, *secrets)
    assert header_secrets(f"Bearer {credential}") == (f"Bearer {credential}", credential)
    assert header_secrets("Basic not base64!") == ("Basic not base64!", "not base64!")


def test_a_short_basic_password_redacts_no_word() -> None:
    """What `basic_secrets` gives is registered as any secret is, from `MIN_SECRET_LENGTH` characters on: a password of
    a few characters is not redacted from ordinary text, though the credential it is part of is."""
    credential = base64.b64encode(b"operator:x9!").decode()
    adapters_with({"authorization": "env:UPSTREAM_AUTH"}, {"UPSTREAM_AUTH": f"Basic {credential}"})
    shown = redaction.redact_upstream("refused operator:x9! (user operator, password x9!): try x9! again")
    assert shown == "refused [REDACTED] (user operator, password x9!): try x9! again"
