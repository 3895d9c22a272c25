"""The continuous-batching engine on a tiny random model: scheduling, cancellation, admission and
per-request settings inside one running batch. Orders and token counts are asserted, never durations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictors.config import EngineConfig, LimitsConfig
from predictors.device import resolve_placement
from predictors.engines.continuous import (
    ContinuousGenerateEngine,
    _request_mask_class,
    _seeded_pick_class,
    seeded_uniform,
)
from predictors.engines.generate import GenerateEngine, GenerationRequest, GenerationResult, SamplingParams
from predictors.tasks.generate import GenerateTask, GenerationParameters
from serving.errors import InvalidInput
from tests.tiny_models import tiny_causal_lm


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def engine(lm_path: Path) -> Iterator[ContinuousGenerateEngine]:
    base = GenerateEngine.load(lm_path, resolve_placement("cpu", "float32"))
    engine = ContinuousGenerateEngine.for_budget(base, kv_cache_memory_gb=0.0005, max_num_seqs=8,
                                                 max_batch_tokens=128, page_size=16)
    engine.warmup()
    yield engine
    engine.stop()


def request(engine: ContinuousGenerateEngine, prompt: str = "hello world", **params: object) -> GenerationRequest:
    return GenerationRequest(engine.encode_prompt(prompt), SamplingParams(**params))  # type: ignore[arg-type]


async def generate(engine: ContinuousGenerateEngine, req: GenerationRequest) -> GenerationResult:
    result, _ = await engine.generate(req)
    return result


async def until(condition, what: str) -> None:
    """Wait for the engine thread to get there (a bound against hangs, not a performance assertion)."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_short_request_sent_while_long_ones_decode_finishes_first(engine: ContinuousGenerateEngine) -> None:
    finished: list[str] = []
    started = [asyncio.Event(), asyncio.Event()]

    async def run(name: str, req: GenerationRequest, first: asyncio.Event | None = None) -> GenerationResult:
        result, _ = await engine.generate(req, first.set if first else None)
        finished.append(name)
        return result

    longs = [asyncio.ensure_future(run(f"long{i}", request(engine, max_new_tokens=120, ignore_eos=True), started[i]))
             for i in range(2)]
    for event in started:
        await event.wait()  # both long requests are decoding now
    short = await run("short", request(engine, "short one", max_new_tokens=4, ignore_eos=True))
    assert finished == ["short"]  # a static batch would have made it wait for the long rows
    results = await asyncio.gather(*longs)
    assert sorted(finished[1:]) == ["long0", "long1"]
    assert short.completion_tokens == 4
    assert [r.completion_tokens for r in results] == [120, 120]


async def test_cancelling_a_request_frees_its_slot_and_blocks(engine: ContinuousGenerateEngine) -> None:
    first = asyncio.Event()
    task = asyncio.ensure_future(engine.generate(request(engine, max_new_tokens=400, ignore_eos=True), first.set))
    await first.wait()
    assert engine.stats().running == 1 and engine.stats().kv_usage > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    scheduler = engine._manager.batch_processor.scheduler
    await until(lambda: not scheduler.active_requests and engine.stats().kv_usage == 0, "the blocks are freed")
    assert engine.stats().running == 0 and engine.stats().waiting == 0
    assert not engine._manager.output_router.result_handlers  # no handler left behind either
    again = await generate(engine, request(engine, max_new_tokens=3, ignore_eos=True))
    assert again.completion_tokens == 3


async def test_per_request_settings_share_one_running_batch(engine: ContinuousGenerateEngine) -> None:
    greedy_alone = await generate(engine, request(engine, max_new_tokens=30, ignore_eos=True))
    together = await asyncio.gather(
        generate(engine, request(engine, max_new_tokens=30, ignore_eos=True)),
        generate(engine, request(engine, max_new_tokens=30, ignore_eos=True, temperature=1.5, top_p=1.0)),
        generate(engine, request(engine, max_new_tokens=7, ignore_eos=True)),
    )
    greedy, sampled, shorter = together
    assert greedy.text == greedy_alone.text  # greedy rows stay greedy next to a sampling row
    assert sampled.text != greedy.text  # the sampling row samples (30 near-uniform characters)
    assert shorter.text == greedy_alone.text[:7] and shorter.completion_tokens == 7


async def test_stop_strings_end_the_row_and_stream_with_hold_back(engine: ContinuousGenerateEngine) -> None:
    free = (await generate(engine, request(engine, "stream me", max_new_tokens=40, ignore_eos=True))).text
    stop = free[12:14]
    expected = free[: free.find(stop)]
    pieces: list[str] = []
    req = GenerationRequest(engine.encode_prompt("stream me"),
                            SamplingParams(max_new_tokens=40, ignore_eos=True, stop=(stop,)), pieces.append)
    result = await generate(engine, req)
    assert result.text == expected and result.finish_reason == "stop"
    assert result.completion_tokens < 40  # it left the batch at the stop, not at max_new_tokens
    assert "".join(pieces) == expected  # no piece of the stop string was streamed
    await until(lambda: not engine._manager.batch_processor.scheduler.active_requests, "the stopped row leaves")


