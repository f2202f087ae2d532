"""The config file: YAML validated by pydantic, with errors that name the offending path.

Secrets are references (`env:NAME`, `ssm:/path`, `secretsmanager:NAME`), resolved at start by `resolve_secret`
(a provider key held in SSM or Secrets Manager is read again while the process runs:
handler/pipeline/provider_keys.py); a literal key in the file is accepted but discouraged.
"""

# No `from __future__ import annotations` here: pydantic would evaluate every field's annotation from its string
# when the class is made, in the cold start; as objects they come from the cached bytecode.
import ipaddress
import math
import operator
import os
from collections.abc import Callable, Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator


class ConfigError(Exception):
    """The config is invalid; `problems` lists one `path: message` line each. `validated`: what of the file did pass
    its own checks (the sections and entries without an error), for the checks that need the adapters to run on
    (`handler.pipeline.gateway.unread_options`), so one run names every error of the file."""

    def __init__(self, problems: list[str], validated: "Config | None" = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.validated = validated


class SecretUnreadableError(Exception):
    """A secret's store (SSM, Secrets Manager) could not be asked or did not answer (throttled, unreachable,
    access denied): not the same as a secret that is not there. The message names the reference and the error's
    code, never a value."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"{reference} could not be read ({reason})")
        self.reference = reference
        self.reason = reason


def http_url(value: str) -> str:
    """`value` if it is an http:// or https:// URL with a host: taken, `htp:/not a url` would fail every request to
    the provider (502 `unsupported URL scheme`); an Azure or proxy URL without one, the same."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        # (One with a user and password, or a query, which may hold a key, is not echoed.)
        shown = "the URL" if any(c in value for c in "@?#") else f"'{value}'"
        raise ValueError(f"{shown} is not an http:// or https:// URL with a host (https://HOST/PATH)")
    return value


def api_base_url(value: str) -> str:
    """`value` if it is an `http_url` an API's path can be added to (a provider's or a deployment's `base_url`: the
    adapters send to `{base_url}/chat/completions`): no query or fragment (`https://api.openai.com/v1?api-version=1`
    sent every request to `/v1` with the query `api-version=1/chat/completions`, a 404 from the provider and a 502 to
    the client), and no user or password (`https://user:pw@host`: never sent, and its host read as `user`). Neither
    is shown: a query may hold a key, as a password does."""
    http_url(value)
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "the URL holds a user name or password, which the gateway never sends: give the provider's credentials "
            "as its api_key or headers (`headers: {authorization: env:NAME}`), and the URL as https://HOST/PATH"
        )
    if "?" in value or "#" in value:
        part = "a query (?...)" if "?" in value else "a fragment (#...)"
        bare = f"{parts.scheme}://{parts.netloc}{parts.path}"
        raise ValueError(
            f"'{bare}' is followed by {part}, and the API's paths are added to the URL (`{bare}/chat/completions`): "
            "give the URL alone (an Azure resource's api-version is its `api_version` option)"
        )
    return value


def ip_network(value: str) -> str:
    """`value` if it is an IP address or CIDR range (`gateway.trusted_proxies`): taken, `not-a-cidr` would stop the
    gateway starting, a traceback after it said it listened."""
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address or CIDR range (10.0.0.0/8, 2001:db8::/32)") from None
    return value


# A region names an endpoint's host (Bedrock's `bedrock-runtime.REGION.amazonaws.com`) and is written in the
# `x-gateway-route` header (`provider/model@REGION=200`): one word, as every cloud spells its regions. (Checked
# without a regular expression: compiling one would cost every cold start, which reads the config.)
REGION_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def region_name(value: str) -> str:
    """`value` if it can name a region: taken, `eu central/1` would fail each request to it."""
    if not (0 < len(value) <= 64 and value[0].isascii() and value[0].isalnum() and REGION_CHARS.issuperset(value)):
        raise ValueError(f"'{value}' is not a region name (letters, digits, '-', '_' or '.', as eu-central-1)")
    return value


# A secret's reference: its prefix, and the words a mistyped one starts with (`Env:`, `envv:`, `secret:`), which would
# be taken as a literal key and sent to the provider as one.
REFERENCE_KINDS = ("env", "ssm", "secretsmanager")
REFERENCE_LOOKALIKES = ("env", "ssm", "secret", "aws", "parameter", "param")
REFERENCE_FORMS = "env:NAME, ssm:/path or secretsmanager:NAME (lowercase, with a name), or the key itself"


def _mistyped_word(word: str) -> bool:
    """Whether `word`, the part of an `api_key` before its first `:`, is a reference's prefix mistyped: another
    case, a letter more, less, another or two swapped (`envv`, `sm`), or a word that starts one (`secrets`)."""
    lowered = word.lower()
    if not (2 <= len(lowered) <= 20 and lowered.replace("_", "").replace("-", "").isalpha()):
        return False
    return lowered.startswith(REFERENCE_LOOKALIKES) or any(_one_edit_apart(lowered, kind) for kind in REFERENCE_KINDS)


