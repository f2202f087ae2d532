"""The models made on first use (`handler.schemas.LATER`: a stream's chunks, the embeddings API's) are reached
through `handler.schemas` as if they were defined there, and are the same classes however they are named."""

import pytest

from handler import chunks, embeddings, schemas


def test_each_later_name_is_its_modules_class_and_is_kept_after_its_first_use() -> None:
    from handler.schemas import ChatCompletionChunk, EmbeddingsRequest

    assert ChatCompletionChunk is chunks.ChatCompletionChunk is schemas.ChatCompletionChunk
    assert EmbeddingsRequest is embeddings.EmbeddingsRequest
    for name, module in schemas.LATER.items():
        assert getattr(schemas, name) is getattr(
            {"handler.chunks": chunks, "handler.embeddings": embeddings}[module], name
        )
        assert name in vars(schemas)  # found directly from now on, without the module's __getattr__
    assert set(schemas.LATER) == {
        *("ChatCompletionChunk", "ChunkChoice", "ChunkDelta", "FunctionCallDelta", "ToolCallDelta"),
        "completion_chunks",
        *("Embedding", "EmbeddingsRequest", "EmbeddingsResponse", "EmbeddingsUsage"),
    }


def test_a_name_the_module_does_not_have_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchModel'"):
        schemas.NoSuchModel  # noqa: B018
    with pytest.raises(ImportError):
        from handler.schemas import NoSuchModel  # noqa: F401
