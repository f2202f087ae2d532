"""Provider keys held in SSM or Secrets Manager, read again while the process runs (`ProviderKeys`)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapters.providers.registry import REGISTRY
from handler import redaction
from handler.config import ConfigError, SecretUnreadableError, parse_config
from handler.errors import ServiceUnavailableError
from handler.pipeline import stored_keys
from handler.pipeline.gateway import build_adapters, header_references, key_references
from handler.pipeline.routing import RouteControls, Router, any_model
from handler.pipeline.stored_keys import ProviderKeys
from handler.ports import ProviderAdapter

CONFIG = {
    "providers": {
        "openai": {"type": "openai", "api_key": "ssm:/gw/openai"},
        "anthropic": {"type": "anthropic", "api_key": "env:ANTHROPIC_KEY"},
    },
    "models": {"m": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
}


class Store:
    """SSM as `fetch` sees it: each read takes the next answer (the last repeats); an exception class is raised."""

    def __init__(self, *answers: str | None | type[Exception]) -> None:
        self.answers = list(answers)
        self.reads = 0

    def __call__(self, kind: str, name: str) -> str | None:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if isinstance(answer, type):
            raise SecretUnreadableError(f"{kind}:{name}", answer.__name__)
        return answer


class ThrottlingException(Exception):
    pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def keys_for(store: Store, clock: Clock, refresh_s: float = 300.0) -> tuple[ProviderKeys, ProviderAdapter]:
    config = parse_config(CONFIG, set(REGISTRY))
    adapters = build_adapters(config, REGISTRY, {"ANTHROPIC_KEY": "sk-ant-from-the-environment"}, store)
    keys = ProviderKeys(adapters, key_references(config, REGISTRY), refresh_s, {}, store, clock)
    return keys, adapters["openai"]


def settled(keys: ProviderKeys) -> None:
    """Wait for the reads under way."""
    for key in keys.stored:
        if key.reading is not None:
            key.reading.wait(5)


def test_only_keys_in_a_store_are_read_again() -> None:
    keys, _ = keys_for(Store("sk-one"), Clock())
    assert [key.reference for key in keys.stored] == ["ssm:/gw/openai"]


def test_a_key_rotated_in_its_store_is_in_use_after_the_refresh_interval_never_before() -> None:
    store, clock = Store("sk-old-key-000", "sk-new-key-111"), Clock()
    keys, adapter = keys_for(store, clock)
    clock.now += 299
    keys.check()
    settled(keys)
    assert adapter.secret == "sk-old-key-000" and store.reads == 1
    clock.now += 2
    keys.check()  # (a request's: the read runs on its own thread)
    settled(keys)
    assert adapter.secret == "sk-new-key-111" and store.reads == 2


def test_a_failed_read_keeps_the_key_read_before_and_is_tried_again_soon() -> None:
    store, clock = Store("sk-old-key-000", ThrottlingException, "sk-new-key-111"), Clock()
    keys, adapter = keys_for(store, clock, refresh_s=60)
    clock.now += 61
    keys.check()
    settled(keys)
    assert adapter.secret == "sk-old-key-000" and adapter.unread is None
    clock.now += 5
    keys.check()
    settled(keys)
    assert adapter.secret == "sk-new-key-111" and store.reads == 3


def test_a_key_unread_at_start_is_waited_for_by_a_request_that_needs_it() -> None:
    store, clock = Store(ThrottlingException, "sk-read-at-last"), Clock()
    keys, adapter = keys_for(store, clock)
    assert adapter.secret is None and adapter.unread == "ThrottlingException"
    assert asyncio.run(keys.settle()) is False  # not due yet: nothing read, the request is told to retry
    clock.now += 5
    assert asyncio.run(keys.settle()) is True
    assert adapter.secret == "sk-read-at-last" and adapter.unread is None


class HeldRead(Store):
    """A store whose reads after the first (at start) wait for `gate`: a read still under way meanwhile."""

    def __init__(self, *answers: str | None | type[Exception]) -> None:
        super().__init__(*answers)
        self.gate = threading.Event()

    def __call__(self, kind: str, name: str) -> str | None:
        if self.reads:
            self.gate.wait(5)
        return super().__call__(kind, name)


@pytest.mark.parametrize("within", [0.0, -0.5])
def test_a_wait_the_deadline_left_no_time_for_hops_no_thread_and_says_so_plainly(
    within: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose deadline left no time to wait for a key's read still under way: `settle` hopped a thread per
    read to wait 0 s, and told the deadline by raising `TimeoutError`. Now no thread, and None: the deadline cut the
    wait (the request's 504, as before)."""
    store, clock = HeldRead(ThrottlingException, "sk-read-at-last"), Clock()
    keys, adapter = keys_for(store, clock)
    hops: list[float] = []
    real = asyncio.to_thread

    async def to_thread(wait: Any, timeout: float) -> Any:
        hops.append(timeout)
        return await real(wait, timeout)

    monkeypatch.setattr(stored_keys.asyncio, "to_thread", to_thread)
    clock.now += 5  # (the unread key's read is due: `settle` starts it)
    try:
        assert asyncio.run(keys.settle(within)) is None
    finally:
        store.gate.set()
    settled(keys)
    assert adapter.secret == "sk-read-at-last" and hops == []