def _one_edit_apart(a: str, b: str) -> bool:
    """Whether `a` is `b` with at most one letter added, removed or replaced, or two neighbours swapped."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    rest_a, rest_b = a[i:], b[i:]
    return (
        rest_a[1:] == rest_b[1:]
        or rest_a == rest_b[1:]
        or rest_a[1:] == rest_b
        or (len(rest_a) >= 2 and rest_a[:2] == rest_b[1::-1] and rest_a[2:] == rest_b[2:])
    )


def secret_reference(value: str) -> str:
    """`value` if it is a reference (`env:NAME`, `ssm:/path`, `secretsmanager:NAME`) or reads as a literal key:
    `Env:OPENAI_API_KEY`, `envv:X`, `${OPENAI_API_KEY}` and `env:` with no name would be sent to the provider as
    the key, or name an empty variable. The message shows no more of the value than its prefix."""
    kind, colon, name = value.partition(":")
    if colon and kind in REFERENCE_KINDS:
        noun = "environment variable" if kind == "env" else "secret"
        if not name:
            raise ValueError(f"'{kind}:' names no {noun}: write {REFERENCE_FORMS}")
        if any(c.isspace() for c in name) or (kind == "env" and any(c in "${}" for c in name)):
            raise ValueError(
                f"'{kind}:' is not followed by the {noun}'s name (no spaces, $ or {{}}): write {REFERENCE_FORMS}"
            )
        return value
    if value.startswith("$") or (colon and _mistyped_word(kind)):
        shown = "${...}" if value.startswith("${") else "$..." if value.startswith("$") else f"{kind}:..."
        raise ValueError(
            f"'{shown}' is not a secret reference, and would be sent as the key itself: write {REFERENCE_FORMS}"
        )
    return value


def latency_table(value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """`gateway.region_latency_ms` with its regions in lowercase at both levels, as every other region is taken in
    any case (`routing.place`, a region pin): looked up as written, `NorthEurope` missed a round trip measured to
    `northeurope`, which ranked the deployment on its estimate. Two names of one region (`NorthEurope` and
    `northeurope`) are refused: which of their figures holds could not be told."""
    table: dict[str, dict[str, float]] = {}
    written: dict[str, str] = {}  # (the name each lowercased one was written as, for the error)
    for source, measured in value.items():
        if (lowered := source.lower()) in written:
            raise ValueError(f"'{written[lowered]}' and '{source}' name one region, in two cases: write it once")
        written[lowered] = source
        into = table[lowered] = {}
        names: dict[str, str] = {}
        for region, rtt in measured.items():
            if (lowered := region.lower()) in names:
                raise ValueError(
                    f"'{source}.{names[lowered]}' and '{source}.{region}' name one region, in two cases: write it once"
                )
            names[lowered] = region
            into[lowered] = rtt
    return table


ApiBaseUrl = Annotated[str, AfterValidator(api_base_url)]
IpNetwork = Annotated[str, AfterValidator(ip_network)]
Region = Annotated[str, AfterValidator(region_name)]
SecretReference = Annotated[str, AfterValidator(secret_reference)]


# Each part's own validator is built on its first direct use (`defer_build`); Config's, built at import, holds
# them all: built once each, instead of once in every model that nests them (a Lambda cold start builds it). A
# part left out of the file is validated from `{}` by that validator too (`validate_default`), not built apart.
# (A config each, not a base class: a model class costs a cold start about 0.4 million instructions.)
STRICT = ConfigDict(extra="forbid", defer_build=True)


class ProviderConfig(BaseModel):
    """A named provider instance. Fields beyond these are adapter options (`api_version`, ...)."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    type: str
    api_key: SecretReference | None = None
    base_url: ApiBaseUrl | None = None
    region: Region | None = None

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {}) | ({"base_url": self.base_url} if self.base_url else {})

    def key_reference(self, default_env: str | None) -> str | None:
        """Where its key is read: its `api_key`, else its type's environment variable (`default_env`); none with
        `auth: none` and no `api_key` (a local server's: the environment's key is another provider's)."""
        if self.api_key or (self.model_extra or {}).get("auth") == "none":
            return self.api_key
        return f"env:{default_env}" if default_env else None


class DeploymentConfig(BaseModel):
    """One place a public model is served: provider instance, upstream model, region."""

    model_config = ConfigDict(extra="allow", defer_build=True)

    provider: str
    model: str
    region: Region | None = None
    base_url: ApiBaseUrl | None = None
    reasoning: bool | None = Field(
        default=None,
        description="whether the upstream model reasons (OpenAI's o-series, gpt-5): by its name unless set, which an "
        "Azure deployment's or a proxy's own name may not tell",
    )
    default_service_tier: str | None = Field(
        default=None,
        description="the OpenAI service tier its project runs a request that names none at, where it is not the "
        "default (a project whose default tier is priority): such requests are reserved at that tier's price",
    )


class LongContextPrice(BaseModel):
    model_config = STRICT

    threshold: int = Field(gt=0, description="prompt tokens above which the long-context prices apply")
    # (Each amount 0 or more and finite, checked in `_cross_check`: `amount_problems`.)
    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


class Price(BaseModel):
    """USD per 1M tokens."""

    model_config = STRICT

    # Each amount 0 or more and finite, checked in `_cross_check` (`amount_problems`): a pydantic bound on each field
    # (`ge=0`, `allow_inf_nan`) cost every Lambda cold start 2.2 million instructions.
    input: float
    # (Unset: an embedding model's, whose answers have no output tokens; a chat model's is refused, `_cross_check`.)
    output: float = 0.0
    cached_input: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None  # a write cached for an hour (Claude's, on Anthropic or Bedrock)
    audio_input: float | None = None  # audio prompt tokens, where they cost more
    audio_output: float | None = None  # audio output tokens (`completion_tokens_details.audio_tokens`); none: no audio
    long_context: LongContextPrice | None = None
    # USD per search, in the unit the model's provider bills its searches in (Claude: each search; Gemini 3: each
    # query; Gemini 2.5: each grounded prompt; OpenAI's search models: each request), in place of
    # `gateway.priced_options.web_search_usd` for this model (which still decides whether searches run at all).
    web_search: float | None = None
    # Multipliers on all of these prices, by option and value, of the options of a Messages request passed through to
    # Anthropic that change them (`PRICE_OPTIONS`): `{speed: {fast: 6.0}, inference_geo: {us: 1.1}}`. Any other value
    # but `standard` and `global` (the prices above) is refused (400), as an unpriced option is. And OpenAI's
    # `service_tier` (`SERVICE_TIER`), whose prices differ by model: `{service_tier: {priority: 1.7, flex: 0.5}}`,
    # in place of `gateway.priced_options.service_tier` for the tiers it names. (One field, checked in
    # `_cross_check`: each field declared here costs every Lambda cold start, the bundled price table's too.)
    options: dict[str, dict[str, float]] | None = None


class ModelConfig(BaseModel):
    model_config = STRICT

    deployments: list[DeploymentConfig] = Field(min_length=1)
    price: Price | Literal["unknown"] | None = None
    fallbacks: list[str] = []
    kind: Literal["chat", "embedding"] = "chat"
    max_output_tokens: int | None = Field(default=None, gt=0)
    context_window: int | None = Field(default=None, gt=0)
    enforce_schema: bool = False


class FeeConfig(BaseModel):
    model_config = STRICT

    percent: float = 0.0
    per_request_usd: float = 0.0


