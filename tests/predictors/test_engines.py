"""Engines on tiny random models: batching must not change any row's result."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from predictors.device import resolve_placement
from predictors.engines.embed import EmbedEngine
from predictors.engines.generate import GenerateEngine, GenerationRequest, SamplingParams
from tests.tiny_models import tiny_causal_lm, tiny_sentence_transformer


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> GenerateEngine:
    path = tiny_causal_lm(tmp_path_factory.mktemp("lm"))
    return GenerateEngine.load(path, resolve_placement("cpu", "auto"))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> EmbedEngine:
    path = tiny_sentence_transformer(tmp_path_factory.mktemp("st"))
    return EmbedEngine.load(path, resolve_placement("cpu", "auto"))


def request(engine: GenerateEngine, prompt: str, **params) -> GenerationRequest:
    return GenerationRequest(engine.encode_prompt(prompt), SamplingParams(**params))


def test_batched_generation_equals_unbatched_per_row(lm: GenerateEngine) -> None:
    requests = [
        request(lm, "hello", max_new_tokens=12),
        request(lm, "a much longer prompt than the first one", max_new_tokens=5),
        request(lm, "x", max_new_tokens=20),
    ]
    batched = lm.run_batch(requests)
    alone = [lm.run_batch([r])[0] for r in requests]
    assert batched == alone
    assert [r.completion_tokens for r in batched] == [12, 5, 20]
    assert all(r.finish_reason == "length" for r in batched)
    assert [r.prompt_tokens for r in batched] == [5, 39, 1]


def test_stop_string_cuts_its_own_row_only(lm: GenerateEngine) -> None:
    free = lm.run_batch([request(lm, "hello", max_new_tokens=16)])[0].text
    stop = free[5:7]  # character tokens: the text up to the stop is exactly free[:5] or earlier
    expected = free[: free.find(stop)]
    stopped, other = lm.run_batch(
        [request(lm, "hello", max_new_tokens=16, stop=(stop,)), request(lm, "hello", max_new_tokens=16)]
    )
    assert stopped.text == expected and stopped.finish_reason == "stop"
    assert other.text == free and other.finish_reason == "length"


def test_streamed_pieces_concatenate_to_the_final_text(lm: GenerateEngine) -> None:
    pieces: list[str] = []
    free = lm.run_batch([request(lm, "stream me", max_new_tokens=10)])[0]
    stop = free.text[6:8]
    streamed = GenerationRequest(lm.encode_prompt("stream me"), SamplingParams(max_new_tokens=10, stop=(stop,)),
                                 on_text=pieces.append)
    [result] = lm.run_batch([streamed])
    assert "".join(pieces) == result.text == free.text[: free.text.find(stop)]
    assert len(pieces) > 1


def test_chat_template_is_applied(lm: GenerateEngine) -> None:
    ids = lm.encode_chat([{"role": "user", "content": "hi"}])
    assert ids == lm.encode_prompt("<user>hi\n<assistant>")


def test_sampling_is_reproducible_with_a_seed(lm: GenerateEngine) -> None:
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 0.9, "seed": 7}
    first = lm.run_batch([request(lm, "seeded", **params)])[0]
    again = lm.run_batch([request(lm, "seeded", **params)])[0]
    assert first == again
    assert lm.batch_key(request(lm, "a", **params)) != lm.batch_key(request(lm, "a", max_new_tokens=12))


def test_batched_embeddings_equal_unbatched(embedder: EmbedEngine) -> None:
    texts = ["short", "a somewhat longer sentence about kafka", "x"]
    batched = embedder.run_batch(texts)
    for text, vector in zip(texts, batched, strict=True):
        np.testing.assert_allclose(vector, embedder.run_batch([text])[0], atol=1e-5)
    assert batched[0].dtype == np.float32 and batched[0].shape == (embedder.dimension,)
    assert np.linalg.norm(batched[1]) == pytest.approx(1.0, abs=1e-5)


def test_batches_computed_side_by_side_equal_sentence_transformers_encode(embedder: EmbedEngine) -> None:
    batches = [[f"text {i} of batch {b} " * (1 + i % 5) for i in range(16)] for b in range(8)]
    with ThreadPoolExecutor(4) as pool:  # as the server's batch threads call it
        side_by_side = list(pool.map(embedder.run_batch, batches))
    model = embedder._model
    for texts, vectors in zip(batches, side_by_side, strict=True):
        expected = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
        np.testing.assert_allclose(np.stack(vectors), expected, atol=1e-5)
    assert embedder.parallel_batches == 2 or torch.get_num_threads() < 2


def test_the_encoder_runs_as_a_traced_graph_equal_to_the_eager_model(
        embedder: EmbedEngine, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert embedder.graph, "the tests above compared the traced graph, not the eager model"
    eager = EmbedEngine(embedder._model, graph=False)
    assert not eager.graph
    for texts in (["x"], ["short", "a somewhat longer sentence about kafka " * 3], ["long " * 200] * 3):
        np.testing.assert_allclose(np.stack(embedder.run_batch(texts)), np.stack(eager.run_batch(texts)), atol=1e-5)


def test_a_graph_that_cannot_be_traced_or_differs_leaves_the_eager_model(
        embedder: EmbedEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model = embedder._model
    expected = np.stack(EmbedEngine(model, graph=False).run_batch(["a text", "another"]))

    def no_trace(*args: object, **kwargs: object) -> None:
        raise RuntimeError("tracer says no")

    monkeypatch.setattr(torch.jit, "trace", no_trace)
    refused = EmbedEngine(model)
    assert not refused.graph and "could not be traced (RuntimeError: tracer says no)" in caplog.text
    np.testing.assert_allclose(np.stack(refused.run_batch(["a text", "another"])), expected, atol=1e-6)
    monkeypatch.undo()

    freeze = torch.jit.freeze
    monkeypatch.setattr(torch.jit, "freeze", lambda traced: (lambda *inputs: freeze(traced)(*inputs) + 0.5))
    wrong = EmbedEngine(model)
    assert not wrong.graph and "differs from the eager model" in caplog.text
    np.testing.assert_allclose(np.stack(wrong.run_batch(["a text", "another"])), expected, atol=1e-6)


def test_the_graph_can_be_turned_off_from_the_command_line() -> None:
    from predictors.__main__ import config_from_args

    base = ["--task", "embed", "--model_id", "all-minilm-l6-v2"]
    assert config_from_args(base, {}).embed_graph
    assert not config_from_args([*base, "--embed_graph", "false"], {}).embed_graph


def test_token_counts_are_per_text(embedder: EmbedEngine) -> None:
    assert embedder.count_tokens(["abc", "hello world", ""]) == [3, 11, 0]


def test_load_rejects_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        GenerateEngine.load(tmp_path / "missing", resolve_placement("cpu", "auto"))