async def test_a_seed_makes_a_sampled_row_reproducible_whatever_runs_beside_it(
    engine: ContinuousGenerateEngine,
) -> None:
    def seeded(seed: int) -> GenerationRequest:
        return request(engine, max_new_tokens=30, ignore_eos=True, temperature=1.5, top_p=0.95, seed=seed)

    alone = await generate(engine, seeded(11))
    crowded = await asyncio.gather(
        generate(engine, seeded(11)),
        generate(engine, request(engine, "other prompt", max_new_tokens=30, ignore_eos=True, temperature=1.5)),
        generate(engine, seeded(12)),
        generate(engine, request(engine, max_new_tokens=30, ignore_eos=True)),
    )
    assert crowded[0].text == alone.text  # same seed, other rows in the batch: the same draws
    assert crowded[2].text != alone.text  # another seed draws otherwise (30 near-uniform characters)
    unseeded = [await generate(engine, request(engine, max_new_tokens=30, ignore_eos=True, temperature=1.5))
                for _ in range(2)]
    assert unseeded[0].text != unseeded[1].text  # without a seed the shared generator still samples


def test_the_seeded_pick_draws_by_inverse_cdf_and_leaves_unseeded_rows() -> None:
    import torch

    pick = _seeded_pick_class()()
    scores = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 3))
    # rows: unseeded; u just under 0.1 (first token); u at 0.55 (third token: cdf 0.1, 0.3, 0.6, 1.0)
    arg = torch.tensor([0, int(0.099 * 2**31), int(0.55 * 2**31)], dtype=torch.int32)
    out = pick(scores.clone(), arg)
    assert torch.equal(out[0], scores[0])
    assert torch.isfinite(out[1]).tolist() == [True, False, False, False]
    assert torch.isfinite(out[2]).tolist() == [False, False, True, False]
    draws = {seeded_uniform(5, position) for position in range(100)}
    assert len(draws) == 100 and all(1 <= u < 2**31 for u in draws)
    assert seeded_uniform(5, 3) == seeded_uniform(5, 3) != seeded_uniform(6, 3)


def test_the_request_mask_keeps_argmax_and_holds_eos_back() -> None:
    import torch

    mask = _request_mask_class()([1])
    scores = torch.tensor([[0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0], [0.0, 5.0, 1.0, 2.0]])
    # rows: sampling; greedy with EOS allowed; greedy short of min_tokens
    out = mask(scores.clone(), torch.tensor([0, 1, 2 * 3 + 1], dtype=torch.int32))
    assert torch.equal(out[0], scores[0])
    assert out[1].argmax() == 1 and torch.isinf(out[1][[0, 2, 3]]).all()
    assert out[2].argmax() == 3 and torch.isinf(out[2][[0, 1, 2]]).all()


def test_admission_by_tokens_and_unsupported_settings_are_400(lm_path: Path) -> None:
    config = EngineConfig(engine="continuous", kv_cache_memory_gb=0.00005, kv_page_size=16)
    task = GenerateTask.load(lm_path, resolve_placement("cpu", "float32"), LimitsConfig(), config)
    assert isinstance(task.engine, ContinuousGenerateEngine)
    budget = task.engine.kv_cache_tokens
    params = task.sampling(GenerationParameters(max_new_tokens=budget))
    with pytest.raises(InvalidInput, match=r"kv_cache_memory_gb\) holds") as err:
        task.request(task.engine.encode_prompt("hello"), params, "instances[0]")
    assert err.value.field == "instances[0]"
    assert task.sampling(GenerationParameters(seed=3)).seed == 3  # honoured per row (see the seeded test)
    with pytest.raises(InvalidInput, match="static engine") as err:
        task.sampling(GenerationParameters(repetition_penalty=1.3))
    assert err.value.field == "parameters.repetition_penalty"
    with pytest.raises(InvalidInput, match="more than max_new_tokens") as err:
        task.sampling(GenerationParameters(max_new_tokens=4, min_tokens=5))
    assert err.value.field == "parameters.min_tokens"


def test_the_static_engine_honours_ignore_eos_and_min_tokens(lm_path: Path) -> None:
    static = GenerateEngine.load(lm_path, resolve_placement("cpu", "float32"))
    ids = static.encode_prompt("hello")
    free = static.run_batch([GenerationRequest(ids, SamplingParams(max_new_tokens=12))])[0]
    third = static.encode_prompt(free.text)[2]  # character tokens: the third generated token
    static.eos_ids.add(third)  # make it an end-of-sequence token the greedy path reaches
    stopped, ignored, floored = (
        static.run_batch([GenerationRequest(ids, SamplingParams(max_new_tokens=12, **extra))])[0]
        for extra in ({}, {"ignore_eos": True}, {"min_tokens": 6}))
    assert stopped.finish_reason == "stop" and stopped.completion_tokens == 2
    assert ignored.completion_tokens == 12 and ignored.finish_reason == "length"
    assert floored.completion_tokens >= 6


def test_the_static_engine_applies_a_per_request_repetition_penalty(lm_path: Path) -> None:
    static = GenerateEngine.load(lm_path, resolve_placement("cpu", "float32"))
    ids = static.encode_prompt("hello")
    plain = static.run_batch([GenerationRequest(ids, SamplingParams(max_new_tokens=24))])[0]
    penalised = static.run_batch([GenerationRequest(ids, SamplingParams(max_new_tokens=24, repetition_penalty=2.0))])[0]
    assert len(set(plain.text)) < len(set(penalised.text))  # the random model loops; the penalty breaks the loop
