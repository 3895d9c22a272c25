"""LoRA adapters in the static engine, on adapters made here with peft: an adapter changes the rows that
name it and leaves the base model's rows of the same batch as they were; malformed directories are
refused naming what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from predictors.device import resolve_placement
from predictors.engines.generate import GenerateEngine, GenerationRequest, GenerationResult, SamplingParams
from predictors.engines.lora import CONFIG_FILE, WEIGHTS_FILE, AdapterNotFound, check_adapter_dir
from serving.errors import InvalidInput
from tests.tiny_models import lora_adapter, lora_adapters, tiny_causal_lm

PROMPTS = ["hello there", "a longer prompt than the first one", "x"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_causal_lm(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return lora_adapters(model_dir, tmp_path_factory.mktemp("adapters"), ("one", "two"))


def engine_of(model_dir: Path) -> GenerateEngine:
    return GenerateEngine.load(model_dir, resolve_placement("cpu", "float32"))


def rows(engine: GenerateEngine, adapters: list[str | None], max_new_tokens: int = 12) -> list[GenerationRequest]:
    return [GenerationRequest(engine.encode_prompt(PROMPTS[i % len(PROMPTS)]),
                              SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True), adapter=adapter)
            for i, adapter in enumerate(adapters)]


def texts(results: list[GenerationResult | Exception]) -> list[str]:
    return [r.text for r in results if isinstance(r, GenerationResult)]


def test_a_directory_that_is_not_a_lora_adapter_is_named(adapters: dict[str, Path], tmp_path: Path) -> None:
    check_adapter_dir(adapters["one"])
    with pytest.raises(InvalidInput, match=r"^path: .* is not a directory"):
        check_adapter_dir(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(adapters["one"], broken)
    (broken / WEIGHTS_FILE).rename(broken / "adapter_model.bin")
    with pytest.raises(InvalidInput, match=r"has no adapter_model\.safetensors"):
        check_adapter_dir(broken)
    (broken / "adapter_model.bin").rename(broken / WEIGHTS_FILE)
    config = json.loads((broken / CONFIG_FILE).read_text())
    (broken / CONFIG_FILE).write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(InvalidInput, match="peft_type is 'IA3', not 'LORA'"):
        check_adapter_dir(broken, "--lora broken")
    (broken / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InvalidInput, match="is not readable JSON"):
        check_adapter_dir(broken)
    (broken / CONFIG_FILE).unlink()
    with pytest.raises(InvalidInput, match=r"has no adapter_config\.json"):
        check_adapter_dir(broken)


def test_adapters_change_their_rows_only_in_a_mixed_batch(model_dir: Path, adapters: dict[str, Path]) -> None:
    engine = engine_of(model_dir)
    base = texts(engine.run_batch(rows(engine, [None, None, None])))
    for name, path in adapters.items():
        engine.adapters.load(name, path)
    assert engine.adapters.names == ("one", "two")
    alone = {name: texts(engine.run_batch(rows(engine, [name, name, name]))) for name in adapters}
    assert alone["one"] != base and alone["two"] != base and alone["one"] != alone["two"]

    # One batch, rows of the base model and of both adapters side by side: each row as it is alone.
    mixed = texts(engine.run_batch(rows(engine, [None, "one", "two"])))
    assert mixed == [base[0], alone["one"][1], alone["two"][2]]
    assert texts(engine.run_batch(rows(engine, [None, None, None]))) == base


def test_unload_and_rows_queued_for_an_unloaded_adapter(model_dir: Path, adapters: dict[str, Path]) -> None:
    engine = engine_of(model_dir)
    base = texts(engine.run_batch(rows(engine, [None, None])))
    engine.adapters.load("one", adapters["one"])
    with pytest.raises(InvalidInput, match="model_name: adapter 'one' is already loaded"):
        engine.adapters.load("one", adapters["two"])
    engine.adapters.unload("one")
    with pytest.raises(AdapterNotFound, match="adapter 'one' is not loaded; loaded adapters: none"):
        engine.adapters.unload("one")
    base_row, gone = engine.run_batch(rows(engine, [None, "one"]))
    assert isinstance(gone, AdapterNotFound) and isinstance(base_row, GenerationResult)
    assert base_row.text == base[0]
    assert texts(engine.run_batch(rows(engine, [None, None]))) == base  # no adapter left: the base model
    engine.adapters.load("one", adapters["one"])  # loads again under the same name
    assert texts(engine.run_batch(rows(engine, [None, "one"])))[0] == base[0]


def test_an_adapter_for_another_model_is_refused_and_leaves_the_model_as_it_was(
    model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=80, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    torch.manual_seed(3)
    get_peft_model(wider, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
        tmp_path / "wider")
    engine = engine_of(model_dir)
    base = texts(engine.run_batch(rows(engine, [None, None])))
    for _ in range(2):  # the first load (the model is not a PeftModel yet), then one beside another adapter
        with pytest.raises(InvalidInput, match=r"^path: cannot apply the adapter in .*wider to this model"):
            engine.adapters.load("wider", tmp_path / "wider")
        assert "wider" not in engine.adapters.names
        assert texts(engine.run_batch(rows(engine, [None, None]))) == base
        if not engine.adapters.names:
            engine.adapters.load("fits", lora_adapter(model_dir, tmp_path / "fits"))


@pytest.mark.slow
def test_an_adapter_on_the_packaged_smollm2(model_cache: Path, tmp_path: Path) -> None:
    from predictors.gguf_cache import ensure_safetensors
    from serving.packaged import resolve_packaged

    model_dir, _ = ensure_safetensors(*resolve_packaged("smollm2-135m-instruct").location(), model_cache)
    adapter = lora_adapter(model_dir, tmp_path / "smol-adapter", seed=7, rank=8, alpha=32)
    engine = engine_of(model_dir)
    base = texts(engine.run_batch(rows(engine, [None, None, None], max_new_tokens=8)))
    engine.adapters.load("smol-lora", adapter)
    mixed = texts(engine.run_batch(rows(engine, [None, "smol-lora", None], max_new_tokens=8)))
    tuned = texts(engine.run_batch(rows(engine, ["smol-lora"] * 3, max_new_tokens=8)))
    assert mixed[0] == base[0] and mixed[2] == base[2]
    assert mixed[1] == tuned[1] != base[1]
