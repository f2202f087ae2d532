"""Provider keys held in SSM Parameter Store or Secrets Manager, kept current while the process runs.

A provider's `headers` values held there (`headers: {authorization: ssm:/path}`, an Azure resource's Entra ID token)
are credentials too, and kept current the same way: what follows of a key holds for each of them. Until such a header
is first read, its provider's requests are not sent (`ProviderAdapter.unread_headers`): they answer the 503 below.

Each is read at start (`build_adapters`), then read again:
- every `gateway.provider_key_refresh_seconds` (300 s by default): a key rotated in its store is in use within that
  time. The read runs on a thread of its own, started by the first request after it is due (`check`, one clock
  comparison when none is): no request waits for it, and the key held serves until its successor is read.
- `RETRY_S` after a read that failed (sooner, if keys are read again more often than that): a store that throttled,
  timed out or refused (not one that answered that the key is absent, which leaves the provider without a key, as at
  start). The failure is logged with the store's error code, never a value; the provider's requests meanwhile get a
  503 `provider_not_configured` that says the key could not be read and when it is read again (`retry-after`), and a
  request that needs it waits up to `WAIT_S` for a read under way (`settle`), or until its deadline if sooner (the
  deadline's 504). A value read that no HTTP header can carry (a non-ASCII character, a line break inside it:
  `config.header_value_problem`) is such a failure too, said without the value (at start it is a config error); the
  whitespace around a value is no part of it (`config.resolve_credential`).
- all of them after a SnapStart restore (`reread`): the snapshot may have been taken hours before, or with a read
  that failed.
- once when the provider refuses the key (a 401): a key rotated since its last read is used at once (`renewed`).

A provider key (or header) given literally or by `env:NAME` is not read again: the environment does not change
under a running process.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeGuard

from handler import redaction
from handler.config import SECRET_STORES, SecretFetcher, SecretUnreadableError, reference_name
from handler.pipeline.keys import split_key
from handler.ports import ProviderAdapter
from handler.telemetry.observability import logger

if TYPE_CHECKING:
    from handler.pipeline.stored_keys import ProviderKeys

RETRY_S = 5.0  # an unreadable key is read again this long after the failure, by the next request after it
WAIT_S = 2.0  # the most a request that needs an unreadable key waits for its read under way
RESTORE_WAIT_S = 5.0  # the most a SnapStart restore waits for the keys' reads (a slower one goes on on its own)


def install(adapter: ProviderAdapter, reference: str | None, secret: str | None) -> None:
    """Give `adapter` the key `reference` resolved to (None: it has none). One of this gateway's own keys (a client's
    environment, say) is refused: it must never be sent upstream. The key is registered as a secret, in place of
    the one it replaces (`redaction.register_current`)."""
    refused = None
    if secret is not None and split_key(secret.strip()) is not None:
        refused = reference_name(reference or "")
        logger.warning(f"provider {adapter.name}: {refused} holds a gateway key (gwk_...), not a provider key; ignored")
        secret = None
    redaction.register_current(f"provider {adapter.name}", secret)
    adapter.secret = secret
    adapter.refused_reference = refused
    adapter.unread = None


def unreadable(adapter: ProviderAdapter, failure: SecretUnreadableError, retry_s: float = RETRY_S) -> None:
    """Mark `adapter`'s key as not read (`failure`); a key it holds from an earlier read stays in use."""
    logger.warning(
        f"provider {adapter.name}: its key {failure}; "
        + ("the key read before stays in use" if adapter.secret else "its requests answer 503 until it is read")
        + f"; read again in {retry_s:g} s"
    )
    if not adapter.secret:
        adapter.unread = failure.reason


# The schemes an `authorization` value names before its credential: an upstream may echo the credential alone. Besides
# HTTP's own, those of API keys (Elastic's `ApiKey`, Dynatrace's `Api-Token`, fal's `Key`, Splunk's HEC `Splunk`),
# which an OTLP collector's header carries as often as a `Bearer` token.
AUTH_SCHEMES = frozenset({"bearer", "basic", "token", "apikey", "api-key", "api-token", "key", "splunk"})


def header_secrets(value: str) -> tuple[str, ...]:
    """A header's value as secrets to redact: itself, and the credential after its scheme (`Bearer <token>`); a Basic
    credential decoded as well (`basic_secrets`)."""
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if scheme.lower() not in AUTH_SCHEMES or not credential:
        return (value,)
    if scheme.lower() == "basic":
        return (value, credential, *basic_secrets(credential))
    return (value, credential)


