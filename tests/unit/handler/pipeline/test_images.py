"""Image token formulas and image sizes read from inline headers."""

from __future__ import annotations

import base64
import struct
import zlib

from handler.pipeline.images import image_tokens, inline_image_size


def data_url(raw: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(raw).decode()}"


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + b"\xff\xd9"


def test_sizes_from_headers() -> None:
    assert inline_image_size(data_url(png(1024, 512), "png")) == (1024, 512)
    assert inline_image_size(data_url(jpeg(640, 480), "jpeg")) == (640, 480)
    assert inline_image_size(data_url(b"GIF89a" + struct.pack("<HH", 32, 16) + b"\x00" * 8, "gif")) == (32, 16)
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x0a\x00\x00\x00" + b"\x00" * 4 + (799).to_bytes(3, "little")
    assert inline_image_size(data_url(vp8x + (599).to_bytes(3, "little"), "webp")) == (800, 600)
    assert inline_image_size("https://example.com/cat.png") is None
    assert inline_image_size("data:image/png;base64,@@@@") is None


def test_each_providers_formula() -> None:
    square = data_url(png(1024, 1024), "png")
    assert image_tokens(square, "high", "openai", "gpt-4o") == 765  # OpenAI's own worked example
    assert image_tokens(square, "low", "openai", "gpt-4o") == 85
    # A size that cannot be read is the most one image can cost: 8 tiles.
    assert image_tokens("https://x/y.png", "high", "openai", "gpt-4o-mini") == 2833 + 5667 * 8
    assert image_tokens("https://x/y.png", None, "azure", "gpt-4.1-mini") == round(1536 * 1.62 + 0.5)
    assert image_tokens(data_url(png(1000, 1000), "png"), None, "anthropic", "claude-haiku-4-5") == 1334
    assert image_tokens("https://x/y.png", None, "bedrock", "anthropic.claude-3-5-haiku") == 1600
    assert image_tokens(data_url(png(300, 300), "png"), None, "gemini", "gemini-2.5-flash") == 258
    assert image_tokens(data_url(png(1536, 800), "png"), None, "gemini", "gemini-2.5-flash") == 2 * 2 * 258
