"""The SSE frame decoder, fed byte by byte, and the sniffer that tells a stream from one whole JSON body."""

from __future__ import annotations

import pytest

from handler.errors import UpstreamError
from handler.wire import MAX_EVENT_BYTES, SSEDecoder, StreamEvent, WholeBodySniffer


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


def sniffed(raw: bytes, step: int, limit: int = 1 << 20) -> tuple[list[StreamEvent], bytearray | None]:
    sniffer = WholeBodySniffer(SSEDecoder(), limit)
    events = []
    for i in range(0, len(raw), step):
        events.extend(sniffer.feed(raw[i : i + step]))
    return events + sniffer.finish(), sniffer.whole


def test_a_stream_goes_through_the_sniffer_unchanged() -> None:
    raw = b'\n\n: keep-alive\n\ndata: {"a":1}\n\ndata: [DONE]\n\n'
    for step in (1, 3, len(raw)):
        assert sniffed(raw, step) == ([StreamEvent(None, b'{"a":1}'), StreamEvent(None, b"[DONE]")], None)


def test_a_whole_json_body_is_one_event_at_its_end_whatever_blanks_come_first() -> None:
    body = b'{\n  "id": "c1",\n  "data: x": "not an event"\n}\n'
    for step in (1, 2, len(body) + 3):
        events, whole = sniffed(b" \r\n\n" + body, step)
        assert whole is not None and events == [StreamEvent(None, b"{" + body[1:])]


def test_a_whole_body_past_the_bound_is_refused() -> None:
    with pytest.raises(UpstreamError, match="exceeds 64 bytes") as refused:
        sniffed(b"{" + b" " * 100 + b"}", 10, limit=64)
    assert refused.value.outcome == "upstream_body_too_large"
