"""An exchange's answer headers."""

from __future__ import annotations

from handler.pipeline.exchange import Controls, Exchange
from handler.ports import KeyRecord


def test_dropped_params_are_listed_as_named_with_anything_unsafe_percent_encoded() -> None:
    """`tools[web_search]` reads as the docs write it; a name from the client's body cannot add a list item (a
    comma) or split the header (CR, LF), and stays Latin-1."""
    key = KeyRecord(id="abcdefghijkm", name="n", secret_hash="h", created_at=0)
    ex = Exchange("req_1", key, "m", Controls(), inbound_dropped=["tools[web_search]", "a,b", "x\r\ny: 1", "é"])
    ex.dropped = ["tools[namespace]"]
    assert ex.headers()["x-gateway-dropped-params"] == (
        "tools[web_search],a%2Cb,x%0D%0Ay%3A%201,%C3%A9,tools[namespace]"
    )


def test_dropped_params_hold_no_key_and_no_name_past_256_characters() -> None:
    """The names are the client's (a field, an `include`, a tool's type): one holding a key, with or without its
    `gwk_`, was listed whole on a 200 (review); one of 5,000 characters made a header of 5,000."""
    key = KeyRecord(id="abcdefghijkm", name="n", secret_hash="h", created_at=0)
    held = "gwk_abcdefghijkm_" + "S3cr3t" * 7 + "S"  # (a secret of 43 characters, as minted)
    ex = Exchange("req_1", key, "m", Controls(), inbound_dropped=[f"include[{held}]", "f" * 5000])
    ex.dropped = [f"x-{held.removeprefix('gwk_')}", "seed"]
    assert ex.headers()["x-gateway-dropped-params"] == f"include[[REDACTED]],{'f' * 256},x-[REDACTED],seed"


def test_a_refusal_counts_in_the_estimate_of_an_answer_without_usage() -> None:
    """An answer without usage is charged an estimate of what it generated; a refusal's text (a blocked prompt's
    answer) counted as nothing, so a refused answer was estimated free of output."""
    from handler.pipeline.pipeline import answer_chars
    from handler.schemas import ChatCompletion

    refused = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    assert answer_chars(refused) == len("I can't help with that.")


def test_a_refusal_streamed_counts_in_the_estimate_of_a_stream_cut_before_its_usage() -> None:
    from handler.chunks import ChatCompletionChunk
    from handler.pipeline.chunk_stream import ChunkStream

    stream = ChunkStream.__new__(ChunkStream)
    stream._chars, stream.schema, stream._text = 0, None, []
    stream._choices, stream._finished_choices, stream._refused = {}, set(), {}
    for delta in ({"role": "assistant", "content": "", "refusal": None}, {"refusal": "I can't"}, {"refusal": " help."}):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        stream._count(ChatCompletionChunk.model_validate({**chunk, "choices": [{"index": 0, "delta": delta}]}))
    assert stream._chars == len("I can't help.")


def test_a_rate_counter_the_store_did_not_report_gives_no_header() -> None:
    """A DynamoDB read-back that failed leaves the key's own counter out of the snapshot; its header fell back
    to the limit less this request, `x-ratelimit-remaining-requests: 9` with 7 of 10 used (review)."""
    from handler.pipeline.budgets import Meter
    from handler.ports import MeterSnapshot, RateCharge

    meter = Meter.__new__(Meter)
    meter.clock = lambda: 60.0 * 1000 + 1
    rates = [RateCharge("rpm", 1000, 10, 1), RateCharge("tpm", 1000, 1000, 50)]
    reported = meter._rate_headers(rates, MeterSnapshot(rates={"rpm": 8, "tpm": 400}), 1000)
    assert reported["x-ratelimit-remaining-requests"] == "2" and reported["x-ratelimit-remaining-tokens"] == "600"
    assert meter._rate_headers(rates, MeterSnapshot(rates={"tpm": 400}), 1000) == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "600",
        "x-ratelimit-reset-tokens": "59s",
    }


def test_a_count_in_a_window_another_gateway_began_resets_as_that_window_ends() -> None:
    """The store counts a request in the window another gateway's clock began first, and names it
    (`MeterSnapshot.rate_windows`): the answer's `x-ratelimit-reset-*` said when this gateway's own window ended,
    `remaining 0, reset 43s`, then a 429 with `retry-after: 103` (review). They say that window's end: on the answer,
    on one a fallback served, and on one never sent, which gives back nothing there (its settlement corrects its own
    window alone)."""
    from handler.pipeline.budgets import Counted, Meter, Reservation
    from handler.ports import Admission, MeterSnapshot, RateCharge

    meter = Meter.__new__(Meter)
    meter.clock = lambda: 60.0 * 1000 + 17  # (43 s left of window 1000)
    rates = [RateCharge("rpm", 1000, 2, 1)]
    ahead = MeterSnapshot(rates={"rpm": 2}, rate_windows={"rpm": 1001})
    told = meter._rate_headers(rates, ahead, 1000)
    assert (told["x-ratelimit-remaining-requests"], told["x-ratelimit-reset-requests"]) == ("0", "103s")
    assert meter._rate_headers(rates, MeterSnapshot(rates={"rpm": 2}), 1000)["x-ratelimit-reset-requests"] == "43s"
    admission = Admission("req_1", "k", [], rates, 0.0)
    assert meter.served_headers(None, [Counted(admission, ahead)], "m") == told
    reservation = Reservation(admission, 0.0, 0)
    reservation.snapshot = ahead
    assert meter.given_back_headers(reservation) == told
