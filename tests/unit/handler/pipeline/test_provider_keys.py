"""Provider keys held in SSM or Secrets Manager, read again while the process runs (`ProviderKeys`)."""

from __future__ import annotations

import asyncio

from adapters.providers.registry import REGISTRY
from handler.config import SecretUnreadableError, parse_config
from handler.pipeline.gateway import build_adapters, key_references
from handler.pipeline.provider_keys import ProviderKeys
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
