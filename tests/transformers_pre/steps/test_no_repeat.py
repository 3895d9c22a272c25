from __future__ import annotations

import pytest

from tests.transformers_pre.steps.fakes import context
from transformers_pre.steps.no_repeat import NoRepeat, truncate_repeats


def test_a_looping_answer_ends_after_its_last_whole_sentence_before_the_loop() -> None:
    loop = "The topic kzero.dlq is not a topic. The topic kzero.dlq is not a topic. The topic kzero"
    assert truncate_repeats(loop, 4) == "The topic kzero.dlq is not a topic."


def test_a_loop_inside_one_sentence_is_cut_where_it_repeats() -> None:
    assert truncate_repeats("[1] # Asking a question [1] # Asking a question [1] # Asking", 4) == (
        "[1] # Asking a question")


def test_an_answer_without_repetition_is_left_alone() -> None:
    answer = "Failing requests go to kzero.dlq with the error code [1]."
    assert truncate_repeats(answer, 4) == answer


async def test_the_step_rewrites_the_answer() -> None:
    ctx = context("q?", [], answer="One two three four. One two three four five.")
    await NoRepeat.create(None)(ctx)
    assert ctx.answer == "One two three four."
    with pytest.raises(ValueError, match="ngram"):
        NoRepeat.create(None, ngram=1)
