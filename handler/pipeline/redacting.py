"""Streams relayed without a known secret, however the model cuts it across deltas (`HeldText`).

A client joins a stream's deltas: a key written over several of them reaches it whole though no event holds it.
Each stream holds back, by what the client joins (a choice's text, reasoning or refusal, a tool call's arguments,
its transcript or reasoning parts, an Anthropic content block, a Responses item's text), the end of a delta that
could begin a known secret, and sends it with the next delta there; a secret completed so is redacted. What a channel
still holds when it ends (its choice finished, its block or item closed, the stream over) goes then: it is no secret.
A text's log probabilities, which give it again token by token, wait and are redacted with it.

- `ChunkRedactor`, on the internal chunks, covers every stream the gateway writes itself (Chat Completions, and
  Messages and Responses translated from another provider);
- `EventRedactor`, on a provider's own events passed through (a Messages stream from Anthropic, a Responses stream
  from OpenAI), holds back the events themselves: while nothing is redacted they go on as the provider wrote them,
  later; an event that completes a secret is written again, with the events it was cut across joined into it. An
  event of the same text that carries none of it (a citation, an annotation) waits with them, in its place.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from handler.redaction import (
    MIN_SECRET_LENGTH,
    REDACTED,
    positions_moved,
    redactions,
    secret_start,
    token_text,
    tokens_redacted,
    withheld,
)
from handler.wire import RESPONSES_DELTAS, Located, StreamEvent, messages_text, responses_text

if TYPE_CHECKING:
    from handler.schemas import ChatCompletionChunk, ChunkChoice, ChunkDelta


Channel = TypeVar("Channel", bound=Hashable)


class HeldText(Generic[Channel]):
    """A stream's text, scrubbed as the client will join it: by channel (a choice's text, a content block, a tool
    call's arguments: whatever the client concatenates), the end of a delta that could begin a known secret is
    held back and put before the channel's next text (`pass_on`), or handed out on its own once the channel
    ends (`release`). The text the client joins has no known secret in it; it comes in other pieces.
    """

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[Channel, str] = {}

    def pass_on(self, channel: Channel, text: str) -> str:
        """What of `channel`'s next `text` may go now (what was held before it, then the text, without the known
        secrets, less its end if that could begin one)."""
        held = self.held.pop(channel, "") if self.held else ""
        passed, rest = withheld(held + text if held else text)
        if rest:
            self.held[channel] = rest
        return passed

    def release(self, channel: Channel) -> str:
        """What `channel` still holds, now that it has ended: the beginning of a secret at most, not a secret; one as
        long as the shortest secret the gateway knows, redacted (`cut_short`)."""
        return cut_short(self.held.pop(channel, "")) if self.held else ""


def cut_short(held: str) -> str:
    """Held text a channel ended with (the beginning of a known secret), as it goes: redacted where it is as long as
    the shortest secret the gateway knows. A key cut by the stream's end (a provider's output cap, a failure) went
    out with all but its last characters; a few characters, which ordinary text ends with as well (`sk-`), still go."""
    return REDACTED if len(held) >= MIN_SECRET_LENGTH else held


TEXT_FIELDS = ("reasoning_content", "content", "refusal")  # in the order the Messages and Responses writers read them
# Texts a client joins beside those, in members a provider adds to a delta (`ChunkDelta`'s extra ones): a spoken
# answer's transcript (`audio.transcript`, with `modalities: ["audio"]`) and OpenRouter's reasoning in parts
# (`reasoning_details[].text`, a summary's `.summary`, by the part's `index`), which the OpenAI SDK's stream helper
# joins as it joins `content` (it concatenates every string of a delta). Relayed as they came, a key cut across two
# deltas there would reach the client whole where the same key in `content` is `[REDACTED]`. Each is a channel
# that goes on beside the others (OpenRouter streams its reasoning in `reasoning` and `reasoning_details` at once,
# OpenAI a transcript beside no text): it ends with its choice, and ends none of them.
BESIDE = ("audio", "reasoning_details")
BESIDE_CHANNELS = frozenset({"audio.transcript", "reasoning_details.text", "reasoning_details.summary"})
# A text's log probabilities, by the text they give again token by token (`logprobs.content`, `.refusal`).
TOKENS_OF = ("content", "refusal")


class ChunkRedactor:
    """The secrets held back from one stream of internal chunks, by choice and by field or tool call (a channel:
    the field's name, or "call", the choice's index, and the call's, -1 for a field; a text beside them,
    `BESIDE_CHANNELS`, by its member's path and the choice's index, and a reasoning part's `index`).

    A choice's `annotations` (a search model's `url_citation`, in a delta of their own after the text) give positions
    in its text as the provider wrote it. Once a secret is redacted from a choice's text, where it was in that text
    is kept (`placed`), found from how much of the text the client was handed before (`shown`, which the relay
    counts as it hands the chunks out: `ChunkStream._count`), and the positions of the annotations that follow are
    moved past it (`positions_moved`). A stream with no secret redacted pays for none of it.

    A choice's log probabilities (`logprobs.content`, `.refusal`) give its text again, token by token: once its text
    is held back or redacted, its tokens are too, as their own text (`tokens_withheld`), and wait while it waits
    (`tokens`, by channel); until then they go as they came (a delta whose text goes as it came is not looked at for
    them)."""

    __slots__ = ("text", "shown", "placed", "tokens", "_redacted")

    def __init__(self, shown: dict[int, int] | None = None) -> None:
        self.text: HeldText[tuple[str, int, int]] = HeldText()
        self.shown = {} if shown is None else shown  # the characters of each choice's text handed out, by choice
        # Where the secrets redacted from a choice's text were in it as the provider wrote it: each one's start and
        # length (`redactions`), by choice.
        self.placed: dict[int, list[tuple[int, int]]] = {}
        # The log probabilities held back with their text, by its channel.
        self.tokens: dict[tuple[str, int, int], list[Any]] = {}
        # The deltas of a batch a secret was redacted from, each with its text as the provider wrote it (what was
        # held of it before, and its own), for `_place`.
        self._redacted: list[tuple[ChunkDelta, str]] = []

    def redact(self, chunks: list[ChatCompletionChunk], ended: bool, template: ChatCompletionChunk | None) -> None:
        """Redact `chunks` in place. What a channel held goes in a chunk of its own once the channel ends, right
        before the chunk that moved on from it (so that a writer of blocks puts it in the block it belongs to); with
        `ended` (the upstream's last), what is still held goes in a last chunk (a stream that said it ended without
        a finish reason)."""
        at = 0
        while at < len(chunks):
            chunk = chunks[at]
            released: list[ChunkChoice] | None = None
            for choice in chunk.choices:
                rest = self._delta(choice)
                if rest is not None:
                    released = [*(released or ()), rest]
            if released is not None:
                chunks.insert(at, _chunk(chunk, released))
                at += 1
            at += 1
        if ended and self.text.held and template is not None:
            ending: dict[int, list[tuple[str, int, int]]] = {}  # (what each choice held, in one choice of its own)
            for channel in self.text.held:
                ending.setdefault(channel[1], []).append(channel)
            chunks.append(_chunk(template, [self._released(ending[index]) for index in sorted(ending)]))
        if self._redacted:
            self._place(chunks)
        if self.placed:
            self._cited(chunks)

    def _delta(self, choice: ChunkChoice) -> ChunkChoice | None:
        """Redact one choice's delta, and its log probabilities once its text was held back or redacted (`_tokens`);
        what the channels it ended had held, if any."""
        index, delta, finished = choice.index, choice.delta, bool(choice.finish_reason)
        text = self.text
        calls = delta.tool_calls
        if not (calls or delta.reasoning_content or delta.refusal):  # (the usual delta: its text alone)
            channel = ("content", index, -1)
            held = text.held
            if not held or (len(held) == 1 and channel in held):
                content = delta.content or ""
                if content or (held and finished):
                    said = held.pop(channel) + content if held else content
                    passed, rest = withheld(said)
                    if rest and not finished:
                        held[channel] = rest
                        delta.content = passed
                    elif passed != content or rest:
                        delta.content = passed + cut_short(rest)  # (finished: what it held goes, a key's beginning not)
                    else:
                        return None  # (the usual delta, as it came)
                    if passed + rest != said:  # (a secret was redacted from it)
                        self._redacted.append((delta, said))
                    if choice.logprobs or self.tokens:
                        self._tokens(choice)
                    return None
                # A delta without text: its role, its finish, annotations, or a text beside its fields (`BESIDE`: a
                # transcript comes in deltas whose `content` is null, OpenRouter's reasoning parts beside its
                # `reasoning`). (Looked for here alone: a delta of text pays nothing for them.)
                if not _beside_in(delta.model_extra):
                    return None
        extra = delta.model_extra
        written = [(name, index, -1) for name in TEXT_FIELDS if getattr(delta, name)]
        if calls:
            written += [("call", index, call.index) for call in calls if call.function and call.function.arguments]
        beside = _beside(index, extra) if extra else []
        ended = None
        if text.held and (written or finished):
            # A channel of this choice the delta does not go on with has ended: it went on to its answer, its calls,
            # its next call, or finished. (A choice holds one of these channels at most: a delta's channels but its
            # last end. A text beside them ends with its choice.)
            going_on = {*written, *(channel for channel, _, _ in beside)}
            gone = [
                c
                for c in text.held
                if c[1] == index and c not in going_on and (finished or c[0] not in BESIDE_CHANNELS)
            ]
            if gone:
                ended = self._released(gone)
        last = len(written) - 1
        for at, channel in enumerate(written):
            ends = finished or at < last
            if channel[0] != "call":
                setattr(delta, channel[0], self._passed(delta, channel, getattr(delta, channel[0]), ends))
                continue
            for call in calls or ():
                function = call.function
                if call.index == channel[2] and function is not None and function.arguments:
                    function.arguments = self._passed(delta, channel, function.arguments, ends)
        for channel, place, member in beside:
            place[member] = self._passed(delta, channel, place[member], finished)
        if choice.logprobs or self.tokens:
            self._tokens(choice)
        return ended

    def _passed(self, delta: ChunkDelta, channel: tuple[str, int, int], value: str, ends: bool) -> str:
        if channel[0] != "content":
            passed = self.text.pass_on(channel, value)
        else:  # (`HeldText.pass_on`, the secrets it redacts kept: `_place`)
            held = self.text.held
            said = held.pop(channel) + value if channel in held else value
            passed, rest = withheld(said)
            if rest:
                held[channel] = rest
            if passed + rest != said:
                self._redacted.append((delta, said))
        return passed + self.text.release(channel) if ends else passed

    def _tokens(self, choice: ChunkChoice) -> None:
        """The choice's log probabilities, once its text was held back or redacted: held back and redacted as their
        own text (`tokens_withheld`), what was held before them put first; all of them once the text they give holds
        nothing back (its choice finished, or what it held went on), so that tokens wait only while their text does
        (and a delta whose text goes as it came has nothing of theirs to send)."""
        index, finished, logprobs = choice.index, bool(choice.finish_reason), choice.logprobs
        for name in TOKENS_OF:
            channel = (name, index, -1)
            given = logprobs.get(name) if isinstance(logprobs, dict) else None
            held = self.tokens.pop(channel, None) if self.tokens else None
            if held is None and not (isinstance(given, list) and given):
                continue
            tokens = [*(held or ()), *(given if isinstance(given, list) else ())]
            passed, rest = tokens_withheld(tokens, finished or channel not in self.text.held)
            if rest:
                self.tokens[channel] = rest
            if not isinstance(logprobs, dict):  # (a finishing delta without its own: what was held goes in it)
                if not passed:
                    continue
                logprobs = choice.logprobs = dict.fromkeys(TOKENS_OF)
            logprobs[name] = passed

    def _place(self, chunks: list[ChatCompletionChunk]) -> None:
        """Where the secrets redacted from this batch's deltas were in their choice's text as the provider wrote it
        (`placed`): past what the client was handed of it before them (`shown`, and the batch's deltas before),
        with each secret redacted before put back."""
        redacted, self._redacted = self._redacted, []
        before = dict(self.shown)
        for chunk in chunks:
            for choice in chunk.choices:
                index, delta = choice.index, choice.delta
                if redacted and delta is redacted[0][0]:
                    known = self.placed.setdefault(index, [])
                    start = before.get(index, 0) + sum(length - len(REDACTED) for _, length in known)
                    known += [(start + at, length) for at, length in redactions(redacted.pop(0)[1])]
                before[index] = before.get(index, 0) + len(delta.content or "")

    def _cited(self, chunks: list[ChatCompletionChunk]) -> None:
        """The annotations of the choices a secret was redacted from, their positions moved past it."""
        for chunk in chunks:
            for choice in chunk.choices:
                extra = choice.delta.model_extra
                secrets = self.placed.get(choice.index)
                if extra and secrets and extra.get("annotations"):
                    positions_moved(extra["annotations"], secrets)

    def _released(self, channels: list[tuple[str, int, int]]) -> ChunkChoice:
        """A choice with what `channels` (of one choice, ended) held, and the log probabilities held with it."""
        from handler.schemas import ChunkChoice, ChunkDelta, FunctionCallDelta, ToolCallDelta

        said: dict[str, Any] = {}
        logprobs: dict[str, Any] | None = None
        for channel in channels:
            name, index, at = channel
            rest = self.text.release(channel)
            if name == "call":
                arguments = ToolCallDelta(index=at, function=FunctionCallDelta(arguments=rest))
                said.setdefault("tool_calls", []).append(arguments)
            elif name in BESIDE_CHANNELS:
                member, _, part = name.partition(".")
                if member == "audio":
                    said["audio"] = {part: rest}
                else:  # (a reasoning part: OpenRouter's type, and its index)
                    said.setdefault(member, []).append({"type": f"reasoning.{part}", part: rest, "index": at})
            else:
                said[name] = rest
            tokens = self.tokens.pop(channel, None) if self.tokens else None
            if tokens is not None:
                logprobs = logprobs or dict.fromkeys(TOKENS_OF)
                logprobs[name] = tokens_withheld(tokens, True)[0]
        return ChunkChoice(index=channels[0][1], delta=ChunkDelta(**said), logprobs=logprobs)


def _beside_in(extra: dict[str, Any] | None) -> bool:
    """Whether a delta's extra members hold a text beside its fields (`BESIDE`)."""
    return extra is not None and any(name in extra for name in BESIDE)


def _beside(index: int, extra: dict[str, Any]) -> list[tuple[tuple[str, int, int], dict[str, Any], str]]:
    """The texts of choice `index`'s delta beside its fields (`BESIDE`): each one's channel, and the object and
    member that hold it."""
    found = []
    audio = extra.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("transcript"), str) and audio["transcript"]:
        found.append((("audio.transcript", index, -1), audio, "transcript"))
    parts = extra.get("reasoning_details")
    for at, part in enumerate(parts if isinstance(parts, list) else ()):
        if not isinstance(part, dict):
            continue
        number = part.get("index")
        number = number if isinstance(number, int) and not isinstance(number, bool) else at
        for member in ("text", "summary"):
            if isinstance(part.get(member), str) and part[member]:
                found.append(((f"reasoning_details.{member}", index, number), part, member))
    return found


