"""Continuous batching on transformers' own engine: requests join and leave the running batch per step.

transformers' ``ContinuousBatchingManager`` owns the paged KV cache, the scheduler (chunked prefill
under ``max_batch_tokens``) and the decoding thread; this module feeds it requests and turns its
per-step outputs into kzero results. Per request: max tokens and EOS (``ignore_eos`` as EOS -1) go to
the manager; temperature and top_p through its per-request logits processors; greedy rows and
``min_tokens`` through one more per-request processor of ours (:class:`_RequestMask`); a per-request
seed through a last one (:class:`_SeededPick`), since the batch shares one random generator; stop
strings, streaming and hold-back through :class:`~predictors.engines.generate.Row`, which cancels the
request in the manager the step a stop string appears.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from predictors.engines.generate import GenerateEngine, GenerationRequest, GenerationResult, Row

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Defaults of the manager's own temperature/top_p processors: values that make transformers create them
# (it skips a processor whose default is a no-op); every request overrides both with its own.
_BASE_TEMPERATURE = 0.7
_BASE_TOP_P = 0.99


@dataclass(frozen=True)
class Timings:
    """Seconds from submission to the first token, between tokens (mean), and end to end."""

    first_token_s: float | None
    per_token_s: float | None
    total_s: float


class EngineStopped(RuntimeError):
    """The engine stopped (unload, shutdown) before the request finished."""


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_usage: float


def _request_mask_class() -> type:
    """Our per-request processor, built on first use so importing this module does not import torch."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class _RequestMask(ContinuousBatchingLogitsProcessor):
        """Greedy rows and ``min_tokens`` in a sampling batch, as one int per row: ``remaining * 2 + greedy``.

        A greedy row keeps only its argmax (so sampling picks it); a row short of ``min_tokens`` cannot pick EOS.
        """

        supported_kwargs: dict[str, type] = {"kzero_greedy": bool, "kzero_min_tokens": int}
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self, eos: Sequence[int]) -> None:
            self.eos = sorted(eos)
            self._eos_mask: torch.Tensor | None = None

        def _eos_columns(self, scores: torch.Tensor) -> torch.Tensor:
            # Built on the first (uncaptured) call and reused: no host-to-device copy inside a CUDA graph.
            mask = self._eos_mask
            if mask is None or mask.device != scores.device or mask.numel() != scores.size(-1):
                mask = torch.zeros(scores.size(-1), dtype=torch.bool, device=scores.device)
                mask[[e for e in self.eos if e < scores.size(-1)]] = True
                self._eos_mask = mask
            return mask

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            data = []
            for future in requests_with_new_token:
                state = future.state
                kwargs = state.logit_processor_kwargs
                remaining = max(0, kwargs.get("kzero_min_tokens", 0) - state.generated_len())
                data.append(remaining * 2 + int(kwargs.get("kzero_greedy", False)))
            return torch.tensor(data, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            arg = tensor_arg[: scores.size(0)]
            short = (arg >= 2).unsqueeze(-1)
            scores = scores.masked_fill(short & self._eos_columns(scores), float("-inf"))
            greedy = (arg % 2 == 1).unsqueeze(-1)
            best = scores.argmax(dim=-1, keepdim=True)
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, best, True)
            return scores.masked_fill(greedy & ~keep, float("-inf"))

    return _RequestMask


_MASK64 = 2**64 - 1


def seeded_uniform(seed: int, position: int) -> int:
    """A number in [1, 2**31) decided by ``seed`` and the token's position alone (SplitMix64's finalizer)."""
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return max(1, (z ^ (z >> 31)) >> 33)


def _seeded_pick_class() -> type:
    """Our seeded-sampling processor, built on first use like :func:`_request_mask_class`."""
    import torch
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class _SeededPick(ContinuousBatchingLogitsProcessor):
        """A seeded row draws its token itself, by inverse CDF over its final distribution (after temperature
        and top_p) with :func:`seeded_uniform` of its seed and position, and masks every other token, so the
        manager's shared sampler can only take that one: the row's draws do not depend on the other rows.
        Unseeded rows (argument 0) pass through.
        """

        supported_kwargs: dict[str, type] = {"kzero_seed": int}
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(0)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            data = []
            for future in requests_with_new_token:
                seed = future.state.logit_processor_kwargs.get("kzero_seed", -1)
                data.append(0 if seed < 0 else seeded_uniform(seed, future.state.generated_len()))
            return torch.tensor(data, dtype=torch.int32, device="cpu")

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            arg = tensor_arg[: scores.size(0)]
            seeded = arg > 0
            if scores.device.type == "cpu" and not bool(seeded.any()):  # no sync to avoid on CUDA graphs
                return scores
            cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
            target = (arg.float() / 2**31 * cdf[:, -1]).unsqueeze(-1)
            pick = torch.searchsorted(cdf, target).clamp_(max=scores.size(-1) - 1)
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, pick, True)
            return scores.masked_fill(seeded.unsqueeze(-1) & ~keep, float("-inf"))

    return _SeededPick


