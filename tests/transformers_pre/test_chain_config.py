"""The chain YAML shipped for a small generator builds, with the options it names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from serving.retry import RetryPolicy
from tests.transformers_pre.steps.fakes import WordsEmbedder, context
from transformers_pre.chain import build_chain
from transformers_pre.config import ChainConfig

SMALL = Path(__file__).parents[2] / "transformers_pre" / "chains" / "small_generator.yaml"


async def test_the_small_generator_chain_builds_and_its_prompt_asks_for_a_short_cited_answer() -> None:
    config = SimpleNamespace(predictor_model="smol", predictor_protocol="v1", retry=RetryPolicy(), max_new_tokens=256,
                             max_question_chars=2000, max_top_k=20, top_k=4, min_score=None, search_mode="dense")
    deps = SimpleNamespace(config=config, embedder=WordsEmbedder(), store=None, scope=None, predictor=None,
                           metrics=None, tracer=None)
    chain = build_chain(ChainConfig.from_yaml(SMALL), deps)  # type: ignore[arg-type]
    steps = {s.name: s for s in chain.steps}
    assert list(steps) == ["validate", "embed_query", "retrieve", "trim", "prompt", "generate", "no_repeat", "cite",
                           "ground", "usage"]
    assert steps["generate"].stop == ("\n\n",) and steps["generate"].max_new_tokens == 48  # type: ignore[attr-defined]
    assert steps["ground"].fallback and steps["ground"].method == "overlap"  # type: ignore[attr-defined]
    ctx = context("What happens to failing requests?", ["Failing requests go to the dead-letter topic kzero.dlq."])
    await steps["prompt"](ctx)
    assert ctx.prompt.startswith("Answer in one short sentence") and "[1] Failing requests" in ctx.prompt
    assert ctx.prompt.endswith("Question: What happens to failing requests?\nShort answer from the passages:")
