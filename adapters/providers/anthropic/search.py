"""A translated request's web search (`ChatRequest.web_search`) as Anthropic's web search tool, and what its answer
says of the searches, in OpenAI's words.

Claude runs the tool itself: each search is a `server_tool_use` block (`name: "web_search"`, its `input.query`)
followed by a `web_search_tool_result` block (`tool_use_id`, and the results' `url`, `title`, ... or an error's
`error_code`); the text that uses a result cites it (`citations` of type `web_search_result_location`: `url`,
`title`, `cited_text`). Each search is billed (`usage.server_tool_use.web_search_requests`, read with the usage).
The answer carries them as OpenAI's do: each search a `web_search_call` of a Responses answer (`status`, `action`:
the query and its sources) and each citation a `url_citation` annotation of the text that cites it."""

from typing import Any

import orjson

from adapters.providers.params import url_citation
from handler.schemas import WebSearch

SEARCH_TOOL = "web_search_20250305"  # (the version every Claude model with search takes)
SEARCH_NAME = "web_search"


def search_tool(search: WebSearch) -> dict[str, Any]:
    """Anthropic's search tool for `search`: its limit as `max_uses`, the user's location and the sites allowed and
    blocked as the tool takes them."""
    tool: dict[str, Any] = {"type": SEARCH_TOOL, "name": SEARCH_NAME, "max_uses": search.most}
    if search.location:
        tool["user_location"] = {"type": "approximate", **search.location}
    if search.domains:
        tool["allowed_domains"] = list(search.domains)
    if search.blocked:
        tool["blocked_domains"] = list(search.blocked)
    return tool


def citations_of(citations: Any, start: int, end: int) -> list[dict[str, Any]]:
    """The annotations of a text block (`start`..`end` of the content) that cites search results (its `citations`;
    those of documents, which have no URL, are not the search's)."""
    if not isinstance(citations, list):
        return []
    return [
        url_citation(cited["url"], cited.get("title") if isinstance(cited.get("title"), str) else None, start, end)
        for cited in citations
        if isinstance(cited, dict)
        and cited.get("type") == "web_search_result_location"
        and isinstance(cited.get("url"), str)
    ]


class Searches:
    """The searches of one answer, whole or streamed, by their block's id, in the order Claude ran them: each a
    `web_search_call` in the internal form (`AssistantMessage.web_searches`), `searching` until its results came."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self._queries: dict[str, list[str]] = {}  # a streamed call's input so far (`input_json_delta` fragments)
        self._left_given = False  # the searches left without results were given (`left`)

    def started(self, block_id: str | None, given: Any) -> None:
        """A `server_tool_use` block of the search tool (its `input`, whole in an answer, empty in a stream)."""
        query = given.get("query") if isinstance(given, dict) else None
        action: dict[str, Any] = {"type": "search", "query": query if isinstance(query, str) else ""}
        call_id = block_id or f"srvtoolu_{len(self.calls)}"
        self.calls[call_id] = {"id": call_id, "type": "web_search_call", "status": "searching", "action": action}

    def read(self, block: Any) -> None:
        """A block of a whole answer: a `server_tool_use` of the search tool starts a search, a
        `web_search_tool_result` ends one (any other server tool's blocks are not the search's)."""
        if block.type == "server_tool_use" and block.name == SEARCH_NAME:
            self.started(block.id, block.input)
        elif block.type == "web_search_tool_result":
            self.found(block.model_dump())

    def streamed_input(self, block_id: str, fragment: str) -> None:
        self._queries.setdefault(block_id, []).append(fragment)

    def found(self, block: dict[str, Any]) -> dict[str, Any] | None:
        """A `web_search_tool_result` block: its call, done (`failed` for an error's), with the results' URLs as
        its sources. None for a result of no search the answer started."""
        call = self.calls.get(str(block.get("tool_use_id")))
        if call is None:
            return None
        self._streamed_query(call)
        content = block.get("content")
        if isinstance(content, list):
            urls = [r["url"] for r in content if isinstance(r, dict) and isinstance(r.get("url"), str)]
            call["action"]["sources"] = [{"type": "url", "url": url} for url in urls]
            call["status"] = "completed"
        else:
            call["status"] = "failed"  # (`web_search_tool_result_error`: `max_uses_exceeded`, `unavailable`, ...)
        return call

    def _streamed_query(self, call: dict[str, Any]) -> None:
        """A streamed call's query, as its input's fragments wrote it (its block opened with none)."""
        written = self._queries.pop(call["id"], None)
        if written:
            try:
                query = orjson.loads("".join(written)).get("query")
            except (ValueError, AttributeError):
                query = None
            if isinstance(query, str):
                call["action"]["query"] = query

    def left(self) -> list[dict[str, Any]]:
        """The searches a streamed answer ends with no results for (Claude's `pause_turn`, which pauses its search
        loop after writing a query), `searching`, each with the query it streamed; given once, at the answer's end,
        as the whole answer keeps them (`done`). Given nowhere, a Responses stream's output lacked the
        `web_search_call` its whole answer had, and a client sending back the items it got (Codex, `store: false`)
        sent different history for the same answer."""
        if self._left_given:
            return []
        self._left_given = True
        left = [call for call in self.calls.values() if call["status"] == "searching"]
        for call in left:
            self._streamed_query(call)
        return left

    def done(self) -> list[dict[str, Any]] | None:
        """The searches, those without results (a stream cut, a paused turn) as they were left."""
        return list(self.calls.values()) or None
