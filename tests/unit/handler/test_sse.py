"""The SSE frame decoder, fed byte by byte."""

from __future__ import annotations

from handler.ports import SSEDecoder, StreamEvent


def decode(raw: bytes, step: int) -> list[StreamEvent]:
    decoder = SSEDecoder()
    events = []
    for i in range(0, len(raw), step):
        events.extend(decoder.feed(raw[i : i + step]))
    return events + decoder.finish()


def test_events_survive_any_split_and_crlf() -> None:
    raw = b': comment\r\nevent: ping\r\ndata: {}\r\n\r\ndata: a\ndata: b\n\nevent: message_stop\ndata: {"x":1}'
    for step in (1, 2, 7, len(raw)):
        assert decode(raw, step) == [
            StreamEvent("ping", b"{}"),
            StreamEvent(None, b"a\nb"),
            StreamEvent("message_stop", b'{"x":1}'),
        ]
