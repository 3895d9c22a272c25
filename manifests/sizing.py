"""How much memory a preset's predictor needs, and so which GPU it must be scheduled on.

    weights   = parameters x bytes per parameter of the dtype it runs in
    KV cache  = 2 (keys and values) x layers x KV heads x head size x bytes x tokens x sequences
    overhead  = CUDA context and workspaces (GPU only) + a fraction of the two above for activations
    total     = weights + KV cache + overhead, on one GPU (or in the container's memory on CPU)

The tokens are the most one sequence can hold (``max_input_tokens + max_new_tokens``, at most the
model's context length); the sequences are ``max_batch_size``, the most the generate engine runs at
once: the static engine's batch (padded to the longest, so each row may reach the token bound), and
the continuous engine's ``--max_num_seqs``, which the manifests render from it. The continuous engine
(the default) holds its paged cache to ``--kv_cache_memory_gb``: the manifests render it from this
KV figure, so the budget the predictor allocates is the one the memory request covers. Encoders keep
no KV cache.

The predictor runs a model on one device (no tensor parallelism, no ``device_map`` sharding), so a
model that needs more than one GPU is refused with this arithmetic rather than rendered to fail at
load time with an out-of-memory error.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from manifests.presets import DTYPE_BYTES, Dtype, GpuProduct, Preset, default_gpus, find_preset

MIB = 1024**2
GIB = 1024**3
# A torch process's CUDA context (driver state, kernels loaded on first use) plus the cuBLAS and
# allocator workspaces: about 0.5 GiB on current data-center GPUs, doubled for headroom.
CUDA_CONTEXT_BYTES = 1 * GIB
# Activations of a prefill (the MLP's intermediate tensors, attention scores, logits) and the
# caching allocator's fragmentation, as a share of weights + KV cache. vLLM leaves the same 10% of a
# GPU outside its budget by default (gpu_memory_utilization 0.9).
ACTIVATION_FRACTION = 0.10
# The process without a model: interpreter, torch, transformers, KServe (0.68 GiB of RSS measured
# after importing them on CPU), the tokenizer and request buffers, with headroom.
HOST_BASELINE_BYTES = 2 * GIB


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def serving_dtype(profile_dtype: str, on_gpu: bool) -> Dtype:
    """The dtype the predictor loads the weights in: ``auto`` is bf16 (fp16 where the GPU has no
    bf16, also two bytes) on CUDA and fp32 on CPU (``predictors/device.py``)."""
    if profile_dtype != "auto":
        return profile_dtype  # type: ignore[return-value]
    return "bfloat16" if on_gpu else "float32"


class Footprint(BaseModel):
    """The memory one predictor replica needs for a preset under the configured limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset
    dtype: Dtype
    tokens: int = Field(gt=0, description="per sequence: max_input_tokens + max_new_tokens, at most the context")
    sequences: int = Field(gt=0, description="sequences at once: max_batch_size")
    on_gpu: bool

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def weights(self) -> int:
        return self.preset.params * self.bytes_per_param

    @property
    def kv_cache(self) -> int:
        return self.preset.kv_bytes_per_token * self.bytes_per_param * self.tokens * self.sequences

    @property
    def overhead(self) -> int:
        context = CUDA_CONTEXT_BYTES if self.on_gpu else 0
        return context + math.ceil(ACTIVATION_FRACTION * (self.weights + self.kv_cache))

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def host_memory(self) -> int:
        """The container's memory request. The weights pass through host memory on the way to a GPU
        (``from_pretrained`` loads on CPU, then the model moves), in the larger of the checkpoint's
        and the serving dtype (an embed model is loaded as stored, then converted)."""
        staged = self.preset.params * max(DTYPE_BYTES[self.preset.dtype], self.bytes_per_param)
        if self.on_gpu:
            return staged + HOST_BASELINE_BYTES
        return staged + self.kv_cache + self.overhead + HOST_BASELINE_BYTES

    @property
    def memory_request(self) -> str:
        return f"{math.ceil(self.host_memory / GIB)}Gi"

    def arithmetic(self) -> list[str]:
        p, b = self.preset, self.bytes_per_param
        where = "GPU" if self.on_gpu else "CPU"
        lines = [f"weights   {p.params:,} params x {b} B ({self.dtype}) = {gib(self.weights)}"]
        if p.task == "generate":
            lines.append(f"KV cache  2 x {p.layers} layers x {p.kv_heads} KV heads x {p.head_dim} x {b} B x "
                         f"{self.tokens} tokens x {self.sequences} sequences = {gib(self.kv_cache)}")
        else:
            lines.append("KV cache  none (an encoder runs each input once)")
        context = f"{gib(CUDA_CONTEXT_BYTES)} CUDA context + " if self.on_gpu else ""
        lines.append(f"overhead  {context}{ACTIVATION_FRACTION:.0%} of weights and KV cache = {gib(self.overhead)}")
        lines.append(f"total     {gib(self.total)} on the {where}; container memory at least {self.memory_request}")
        return lines


def footprint_for(preset: str, *, device: str, dtype: str, gpus: int, tokens: int, sequences: int) -> Footprint:
    """The footprint of a preset on a profile (its device, dtype and GPU count) under the predictor's
    limits: ``tokens`` per sequence (capped at the model's context), ``sequences`` at once."""
    found = find_preset(preset)
    on_gpu = device.startswith("cuda") or (device == "auto" and gpus > 0)
    return Footprint(preset=found, dtype=serving_dtype(dtype, on_gpu), tokens=min(tokens, found.context_length),
                     sequences=sequences, on_gpu=on_gpu)


def choose_gpu(footprint: Footprint, named: GpuProduct | None) -> GpuProduct:
    """The named GPU if the footprint fits it, else (none named) the smallest default that fits."""
    candidates = [named] if named is not None else default_gpus()
    for gpu in candidates:
        if footprint.total <= gpu.memory_mib * MIB:
            return gpu
    raise ValueError(refusal(footprint, candidates[-1], named=named is not None))


def refusal(footprint: Footprint, gpu: GpuProduct, *, named: bool) -> str:
    capacity = gpu.memory_mib * MIB
    count = math.ceil(footprint.total / capacity)
    which = "the GPU the config names" if named else "the largest GPU known"
    lines = [f"preset {footprint.preset.name} does not fit one {gpu.product} ({which}, "
             f"{gpu.memory_mib} MiB = {gib(capacity)}); it would need {count}:",
             *(f"  {line}" for line in footprint.arithmetic()),
             f"  {gib(footprint.total)} > {gib(capacity)}. The predictor runs a model on one GPU (no tensor "
             "parallelism): lower predictor.max_batch_size, max_input_tokens or max_new_tokens, "
             "or name a larger GPU in profiles.gpu.gpu"]
    return "\n".join(lines)



def describe(footprint: Footprint, gpu: GpuProduct | None) -> str:
    """The sizing of one profile, as ``python -m manifests presets --config`` prints it."""
    lines = footprint.arithmetic()
    if gpu is not None:
        lines.append(f"GPU       1 x {gpu.product} ({gib(gpu.memory_mib * MIB)}): "
                     f"{footprint.total / (gpu.memory_mib * MIB):.0%} used")
    return "\n".join(lines)