def tokens_withheld(tokens: list[Any], ends: bool) -> tuple[list[Any], list[Any]]:
    """A text's log probabilities (its tokens, in order) as `HeldText` passes the text on, redacted as it is
    (`tokens_redacted`, in place): those that may go, and those held back, from the token where the end of their
    joined text could begin a known secret. With `ends` (the text's), none are held back, and a beginning as long as
    the shortest secret is redacted, as `cut_short` redacts the text's."""
    said = "".join(map(token_text, tokens))
    secrets = redactions(said)
    start = max(secret_start(said), secrets[-1][0] + secrets[-1][1] if secrets else 0)
    if ends:
        if len(said) - start >= MIN_SECRET_LENGTH:
            secrets.append((start, len(said) - start))
        tokens_redacted(tokens, secrets)
        return tokens, []
    cut, end = len(tokens), 0
    for at, token in enumerate(tokens):
        end += len(token_text(token))
        if end > start:
            cut = at
            break
    tokens_redacted(tokens, secrets)  # (before the cut: a token held back may end a secret that began before it)
    return tokens[:cut], tokens[cut:]


def _chunk(like: ChatCompletionChunk, choices: list[ChunkChoice]) -> ChatCompletionChunk:
    from handler.schemas import ChatCompletionChunk

    return ChatCompletionChunk(id=like.id, created=like.created, model=like.model, choices=choices)


