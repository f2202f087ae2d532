"""The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), decoded incrementally.

Each message is a 12-byte prelude (total length, headers length, CRC32 of those eight bytes), the
headers, the payload and a CRC32 of everything before it. A header is a one-byte name length, the
name, a one-byte value type and the value. Frames arrive split anywhere across network reads, so the
decoder buffers until a whole message is in; a CRC mismatch or an impossible length is a malformed
(retryable) upstream answer, never a guess.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable

from handler.errors import UpstreamError
from handler.wire import StreamEvent, malformed

PRELUDE_LENGTH = 12
CRC_LENGTH = 4
MAX_MESSAGE_LENGTH = 16 * 1024 * 1024  # the format's own limit

HeaderValue = bool | int | bytes | str | uuid.UUID
# (event-stream message type, exception or error name, payload) -> the error to raise
ExceptionMapper = Callable[[str, str, bytes], UpstreamError]

# value type -> fixed width in bytes, for the fixed-width types
_FIXED = {2: (1, ">b"), 3: (2, ">h"), 4: (4, ">i"), 5: (8, ">q"), 8: (8, ">q")}


def parse_headers(raw: bytes) -> dict[str, HeaderValue]:
    """Decode an event-stream header block; a truncated or unknown-typed header is malformed."""
    headers: dict[str, HeaderValue] = {}
    pos = 0
    try:
        while pos < len(raw):
            name_length = raw[pos]
            name = raw[pos + 1 : pos + 1 + name_length].decode("utf-8")
            pos += 1 + name_length
            kind = raw[pos]
            pos += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                width, fmt = _FIXED[kind]
                (value,) = struct.unpack(fmt, raw[pos : pos + width])
                pos += width
            elif kind in (6, 7):
                (length,) = struct.unpack(">H", raw[pos : pos + 2])
                data = raw[pos + 2 : pos + 2 + length]
                if len(data) != length:
                    raise malformed("upstream event-stream header is truncated", "invalid_frame")
                value = data.decode("utf-8") if kind == 7 else bytes(data)
                pos += 2 + length
            elif kind == 9:
                value = uuid.UUID(bytes=bytes(raw[pos : pos + 16]))
                pos += 16
            else:
                raise malformed(f"upstream event-stream header has unknown type {kind}", "invalid_frame")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise malformed("upstream event-stream headers do not parse", "invalid_frame") from exc
    if pos != len(raw):
        raise malformed("upstream event-stream headers overrun their length", "invalid_frame")
    return headers


class EventStreamDecoder:
    """A `FrameDecoder` for AWS event-stream: one `StreamEvent(event=:event-type, data=payload)` per event.

    Messages of type `exception` or `error` are handed to `on_exception`, whose error is raised: the
    provider knows what its exception names mean, the framing does not.
    """

    __slots__ = ("_buffer", "_on_exception")

    def __init__(self, on_exception: ExceptionMapper) -> None:
        self._buffer = bytearray()
        self._on_exception = on_exception

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        self._buffer += chunk
        events: list[StreamEvent] = []
        while len(self._buffer) >= PRELUDE_LENGTH:
            total, headers_length, prelude_crc = struct.unpack_from(">III", self._buffer)
            if zlib.crc32(self._buffer[:8]) != prelude_crc:
                raise malformed("upstream event-stream prelude fails its CRC", "invalid_frame")
            if not PRELUDE_LENGTH + CRC_LENGTH <= total <= MAX_MESSAGE_LENGTH:
                raise malformed(f"upstream event-stream message length {total} is impossible", "invalid_frame")
            if headers_length > total - PRELUDE_LENGTH - CRC_LENGTH:
                raise malformed("upstream event-stream headers overrun their message", "invalid_frame")
            if len(self._buffer) < total:
                break
            message = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from(">I", message, total - CRC_LENGTH)
            if zlib.crc32(message[: total - CRC_LENGTH]) != message_crc:
                raise malformed("upstream event-stream message fails its CRC", "invalid_frame")
            headers = parse_headers(message[PRELUDE_LENGTH : PRELUDE_LENGTH + headers_length])
            payload = message[PRELUDE_LENGTH + headers_length : total - CRC_LENGTH]
            event = self._event(headers, payload)
            if event is not None:
                events.append(event)
        return events

    def _event(self, headers: dict[str, HeaderValue], payload: bytes) -> StreamEvent | None:
        kind = headers.get(":message-type", "event")
        if kind == "exception":
            raise self._on_exception("exception", str(headers.get(":exception-type", "")), payload)
        if kind == "error":
            code, text = str(headers.get(":error-code", "")), str(headers.get(":error-message", ""))
            raise self._on_exception("error", code, text.encode() or payload)
        if kind != "event":
            return None  # initial-request/response and message types added after this was written
        event_type = headers.get(":event-type")
        return StreamEvent(str(event_type) if event_type is not None else None, payload)

    def finish(self) -> list[StreamEvent]:
        if self._buffer:
            raise malformed("upstream event-stream ended inside a message", "stream_cut")
        return []