class TimeoutConfig(BaseModel):
    """Timeouts in seconds. `total` bounds one attempt's answer from the request to its body's end, a stream
    included: a body that trickles in, each piece within `between_chunks`, still ends there. `request` bounds the
    whole request (every attempt, the gateway's retries and failover, a stream to its end): the gateway cuts it
    there as it cuts one at its `x-gateway-deadline-ms`, so that it never outlives its budget reservation.

    `request_head` and `request_body` bound a client's sending on `gateway serve` (handler/entry/server.py): a
    request's line and headers, from its connection's open or the answer before it; its body, from its head's end
    (at most `request`, which holds from the request's arrival)."""

    model_config = STRICT

    connect: float = 5.0
    first_byte: float = 120.0
    between_chunks: float = 60.0
    total: float = 900.0
    request: float = 900.0
    request_head: float = 15.0
    request_body: float = 60.0

    @property
    def body_s(self) -> float:
        """The bound on reading a request's body: `request_body`, within the whole request's (`request`)."""
        return min(self.request_body, self.request)


class LimitsConfig(BaseModel):
    """Bounds on what an upstream may send, and on a client's request headers and connections (`gateway serve`)."""

    model_config = STRICT

    upstream_header_bytes: int = 64 * 1024
    upstream_headers: int = 256
    upstream_body_bytes: int = 128 * 1024 * 1024  # (a non-streamed answer's body)
    request_header_bytes: int = 64 * 1024
    # The connections one `gateway serve` process (each worker) serves at once: a request on one past them is refused,
    # 503 `server_busy` (handler/entry/server.py).
    # Each takes a file descriptor, and its upstream connection another: `gateway serve` raises its open-file limit to
    # fit them, within the system's hard limit (past it, a warning at start).
    connections: int = 1000


