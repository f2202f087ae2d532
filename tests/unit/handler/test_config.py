"""Config validation: every error names the offending path."""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.providers.registry import REGISTRY
from handler import config as config_module
from handler.config import ConfigError, load_config, parse_config, resolve_secret
from handler.otlp_config import OtlpConfig

TYPES = set(REGISTRY)


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, TYPES)
    return info.value.problems


def test_unknown_provider_is_named_with_its_path() -> None:
    data = {
        "providers": {"openai": {"type": "openai"}},
        "models": {"gpt-4o": {"deployments": [{"provider": "opnai", "model": "gpt-4o"}]}},
    }
    assert problems(data) == ["models.gpt-4o.deployments[0].provider: unknown provider 'opnai'"]


def test_type_errors_and_unknown_fields_name_their_paths() -> None:
    data = {
        "providers": {"x": {"type": "nonsense"}},
        "models": {"m": {"deployments": [], "pricee": 1}},
    }
    found = problems(data)
    assert any(p.startswith("models.m.deployments:") for p in found)
    assert any(p.startswith("models.m.pricee:") for p in found)


def test_unknown_provider_type_and_fallback() -> None:
    data = {
        "providers": {"x": {"type": "nonsense"}},
        "models": {"m": {"deployments": [{"provider": "x", "model": "a"}], "fallbacks": ["ghost"]}},
    }
    found = problems(data)
    assert found[0].startswith("providers.x.type: unknown provider type 'nonsense'")
    assert "models.m.fallbacks[0]: unknown model 'ghost'" in found


def test_a_fallback_of_another_kind_is_refused() -> None:
    """A chat model falling back to an embedding model was accepted (`gateway config check` passed it), and every
    request passed that fallback over unsaid."""
    data = {
        "providers": {"x": {"type": "openai", "api_key": "env:X"}},
        "models": {
            "m": {"deployments": [{"provider": "x", "model": "a"}], "fallbacks": ["emb"]},
            "emb": {"kind": "embedding", "deployments": [{"provider": "x", "model": "e"}], "fallbacks": ["m"]},
        },
    }
    assert problems(data) == [
        "models.m.fallbacks[0]: 'emb' is a model of kind 'embedding', and 'm' of kind 'chat': a request is never "
        "sent to a model of another kind",
        "models.emb.fallbacks[0]: 'm' is a model of kind 'chat', and 'emb' of kind 'embedding': a request is never "
        "sent to a model of another kind",
    ]


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    assert problems(["a"]) == ["(root): the config must be a mapping with providers and models"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, TYPES)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", TYPES)


def test_shipped_default_config_is_valid() -> None:
    config = load_config(None, TYPES)
    assert {"gpt-4o-mini", "claude-sonnet-4-5", "gemini-2.5-flash", "deepseek-chat", "mistral-large-latest"} <= set(
        config.models
    )


def test_secret_references() -> None:
    env = {"K": "v1"}
    fetched: list[tuple[str, str]] = []

    def fetch(kind: str, name: str) -> str:
        fetched.append((kind, name))
        return f"{kind}-secret"

    assert resolve_secret("env:K", env, fetch) == "v1"
    assert resolve_secret("env:MISSING", env, fetch) is None
    assert resolve_secret("ssm:/gw/openai", env, fetch) == "ssm-secret"
    assert resolve_secret("secretsmanager:gw/anthropic", env, fetch) == "secretsmanager-secret"
    assert fetched == [("ssm", "/gw/openai"), ("secretsmanager", "gw/anthropic")]
    assert resolve_secret(None, env, fetch) is None


def test_a_credential_is_resolved_without_the_whitespace_around_it() -> None:
    """A key written to its store from a file, or exported from one, ends in a newline, which no HTTP header carries:
    every request failed as the provider unreachable (a 502, counted on its breaker). Found by review. The reasoning
    seal's secret is read as it is: another key would open nothing sealed before."""
    from handler.config import resolve_credential

    env = {"K": "sk-from-a-file-0123\n", "BLANK": " \r\n"}
    assert resolve_credential("env:K", env) == "sk-from-a-file-0123"
    assert resolve_credential("env:BLANK", env) is None
    assert resolve_credential("ssm:/gw/k", env, lambda kind, name: " sk-stored-0123\r\n") == "sk-stored-0123"
    assert resolve_credential("sk-literal-0123 ", env) == "sk-literal-0123"
    assert resolve_secret("env:K", env) == "sk-from-a-file-0123\n"


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_the_shipped_yaml_is_read_by_libyaml_as_the_pure_python_loader_reads_it(tmp_path: Path) -> None:
    # libyaml's loader reads the config and the price table several times faster at a cold start.
    assert config_module.SAFE_LOADER is yaml.CSafeLoader
    for name in ("default_config.yaml", "pipeline/prices.yaml"):
        text = resources.files("handler").joinpath(name).read_text()
        assert config_module.load_yaml(text) == yaml.safe_load(text)
    with pytest.raises(ConfigError, match="(?s)not valid YAML.*line 2, column 5"):
        (tmp_path / "bad.yaml").write_text("models:\n  - [unclosed\n")
        load_config(tmp_path / "bad.yaml", set())


