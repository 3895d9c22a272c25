"""Model presets and GPU products: what the renderer needs to size a predictor from a model's name.

A preset holds the numbers a model's published ``config.json`` gives (layers, KV heads, head size,
context length, dtype) and its parameter count, so ``predictor.preset`` is enough to derive the
memory the predictor needs (``manifests/sizing.py``) and the GPU it must be scheduled on. The two
packaged models come with the image; the others come from a ``storage_uri`` the user provides
(``pvc://claim/path`` or an ``oci://`` modelcar holding the Hugging Face checkpoint directory):
nothing is ever fetched from a model hub.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.packaged import PACKAGED_MODELS

Dtype = Literal["float32", "float16", "bfloat16"]
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}


class Preset(BaseModel):
    """One model. Architecture fields use the names of the ``config.json`` they come from (in comments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    repo: str = Field(description="the published checkpoint these numbers come from")
    task: Literal["embed", "generate"]
    params: int = Field(gt=0, description="parameters in the checkpoint (tied embeddings counted once)")
    dtype: Dtype = Field(description="the checkpoint's dtype (config.json torch_dtype)")
    context_length: int = Field(gt=0, description="max_position_embeddings")
    layers: int = Field(gt=0, description="num_hidden_layers")
    kv_heads: int = Field(gt=0, description="num_key_value_heads (num_attention_heads without GQA)")
    head_dim: int = Field(gt=0, description="head_dim, or hidden_size / num_attention_heads")
    hidden_size: int = Field(gt=0)
    source: Literal["packaged", "storage_uri"]
    model_id: str | None = Field(default=None, description="the packaged model id, for source packaged")

    @model_validator(mode="after")
    def _source(self) -> Preset:
        if (self.source == "packaged") != (self.model_id is not None):
            raise ValueError(f"preset {self.name}: a packaged preset names its model_id, and only it")
        if self.model_id is not None:
            packaged = PACKAGED_MODELS.get(self.model_id)
            if packaged is None or packaged.task != self.task:
                raise ValueError(f"preset {self.name}: {self.model_id!r} is not a packaged {self.task} model")
        return self

    @property
    def kv_bytes_per_token(self) -> int:
        """Per token of one sequence at one byte per element: keys and values of every layer.

        Encoders (the embed models) keep no KV cache between steps: they run each input once."""
        return 2 * self.layers * self.kv_heads * self.head_dim if self.task == "generate" else 0


# Parameter counts: summed from the tensor shapes the config implies (embedding and, unless tied, the
# LM head, plus per layer the attention, MLP and norms), which is what the checkpoints' safetensors
# hold; the two packaged ones are counted from the files in their packages.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    # Packaged in the image. all-MiniLM-L6-v2: BertModel, hidden_size 384, num_hidden_layers 6,
    # num_attention_heads 12 (head size 32), max_position_embeddings 512, F32 tensors; 22,713,216
    # parameters in model.safetensors (its int64 position_ids buffer left out).
    Preset(name="all-minilm-l6-v2", repo="sentence-transformers/all-MiniLM-L6-v2", task="embed",
           params=22_713_216, dtype="float32", context_length=512, layers=6, kv_heads=12, head_dim=32,
           hidden_size=384, source="packaged", model_id="all-minilm-l6-v2"),
    # SmolLM2-135M-Instruct: LlamaForCausalLM, hidden_size 576, num_hidden_layers 30,
    # num_attention_heads 9, num_key_value_heads 3, head size 576 / 9 = 64, max_position_embeddings
    # 8192, torch_dtype bfloat16, tie_word_embeddings; 134,515,008 parameters in the packaged GGUF
    # (llama.block_count 30, llama.attention.head_count_kv 3, llama.context_length 8192 there too).
    Preset(name="smollm2-135m-instruct", repo="HuggingFaceTB/SmolLM2-135M-Instruct", task="generate",
           params=134_515_008, dtype="bfloat16", context_length=8192, layers=30, kv_heads=3, head_dim=64,
           hidden_size=576, source="packaged", model_id="smollm2-135m-instruct"),
    # Llama-3.1-8B-Instruct: hidden_size 4096, num_hidden_layers 32, num_attention_heads 32,
    # num_key_value_heads 8, head_dim 128, intermediate_size 14336, vocab_size 128256 (untied),
    # max_position_embeddings 131072, torch_dtype bfloat16. 2 x 128256 x 4096 + 32 x (2 x 4096^2 +
    # 2 x 4096 x 1024 + 3 x 4096 x 14336 + 2 x 4096) + 4096 = 8,030,261,248.
    Preset(name="llama-3.1-8b-instruct", repo="meta-llama/Llama-3.1-8B-Instruct", task="generate",
           params=8_030_261_248, dtype="bfloat16", context_length=131072, layers=32, kv_heads=8, head_dim=128,
           hidden_size=4096, source="storage_uri"),
    # Mistral-7B-Instruct-v0.3: as Llama-3.1-8B but vocab_size 32768 and max_position_embeddings
    # 32768 (no sliding_window): 2 x 32768 x 4096 + 32 x 218,112,000 + 4096 = 7,248,023,552.
    Preset(name="mistral-7b-instruct-v0.3", repo="mistralai/Mistral-7B-Instruct-v0.3", task="generate",
           params=7_248_023_552, dtype="bfloat16", context_length=32768, layers=32, kv_heads=8, head_dim=128,
           hidden_size=4096, source="storage_uri"),
    # Phi-3.5-mini-instruct: hidden_size 3072, num_hidden_layers 32, num_attention_heads 32,
    # num_key_value_heads 32 (no GQA), head size 3072 / 32 = 96, intermediate_size 8192, vocab_size
    # 32064 (untied), max_position_embeddings 131072 (LongRoPE), torch_dtype bfloat16.
    # 2 x 32064 x 3072 + 32 x (4 x 3072^2 + 3 x 3072 x 8192 + 2 x 3072) + 3072 = 3,821,079,552.
    Preset(name="phi-3.5-mini-instruct", repo="microsoft/Phi-3.5-mini-instruct", task="generate",
           params=3_821_079_552, dtype="bfloat16", context_length=131072, layers=32, kv_heads=32, head_dim=96,
           hidden_size=3072, source="storage_uri"),
    # Qwen2.5-7B-Instruct: hidden_size 3584, num_hidden_layers 28, num_attention_heads 28,
    # num_key_value_heads 4, head size 3584 / 28 = 128, intermediate_size 18944, vocab_size 152064
    # (untied), max_position_embeddings 32768 (131072 only with the YaRN rope_scaling the config
    # leaves off), torch_dtype bfloat16; q/k/v carry biases. 2 x 152064 x 3584 + 28 x (2 x 3584^2 +
    # 3584 + 2 x (3584 x 512 + 512) + 3 x 3584 x 18944 + 2 x 3584) + 3584 = 7,615,616,512.
    Preset(name="qwen2.5-7b-instruct", repo="Qwen/Qwen2.5-7B-Instruct", task="generate",
           params=7_615_616_512, dtype="bfloat16", context_length=32768, layers=28, kv_heads=4, head_dim=128,
           hidden_size=3584, source="storage_uri"),
    # bge-base-en-v1.5: BertModel, hidden_size 768, num_hidden_layers 12, num_attention_heads 12
    # (head size 64), max_position_embeddings 512, torch_dtype float32; BERT-base with its pooler,
    # 109,482,240 parameters.
    Preset(name="bge-base-en-v1.5", repo="BAAI/bge-base-en-v1.5", task="embed",
           params=109_482_240, dtype="float32", context_length=512, layers=12, kv_heads=12, head_dim=64,
           hidden_size=768, source="storage_uri"),
)}


