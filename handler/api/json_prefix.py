"""Whether a streamed tool call's arguments are, so far, the start of one JSON object (`JsonPrefix`), checked as each
fragment comes, in time linear in their length; and what makes the part found good a whole object (`closing`).

A Messages client's SDK parses a call's `input_json_delta` fragments as they accumulate (the Anthropic SDK with
jiter's partial mode) and fails the whole stream on a fragment that cannot begin JSON (`Unable to parse tool parameter
JSON`): the text, the usage and the rest of the answer lost with it. Claude only ever streams JSON there; a model on a
compatible server may write `{'city': 'Paris'}`. A fragment that would make the arguments other than the start of a
JSON object is held back (`handler.api.messages_out.EventWriter`), and the call's input ends as the whole answer's
does, `{"_raw": "<the arguments>"}`, where nothing of it went before its first member, else the members that did, the
arguments beside them as `_raw`."""

from __future__ import annotations

import re

import orjson

STRING_RUN = re.compile(r'[^"\\\x00-\x1f]*')
DIGITS = re.compile(r"[0-9]*")
# A number read as RFC 8259 has it, one part at a time: where it stands (`SIGN` after `-`, `ZERO` a leading 0, `INT`
# its other digits, `POINT` and `FRACTION`, `EXP` after `e`, `EXP_SIGN`, `EXP_DIGITS`), what each character takes
# it to, and where it may end. Each character moves it once: a number of any length is read in time linear in it
# (a pattern matched against all of it at each digit was quadratic: 80,000 digits, 2.2 s of the event loop).
SIGN, ZERO, INT, POINT, FRACTION, EXP, EXP_SIGN, EXP_DIGITS = range(8)
NUMBER_STEPS: dict[tuple[int, str], int] = {}
for _digit in "0123456789":
    NUMBER_STEPS.update({(SIGN, _digit): ZERO if _digit == "0" else INT, (INT, _digit): INT, (POINT, _digit): FRACTION})
    NUMBER_STEPS.update({(FRACTION, _digit): FRACTION, (EXP, _digit): EXP_DIGITS, (EXP_SIGN, _digit): EXP_DIGITS})
    NUMBER_STEPS[(EXP_DIGITS, _digit)] = EXP_DIGITS
for _part in (ZERO, INT):
    NUMBER_STEPS.update({(_part, "."): POINT, (_part, "e"): EXP, (_part, "E"): EXP})
NUMBER_STEPS.update({(FRACTION, "e"): EXP, (FRACTION, "E"): EXP, (EXP, "+"): EXP_SIGN, (EXP, "-"): EXP_SIGN})
WHOLE_NUMBER = frozenset({ZERO, INT, FRACTION, EXP_DIGITS})
# The deepest the arguments may nest: the Anthropic SDK reads them with jiter, whose partial mode stops at a depth of
# 202 ("recursion limit exceeded", the whole stream failed); deeper is held back, as what is not JSON is.
MAX_DEPTH = 200
WHITESPACE = frozenset(" \t\n\r")
LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
HEX = frozenset("0123456789abcdefABCDEF")
ESCAPED = frozenset('"\\/bfnrt')
RAW = "_raw"

# Where the text has got to: before the object (`TOP`); a value expected (`VALUE`, or `FIRST_VALUE` right after `[`,
# where `]` may come); a member's name expected (`KEY`, after a comma; `FIRST_KEY` right after `{`, where `}` may
# come); its colon (`COLON`); a value ended, a comma or the container's end expected (`AFTER`); in a string, an escape,
# its `\u` digits, a number or a literal; past the object's end (`DONE`).
TOP, VALUE, FIRST_VALUE, KEY, FIRST_KEY, COLON, AFTER, STRING, ESCAPE, UNICODE, NUMBER_MODE, LITERAL, DONE = range(13)