@pytest.mark.parametrize(
    ("otlp", "problems"),
    [
        ("collector:4318", ["observability.otlp: Input should be a valid dictionary or instance of OtlpConfig"]),
        (
            {"queue_size": 0, "extra": 1},
            [
                "observability.otlp.queue_size: Input should be greater than or equal to 1",
                "observability.otlp.extra: Extra inputs are not permitted",
            ],
        ),
    ],
)
def test_the_otlp_section_validated_apart_names_its_problems_as_the_rest(otlp: object, problems: list[str]) -> None:
    """`observability.otlp` is validated apart (only a config that has one pays for its validator at a cold
    start): its problems still name their paths, and a valid one is an `OtlpConfig`."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"observability": {"otlp": otlp}}, set(REGISTRY))
    assert caught.value.problems == problems
    parsed = parse_config({"observability": {"otlp": {"endpoint": "http://c:4318"}}}, set(REGISTRY))
    assert isinstance(parsed.observability.otlp, OtlpConfig)
    assert parsed.observability.otlp.endpoint == "http://c:4318" and parsed.observability.otlp.batch_size == 512
    assert parse_config({}, set(REGISTRY)).observability.otlp is None


@pytest.mark.parametrize(
    ("where", "value", "problem"),
    [
        # Each was taken, and every request to it failed later (502 `unsupported URL scheme 'htp'`), or the gateway
        # did not start at all (trusted_proxies: a traceback after `gateway serve` said it listened). Found by review.
        (("providers", "p", "base_url"), "htp:/not a url", "providers.p.base_url: 'htp:/not a url' is not an http"),
        (("providers", "p", "base_url"), "https://", "providers.p.base_url: 'https://' is not an http"),
        (("deployment", "base_url"), "ftp://host/v1", "models.m.deployments[0].base_url: 'ftp://host/v1' is not"),
        (("deployment", "base_url"), "https://u:secret@", "models.m.deployments[0].base_url: the URL is not"),
        (("providers", "p", "region"), "eu central/1", "providers.p.region: 'eu central/1' is not a region name"),
        (("deployment", "region"), "", "models.m.deployments[0].region: '' is not a region name"),
        (("gateway", "trusted_proxies"), ["10.0.0.0/8", "not-a-cidr"], "gateway.trusted_proxies[1]: 'not-a-cidr' is"),
        # The adapters add the API's path to a base URL: with a query or a fragment, every request went to the URL's
        # own path (`/v1`, the API's path in the query: a 404, each a 502 to the client). A user and password were
        # never sent, and the host was read as the user's name. Neither is shown (a query may hold a key). Review.
        (
            ("providers", "p", "base_url"),
            "https://api.openai.com/v1?api-version=1",
            "providers.p.base_url: 'https://api.openai.com/v1' is followed by a query (?...), and the API's paths",
        ),
        (
            ("deployment", "base_url"),
            "https://api.openai.com/v1#v1",
            "models.m.deployments[0].base_url: 'https://api.openai.com/v1' is followed by a fragment (#...)",
        ),
        (("providers", "p", "base_url"), "https://proxy.example/v1?key=secret", "providers.p.base_url: 'https://proxy"),
        (("providers", "p", "base_url"), "htps://proxy.example/v1?key=secret", "providers.p.base_url: the URL is not"),
        (
            ("providers", "p", "base_url"),
            "https://proxy.example/v1?",
            "providers.p.base_url: 'https://proxy.example/v1",
        ),
        (
            ("providers", "p", "base_url"),
            "https://user:secret@proxy.example/v1",
            "providers.p.base_url: the URL holds a user name or password, which the gateway never sends",
        ),
    ],
)
def test_a_value_that_fails_later_is_refused_with_its_path(where: tuple[str, ...], value: object, problem: str) -> None:
    provider: dict[str, object] = {"type": "openai", "api_key": "env:X"}
    deployment: dict[str, object] = {"provider": "p", "model": "a"}
    data: dict[str, object] = {"providers": {"p": provider}, "models": {"m": {"deployments": [deployment]}}}
    if where[0] == "providers":
        provider[where[2]] = value
    elif where[0] == "deployment":
        deployment[where[1]] = value
    else:
        data["gateway"] = {where[1]: value}
    [found] = problems(data)
    assert found.startswith(problem), found
    assert "secret" not in found and "Value error" not in found


def test_urls_regions_and_proxies_written_as_the_docs_write_them_pass() -> None:
    config = parse_config(
        {
            "gateway": {"trusted_proxies": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"]},
            "providers": {"p": {"type": "openai", "api_key": "env:X", "base_url": "http://127.0.0.1:11434/v1"}},
            "models": {"m": {"deployments": [{"provider": "p", "model": "a", "region": "us-central1"}]}},
        },
        TYPES,
    )
    assert config.providers["p"].base_url == "http://127.0.0.1:11434/v1"


@pytest.mark.parametrize(
    ("written", "read_as"),
    [("yes", "the boolean true"), ("off", "the boolean false"), ("1", "a number"), ("2025-01-01", "a date")],
)
def test_a_name_yaml_reads_as_no_string_is_named_as_written(tmp_path: Path, written: str, read_as: str) -> None:
    """`yes:` or `1:` as a model's name (YAML 1.1 reads them as a boolean and a number) was refused as
    `models[1].[key]: Input should be a valid string`, the name as YAML read it. Found by review."""
    path = tmp_path / "gateway.yaml"
    text = "providers:\n  p: {type: openai, api_key: env:X}\n"
    text += "models:\n  NAME: {deployments: [{provider: p, model: a}]}\n"
    path.write_text(text.replace("NAME", written))
    with pytest.raises(ConfigError) as caught:
        load_config(path, TYPES)
    assert caught.value.problems == [
        f"{path}: not valid YAML at line 4, column 3: the key {written} is read as {read_as}, not as a name: quote it "
        f"('{written}')"
    ]
    path.write_text(text.replace("NAME", f"'{written}'"))
    assert list(load_config(path, TYPES).models) == [written]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "models: model name '' may not be empty"),
        ("  ", "models: model name '  ' may not be empty"),
        (" gpt-4o ", "models: model name ' gpt-4o ' has spaces around it: write 'gpt-4o'"),
    ],
)
def test_a_model_name_no_client_can_ask_for_is_refused(name: str, problem: str) -> None:
    """A blank name, or one with spaces around it, was taken: no client's `model` reached it. Found by review."""
    data = {
        "providers": {"p": {"type": "openai", "api_key": "env:X"}},
        "models": {name: {"deployments": [{"provider": "p", "model": "a"}]}},
    }
    assert problems(data) == [problem]


