"""``python -m transformers_pre.ingest --milvus_uri URI --collection NAME [options] [PATH ...]``.

Prints one JSON line: {"documents", "added", "updated", "unchanged", "empty", "deleted", "chunks",
"seconds", "chunks_per_s"}. Exit status 2 for bad arguments, paths or files; 1 when Milvus or the
embedder is unavailable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import SecretStr, ValidationError

from serving.auth import AuthConfigError, predictor_api_key
from serving.client import WireProtocol
from serving.defaults import default_of
from serving.errors import InvalidInput, Unavailable
from serving.kserve_import import import_kserve
from transformers_pre.embedder import ClientEmbedder, embedder_client
from transformers_pre.index import IndexConfig, IndexType
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.config import IngestConfig
from transformers_pre.ingest.pipeline import IngestSummary, delete, ingest
from transformers_pre.ingest.readers import Document, read_paths
from transformers_pre.store import VectorStore

PROG = "python -m transformers_pre.ingest"


def _default(field: str) -> Any:
    return default_of(IngestConfig, field)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Ingest text, Markdown and JSONL files into Milvus.")
    p.add_argument("paths", nargs="*", metavar="PATH", help=".txt, .md or .jsonl files, or directories of them")
    p.add_argument("--milvus_uri", default=os.environ.get("MILVUS_URI"),
                   help="Milvus Lite file (./data/kzero.db) or server URL; default: $MILVUS_URI")
    p.add_argument("--collection", required=True)
    p.add_argument("--embedder", default=_default("embedder"),
                   help="packaged model id (in-process) or http://host:port#model of an embedding predictor "
                        "(called with $KZERO_PREDICTOR_API_KEY, if set)")
    p.add_argument("--embedder_protocol", default=_default("embedder_protocol"), choices=get_args(WireProtocol))
    p.add_argument("--tokenizer", default=_default("tokenizer"),
                   help="packaged model id or model directory whose tokenizer counts chunk tokens; default: the "
                        "packaged embedder's own, else all-minilm-l6-v2")
    p.add_argument("--chunk_tokens", type=int, default=_default("chunk_tokens"),
                   help="default: the embedder's input limit")
    p.add_argument("--overlap_tokens", type=int, default=_default("overlap_tokens"), help="default: %(default)s")
    p.add_argument("--batch_size", type=int, default=_default("batch_size"),
                   help="chunks per embedder call; default: %(default)s")
    p.add_argument("--index_type", default=default_of(IndexConfig, "index_type"), choices=get_args(IndexType),
                   help="dense index of a collection this creates; default: %(default)s")
    p.add_argument("--nlist", type=int, default=default_of(IndexConfig, "nlist"),
                   help="IVF_FLAT cells; default: %(default)s")
    p.add_argument("--hnsw_m", type=int, default=default_of(IndexConfig, "hnsw_m"),
                   help="HNSW graph degree; default: %(default)s")
    p.add_argument("--ef_construction", type=int, default=default_of(IndexConfig, "ef_construction"),
                   help="HNSW build-time candidates; default: %(default)s")
    p.add_argument("--delete", action="append", default=[], metavar="DOC_ID",
                   help="remove a document (repeatable); applied before PATHs are ingested")
    p.add_argument("--no_progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    return IngestConfig(milvus_uri=args.milvus_uri or "", collection=args.collection, embedder=args.embedder,
                        embedder_protocol=args.embedder_protocol, tokenizer=args.tokenizer,
                        chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens,
                        batch_size=args.batch_size, progress=not args.no_progress,
                        index=IndexConfig(index_type=args.index_type, nlist=args.nlist, hnsw_m=args.hnsw_m,
                                          ef_construction=args.ef_construction))


async def run(
    config: IngestConfig, paths: Sequence[str], deletes: Sequence[str], api_key: SecretStr | None = None
) -> IngestSummary:
    """``api_key`` goes to an embedder that is a predictor URL."""
    summary = IngestSummary()
    documents: Iterator[Document] = iter(())
    chunker = None
    if paths:
        # A bad path or setting fails here, before an embedder is loaded or the store touched.
        documents = _peeked(read_paths(paths))
        chunker = Chunker.load(config.chunking_model, config.chunk_tokens, config.overlap_tokens)
    if "://" not in config.milvus_uri:
        Path(config.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
    store = VectorStore.connect(config.milvus_uri, config.collection, config.index)
    try:
        deleted = await delete(store, deletes)
        if chunker is not None:
            client, model = embedder_client(config.embedder, config.embedder_protocol, api_key=api_key)
            embedder = ClientEmbedder(client, model)
            try:
                await embedder.start()
                summary = await ingest(documents, store, embedder, chunker, batch_size=config.batch_size,
                                       progress=config.progress)
            finally:
                await embedder.close()
    finally:
        store.close()
    return dataclasses.replace(summary, deleted=deleted)


def _peeked(documents: Iterator[Document]) -> Iterator[Document]:
    first = next(documents, None)
    return documents if first is None else itertools.chain([first], documents)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_kserve()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    if not args.milvus_uri:
        print(f"{PROG}: --milvus_uri or MILVUS_URI is required", file=sys.stderr)
        return 2
    if not args.paths and not args.delete:
        print(f"{PROG}: nothing to do: give PATHs to ingest and/or --delete DOC_ID", file=sys.stderr)
        return 2
    try:
        api_key = predictor_api_key(os.environ)
    except AuthConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(run(config_from_args(args), args.paths, args.delete, api_key))
    except ValidationError as err:
        first = err.errors()[0]
        print(f"{PROG}: invalid --{'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    except InvalidInput as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    except Unavailable as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
