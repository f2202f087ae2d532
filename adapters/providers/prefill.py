"""A Messages client's prefill (`ChatRequest.prefill`: its final assistant turn, which Claude's answer continues
without repeating it) on a provider whose answer repeats it first, as Mistral's does (its guide takes it off with
`content[len(prefix):]`): the client gets the continuation alone, in a whole answer and in a stream."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler.chunks import ChatCompletionChunk
    from handler.schemas import ChatCompletion

# What `x-gateway-dropped-params` names where the provider cannot continue an assistant turn.
PREFILL = "messages.prefill"


def unrepeated(text: str, prefix: str) -> str:
    """`text` without the `prefix` it opens with; nothing of an answer that ended within the prefix (cut by its
    token limit); an answer that did not repeat it, as it came."""
    if text.startswith(prefix):
        return text[len(prefix) :]
    return "" if prefix.startswith(text) else text


def strip_repeated(completion: ChatCompletion, prefix: str) -> None:
    """Each choice's text without the prefix it repeats (in place)."""
    for choice in completion.choices:
        if choice.message.content:
            choice.message.content = unrepeated(choice.message.content, prefix)


class RepeatedPrefix:
    """A stream's text without the prefix its answer repeats: each choice's text is held while it may still be the
    prefix, then let go less the prefix (or whole, where it turned out to be something else). What is held is
    only ever part of the prefix, so a stream that ends there loses nothing of the continuation."""

    __slots__ = ("prefix", "held", "settled")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.held: dict[int, str] = {}  # by choice, the text held so far
        self.settled: set[int] = set()  # the choices past their prefix

    def strip(self, chunk: ChatCompletionChunk) -> None:
        """`chunk`'s text deltas less what repeats the prefix (in place)."""
        for choice in chunk.choices:
            if choice.index in self.settled:
                continue
            delta = choice.delta
            text = delta.content or ""
            held = self.held.get(choice.index, "") + text
            still = len(held) < len(self.prefix) and self.prefix.startswith(held)
            if still and choice.finish_reason is None and not delta.tool_calls:
                self.held[choice.index] = held
                if text:
                    delta.content = ""
                continue
            self.settled.add(choice.index)
            self.held.pop(choice.index, None)
            rest = unrepeated(held, self.prefix)
            if text or rest:
                delta.content = rest
