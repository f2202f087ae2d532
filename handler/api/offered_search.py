"""A translated request that offers its own API's web search tool: a Messages request's Anthropic search tool
(`MessagesChatRequest`, handler/api/messages_api.py) or a Responses request's hosted `web_search`
(`ResponsesChatRequest`, handler/api/responses_api.py). A module of its own, imported with those two: in
handler/schemas.py, which every cold start imports, a Chat Completions one would build the class too, and never use
it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from handler.schemas import WebSearch


class SearchOffered:
    """The request's `web_search`, set once the search is priced (`messages_api.carried_search`,
    `responses_api.translated_search`), in place of `ChatRequest.web_search`, which reads Chat Completions'
    `web_search_options`. The search is the request's private `_search`, which each model declares (pydantic takes
    private attributes from a model's own class and its model bases alone): a copy (`model_copy`) keeps it. A plain
    mixin: as a model class, it would be one more to build (2.5 million instructions where this costs 0.5 million
    more than each model's own property, with this module's import)."""

    if TYPE_CHECKING:
        _search: WebSearch | None

    @property
    def web_search(self) -> WebSearch | None:
        return self._search

    @web_search.setter
    def web_search(self, search: WebSearch | None) -> None:
        self._search = search
