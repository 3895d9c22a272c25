from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from predictors import gguf_cache
from predictors.errors import ModelLoadError


def test_cache_key_is_the_content_hash_and_follows_changes(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"weights v1")
    cache = tmp_path / "cache"
    first = gguf_cache.cache_path(tmp_path, "m.gguf", cache)
    assert first == cache / "gguf" / hashlib.sha256(b"weights v1").hexdigest()
    model.write_bytes(b"weights v2, longer")
    assert gguf_cache.cache_path(tmp_path, "m.gguf", cache).name == hashlib.sha256(b"weights v2, longer").hexdigest()


def test_unchanged_file_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m.gguf").write_bytes(b"weights")
    cache = tmp_path / "cache"
    expected = gguf_cache.cached_hash(tmp_path / "m.gguf", cache)

    def no_rehash(path: Path, chunk_size: int = 0) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(gguf_cache, "content_hash", no_rehash)
    assert gguf_cache.cached_hash(tmp_path / "m.gguf", cache) == expected


def test_missing_gguf_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"GGUF file not found: .*absent.gguf"):
        gguf_cache.cache_path(tmp_path, "absent.gguf", tmp_path / "cache")


def test_incomplete_cache_is_not_used(tmp_path: Path) -> None:
    target = tmp_path / "partial"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"half")
    assert not gguf_cache.is_complete(target)
