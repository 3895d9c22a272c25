"""Which vector index a collection is built with, and how a search walks it.

AUTOINDEX is the default: Milvus Lite 2.5 (Milvus' C++ engine in a local process) builds FLAT,
IVF_FLAT and AUTOINDEX and refuses HNSW, which a Milvus server builds. Over 100,000 chunks Lite's
AUTOINDEX and IVF_FLAT (nlist 256, nprobe 16) searched in 0.4x the time of an exact matmul at
recall@10 0.995, FLAT in 3.5x (bench/rag.py, docs/benchmarks.md). An IVF search scans only
``nprobe`` cells, so a narrow metadata filter can find fewer matches than exist: raise ``nprobe``
towards ``nlist`` for filtered search. A Milvus server takes the same names and parameters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IndexType = Literal["IVF_FLAT", "HNSW", "FLAT", "AUTOINDEX"]


class IndexConfig(BaseModel):
    """The dense vector index: ``index_type`` and its build parameters apply when a collection is
    created; ``nprobe`` / ``ef`` apply to each search of an index of that kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index_type: IndexType = "AUTOINDEX"
    nlist: int = Field(default=256, ge=1, le=65536, description="IVF_FLAT: cells (capped at the segment's rows)")
    nprobe: int = Field(default=16, ge=1, le=65536, description="IVF_FLAT: cells scanned per search")
    hnsw_m: int = Field(default=16, ge=2, le=2048, description="HNSW: graph degree")
    ef_construction: int = Field(default=64, ge=1, description="HNSW: build-time candidate list")
    ef: int = Field(default=64, ge=1, description="HNSW: search-time candidate list")

    def build_params(self) -> dict[str, Any]:
        if self.index_type == "IVF_FLAT":
            return {"nlist": self.nlist}
        if self.index_type == "HNSW":
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        return {}

    def search_params(self, built: str) -> dict[str, Any]:
        """Parameters for searching an index of type ``built`` (what the collection has, which may
        differ from ``index_type`` when another process created it)."""
        if built == "IVF_FLAT":
            return {"nprobe": self.nprobe}
        if built == "HNSW":
            return {"ef": self.ef}
        return {}  # FLAT has none; AUTOINDEX chooses its own