# --- a provider's own events ----------------------------------------------------------------------

# Where a delta's text is: the event's channel (what the client joins it with), and the object and member holding it.
Locate = Callable[[StreamEvent], "tuple[Located, dict[str, Any]] | None"]
# The channel of the text an event that carries none belongs to, without ending it (None: it belongs to none).
Within = Callable[[StreamEvent], Hashable]

# Events that may come between two deltas of one text and end nothing: Anthropic's `ping` ("any number of ping
# events"), the Responses API's `keepalive`. They go on at once, ahead of the deltas held.
PASSING = frozenset({"ping", "keepalive"})
# The Responses API's events that belong to a text without ending it, and the delta event of that text: an annotation
# of an output text (a citation, its indices positions in that text), audio beside its transcript.
RESPONSES_WITHIN = {
    "response.output_text.annotation.added": "response.output_text.delta",
    "response.audio.delta": "response.audio.transcript.delta",
}


def messages_delta(event: StreamEvent) -> tuple[Located, dict[str, Any]] | None:
    """A Messages `content_block_delta`'s text: its block's (by index), in its delta (`wire.messages_text`)."""
    if event.event != "content_block_delta":
        return None
    payload = orjson.loads(event.data)
    located = messages_text(payload)
    return None if located is None else (located, payload)