class _Live:
    """One request inside the manager, on the event loop."""

    def __init__(self, request: GenerationRequest, submitted: float, on_first_token: Callable[[], None] | None):
        self.row = Row(request)
        self.seen = 0
        self.submitted = submitted
        self.first_token: float | None = None
        self.on_first_token = on_first_token
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ContinuousGenerateEngine:
    """Token-level scheduling over a loaded :class:`GenerateEngine` (same model, tokenizer and encoders)."""

    self_scheduling = True

    def __init__(
        self, base: GenerateEngine, *, kv_cache_tokens: int, max_num_seqs: int, max_batch_tokens: int,
        page_size: int,
    ) -> None:
        self.base = base
        self._page_size = page_size
        self._kv_cache_tokens = kv_cache_tokens
        self._max_num_seqs = max_num_seqs
        self._max_batch_tokens = max_batch_tokens
        self._manager: Any = None
        self._live: dict[str, _Live] = {}
        self._ids = itertools.count()
        self._waiting = 0

    @classmethod
    def for_budget(
        cls, base: GenerateEngine, *, kv_cache_memory_gb: float, max_num_seqs: int, max_batch_tokens: int,
        page_size: int,
    ) -> ContinuousGenerateEngine:
        """Size the paged cache from a memory budget: K and V of every layer for each token."""
        config = base.model.config.get_text_config()
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * heads * head_dim * base.model.dtype.itemsize
        blocks = int(kv_cache_memory_gb * 2**30) // (per_token * page_size)
        if blocks < 1:
            raise ValueError(f"kv_cache_memory_gb={kv_cache_memory_gb} holds less than one page of {page_size} tokens")
        return cls(base, kv_cache_tokens=blocks * page_size, max_num_seqs=max_num_seqs,
                   max_batch_tokens=max_batch_tokens, page_size=page_size)

    # The encoders and limits of the wrapped engine, so the task adapter sees one engine.
    @property
    def context_length(self) -> int:
        return self.base.context_length

    @property
    def kv_cache_tokens(self) -> int:
        """Tokens the paged cache holds in all; a request needing more can never run."""
        return self._kv_cache_tokens

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        return self.base.encode_prompt(prompt)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        return self.base.encode_chat(messages)

    def start(self) -> None:
        """Create the manager and its decoding thread; blocking (loads nothing, allocates the cache)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        base = self.base
        eos = sorted(base.eos_ids)
        generation = GenerationConfig(
            do_sample=True, temperature=_BASE_TEMPERATURE, top_p=_BASE_TOP_P, top_k=None,
            eos_token_id=eos, pad_token_id=base.pad_id, max_new_tokens=16,
        )
        config = ContinuousBatchingConfig(
            page_size=self._page_size,
            num_blocks=self._kv_cache_tokens // self._page_size,
            max_batch_tokens=self._max_batch_tokens,
            max_requests_per_batch=self._max_num_seqs,
            per_request_processors=True,
            allow_block_sharing=False,  # prefix sharing would make a cancelled request's blocks outlive it
            use_cuda_graph=False if base.placement.device.type != "cuda" else None,
        )
        manager = base.model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)
        # Our processor runs first: masking EOS and non-argmax tokens commutes with temperature and top_p.
        processors = manager.logit_processor
        mask = _request_mask_class()(eos)
        processors.logits_processor.insert(0, mask)
        # The seeded pick runs last: it draws from the distribution temperature and top_p leave.
        pick = _seeded_pick_class()()
        processors.logits_processor.append(pick)
        processors.tensors_required += 2
        processors.supported_keys.update(mask.supported_kwargs)
        processors.supported_keys.update(pick.supported_kwargs)
        processors.do_processing = True
        manager.start()
        self._manager = manager

    def stop(self) -> None:
        """Blocking. A hard stop: requests still running fail (503) rather than hold the shutdown."""
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.stop(block=True, timeout=10, hard_stop=True)

    def warmup(self) -> None:
        """Start the manager and run one short request through it, without an event loop."""
        if self._manager is None:
            self.start()
        rid = "warmup"
        self._manager.add_request(list(self.encode_prompt("Hello")), request_id=rid, max_new_tokens=2,
                                  **self._kwargs(GenerationRequest((0,), _greedy_params())))
        out = self._manager.get_result(request_id=rid, timeout=120)
        if out is None or out.error:
            raise RuntimeError(f"continuous batching warm-up failed: {getattr(out, 'error', 'no result')}")

    def stats(self) -> EngineStats:
        running = len(self._live) - self._waiting
        usage = 0.0
        processor = self._manager.batch_processor if self._manager is not None else None
        if processor is not None:
            usage = 1.0 - float(processor.cache.compute_free_capacity(relative=True))
        return EngineStats(running=max(running, 0), waiting=self._waiting, kv_usage=min(max(usage, 0.0), 1.0))

    @property
    def waiting(self) -> int:
        return self._waiting

    def tokens_needed(self, request: GenerationRequest) -> int:
        """Cache tokens the request may hold at its end, in whole pages."""
        tokens = len(request.prompt_ids) + request.params.max_new_tokens
        return math.ceil(tokens / self._page_size) * self._page_size

    @staticmethod
    def _kwargs(request: GenerationRequest) -> dict[str, Any]:
        params = request.params
        return {
            "temperature": float(params.temperature) if not params.greedy else 1.0,
            "top_p": float(params.top_p),
            "kzero_greedy": params.greedy,
            "kzero_min_tokens": int(params.min_tokens),
            "kzero_seed": -1 if params.seed is None or params.greedy else int(params.seed),
        }

    async def generate(
        self, request: GenerationRequest, on_first_token: Callable[[], None] | None = None
    ) -> tuple[GenerationResult, Timings]:
        """Run one request to its end; cancelling the awaiting task takes it out of the batch at the next step."""
        if self._manager is None or not self._manager.is_running():
            raise EngineStopped("the continuous batching engine is not running")
        rid = f"kz-{next(self._ids)}"
        live = _Live(request, time.monotonic(), on_first_token)
        self._live[rid] = live
        self._waiting += 1
        manager = self._manager
        manager.register_result_handler(rid, lambda out: self._on_output(rid, out))
        params = request.params
        eos: int | list[int] = -1 if params.ignore_eos else sorted(self.base.eos_ids)
        try:
            manager.add_request(list(request.prompt_ids), request_id=rid, max_new_tokens=params.max_new_tokens,
                                streaming=True, eos_token_id=eos, **self._kwargs(request))
            await live.done
        except BaseException:
            self._forget(rid, cancel=True)
            raise
        self._forget(rid, cancel=False)
        result = live.row.result(self.base.decode)
        end = time.monotonic()
        first = None if live.first_token is None else live.first_token - live.submitted
        per_token = None
        if live.first_token is not None and result.completion_tokens > 1:
            per_token = (end - live.first_token) / (result.completion_tokens - 1)
        return result, Timings(first, per_token, end - live.submitted)

    def _forget(self, rid: str, *, cancel: bool) -> None:
        live = self._live.pop(rid, None)
        if live is None:
            return
        if live.first_token is None:
            self._waiting -= 1
        manager = self._manager
        if manager is None:
            return
        with manager.output_router._lock:  # a cancelled request gets no final output to clean its handler up
            manager.output_router.result_handlers.pop(rid, None)
        if cancel:  # frees its KV blocks at the next step
            manager.cancel_request(rid)

    def _on_output(self, rid: str, out: Any) -> None:
        """On the event loop, once per step of this request (streaming outputs carry every token so far)."""
        live = self._live.get(rid)
        if live is None or live.done.done():
            return
        if out.error:
            failure = EngineStopped if self._manager is None else RuntimeError
            live.done.set_exception(failure(f"generation failed: {out.error}"))
            return
        tokens = out.generated_tokens
        if tokens and live.first_token is None:
            live.first_token = time.monotonic()
            self._waiting -= 1
            if live.on_first_token is not None:
                live.on_first_token()
        row = live.row
        for token in tokens[live.seen :]:
            if row.finish is not None:
                break
            row.advance(token, self.base.decode, self.base.eos_ids)
        live.seen = len(tokens)
        if row.finish is not None or out.is_finished():
            if not out.is_finished():  # a stop string: leave the batch now, not at max_new_tokens
                self._manager.cancel_request(rid)
            live.done.set_result(None)


def _greedy_params() -> Any:
    from predictors.engines.generate import SamplingParams

    return SamplingParams(max_new_tokens=2)