def test_a_401_has_the_key_read_again_at_most_once_per_retry_interval() -> None:
    """A revoked key still in the store: every request's 401 would otherwise read the store (and be throttled)."""
    store, clock = Store("sk-revoked-key-0"), Clock()
    keys, adapter = keys_for(store, clock)
    assert asyncio.run(keys.renewed(adapter, "sk-revoked-key-0")) is False
    assert asyncio.run(keys.renewed(adapter, "sk-revoked-key-0")) is False
    assert store.reads == 2  # at start, and at the first 401
    store.answers.append("sk-rotated-key-1")
    clock.now += 5
    assert asyncio.run(keys.renewed(adapter, "sk-revoked-key-0")) is True
    assert adapter.secret == "sk-rotated-key-1"
    # A request refused with the old key after another had the new one read: sent again, nothing read.
    assert asyncio.run(keys.renewed(adapter, "sk-revoked-key-0")) is True and store.reads == 3


def test_a_key_read_with_a_newline_after_it_is_sent_without_it_at_start_and_read_again() -> None:
    """A key written to SSM from a file ends in a newline: every request failed as the provider unreachable
    (`LocalProtocolError`), a 502 counted on its breaker. Found by review."""
    store, clock = Store("sk-old-key-000\n", "sk-new-key-111\r\n"), Clock()
    keys, adapter = keys_for(store, clock)
    assert adapter.secret == "sk-old-key-000"
    clock.now += 301
    keys.check()
    settled(keys)
    assert adapter.secret == "sk-new-key-111" and adapter.unread is None


def test_a_key_no_header_can_carry_is_refused_at_start_naming_where_it_is_never_the_key() -> None:
    """A key with a non-ASCII character (a typographic dash pasted with it) failed every request with a 500. Found
    by review."""
    with pytest.raises(ConfigError) as caught:
        keys_for(Store("sk-k\u00e9y-0123456789"), Clock())
    assert caught.value.problems == [
        "providers.openai.api_key: the key in ssm:/gw/openai holds a non-ASCII character at character 5, which no "
        "HTTP header can carry"
    ]


def test_a_key_read_again_that_no_header_can_carry_keeps_the_one_held_or_is_the_providers_503() -> None:
    """Rotated in its store to a value no header carries, a key was installed as read: every request a 500. Now the
    key held stays in use; with none held, the provider's requests answer the documented 503, saying why and where,
    never the value."""
    store, clock = Store("sk-old-key-000", "sk-new-k\u00e9y-111"), Clock()
    keys, adapter = keys_for(store, clock)
    clock.now += 301
    keys.check()
    settled(keys)
    assert adapter.secret == "sk-old-key-000" and adapter.unread is None and store.reads == 2

    store, clock = Store(ThrottlingException, "sk-new-k\u00e9y-111"), Clock()
    config = parse_config(CONFIG, set(REGISTRY))
    adapters = build_adapters(config, REGISTRY, {"ANTHROPIC_KEY": "sk-ant-from-the-environment"}, store)
    keys = ProviderKeys(adapters, key_references(config, REGISTRY), 300.0, {}, store, clock)
    clock.now += 5
    assert asyncio.run(keys.settle()) is False
    with pytest.raises(ServiceUnavailableError) as caught:
        Router(config, adapters, "us-east-1").plan("m", RouteControls(), any_model)
    assert caught.value.code == "provider_not_configured" and "k\u00e9y" not in str(caught.value)
    assert str(caught.value) == (
        "provider 'openai' for model 'm' has no API key: ssm:/gw/openai could not be read (its value holds a "
        "non-ASCII character at character 9, which no HTTP header can carry); the gateway reads it again within 5 s"
    )


