"""Model presets: the memory arithmetic against hand-computed figures, the GPU it picks or refuses,
the preset standing for the model fields, the rendered overlays, and ``python -m manifests presets``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from manifests.config import GPU_PRODUCT_LABEL, DeployConfig
from manifests.presets import GPU_PRODUCTS, PRESETS, find_preset
from manifests.render import overlay_documents
from manifests.sizing import choose_gpu, footprint_for
from serving.packaged import PACKAGED_MODELS
from tests.manifests.helpers import REPO_ROOT, find, flag

GIB = 1024**3


def _config(predictor: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "kzero-x", "namespace": "kzero", "image": "img:1", "predictor": predictor, **extra}


LLAMA = {"model_name": "llama", "preset": "Llama-3.1-8B-Instruct", "storage_uri": "pvc://models/llama-3.1-8b",
         "max_batch_size": 8, "max_input_tokens": 3584, "max_new_tokens": 512}


def test_llama_on_a_gpu_by_hand() -> None:
    fp = footprint_for("llama-3.1-8b-instruct", device="cuda", dtype="auto", gpus=1, tokens=3584 + 512, sequences=8)
    # auto on CUDA is bf16: 2 bytes a parameter.
    # weights  = 8,030,261,248 x 2                                    = 16,060,522,496 B (14.96 GiB)
    assert fp.weights == 16_060_522_496
    # KV cache = 2 x 32 layers x 8 KV heads x 128 head dim x 2 B      = 131,072 B per token
    #          x (3584 + 512) tokens x 8 sequences = 131,072 x 32,768 = 4,294,967,296 B (4 GiB)
    assert fp.kv_cache == 4_294_967_296
    # overhead = 1 GiB (1,073,741,824) + ceil(0.10 x (16,060,522,496 + 4,294,967,296) = 2,035,548,979.2)
    #          = 1,073,741,824 + 2,035,548,980                        = 3,109,290,804 B
    assert fp.overhead == 3_109_290_804
    # total    = 16,060,522,496 + 4,294,967,296 + 3,109,290,804       = 23,464,780,596 B (21.85 GiB)
    assert fp.total == 23_464_780_596
    # A T4 has 15,360 MiB = 16,106,127,360 B: too small. An L4 has 23,034 MiB = 24,152,899,584 B: fits.
    assert choose_gpu(fp, None).product == "NVIDIA-L4"
    # Host: the bf16 weights pass through host memory, + 2 GiB for the process:
    # 16,060,522,496 + 2,147,483,648 = 18,208,006,144 B = 16.96 GiB, requested as 17Gi.
    assert fp.host_memory == 18_208_006_144
    assert fp.memory_request == "17Gi"


def test_llama_with_twice_the_sequences_needs_more_than_an_l4() -> None:
    fp = footprint_for("llama-3.1-8b-instruct", device="cuda", dtype="auto", gpus=1, tokens=4096, sequences=16)
    # KV cache = 131,072 x 4096 x 16 = 8,589,934,592 B (8 GiB)
    # overhead = 1,073,741,824 + ceil(0.10 x 24,650,457,088 = 2,465,045,708.8) = 3,538,787,533 B
    # total    = 16,060,522,496 + 8,589,934,592 + 3,538,787,533 = 28,189,244,621 B (26.25 GiB) > 22.49 GiB
    assert fp.total == 28_189_244_621
    with pytest.raises(ValueError) as refused:
        choose_gpu(fp, GPU_PRODUCTS["NVIDIA-L4"])
    message = str(refused.value)
    assert "does not fit one NVIDIA-L4" in message and "it would need 2" in message
    assert "x 4096 tokens x 16 sequences = 8.00 GiB" in message
    assert "26.25 GiB > 22.49 GiB" in message
    # Unnamed: the next default up, an L40S (46,068 MiB).
    assert choose_gpu(fp, None).product == "NVIDIA-L40S"


def test_smollm2_by_hand_on_gpu_and_cpu() -> None:
    # The default limits: 2048 input + 512 new tokens, 32 sequences (max_batch_size).
    gpu = footprint_for("smollm2-135m-instruct", device="cuda", dtype="auto", gpus=1, tokens=2560, sequences=32)
    # weights  = 134,515,008 x 2                                      = 269,030,016 B
    # KV cache = 2 x 30 layers x 3 KV heads x 64 x 2 B = 23,040 B per token x 2560 x 32 = 1,887,436,800 B
    # overhead = 1,073,741,824 + ceil(0.10 x 2,156,466,816 = 215,646,681.6) = 1,289,388,506 B
    # total    = 269,030,016 + 1,887,436,800 + 1,289,388,506          = 3,445,855,322 B (3.21 GiB): a T4
    assert (gpu.weights, gpu.kv_cache, gpu.overhead, gpu.total) == (
        269_030_016, 1_887_436_800, 1_289_388_506, 3_445_855_322)
    assert choose_gpu(gpu, None).product == "Tesla-T4"
    cpu = footprint_for("smollm2-135m-instruct", device="cpu", dtype="auto", gpus=0, tokens=2560, sequences=32)
    # auto on CPU is fp32: 4 bytes, no CUDA context.
    # weights  = 134,515,008 x 4                                      = 538,060,032 B
    # KV cache = 46,080 B per token x 2560 x 32                       = 3,774,873,600 B
    # overhead = ceil(0.10 x 4,312,933,632 = 431,293,363.2)           = 431,293,364 B
    # host     = 538,060,032 + 3,774,873,600 + 431,293,364 + 2 GiB    = 6,891,710,644 B (6.42 GiB): 7Gi
    assert (cpu.weights, cpu.kv_cache, cpu.overhead, cpu.host_memory) == (
        538_060_032, 3_774_873_600, 431_293_364, 6_891_710_644)
    assert cpu.memory_request == "7Gi"


def test_tokens_are_capped_at_the_context_and_encoders_keep_no_kv_cache() -> None:
    embed = footprint_for("bge-base-en-v1.5", device="cuda", dtype="auto", gpus=1, tokens=2560, sequences=64)
    assert embed.tokens == 512 and embed.kv_cache == 0
    assert embed.weights == 109_482_240 * 2
    assert any("KV cache  none" in line for line in embed.arithmetic())
    explicit = footprint_for("mistral-7b-instruct-v0.3", device="cuda", dtype="float32", gpus=1, tokens=10**6,
                             sequences=1)
    assert explicit.tokens == 32768 and explicit.bytes_per_param == 4


def test_packaged_presets_match_the_packaged_files() -> None:
    """The numbers of the two packaged presets, read back from the files the image carries."""
    import gguf
    from safetensors import safe_open

    minilm, _ = PACKAGED_MODELS["all-minilm-l6-v2"].location()
    config = json.loads((minilm / "config.json").read_text())
    preset = PRESETS["all-minilm-l6-v2"]
    assert (preset.layers, preset.hidden_size, preset.context_length) == (
        config["num_hidden_layers"], config["hidden_size"], config["max_position_embeddings"])
    assert preset.kv_heads * preset.head_dim == config["hidden_size"]
    with safe_open(str(minilm / "model.safetensors"), "np") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    weights = {k: s for k, s in shapes.items() if not k.endswith("position_ids")}  # a buffer, not a parameter
    assert preset.params == sum(math.prod(s) for s in weights.values())

    root, gguf_file = PACKAGED_MODELS["smollm2-135m-instruct"].location()
    assert gguf_file is not None
    reader = gguf.GGUFReader(root / gguf_file)
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("llama.")}
    preset = PRESETS["smollm2-135m-instruct"]
    assert (preset.layers, preset.kv_heads, preset.context_length, preset.hidden_size) == (
        meta["llama.block_count"], meta["llama.attention.head_count_kv"], meta["llama.context_length"],
        meta["llama.embedding_length"])
    assert preset.head_dim == meta["llama.embedding_length"] // meta["llama.attention.head_count"]
    assert preset.params == sum(math.prod(int(d) for d in t.shape) for t in reader.tensors)


def test_a_preset_stands_for_the_model_fields() -> None:
    packaged = DeployConfig.model_validate(_config({"model_name": "smol", "preset": "smollm2-135m-instruct"}))
    assert (packaged.predictor.task, packaged.predictor.model_id) == ("generate", "smollm2-135m-instruct")
    named = DeployConfig.model_validate(_config(LLAMA))
    assert named.predictor.preset == "llama-3.1-8b-instruct"  # matched case-insensitively
    assert (named.predictor.task, named.predictor.model_id) == ("generate", None)
    assert find_preset("QWEN2.5-7B-Instruct").name == "qwen2.5-7b-instruct"


@pytest.mark.parametrize(("predictor", "message"), [
    ({"preset": "llama-3.1-8b-instruct"}, "needs storage_uri"),
    ({"preset": "gpt-5"}, "unknown preset 'gpt-5'; known: all-minilm-l6-v2"),
    ({"preset": "bge-base-en-v1.5", "task": "generate", "storage_uri": "pvc://m/bge"}, "is a embed model"),
    ({"preset": "smollm2-135m-instruct", "model_id": "all-minilm-l6-v2"}, "is the packaged 'smollm2-135m-instruct'"),
])
def test_a_bad_preset_is_refused_naming_it(predictor: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match="predictor") as refused:
        DeployConfig.model_validate(_config({"model_name": "m", **predictor}))
    assert message in str(refused.value)


def test_a_named_gpu_needs_known_memory_and_is_checked() -> None:
    with pytest.raises(ValidationError, match="'NVIDIA-B200' is not known: give its memory_mib"):
        DeployConfig.model_validate(_config(LLAMA, profiles={"gpu": {"gpu": {"product": "NVIDIA-B200"}}}))
    config = DeployConfig.model_validate(
        _config(LLAMA, profiles={"gpu": {"gpu": {"product": "NVIDIA-B200", "memory_mib": 183359}}}))
    assert config.profile("gpu").node_selector[GPU_PRODUCT_LABEL] == "NVIDIA-B200"
    with pytest.raises(ValidationError, match="does not fit one Tesla-T4 \\(the GPU the config names"):
        DeployConfig.model_validate(_config(LLAMA, profiles={"gpu": {"gpu": {"product": "Tesla-T4"}}}))
    with pytest.raises(ValidationError, match="'NVIDIA-L4' is named for a profile whose device is cpu"):
        DeployConfig.model_validate(_config(LLAMA, profiles={"cpu": {"gpu": {"product": "NVIDIA-L4"}}}))


def test_the_overlays_carry_the_sizing() -> None:
    config = DeployConfig.model_validate(_config(LLAMA))
    gpu = find(overlay_documents(config, "gpu"), "InferenceService")["spec"]["predictor"]
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true", GPU_PRODUCT_LABEL: "NVIDIA-L4"}
    assert gpu["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"] == "17Gi"
    assert flag(container["args"], "--max_input_tokens") == "3584"
    assert flag(container["args"], "--max_new_tokens") == "512"
    # The continuous engine (the default) gets the sized KV cache for its 8 sequences: 2 x 32 layers x 8 KV
    # heads x 128 x 2 bytes = 128 KiB per token, x 4096 tokens x 8 sequences = 4 GiB.
    assert flag(container["args"], "--max_num_seqs") == "8"
    assert flag(container["args"], "--kv_cache_memory_gb") == "4"
    cpu = find(overlay_documents(config, "cpu"), "InferenceService")["spec"]["predictor"]
    # fp32 on CPU: weights 29.92 GiB + KV 8 GiB + 10% + 2 GiB = 43.71 GiB: 44Gi, and no GPU selector.
    assert cpu["containers"][0]["resources"]["requests"]["memory"] == "44Gi"
    assert flag(cpu["containers"][0]["args"], "--kv_cache_memory_gb") == "8"
    assert "nodeSelector" not in cpu


def test_sizing_raises_the_memory_request_never_lowers_it() -> None:
    big = DeployConfig.model_validate(_config(LLAMA, profiles={"gpu": {"resources": {"cpu": "8", "memory": "64Gi",
                                                                                     "gpus": 1}}}))
    assert big.profile("gpu").resources.memory == "64Gi"
    without = DeployConfig.model_validate(_config({"model_name": "smol", "task": "generate",
                                                   "model_id": "smollm2-135m-instruct"}))
    assert without.profile("gpu") == without.profiles.gpu  # no preset, no GPU named: as configured
    named = DeployConfig.model_validate(_config(without.predictor.model_dump(exclude_none=True),
                                                profiles={"gpu": {"gpu": {"product": "NVIDIA-A10G"}}}))
    assert named.profile("gpu").node_selector[GPU_PRODUCT_LABEL] == "NVIDIA-A10G"  # named: selected, not sized
    assert named.profile("gpu").resources == named.profiles.gpu.resources


RUN = [sys.executable, "-m", "manifests"]


def test_cli_lists_presets_and_sizes_a_config(tmp_path: Path) -> None:
    listed = subprocess.run([*RUN, "presets"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    for name in PRESETS:
        assert name in listed.stdout
    assert "NVIDIA-H200" in listed.stdout and "143771 MiB" in listed.stdout
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(_config(LLAMA)))
    sized = subprocess.run([*RUN, "presets", "--config", str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True)
    assert "total     21.85 GiB on the GPU" in sized.stdout
    assert "GPU       1 x NVIDIA-L4" in sized.stdout


def test_cli_refuses_a_preset_that_does_not_fit_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(_config({**LLAMA, "max_batch_size": 16},
                                           profiles={"gpu": {"gpu": {"product": "NVIDIA-L4"}}})))
    done = subprocess.run([*RUN, "render", "--config", str(path), "--overlay", "cpu"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert "does not fit one NVIDIA-L4" in done.stderr and "26.25 GiB > 22.49 GiB" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
