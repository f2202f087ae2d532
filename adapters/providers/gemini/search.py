"""A translated request's web search (`ChatRequest.web_search`) as Gemini's Grounding with Google Search, and what its
answer says of the searches, in OpenAI's words.

The `google_search` tool takes no options: no limit on the searches, no context size, no user location (the
gateway names those dropped). The answer's candidate carries `groundingMetadata`: the queries the model ran
(`webSearchQueries`), the pages it used (`groundingChunks`, each `web.uri` and `web.title`) and which spans of its
text each supports (`groundingSupports`: a `segment`'s `startIndex` and `endIndex`, in bytes of the text, and its
`groundingChunkIndices`). Google bills Gemini 3 and later per search query the model ran, the models before per
grounded prompt (one, however many queries); a grounding that names pages and no query ran one, its query unknown.
The answer carries them as OpenAI's do: each query a `web_search_call` of a Responses answer (the pages on the
first) and each supported span a `url_citation` annotation per page."""

import re
from typing import Any

from adapters.providers.params import url_citation

SEARCH_TOOL: dict[str, Any] = {"google_search": {}}
# The Gemini generation a model id names (`gemini-3-pro-preview`, `gemini-2.5-flash`): from 3 on, billed per query.
GENERATION = re.compile(r"gemini-(\d+)")
PER_QUERY_FROM = 3


def billed_searches(model: str, queries: int) -> int:
    """The searches Google bills an answer that ran `queries`: each, from Gemini 3 on; one grounded prompt before."""
    generation = GENERATION.search(model)
    if generation is not None and int(generation.group(1)) >= PER_QUERY_FROM:
        return queries
    return min(queries, 1)


def _characters(text: str, offset: Any) -> int | None:
    """The character offset in `text` of Gemini's byte offset `offset` (None for one that is not an integer)."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return len(text.encode()[:offset].decode(errors="ignore"))


def _listed(value: Any) -> list[Any]:
    """A member of the grounding that is a list, as Gemini sends it; anything else is none (a number there was read
    as a list, a TypeError that threw away the whole answer, its text and usage sound, as the provider's malformed
    one: a 502, charged, and the next deployment tried and billed again)."""
    return value if isinstance(value, list) else []


def grounding(meta: Any, text: str, start: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A candidate's `groundingMetadata` (`meta`) as its searches (`web_search_call`s, the internal form's
    `AssistantMessage.web_searches`) and the `url_citation` annotations of its text (`text`, whose first character is
    the answer's `start`th)."""
    if not isinstance(meta, dict):
        return [], []
    queries = [query for query in _listed(meta.get("webSearchQueries")) if isinstance(query, str)]
    pages = [chunk.get("web") for chunk in _listed(meta.get("groundingChunks")) if isinstance(chunk, dict)]
    webs = [page if isinstance(page, dict) and isinstance(page.get("uri"), str) else None for page in pages]
    sources = [{"type": "url", "url": web["uri"]} for web in webs if web is not None]
    if sources and not queries:
        queries = [""]  # (pages found, their queries unnamed: a grounded answer ran a search, and is billed one)
    searches = [
        {
            "id": f"ws_{i}",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": query, **({"sources": sources} if i == 0 else {})},
        }
        for i, query in enumerate(queries)
    ]
    annotations: list[dict[str, Any]] = []
    for support in _listed(meta.get("groundingSupports")):
        segment = support.get("segment") if isinstance(support, dict) else None
        if not isinstance(segment, dict):
            continue
        begin, end = _characters(text, segment.get("startIndex", 0)), _characters(text, segment.get("endIndex"))
        if begin is None or end is None:
            continue
        for index in _listed(support.get("groundingChunkIndices")):
            web = webs[index] if isinstance(index, int) and 0 <= index < len(webs) else None
            if web is not None:
                title = web.get("title") if isinstance(web.get("title"), str) else None
                annotations.append(url_citation(web["uri"], title, start + begin, start + end))
    return searches, annotations