def test_a_price_that_is_wrong_names_the_path_the_file_writes() -> None:
    """A negative price read `models.m.price.Price.input: ...` and `models.m.price.literal['unknown']: Input
    should be 'unknown'`: the union's member names, and a complaint about a member nobody meant. Found by review."""
    model = {"deployments": [{"provider": "p", "model": "a"}]}
    data = {"providers": {"p": {"type": "openai", "api_key": "env:X"}}, "models": {"m": model}}
    model["price"] = {"input": -1, "output": 0.6}
    assert problems(data) == ["models.m.price.input: Input should be greater than or equal to 0"]
    model["price"] = "cheap"
    assert problems(data) == [
        "models.m.price: a mapping of prices (USD per 1M tokens: input, output, ...) or 'unknown'"
    ]


FORMS = "write env:NAME, ssm:/path or secretsmanager:NAME (lowercase, with a name), or the key itself"


@pytest.mark.parametrize(
    ("api_key", "problem"),
    [
        ("Env:OPENAI_API_KEY", f"'Env:...' is not a secret reference, and would be sent as the key itself: {FORMS}"),
        ("envv:OPENAI_API_KEY", f"'envv:...' is not a secret reference, and would be sent as the key itself: {FORMS}"),
        ("secret:openai", f"'secret:...' is not a secret reference, and would be sent as the key itself: {FORMS}"),
        ("${OPENAI_API_KEY}", f"'${{...}}' is not a secret reference, and would be sent as the key itself: {FORMS}"),
        ("env:", f"'env:' names no environment variable: {FORMS}"),
        ("ssm:", f"'ssm:' names no secret: {FORMS}"),
        ("secretsmanager:", f"'secretsmanager:' names no secret: {FORMS}"),
        (
            "env: OPENAI_API_KEY",
            f"'env:' is not followed by the environment variable's name (no spaces, $ or {{}}): {FORMS}",
        ),
    ],
)
def test_an_api_key_that_looks_like_a_reference_but_is_none_is_refused(api_key: str, problem: str) -> None:
    """`Env:OPENAI_API_KEY` passed `config check` and was sent to the provider as the key; `env:` with no name made
    every request a 503 naming an empty variable. Found by review. Only the prefix is shown, never the value."""
    data = {
        "providers": {"openai": {"type": "openai", "api_key": api_key}},
        "models": {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
    }
    assert problems(data) == [f"providers.openai.api_key: {problem}"]


@pytest.mark.parametrize(
    "api_key", ["sk-proj-abc123", "sk-ant-api03-x", "AIzaSy0", "k", "env:OPENAI_API_KEY", "ssm:/a/b"]
)
def test_a_literal_key_or_a_reference_is_taken(api_key: str) -> None:
    data = {"providers": {"openai": {"type": "openai", "api_key": api_key}}}
    assert parse_config(data, TYPES).providers["openai"].api_key == api_key


def test_a_chat_models_price_without_an_output_price_is_refused() -> None:
    """`price: {input: 0.15}` passed `config check`, and every output token of gpt-4o-mini was then charged $0.
    An embedding model's price needs no output price (its answers have no output tokens). Found by review."""
    model: dict[str, object] = {"deployments": [{"provider": "p", "model": "gpt-4o-mini"}], "price": {"input": 0.15}}
    data = {"providers": {"p": {"type": "openai", "api_key": "env:X"}}, "models": {"m": model}}
    assert problems(data) == [
        "models.m.price.output: a chat model's price needs an output price (USD per 1M tokens), or `kind: embedding` "
        "for a model whose answers have no output tokens"
    ]
    model["price"] = {"input": 0.15, "output": 0}  # (said, even as 0: a free model)
    assert parse_config(data, TYPES).models["m"].price.output == 0  # type: ignore[union-attr]
    model["price"] = {"input": 0.02}
    model["kind"] = "embedding"
    assert parse_config(data, TYPES).models["m"].price.input == 0.02  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "providers:\n  openai: {type: openai, api_key: env:A}\n  openai: {type: anthropic}\n",
            "not valid YAML at line 3, column 3: duplicate key 'openai' (first at line 2): each name once",
        ),
        (
            "models:\n  a: {deployments: [{provider: p, model: x}]}\n  a : {deployments: [{provider: p, model: y}]}\n",
            "not valid YAML at line 3, column 3: duplicate key 'a' (first at line 2): each name once",
        ),
        (
            "providers:\n  openai: {type: openai, api_key: env:A\nmodels: [\n",
            "not valid YAML at line 3, column 7: did not find expected ',' or '}' (while parsing a flow mapping at "
            "line 2, column 11)",
        ),
    ],
)
def test_a_duplicated_key_or_a_syntax_error_names_the_file_and_the_line(
    tmp_path: Path, text: str, problem: str
) -> None:
    """A name given twice was read as one, the first entry lost unsaid (`ok: 1 providers`); a syntax error named
    `"<unicode string>"`, not the file. Found by review."""
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, TYPES)
    assert caught.value.problems == [f"{path}: {problem}"]


