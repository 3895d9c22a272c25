"""Causal-LM text generation with per-row limits, stop strings and streaming inside one batch.

Prompts of one batch are left-padded into a single ``generate`` call. A stopping criterion
tracks every row on its own: its token limit, its stop strings and its stream, so requests
with different ``max_new_tokens`` or ``stop`` share a forward pass and each ends on time. Rows of
different LoRA adapters (``predictors.engines.lora``) share it too.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from predictors.device import Placement
from predictors.engines.lora import AdapterNotFound, LoraAdapters

if TYPE_CHECKING:
    import torch

FinishReason = Literal["stop", "length"]
TextSink = Callable[[str], None]


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token, up to ``max_new_tokens`` (benchmarks need fixed lengths)."""
    min_tokens: int = 0
    """The end-of-sequence token cannot end the text before this many tokens."""
    repetition_penalty: float = 1.0
    """transformers' repetition penalty over the prompt and the text so far (1.0: none)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    on_text: TextSink | None = field(default=None, compare=False)
    """Called from the model thread with each new piece of text, for streaming."""
    adapter: str | None = None
    """The LoRA adapter this row runs with; None: the base model."""


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def _stop_cut(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Characters at the end of ``text`` that may still grow into a stop string or a UTF-8 char."""
    hold = 1 if text.endswith("\ufffd") else 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if stop.startswith(text[-n:]):
                hold = max(hold, n)
                break
    return hold


class Row:
    """One request's output as its tokens arrive: limit, stop strings and stream (shared by both engines)."""

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish: FinishReason | None = None

    def emit(self, upto: int) -> None:
        if self.request.on_text is not None and upto > self.sent:
            self.request.on_text(self.text[self.sent : upto])
            self.sent = upto

    @property
    def _decodes(self) -> bool:
        return bool(self.request.params.stop) or self.request.on_text is not None

    def advance(self, token: int, decode: Callable[[list[int]], str], eos: set[int]) -> None:
        """Take one generated token; sets ``finish`` when the row is done."""
        params = self.request.params
        if token in eos and not params.ignore_eos and len(self.tokens) >= params.min_tokens:
            self.finish = "stop"
            self.emit(len(self.text))
            return
        self.tokens.append(token)
        if self._decodes:
            self.text = decode(self.tokens)
            cut = _stop_cut(self.text, params.stop)
            if cut is not None:
                self.text = self.text[:cut]
                self.finish = "stop"
                self.emit(cut)
                return
            self.emit(len(self.text) - _held_back(self.text, params.stop))
        if len(self.tokens) >= params.max_new_tokens:
            self.finish = "length"
            if self._decodes:
                self.emit(len(self.text))

    def result(self, decode: Callable[[list[int]], str]) -> GenerationResult:
        if not self._decodes:
            self.text = decode(self.tokens)
        self.emit(len(self.text))
        return GenerationResult(
            text=self.text,
            finish_reason=self.finish or "length",
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=len(self.tokens),
        )


class _RowTracker:
    """A transformers stopping criterion that finishes each row independently."""

    def __init__(self, requests: Sequence[GenerationRequest], decode: Callable[[list[int]], str], eos: set[int]):
        self.rows = [Row(r) for r in requests]
        self._decode = decode
        self._eos = eos

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        import torch

        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if row.finish is None:
                row.advance(token, self._decode, self._eos)
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)

    def results(self) -> list[GenerationResult]:
        return [row.result(self._decode) for row in self.rows]


class GenerateEngine:
    def __init__(self, model: Any, tokenizer: Any, placement: Placement) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._placement = placement
        eos = model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos = eos_ids
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        self.adapters = LoraAdapters(model)

    @classmethod
    def load(cls, path: Path, placement: Placement) -> GenerateEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=placement.dtype, local_files_only=True)
        model.to(placement.device).eval()
        return cls(model, tokenizer, placement)

    @property
    def context_length(self) -> int:
        return int(getattr(self._model.config, "max_position_embeddings", 2048))

    # What the continuous engine (``predictors.engines.continuous``) builds on.
    @property
    def model(self) -> Any:
        return self._model

    @property
    def placement(self) -> Placement:
        return self._placement

    @property
    def eos_ids(self) -> set[int]:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad

    def decode(self, tokens: list[int]) -> str:
        return self._decode(tokens)

    def encode_prompt(self, prompt: str) -> tuple[int, ...]:
        return tuple(self._tokenizer(prompt)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> tuple[int, ...]:
        if not self._tokenizer.chat_template:
            raise ValueError("this model has no chat template; send a prompt instead of messages")
        text = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return tuple(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def batch_key(self, item: GenerationRequest) -> Hashable:
        params = item.params
        # ``generate`` takes EOS, the minimum length and the penalty per call: they split batches like sampling.
        eos = (params.ignore_eos, params.min_tokens, params.repetition_penalty)
        if params.greedy:
            return ("greedy", *eos)
        return ("sample", params.temperature, params.top_p, params.seed, *eos)

    def run_batch(self, items: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        """Rows whose adapter was unloaded after they were queued fail alone (404); the others run."""
        loaded = self.adapters.names
        gone = {i for i, item in enumerate(items) if item.adapter is not None and item.adapter not in loaded}
        if not gone:
            return list(self._generate(items))
        kept = [item for i, item in enumerate(items) if i not in gone]
        results = iter(self._generate(kept) if kept else [])
        return [AdapterNotFound(item.adapter or "", loaded) if i in gone else next(results)
                for i, item in enumerate(items)]

    def _generate(self, items: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        width = max(len(item.prompt_ids) for item in items)
        input_ids = torch.full((len(items), width), self._pad, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        for i, item in enumerate(items):  # left padding: every prompt ends at the same column
            n = len(item.prompt_ids)
            input_ids[i, width - n :] = torch.tensor(item.prompt_ids, dtype=torch.long)
            attention[i, width - n :] = 1
        params = items[0].params  # same batch key, so same sampling settings
        sampling: dict[str, Any] = {"do_sample": False}
        if not params.greedy:
            sampling = {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        config = GenerationConfig(
            max_new_tokens=max(item.params.max_new_tokens for item in items),
            pad_token_id=self._pad,
            eos_token_id=None if params.ignore_eos else sorted(self._eos),
            min_new_tokens=params.min_tokens or None,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            **sampling,
        )
        tracker = _RowTracker(items, self._decode, self._eos)
        device = self._placement.device
        names = self.adapters.row_names([item.adapter for item in items])
        with torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            self.adapters.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([tracker]),
                **({} if names is None else {"adapter_names": names}),
            )
        return tracker.results()

    def _decode(self, tokens: list[int]) -> str:
        return self._tokenizer.decode(tokens, skip_special_tokens=True)

    def warmup(self) -> None:
        self.run_batch([GenerationRequest(self.encode_prompt("Hello"), SamplingParams(max_new_tokens=2))])