def header_keys_for(
    store: Store, clock: Clock, kind: str = "openai", refresh_s: float = 300.0
) -> tuple[ProviderKeys, ProviderAdapter, Router]:
    """A provider whose credential is a header of its own held in SSM (`auth: none`, `headers: {authorization:
    ssm:/...}`: an Azure resource's Entra ID token), beside a header written in the config."""
    provider = {
        "type": kind,
        "auth": "none",
        "base_url": "https://resource.openai.azure.com" if kind == "azure" else "https://up.example.com/v1",
        "headers": {"authorization": "ssm:/gw/bearer", "x-title": "my-app"},
    }
    config = parse_config(
        {
            "providers": {"up": provider},
            "models": {"m": {"deployments": [{"provider": "up", "model": "m"}], "price": "unknown"}},
        },
        set(REGISTRY),
    )
    adapters = build_adapters(config, REGISTRY, {}, store)
    references = key_references(config, REGISTRY)
    keys = ProviderKeys(adapters, references, refresh_s, {}, store, clock, headers=header_references(config))
    return keys, adapters["up"], Router(config, adapters, "us-east-1")


@pytest.mark.parametrize("kind", ["openai", "azure"])
def test_a_header_rotated_in_its_store_is_sent_after_the_refresh_interval(kind: str) -> None:
    """A credential in `headers` was read once: a token rotated in SSM (an Entra ID token expires hourly) was never
    sent, every request a 401 until the process ended. Now it is read again as a key is, and both values stay
    redacted."""
    store, clock = Store("Bearer header-token-old-000", "Bearer header-token-new-111"), Clock()
    keys, adapter, _ = header_keys_for(store, clock, kind)
    assert adapter.headers()["authorization"] == "Bearer header-token-old-000"
    clock.now += 301
    keys.check()
    settled(keys)
    sent = adapter.headers()
    assert (sent["authorization"], sent["x-title"], store.reads) == ("Bearer header-token-new-111", "my-app", 2)
    assert "api-key" not in sent
    # (each whole, and the token alone: an upstream may echo it without its scheme)
    shown = redaction.scrub(b"Bearer header-token-old-000 header-token-new-111")
    assert shown == b"[REDACTED] [REDACTED]"


def test_a_header_unread_at_start_is_its_providers_503_until_it_is_read() -> None:
    """SSM throttled a header's read at start: the whole gateway failed to build (every model down), where the same
    throttle on `api_key` gives that provider a 503 saying so until the key is read. Now a header is the same."""
    store, clock = Store(ThrottlingException, "Bearer header-token-read-at-last"), Clock()
    keys, adapter, router = header_keys_for(store, clock)
    with pytest.raises(ServiceUnavailableError) as caught:
        router.plan("m", RouteControls(), any_model)
    assert caught.value.code == "provider_not_configured"
    assert str(caught.value) == (
        "provider 'up' for model 'm' has no value for its header authorization: ssm:/gw/bearer could not be read "
        "(ThrottlingException); the gateway reads it again within 5 s"
    )
    assert caught.value.should_retry and caught.value.headers == {"retry-after": "5"}
    assert asyncio.run(keys.settle()) is False  # not due yet
    clock.now += 5
    assert asyncio.run(keys.settle()) is True
    assert adapter.headers()["authorization"] == "Bearer header-token-read-at-last" and not adapter.unread_headers
    assert router.plan("m", RouteControls(), any_model)


def test_a_401_has_a_header_read_again_at_most_once_per_retry_interval() -> None:
    """A 401 to a credential in `headers` read nothing again: the request failed, and the next ones too."""
    store, clock = Store("Bearer header-token-revoked-0"), Clock()
    keys, adapter, _ = header_keys_for(store, clock)
    refused = adapter.headers()
    assert asyncio.run(keys.renewed(adapter, None, refused)) is False
    assert asyncio.run(keys.renewed(adapter, None, refused)) is False
    assert store.reads == 2  # at start, and at the first 401
    store.answers.append("Bearer header-token-rotated-1")
    clock.now += 5
    assert asyncio.run(keys.renewed(adapter, None, refused)) is True
    assert adapter.headers()["authorization"] == "Bearer header-token-rotated-1"
    # A request refused with the old value after another had the new one read: sent again, nothing read.
    assert asyncio.run(keys.renewed(adapter, None, refused)) is True and store.reads == 3


def test_a_snapstart_restore_reads_the_headers_again() -> None:
    store, clock = Store("Bearer header-token-in-snapshot", "Bearer header-token-after-restore"), Clock()
    keys, adapter, _ = header_keys_for(store, clock)
    asyncio.run(keys.reread())
    assert adapter.headers()["authorization"] == "Bearer header-token-after-restore" and store.reads == 2


def test_a_header_gone_from_its_store_keeps_the_value_read_before() -> None:
    """At start a header referencing nothing stops the gateway (a config error); gone later, the value read before
    is still sent (as one whose read failed), not none."""
    store, clock = Store("Bearer header-token-kept-000", None), Clock()
    keys, adapter, router = header_keys_for(store, clock)
    clock.now += 301
    keys.check()
    settled(keys)
    assert adapter.headers()["authorization"] == "Bearer header-token-kept-000" and store.reads == 2
    assert not adapter.unread_headers and router.plan("m", RouteControls(), any_model)
