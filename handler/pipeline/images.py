"""What an image in a prompt costs in input tokens, by each provider's published formula.

A reservation must cover the worst case, so an image whose size cannot be read (a remote URL, an unknown
format) is counted at the most its provider can bill for one image. An inline image (`data:` URL) has its
width and height read from the first bytes of its header (PNG, GIF, JPEG, WebP), without decoding it.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct

# OpenAI's tile formula (`detail: high`): base tokens plus tokens per 512-px tile; `low` is the base alone.
OPENAI_TILES: list[tuple[str, int, int]] = [
    ("gpt-4o-mini", 2833, 5667),
    ("", 85, 170),  # gpt-4o, gpt-4.1, gpt-5, o1, o3 and other tile-priced models
]
# OpenAI's patch formula: 32-px patches, at most 1,536, times a per-model multiplier.
OPENAI_PATCHES: list[tuple[str, float]] = [
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
]
MAX_OPENAI_TILES = 8  # 768 x 2048 once scaled: the most tiles any image can become
ANTHROPIC_MAX = 1600  # (width x height) / 750, images being scaled to about 1.15 megapixels
GEMINI_TILE = 258  # per 768-px tile (an image within 384 x 384 is one tile)
GEMINI_MAX_SIDE = 3072
OTHER_MAX = 4160  # Mistral's Pixtral: 16-px patches of a 1024 x 1024 image, with row breaks
HEADER_BYTES = 65536  # how much of an inline image to decode when looking for its size


def image_tokens(url: str, detail: str | None, provider_type: str, model: str) -> int:
    """Input tokens one image can cost at `model` of `provider_type`: exact where its size can be read."""
    size = inline_image_size(url)
    if provider_type in ("openai", "azure") and model.startswith(("gpt-", "o1", "o3", "o4", "chatgpt")):
        return _openai(size, detail, model)
    if provider_type == "anthropic" or (provider_type == "bedrock" and "claude" in model):
        return ANTHROPIC_MAX if size is None else min(ANTHROPIC_MAX, math.ceil(size[0] * size[1] / 750))
    if provider_type == "gemini":
        width, height = size or (GEMINI_MAX_SIDE, GEMINI_MAX_SIDE)
        if width <= 384 and height <= 384:
            return GEMINI_TILE
        width, height = min(width, GEMINI_MAX_SIDE), min(height, GEMINI_MAX_SIDE)
        return math.ceil(width / 768) * math.ceil(height / 768) * GEMINI_TILE
    return OTHER_MAX


def _openai(size: tuple[int, int] | None, detail: str | None, model: str) -> int:
    for prefix, multiplier in OPENAI_PATCHES:
        if model.startswith(prefix):
            patches = 1536 if size is None else min(1536, math.ceil(size[0] / 32) * math.ceil(size[1] / 32))
            return math.ceil(patches * multiplier)
    base, per_tile = next((b, t) for prefix, b, t in OPENAI_TILES if model.startswith(prefix))
    if detail == "low":
        return base
    return base + per_tile * (MAX_OPENAI_TILES if size is None else _openai_tiles(*size))


def _openai_tiles(width: int, height: int) -> int:
    fit = min(1.0, 2048 / max(width, height, 1))
    shortest = min(1.0, 768 / max(min(width, height) * fit, 1))
    scale = fit * shortest
    return math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


def inline_image_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 `data:` image, from its header; None if it is remote or unreadable."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 200)
    if comma < 0 or ";base64" not in url[:comma]:
        return None
    chunk = url[comma + 1 : comma + 1 + HEADER_BYTES * 4 // 3]
    try:
        head = base64.b64decode(chunk[: len(chunk) // 4 * 4])
    except (binascii.Error, ValueError):
        return None
    try:
        return _size(head)
    except struct.error:
        return None


def _size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return _webp(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg(head)
    return None


def _webp(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _jpeg(head: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = struct.unpack(">H", head[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None