def test_a_merge_may_write_over_the_keys_it_brings() -> None:
    text = "base: &b {type: openai, api_key: env:A}\nproviders:\n  p:\n    <<: *b\n    api_key: env:B\n"
    data = yaml.load(text, Loader=config_module.UniqueKeyLoader)
    assert data["providers"]["p"] == {"type": "openai", "api_key": "env:B"}


def test_timeouts_that_let_a_request_outlive_its_reservation_are_refused() -> None:
    """`timeouts.total` bounded one attempt, not the request: a first-byte timeout then a fallback streaming to its
    `total` ran 1,020 s with the defaults, past the 900 s `reservation_ttl_seconds`, and `total: 3600` was accepted
    beside it; another request's refusal then released the live reservation, and both were charged past the budget
    (found by review). The whole request is bounded now (`timeouts.request`), and the TTL must outlast it."""
    settings = parse_config({}, TYPES).gateway
    assert settings.timeouts.request + config_module.RESERVATION_MARGIN_S <= settings.reservation_ttl_seconds
    assert settings.timeouts.total <= settings.timeouts.request
    assert problems({"gateway": {"timeouts": {"total": 3600}}}) == [
        "gateway.timeouts.total: 3600 s is longer than gateway.timeouts.request (900 s), the bound on a whole request "
        "(every attempt, retries, failover, a stream to its end), so it could never be reached: lower it, or raise "
        "timeouts.request (and gateway.reservation_ttl_seconds with it)"
    ]
    [ttl] = problems({"gateway": {"reservation_ttl_seconds": 900}})
    assert ttl.startswith("gateway.reservation_ttl_seconds: 900 s would release the budget reservation of a request")
    assert "gateway.timeouts.request lets one run 900 s" in ttl and "at least 960" in ttl
    assert len(problems({"gateway": {"timeouts": {"total": 3600, "request": 3600}}})) == 1  # the TTL's
    longer = {"timeouts": {"total": 3600, "request": 3600}, "reservation_ttl_seconds": 3660}
    assert parse_config({"gateway": longer}, TYPES).gateway.timeouts.request == 3600


