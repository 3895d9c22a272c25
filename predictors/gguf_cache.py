"""Convert a GGUF checkpoint once into a safetensors directory keyed by the file's content hash.

Dequantizing GGUF and rebuilding its tokenizer takes many seconds at every start; loading
safetensors is memory-mapped and fast. The cache key is the SHA-256 of the GGUF content, so a
changed file never reuses a stale cache. Hashing a large file also costs time, so the hash is
remembered per (path, size, mtime) in a small index, as git's index does for the work tree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from predictors.errors import ModelLoadError

log = logging.getLogger(__name__)

_INDEX = "gguf-index.json"
_DONE = ".kzero-complete"


def content_hash(path: Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _read_index(cache_dir: Path) -> dict[str, str]:
    try:
        return json.loads((cache_dir / _INDEX).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cached_hash(path: Path, cache_dir: Path) -> str:
    """The content hash of ``path``, recomputed only when its size or mtime changed."""
    index = _read_index(cache_dir)
    key = _stat_key(path)
    if key in index:
        return index[key]
    digest = content_hash(path)
    index[key] = digest
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(cache_dir / _INDEX, json.dumps(index, indent=1))
    return digest


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def cache_path(model_dir: Path, gguf_file: str, cache_dir: Path) -> Path:
    gguf_path = model_dir / gguf_file
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    return cache_dir / "gguf" / cached_hash(gguf_path, cache_dir)


def is_complete(target: Path) -> bool:
    return (target / _DONE).exists()


def convert(model_dir: Path, gguf_file: str, target: Path) -> Path:
    """Dequantize ``model_dir/gguf_file`` with transformers and save it as safetensors at ``target``.

    Written to a temporary sibling and renamed, so a crash never leaves a half cache behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting GGUF %s to safetensors cache %s (first start only)", model_dir / gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file)
    # The weights are dequantized in memory; drop the GGUF quantizer so they save as plain tensors.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.__dict__.pop("is_quantized", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=target.name + ".tmp-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _DONE).write_text(gguf_file)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def ensure_safetensors(model_dir: Path, gguf_file: str, cache_dir: Path) -> tuple[Path, bool]:
    """The safetensors directory for this GGUF file, converting it on first use.

    Returns the directory and whether it came from the cache.
    """
    target = cache_path(model_dir, gguf_file, cache_dir)
    if is_complete(target):
        return target, True
    if target.exists():
        shutil.rmtree(target)
    return convert(model_dir, gguf_file, target), False