def messages_within(event: StreamEvent) -> Hashable:
    """The block a Messages `content_block_delta` that carries no text belongs to (a `citations_delta` of a text
    block, a thinking block's `signature_delta`): a block's text goes on until its `content_block_stop`."""
    if event.event != "content_block_delta":
        return None
    payload = orjson.loads(event.data)
    return payload.get("index") if isinstance(payload, dict) else None


def responses_delta(event: StreamEvent) -> tuple[Located, dict[str, Any]] | None:
    """A Responses text delta's text: its item's part (by type, item, output, content and summary index:
    `wire.responses_text`)."""
    if event.event is not None and event.event not in RESPONSES_DELTAS:
        return None
    payload: Any = orjson.loads(event.data) if event.data and event.data != b"[DONE]" else None
    located = responses_text(payload)
    return None if located is None else (located, payload)


def responses_within(event: StreamEvent) -> Hashable:
    """The part of a Responses output an event that carries no text belongs to (`RESPONSES_WITHIN`), as
    `responses_delta` names the part of that text's deltas."""
    if event.event is not None and event.event not in RESPONSES_WITHIN:
        return None
    payload = orjson.loads(event.data)
    if not isinstance(payload, dict):
        return None
    text = RESPONSES_WITHIN.get(str(payload.get("type")))
    if text is None:
        return None
    get = payload.get
    return (text, get("item_id"), get("output_index"), get("content_index"), get("summary_index"))


