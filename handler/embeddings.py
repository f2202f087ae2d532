"""The embeddings API's request and answer in the internal form, apart from handler/schemas.py: a gateway that
serves no embeddings request never makes their classes (`handler.schemas` imports this module on the first use of
one of its names, see `handler.schemas.LATER`)."""

# No `from __future__ import annotations`, as in handler/schemas.py.
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator
from pydantic_core import PydanticCustomError

from handler.schemas import OPEN, REQUEST, Count, reported

# The most inputs an embeddings request takes, as OpenAI's API bounds it (a list of token ids is one input).
MAX_INPUTS = 2048


class EmbeddingsRequest(BaseModel):
    """An OpenAI embeddings request body."""

    model_config = REQUEST

    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _at_most(cls, value: Any) -> Any:
        """Refused past OpenAI's 2,048 inputs, as OpenAI refuses it, before the inputs are read: without a bound, one
        request of 20,000 one-letter inputs (80 KB) is 200 calls to Gemini (100 a call), and the 8 MiB body limit
        allows some 20,000, under one small reservation."""
        if isinstance(value, list) and len(value) > MAX_INPUTS and not isinstance(value[0], int):
            raise PydanticCustomError(
                "too_many_inputs",
                "an embeddings request takes at most {most} inputs, as OpenAI's does; this one has {count}",
                {"most": MAX_INPUTS, "count": len(value)},
            )
        return value

    def batches(self, most: int | None) -> list["EmbeddingsRequest"]:
        """This request as requests of at most `most` inputs each, in order (itself when it has no more): for an API
        that takes fewer inputs a call than OpenAI's 2,048 (Gemini's `batchEmbedContents` takes 100). A list of
        token ids is one input."""
        inputs = self.input
        if most is None or isinstance(inputs, str) or len(inputs) <= most or isinstance(inputs[0], int):
            return [self]
        return [self.model_copy(update={"input": inputs[i : i + most]}) for i in range(0, len(inputs), most)]

    def input_count(self) -> int:
        """How many inputs this request has, each answered by one embedding (a string, or a list of token ids, is
        one)."""
        inputs = self.input
        return 1 if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else len(inputs)


class Embedding(BaseModel):
    model_config = OPEN

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    """Strict, as `Usage` is: a count that is not a plain integer (`"12"`, `true`) is a malformed answer; a null
    `total_tokens` is 0, a null `prompt_tokens` no usage (`EmbeddingsResponse`)."""

    model_config = OPEN

    prompt_tokens: StrictInt = 0
    total_tokens: Count = 0


class EmbeddingsResponse(BaseModel):
    model_config = OPEN

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage = Field(default_factory=EmbeddingsUsage)

    @model_validator(mode="before")
    @classmethod
    def _uncounted(cls, answer: Any) -> Any:
        """A usage without its count (`prompt_tokens` null, left out or negative: `reported`; `usage: {}`; or `usage:
        null`) is none: the answer is read as one without `usage`, whose input is estimated (`Pipeline.embeddings`).
        Read as 0, the embeddings of 10,000 characters would be billed $0 as the provider's count; read as given, a
        batch's `-100` would take 100 from the next one's count in their sum (`joined`)."""
        if isinstance(answer, dict) and "usage" in answer:
            usage = answer["usage"]
            if usage is None or (isinstance(usage, dict) and not reported(usage, "prompt_tokens")):
                return {name: value for name, value in answer.items() if name != "usage"}
        return answer

    @classmethod
    def joined(cls, answers: list["EmbeddingsResponse"]) -> "EmbeddingsResponse":
        """The answers to a request's batches (`EmbeddingsRequest.batches`, in order) as the one answer to it: each
        embedding indexed within the whole request, the usage summed; none where a batch's answer had none (the
        whole input is then estimated: a batch without its count is not free)."""
        data: list[Embedding] = []
        for answer in answers:
            offset = len(data)
            data += [item.model_copy(update={"index": offset + item.index}) for item in answer.data]
        if any("usage" not in answer.model_fields_set for answer in answers):
            return cls(data=data, model=answers[0].model)
        prompt = sum(answer.usage.prompt_tokens for answer in answers)
        total = sum(answer.usage.total_tokens for answer in answers)
        usage = EmbeddingsUsage(prompt_tokens=prompt, total_tokens=total)
        return cls(data=data, model=answers[0].model, usage=usage)
