"""The embeddings API's request: its bound on inputs, and what its admission reserves for them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from handler.api.refused_bodies import invalid_from_validation
from handler.embeddings import MAX_INPUTS, EmbeddingsRequest
from handler.pipeline.pipeline import embedded_tokens


@pytest.mark.parametrize("inputs", [["a"] * (MAX_INPUTS + 1), [[1, 2]] * (MAX_INPUTS + 1)])
def test_more_inputs_than_openai_takes_are_the_clients_400_naming_input(inputs: list[Any]) -> None:
    body = {"model": "e", "input": inputs}
    with pytest.raises(ValidationError) as refused:
        EmbeddingsRequest.model_validate(body)
    error = invalid_from_validation(refused.value, body)
    assert error.param == "input" and error.code == "invalid_request"
    said = "input: an embeddings request takes at most 2048 inputs, as OpenAI's does; this one has 2049"
    assert error.message == said


@pytest.mark.parametrize("inputs", [["a"] * MAX_INPUTS, [[1, 2]] * MAX_INPUTS, [7] * 8_000, "a" * 10_000])
def test_as_many_inputs_as_openai_takes_are_taken_and_token_ids_are_one_input(inputs: Any) -> None:
    assert EmbeddingsRequest.model_validate({"model": "e", "input": inputs}).input == inputs


@pytest.mark.parametrize(
    ("inputs", "billed"),
    [
        ("1a" * 4_000, 8_000),  # (digits and letters: a cl100k token a byte)
        (["0x9f3a2b", "语言模型"], 8 + 4),  # (a hash; CJK, about a token a character of three bytes)
        ([15339] * 5_000, 5_000),  # (token ids: a token each)
        ([[15339] * 1_000] * 3, 3_000),
    ],
)
def test_the_admission_reserves_at_least_what_a_tokenizer_bills(inputs: Any, billed: int) -> None:
    """Text was reserved at about two bytes a token, no bound: `1a1a...` is a token a byte, and two requests of
    8,000 such bytes spent twice their key's budget (review)."""
    assert embedded_tokens(inputs) >= billed