def test_a_bodys_bound_past_the_whole_requests_is_refused() -> None:
    """`timeouts.request_body` (`gateway serve`'s bound on reading a request's body) past `timeouts.request`, which
    holds from the request's arrival, could never be reached."""
    assert problems({"gateway": {"timeouts": {"request_body": 1200}}}) == [
        "gateway.timeouts.request_body: 1200 s is longer than gateway.timeouts.request (900 s), the bound on a whole "
        "request, its body's reading included, so it could never be reached: lower it, or raise timeouts.request"
    ]
    settings = parse_config({"gateway": {"timeouts": {"request_body": 900, "request_head": 1}}}, TYPES).gateway
    assert (settings.timeouts.request_head, settings.timeouts.request_body) == (1, 900)


def test_a_whole_requests_bound_below_the_bodys_default_is_taken_and_bounds_the_body() -> None:
    """A config that lowered `timeouts.request` (2 s) and wrote no `request_body` was refused once the body's bound
    came (its default's 60 s past the whole request's): the suite's own configs of that kind failed to load. The
    default now yields to `request`; only a `request_body` written past it is refused."""
    timeouts = parse_config({"gateway": {"timeouts": {"request": 2, "total": 2}}}, TYPES).gateway.timeouts
    assert (timeouts.request, timeouts.body_s) == (2, 2)
    assert parse_config({}, TYPES).gateway.timeouts.body_s == 60


def test_a_responses_secret_that_resolves_to_nothing_is_refused_at_start_not_replaced(
    tmp_path: Path, only_secrets: object
) -> None:
    """`gateway.responses_secret: env:UNSET` passed config check and served, sealing with the store's secret in its
    place: a deployment in several regions, set up to share one secret, sealed with as many. Found by review. (The
    secrets its gateways register are forgotten after it: `s` × 32 known to the process redacted a later test's
    session id of `s` × 256.)"""
    from handler.config import SecretFetcher, SecretUnreadableError
    from handler.pipeline.gateway import Gateway, build_gateway

    def gateway_with(reference: str, environ: dict[str, str], fetch: SecretFetcher | None = None) -> Gateway:
        config = parse_config({"gateway": {"responses_secret": reference}}, TYPES)
        store = f"sqlite:///{tmp_path / 'gateway.db'}"
        return build_gateway(config=config, store_url=store, environ=environ, fetch=fetch)

    with pytest.raises(ConfigError) as refused:
        gateway_with("env:SEAL_SECRET", {})
    assert refused.value.problems == [
        "gateway.responses_secret: env:SEAL_SECRET resolves to nothing: set the environment variable SEAL_SECRET, or "
        "leave responses_secret out (the seal's key is then one the gateway keeps in its store)"
    ]
    with pytest.raises(ConfigError, match=r"^gateway.responses_secret: ssm:/gw/seal resolves to nothing: store the "):
        gateway_with("ssm:/gw/seal", {}, lambda kind, name: None)

    def throttled(kind: str, name: str) -> str:
        raise SecretUnreadableError(f"{kind}:{name}", "ThrottlingException")

    with pytest.raises(ConfigError, match=r"^gateway.responses_secret: ssm:/gw/seal could not be read \(Throttling"):
        gateway_with("ssm:/gw/seal", {}, throttled)
    # The environment the gateway is built from, not the process's (it read os.environ).
    assert gateway_with("env:SEAL_SECRET", {"SEAL_SECRET": "s" * 32}).responses_secret == "s" * 32


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        (("timeouts", "connect"), 0, "gateway.timeouts.connect: Input should be greater than 0"),
        (("timeouts", "request_body"), -1.5, "gateway.timeouts.request_body: Input should be greater than 0"),
        (("timeouts", "first_byte"), float("nan"), "gateway.timeouts.first_byte: Input should be greater than 0"),
        (("limits", "connections"), 0, "gateway.limits.connections: Input should be greater than 0"),
        (("fee", "percent"), 101, "gateway.fee.percent: Input should be less than or equal to 100"),
        (("key_minting", "max_depth"), 91, "gateway.key_minting.max_depth: Input should be less than or equal to 90"),
        (
            ("key_minting", "per_minute"),
            0,
            "gateway.key_minting.per_minute: Input should be greater than or equal to 1",
        ),
        (("key_cache_seconds",), -1, "gateway.key_cache_seconds: Input should be greater than or equal to 0"),
        (
            ("max_retries_per_deployment",),
            6,
            "gateway.max_retries_per_deployment: Input should be less than or equal to 5",
        ),
    ],
)
def test_a_setting_outside_its_bound_is_refused_in_pydantics_words(
    setting: tuple[str, ...], value: float, problem: str
) -> None:
    """The numeric settings' bounds are checked with the config's cross-checks (`SETTING_BOUNDS`), not as
    constrained fields built at every cold start: each still refuses a value outside it, NaN included, by its path,
    and nothing else is said of the config."""
    section: dict[str, object] = {setting[-1]: value}
    for part in reversed(setting[:-1]):
        section = {part: section}
    assert problems({"gateway": section}) == [problem]
    assert set(config_module.SETTING_BOUNDS) >= {".".join(setting)}


