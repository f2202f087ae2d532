"""What Anthropic holds of the message threads this process relayed, for the worst case of a `continue`.

A thread's `continue` (the Messages API's `thread: {"type": "continue", "previous_message_id": ...}`) sends only its
new messages; Anthropic bills the whole thread's input, which the body does not show. Once an answer is in a thread,
the thread holds what that answer read and what it wrote, no more: its usage's input (fresh, cache reads and cache
writes; a server-side compaction's input among them, which only over-counts) and its output (text, thinking, tool
calls), and what other models wrote into it, which its usage counts apart (Anthropic's advisor tool: its advice is
in the answer, read back by a `continue`; its output, thinking included, only over-counts). A `continue` of that
answer reads that, the turn's framing and its own new messages, which the body shows and the prompt's estimate
counts as any request's. So it is reserved for the answer's input and output, a margin
(`MARGIN_TOKENS`, `MARGIN_FRACTION`: the framing, and the answer's text read back as input, which a tokenizer may
count otherwise than it generated it), capped at the model's context window; where this process did not relay that
answer with the provider's usage (another instance did, or its stream was cut short, or it was forgotten:
`MOST_ANSWERS`), or relayed it from another model (another tokenizer counts the same conversation otherwise: Opus
4.7's up to 35 % more), for the whole window, as before. (A streamed answer's size is known only at its end, and its
record is written before its first byte: so the size is held here, not in the store.)
What else a `continue` needs of its thread lives in the store, which every process reads, in the answer's record
(`ThreadAnswer`, read by `Pipeline._continued_thread`): whose it is, and the advisor tools the thread keeps with its
`tools` (which a `continue` does not send, and Anthropic may call again).
Imported with the first thread: a plain request loads none of it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler.schemas import Usage

# The answers remembered, the oldest forgotten first: about 100 bytes each.
MOST_ANSWERS = 10_000
# Beyond what the answer read and wrote: its turn's framing in the next request, and its text read back as input.
MARGIN_TOKENS = 1_024
MARGIN_FRACTION = 0.1


class HeldThreads:
    """By the id of each answer of a thread this process relayed with the provider's usage: the model that wrote it
    and the tokens its thread holds once it is in it, bounded in memory (`MOST_ANSWERS`)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, int]] = {}

    def answered(self, message_id: object, model: str, usage: Usage, others: int = 0) -> None:
        """An answer of a thread (its `message_id`, as the provider named it), written by `model` (the upstream
        model) and billed `usage`, the provider's own counts, which leave out the `others` tokens other models
        wrote for it (an advisor's: its advice, in the answer, is read back by a `continue`)."""
        if not isinstance(message_id, str) or not message_id:
            return
        if len(self._held) >= MOST_ANSWERS and message_id not in self._held:
            del self._held[next(iter(self._held))]
        self._held[message_id] = (model, usage.prompt_tokens + usage.completion_tokens + others)

    def size(self, previous_message_id: object) -> int | None:
        """The tokens a thread holds after `previous_message_id`, as its provider counted them, whatever model reads
        it next; None where that is not known here."""
        known = self._held.get(previous_message_id) if isinstance(previous_message_id, str) else None
        return None if known is None else known[1]

    def holds(self, previous_message_id: object, models: set[str]) -> int | None:
        """The most input tokens a thread holds after `previous_message_id`, margin included, for a `continue` of it
        that any of `models` (upstream models) may serve; None where that is not known here."""
        known = self._held.get(previous_message_id) if isinstance(previous_message_id, str) else None
        if known is None or models != {known[0]}:
            return None
        return known[1] + MARGIN_TOKENS + math.ceil(known[1] * MARGIN_FRACTION)
