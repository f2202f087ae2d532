"""The embeddings API's request and answer in the internal form, apart from handler/schemas.py: a gateway that
serves no embeddings request never makes their classes (`handler.schemas` imports this module on the first use of
one of its names, see `handler.schemas.LATER`)."""

# No `from __future__ import annotations`, as in handler/schemas.py.
from typing import Literal

from pydantic import Field

from handler.schemas import REQUEST, _Open


class EmbeddingsRequest(_Open):
    """An OpenAI embeddings request body."""

    model_config = REQUEST

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class Embedding(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingsResponse(_Open):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage = Field(default_factory=EmbeddingsUsage)