def find_preset(name: str) -> Preset:
    """The preset called ``name``, matched case-insensitively ("Llama-3.1-8B-Instruct" works)."""
    preset = PRESETS.get(name.lower())
    if preset is None:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)} (python -m manifests presets)")
    return preset


def preset_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A deploy config's predictor section with ``preset: NAME`` standing for the model fields: the
    task, and a packaged preset's model_id; any other preset needs the user's ``storage_uri``."""
    preset = find_preset(str(data["preset"]))
    if data.get("task", preset.task) != preset.task:
        raise ValueError(f"predictor.preset {preset.name!r} is a {preset.task} model, not {data['task']}")
    fields = {**data, "preset": preset.name, "task": preset.task}
    if data.get("storage_uri") is None:
        if preset.model_id is None:
            raise ValueError(f"predictor.preset {preset.name!r} needs storage_uri (pvc://claim/path or oci://...) "
                             f"holding the {preset.repo} checkpoint: only the packaged models are in the image")
        if data.get("model_id", preset.model_id) != preset.model_id:
            raise ValueError(f"predictor.preset {preset.name!r} is the packaged {preset.model_id!r}, "
                             f"not model_id {data['model_id']!r}")
        fields["model_id"] = preset.model_id
    return fields


class GpuProduct(BaseModel):
    """A GPU as NVIDIA GPU feature discovery labels its nodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                         description="the nvidia.com/gpu.product label value")
    memory_mib: int = Field(gt=0, description="the nvidia.com/gpu.memory label value (MiB)")
    pick: bool = Field(default=False, description="a candidate when the config names no GPU")


