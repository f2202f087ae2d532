"""Attribution tags: the `name=value` pairs a request (`x-gateway-tags`) or a key (its default tags) carries onto
its ledger lines, and how the two combine.

Precedence, nearest the root wins: an ancestor key's tags, then the key's own, then the request header's. A tag
set on a key is the operator's attribution (the team a budget belongs to): neither a child key nor a client's
header can relabel that spend, they can only add tags of other names. A child minted from a tagged key carries
its parent's tags whatever it asks for, so no holder can mint their way out of their team's bill.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache

from handler.errors import InvalidRequestError
from handler.ports import KeyRecord
from handler.redaction import unkeyed

TAG = r"[A-Za-z0-9_.:/@+-]{1,128}"  # a tag's name or value, a session's id
MAX_TAGS = 16
TAG_RULE = "names and values are up to 128 letters, digits or _.:/@+-"


@cache
def tag_pattern() -> re.Pattern[str]:
    """`TAG` compiled, on the first request that carries tags or a session: compiled at import, it would cost every
    Lambda cold start 0.2 million instructions (callgrind), most of whose requests carry neither."""
    return re.compile(TAG)


def parse_tags(raw: str | None, param: str = "x-gateway-tags", kept: Callable[[str], str] = unkeyed) -> dict[str, str]:
    """`team=search,feature=autocomplete`: at most 16 pairs of plain words (letters, digits and `_.:/@+-`, up to
    128 each), so a tag can never break a log line, a CSV row or a header; else a 400 naming `param`. `kept`: a
    value as it is kept, and what a name may not change under (`validate_tags`)."""
    if raw is None or not raw.strip():
        return {}
    pairs = []
    for pair in raw.split(","):
        name, sep, value = (part.strip() for part in pair.partition("="))
        if not sep:
            raise InvalidRequestError(f"{param} takes name=value pairs separated by commas; {TAG_RULE}", param=param)
        pairs.append((name, value))
    return validate_tags(pairs, param, kept)


def validate_tags(
    pairs: Iterable[tuple[str, str]] | Mapping[str, str], param: str, kept: Callable[[str], str] = unkeyed
) -> dict[str, str]:
    """The same rules for tags given as a JSON object (the key API) as for the header. A value holding a key is kept
    redacted (`kept`: `unkeyed`, or a request's own, which knows its key's secret too); a name is refused
    (`tag_name`)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    tags: dict[str, str] = {}
    tag = tag_pattern()
    count = 0
    for name, value in items:
        if not (tag.fullmatch(name) and tag.fullmatch(value)):
            raise InvalidRequestError(f"{param} takes name=value pairs separated by commas; {TAG_RULE}", param=param)
        count += 1  # (pairs, not names: 40 copies of `t=1` are 40 pairs)
        value = kept(value)
        # (The last value had silently replaced the first.)
        if tags.setdefault(tag_name(name, param, kept), value) != value:
            raise InvalidRequestError(f"{param} gives the tag '{name}' two values; give each tag once", param=param)
    if count > MAX_TAGS:
        raise InvalidRequestError(f"{param} takes at most {MAX_TAGS} tags", param=param)
    return tags


def tag_name(name: str, param: str, kept: Callable[[str], str] = unkeyed) -> str:
    """`name`, a tag's, unless it holds a key or a known secret (as `kept` finds them in a value): then a 400
    naming `param`, not the name. A name is kept as given, on ledger lines and in the reports, spans and CSV exports
    they feed (`gwk_<id>_<secret>=1` put a client's key in every admin's report), and two names redacted would be
    one."""
    if kept(name) != name:
        raise InvalidRequestError(
            f"{param}: a tag's name may not hold a key or a secret (a value may: it is redacted)", param=param
        )
    return name


MAX_SESSION_CHARS = 256  # as a line's `user` (Claude Code's and Codex's session ids are 36-character UUIDs)
SESSION_RULE = f"a session id is 1 to {MAX_SESSION_CHARS} printable characters (no control characters)"


def session_id(raw: str, header: str, kept: Callable[[str], str] = unkeyed) -> str | None:
    """The agent session a client's `header` names: any printable text up to `MAX_SESSION_CHARS` (a UUID, `my
    session`, `ticket#42`), kept as the line's `session` with any key in it redacted (`kept`, as a tag's value); none
    when empty. Anything else is a 400 naming `header` and the rule: dropped unsaid, an id outside the tags' alphabet
    would have its spend reported under `(none)`, and a control character could break a log line or a CSV row."""
    value = raw.strip()  # (as the client wrote it: `app.header_text`)
    if not value:
        return None
    if len(value) > MAX_SESSION_CHARS or not value.isprintable():
        raise InvalidRequestError(f"{header}: {SESSION_RULE}", param=header)
    return kept(value)


def stored_tags(tags: dict[str, str]) -> dict[str, str]:
    """A key's default tags as its stored record has them, each name and value with any key in it redacted: a record
    tagged before names holding a key were refused (`tag_name`), or before a key without its `gwk_` was known for
    one, would carry it onto every new line of the key. (Once per record read from the store, not per request.)"""
    return {unkeyed(name): unkeyed(value) for name, value in tags.items()}


def line_tags(lineage: list[KeyRecord], requested: Mapping[str, str]) -> dict[str, str]:
    """The tags of a request's ledger line (a dict of its own): the header's, under the key's own, under its
    ancestors' (`lineage` is nearest first, so the root's are applied last and win)."""
    tags = dict(requested)
    for holder in lineage:
        tags.update(holder.tags)
    return tags


def format_tags(tags: Mapping[str, str]) -> str:
    """Tags as the header writes them (`team=search,feature=autocomplete`)."""
    return ",".join(f"{name}={value}" for name, value in tags.items())