@pytest.mark.parametrize(
    ("gateway", "price", "problem"),
    [
        ({"fee": {"per_request_usd": math.inf}}, None, "gateway.fee.per_request_usd: Input should be a finite number"),
        ({"timeouts": {"request": math.inf}}, None, "gateway.timeouts.request: Input should be a finite number"),
        ({"responses_ttl_seconds": math.inf}, None, "gateway.responses_ttl_seconds: Input should be a finite number"),
        ({"key_cache_seconds": math.inf}, None, "gateway.key_cache_seconds: Input should be a finite number"),
        (
            {"priced_options": {"web_search_usd": math.inf}},
            None,
            "gateway.priced_options.web_search_usd: Input should be a finite number",
        ),
        ({}, {"input": math.inf, "output": 1.0}, "models.m.price.input: Input should be a finite number"),
        (
            {},
            {"input": 1.0, "output": 1.0, "web_search": math.inf},
            "models.m.price.web_search: Input should be a finite number",
        ),
        (
            {},
            {"input": 1.0, "output": 1.0, "long_context": {"threshold": 1, "input": 1.0, "output": math.inf}},
            "models.m.price.long_context.output: Input should be a finite number",
        ),
        (
            {},
            {"input": 1.0, "output": 1.0, "long_context": {"threshold": 1, "input": 1.0, "output": math.nan}},
            "models.m.price.long_context.output: Input should be greater than or equal to 0",
        ),
    ],
)
def test_a_price_fee_or_duration_that_is_not_a_finite_number_is_refused_at_load(
    gateway: dict[str, object], price: dict[str, object] | None, problem: str
) -> None:
    """`.inf` is within `ge=0`: a fee or a price of it passed `config check`, and every request was then a 500 (its
    worst case, `math.ceil(inf)`, raised); a TTL or a timeout of it, a wait for ever. Found by review (oprev36)."""
    model: dict[str, object] = {"deployments": [{"provider": "p", "model": "a"}]}
    if price is not None:
        model["price"] = price
    data = {"gateway": gateway, "providers": {"p": {"type": "openai", "api_key": "env:X"}}, "models": {"m": model}}
    assert problems(data) == [problem]


def test_a_measured_round_trip_is_a_finite_number_of_ms_not_below_zero() -> None:
    """`region_latency_ms` took `.nan`, `.inf` and negative round trips: `route explain` showed `rtt_ms: null` for a
    NaN and still ranked its deployment first, ahead of one measured at -100 ms (a NaN orders nothing), where
    `timeouts`' bounds are checked. Found by review (oprev36)."""
    measured = {"eu-west-1": math.nan, "us-west-2": -100.0, "ap-south-1": math.inf, "eu-central-1": 0.0}
    data = {
        "gateway": {"region_latency_ms": {"US-East-1": measured}},
        "providers": {"p": {"type": "openai", "api_key": "env:X"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": "a"}]}},
    }
    assert problems(data) == [
        f"gateway.region_latency_ms.us-east-1.{region}: not a round trip (a finite number of ms, 0 or more)"
        for region in ("eu-west-1", "us-west-2", "ap-south-1")
    ]


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("", "the upstream model's name may not be empty"),
        ("   ", "the upstream model's name may not be empty"),
        (" gpt-4o-mini", "' gpt-4o-mini' has spaces around it: write 'gpt-4o-mini'"),
    ],
)
def test_a_deployment_names_an_upstream_model(model: str, problem: str) -> None:
    """`model: ""` (a template's unset variable) passed `config check` with `ok`: every request then went upstream
    with no model (Gemini's URL `/models/:generateContent`), the provider's 400 or 404 at request time. A public
    model's name may not be blank; nor may the upstream one. Found by review (oprev36)."""
    data = {
        "providers": {"p": {"type": "openai", "api_key": "env:X"}},
        "models": {"m": {"deployments": [{"provider": "p", "model": model}], "price": {"input": 1, "output": 1}}},
    }
    assert problems(data) == [f"models.m.deployments[0].model: {problem}"]