class JsonPrefix:
    """A streamed object's text, checked fragment by fragment (`feed`): each is taken whole or not at all, and once one
    is not, the rest are not either (`broken`); the state is then the last taken fragment's."""

    __slots__ = ("stack", "mode", "key", "number", "literal", "hex", "high", "broken")

    def __init__(self) -> None:
        self.stack: list[str] = []  # the open containers, `{` or `[`
        self.mode = TOP
        self.key = False  # the string being read is a member's name
        self.number = SIGN  # where the number being read stands (`NUMBER_STEPS`)
        self.literal = ""  # what is left of the literal being read
        self.hex = ""  # the digits of a `\u` escape read so far
        self.high = False  # the string's last character a `\u` escape of a high surrogate, its low one to come
        self.broken = False

    def feed(self, text: str) -> bool:
        """Whether the arguments with `text` after them are still the start of a JSON object: then it is taken."""
        if self.broken:
            return False
        saved = (list(self.stack), self.mode, self.key, self.number, self.literal, self.hex, self.high)
        if self._read(text):
            return True
        self.stack, self.mode, self.key, self.number, self.literal, self.hex, self.high = saved
        self.broken = True
        return False

    def _read(self, text: str) -> bool:  # noqa: C901, PLR0912 - one state machine, read character by character
        i, end = 0, len(text)
        stack = self.stack
        while i < end:
            mode = self.mode
            if mode == STRING:
                run = STRING_RUN.match(text, i).end()  # type: ignore[union-attr]  # (it matches the empty string too)
                if run > i:
                    if self.high:
                        return False  # (a high surrogate's escape alone: strict parsers, jiter's among them, refuse it)
                    i = run
                if i == end:
                    return True
                c = text[i]
                i += 1
                if self.high and c != "\\":
                    return False
                if c == '"':
                    self.mode = COLON if self.key else self._after()
                elif c == "\\":
                    self.mode = ESCAPE
                else:
                    return False  # a control character, which JSON has escaped in a string
                continue
            c = text[i]
            i += 1
            if mode == ESCAPE:
                if c == "u":
                    self.mode, self.hex = UNICODE, ""
                elif c in ESCAPED and not self.high:
                    self.mode = STRING
                else:
                    return False
            elif mode == UNICODE:
                if c not in HEX:
                    return False
                self.hex += c
                if len(self.hex) == 4:
                    point = int(self.hex, 16)
                    if self.high != (0xDC00 <= point <= 0xDFFF):
                        return False  # (a surrogate's escape without its pair)
                    self.mode, self.high = STRING, not self.high and 0xD800 <= point <= 0xDBFF
            elif mode == NUMBER_MODE:
                if self.number in (INT, FRACTION, EXP_DIGITS):  # (a run of digits, skipped at once)
                    i = DIGITS.match(text, i - 1).end()  # type: ignore[union-attr]
                    if i == end:
                        return True
                    c = text[i]
                    i += 1
                step = NUMBER_STEPS.get((self.number, c))
                if step is not None:
                    self.number = step
                    continue
                if self.number not in WHOLE_NUMBER:
                    return False
                self.mode = self._after()
                i -= 1  # (the character after the number, read as what follows a value)
            elif mode == LITERAL:
                if c != self.literal[0]:
                    return False
                self.literal = self.literal[1:]
                if not self.literal:
                    self.mode = self._after()
            elif c in WHITESPACE:
                continue
            elif mode == TOP:
                if c != "{":
                    return False  # (a call's input is an object)
                stack.append("{")
                self.mode = FIRST_KEY
            elif mode in (VALUE, FIRST_VALUE):
                if c == "]" and mode == FIRST_VALUE:
                    stack.pop()
                    self.mode = self._after()
                elif c in "{[":
                    if len(stack) >= MAX_DEPTH:
                        return False
                    stack.append(c)
                    self.mode = FIRST_KEY if c == "{" else FIRST_VALUE
                elif c == '"':
                    self.mode, self.key = STRING, False
                elif c == "-" or c.isdigit() and c.isascii():
                    self.mode, self.number = NUMBER_MODE, NUMBER_STEPS[(SIGN, c)] if c != "-" else SIGN
                elif c in LITERALS:
                    self.mode, self.literal = LITERAL, LITERALS[c]
                else:
                    return False
            elif mode in (KEY, FIRST_KEY):
                if c == '"':
                    self.mode, self.key = STRING, True
                elif c == "}" and mode == FIRST_KEY:
                    stack.pop()
                    self.mode = self._after()
                else:
                    return False
            elif mode == COLON:
                if c != ":":
                    return False
                self.mode = VALUE
            elif mode == AFTER:
                opened = stack[-1]
                if c == ",":
                    self.mode = KEY if opened == "{" else VALUE
                elif c == ("}" if opened == "{" else "]"):
                    stack.pop()
                    self.mode = self._after()
                else:
                    return False
            else:  # DONE: nothing but whitespace after the object
                return False
        return True

    def _after(self) -> int:
        return AFTER if self.stack else DONE

    @property
    def waits(self) -> bool:
        """Whether the text taken must wait for more before it is relayed: it ends inside a character's escape (a
        backslash, a `u` escape's first digits, a high surrogate's escape whose low one is to come), or is whitespace
        before the object, which a partial parse refuses alone (jiter: "lone leading surrogate", "EOF while parsing
        a value")."""
        return self.mode in (TOP, ESCAPE, UNICODE) or self.high

    @property
    def started(self) -> bool:
        """Whether the object has begun (anything but whitespace taken)."""
        return self.mode != TOP

    def cut_partial(self, held: str) -> str:
        """`held`, the text taken and not relayed (`waits`), without the character whose escape it ends inside (the
        state then as before it): what the closing finishes is then text a strict parser reads whatever came of the
        escape (a lone surrogate's, refused, would have been written back as it was)."""
        cut = {ESCAPE: 1, UNICODE: 2 + len(self.hex)}.get(self.mode, 0) + (6 if self.high else 0)
        if self.mode in (ESCAPE, UNICODE) or self.high:
            self.mode, self.high, self.hex = STRING, False, ""
        return held[: len(held) - cut] if cut else held

    def _string_end(self, mode: int) -> str:
        """What ends the string being read where it stands (an escape finished) as text strict parsers read: a high
        surrogate's escape is given a low one (orjson and jiter refuse one alone)."""
        low = "udc00"
        if mode == ESCAPE:
            return low if self.high else "\\"
        if mode == UNICODE:
            if self.high and low[1:].startswith(self.hex.lower()):
                return low[1 + len(self.hex) :]
            digits = self.hex + "0" * (4 - len(self.hex))
            return digits[len(self.hex) :] + (
                "\\" + low if not self.high and 0xD800 <= int(digits, 16) <= 0xDBFF else ""
            )
        return "\\" + low if self.high else ""

    def closing(self, raw: str) -> str:
        """What makes the text taken (the state: `broken` after it) one whole object, the arguments as they came
        (`raw`) in it as `_raw` where its outermost object can take a member: its unfinished token finished, each
        open container closed."""
        out = []
        mode = self.mode
        if mode in (STRING, ESCAPE, UNICODE):
            out.append(self._string_end(mode) + '"')
            mode = COLON if self.key else AFTER
        elif mode == NUMBER_MODE:
            out.append("" if self.number in WHOLE_NUMBER else "0")
            mode = AFTER
        elif mode == LITERAL:
            out.append(self.literal)
            mode = AFTER
        if mode == COLON:
            out.append(":null")
            mode = AFTER
        elif mode == VALUE:
            out.append("null")
            mode = AFTER
        member = orjson.dumps(RAW).decode() + ":" + orjson.dumps(raw).decode()
        if mode == TOP:
            return "{" + member + "}"
        for depth in range(len(self.stack), 0, -1):
            opened = self.stack[depth - 1]
            if opened == "{":
                outermost = depth == 1
                if mode in (KEY, FIRST_KEY):
                    out.append(member if outermost else f"{orjson.dumps(RAW).decode()}:null")
                elif outermost:
                    out.append("," + member)
                out.append("}")
            else:
                out.append("]")
            mode = AFTER
        return "".join(out)
