"""Tiny random models built from a config and saved with ``save_pretrained``.

They exercise the real loading code (transformers, sentence-transformers) in milliseconds.
A character-level tokenizer keeps token and text boundaries aligned, which makes stop-string
and streaming assertions exact.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

CHARS = string.ascii_letters + string.digits + " .,!?'-\n"
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def char_tokenizer(specials: list[str]):  # -> PreTrainedTokenizerFast
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*specials, *CHARS, "<", ">", "/"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def tiny_causal_lm(directory: Path, seed: int = 0, max_positions: int = 512) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer(["<pad>", "<eos>", "<unk>"])
    tokenizer.pad_token, tokenizer.eos_token = "<pad>", "<eos>"
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=1, pad_token_id=0, bos_token_id=1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_sentence_transformer(directory: Path, seed: int = 0) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    tokenizer = char_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tokenizer.pad_token, tokenizer.unk_token = "[PAD]", "[UNK]"
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=128, pad_token_id=0,
    )
    torch.manual_seed(seed)
    backbone = directory / "backbone"
    BertModel(config).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    transformer = Transformer(str(backbone), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()]).save(str(directory / "st"))
    return directory / "st"


def lora_adapter(model_dir: Path, directory: Path, seed: int = 1, rank: int = 4, alpha: int = 64) -> Path:
    """A peft LoRA adapter on ``model_dir``'s model, saved as peft saves it. ``init_lora_weights=False``
    with a fixed seed gives deterministic non-zero weights (peft's default starts B at zero: a no-op),
    and a large ``alpha`` makes them change greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(directory)
    return directory


def lora_adapters(model_dir: Path, root: Path, names: Sequence[str]) -> dict[str, Path]:
    """One adapter per name under ``root``, seeded 1, 2, ... so each has weights of its own."""
    return {name: lora_adapter(model_dir, root / name, seed=seed) for seed, name in enumerate(names, 1)}
