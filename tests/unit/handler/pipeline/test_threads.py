"""What the gateway remembers of the message threads it relayed (handler/pipeline/threads.py)."""

from __future__ import annotations

import pytest

from handler.pipeline import threads
from handler.pipeline.threads import HeldThreads
from handler.schemas import Usage


def test_a_thread_holds_what_its_last_answer_read_and_wrote_and_a_margin() -> None:
    held = HeldThreads()
    held.answered("msg_1", "claude-haiku-4-5", Usage.of(10_000, 500, cached=8_000))
    assert held.holds("msg_1", {"claude-haiku-4-5"}) == 10_500 + threads.MARGIN_TOKENS + 1_050


def test_an_answer_not_relayed_here_or_by_another_model_is_not_known() -> None:
    """Another model's tokenizer counts the same conversation otherwise: a plan with another model is not told."""
    held = HeldThreads()
    held.answered("msg_1", "claude-haiku-4-5", Usage.of(100, 10))
    held.answered(None, "claude-haiku-4-5", Usage.of(100, 10))  # (an answer without an id: nothing to continue)
    assert held.holds("msg_2", {"claude-haiku-4-5"}) is None
    assert held.holds("msg_1", {"claude-opus-4-7"}) is None
    assert held.holds("msg_1", {"claude-haiku-4-5", "claude-opus-4-7"}) is None
    assert held.holds(["msg_1"], {"claude-haiku-4-5"}) is None


def test_the_answers_remembered_are_bounded_the_oldest_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "MOST_ANSWERS", 2)
    held = HeldThreads()
    for n in range(3):
        held.answered(f"msg_{n}", "m", Usage.of(100, 10))
    assert [held.holds(f"msg_{n}", {"m"}) is not None for n in range(3)] == [False, True, True]