def test_the_cross_checks_run_on_what_passed_the_fields_own_checks() -> None:
    """A file whose fields failed their own checks was said to have those errors alone: a misspelt setting, then (once
    fixed) the provider a deployment misnames, a round each (on Lambda, a deploy each). Found by review."""
    data = {
        "gateway": {"fee_percent": 10, "timeouts": {"connect": 0}},
        "providers": {"openai": {"type": "openai"}, "typo": {"type": "nonsense"}},
        "models": {"m": {"deployments": [{"provider": "opnai", "model": "gpt-4o"}], "fallbacks": ["n"]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, TYPES)
    assert caught.value.problems[0] == "gateway.fee_percent: Extra inputs are not permitted"
    assert caught.value.problems[1:] == [
        "providers.typo.type: unknown provider type 'nonsense' (one of: " + ", ".join(sorted(TYPES)) + ")",
        "models.m.deployments[0].provider: unknown provider 'opnai'",
        "models.m.fallbacks[0]: unknown model 'n'",
    ]
    assert caught.value.validated is not None and list(caught.value.validated.providers) == ["openai", "typo"]
    data["gateway"] = {"timeouts": {"connect": 0}}  # (a bound the settings' own check says, beside the names')
    assert problems(data)[0] == "gateway.timeouts.connect: Input should be greater than 0"
    assert problems(data)[2:] == [
        "models.m.deployments[0].provider: unknown provider 'opnai'",
        "models.m.fallbacks[0]: unknown model 'n'",
    ]


def test_a_model_with_an_error_of_its_own_still_has_its_deployments_checked_against_the_providers() -> None:
    """A model left out for an error of its own (a misspelt `fallback:`) had its deployments' provider names and
    options checked only once that was fixed: `opnai` was said a round later (on Lambda, a deploy later). Found by
    review (a newcomer's first hour)."""
    data = {
        "providers": {"openai": {"type": "openai"}, "claude": {"type": "anthropic"}},
        "models": {
            "m": {
                "fallback": ["n"],
                "deployments": [
                    {"provider": "opnai", "model": "gpt-4o"},
                    {"provider": "claude", "model": "claude-x", "reasoning": True},
                    {"provider": "openai", "model": "gpt-4o", "default_service_tier": "auto"},
                    {"provider": "openai", "modle": "gpt-4o"},
                ],
            },
        },
    }
    assert problems(data) == [
        "models.m.deployments[3].model: Field required",
        "models.m.fallback: Extra inputs are not permitted",
        "models.m.deployments[0].provider: unknown provider 'opnai'",
        "models.m.deployments[1].reasoning: only for a deployment of OpenAI's API (openai, azure), not of 'anthropic' "
        "(its models' reasoning is told by their names)",
        "models.m.deployments[2].default_service_tier: 'auto' is the model's own prices, which need no setting: "
        "leave it out",
    ]


def test_a_kept_model_named_as_a_provider_left_out_has_its_deployments_checked_once() -> None:
    """The names left out are the providers' and the models' alike: a model kept, named as a provider that was not
    (a provider `groq` and its model `groq`), had its deployments' problems said twice. Found by review."""
    data = {
        "providers": {"groq": {"type": "openai", "base_url": 5}, "openai": {"type": "openai"}},
        "models": {
            "groq": {"deployments": [{"provider": "opnai", "model": "llama"}], "price": {"input": 1, "output": 2}}
        },
    }
    said = problems(data)
    assert [p for p in said if "unknown provider 'opnai'" in p] == [
        "models.groq.deployments[0].provider: unknown provider 'opnai'"
    ]


def test_a_provider_or_model_with_errors_of_its_own_is_not_said_to_be_missing_where_it_is_named() -> None:
    data = {
        "providers": {"p": {"type": "openai", "base_url": "ftp://up"}},
        "models": {
            "m": {"deployments": [{"provider": "p", "model": "a"}], "fallbacks": ["n"]},
            "n": {"deployments": []},
        },
    }
    found = problems(data)
    assert [p.split(":")[0] for p in found] == ["providers.p.base_url", "models.n.deployments"]


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("", "is empty (or only comments)"),
        ("# providers and models to come\n", "is empty (or only comments)"),
        ("gateway:\n  fee: {percent: 5}\n", "names no provider and no model"),
    ],
)
def test_a_config_file_naming_no_provider_and_no_model_is_refused(tmp_path: Path, written: str, said: str) -> None:
    """An empty file (a volume not mounted, a file an editor truncated) or one of settings alone passed as `ok: 0
    providers, 0 models`, and the gateway it started answered every request 404 model_not_found. Found by review."""
    path = tmp_path / "gateway.yaml"
    path.write_text(written)
    with pytest.raises(ConfigError) as caught:
        load_config(path, TYPES)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: the config {said}, so the gateway would answer every request 404")
    assert "leave out --config and GATEWAY_CONFIG for the shipped default (handler/default_config.yaml" in problem
    path.write_text(written + "providers:\n  p: {type: openai}\n")  # (providers alone: models to come)
    assert list(load_config(path, TYPES).providers) == ["p"]


