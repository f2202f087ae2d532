"""Tool-call deltas put in the order a block-by-block stream can write them.

A Chat Completions stream keys its tool-call deltas by `index`, so a server may start several calls and then
send their arguments in turns. The Messages and Responses streams write one call at a time (a block or an item,
opened, filled, closed, never reopened), so a call whose deltas interleave with another's is held until it can
be written whole and in order. Calls that come one after the other, as OpenAI sends them, pass through as they
come.
"""

from __future__ import annotations

import orjson

from handler.schemas import FunctionCallDelta, ToolCallDelta


def _joined(deltas: list[ToolCallDelta]) -> ToolCallDelta:
    """A call's deltas as one (its first, when it had no other)."""
    first = deltas[0]
    if len(deltas) == 1:
        return first
    functions = [d.function for d in deltas if d.function]
    function = FunctionCallDelta(
        name=next((f.name for f in functions if f.name), None),
        arguments="".join(f.arguments for f in functions if f.arguments),
    )
    call_id = next((d.id for d in deltas if d.id), None)
    return ToolCallDelta(index=first.index, id=call_id, type="function", function=function)


class CallOrder:
    """The tool-call deltas of one choice, in an order where each call's deltas are contiguous: the call being
    written passes through; another call is held until that one's arguments are a whole JSON value (it is done),
    or until `flush` (the choice finished, or the stream ended)."""

    def __init__(self) -> None:
        self.live: int | None = None
        self.arguments: list[str] = []  # the live call's, to tell when it is done
        self.held: dict[int, list[ToolCallDelta]] = {}  # in the order the calls started
        self.written: set[int] = set()
        # A server may number a new call with an index an earlier call had (Ollama gives every call 0): a delta
        # with an id of its own starts a call, which gets an index of its own here (`_renumbered`).
        self.ids: dict[int, str] = {}  # the id of the call each index the server used last stood for
        self.renumbered: dict[int, int] = {}
        self.fresh = 1 << 20

    def _renumbered(self, call: ToolCallDelta) -> ToolCallDelta:
        index = call.index
        if call.id:
            if self.ids.setdefault(index, call.id) != call.id:
                self.ids[index] = call.id
                self.renumbered[index] = self.fresh
                self.fresh += 1
        mine = self.renumbered.get(index)
        return call if mine is None else call.model_copy(update={"index": mine})

    def feed(self, calls: list[ToolCallDelta]) -> list[ToolCallDelta]:
        out: list[ToolCallDelta] = []
        for given in calls:
            call = self._renumbered(given)
            index = call.index
            if index == self.live:
                if call.function and call.function.arguments:
                    self.arguments.append(call.function.arguments)
                out.append(call)
            elif index in self.held:
                self.held[index].append(call)
            elif index in self.written:
                continue  # past the end of its arguments: its block is closed, and a block is not reopened
            else:
                self.held[index] = [call]
            while self.held and (self.live is None or self._live_done()):
                out.append(self._next())
        return out

    def flush(self) -> list[ToolCallDelta]:
        """Every held call, whole, in the order they started."""
        return [self._next() for _ in range(len(self.held))]

    def _live_done(self) -> bool:
        # Arguments are an object: parsed only when their last piece may close it.
        if not self.arguments or not self.arguments[-1].rstrip().endswith("}"):
            return False
        try:
            orjson.loads("".join(self.arguments))
        except orjson.JSONDecodeError:
            return False
        return True

    def _next(self) -> ToolCallDelta:
        index = next(iter(self.held))
        call = _joined(self.held.pop(index))
        if self.live is not None:
            self.written.add(self.live)
        self.live = index
        self.arguments = [call.function.arguments] if call.function and call.function.arguments else []
        return call