class _Held:
    """An event held back: its text, and its payload once the text was changed (it is then written again); what the
    provider wrote of that text (`said`: the deltas joined into it, as they came)."""

    __slots__ = ("event", "payload", "place", "member", "text", "said", "changed")

    def __init__(self, event: StreamEvent, located: Located, payload: dict[str, Any]) -> None:
        self.event = event
        self.payload = payload
        _, self.place, self.member = located
        self.text: str = self.place[self.member]
        self.said = self.text
        self.changed = False

    def written(self) -> StreamEvent:
        if not self.changed:
            return self.event
        self.place[self.member] = self.text
        return StreamEvent(self.event.event, orjson.dumps(self.payload))


class _Alongside:
    """An event of the held text's channel that carries none of it (`Within`), held in its place among the deltas
    and written as it came."""

    __slots__ = ("event",)
    text = said = ""
    changed = False

    def __init__(self, event: StreamEvent) -> None:
        self.event = event

    def written(self) -> StreamEvent:
        return self.event


def _tokens_joined(texts: list[_Held], ends: bool) -> None:
    """The log probabilities of the deltas joined into the first of `texts` (a Responses output text's `logprobs`,
    its tokens), joined into it as well, redacted as their text is (`tokens_withheld`: none held back, a beginning a
    text `ends` with as long as a secret redacted); left out, the others' would be lost, and the first's
    would give the secret's first tokens."""
    lists = [h.payload.get("logprobs") for h in texts]
    if not any(isinstance(tokens, list) and tokens for tokens in lists):
        return
    tokens = [token for given in lists if isinstance(given, list) for token in given]
    texts[0].payload["logprobs"] = tokens_withheld(tokens, True)[0] if ends else tokens
    if not ends:
        tokens_redacted(tokens)


def _passes(located: Located) -> bool:
    """Whether a delta's text may go as it is, with nothing held before it."""
    text = located[1][located[2]]
    passed, rest = withheld(text)
    return not rest and passed == text