class PricedOptions(BaseModel):
    """Request options that change what a provider bills. An option with no price here is refused (400), so a
    key's budget can never be spent at a price the gateway does not know."""

    model_config = STRICT

    # Multiplier on a model's token prices per OpenAI `service_tier`, for a model whose price sets none for that tier
    # (its `price.options.service_tier`: the bundled table's for OpenAI's models); `auto`/`default` are always allowed.
    service_tier: dict[str, float] = Field(default_factory=lambda: {"flex": 1.0})
    # USD per web search: a Chat Completions request that asks for it (`web_search_options`), and each search
    # a provider's own search tool runs (Anthropic's `web_search_*`, the Responses API's `web_search`). None:
    # `web_search_options` is refused and the search tools are left out (named dropped).
    web_search_usd: float | None = None  # (0 or more and finite: `SETTING_BOUNDS`)
    # Audio output (`modalities: [audio]`, `audio`): allowed at all. Its tokens are priced at each model's
    # `price.audio_output`; a deployment whose price has none cannot take such a request (the next may).
    audio_output: bool = False
    # `store: true` keeps the tenant's prompts and answers in the operator's provider account: off unless allowed.
    provider_store: bool = False

    @field_validator("service_tier", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        """`service_tier:` with every entry commented out (null in YAML) takes its default, as if left out."""
        return {"flex": 1.0} if value is None else value


class KeyMinting(BaseModel):
    """Limits on `POST /v1/keys` (child keys), on a key's whole family: `per_minute` counts a mint on the parent
    and on every ancestor, `max_children` the live keys under a root key at every depth."""

    model_config = STRICT

    per_minute: int = 30
    max_children: int = 1000
    # Keys in a chain, the new one and its ancestors: a request admits and settles on each of them in one
    # store transaction (DynamoDB takes at most 100 items in one, and a settlement adds three).
    max_depth: int = 32


class GatewaySettings(BaseModel):
    model_config = STRICT

    max_body_bytes: int = 8 * 1024 * 1024
    key_cache_seconds: float = 5.0
    # How often a provider key held in SSM or Secrets Manager is read again (a rotated key is in use within it);
    # one that could not be read is tried again sooner (handler/pipeline/provider_keys.py).
    provider_key_refresh_seconds: float = 300.0
    # When a reservation whose request did not settle is released; at least `timeouts.request` and
    # `RESERVATION_MARGIN_S` more (`_cross_check`): a live request's reservation is never released as a dead one's.
    reservation_ttl_seconds: float = 960.0
    default_max_output_tokens: int = 4096
    trusted_proxies: list[IpNetwork] = []
    fee: FeeConfig = Field(default={}, validate_default=True)
    timeouts: TimeoutConfig = Field(default={}, validate_default=True)
    limits: LimitsConfig = Field(default={}, validate_default=True)
    max_retries_per_deployment: int = 1
    region_latency_ms: Annotated[dict[str, dict[str, float]], AfterValidator(latency_table)] = {}
    priced_options: PricedOptions = Field(default={}, validate_default=True)
    key_minting: KeyMinting = Field(default={}, validate_default=True)
    # Responses API: how long stored responses live, and the secret (a reference, like `env:NAME`) that
    # seals reasoning for the client to send back; without it, one the gateway keeps in its store.
    responses_ttl_seconds: float = 30 * 86400
    responses_secret: SecretReference | None = None

    @field_validator(
        "trusted_proxies", "fee", "timeouts", "limits", "region_latency_ms", "priced_options", "key_minting",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _empty(cls, value: Any, info: ValidationInfo) -> Any:
        """A section of `gateway:` whose every entry is commented out (`timeouts:` alone, null in YAML) takes its
        defaults, as a commented-out top-level section does (`Config._empty`); so does a region's row of
        `region_latency_ms` (no round trip measured from it)."""
        if info.field_name == "region_latency_ms" and isinstance(value, dict):
            return {source: {} if measured is None else measured for source, measured in value.items()}
        if value is not None:
            return value
        return [] if info.field_name == "trusted_proxies" else {}


class ObservabilityConfig(BaseModel):
    """`observability`: where the gateway's traces go, and a port of its own for `/metrics` (docs/observability.md;
    metrics are always on: `/metrics` for an admin key, CloudWatch EMF on Lambda)."""

    model_config = STRICT

    # An `OtlpConfig` (handler/otlp_config.py) once `parse_config` has validated it: apart, and only where a
    # config has one. Most leave it out: its validator inside Config's cost every Lambda cold start about 4 million
    # instructions, and the model's class, made in this module, 3 million more.
    otlp: Any = None
    # `gateway serve` also answers GET /metrics with no key here: bind it where only Prometheus reaches.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = Field(default="127.0.0.1", min_length=1)


class Config(BaseModel):
    """The whole config file."""

    model_config = ConfigDict(extra="forbid", defer_build=False)

    gateway: GatewaySettings = Field(default={}, validate_default=True)
    observability: ObservabilityConfig = Field(default={}, validate_default=True)
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}

    @field_validator("gateway", "observability", "providers", "models", mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        """A section whose every entry is commented out (`models:` alone, which YAML reads as null) names none: the
        file is taken as one without it is (its defaults; no models warned of), not refused as "Input should be a
        valid dictionary"."""
        return {} if value is None else value

    @field_validator("providers")
    @classmethod
    def _names(cls, value: dict[str, ProviderConfig]) -> dict[str, ProviderConfig]:
        for name in value:
            if not name or "/" in name or "@" in name:
                raise ValueError(f"provider name '{name}' may not be empty or contain '/' or '@'")
        return value


DEFAULT_CONFIG_RESOURCE = "default_config.yaml"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


# `models.NAME.price` is a union (`Price | 'unknown'`): pydantic says what failed against each member, each under
# the member's name (`price.Price.input`, and `price.literal['unknown']: Input should be 'unknown'`).
PRICE_MEMBERS = ("Price", "literal['unknown']")
PRICE_SHAPE = "a mapping of prices (USD per 1M tokens: input, output, ...) or 'unknown'"


def _problems(exc: ValidationError, within: tuple[str, ...] = ()) -> list[str]:
    """One `path: message` line per error, the path as the file writes it: a union member's name is no part of it
    (the `'unknown'` member's complaint is said only where the value is no mapping at all), nor pydantic's
    `Value error, ` of a message a validator wrote."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        message = err["msg"].removeprefix("Value error, ")
        member = next((i for i in range(1, len(loc)) if loc[i - 1] == "price" and loc[i] in PRICE_MEMBERS), None)
        if member is not None:
            if loc[member] != "Price":
                continue
            if member == len(loc) - 1:  # (the value is no mapping: said once, for both members)
                message = PRICE_SHAPE
            loc = loc[:member] + loc[member + 1 :]
        line = f"{_format_loc((*within, *loc))}: {message}"
        if line not in problems:
            problems.append(line)
    return problems


def parse_config(data: Any, known_types: set[str]) -> Config:
    """Validate a parsed YAML document; raise `ConfigError` naming each offending path: every one of the file, where
    its fields' own errors stopped the check (else a misspelt `gateway.fee_percent` is said alone, the provider
    a deployment misnames once that is fixed, and so on: a round each, a Lambda deploy each), the cross-checks run
    on what did validate (`_valid_parts`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(root): the config must be a mapping with providers and models"])
    try:
        config = _validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        parts = _valid_parts(data, exc)
    except ConfigError as exc:  # (`observability.otlp`'s own)
        problems = exc.problems
        parts = _valid_parts({**data, "observability": {}}, None)
    else:
        problems = _cross_check(config, known_types)
        if problems:
            raise ConfigError(problems, config)
        return config
    if parts is None:
        raise ConfigError(problems) from None
    validated, failed = parts
    later = _cross_check(validated, known_types, failed) + _left_out_deployments(data, validated, failed)
    raise ConfigError(problems + [p for p in later if p not in problems], validated) from None


def _validate(data: dict[str, Any]) -> Config:
    """`data` as a `Config`, its `observability.otlp` too (a `ConfigError` of its own, under its path)."""
    config = Config.model_validate(data)
    otlp = config.observability.otlp
    if otlp is not None:
        from handler.otlp_config import OtlpConfig

        if not isinstance(otlp, OtlpConfig):
            try:
                config.observability.otlp = OtlpConfig.model_validate(otlp)
            except ValidationError as exc:
                raise ConfigError(_problems(exc, ("observability", "otlp"))) from None
    return config


def _valid_parts(data: dict[str, Any], exc: ValidationError | None) -> tuple[Config, set[str]] | None:
    """The config of what in `data` has no error of `exc`'s: a section with one (`gateway:`, `observability:`) at its
    defaults, a provider or model with one left out, a top-level name that is no section dropped; and the providers
    and models left out, each by its section and name (`providers.NAME`, `models.NAME`: a deployment or a fallback
    naming one is not said again as naming nothing, and a provider's name hides no model's). None where what is left
    does not validate either."""
    kept = dict(data)
    failed: set[str] = set()
    for err in exc.errors() if exc is not None else ():
        section, *rest = err["loc"] or ("",)
        if section in ("providers", "models") and rest and isinstance(kept.get(section), dict):
            name = str(rest[0])
            kept[section] = {k: v for k, v in kept[section].items() if k != name}
            failed.add(f"{section}.{name}")
        elif section in ("gateway", "observability"):
            kept[section] = {}
        elif section in ("providers", "models"):  # (no mapping, or a name the section refuses)
            failed |= {f"{section}.{name}" for name in kept[section]} if isinstance(kept[section], dict) else set()
            kept[section] = {}
        else:
            kept.pop(str(section), None)
    try:
        return _validate(kept), failed
    except (ValidationError, ConfigError):
        return None


# The provider types whose deployments a `reasoning:` flag applies to (adapters/providers/reasoning.py
# `openai_reasons`): OpenAI's API, where a reasoning model takes other parameters and an operator may name it.
OPENAI_API_TYPES = ("openai", "azure")


# The options of a request passed through as written that a model's price may set multipliers for (`Price.options`),
# with the value at its plain price.
PRICE_OPTIONS = {"speed": "standard", "inference_geo": "global"}
# OpenAI's service tier, which a model's price may set multipliers for too (`Price.options`), of any request: each
# model has its own (priority is 2x for gpt-5, 1.7x for gpt-4o). Its tiers at the plain price are never priced.
SERVICE_TIER = "service_tier"
PLAIN_TIERS = ("auto", "default")
# Every tier OpenAI's API takes (it refuses any other, a 400 naming `service_tier`).
OPENAI_TIERS = (*PLAIN_TIERS, "flex", "scale", "priority")


# A price's amounts (USD per 1M tokens, a search's), each checked in `_cross_check` (`amount_problems`).
PRICE_AMOUNTS: Final = (
    "input", "output", "cached_input", "cache_write", "cache_write_1h", "audio_input", "audio_output", "web_search"
)  # fmt: skip


def amount_problems(where: str, price: Price | LongContextPrice | Mapping[str, Any]) -> list[str]:
    """Each amount of `price` (`where`: its path in the config; as read, or as written, for a model left out for
    another error) that is below 0, not a number, or infinite, said as pydantic says a bound: within `ge=0`, YAML's
    `.inf` made every request's worst case infinite, a 500 at request time for a config `config check` said was fine
    (found by review, oprev36). An amount of another type is pydantic's to say."""
    read = price.get if isinstance(price, Mapping) else lambda name: getattr(price, name, None)
    problems = []
    for name in PRICE_AMOUNTS:
        amount = read(name)
        if not isinstance(amount, int | float) or isinstance(amount, bool):
            continue
        if not amount >= 0:  # (a NaN too)
            problems.append(f"{where}.{name}: Input should be greater than or equal to 0")
        elif math.isinf(amount):
            problems.append(f"{where}.{name}: Input should be a finite number")
    long_context = read("long_context")
    if isinstance(long_context, LongContextPrice | Mapping):
        problems += amount_problems(f"{where}.long_context", long_context)
    return problems


def price_option_problems(where: str, price: Price) -> list[str]:
    """What is wrong with `price.options` (`where`: its path in the config): an option no request has, a service
    tier that is always at the plain price, or a multiplier that is negative or not a number (YAML's `.nan`,
    `.inf`)."""
    problems = []
    for name, rates in (price.options or {}).items():
        if name not in PRICE_OPTIONS and name != SERVICE_TIER:
            named = ", ".join([*PRICE_OPTIONS, SERVICE_TIER])
            problems.append(f"{where}.options.{name}: not a priced option (one of: {named})")
        problems += multiplier_problems(f"{where}.options.{name}", rates, tiers=name == SERVICE_TIER)
    return problems


def multiplier_problems(where: str, rates: Mapping[str, float], tiers: bool = False) -> list[str]:
    """What is wrong with `rates`, multipliers by value (`where`: their path in the config): one negative or not a
    number (YAML's `.nan`, `.inf`: a negative one credits a key's budget, a NaN poisons its sums); `tiers`: service
    tiers, where `auto` and `default` are always at the plain price (a multiplier for them would be ignored)."""
    problems = (
        [f"{where}.{tier}: always at the model's own prices, never multiplied" for tier in rates if tier in PLAIN_TIERS]
        if tiers
        else []
    )
    return problems + [
        f"{where}.{value}: not a multiplier (a finite number, 0 or more)"
        for value, rate in rates.items()
        if not (math.isfinite(rate) and rate >= 0)
    ]


def latency_problems(table: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Each round trip of `gateway.region_latency_ms` that is negative or not a number (YAML's `.nan`, `.inf`): a NaN
    orders nothing, so the deployment it measured kept its place ahead of nearer ones, and a negative one ranked its
    deployment ahead of the gateway's own region's."""
    return [
        f"gateway.region_latency_ms.{source}.{region}: not a round trip (a finite number of ms, 0 or more)"
        for source, measured in table.items()
        for region, rtt in measured.items()
        if not (math.isfinite(rtt) and rtt >= 0)
    ]


# What a reservation outlives its request's longest life (`timeouts.request`) by: the settlement's writes after the
# request ends (retried for seconds before the spool takes it), and the clocks of the other gateways on the store
# (another region's), which release an expired reservation by their own clock.
RESERVATION_MARGIN_S = 60.0


# The bounds of the gateway's numeric settings, checked with the config's cross-checks (`bound_problems`), in
# pydantic's words: as `Field(gt=0)` and the like, 23 constrained fields would be built into the settings' validators
# at every cold start (about 0.17 million instructions each).
SETTING_BOUNDS: Final[dict[str, dict[str, float]]] = {
    "fee.percent": {"ge": 0, "le": 100},
    "fee.per_request_usd": {"ge": 0},
    "timeouts.connect": {"gt": 0},
    "timeouts.first_byte": {"gt": 0},
    "timeouts.between_chunks": {"gt": 0},
    "timeouts.total": {"gt": 0},
    "timeouts.request": {"gt": 0},
    "timeouts.request_head": {"gt": 0},
    "timeouts.request_body": {"gt": 0},
    "limits.upstream_header_bytes": {"gt": 0},
    "limits.upstream_headers": {"gt": 0},
    "limits.upstream_body_bytes": {"gt": 0},
    "limits.request_header_bytes": {"gt": 0},
    "limits.connections": {"gt": 0},
    "key_minting.per_minute": {"ge": 1},
    "key_minting.max_children": {"ge": 1},
    "key_minting.max_depth": {"ge": 1, "le": 90},
    "max_body_bytes": {"gt": 0},
    "key_cache_seconds": {"ge": 0},
    "provider_key_refresh_seconds": {"gt": 0},
    "reservation_ttl_seconds": {"gt": 0},
    "default_max_output_tokens": {"gt": 0},
    "max_retries_per_deployment": {"ge": 0, "le": 5},
    "responses_ttl_seconds": {"gt": 0},
    "priced_options.web_search_usd": {"ge": 0},  # (unset: none)
}
# Each kind of bound: the comparison a value inside it passes, and pydantic's words for it.
BOUND_KINDS: Final[dict[str, tuple[Callable[[Any, Any], bool], str]]] = {
    "gt": (operator.gt, "greater than"),
    "ge": (operator.ge, "greater than or equal to"),
    "lt": (operator.lt, "less than"),
    "le": (operator.le, "less than or equal to"),
}


def bound_problems(settings: GatewaySettings) -> list[str]:
    """Each numeric setting outside its bound (`SETTING_BOUNDS`), as pydantic says it: `gateway.timeouts.connect:
    Input should be greater than 0` (a NaN is outside every bound). An infinite one is within `ge=0`, and refused as
    pydantic's `allow_inf_nan=False` refuses it: a fee of `.inf` made every request a 500 (its worst case no amount
    a budget can reserve), and a duration of it waits for ever."""
    problems = []
    for path, rules in SETTING_BOUNDS.items():
        value: Any = settings
        for part in path.split("."):
            value = getattr(value, part)
        if value is None:
            continue
        if isinstance(value, float) and math.isinf(value):
            problems.append(f"gateway.{path}: Input should be a finite number")
            continue
        for rule, bound in rules.items():
            inside, words = BOUND_KINDS[rule]
            if not inside(value, bound):
                problems.append(f"gateway.{path}: Input should be {words} {bound:g}")
                break
    return problems


def lifetime_problems(settings: GatewaySettings) -> list[str]:
    """What lets a request outlive its budget reservation: an attempt's `total` past the whole request's bound
    (it could never be reached), or a reservation TTL that does not outlast that bound by the margin; and a body's
    bound (`request_body`) past it, which could never be reached either."""
    timeouts = settings.timeouts
    problems = []
    if timeouts.total > timeouts.request:
        problems.append(
            f"gateway.timeouts.total: {timeouts.total:g} s is longer than gateway.timeouts.request "
            f"({timeouts.request:g} s), the bound on a whole request (every attempt, retries, failover, a stream to "
            "its end), so it could never be reached: lower it, or raise timeouts.request (and "
            "gateway.reservation_ttl_seconds with it)"
        )
    # (Only as written: the default's 60 s against a `request` the operator lowered, 2 s, refused that config, which
    # loaded before the bound came; the body's bound is then `request`'s, `TimeoutConfig.body_s`.)
    if "request_body" in timeouts.model_fields_set and timeouts.request_body > timeouts.request:
        problems.append(
            f"gateway.timeouts.request_body: {timeouts.request_body:g} s is longer than gateway.timeouts.request "
            f"({timeouts.request:g} s), the bound on a whole request, its body's reading included, so it could never "
            "be reached: lower it, or raise timeouts.request"
        )
    least = timeouts.request + RESERVATION_MARGIN_S
    if settings.reservation_ttl_seconds < least:
        problems.append(
            f"gateway.reservation_ttl_seconds: {settings.reservation_ttl_seconds:g} s would release the budget "
            f"reservation of a request still running: gateway.timeouts.request lets one run {timeouts.request:g} s, "
            f"and a reservation must outlast it by {RESERVATION_MARGIN_S:g} s (the settlement's writes, other "
            f"gateways' clocks); set it to at least {least:g}, or lower timeouts.request"
        )
    return problems


def project_tier_problems(where: str, dep: DeploymentConfig, config: Config) -> list[str]:
    """What is wrong with a deployment's `default_service_tier`: a tier only OpenAI's API has, and one that costs
    more than the default (`auto` and `default` are the model's own prices). Whether its model prices the tier is
    checked with the router, which resolves the prices (`Router`)."""
    tier = dep.default_service_tier
    provider = config.providers.get(dep.provider)
    if tier is None or provider is None:
        return []
    if provider.type not in OPENAI_API_TYPES:
        return [
            f"{where}.default_service_tier: only for a deployment of OpenAI's API ({', '.join(OPENAI_API_TYPES)}), "
            f"not of '{provider.type}'"
        ]
    if tier in PLAIN_TIERS:
        return [
            f"{where}.default_service_tier: '{tier}' is the model's own prices, which need no setting: leave it out"
        ]
    return []


def _deployment_problems(where: str, dep: DeploymentConfig, config: Config, failed: Collection[str]) -> list[str]:
    """What is wrong with a deployment: an upstream model's name that is blank or has spaces around it (checked here
    for the cold start's sake, as a public model's name is: `model: ""`, a template's unset variable, sent every
    request upstream with no model, the provider's 400 or 404 at request time); and against the providers, one it
    names that the file has not (or whose own errors are said already: `failed`), options its provider's type does
    not take."""
    problems = []
    if not dep.model.strip():
        problems.append(f"{where}.model: the upstream model's name may not be empty")
    elif dep.model != dep.model.strip():
        problems.append(f"{where}.model: '{dep.model}' has spaces around it: write '{dep.model.strip()}'")
    if dep.provider not in config.providers:
        said = f"providers.{dep.provider}" in failed
        return problems if said else [*problems, f"{where}.provider: unknown provider '{dep.provider}'"]
    if dep.reasoning is not None and (kind := config.providers[dep.provider].type) not in OPENAI_API_TYPES:
        problems.append(
            f"{where}.reasoning: only for a deployment of OpenAI's API ({', '.join(OPENAI_API_TYPES)}), not of "
            f"'{kind}' (its models' reasoning is told by their names)"
        )
    return problems + project_tier_problems(where, dep, config)


def _left_out_deployments(data: dict[str, Any], config: Config, failed: Collection[str]) -> list[str]:
    """The deployment problems of the models left out of `config` for errors of their own (a misspelt `fallback:`),
    each deployment that validates on its own checked as a kept model's is: a deployment naming provider `opnai` was
    said only once the model's own error was fixed, a round later."""
    models = data.get("models")
    if not isinstance(models, dict):
        return []
    problems: list[str] = []
    for model, spec in models.items():
        if f"models.{model}" not in failed:
            continue  # (kept: checked with the rest)
        raw_price = spec.get("price") if isinstance(spec, dict) else None
        if isinstance(raw_price, dict):
            # Its amounts' bounds too, as written, as pydantic said them with its other errors when they were the
            # fields' own (found by review, mergerev36d).
            problems += amount_problems(f"models.{model}.price", raw_price)
        deployments = spec.get("deployments") if isinstance(spec, dict) else None
        for i, raw in enumerate(deployments if isinstance(deployments, list) else ()):
            try:
                dep = DeploymentConfig.model_validate(raw)
            except ValidationError:
                continue  # (its own errors are said)
            problems += _deployment_problems(f"models.{model}.deployments[{i}]", dep, config, failed)
    return problems


def _cross_check(config: Config, known_types: set[str], failed: Collection[str] = ()) -> list[str]:
    """What no field's own check can say: settings against each other, and the names providers, models and
    fallbacks give one another. `failed`: the providers and models the file gives whose own errors are said already
    (`providers.NAME`, `models.NAME`, left out of `config`: `_valid_parts`), which a deployment or fallback may name."""
    problems = bound_problems(config.gateway)
    if not problems:  # (the lifetimes' check reads these settings as valid)
        problems += lifetime_problems(config.gateway)
    tiers = config.gateway.priced_options.service_tier
    problems += multiplier_problems("gateway.priced_options.service_tier", tiers, tiers=True)
    problems += latency_problems(config.gateway.region_latency_ms)
    for name, provider in config.providers.items():
        if provider.type not in known_types:
            kinds = ", ".join(sorted(known_types))
            problems.append(f"providers.{name}.type: unknown provider type '{provider.type}' (one of: {kinds})")
    for model, spec in config.models.items():
        # A model's name is what a client's `model` must say: no request (a client trims no name) could reach `""` or
        # `" gpt "`. (Checked here, not by a validator of `Config`'s: one more to build at
        # every cold start.)
        if not model.strip():
            problems.append(f"models: model name '{model}' may not be empty")
        elif model != model.strip():
            problems.append(f"models: model name '{model}' has spaces around it: write '{model.strip()}'")
        for i, dep in enumerate(spec.deployments):
            problems += _deployment_problems(f"models.{model}.deployments[{i}]", dep, config, failed)
        if isinstance(spec.price, Price):
            problems += amount_problems(f"models.{model}.price", spec.price)
            problems += price_option_problems(f"models.{model}.price", spec.price)
            if spec.kind == "chat" and "output" not in spec.price.model_fields_set:
                # (Its output tokens would be charged $0: only an embedding model's answer has none.)
                problems.append(
                    f"models.{model}.price.output: a chat model's price needs an output price (USD per 1M tokens), "
                    "or `kind: embedding` for a model whose answers have no output tokens"
                )
        for i, fallback in enumerate(spec.fallbacks):
            if fallback not in config.models:
                if f"models.{fallback}" not in failed:
                    problems.append(f"models.{model}.fallbacks[{i}]: unknown model '{fallback}'")
            elif fallback == model:
                problems.append(f"models.{model}.fallbacks[{i}]: a model cannot fall back to itself")
            elif (kind := config.models[fallback].kind) != spec.kind:
                # (Accepted, it would be passed over unsaid by every request: a chat request is never sent to an
                # embedding model.)
                problems.append(
                    f"models.{model}.fallbacks[{i}]: '{fallback}' is a model of kind '{kind}', and '{model}' of "
                    f"kind '{spec.kind}': a request is never sent to a model of another kind"
                )
    return problems


# libyaml's loader where PyYAML was built with it (its wheels are): the same documents, read several times faster
# than the pure-Python loader, which is a cold start's largest cost in reading the config and the price table.
SAFE_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # (CSafeLoader is no SafeLoader subclass)


def load_yaml(text: str) -> Any:
    """A YAML document as `yaml.safe_load` reads it."""
    return yaml.load(text, Loader=SAFE_LOADER)  # a safe loader either way


MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(SAFE_LOADER):  # type: ignore[misc]
    """`SAFE_LOADER` refusing a mapping that names a key twice (YAML forbids it; PyYAML keeps the last): two
    `openai:` providers or two `a:` models read as one, the other lost unsaid. Keys a merge (`<<: *base`) brings in
    may be written over, as YAML means them to be."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if not isinstance(key, str):
                    # (YAML 1.1 reads `yes:`, `off:`, `1:` or `2025-01-01:` as no string: every name in the config
                    # is one, and the error named the model `models[1].[key]`, not as written.)
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key_node.value} is read as {_scalar_kind(key)}, not as a name: quote it "
                        f"('{key_node.value}')",
                        key_node.start_mark,
                    )
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key '{key}' (first at line {first[key].start_mark.line + 1}): each name once",
                        key_node.start_mark,
                    )
                first[key] = key_node
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


def _scalar_kind(value: object) -> str:
    """What YAML read a key as that is no string, in its words: `the boolean true`, `a number`, `null`, `a date`."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "null"
    return "a number" if isinstance(value, int | float) else f"a {type(value).__name__}"


def yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    """A YAML error as one line naming the file, the line and the column (PyYAML's own message names
    `"<unicode string>"`, and the place twice)."""
    mark = getattr(exc, "problem_mark", None)
    if not isinstance(exc, yaml.MarkedYAMLError) or mark is None:
        return f"{source}: not valid YAML: {exc}"
    message = f"{source}: not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    context = exc.context_mark
    if exc.context and context is not None and (context.line, context.column) != (mark.line, mark.column):
        message += f" ({exc.context} at line {context.line + 1}, column {context.column + 1})"
    return message


def load_config(path: str | os.PathLike[str] | None, known_types: set[str]) -> Config:
    """Load the config at `path`, or the shipped default when `path` is None."""
    if path is None:
        text = resources.files("handler").joinpath(DEFAULT_CONFIG_RESOURCE).read_text()
        source = "default config"
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read the config file ({exc.strerror})"]) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:  # (a traceback, from `config check` and `serve`, for a Latin-1 comment)
            line = raw.count(b"\n", 0, exc.start) + 1
            raise ConfigError(
                [f"{path}: not UTF-8 text at byte {exc.start} (line {line}: 0x{raw[exc.start]:02x}): save it as UTF-8"]
            ) from None
        source = str(path)
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # (a safe loader)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(source, exc)]) from None
    modelless = no_model_problem(source, data)
    try:
        config = parse_config(data, known_types)
    except ConfigError as exc:
        raise ConfigError(exc.problems + [modelless] if modelless else exc.problems, exc.validated) from None
    if modelless:
        raise ConfigError([modelless], config)
    return config


def no_model_problem(source: str, data: Any) -> str | None:
    """The error of a config file naming no provider and no model (empty, only comments, or only `gateway:`
    settings): taken, it would be `ok: 0 providers, 0 models`, and `gateway serve` start and answer every request
    `404 model_not_found` (a volume not mounted, a file an editor truncated, settings meant to change the shipped
    default's). None where it names one, or is no mapping (an error of its own)."""
    if data is not None and (not isinstance(data, dict) or data.get("providers") or data.get("models")):
        return None
    what = "is empty (or only comments)" if not data else "names no provider and no model"
    return (
        f"{source}: the config {what}, so the gateway would answer every request 404 model_not_found: give it "
        "`providers:` and `models:` (docs/configuration.md), or leave out --config and GATEWAY_CONFIG for the shipped "
        "default (handler/default_config.yaml: OpenAI, Anthropic, Gemini, DeepSeek and Mistral models, each "
        "provider's key from its environment variable)"
    )


def no_model_warning(config: Config) -> str | None:
    """The warning of a config that names providers and no model: taken unsaid (`ok: 2 providers, 0 models`), it
    would have the gateway answer every request to a model `404 model_not_found`, a provider being called only for the
    models whose deployments name it. Said, not refused, by `config check`, `serve` and each process's start: such a
    gateway still serves its key, admin and usage routes and the dashboard, and its models may be to come (a file
    naming no provider either is refused: `no_model_problem`). None where it names a model, or no provider."""
    if config.models or not config.providers:
        return None
    first = next(iter(config.providers))
    return (
        f"the config names {len(config.providers)} provider{'s' if len(config.providers) > 1 else ''} and no model, "
        "so every request to a model is answered 404 model_not_found (a provider is called only for the models whose "
        f"deployments name it): add `models:`, e.g. `models: {{gpt-4o-mini: {{deployments: [{{provider: {first}, "
        "model: gpt-4o-mini}]}}` (docs/configuration.md)"
    )


SecretFetcher = Callable[[str, str], str | None]


def resolve_secret(
    reference: str | None,
    environ: Mapping[str, str] | None = None,
    fetch: SecretFetcher | None = None,
) -> str | None:
    """Resolve `env:NAME`, `ssm:/path` or `secretsmanager:NAME`; None when unset or absent.

    `fetch(kind, name)` reads SSM and Secrets Manager; the default builds boto3 clients on first
    use only, so a deployment without such references never pays boto3's import at cold start. A store that
    could not be read raises `SecretUnreadableError` (the default's; a `fetch` may raise it too).
    """
    if not reference:
        return None
    env = os.environ if environ is None else environ
    if reference.startswith("env:"):
        return env.get(reference[4:]) or None
    if reference.startswith("ssm:"):
        return (fetch or _aws_fetch)("ssm", reference[4:])
    if reference.startswith("secretsmanager:"):
        return (fetch or _aws_fetch)("secretsmanager", reference[len("secretsmanager:") :])
    return reference


def resolve_credential(
    reference: str | None,
    environ: Mapping[str, str] | None = None,
    fetch: SecretFetcher | None = None,
) -> str | None:
    """`resolve_secret` for a value sent in an HTTP header (a provider's key, a provider's or a trace collector's
    header), without the whitespace around it: a value written to its store from a file, or exported from one, ends
    in a newline, which no header can carry (every request failed as its provider unreachable, each counted on the
    provider's breaker). None where nothing else is left. (`gateway.responses_secret`, which keys the reasoning
    seal, is `resolve_secret`'s as it is: another key would open nothing sealed before.)"""
    secret = resolve_secret(reference, environ, fetch)
    return (secret.strip() or None) if secret is not None else None


# An HTTP field name is a token (RFC 9110, 5.6.2): a header named with a space, `x title`, sent as written would
# be refused by the provider (a 400 the client would take for its own).
TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot name an HTTP header, or None where it can."""
    if name and TOKEN_CHARS.issuperset(name):
        return None
    return "not a header's name (letters, digits and !#$%&'*+-.^_`|~, no spaces)"


def header_value_problem(value: str) -> str | None:
    """Why `value` cannot be sent as an HTTP header's value (a provider key is sent in one), naming the character and
    where it is, never the value; None where it can: visible ASCII, with spaces between. A non-ASCII character
    (`Café app`, a key pasted with a typographic dash) failed every request with a 500; a line break or another
    control character, as the provider unreachable (the HTTP client refuses to send it)."""
    for at, char in enumerate(value, 1):
        if not " " <= char <= "~":
            what = (
                "a non-ASCII character"
                if not char.isascii()
                else "a line break"
                if char in "\r\n"
                else f"a control character (0x{ord(char):02x})"
            )
            return f"holds {what} at character {at}, which no HTTP header can carry"
    return None


SECRET_STORES = ("ssm:", "secretsmanager:")


def reference_name(reference: str) -> str:
    """How a log line or an error may name a secret's reference: itself for `env:`, `ssm:` and
    `secretsmanager:` ones, never a literal key's value."""
    return reference if reference.startswith(("env:", *SECRET_STORES)) else "the literal api_key"


def reference_hint(reference: str | None, what: str = "the key") -> str:
    """Where an operator should put a missing secret (`what`), without revealing any value."""
    if not reference:
        return "set api_key in the provider's config"
    if reference.startswith("env:"):
        return f"set the environment variable {reference[4:]}"
    if reference.startswith(SECRET_STORES):
        kind, _, name = reference.partition(":")
        return f"store {what} in {kind} as {name}"
    return "replace the provider's literal api_key with a provider key (better: a reference such as env:NAME)"


def responses_secret(
    settings: GatewaySettings, environ: Mapping[str, str] | None = None, fetch: SecretFetcher | None = None
) -> str | None:
    """`gateway.responses_secret` resolved at start: None where none is set (the seal's key is then one the store
    keeps). A reference that resolves to nothing, or whose store cannot be read, is a `ConfigError` naming it, as an
    OTLP header's is: else `env:UNSET` would be replaced, unsaid, by the store's secret."""
    reference = settings.responses_secret
    if reference is None:
        return None
    try:
        secret = resolve_secret(reference, environ, fetch)
    except SecretUnreadableError as failure:  # (the environment's init fails, and is tried again)
        raise ConfigError([f"gateway.responses_secret: {failure}"]) from None
    if secret is None:
        shown, hint = (reference, reference_hint(reference, "the secret")) if reference else ("''", "write one")
        raise ConfigError(
            [
                f"gateway.responses_secret: {shown} resolves to nothing: {hint}, or leave responses_secret out (the "
                "seal's key is then one the gateway keeps in its store)"
            ]
        )
    return secret


# What SSM and Secrets Manager answer for a name they do not hold: the secret is absent, not unreadable.
ABSENT_CODES = frozenset({"ParameterNotFound", "ParameterVersionNotFound", "ResourceNotFoundException"})


def _aws_fetch(kind: str, name: str) -> str | None:
    # Deferred: boto3's import, a large part of a cold start, is for SSM/Secrets Manager references only. The
    # client comes from the AWS layer, so region, endpoints (`AWS_ENDPOINT_URL_SSM`, ...) and partition are
    # those of every AWS call.
    from adapters.aws import boto3_client

    try:
        if kind == "ssm":
            value = boto3_client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"].get("Value")
            return str(value) if value else None
        secret = boto3_client("secretsmanager").get_secret_value(SecretId=name).get("SecretString")
        return str(secret) if secret else None
    except Exception as exc:  # noqa: BLE001 - absent (None) or unreadable (raised), told apart by the error's code
        response = getattr(exc, "response", None)  # (botocore's ClientError: the service's error code)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        if code in ABSENT_CODES:
            return None
        # Only the code or the exception's class: botocore's messages quote no value, but nothing of it is needed.
        raise SecretUnreadableError(f"{kind}:{name}", str(code or type(exc).__name__)) from None
