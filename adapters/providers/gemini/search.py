"""A translated request's web search (`ChatRequest.web_search`) as Gemini's Grounding with Google Search, and what its
answer says of the searches, in OpenAI's words.

The `google_search` tool takes no limit on the searches, no context size, no user location and no sites to keep to
(the gateway names those dropped); the sites never to search it takes (`excludeDomains`). The answer's candidate
carries `groundingMetadata`: the queries the model ran
(`webSearchQueries`), the pages it used (`groundingChunks`, each `web.uri` and `web.title`) and which spans of its
text each supports (`groundingSupports`: a `segment`'s `startIndex` and `endIndex`, in bytes of the text, and its
`groundingChunkIndices`). Google bills Gemini 3 and later per search query the model ran, the models before per
grounded prompt (one, however many queries); a grounding that names pages and no query ran one, its query unknown.
The answer carries them as OpenAI's do: each query a `web_search_call` of a Responses answer (the pages on the
first) and each supported span a `url_citation` annotation per page."""

import re
from typing import Any

from adapters.providers.params import url_citation
from handler.schemas import WebSearch


def search_tool(search: WebSearch) -> dict[str, Any]:
    """Google Search for `search`: the sites it is never to search (Anthropic's tool's `blocked_domains`) as its
    `excludeDomains`."""
    return {"google_search": {"excludeDomains": list(search.blocked)} if search.blocked else {}}


# The Gemini generation a model id names (`gemini-3-pro-preview`, `gemini-2.5-flash`): from 3 on, billed per query.
GENERATION = re.compile(r"gemini-(\d+)")
PER_QUERY_FROM = 3


def bills_per_prompt(model: str) -> bool:
    """Whether `model` is a Gemini before 3, which Google bills per grounded prompt, not per query (a model whose
    generation its name does not tell, a moving alias, is not known to)."""
    generation = GENERATION.search(model)
    return generation is not None and int(generation.group(1)) < PER_QUERY_FROM


def billed_searches(model: str, queries: int) -> int:
    """The searches Google bills an answer that ran `queries`: each, from Gemini 3 on; one grounded prompt before.
    A model whose generation its name does not tell (a moving alias, `gemini-flash-latest`, Gemini 3 now) is charged
    each, as it is reserved (`bills_per_prompt`): charged one, it was billed a third of three queries (found by
    review, mergerev36b)."""
    return min(queries, 1) if bills_per_prompt(model) else queries


def _offset(value: Any) -> int | None:
    """One of Gemini's byte offsets (a segment's `startIndex`, `endIndex`); None for one that is not an integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _characters(text: str, offsets: list[int]) -> dict[int, int]:
    """The character offset in `text` of each of Gemini's byte offsets (`offsets`, in bytes of its UTF-8): a character
    an offset cuts is not counted, as the bytes cut there decode. Each part of the text is decoded once, in the
    offsets' order, however many supports point into it (encoded again for each, it would be O(text x supports))."""
    if text.isascii():
        return {offset: min(offset, len(text)) for offset in offsets}
    data = text.encode()
    found: dict[int, int] = {}
    start = count = 0
    for offset in sorted(set(offsets)):
        end = min(offset, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # (inside a character: back to its first byte)
            end -= 1
        count += len(data[start:end].decode())
        found[offset], start = count, end
    return found


def _listed(value: Any) -> list[Any]:
    """A member of the grounding that is a list, as Gemini sends it; anything else is none (a number there was read
    as a list, a TypeError that threw away the whole answer, its text and usage sound, as the provider's malformed
    one: a 502, charged, and the next deployment tried and billed again)."""
    return value if isinstance(value, list) else []


def _webs(meta: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The grounding's pages (`groundingChunks`), each its `web` where that has a URL, else None (kept, so that the
    supports' indices still point at theirs)."""
    pages = [chunk.get("web") for chunk in _listed(meta.get("groundingChunks")) if isinstance(chunk, dict)]
    return [page if isinstance(page, dict) and isinstance(page.get("uri"), str) else None for page in pages]


def _source(web: dict[str, Any]) -> dict[str, Any]:
    """A page of the grounding as a search's source: its URL, and its title where Gemini gives one (a Messages
    answer's `web_search_result` needs it; the Responses API's `web_search_call` shows the URL alone:
    `responses_api.search_action`)."""
    title = web.get("title")
    return {"type": "url", "url": web["uri"], **({"title": title} if isinstance(title, str) else {})}


def _queries(meta: dict[str, Any], webs: list[dict[str, Any] | None]) -> list[str]:
    """The queries the grounding says ran (`webSearchQueries`); where it names pages (`webs`) and no query, one whose
    query is unknown (""): a grounded answer ran a search, and is billed one."""
    queries = [query for query in _listed(meta.get("webSearchQueries")) if isinstance(query, str)]
    return queries or ([""] if any(web is not None for web in webs) else [])


def queries_run(meta: Any) -> int:
    """How many searches a candidate's `groundingMetadata` (`meta`) says ran: `grounding`'s, counted without making
    them or the annotations."""
    return len(_queries(meta, _webs(meta))) if isinstance(meta, dict) else 0


def grounding(meta: Any, text: str, start: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A candidate's `groundingMetadata` (`meta`) as its searches (`web_search_call`s, the internal form's
    `AssistantMessage.web_searches`) and the `url_citation` annotations of its text (`text`, whose first character is
    the answer's `start`th)."""
    if not isinstance(meta, dict):
        return [], []
    webs = _webs(meta)
    sources = [_source(web) for web in webs if web is not None]
    searches = [
        {
            "id": f"ws_{i}",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": query, **({"sources": sources} if i == 0 else {})},
        }
        for i, query in enumerate(_queries(meta, webs))
    ]
    spans: list[tuple[int, int, Any]] = []  # each support's byte offsets, and the pages it cites
    for support in _listed(meta.get("groundingSupports")):
        segment = support.get("segment") if isinstance(support, dict) else None
        if not isinstance(segment, dict):
            continue
        begin, end = _offset(segment.get("startIndex", 0)), _offset(segment.get("endIndex"))
        if begin is not None and end is not None:
            spans.append((begin, end, support.get("groundingChunkIndices")))
    at = _characters(text, [offset for begin, end, _ in spans for offset in (begin, end)]) if spans else {}
    annotations: list[dict[str, Any]] = []
    for begin, end, indices in spans:
        for index in _listed(indices):
            web = webs[index] if isinstance(index, int) and 0 <= index < len(webs) else None
            if web is not None:
                title = web.get("title") if isinstance(web.get("title"), str) else None
                annotations.append(url_citation(web["uri"], title, start + at[begin], start + at[end]))
    return searches, annotations