def basic_secrets(credential: str) -> tuple[str, ...]:
    """What a Basic credential (the base64 of `user:password`) holds that an upstream may quote back decoded (a proxy's
    401 `invalid credentials user:password`): `user:password`, and the password alone unless it reads as ordinary text
    (letters alone, in one case or capitalised, `sunshine`, `Welcome`; digits alone, `20242025`), which redacted from
    every answer would eat that word or number wherever a model wrote it. The user alone is no secret (`admin`, a
    service's name). Each is registered only from `redaction.MIN_SECRET_LENGTH` characters on, as every secret is; a
    credential that is no base64 of UTF-8 text gives nothing more, nor does one without a password."""
    try:
        decoded = base64.b64decode(credential, validate=True).decode()
    except ValueError:  # (binascii.Error and UnicodeDecodeError are ValueErrors)
        return ()
    _, colon, password = decoded.partition(":")
    if not colon:
        return (decoded,)
    if not password:  # (a user alone)
        return ()
    worded = password.isalpha() and (password.islower() or password.isupper() or password.istitle())
    return (decoded,) if worded or password.isdigit() else (decoded, password)


def header_holder(provider: str, header: str) -> str:
    """Who holds a header's value read from a secret store, for `redaction.register_current`."""
    return f"provider {provider} headers.{header}"


def install_header(adapter: ProviderAdapter, header: str, value: str) -> None:
    """Give `adapter` the value read for its header `header`, registered as a secret in place of the one before (which
    stays registered too: `redaction.register_current`). The headers are replaced whole: a request building its
    headers meanwhile reads the old mapping or the new one, never one changing under it."""
    redaction.register_current(header_holder(adapter.name, header), *header_secrets(value))
    adapter.options["headers"] = {**adapter.options.get("headers", {}), header: value}
    if header in adapter.unread_headers:
        adapter.unread_headers = {h: why for h, why in adapter.unread_headers.items() if h != header}


def header_unreadable(
    adapter: ProviderAdapter, header: str, failure: SecretUnreadableError | str, retry_s: float = RETRY_S
) -> None:
    """Mark `adapter`'s header `header` as not read (`failure`, or why it was not); a value it holds from an earlier
    read stays in use. Without one its requests are not sent (`ProviderAdapter.unread_headers`)."""
    held = header not in adapter.unread_headers and bool(adapter.options.get("headers", {}).get(header))
    logger.warning(
        f"provider {adapter.name}: its header {header}: {failure}; "
        + ("the value read before stays in use" if held else "its requests answer 503 until it is read")
        + f"; read again in {retry_s:g} s"
    )
    if not held:
        adapter.unread_headers = {**adapter.unread_headers, header: str(failure)}


def is_stored(reference: str | None) -> TypeGuard[str]:
    """Whether `reference` names a value in SSM or Secrets Manager (one read again while the process runs)."""
    return reference is not None and reference.startswith(SECRET_STORES)


class NoStoredKeys:
    """The provider keys of a process none of whose keys (nor header values) is held in a secret store: nothing to
    read again, and `stored_keys` (its threads, its locks) never imported."""

    def check(self) -> None:
        return None

    async def settle(self, within: float | None = None) -> bool:
        return False

    async def renewed(
        self, adapter: ProviderAdapter, refused: str | None, headers: Mapping[str, str] | None = None
    ) -> bool:
        return False

    async def reread(self) -> None:
        return None


def held_keys(
    adapters: Mapping[str, ProviderAdapter],
    references: Mapping[str, str | None],
    refresh_s: float,
    environ: Mapping[str, str] | None = None,
    fetch: SecretFetcher | None = None,
    headers: Mapping[str, Mapping[str, str]] | None = None,
) -> ProviderKeys | NoStoredKeys:
    """What keeps the process's stored provider keys and header values current (`ProviderKeys`), or, with none held
    in a store, `NoStoredKeys`."""
    stored = any(is_stored(ref) for ref in references.values()) or any(
        is_stored(ref) for refs in (headers or {}).values() for ref in refs.values()
    )
    if not stored:
        return NoStoredKeys()
    from handler.pipeline.stored_keys import ProviderKeys  # (a process with a key in a store: on first use)

    return ProviderKeys(adapters, references, refresh_s, environ, fetch, headers=headers)
