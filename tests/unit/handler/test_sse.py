"""The SSE frame decoder, fed byte by byte, and the sniffer that tells a stream from one whole JSON body."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from handler import wire
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


def test_events_between_runs_of_keep_alives_survive_any_split() -> None:
    raw = b"\n\r\n: a\n\n:b\r\n\r\nevent: e\r\n: inside\ndata: 1\r\n\r\n\n\n:\ndata: 2\n:c\ndata: 3\n\n\r\n"
    for step in (1, 2, 3, 5, len(raw)):
        assert decode(raw, step) == [StreamEvent("e", b"1"), StreamEvent(None, b"2\n3")]


@pytest.mark.parametrize("piece", [b"a" * 65536, b"data: " + b"a" * 65530 + b"\n"], ids=["one line", "data lines"])
def test_an_event_that_never_ends_is_refused_at_the_bound(piece: bytes) -> None:
    decoder = SSEDecoder()
    with pytest.raises(UpstreamError) as failure:
        for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
            decoder.feed(piece)
    assert failure.value.outcome == "invalid_stream" and failure.value.retryable


HOSTILE_LINES = [b"\n", b"\r\n", b": p\n", b"data:\n", b"data:x\n", b"data: " + b"x" * 192 + b"\n\n"]


def decoding_time(chunk: bytes, tries: int = 3) -> float:
    """The best of `tries` decodings of `chunk` as one read, in seconds of this thread's CPU (the best, and CPU time,
    as a loaded machine's preemptions only ever add wall time)."""
    best = float("inf")
    for _ in range(tries):
        decoder = SSEDecoder()
        started = time.thread_time()
        decoder.feed(chunk)
        best = min(best, time.thread_time() - started)
    return best


@pytest.mark.usefixtures("no_gc_pauses")  # (a full collection in a decoding is the suite's heap, not the decoder)
@pytest.mark.parametrize("line", HOSTILE_LINES, ids=["blank", "crlf", "comments", "empty data", "data", "events"])
def test_a_read_decodes_in_time_linear_in_its_size(line: bytes) -> None:
    # One 256 KiB read of blank lines blocked the event loop 1.1 s, and a 1 MiB one 23 s: a buffer sliced per line.
    # Four times the bytes: linear is four times the time, a square sixteen. Both reads are past the size where the
    # decoder's lines stop fitting the CPU's caches (between 512 KiB and 1 MiB here: a 64 KiB read against a 512 KiB
    # one measured 14 to 31 times, by the caches and the machine's load, not by the decoder).
    small, large = (line * (size // len(line)) for size in (1024 * 1024, 4096 * 1024))
    assert decoding_time(large, tries=5) < 10 * decoding_time(small, tries=5)


@pytest.mark.parametrize("line", HOSTILE_LINES[:3], ids=["blank", "crlf", "comments"])
def test_lines_between_events_are_skipped_in_memory_of_no_size(line: bytes) -> None:
    # The pattern that skips them kept a way back per character matched: a 1 MiB read of comments held 50 MB while it
    # was matched (and in a whole run of the suite, its allocations made a 4 MiB read take 14 times a 1 MiB one).
    chunk = line * ((1 << 20) // len(line))
    tracemalloc.start()
    try:
        assert SSEDecoder().feed(chunk) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024


@pytest.mark.usefixtures("no_gc_pauses")
def test_a_mebibyte_of_blank_lines_decodes_at_once() -> None:
    assert decoding_time(b"\n" * (1 << 20)) < 0.25


@pytest.mark.parametrize("line", HOSTILE_LINES[:5], ids=["blank", "crlf", "comments", "empty data", "data"])
def test_lines_that_never_make_an_event_are_refused_at_the_bound(line: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # Empty `data:` lines counted nothing: an endless stream of them held the decoder and its memory forever.
    monkeypatch.setattr(wire, "MAX_EVENT_BYTES", 1 << 20)
    decoder = SSEDecoder()
    chunk = line * (65536 // len(line))
    with pytest.raises(UpstreamError, match="exceeds") as failure:
        for _ in range((1 << 20) // len(chunk) + 2):
            decoder.feed(chunk)
    assert failure.value.outcome == "invalid_stream"


def test_keep_alives_between_events_are_counted_afresh_after_each_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_EVENT_BYTES", 4096)
    decoder = SSEDecoder()
    events = []
    for _ in range(100):
        events.extend(decoder.feed(b": keep-alive\n\n" * 100 + b"data: {}\n\n"))
    assert events == [StreamEvent(None, b"{}")] * 100


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


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 4096])
def test_events_whose_lines_end_in_a_bare_cr_survive_any_split(step: int) -> None:
    """The SSE rules end a line with CR, LF or CRLF. A stream of bare CRs (an upstream, or a proxy in front of one,
    that writes them) was one line: no event until its end, then one of every line joined (or, past 16 MiB, a
    malformed answer). Read with any split, it gives the events its LF form does."""
    lf = b': hi\n\nevent: a\ndata: {"x": 1}\ndata: 2\n\n\n\ndata: [DONE]\n\n'
    expected = decode(lf, 4096)
    assert expected == [StreamEvent("a", b'{"x": 1}\n2'), StreamEvent(None, b"[DONE]")]
    assert decode(lf.replace(b"\n", b"\r"), step) == expected


@pytest.mark.parametrize("cut", [None, 1, 2, 3, 4])
def test_a_byte_order_mark_opening_the_stream_is_ignored(cut: int | None) -> None:
    """The SSE rules (WHATWG HTML, 9.2.5) ignore one U+FEFF opening the stream: read as part of the first field's
    name (`\\ufeffdata`), it lost the stream's first event, a server's first words (`cut`: the mark split across the
    first reads). Found by review (streamrev36)."""
    stream = b'\xef\xbb\xbfdata: {"a":1}\n\ndata: {"b":2}\n\n'
    decoder = SSEDecoder()
    reads = [stream] if cut is None else [stream[:cut], stream[cut:]]
    events = [event for read in reads for event in decoder.feed(read)]
    assert [event.data for event in events] == [b'{"a":1}', b'{"b":2}']


def test_only_an_opening_byte_order_mark_is_ignored() -> None:
    """A mark later in the stream is not the stream's: it stays in the data it stands in."""
    events = SSEDecoder().feed(b'data: {"a":1}\n\ndata: \xef\xbb\xbfx\n\n')
    assert [event.data for event in events] == [b'{"a":1}', b"\xef\xbb\xbfx"]
