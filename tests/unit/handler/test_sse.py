"""The SSE frame decoder, fed byte by byte."""

from __future__ import annotations

import pytest

from handler.errors import UpstreamError
from handler.wire import MAX_EVENT_BYTES, SSEDecoder, StreamEvent


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


@pytest.mark.parametrize("piece", [b"a" * 65536, b"data: " + b"a" * 65530 + b"\n"], ids=["one line", "data lines"])
def test_an_event_that_never_ends_is_refused_at_the_bound(piece: bytes) -> None:
    decoder = SSEDecoder()
    with pytest.raises(UpstreamError) as failure:
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            decoder.feed(piece)
    assert failure.value.outcome == "invalid_stream" and failure.value.retryable
