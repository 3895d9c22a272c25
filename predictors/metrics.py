"""Metrics of a predictor server: the batcher, the model and its start, on top of every server's
(``serving.metrics``), to Prometheus and OTLP alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry import metrics
from prometheus_client import REGISTRY, CollectorRegistry

from observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DualCounter, DualGauge, DualHistogram
from serving.metrics import ServerMetrics

TOKEN_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)


class PredictorMetrics(ServerMetrics):
    """Created once in ``main``; tests pass their own registry (and meter)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, meter: metrics.Meter | None = None) -> None:
        super().__init__(registry, meter, scope="kzero.predictors")
        meter = self._meter
        self._batch_size = DualHistogram(
            meter, registry, "kzero_batch_size", "Items per forward pass", ["model"], BATCH_BUCKETS, unit="{item}")
        self._queue_wait = DualHistogram(
            meter, registry, "kzero_queue_wait_seconds", "Time an item waited before its batch ran", ["model"],
            LATENCY_BUCKETS, unit="s")
        self._queue_depth = DualGauge(
            meter, registry, "kzero_queue_depth", "Items waiting for a batch", ["model"], unit="{item}")
        self._model_ready = DualGauge(
            meter, registry, "kzero_model_ready", "1 when the model is loaded and warmed up", ["model"])
        self._cold_start = DualGauge(
            meter, registry, "kzero_cold_start_seconds", "Seconds spent in each start-up phase", ["phase"], unit="s")
        self._generated_tokens = DualCounter(
            meter, registry, "kzero_generated_tokens_total", "Completion tokens generated", ["model"],
            unit="{token}")
        self._tokens_per_second = DualHistogram(
            meter, registry, "kzero_generation_tokens_per_second", "Completion tokens per second of each batch",
            ["model"], TOKEN_RATE_BUCKETS, unit="{token}/s")

        # The continuous engine's request-level view (kserve#3983, #3461 ask for these).
        self._ttft = DualHistogram(
            meter, registry, "kzero_time_to_first_token_seconds", "Submission to first generated token", ["model"],
            LATENCY_BUCKETS, unit="s")
        self._tpot = DualHistogram(
            meter, registry, "kzero_time_per_output_token_seconds", "Mean time between output tokens of a request",
            ["model"], TOKEN_LATENCY_BUCKETS, unit="s")
        # Not kzero_request_duration_seconds: that name is every server's per-route latency (serving.metrics).
        self._generation_duration = DualHistogram(
            meter, registry, "kzero_generation_duration_seconds", "Generation end to end, submission to last token",
            ["model"], LATENCY_BUCKETS, unit="s")
        self._prompt_tokens = DualCounter(
            meter, registry, "kzero_prompt_tokens_total", "Prompt tokens of generation requests", ["model"],
            unit="{token}")
        self._cancelled = DualCounter(
            meter, registry, "kzero_cancelled_requests_total", "Generation requests that left before finishing",
            ["model", "reason"], unit="{request}")
        self._running = DualGauge(
            meter, registry, "kzero_generation_running", "Sequences in the running batch", ["model"], unit="{request}")
        self._waiting = DualGauge(
            meter, registry, "kzero_generation_waiting", "Requests waiting for their first token", ["model"],
            unit="{request}")
        self._kv_usage = DualGauge(
            meter, registry, "kzero_kv_cache_usage_ratio", "Fraction of the paged KV cache in use", ["model"])
        # Per LoRA adapter; the base model's rows are the totals above less these.
        self._adapter_requests = DualCounter(
            meter, registry, "kzero_adapter_requests_total", "Generation rows run with a LoRA adapter",
            ["model", "adapter"], unit="{request}")
        self._adapter_tokens = DualCounter(
            meter, registry, "kzero_adapter_generated_tokens_total", "Completion tokens generated with a LoRA adapter",
            ["model", "adapter"], unit="{token}")

    def generation_done(
        self, model: str, prompt_tokens: int, completion_tokens: int,
        first_token_s: float | None, per_token_s: float | None, total_s: float,
    ) -> None:
        """One request of the continuous engine finished (its tokens count in ``kzero_generated_tokens_total``)."""
        self._prompt_tokens.add(prompt_tokens, model)
        if completion_tokens > 0:
            self._generated_tokens.add(completion_tokens, model)
        if first_token_s is not None:
            self._ttft.record(first_token_s, model)
        if per_token_s is not None:
            self._tpot.record(per_token_s, model)
        self._generation_duration.record(total_s, model)

    def adapter_generated(self, model: str, adapter: str, tokens: int) -> None:
        """One row of ``adapter`` finished with ``tokens`` completion tokens."""
        self._adapter_requests.add(1, model, adapter)
        if tokens > 0:
            self._adapter_tokens.add(tokens, model, adapter)

    def cancelled(self, model: str, reason: str) -> None:
        self._cancelled.add(1, model, reason)

    def watch_generation(self, model: str, stats: Callable[[], tuple[int, int, float] | None]) -> None:
        """``stats`` reads (running, waiting, KV cache usage) when metrics are collected; None: no such engine."""

        def reading(i: int) -> Callable[[], list[tuple[tuple[str], float]]]:
            return lambda: [] if (now := stats()) is None else [((model,), float(now[i]))]

        self._running.watch(reading(0))
        self._waiting.watch(reading(1))
        self._kv_usage.watch(reading(2))

    def observe_batch(self, model: str, size: int, waits: Sequence[float]) -> None:
        self._batch_size.record(size, model)
        self._queue_wait.record_many(waits, model)

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        """``tokens`` completion tokens produced by one batch that took ``seconds``."""
        if tokens <= 0:
            return
        self._generated_tokens.add(tokens, model)
        if seconds > 0:
            self._tokens_per_second.record(tokens / seconds, model)

    def watch_queue(self, model: str, depth: Callable[[], int]) -> None:
        self._queue_depth.watch(lambda: [((model,), float(depth()))])

    def model_ready(self, model: str, ready: bool) -> None:
        self._model_ready.set(1.0 if ready else 0.0, model)

    def cold_start(self, phase: str, seconds: float) -> None:
        self._cold_start.set(seconds, phase)