class EventRedactor:
    """The secrets held back from one stream of a provider's own events, whose deltas `locate` finds.

    While the end of a channel's text could begin a secret, its events wait (`held`); any other event (but a ping),
    or the stream's end, sends them on as they are (the channel has ended, or another began: nothing of theirs joins
    what follows). An event of the channel that carries no text and does not end it (`within`: a citation, an
    annotation) waits with them in its place (it let them go, and the client joined the text after it to the
    beginning of a secret it had been sent: the secret whole).
    The events that complete a secret are joined into the first of them, its text redacted, and written again; the
    others are left out (an SDK accumulates the same text), but for those that carry no text, which follow it as they
    came (a Responses stream's `sequence_number`s stay in order). With `placed`, the redactor keeps where the secrets
    were in the text of each event it writes again (`placed`, by event), for a relay that moves what gives a position
    in that text (a Responses annotation's indices) to where it is in the client's.
    """

    __slots__ = ("locate", "within", "held", "channel", "placed")

    def __init__(self, locate: Locate, within: Within, placed: bool = False) -> None:
        self.locate = locate
        self.within = within
        self.held: list[_Held | _Alongside] = []
        self.channel: Hashable = None
        # The events written again, by event: where the secrets redacted in each were in what the provider wrote of
        # its text (`redactions`), until the relay takes them.
        self.placed: dict[StreamEvent, list[tuple[int, int]]] | None = {} if placed else None

    def relay(self, events: list[StreamEvent]) -> list[StreamEvent]:
        """The events that may go now, of `events` and of those held before."""
        out: list[StreamEvent] = []
        for event in events:
            try:
                found = self.locate(event)
            except orjson.JSONDecodeError:
                found = None  # (the relay says what is wrong with it)
            if found is None:
                if self.held and event.event not in PASSING:
                    if self._within(event):
                        self.held.append(_Alongside(event))
                        continue
                    out += self.release()
                out.append(event)
                continue
            located, payload = found
            if self.held:
                if located[0] != self.channel:
                    out += self.release()
            elif _passes(located):  # (the usual event: nothing in it to hold back or redact)
                out.append(event)
                continue
            self.channel = located[0]
            self._add(_Held(event, located, payload), out)
        return out

    def release(self) -> list[StreamEvent]:
        """The events held, to go now: their channel has ended. The beginning of a secret they end with, as long as
        the shortest secret the gateway knows, is redacted (`cut_short`), in the first of them, as a secret they
        complete is (`_add`)."""
        held, self.held = self.held, []
        texts = [h for h in held if isinstance(h, _Held)]
        joined = "".join(h.text for h in texts)
        passed, rest = withheld(joined)
        if cut_short(rest) != rest:
            first = texts[0]
            first.text, first.said, first.changed = passed + REDACTED, "".join(h.said for h in texts), True
            _tokens_joined(texts, ends=True)
            held = [first, *(h for h in held if isinstance(h, _Alongside))]
        return self._written(held)

    def _written(self, held: list[_Held | _Alongside]) -> list[StreamEvent]:
        """Events held, as they go: the first written again if it was redacted (the events a secret completed are
        joined into the first held), and where, in `placed`."""
        out = [h.written() for h in held]
        if out and held[0].changed and self.placed is not None:
            self.placed[out[0]] = redactions(held[0].said)
        return out

    def _within(self, event: StreamEvent) -> bool:
        """Whether `event` carries none of the held channel's text and leaves it open (`within`)."""
        try:
            channel = self.within(event)
        except orjson.JSONDecodeError:
            return False  # (the relay says what is wrong with it)
        return channel is not None and channel == self.channel

    def _add(self, event: _Held, out: list[StreamEvent]) -> None:
        held = self.held
        held.append(event)
        joined = "".join(h.text for h in held)
        passed, rest = withheld(joined)
        if passed + rest != joined:
            # A secret completed: the first event held carries the text of all, redacted (the other deltas are left
            # out, those without text follow it), and waits as the others did if its end could begin a secret again.
            first = held[0]
            first.text, first.said, first.changed = passed + rest, "".join(h.said for h in held), True
            _tokens_joined([h for h in held if isinstance(h, _Held)], ends=False)
            self.held = [first, *(h for h in held if isinstance(h, _Alongside))]
            if not rest:
                out += self.release()
            return
        if not rest:
            out += self.release()
            return
        # Those wholly before what is held back go now, as they are.
        start = 0
        for i, h in enumerate(held):
            if start + len(h.text) > len(passed):
                out += self._written(held[:i])
                self.held = held[i:]
                return
            start += len(h.text)
