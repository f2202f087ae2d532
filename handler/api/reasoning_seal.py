"""The gateway's seal: what a provider needs back on a later turn, encrypted and signed into an opaque string the
client returns (`ReasoningSeal`), and the one key every process of the gateway seals with (`Seals`).

The Responses API seals a reasoning item's `encrypted_content` with it (`handler.api.responses_api`), the Messages API
Gemini 3's own parts of a search in a `web_search_result`'s `encrypted_content` (`handler.api.messages_out`): one key,
so a turn sealed on one route opens on any process, and only this gateway opens it. Standard library and orjson
alone: a Messages request that never seals imports nothing heavier for it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import time
from typing import Any

import orjson

from handler.ports import Store, StoredResponse, StoreError

logger = logging.getLogger("gateway")

# The seal's own secret, where the operator sets none (`gateway.responses_secret`): kept in the store as a stored
# response under an id no client can ask for (theirs start with `resp_`), for ten years.
SEAL_SECRET_ID = "gateway-reasoning-seal"
SEAL_SECRET_TTL = 10 * 365 * 86400


class ReasoningSeal:
    """Seals what a provider needs back from its reasoning (text, signatures) into an opaque string the client
    returns on the next turn, keyed by a secret every gateway process shares (see `Seals`); without
    one, a one-off random key.

    Encrypted, not only signed: the payload is the reasoning as the provider wrote it (Claude's thinking, whose
    signature covers its exact text, so it cannot be redacted there), which may quote a secret the gateway redacts
    everywhere else. A `gwr2.` seal is a stream cipher built from the standard library's hashes (the gateway takes no
    `cryptography`): the JSON XORed with a SHAKE-256 keystream of the cipher key and a random 16-byte nonce, then an
    HMAC-SHA256 tag over the version, the nonce and the ciphertext (encrypt-then-MAC), checked in constant time before
    anything is decrypted. The cipher and tag keys are derived apart from the secret (HMAC under labels of their own).
    A `gwr1.` seal, what the gateway made before (base64 of the JSON and an HMAC tag over it: readable by anyone), is
    still opened, checked by its tag, so that a conversation begun before the upgrade goes on; none is made now."""

    PREFIX = "gwr2."
    SIGNED = "gwr1."  # (signed only: opened, never made)
    PREFIXES = (PREFIX, SIGNED)
    NONCE_BYTES = 16
    __slots__ = ("cipher_key", "tag_key", "signed_key", "items")

    def __init__(self, secret: bytes | None = None) -> None:
        root = secret or os.urandom(32)
        self.cipher_key = hmac.new(root, b"gateway reasoning seal: cipher", hashlib.sha256).digest()
        self.tag_key = hmac.new(root, b"gateway reasoning seal: tag", hashlib.sha256).digest()
        self.signed_key = hashlib.sha256(b"gateway reasoning seal\x00" + root).digest()  # (`gwr1.`'s tag key)
        self.items: dict[str, str] | None = None  # (see `for_response`)

    def for_response(self) -> ReasoningSeal:
        """The same seal, keeping what it seals for one response's reasoning items (`items`, by item id): the
        gateway stores that beside the response, since the client gets it only when `include` asks."""
        seal = object.__new__(ReasoningSeal)  # (`copy.copy` took a Responses request 7 µs)
        seal.cipher_key, seal.tag_key, seal.signed_key = self.cipher_key, self.tag_key, self.signed_key
        seal.items = {}
        return seal

    def _keystream_xor(self, data: bytes, nonce: bytes) -> bytes:
        stream = hashlib.shake_256(self.cipher_key + nonce).digest(len(data))
        return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(len(data), "little")

    def _tag(self, nonce: bytes, ciphertext: bytes) -> bytes:
        return hmac.new(self.tag_key, self.PREFIX.encode() + nonce + ciphertext, hashlib.sha256).digest()

    def seal(self, payload: dict[str, Any]) -> str:
        nonce = os.urandom(self.NONCE_BYTES)
        ciphertext = self._keystream_xor(orjson.dumps(payload), nonce)
        body = base64.urlsafe_b64encode(nonce + ciphertext).decode()
        return self.PREFIX + body + "." + base64.urlsafe_b64encode(self._tag(nonce, ciphertext)).decode()

    def seal_item(self, item_id: str, payload: dict[str, Any]) -> str:
        """`seal`, for a reasoning item of the response being made."""
        sealed = self.seal(payload)
        if self.items is not None:
            self.items[item_id] = sealed
        return sealed

    def open(self, token: str) -> dict[str, Any] | None:
        """The sealed payload, or None for a blob not sealed by this key (or altered)."""
        if not token.startswith(self.PREFIXES):
            return None
        body_b64, _, tag_b64 = token[len(self.PREFIX) :].partition(".")  # (both prefixes are five characters)
        try:
            body = base64.urlsafe_b64decode(body_b64)
            tag = base64.urlsafe_b64decode(tag_b64)
        except ValueError:
            return None
        if token.startswith(self.SIGNED):
            if not hmac.compare_digest(tag, hmac.new(self.signed_key, body, hashlib.sha256).digest()):
                return None
        else:
            nonce, ciphertext = body[: self.NONCE_BYTES], body[self.NONCE_BYTES :]
            if len(nonce) < self.NONCE_BYTES or not hmac.compare_digest(tag, self._tag(nonce, ciphertext)):
                return None
            body = self._keystream_xor(ciphertext, nonce)
        payload = orjson.loads(body)
        return payload if isinstance(payload, dict) else None

    def upgraded(self, token: str) -> str:
        """A `gwr1.` seal of this key sealed anew (`gwr2.`), for what the gateway keeps: a conversation begun before
        the upgrade would otherwise carry its readable seals into every turn it stores. Any other blob as it is."""
        if not token.startswith(self.SIGNED):
            return token
        payload = self.open(token)
        return token if payload is None else self.seal(payload)

    def upgraded_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`items` with the `gwr1.` seals of their reasoning items `upgraded`."""
        return [
            {**item, "encrypted_content": self.upgraded(item["encrypted_content"])}
            if item.get("type") == "reasoning"
            and isinstance(item.get("encrypted_content"), str)
            and item["encrypted_content"].startswith(self.SIGNED)
            else item
            for item in items
        ]