@pytest.mark.parametrize(
    "section",
    [
        "gateway:\n  # region: us-east-1\n",
        "observability:\n  # metrics_port: 9100\n",
        *(
            f"gateway:\n  {name}:\n  #  {entry}\n"
            for name, entry in [
                ("timeouts", "request: 300"),
                ("fee", "percent: 10"),
                ("limits", "connections: 500"),
                ("priced_options", "web_search_usd: 0.01"),
                ("key_minting", "per_minute: 10"),
                ("trusted_proxies", "- 10.0.0.0/8"),
                ("region_latency_ms", "us-east-1: {openai: 20}"),
            ]
        ),
        "gateway:\n  priced_options:\n    service_tier:\n    #  flex: 1.0\n",
    ],
)
def test_a_settings_section_whose_every_entry_is_commented_out_takes_its_defaults(section: str) -> None:
    """`gateway:` or `observability:`, or a section of `gateway:` (`timeouts:`), with every entry commented out is
    YAML's null: the section's defaults, as if it were absent, not "gateway.timeouts: Input should be a valid
    dictionary" and a gateway that does not start."""
    rest = "providers:\n  openai: {type: openai, api_key: k}\n"
    rest += "models:\n  m: {deployments: [{provider: openai, model: gpt-4o}]}\n"
    text = section + rest
    config = parse_config(yaml.safe_load(text), REGISTRY)
    assert config == parse_config(yaml.safe_load(rest), REGISTRY)


def test_a_region_row_of_measured_latencies_whose_every_entry_is_commented_out_measures_none() -> None:
    """A region's row of `region_latency_ms` with its entries commented out is null in YAML: no round trip measured
    from that region, not "Input should be a valid dictionary" and a gateway that does not start."""
    text = "gateway:\n  region_latency_ms:\n    us-east-1:\n    #  eu-west-1: 80\n    eu-west-1: {us-east-1: 80}\n"
    text += "providers:\n  openai: {type: openai, api_key: k}\n"
    text += "models:\n  m: {deployments: [{provider: openai, model: gpt-4o}]}\n"
    latencies = parse_config(yaml.safe_load(text), REGISTRY).gateway.region_latency_ms
    assert latencies == {"us-east-1": {}, "eu-west-1": {"us-east-1": 80.0}}


def test_a_provider_and_a_model_left_out_hide_nothing_named_as_the_other() -> None:
    """The providers and the models left out were one set of names: a model left out (`groq`, a misspelt key) hid a
    deployment naming a provider `groq` the file does not have, and a provider left out (`small`) a fallback naming a
    model `small` it does not have, each said a round later. Found by review (mergerev35b)."""
    price = {"input": 1, "output": 2}
    model_out = {
        "providers": {"openai": {"type": "openai"}},
        "models": {
            "groq": {"deployments": [{"provider": "openai", "model": "llama"}], "price": price, "fallback": ["x"]},
            "other": {"deployments": [{"provider": "groq", "model": "llama"}], "price": price},
        },
    }
    assert "models.other.deployments[0].provider: unknown provider 'groq'" in problems(model_out)
    provider_out = {
        "providers": {"openai": {"type": "openai"}, "small": {"type": "openai", "base_url": 5}},
        "models": {
            "big": {"deployments": [{"provider": "openai", "model": "gpt"}], "price": price, "fallbacks": ["small"]}
        },
    }
    assert "models.big.fallbacks[0]: unknown model 'small'" in problems(provider_out)


LEFT_OUT_DEPLOYMENTS = [{"provider": "openai", "model": "gpt-4o"}]


def left_out_problems(models: dict[str, Any]) -> list[str]:
    providers = {"openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY"}}
    with pytest.raises(ConfigError) as refused:
        parse_config({"providers": providers, "models": models}, set(REGISTRY))
    return refused.value.problems


@pytest.mark.parametrize(
    ("spec", "other", "said"),
    [
        (
            {"deployments": LEFT_OUT_DEPLOYMENTS, "fallback": ["x"], "price": {"input": -1.0, "output": 1.0}},
            "models.m.fallback: Extra inputs are not permitted",
            "models.m.price.input: Input should be greater than or equal to 0",
        ),
        (
            {"deployments": LEFT_OUT_DEPLOYMENTS, "price": {"input": -1.0, "output": "x"}},
            "models.m.price.output: Input should be a valid number, unable to parse string as a number",
            "models.m.price.input: Input should be greater than or equal to 0",
        ),
        (
            {"deployments": [{"provider": "openai"}], "price": {"input": 1.0, "output": math.inf}},
            "models.m.deployments[0].model: Field required",
            "models.m.price.output: Input should be a finite number",
        ),
    ],
)
def test_a_bad_price_amount_is_said_with_its_models_other_errors(spec: dict[str, Any], other: str, said: str) -> None:
    """A model left out for an error of its own (a misspelt field, a price field of the wrong type, a deployment
    missing its model) has its price's bad amounts said in the same run, as pydantic said them when they were the
    fields' own bounds (`amount_problems`, which runs on the models kept). Found by review (mergerev36d)."""
    found = left_out_problems({"m": spec})
    assert other in found, found
    assert said in found, f"the bad amount is not said in the same run (it was before 2df134c0): {found}"