# GPU feature discovery sets nvidia.com/gpu.product to the name nvidia-smi reports with spaces as
# dashes, and nvidia.com/gpu.memory to its memory.total in MiB: these are those values. Picked by
# default (smallest first) are one product per memory class; the others are known so a config that
# names them needs no memory_mib.
GPU_PRODUCTS: dict[str, GpuProduct] = {g.product: g for g in (
    GpuProduct(product="Tesla-T4", memory_mib=15360, pick=True),
    GpuProduct(product="NVIDIA-A10G", memory_mib=23028),
    GpuProduct(product="NVIDIA-A10", memory_mib=23028),
    GpuProduct(product="NVIDIA-L4", memory_mib=23034, pick=True),
    GpuProduct(product="NVIDIA-A100-PCIE-40GB", memory_mib=40960),
    GpuProduct(product="NVIDIA-A100-SXM4-40GB", memory_mib=40960),
    GpuProduct(product="NVIDIA-L40S", memory_mib=46068, pick=True),
    GpuProduct(product="NVIDIA-A100-80GB-PCIe", memory_mib=81920),
    GpuProduct(product="NVIDIA-A100-SXM4-80GB", memory_mib=81920, pick=True),
    GpuProduct(product="NVIDIA-H100-PCIe", memory_mib=81559),
    GpuProduct(product="NVIDIA-H100-80GB-HBM3", memory_mib=81559),
    GpuProduct(product="NVIDIA-H200", memory_mib=143771, pick=True),
)}


def default_gpus() -> list[GpuProduct]:
    """The candidates when the config names no GPU, smallest memory first."""
    return sorted((g for g in GPU_PRODUCTS.values() if g.pick), key=lambda g: g.memory_mib)


def gpu_product(product: str, memory_mib: int | None) -> GpuProduct:
    """A GPU a config names: a known product, or any product with its memory given."""
    if memory_mib is not None:
        return GpuProduct(product=product, memory_mib=memory_mib)
    known = GPU_PRODUCTS.get(product)
    if known is None:
        raise ValueError(f"GPU product {product!r} is not known: give its memory_mib (the nvidia.com/gpu.memory "
                         f"label of its nodes), or name one of {', '.join(GPU_PRODUCTS)}")
    return known


class Gpu(BaseModel):
    """The GPU a deploy config's profile names, by NVIDIA GPU feature discovery's node labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    product: str = Field(description="nvidia.com/gpu.product, e.g. NVIDIA-L4 (python -m manifests presets)")
    memory_mib: int | None = Field(default=None, gt=0, description="nvidia.com/gpu.memory; default: the known "
                                                                     "product's")

    @property
    def resolved(self) -> GpuProduct:
        return gpu_product(self.product, self.memory_mib)

    @model_validator(mode="after")
    def _known(self) -> Gpu:
        gpu_product(self.product, self.memory_mib)  # raises for an unknown product without its memory
        return self


def listing() -> str:
    """The presets and GPUs as ``python -m manifests presets`` prints them."""
    head = ("preset", "task", "params", "dtype", "context", "layers", "kv heads", "head dim", "source")
    rows = [head] + [(p.name, p.task, f"{p.params / 1e9:.3g}B" if p.params >= 1e9 else f"{p.params / 1e6:.3g}M",
                      p.dtype, str(p.context_length), str(p.layers), str(p.kv_heads), str(p.head_dim),
                      f"packaged ({p.model_id})" if p.model_id else "storage_uri (pvc:// or oci://, yours)")
                     for p in PRESETS.values()]
    gpus = [("gpu product (nvidia.com/gpu.product)", "memory (nvidia.com/gpu.memory)", "default pick")]
    gpus += [(g.product, f"{g.memory_mib} MiB", "yes" if g.pick else "")
             for g in sorted(GPU_PRODUCTS.values(), key=lambda g: g.memory_mib)]
    return _table(rows) + "\n" + _table(gpus)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
                   for row in rows)