class Seals:
    """The gateway's seal (`seal`), one per app, which every route that seals shares: keyed by the operator's
    secret (`gateway.responses_secret`), else by one the store keeps (`kept_secret`), so that every process of the
    gateway (Lambda's instances, several workers) opens what another sealed."""

    def __init__(self, secret: str | None, store: Store) -> None:
        self.store = store
        self._seal = ReasoningSeal(secret.encode()) if secret else None  # (read at start: `config.responses_secret`)
        self._sealing = asyncio.Lock()

    async def seal(self) -> ReasoningSeal:
        """The seal: the operator's key, else the store's, read once; a one-off key while the store cannot give it."""
        if self._seal is not None:
            return self._seal
        async with self._sealing:
            if self._seal is None:
                try:
                    self._seal = ReasoningSeal(await self.kept_secret())
                except StoreError as exc:
                    # Not kept for later requests: the next one tries the store again.
                    logger.warning("reasoning seal key unavailable, sealing with a one-off key: %s", exc)
                    return ReasoningSeal()
            return self._seal

    async def kept_secret(self) -> bytes:
        """The gateway's own seal secret, made once and kept in the store (`SEAL_SECRET_ID`)."""
        stored = await self.store.get_response(SEAL_SECRET_ID)
        if stored is None:
            now = time.time()
            secret = os.urandom(32).hex().encode()
            await self.store.put_response(StoredResponse(SEAL_SECRET_ID, "", [], now, now + SEAL_SECRET_TTL, secret))
            # Two processes starting at once both write, and the first write stands (`put_response`): reading
            # back, both use it. (Unconditional, the later write replaced the secret the first had sealed with.)
            stored = await self.store.get_response(SEAL_SECRET_ID)
        if stored is None:
            raise StoreError("the reasoning seal's secret could not be read back")
        return stored.body
