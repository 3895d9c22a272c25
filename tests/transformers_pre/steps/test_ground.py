from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.transformers_pre.steps.fakes import WordsEmbedder, context
from transformers_pre.steps.ground import Ground

DLQ = ("# Dlq\n\nTopic: kafka.\n\nRequests that keep failing are written to the dead-letter topic kzero.dlq. "
       "The error code and the number of attempts travel with the original event.")
SCALE = "Knative removes every replica of an idle InferenceService and starts one again on a request."
QUESTION = "What happens to requests that keep failing?"


def ground(**options: object) -> Ground:
    return Ground.create(SimpleNamespace(embedder=WordsEmbedder()), **options)


@pytest.mark.parametrize("method", ["overlap", "embedding"])
async def test_a_grounded_answer_is_kept(method: str) -> None:
    answer = "Requests that keep failing are written to the dead-letter topic kzero.dlq [1]."
    ctx = context(QUESTION, [DLQ, SCALE], answer, [1])
    await ground(method=method)(ctx)
    assert (ctx.answer, ctx.citations, ctx.mode) == (answer, [1], "generative")


@pytest.mark.parametrize("method", ["overlap", "embedding"])
async def test_an_invented_answer_becomes_the_top_passages_nearest_sentence(method: str) -> None:
    ctx = context(QUESTION, [DLQ, SCALE], "The kzero.sleep() function retries them forever [2].", [2])
    await ground(method=method)(ctx)
    assert ctx.answer == "Requests that keep failing are written to the dead-letter topic kzero.dlq. [1]"
    assert (ctx.citations, ctx.mode) == ([1], "extractive")


async def test_an_answer_citing_nothing_cites_the_passage_it_matches() -> None:
    answer = "Knative removes every replica of an idle InferenceService."
    ctx = context("Why is idle free?", [DLQ, SCALE], answer)
    await ground()(ctx)
    assert (ctx.answer, ctx.citations, ctx.mode) == (answer, [2], "generative")


async def test_an_empty_answer_falls_back_and_no_passages_leave_it_alone() -> None:
    ctx = context(QUESTION, [DLQ], "")
    await ground()(ctx)
    assert ctx.mode == "extractive" and "kzero.dlq" in ctx.answer
    alone = context(QUESTION, [], "I do not know.")
    await ground()(alone)
    assert (alone.answer, alone.mode) == ("I do not know.", "generative")


async def test_without_fallback_the_answer_stays() -> None:
    ctx = context(QUESTION, [DLQ], "The kzero.sleep() function retries them [1].", [1])
    await ground(fallback=False)(ctx)
    assert (ctx.answer, ctx.mode) == ("The kzero.sleep() function retries them [1].", "generative")


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        ground(method="vibes")
    with pytest.raises(ValueError, match="threshold"):
        ground(threshold=1.5)
