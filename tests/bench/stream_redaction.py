"""What scrubbing a stream as its client joins it costs per event (handler.pipeline.redacting).

    python -m tests.bench.stream_redaction [--events 1000] [--rounds 7]

A stream of small events (four characters of text each, as a model's tokens come) goes through what the gateway
does to each event it relays: the byte scrub every event had (`scrub`), and now the text held back by channel
(`ChunkRedactor` for the streams the gateway writes, `EventRedactor` for a provider's own events passed through).
The gateway holds the secrets of a typical deployment: an OpenAI and an Anthropic key, a Gemini key, AWS
credentials with a session token. Two streams: text in which no delta ends with the beginning of a secret (the
usual case), and English prose, whose deltas often end in `s` (the first letter of `sk-`) and are then held back
until the next. Prints the median µs per event of each step, over `--rounds` passes of `--events` events; the
byte scrub, which every relayed event paid before, is the yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from handler import redaction
from handler.pipeline.redacting import (
    ChunkRedactor,
    EventRedactor,
    messages_delta,
    messages_within,
    responses_delta,
    responses_within,
)
from handler.schemas import ChatCompletionChunk
from handler.wire import StreamEvent

SECRETS = (
    "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" * 5,
    "sk-ant-api03-" + "Zy9xWv8uTs7rQp6oNm5lKj4iHg3fEd2c" * 3,
    "AIzaSyD-" + "9tSrRqPoNmLkJiHgFeDcBa8765432",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "IQoJb3JpZ2luX2VjE" + "FwoGZXIvYXdzEJr//////////wEaDLpCe2kK" * 20,
)
PLAIN = "Hello, how can I help you today? Here is the code you asked for, with a test for it. "
PLAIN = PLAIN.replace("s", "z").replace("w", "v").replace("I", "i")  # no `s`, `w`, `I`, `A` to end a delta on
PROSE = "The results show that users prefer answers which cite sources; the tests pass and this works. "


def pieces(text: str, events: int) -> list[str]:
    whole = text * (events * 4 // len(text) + 1)
    return [whole[i * 4 : i * 4 + 4] for i in range(events)]


def chunks(texts: list[str]) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1764000000,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
        )
        for text in texts
    ]


def messages_events(texts: list[str]) -> list[StreamEvent]:
    return [
        StreamEvent(
            "content_block_delta",
            orjson.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )
        for text in texts
    ]


def responses_events(texts: list[str]) -> list[StreamEvent]:
    """OpenAI's deltas as it writes them (`obfuscation` pads each to hide its length)."""
    kind = "response.output_text.delta"
    where = {"item_id": "msg_0123456789abcdef", "output_index": 0, "content_index": 0}
    return [
        StreamEvent(
            kind,
            orjson.dumps(
                {
                    "type": kind,
                    "sequence_number": i,
                    **where,
                    "delta": text,
                    "logprobs": [],
                    "obfuscation": "x7Qp2LmZ9a",
                }
            ),
        )
        for i, text in enumerate(texts)
    ]


def timed(step: Callable[[], object], events: int, rounds: int, setup: Callable[[], object] | None = None) -> float:
    spent = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        started = time.perf_counter()
        step()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    redaction.register(*SECRETS)
    n, rounds = args.events, args.rounds
    for name, text in (("no secret's beginning at a delta's end", PLAIN), ("English prose", PROSE)):
        texts = pieces(text, n)
        bodies = chunks(texts)
        frames = [b"data: " + body + b"\n\n" for body in bodies]
        events = messages_events(texts)
        responses = responses_events(texts)

        parsed: list[list[ChatCompletionChunk]] = []

        def parse(bodies: list[bytes] = bodies, parsed: list[list[ChatCompletionChunk]] = parsed) -> None:
            # (afresh each round: a held end moves text from one chunk to the next)
            parsed[:] = [[ChatCompletionChunk.model_validate_json(body)] for body in bodies]

        def chunk_stream(parsed: list[list[ChatCompletionChunk]] = parsed) -> None:
            redactor = ChunkRedactor()
            for batch in parsed:
                redactor.redact(batch, False, None)

        def passed_through(events: list[StreamEvent] = events) -> None:
            redactor = EventRedactor(messages_delta, messages_within)
            for event in events:
                redactor.relay([event])
            redactor.release()

        def responses_passed_through(events: list[StreamEvent] = responses) -> None:
            redactor = EventRedactor(responses_delta, responses_within, placed=True)
            for event in events:
                redactor.relay([event])
            redactor.release()

        def scrubbed(frames: list[bytes] = frames) -> None:
            for frame in frames:
                redaction.scrub(frame)

        held = timed(chunk_stream, n, rounds, parse)
        print(f"{name} ({n} events of 4 characters):")
        print(f"  ChunkRedactor.redact (the streams the gateway writes): {held:.2f} µs per event")
        messages = timed(passed_through, n, rounds)
        print(f"  EventRedactor.relay (Anthropic's Messages events passed through): {messages:.2f} µs")
        responses = timed(responses_passed_through, n, rounds)
        print(f"  EventRedactor.relay (OpenAI's Responses events passed through): {responses:.2f} µs")
        print(f"  scrub (every event's bytes, as before): {timed(scrubbed, n, rounds):.2f} µs")


if __name__ == "__main__":
    main()
