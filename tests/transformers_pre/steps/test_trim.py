from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.transformers_pre.steps.fakes import WordsEmbedder, context
from transformers_pre.steps.prompt import BuildPrompt
from transformers_pre.steps.trim import Trim

PASSAGE = ("# Scaling\n\nKnative removes every replica of an idle service. The weather is sunny in the valley today. "
           "Starting again after a request costs a cold start. Rivers flow into the ocean near the harbor.")


async def test_the_prompt_shows_the_sentences_nearest_the_question_in_their_order() -> None:
    embedder = WordsEmbedder()
    ctx = context("Why does an idle service cost nothing, and what does a cold start cost?", [PASSAGE, "Short one."])
    await Trim.create(SimpleNamespace(embedder=embedder))(ctx)
    assert ctx.excerpts == ["Knative removes every replica of an idle service. "
                            "Starting again after a request costs a cold start.", "Short one."]
    assert ctx.passages[0].text == PASSAGE  # the sources keep the whole passage
    assert len(embedder.calls) == 1  # every sentence of every passage in one call
    await BuildPrompt.create(None)(ctx)
    assert "[1] Knative removes" in ctx.prompt and "sunny" not in ctx.prompt and "[2] Short one." in ctx.prompt


async def test_one_sentence_and_no_passages() -> None:
    trim = Trim.create(SimpleNamespace(embedder=WordsEmbedder()), sentences=1)
    ctx = context("What does a cold start cost after a request?", [PASSAGE])
    await trim(ctx)
    assert ctx.excerpts == ["Starting again after a request costs a cold start."]
    empty = context("Anything?", [])
    await trim(empty)
    assert empty.excerpts == []
    with pytest.raises(ValueError, match="sentences"):
        Trim.create(SimpleNamespace(embedder=WordsEmbedder()), sentences=0)
