"""The dense index a collection is built with, and the search parameters used on it (real Milvus Lite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from transformers_pre.__main__ import config_from_args
from transformers_pre.errors import StoreUnavailable
from transformers_pre.index import IndexConfig
from transformers_pre.ingest.__main__ import build_parser
from transformers_pre.ingest.__main__ import config_from_args as ingest_config
from transformers_pre.store import Chunk, VectorStore

ROWS = 200


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_parameters_follow_the_index_type() -> None:
    config = IndexConfig(index_type="IVF_FLAT", nlist=64, nprobe=8, hnsw_m=24, ef_construction=100, ef=40)
    assert IndexConfig().index_type == "AUTOINDEX" and IndexConfig().build_params() == {}
    assert config.build_params() == {"nlist": 64}
    assert IndexConfig(index_type="HNSW", hnsw_m=24, ef_construction=100).build_params() == {
        "M": 24, "efConstruction": 100}
    assert IndexConfig(index_type="FLAT").build_params() == {}
    # Search parameters follow the index the collection has, not the one this process would build.
    assert config.search_params("IVF_FLAT") == {"nprobe": 8}
    assert config.search_params("HNSW") == {"ef": 40}
    assert config.search_params("FLAT") == config.search_params("AUTOINDEX") == {}
    with pytest.raises(ValidationError, match="nprobe"):
        IndexConfig(nprobe=0)
    with pytest.raises(ValidationError, match="index_type"):
        IndexConfig(index_type="DISKANN")  # type: ignore[arg-type]


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "FLAT", "AUTOINDEX"])
def test_each_index_type_is_built_reopened_and_searched(tmp_path: Path, index_type: str) -> None:
    vectors = unit_rows(ROWS, 16, seed=7)
    config = IndexConfig(index_type=index_type, nlist=16, nprobe=16)  # type: ignore[arg-type]
    db = str(tmp_path / "i.db")
    store = VectorStore.connect(db, "docs", config)
    try:
        store.ensure_collection(16)
        chunks = [Chunk("d", i, f"chunk number {i}") for i in range(ROWS)]
        store.replace_documents([("d", "h", chunks, vectors)])
    finally:
        store.close()  # flushes: the reopened file searches the built index, not the write buffer
    store = VectorStore.connect(db, "docs", IndexConfig(nprobe=16))
    try:
        store.load()
        assert store._client.describe_index("docs", "vector")["index_type"] == index_type
        for row in (0, 57, 199):
            exact = np.argsort(-(vectors @ vectors[row]))[:5].tolist()
            assert [p.chunk_id for p in store.search(vectors[row], 5)] == exact
        hybrid = store.search(vectors[57], 3, query_text="chunk number 57", mode="hybrid")
        assert hybrid[0].chunk_id == 57
    finally:
        store.close()


def test_milvus_lite_refuses_hnsw_with_the_types_it_builds(tmp_path: Path) -> None:
    store = VectorStore.connect(str(tmp_path / "h.db"), "docs", IndexConfig(index_type="HNSW"))
    try:
        with pytest.raises(StoreUnavailable, match=r"HNSW.*FLAT IVF_FLAT AUTOINDEX"):
            store.ensure_collection(16)
    finally:
        store.close()


def test_ingest_flags_choose_the_index(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--milvus_uri", str(tmp_path / "x.db"), "--collection", "c",
                                      "--index_type", "HNSW", "--hnsw_m", "32", "--ef_construction", "128", "p"])
    assert ingest_config(args).index == IndexConfig(index_type="HNSW", hnsw_m=32, ef_construction=128)
    defaults = build_parser().parse_args(["--milvus_uri", "x.db", "--collection", "c", "p"])
    assert ingest_config(defaults).index == IndexConfig()
    with pytest.raises(ValidationError, match="nlist"):
        ingest_config(build_parser().parse_args(["--milvus_uri", "x.db", "--collection", "c", "--nlist", "0"]))


def test_transformer_flags_set_the_search_parameters() -> None:
    config = config_from_args(["--predictor_host", "127.0.0.1:1", "--nprobe", "32", "--ef", "96"])
    assert (config.index.nprobe, config.index.ef) == (32, 96)
    assert config_from_args(["--predictor_host", "127.0.0.1:1"]).index == IndexConfig()
